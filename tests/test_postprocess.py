"""Masks, labels and label corrections."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fcres.errors import InputError
from napari_fcres.postprocess import (
    fill_holes,
    fill_label_holes,
    instance_labels,
    keep_largest,
    labels_from_probabilities,
    largest_component,
    merge_labels,
    relabel_instances,
    remove_small_labels,
    remove_small_objects,
    split_label_along_line,
    threshold,
)


def test_threshold():
    prob = np.array([[0.1, 0.5], [0.51, 0.9]], np.float32)
    np.testing.assert_array_equal(threshold(prob), [[False, False], [True, True]])
    np.testing.assert_array_equal(threshold(prob, 0.05), np.ones((2, 2), bool))
    assert threshold(prob).dtype == bool
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError):
            threshold(prob, bad)
    with pytest.raises(InputError):
        threshold(np.zeros(4))


def test_largest_component_2d_and_3d():
    mask = np.zeros((8, 8), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[4:8, 4:7] = True  # 12 px
    mask[2, 2] = True  # diagonal to the first blob only
    out = largest_component(mask)
    assert out.sum() == 12 and out[5, 5] and not out[0, 0]
    assert out.shape == mask.shape
    assert not largest_component(np.zeros((4, 5), bool)).any()

    stack = np.zeros((3, 6, 6), bool)
    stack[0, :2, :2] = True  # 4 voxels
    stack[:, 4, 4] = True  # a 3-voxel column
    stack[1, 0, 5] = True
    stack[2, 0, 5] = True  # 2 voxels through the slices
    out = largest_component(stack)
    assert out.sum() == 4 and out[0, 0, 0]
    stack[1, 3:6, 4] = True  # grows the column to 5 voxels, linked in 3D
    out = largest_component(stack)
    assert out.sum() == 5 and out[2, 4, 4]
    assert largest_component(stack, connectivity=3).shape == stack.shape


def test_remove_small_objects():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    mask[3:6, 3:6] = True
    out = remove_small_objects(mask, 2)
    assert not out[0, 0] and out[4, 4] and out.sum() == 9
    np.testing.assert_array_equal(remove_small_objects(mask, 0), mask)
    assert not remove_small_objects(mask, 10).any()
    with pytest.raises(InputError):
        remove_small_objects(mask, -1)


def test_fill_holes_slice_wise():
    ring = np.zeros((5, 5), bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    assert fill_holes(ring)[2, 2]
    # a tube through the stack: hole in every slice but open in 3D
    tube = np.stack([ring, ring, ring])
    assert fill_holes(tube).all(axis=0)[2, 2]
    assert not fill_holes(tube, slice_wise=False)[:, 2, 2].any()
    assert fill_holes(tube).shape == tube.shape
    tube_x = np.moveaxis(tube, 0, 2)
    assert fill_holes(tube_x, axis=2)[2, 2, :].all()


def test_instance_labels_per_slice_unique():
    stack = np.zeros((2, 5, 5), bool)
    stack[0, 0:2, 0:2] = True
    stack[0, 3:5, 3:5] = True
    stack[1, 0:2, 0:2] = True  # overlaps slice 0's first object in 3D
    lab = instance_labels(stack)
    assert lab.dtype == np.int32 and lab.shape == stack.shape
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    assert lab[1, 0, 0] not in (lab[0, 0, 0], lab[0, 4, 4])
    lab3d = instance_labels(stack, per_slice=False)
    assert set(np.unique(lab3d)) == {0, 1, 2}
    assert lab3d[1, 0, 0] == lab3d[0, 0, 0]
    # diagonal neighbours: separate with connectivity 1, joined with 2
    diag = np.eye(3, dtype=bool)
    assert instance_labels(diag).max() == 3
    assert instance_labels(diag, connectivity=2).max() == 1
    # stack sliced along the last axis
    lab_x = instance_labels(np.moveaxis(stack, 0, 2), axis=2)
    np.testing.assert_array_equal(np.moveaxis(lab_x, 2, 0), lab)


def test_labels_from_probabilities_modes():
    prob = np.zeros((2, 8, 8), np.float32)
    prob[:, 0:3, 0:3] = 0.9  # 18 voxels, two 9-pixel pieces
    prob[0, 6:8, 6:8] = 0.8  # 4 voxels
    prob[1, 7, 0] = 0.7  # a single voxel
    binary = labels_from_probabilities(prob)
    assert binary.dtype == np.uint8 and set(np.unique(binary)) == {0, 1}
    assert binary.sum() == 23
    assert labels_from_probabilities(prob, min_size=2).sum() == 22
    largest = labels_from_probabilities(prob, mode="largest")
    assert largest.dtype == np.uint8 and largest.sum() == 18
    inst = labels_from_probabilities(prob, mode="instances")
    assert inst.dtype == np.int32 and inst.max() == 4
    inst = labels_from_probabilities(prob, mode="instances", min_size=5)
    assert inst.max() == 2 and set(np.unique(inst)) == {0, 1, 2}  # ids stay consecutive
    assert labels_from_probabilities(prob, threshold=0.95).sum() == 0
    with pytest.raises(InputError):
        labels_from_probabilities(prob, mode="watershed")


def test_merge_labels():
    lab = np.array([[1, 1, 2], [0, 3, 2]], np.int32)
    out = merge_labels(lab, 1, 2)
    np.testing.assert_array_equal(out, [[1, 1, 1], [0, 3, 1]])
    assert lab[0, 2] == 2  # input untouched
    with pytest.raises(InputError):
        merge_labels(lab, 1, 1)
    with pytest.raises(InputError):
        merge_labels(lab, 1, 7)
    with pytest.raises(InputError):
        merge_labels(lab.astype(float), 1, 2)


def test_merge_closes_the_gap_between_the_labels():
    lab = np.zeros((2, 12, 16), np.int32)
    lab[:, 2:10, 1:7] = 3
    lab[:, 2:10, 9:15] = 4  # a 2-pixel background seam (cols 7, 8) between them
    lab[1, :, 9:15] = 0  # slice 1: label 4 absent, nothing to close
    out = merge_labels(lab, 3, 4, close_gap=2)
    assert (out[0, 2:10, 1:15] == 3).all()  # one object in the foreground mask too
    assert (out[0, 0] == 0).all() and (out[0, :, 0] == 0).all()  # no growth elsewhere
    np.testing.assert_array_equal(out[1], lab[1])
    # a gap wider than close_gap stays: only the ids change
    wide = merge_labels(lab, 3, 4, close_gap=1)
    np.testing.assert_array_equal(wide > 0, lab > 0)
    np.testing.assert_array_equal(merge_labels(lab[0], 3, 4, close_gap=2), out[0])


def _square_labels() -> np.ndarray:
    lab = np.zeros((10, 12), np.uint16)
    lab[1:9, 1:11] = 5
    lab[0, 0] = 2
    return lab


def test_split_along_vertical_line():
    lab = _square_labels()
    out = split_label_along_line(lab, 5, np.array([[0.0, 4.0], [9.0, 4.0]]))
    assert out.shape == lab.shape and out.dtype == lab.dtype
    assert set(np.unique(out)) == {0, 2, 5, 6}
    # the larger right part (cols 5..10) keeps the id, the left part (cols 1..3) is new
    assert (out[1:9, 6:11] == 5).all() and (out[1:9, 1:4] == 6).all()
    # the cut is a background seam: the foreground mask shows two objects
    assert (out[1:9, 4] == 0).all()
    expected = lab > 0
    expected[1:9, 4] = False
    np.testing.assert_array_equal(out > 0, expected)
    assert lab.max() == 5  # input untouched


def test_split_along_diagonal_polyline_breaks_8_connectivity():
    lab = _square_labels()
    pts = np.array([[0.0, 2.0], [4.0, 6.0], [9.0, 6.0]])  # diagonal then vertical
    out = split_label_along_line(lab, 5, pts)
    pieces = set(np.unique(out)) - {0, 2}
    assert pieces == {5, 6}
    # a background seam along the line separates the pieces (even 8-connected)
    from scipy import ndimage

    seam = (lab == 5) & (out == 0)
    assert seam.any() and seam.sum() < 20
    _, n = ndimage.label(out == 5, structure=np.ones((3, 3)))
    _, m = ndimage.label((out == 5) | (out == 6), structure=np.ones((3, 3)))
    assert n == 1 and m == 2


def test_split_in_stack_with_3d_points_and_no_op():
    lab = np.zeros((3, 10, 12), np.int32)
    lab[:, 1:9, 1:11] = 5
    pts = np.array([[1, 0.0, 4.0], [1, 9.0, 4.0]])
    out = split_label_along_line(lab, 5, pts)
    assert out[1, 4, 2] == 6 and out[0, 4, 2] == 5 and out[2, 4, 2] == 5
    assert out[1, 4, 4] == 0 and out[0, 4, 4] == 5  # the seam only on the cut slice
    out2 = split_label_along_line(lab, 5, pts[:, 1:], slice_index=1)
    np.testing.assert_array_equal(out, out2)
    # a line that ends inside the region does not split it
    same = split_label_along_line(lab, 5, np.array([[0.0, 4.0], [4.0, 4.0]]), slice_index=0)
    np.testing.assert_array_equal(same, lab)
    with pytest.raises(InputError):
        split_label_along_line(lab, 5, pts[:, 1:])  # slice index missing
    with pytest.raises(InputError):
        split_label_along_line(lab, 9, pts)  # label absent
    with pytest.raises(InputError):
        split_label_along_line(lab, 5, pts[:1])  # one point


def test_split_grows_dtype_when_full():
    lab = np.zeros((6, 6), np.uint8)
    lab[:, :] = 255
    lab[0, 0] = 1
    out = split_label_along_line(lab, 255, np.array([[0.0, 3.0], [5.0, 3.0]]))
    assert out.dtype != np.uint8 and out.max() == 256


def test_remove_small_labels_per_label_piece():
    labels = np.zeros((2, 12, 12), dtype=np.uint16)
    labels[0, 1:6, 1:6] = 3  # 25 pixels
    labels[0, 8:10, 8:10] = 3  # a 4-pixel piece of the same label
    labels[0, 1:6, 6:8] = 5  # 10 pixels touching label 3: its own piece
    labels[1, 0:2, 0:2] = 7  # 4 pixels
    out = remove_small_labels(labels, 9)
    assert out.dtype == labels.dtype and out.shape == labels.shape
    assert (out[0, 1:6, 1:6] == 3).all() and (out[0, 1:6, 6:8] == 5).all()
    assert not out[0, 8:10, 8:10].any() and not out[1].any()
    np.testing.assert_array_equal(remove_small_labels(labels, 1), labels)


def test_fill_label_holes_per_slice_and_label():
    labels = np.zeros((2, 9, 9), dtype=np.int32)
    labels[0, 1:8, 1:8] = 4
    labels[0, 3:6, 3:6] = 0  # a hole of label 4
    labels[1, 1:4, 1:4] = 2  # no hole: unchanged
    out = fill_label_holes(labels)
    assert (out[0, 1:8, 1:8] == 4).all()
    np.testing.assert_array_equal(out[1], labels[1])
    np.testing.assert_array_equal(fill_label_holes(labels[0]), out[0])  # 2-D alike


def test_keep_largest_keeps_the_ids_of_the_largest_component():
    labels = np.zeros((3, 10, 10), dtype=np.uint8)
    labels[:, 1:5, 1:4] = 1  # a 3-D column split into two ids ...
    labels[:, 1:5, 4:6] = 2
    labels[1, 7:9, 7:9] = 3  # ... and a small separate object
    out = keep_largest(labels)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1, 2} and not out[1, 7:9, 7:9].any()


def test_relabel_instances_with_offset():
    labels = np.zeros((2, 8, 8), dtype=np.int32)
    labels[0, 1:3, 1:3] = labels[0, 5:7, 5:7] = 1  # one id, two components
    labels[1, 1:3, 1:3] = 9
    out = relabel_instances(labels)
    assert sorted(set(np.unique(out)) - {0}) == [1, 2, 3]  # unique in the stack
    shifted = relabel_instances(labels, offset=10)
    np.testing.assert_array_equal(shifted, np.where(out > 0, out + 10, 0))
