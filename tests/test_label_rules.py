"""Tests of napari_fcres.label_rules: image checks and what each label value means."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fcres.errors import InputError
from napari_fcres.label_rules import (
    annotated_slices,
    as_binary_labels,
    check_image_labels,
    full_foreground_value,
    painted_slices,
    partial_masks,
    partial_role,
    plain_foreground,
    validate_image,
)

# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def test_validate_image_accepts_and_returns_same_object():
    img = np.zeros((3, 8, 8), np.float32)
    assert validate_image(img) is img
    img2 = np.zeros((8, 8), np.uint16)
    assert validate_image(img2) is img2


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.zeros((16, 16, 3), np.uint8), "RGB/multi-channel images are not supported"),
        (np.zeros((16, 16, 4), np.uint8), "convert to one channel"),
        (np.zeros((2, 3, 16, 16), np.uint8), "RGB/multi-channel"),
        (np.zeros(16, np.uint8), "2-D"),
        (np.zeros((2, 2, 2, 2, 2), np.uint8), "2-D"),
        (np.zeros((8, 8), bool), "boolean"),
        (np.array([["a", "b"], ["c", "d"]]), "non-numeric"),
        (np.zeros((0, 8), np.uint8), "empty"),
    ],
)
def test_validate_image_rejects(image, words):
    with pytest.raises(InputError, match=words):
        validate_image(image)


def test_validate_image_counts_nonfinite():
    img = np.zeros((4, 4), np.float32)
    img[0, 0] = np.nan
    img[1, 1] = np.inf
    img[2, 2] = -np.inf
    with pytest.raises(InputError, match=r"labels-name contains 3 NaN/inf"):
        validate_image(img, name="labels-name")


def test_validate_image_small_z_stack_is_not_rgb():
    img = np.zeros((3, 32, 32), np.uint8)  # 3 slices, not RGB
    assert validate_image(img) is img


def test_check_image_labels():
    check_image_labels(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match=r"2D vs 3D.*\(2, 4, 4\)|\(2, 4, 4\).*2D vs 3D"):
        check_image_labels(np.zeros((2, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(InputError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        check_image_labels(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


# ---------------------------------------------------------------------------------------------
# label conventions
# ---------------------------------------------------------------------------------------------


def test_binary_labels_isbi_style():
    labels = np.array([[0, 255], [255, 255]], np.uint8)
    target, valid = as_binary_labels(labels)
    assert target.dtype == np.float32 and valid.dtype == bool
    np.testing.assert_array_equal(target, [[0, 1], [1, 1]])
    assert valid.all()


def test_binary_labels_foreground_value_and_ignore():
    labels = np.array([[0, 1, 2], [2, 9, 1]])
    target, valid = as_binary_labels(labels, foreground_value=2, ignore_value=9)
    np.testing.assert_array_equal(target, [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(valid, [[1, 1, 1], [1, 0, 1]])


def test_binary_labels_ignore_leaves_two_values():
    labels = np.array([[0, 1, 7], [1, 7, 0]])
    target, valid = as_binary_labels(labels, ignore_value=7)
    np.testing.assert_array_equal(target, [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(valid, [[1, 1, 0], [1, 0, 1]])


def test_binary_labels_too_many_values():
    with pytest.raises(
        InputError,
        match=r"labels have 3 distinct values \(0, 1, 2\); pass "
        r"foreground_value",
    ):
        as_binary_labels(np.array([[0, 1], [2, 2]]))


def test_binary_labels_single_class_allowed_but_all_zero_rejected():
    target, valid = as_binary_labels(np.full((3, 3), 255, np.uint8))
    assert target.all() and valid.all()
    with pytest.raises(InputError, match="all zero"):
        as_binary_labels(np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match="no foreground"):
        as_binary_labels(np.array([[0, 1]]), foreground_value=5)


def test_binary_labels_partial_convention():
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint16)
    target, valid = as_binary_labels(labels, partial=True)
    np.testing.assert_array_equal(valid, [[0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(target, [[0, 0, 1], [1, 0, 0]])
    target, valid = as_binary_labels(labels, partial=True, foreground_value=3)
    np.testing.assert_array_equal(target, [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(InputError, match="no annotation"):
        as_binary_labels(np.zeros((4, 4), np.uint8), partial=True)
    with pytest.raises(InputError, match="no foreground"):
        as_binary_labels(np.array([[0, 1], [1, 0]]), partial=True)


def test_binary_labels_bad_dtype():
    with pytest.raises(InputError, match="non-integer"):
        as_binary_labels(np.array([[0.5, 1.0]]))


def test_annotated_slices():
    labels = np.zeros((5, 4, 4), np.uint8)
    labels[1, 0, 0] = 1
    labels[3, 2, 2] = 2
    assert annotated_slices(labels) == [1, 3]
    labels[:] += 7
    labels[4, 1, 1] = 0
    assert annotated_slices(labels, unlabeled_value=7) == [1, 3, 4]
    assert annotated_slices(np.zeros((4, 4))) == []
    assert annotated_slices(np.eye(4)) == [0]


# ---------------------------------------------------------------------------------------------
# the shared rules
# ---------------------------------------------------------------------------------------------


def test_partial_rule_masks_and_roles():
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint16)
    annotated, foreground = partial_masks(labels)
    np.testing.assert_array_equal(annotated, [[0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(foreground, [[0, 0, 1], [1, 0, 0]])
    _, only3 = partial_masks(labels, foreground_value=3)
    np.testing.assert_array_equal(only3, [[0, 0, 0], [1, 0, 0]])
    assert [partial_role(v) for v in (0, 1, 2, 255)] == [
        "unlabeled", "background", "foreground", "foreground"]


def test_partial_rule_is_what_training_and_the_summary_use():
    from napari_fcres.labels_summary import summarize_labels

    labels = np.array([[[0, 1, 2, 2], [5, 0, 1, 1]]], np.uint8)
    target, valid = as_binary_labels(labels, partial=True)
    annotated, foreground = partial_masks(labels)
    np.testing.assert_array_equal(valid, annotated)
    np.testing.assert_array_equal(target.astype(bool), foreground)
    counts = summarize_labels(labels, "partial").counts
    assert counts == {"unlabeled": int((~annotated).sum()),
                      "background": int((annotated & ~foreground).sum()),
                      "foreground": int(foreground.sum())}


def test_full_and_plain_rules():
    assert full_foreground_value([0, 255]) == 255
    assert full_foreground_value(np.array([3])) == 3
    assert full_foreground_value([0]) is None
    np.testing.assert_array_equal(plain_foreground(np.array([0, 1, 2, 255])), [0, 1, 1, 1])


def test_painted_slices():
    labels = np.zeros((3, 4, 4), np.uint8)
    labels[2, 1, 1] = 1
    np.testing.assert_array_equal(painted_slices(labels), [False, False, True])
    np.testing.assert_array_equal(painted_slices(np.ones((4, 4))), [True])
    with pytest.raises(InputError, match="2-D or 3-D"):
        painted_slices(np.zeros(4))
