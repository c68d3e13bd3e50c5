"""Tests of napari_fcres.metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from napari_fcres.errors import InputError
from napari_fcres.metrics import (
    _gt_cells,
    _proposal,
    _score_slice,
    dice,
    isbi_scores,
    pixel_error,
    rand_info_scores_2d,
    segmentation_scores,
    volume_scores,
)
from napari_fcres.sample_data import SHARED_ISBI_DIR

ISBI_LABELS = SHARED_ISBI_DIR / "train-labels.tif"


def two_cells() -> np.ndarray:
    """5 x 11 ground truth: two 5 x 5 cells split by a membrane in column 5."""
    labels = np.ones((5, 11), dtype=np.uint8)
    labels[:, 5] = 0
    return labels


def assert_scores_close(got: dict, expected: dict) -> None:
    """Same keys and values (scalars or lists) within ``pytest.approx``, key by key.

    ``pytest.approx`` refuses dicts whose values are lists in pytest >= 9, so the
    comparison is done one key at a time.
    """
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def entropy(counts: list[int], n: int) -> float:
    """Natural-log entropy of a partition of ``n`` pixels given its part sizes."""
    return -sum(c / n * math.log(c / n) for c in counts)


# --------------------------------------------------------------------------- pixel


def test_dice_simple() -> None:
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 0], dtype=bool)
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert dice(a, ~a) == 0.0
    # mask keeps only the first two pixels: pred (1, 1), target (1, 0) -> 2*1/3
    assert dice(a, b, mask=np.array([1, 1, 0, 0], bool)) == pytest.approx(2 / 3)


def test_pixel_error_simple() -> None:
    a = np.array([[1, 1], [0, 0]])
    b = np.array([[1, 0], [1, 0]])
    assert pixel_error(a, b) == pytest.approx(0.5)
    assert pixel_error(a, a) == 0.0
    assert pixel_error(a, b, mask=np.array([[1, 1], [0, 1]], bool)) == pytest.approx(1 / 3)
    with pytest.raises(InputError):
        pixel_error(a, b, mask=np.zeros((2, 2), bool))


def test_pixel_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"\(2, 2\).*\(3,\)"):
        dice(np.zeros((2, 2)), np.zeros(3))
    with pytest.raises(InputError):
        pixel_error(np.zeros((2, 2)), np.zeros((2, 2)), mask=np.ones(4, bool))


# --------------------------------------------------------------------------- ISBI 2D


def test_perfect_prediction() -> None:
    labels = two_cells()
    v_rand, v_info = rand_info_scores_2d(labels.astype(float), labels, 0.5)
    assert v_rand == pytest.approx(1.0)
    assert v_info == pytest.approx(1.0)


def test_thick_membrane_is_thinned_and_excluded() -> None:
    labels = np.ones((6, 12), dtype=np.uint8)
    labels[:, 4:7] = 0
    prob = labels.astype(float) * 0.9
    assert rand_info_scores_2d(prob, labels, 0.5) == pytest.approx((1.0, 1.0))
    segments = _proposal(prob, 0.5)
    assert np.count_nonzero(segments == 0) == 6  # a single line one pixel wide


def test_merge_two_cells() -> None:
    labels = two_cells()
    prob = np.ones(labels.shape)  # membrane missing: one segment over both cells
    v_rand, v_info = rand_info_scores_2d(prob, labels, 0.5)
    # n = 50; p = (0.5, 0.5); sum p^2 = 0.5, sum a^2 = 0.5, sum b^2 = 1
    assert v_rand == pytest.approx(0.5 / (0.5 * 0.5 + 0.5 * 1.0))
    assert v_rand == pytest.approx(2 / 3)
    # H(A) = ln 2, H(B) = 0, I = 0
    assert v_info == pytest.approx(0.0, abs=1e-12)


def test_split_one_cell() -> None:
    labels = two_cells()
    prob = labels.astype(float)
    prob[:, 2] = 0.0  # extra membrane splits the left cell into 10 + 10 px + 5 border px
    v_rand, v_info = rand_info_scores_2d(prob, labels, 0.5)
    n = 50
    sum_p2 = (10**2 + 10**2 + 5 * 1 + 25**2) / n**2  # 5 singletons
    sum_a2 = (25**2 + 25**2) / n**2
    sum_b2 = (10**2 + 10**2 + 25**2 + 5 * 1) / n**2
    assert v_rand == pytest.approx(sum_p2 / (0.5 * sum_a2 + 0.5 * sum_b2))
    assert v_rand == pytest.approx(830 / 1040)
    h_a = entropy([25, 25], n)
    h_b = entropy([10, 10, 25, 1, 1, 1, 1, 1], n)
    mutual = h_a  # every segment lies inside one cell: H(A|B) = 0
    assert v_info == pytest.approx(2 * mutual / (h_a + h_b))


def test_split_merge_f_score_agree() -> None:
    labels = two_cells()
    prob = labels.astype(float)
    prob[:, 2] = 0.0
    prob[2, 5] = 1.0  # also bridge the two cells through the membrane
    fg = labels > 0
    s = _score_slice(_gt_cells(fg), _proposal(prob, 0.5), fg)
    assert s.v_rand == pytest.approx(2 / (1 / s.rand_split + 1 / s.rand_merge))
    assert s.v_info == pytest.approx(2 / (1 / s.info_split + 1 / s.info_merge))
    assert 0 < s.v_rand < 1 and 0 < s.v_info < 1


def test_all_background_prediction() -> None:
    labels = two_cells()
    v_rand, v_info = rand_info_scores_2d(np.zeros(labels.shape), labels, 0.0)
    # 50 singletons: sum p^2 = sum b^2 = 50/50^2, sum a^2 = 0.5
    assert v_rand == pytest.approx(0.02 / (0.25 + 0.01))
    h_a, h_b = math.log(2), math.log(50)
    assert v_info == pytest.approx(2 * h_a / (h_a + h_b))

    big = np.ones((64, 64), dtype=np.uint8)
    big[:, 32] = 0
    v_rand_big, _ = rand_info_scores_2d(np.zeros(big.shape), big, 0.5)
    assert v_rand_big < 0.002


def test_single_cell_single_segment_is_perfect() -> None:
    labels = np.ones((4, 4), dtype=np.uint8)
    assert rand_info_scores_2d(labels, labels, 0.5) == pytest.approx((1.0, 1.0))


def test_ignore_mask_drops_pixels() -> None:
    labels = two_cells()
    prob = labels.astype(float)
    prob[:, 2] = 0.0
    ignore = np.zeros(labels.shape, bool)
    ignore[:, :5] = True  # hide the split cell
    assert rand_info_scores_2d(prob, labels, 0.5, ignore_mask=ignore) == pytest.approx((1, 1))


# --------------------------------------------------------------------------- ISBI stack


def test_threshold_selection_picks_max() -> None:
    labels = two_cells()
    prob = labels.astype(float)
    prob[:, 5] = 0.35  # membrane is interior below 0.35 -> merge
    res = isbi_scores(prob, labels)
    per = res["v_rand_per_threshold"]
    assert res["thresholds"] == pytest.approx([k / 10 for k in range(11)])
    assert per[:4] == pytest.approx([2 / 3] * 4)
    assert per[4:10] == pytest.approx([1.0] * 6)
    assert per[10] == pytest.approx(0.02 / 0.26)  # prob > 1.0 is empty: all singletons
    assert res["v_rand"] == pytest.approx(max(per)) == pytest.approx(1.0)
    assert res["v_rand_threshold"] == 0.4
    assert res["v_info"] == pytest.approx(1.0)
    assert res["v_info_threshold"] == 0.4
    assert res["v_rand_per_slice"] == pytest.approx([1.0])

    res = isbi_scores(prob, labels, thresholds=[0.2, 0.3])
    assert res["v_rand"] == pytest.approx(2 / 3)
    assert res["v_rand_threshold"] == 0.2


def test_stack_means_over_slices() -> None:
    labels = np.stack([two_cells()] * 3)
    prob = labels.astype(float)
    prob[1] = 1.0  # merge in slice 1
    prob[2] = 0.0  # all background in slice 2
    res = isbi_scores(prob, labels, thresholds=[0.5])
    expected = [1.0, 2 / 3, 0.02 / 0.26]
    assert res["v_rand_per_slice"] == pytest.approx(expected)
    assert res["v_rand"] == pytest.approx(np.mean(expected))
    assert len(res["v_info_per_slice"]) == 3


def test_mask_inputs_equal_float_inputs() -> None:
    labels = np.stack([two_cells(), two_cells()])
    pred = labels > 0
    pred[0, :, 2] = False
    pred[1, 2, 5] = True
    ref = isbi_scores(pred.astype(np.float32), labels)
    for variant in (pred, pred.astype(np.uint8), pred.astype(np.uint8) * 255):
        assert_scores_close(isbi_scores(variant, labels), ref)
    # a mask gives the same result at every threshold
    assert len(set(ref["v_rand_per_threshold"])) == 1
    assert ref["v_rand_threshold"] == 0.0
    # labels given as bool or 0/1 give the same result
    assert_scores_close(isbi_scores(pred, labels > 0), ref)


def test_input_errors() -> None:
    labels = two_cells()
    with pytest.raises(InputError, match=r"\(5, 11\).*\(5, 10\)"):
        isbi_scores(np.zeros((5, 11)), np.zeros((5, 10)))
    with pytest.raises(InputError, match="shape"):
        segmentation_scores(np.zeros((5, 11)), np.zeros((4, 11)))
    bad = labels.astype(float)
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        isbi_scores(bad, labels)
    with pytest.raises(InputError, match="NaN"):
        segmentation_scores(bad, labels)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        isbi_scores(labels * 2.0, labels)
    with pytest.raises(InputError):
        isbi_scores(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))
    with pytest.raises(InputError):
        rand_info_scores_2d(np.zeros((2, 5, 11)), np.zeros((2, 5, 11)), 0.5)


def test_multi_value_labels_need_foreground_value() -> None:
    labels = two_cells().astype(np.int32)
    labels[:, 6:] = 2  # 0 membrane, 1 and 2: cell labels
    prob = (labels > 0).astype(float)
    with pytest.raises(InputError, match="foreground_value"):
        isbi_scores(prob, labels)
    with pytest.raises(InputError, match="foreground_value"):
        segmentation_scores(prob, labels)
    res = segmentation_scores(prob, labels, foreground_value=1)
    # interior = left cell only; prediction also marks the right cell
    assert res["dice"] == pytest.approx(2 * 25 / (50 + 25))


def test_segmentation_scores_keys_and_values() -> None:
    labels = two_cells()
    prob = labels * 0.8
    res = segmentation_scores(prob, labels)
    assert res["dice"] == 1.0
    assert res["pixel_error"] == 0.0
    for key in (
        "v_rand",
        "v_info",
        "v_rand_threshold",
        "v_info_threshold",
        "v_rand_per_threshold",
        "v_info_per_threshold",
        "v_rand_per_slice",
        "v_info_per_slice",
    ):
        assert key in res
    assert res["v_rand"] == pytest.approx(1.0)

    ignore = np.zeros(labels.shape, bool)
    ignore[:, 5] = True
    res = segmentation_scores(np.ones(labels.shape), labels, ignore_mask=ignore)
    assert res["pixel_error"] == 0.0
    assert res["v_rand"] == pytest.approx(2 / 3)

    res = segmentation_scores(np.ones(8), np.ones(8))  # 1D: no ISBI entries
    assert res["dice"] == 1.0 and "v_rand" not in res


# --------------------------------------------------------------------------- volume


def cube(shape: tuple[int, int, int], z0: int, z1: int) -> np.ndarray:
    """Boolean array with a box in z0:z1 and 2:6 along y and x."""
    out = np.zeros(shape, dtype=bool)
    out[z0:z1, 2:6, 2:6] = True
    return out


def test_volume_identical() -> None:
    a = cube((10, 10, 10), 2, 6)
    res = volume_scores(a, a, spacing=(2.5, 0.5, 0.5))
    assert res["dice"] == 1.0
    assert res["average_boundary_distance"] == 0.0
    assert res["hausdorff95"] == 0.0
    assert res["relative_volume_difference"] == 0.0
    assert res["volume_true"] == pytest.approx(64 * 2.5 * 0.25)


def test_volume_shifted_along_z() -> None:
    # 4x4x4 cubes, the prediction shifted by one slice; spacing 2.5 along z.
    # Each surface has 56 voxels. From either cube: the 16 voxels of the outer face are
    # 2.5 away, the 4 inner voxels of the inner face are 1 away (to the neighbouring
    # ring), the other 36 lie on the other surface.
    target = cube((10, 10, 10), 2, 6)
    pred = cube((10, 10, 10), 3, 7)
    res = volume_scores(pred, target, spacing=(2.5, 1.0, 1.0))
    assert res["dice"] == pytest.approx(2 * 48 / 128)
    assert res["average_boundary_distance"] == pytest.approx((16 * 2.5 + 4 * 1.0) / 56)
    distances = np.array([0.0] * 72 + [1.0] * 8 + [2.5] * 32)
    assert res["hausdorff95"] == pytest.approx(np.percentile(distances, 95))
    assert res["hausdorff95"] == pytest.approx(2.5)
    assert res["relative_volume_difference"] == 0.0


def test_volume_larger_prediction() -> None:
    target = cube((10, 10, 10), 2, 6)
    pred = cube((10, 10, 10), 2, 7)  # one slice longer
    res = volume_scores(pred, target, spacing=(3.0, 1.0, 1.0))
    assert res["relative_volume_difference"] == pytest.approx(25.0)
    assert volume_scores(target, pred)["relative_volume_difference"] == pytest.approx(-20.0)
    # pred surface (68 voxels): the 16 of its z=6 face are 3.0 from target's z=5 face, the
    # other 52 lie on target's surface. Target surface (56): the 4 inner voxels of its z=5
    # face are 1.0 from pred's z=5 ring, the other 52 lie on pred's surface.
    assert res["average_boundary_distance"] == pytest.approx((16 * 3.0 + 4 * 1.0) / (68 + 56))
    assert res["hausdorff95"] == pytest.approx(3.0)


def test_volume_empty_and_errors() -> None:
    target = cube((10, 10, 10), 2, 6)
    empty = np.zeros_like(target)
    res = volume_scores(empty, target)
    assert res["dice"] == 0.0
    assert math.isinf(res["average_boundary_distance"]) and math.isinf(res["hausdorff95"])
    assert res["relative_volume_difference"] == -100.0
    with pytest.raises(InputError, match="empty"):
        volume_scores(target, empty)
    with pytest.raises(InputError, match="spacing"):
        volume_scores(target, target, spacing=(1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        volume_scores(target, target, spacing=(0.0, 1.0, 1.0))
    with pytest.raises(InputError, match="shape"):
        volume_scores(target, target[:5])


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not ISBI_LABELS.exists(), reason="ISBI 2012 labels not present")
def test_isbi_labels() -> None:
    tifffile = pytest.importorskip("tifffile")
    from scipy import ndimage as ndi

    labels = tifffile.imread(ISBI_LABELS)[:2]
    res = isbi_scores(labels, labels)
    assert res["v_rand"] == pytest.approx(1.0)
    assert res["v_info"] == pytest.approx(1.0)

    smooth = ndi.gaussian_filter(labels.astype(np.float64) / 255.0, sigma=(0, 2, 2))
    start = time.perf_counter()
    res = isbi_scores(smooth, labels)
    elapsed = time.perf_counter() - start
    assert 0.5 < res["v_rand"] < 1.0
    assert 0.5 < res["v_info"] < 1.0
    assert elapsed < 10.0  # 2 slices x 11 thresholds
