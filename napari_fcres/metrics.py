"""Segmentation quality measures.

Three families of measures live here:

* pixel measures: :func:`dice` and :func:`pixel_error`;
* the ISBI 2012 challenge measures V_rand and V_info ("foreground-restricted Rand /
  information theoretic scoring after border thinning"): :func:`rand_info_scores_2d`
  for one slice at one threshold and :func:`isbi_scores` for a slice or a stack over
  a range of thresholds;
* PROMISE12-style volume measures: :func:`volume_scores` (Dice, average boundary
  distance, 95th percentile Hausdorff distance, relative volume difference).

:func:`segmentation_scores` bundles the pixel and ISBI measures (for EM stacks) and
:func:`evaluate_volume` the volume measures of a probability map or mask (for 3D scans
with voxel spacing); ``fcres evaluate`` prints one or both (see its ``--measures``).

ISBI 2012 protocol, per 2D slice and threshold ``th``:

1. Proposal: the interior ``prob > th`` is split into 4-connected components, which
   seed a 4-connected watershed of ``1 - prob`` over the whole slice with watershed
   lines, so that every border becomes a line one pixel wide (label 0).
2. Ground truth: cells are the 4-connected components of the label foreground; the
   ground-truth membrane (background) is left out of every count.
3. On the ground-truth cells, a contingency table ``n_ij`` between ground-truth cell
   ``i`` and proposal segment ``j`` is built; proposal border pixels that fall on a
   cell count as singleton segments (one segment per pixel).
4. With ``p_ij = n_ij / n``, ``a_i = sum_j p_ij`` (ground truth) and
   ``b_j = sum_i p_ij`` (proposal)::

       V_rand = sum p_ij^2 / (0.5 sum a_i^2 + 0.5 sum b_j^2)
       V_info = 2 I(A;B) / (H(A) + H(B))

   V_rand is the F-score of the Rand split score ``sum p_ij^2 / sum a_i^2`` and the
   Rand merge score ``sum p_ij^2 / sum b_j^2``; V_info is the F-score of the
   information split score ``I / H(B)`` and merge score ``I / H(A)``.

Each score is averaged over the slices of a stack per threshold, and the best value
over the thresholds is reported (V_rand and V_info may pick different thresholds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from napari_fcres.errors import InputError

logger = logging.getLogger(__name__)

#: The ISBI 2012 thresholds: 0.0, 0.1, ..., 1.0.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.round(np.arange(0, 1.0001, 0.1), 1)
)

_CROSS_2D = ndi.generate_binary_structure(2, 1)
_MAX_WORKERS = 8


# --------------------------------------------------------------------------- helpers


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise :class:`InputError` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise InputError(
            f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
            "they must have the same shape."
        )


def _as_bool(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a boolean array (nonzero = True), rejecting NaN."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.number)):
        raise InputError(f"{name} must be a numeric or boolean array, not {array.dtype}.")
    if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values.")
    return array != 0


def _valid_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """Check an optional boolean mask against ``shape``."""
    if mask is None:
        return None
    mask = _as_bool(mask, name)
    if mask.shape != shape:
        raise InputError(f"{name} has shape {mask.shape} but the images have shape {shape}.")
    return mask


def _as_probability(prediction: np.ndarray) -> np.ndarray:
    """Convert a prediction to float64 probabilities in [0, 1] (1 = cell interior).

    Accepted: bool masks, integer masks or maps (0/1, or 0..255 where 255 = interior,
    divided by 255) and float probabilities in [0, 1].
    """
    prediction = np.asarray(prediction)
    if prediction.dtype == bool:
        return prediction.astype(np.float64)
    if np.issubdtype(prediction.dtype, np.integer):
        if prediction.size == 0:
            return prediction.astype(np.float64)
        lo, hi = int(prediction.min()), int(prediction.max())
        if lo < 0 or hi > 255:
            raise InputError(
                f"integer prediction has values in [{lo}, {hi}]; expected a 0/1 mask or "
                "0..255 values where 255 = cell interior."
            )
        out = prediction.astype(np.float64)
        return out if hi <= 1 else out / 255.0
    if np.issubdtype(prediction.dtype, np.floating):
        out = prediction.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise InputError("prediction contains NaN or infinite values.")
        if out.size:
            lo, hi = float(out.min()), float(out.max())
            if lo < -1e-6 or hi > 1.0 + 1e-6:
                raise InputError(
                    f"float prediction has values in [{lo:g}, {hi:g}]; expected "
                    "probabilities in [0, 1] (1 = cell interior)."
                )
            np.clip(out, 0.0, 1.0, out=out)
        return out
    raise InputError(f"prediction must be a numeric or boolean array, not {prediction.dtype}.")


def _foreground(labels: np.ndarray, foreground_value: int | None) -> np.ndarray:
    """Return the ground-truth cell interior as a boolean array.

    With ``foreground_value`` the interior is ``labels == foreground_value``; without
    it the labels must hold at most two distinct values and the larger one is the
    interior (a single value counts as interior when it is nonzero).
    """
    labels = np.asarray(labels)
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.number):
        raise InputError(f"labels must be a numeric or boolean array, not {labels.dtype}.")
    if np.issubdtype(labels.dtype, np.inexact) and not np.all(np.isfinite(labels)):
        raise InputError("labels contain NaN or infinite values.")
    if foreground_value is not None:
        fg = labels == foreground_value
        if labels.size and not fg.any():
            logger.warning("no label equals the foreground value %s", foreground_value)
        return fg
    if labels.dtype == bool:
        return labels
    values = np.unique(labels)
    if values.size > 2:
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise InputError(
            f"labels hold {values.size} distinct values ({shown}) but must be binary; "
            "pass foreground_value to say which value marks the cell interior."
        )
    if values.size == 2:
        return labels == values[1]
    return labels != 0


# --------------------------------------------------------------------------- pixel


def dice(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Binary Dice coefficient ``2|P & T| / (|P| + |T|)`` (nonzero = True).

    ``mask`` (True = counted) restricts the pixels taken into account. Two empty
    masks give 1.0.
    """
    p = _as_bool(pred, "pred")
    t = _as_bool(target, "target")
    _check_same_shape(p, t, "pred", "target")
    m = _valid_mask(mask, p.shape, "mask")
    if m is not None:
        p, t = p[m], t[m]
    denom = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / denom


def pixel_error(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of pixels (within ``mask``, True = counted) where pred and target differ."""
    p = _as_bool(pred, "pred")
    t = _as_bool(target, "target")
    _check_same_shape(p, t, "pred", "target")
    m = _valid_mask(mask, p.shape, "mask")
    if m is not None:
        p, t = p[m], t[m]
    if p.size == 0:
        raise InputError("pixel_error needs at least one pixel; the mask selects none.")
    return float(np.count_nonzero(p != t)) / p.size


# --------------------------------------------------------------------------- ISBI 2012


class _SliceScores(NamedTuple):
    """V_rand / V_info of one slice with their split and merge parts."""

    v_rand: float
    v_info: float
    rand_split: float
    rand_merge: float
    info_split: float
    info_merge: float


def _gt_cells(foreground: np.ndarray) -> np.ndarray:
    """Label the 4-connected ground-truth cells of a 2D foreground (0 = membrane)."""
    cells, _ = ndi.label(foreground, structure=_CROSS_2D)
    return cells


def _proposal(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Thinned proposal of a 2D probability slice: segments > 0, 1-pixel borders = 0."""
    seeds, n_seeds = ndi.label(prob > threshold, structure=_CROSS_2D)
    if n_seeds == 0:
        return np.zeros(prob.shape, dtype=np.int32)
    if n_seeds == 1:
        return np.ones(prob.shape, dtype=np.int32)
    return watershed(1.0 - prob, markers=seeds, connectivity=1, watershed_line=True)


def _score_slice(cells: np.ndarray, segments: np.ndarray, valid: np.ndarray) -> _SliceScores:
    """Foreground-restricted V_rand / V_info of one slice.

    ``cells``: ground-truth cells (> 0) and membrane (0); ``segments``: proposal
    segments (> 0) and border pixels (0, counted as singletons); ``valid``: the pixels
    to count (ground-truth foreground minus any ignored pixels).
    """
    gt = cells[valid].astype(np.int64)
    seg = segments[valid].astype(np.int64)
    n = gt.size
    if n == 0:
        nan = float("nan")
        return _SliceScores(nan, nan, nan, nan, nan, nan)

    on_border = seg == 0
    n_seg = int(seg.max()) + 1
    keys, n_ij = np.unique(gt[~on_border] * n_seg + seg[~on_border], return_counts=True)
    rows, cols = keys // n_seg, keys % n_seg
    a_counts = np.bincount(gt)  # per cell, singletons included
    b_counts = np.bincount(cols, weights=n_ij)  # per segment, singletons excluded
    single_per_cell = np.bincount(gt[on_border], minlength=a_counts.size)
    n_single = int(single_per_cell.sum())
    n_ij_f = n_ij.astype(np.float64)

    # Rand: work in counts, the n^2 normalisation cancels. A singleton adds 1 to
    # sum n_ij^2 and 1 to sum b_j^2.
    sum_p2 = float(np.sum(n_ij_f**2)) + n_single
    sum_a2 = float(np.sum(a_counts.astype(np.float64) ** 2))
    sum_b2 = float(np.sum(b_counts**2)) + n_single
    rand_split = sum_p2 / sum_a2
    rand_merge = sum_p2 / sum_b2
    v_rand = sum_p2 / (0.5 * sum_a2 + 0.5 * sum_b2)

    # Information: natural logarithms. A singleton has p = b = 1/n.
    log_n = np.log(n)
    a_nz = a_counts[a_counts > 0].astype(np.float64)
    h_a = float(-np.sum(a_nz / n * (np.log(a_nz) - log_n)))
    b_nz = b_counts[b_counts > 0]
    h_b = float(-np.sum(b_nz / n * (np.log(b_nz) - log_n))) + n_single / n * log_n
    mutual = float(
        np.sum(
            n_ij_f / n * (np.log(n_ij_f) + log_n - np.log(a_counts[rows]) - np.log(b_counts[cols]))
        )
    )
    has_single = single_per_cell > 0
    mutual += float(
        np.sum(single_per_cell[has_single] / n * (log_n - np.log(a_counts[has_single])))
    )
    mutual = max(mutual, 0.0)
    eps = 1e-12
    if h_a + h_b <= eps:
        v_info = info_split = info_merge = 1.0
    else:
        v_info = min(2.0 * mutual / (h_a + h_b), 1.0)
        info_split = min(mutual / h_b, 1.0) if h_b > eps else 1.0
        info_merge = min(mutual / h_a, 1.0) if h_a > eps else 1.0
    return _SliceScores(v_rand, v_info, rand_split, rand_merge, info_split, info_merge)


def _is_mask(prob: np.ndarray) -> bool:
    """True when a probability array only holds 0 and 1."""
    return bool(np.all((prob == 0.0) | (prob == 1.0)))


def rand_info_scores_2d(
    prob_or_mask: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    *,
    foreground_value: int | None = None,
    ignore_mask: np.ndarray | None = None,
) -> tuple[float, float]:
    """V_rand and V_info of one 2D slice at one threshold (ISBI 2012 protocol).

    ``prob_or_mask``: probabilities in [0, 1] (1 = cell interior) or a mask (bool,
    0/1 or 0/255); the interior is ``prob > threshold``. ``labels``: binary ground
    truth, foreground = cell interior (see :func:`isbi_scores` for
    ``foreground_value``). ``ignore_mask`` (True = ignored) drops pixels from the
    counts. A slice without ground-truth foreground gives ``(nan, nan)``.
    """
    prob = _as_probability(prob_or_mask)
    labels = np.asarray(labels)
    _check_same_shape(prob, labels, "prediction", "labels")
    if prob.ndim != 2:
        raise InputError(f"rand_info_scores_2d needs 2D slices, got shape {prob.shape}.")
    fg = _foreground(labels, foreground_value)
    ignore = _valid_mask(ignore_mask, prob.shape, "ignore_mask")
    valid = fg if ignore is None else fg & ~ignore
    scores = _score_slice(_gt_cells(fg), _proposal(prob, float(threshold)), valid)
    return scores.v_rand, scores.v_info


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN when every value is NaN."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _best(per_threshold: np.ndarray) -> int:
    """Index of the largest finite value (the first one on ties); 0 if all are NaN."""
    if np.all(np.isnan(per_threshold)):
        return 0
    return int(np.nanargmax(per_threshold))


def isbi_scores(
    prediction: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    foreground_value: int | None = None,
    ignore_mask: np.ndarray | None = None,
) -> dict:
    """ISBI 2012 V_rand and V_info of a 2D slice or a (Z, Y, X) stack.

    ``prediction``: float probabilities in [0, 1] (1 = cell interior) or a binary mask
    (bool, 0/1 integers, 0/255 where 255 = interior). A prediction that only holds 0
    and 1 after conversion is treated as a mask: its interior is used as it is at
    every threshold (so every threshold gives the same score, and the reported best
    threshold is the first one). ``labels``: ground truth of the same shape; with
    ``foreground_value`` the interior is ``labels == foreground_value``, otherwise
    the labels must hold at most two values and the larger is the interior.
    ``ignore_mask`` (True = ignored) drops pixels from the counts.

    Per threshold each score is averaged over the slices (slices without ground-truth
    foreground are skipped); the best mean over the thresholds is reported, the first
    threshold winning ties. Returns ``v_rand``, ``v_info``, ``v_rand_threshold``,
    ``v_info_threshold``, ``v_rand_per_threshold``, ``v_info_per_threshold``,
    ``v_rand_per_slice`` (at the best V_rand threshold), ``v_info_per_slice`` (at the
    best V_info threshold) and ``thresholds``.
    """
    prob = _as_probability(prediction)
    labels = np.asarray(labels)
    _check_same_shape(prob, labels, "prediction", "labels")
    if prob.ndim not in (2, 3):
        raise InputError(
            f"isbi_scores needs a 2D slice or a 3D (Z, Y, X) stack, got shape {prob.shape}."
        )
    ths = [float(t) for t in thresholds]
    if not ths:
        raise InputError("isbi_scores needs at least one threshold.")
    if any(not np.isfinite(t) for t in ths):
        raise InputError(f"thresholds must be finite numbers, got {ths}.")
    fg = _foreground(labels, foreground_value)
    ignore = _valid_mask(ignore_mask, prob.shape, "ignore_mask")
    if prob.ndim == 2:
        prob, fg = prob[None], fg[None]
        ignore = None if ignore is None else ignore[None]
    is_mask = _is_mask(prob)
    if is_mask:
        logger.debug("prediction is a binary mask; the same interior is used at every threshold")

    n_slices, n_th = prob.shape[0], len(ths)
    rand = np.full((n_th, n_slices), np.nan)
    info = np.full((n_th, n_slices), np.nan)

    def score_slice(z: int) -> None:
        """Fill column ``z`` of ``rand`` and ``info``."""
        valid = fg[z] if ignore is None else fg[z] & ~ignore[z]
        if not valid.any():
            logger.warning("slice %d has no ground-truth foreground; it is skipped", z)
            return
        cells = _gt_cells(fg[z])
        if is_mask:
            s = _score_slice(cells, _proposal(prob[z], 0.5), valid)
            rand[:, z], info[:, z] = s.v_rand, s.v_info
            return
        for k, th in enumerate(ths):
            s = _score_slice(cells, _proposal(prob[z], th), valid)
            rand[k, z], info[k, z] = s.v_rand, s.v_info

    # the watershed releases the GIL, so slices run in parallel threads
    workers = min(n_slices, os.cpu_count() or 1, _MAX_WORKERS)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(score_slice, z) for z in range(n_slices)]:
                future.result()
    else:
        for z in range(n_slices):
            score_slice(z)

    rand_mean = np.array([_nanmean(row) for row in rand])
    info_mean = np.array([_nanmean(row) for row in info])
    k_rand, k_info = _best(rand_mean), _best(info_mean)
    return {
        "v_rand": float(rand_mean[k_rand]),
        "v_info": float(info_mean[k_info]),
        "v_rand_threshold": ths[k_rand],
        "v_info_threshold": ths[k_info],
        "v_rand_per_threshold": [float(v) for v in rand_mean],
        "v_info_per_threshold": [float(v) for v in info_mean],
        "v_rand_per_slice": [float(v) for v in rand[k_rand]],
        "v_info_per_slice": [float(v) for v in info[k_info]],
        "thresholds": ths,
    }


def segmentation_scores(
    prediction: np.ndarray,
    labels: np.ndarray,
    threshold: float = 0.5,
    ignore_mask: np.ndarray | None = None,
    foreground_value: int | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict:
    """Dice, pixel error and (for 2D / 3D inputs) the ISBI 2012 scores.

    Dice and pixel error compare ``prediction > threshold`` (after the conversion of
    :func:`isbi_scores`) with the label foreground, outside ``ignore_mask`` (True =
    ignored). The ISBI entries are those of :func:`isbi_scores` over ``thresholds``.
    """
    prob = _as_probability(prediction)
    labels = np.asarray(labels)
    _check_same_shape(prob, labels, "prediction", "labels")
    fg = _foreground(labels, foreground_value)
    ignore = _valid_mask(ignore_mask, prob.shape, "ignore_mask")
    keep = None if ignore is None else ~ignore
    pred_fg = prob > float(threshold)
    result: dict = {
        "dice": dice(pred_fg, fg, keep),
        "pixel_error": pixel_error(pred_fg, fg, keep),
        "threshold": float(threshold),
    }
    if prob.ndim in (2, 3):
        result.update(isbi_scores(prob, fg, thresholds, ignore_mask=ignore))
    else:
        logger.info("ISBI scores need 2D or 3D inputs; skipped for shape %s", prob.shape)
    return result


# --------------------------------------------------------------------------- volume


def _sampling(spacing: Sequence[float], shape: tuple[int, ...]) -> tuple[float, ...]:
    """Check a per-axis voxel spacing against an array shape; return it as floats."""
    sampling = tuple(float(s) for s in spacing)
    if len(sampling) != len(shape):
        raise InputError(
            f"spacing has {len(sampling)} values but the masks have {len(shape)} axes "
            f"(shape {shape})."
        )
    if any(not np.isfinite(s) or s <= 0 for s in sampling):
        raise InputError(f"spacing values must be positive, got {sampling}.")
    return sampling


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array border is outside)."""
    structure = ndi.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndi.binary_erosion(mask, structure=structure, border_value=0)


def volume_scores(
    pred_mask: np.ndarray,
    target_mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict:
    """PROMISE12-style measures of a predicted mask against a reference mask.

    ``spacing`` is the voxel size per axis (e.g. mm, in Z, Y, X order). Returns:

    * ``dice``;
    * ``average_boundary_distance``: mean of the symmetric surface distances (each
      surface voxel of either mask to the nearest surface voxel of the other), in
      the units of ``spacing``;
    * ``hausdorff95``: 95th percentile (linear interpolation) of those distances;
    * ``relative_volume_difference``: ``100 * (V_pred - V_true) / V_true`` in percent;
    * ``volume_pred`` and ``volume_true`` in units of ``spacing`` cubed.

    An empty ``target_mask`` raises :class:`InputError` (the relative volume
    difference is undefined). An empty ``pred_mask`` gives Dice 0, distances ``inf``
    and a relative volume difference of -100.
    """
    pred = _as_bool(pred_mask, "pred_mask")
    target = _as_bool(target_mask, "target_mask")
    _check_same_shape(pred, target, "pred_mask", "target_mask")
    sampling = _sampling(spacing, pred.shape)
    if not target.any():
        raise InputError("target_mask is empty; volume scores need a non-empty reference.")

    voxel = float(np.prod(sampling))
    v_pred = float(np.count_nonzero(pred)) * voxel
    v_true = float(np.count_nonzero(target)) * voxel
    result = {
        "dice": dice(pred, target),
        "relative_volume_difference": 100.0 * (v_pred - v_true) / v_true,
        "volume_pred": v_pred,
        "volume_true": v_true,
    }
    if not pred.any():
        logger.warning("pred_mask is empty; surface distances are infinite")
        result["average_boundary_distance"] = float("inf")
        result["hausdorff95"] = float("inf")
        return result

    # Crop to the bounding box of both masks: every surface voxel lies inside it, and the
    # distance transforms only look for zeros inside the array, so the result is exact.
    box = ndi.find_objects((pred | target).astype(np.uint8))[0]
    pred, target = pred[box], target[box]
    surf_pred, surf_true = _surface(pred), _surface(target)
    dist_to_true = ndi.distance_transform_edt(~surf_true, sampling=sampling)
    dist_to_pred = ndi.distance_transform_edt(~surf_pred, sampling=sampling)
    distances = np.concatenate([dist_to_true[surf_pred], dist_to_pred[surf_true]])
    result["average_boundary_distance"] = float(distances.mean())
    result["hausdorff95"] = float(np.percentile(distances, 95))
    return result


def evaluate_volume(
    prediction: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    threshold: float = 0.5,
    *,
    foreground_value: int | None = None,
) -> dict:
    """Volume measures of a probability map or mask against binary labels.

    The prediction is converted as in :func:`isbi_scores` and binarised as
    ``prediction > threshold``; the labels as in :func:`isbi_scores`. ``spacing`` is the
    voxel size per axis (``None``: 1 per axis, i.e. pixels). Returns the entries of
    :func:`volume_scores` plus ``voxels_pred``, ``voxels_true``, ``threshold`` and
    ``notes`` (a list of sentences). Empty masks do not raise:

    * empty prediction, non-empty labels: Dice 0, distances ``inf``, RVD -100 %;
    * empty labels, non-empty prediction: Dice 0, distances ``inf``, RVD ``inf``;
    * both empty: Dice 1, distances and RVD ``nan``;

    each with a note saying which measures are infinite or undefined.
    """
    prob = _as_probability(prediction)
    labels = np.asarray(labels)
    _check_same_shape(prob, labels, "prediction", "labels")
    target = _foreground(labels, foreground_value)
    pred = prob > float(threshold)
    sampling = _sampling((1.0,) * pred.ndim if spacing is None else spacing, pred.shape)
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(target))
    notes: list[str] = []
    if n_true:
        result = volume_scores(pred, target, sampling)
        if not n_pred:
            notes.append(
                f"the prediction is empty (no voxel above threshold {float(threshold):g}): "
                "boundary distances are infinite, RVD is -100 %"
            )
    else:
        voxel = float(np.prod(sampling))
        undefined = float("inf") if n_pred else float("nan")
        result = {
            "dice": dice(pred, target),
            "relative_volume_difference": undefined,
            "volume_pred": n_pred * voxel,
            "volume_true": 0.0,
            "average_boundary_distance": undefined,
            "hausdorff95": undefined,
        }
        if n_pred:
            notes.append("the ground truth is empty: boundary distances and RVD are infinite")
        else:
            notes.append(
                "ground truth and prediction are both empty: boundary distances and RVD "
                "are undefined"
            )
    result.update(voxels_pred=n_pred, voxels_true=n_true, threshold=float(threshold), notes=notes)
    return result
