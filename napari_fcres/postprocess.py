"""From probabilities to masks and labels, and label corrections.

All functions accept 2D images or 3D stacks and keep the input's shape.
Connectivity follows :func:`scipy.ndimage.generate_binary_structure`: 1 means
face neighbours (4 in 2D, 6 in 3D), ``ndim`` means all neighbours.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = [
    "threshold",
    "largest_component",
    "remove_small_objects",
    "fill_holes",
    "instance_labels",
    "labels_from_probabilities",
    "remove_small_labels",
    "fill_label_holes",
    "keep_largest",
    "relabel_instances",
    "merge_labels",
    "split_label_along_line",
    "MODES",
]

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("binary", "largest", "instances")


def _check_array(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise InputError(f"{name} must be 2D or 3D, got shape {a.shape}")
    return a


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise InputError(f"connectivity must be between 1 and {ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    return _check_array(mask, "mask").astype(bool, copy=False)


def threshold(prob: np.ndarray, value: float = 0.5) -> np.ndarray:
    """Foreground mask ``prob > value``."""
    prob = _check_array(prob, "probabilities")
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"threshold must be between 0 and 1, got {value}")
    if not np.issubdtype(prob.dtype, np.number) and prob.dtype != bool:
        raise InputError(f"probabilities must be numbers, got dtype {prob.dtype}")
    return np.asarray(prob > value, dtype=bool)


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Keep only the largest connected component (in 3D for a stack); empty stays empty."""
    mask = _as_mask(mask)
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_objects(mask: np.ndarray, min_size: int, connectivity: int = 1) -> np.ndarray:
    """Drop connected components with fewer than ``min_size`` pixels (voxels for a stack)."""
    mask = _as_mask(mask)
    if min_size < 0:
        raise InputError(f"min_size must be non-negative, got {min_size}")
    if min_size <= 1:
        return mask.copy()
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n == 0:
        return mask.copy()
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray, slice_wise: bool = True, axis: int = 0) -> np.ndarray:
    """Fill enclosed background; a stack is filled per 2D slice along ``axis`` by default."""
    mask = _as_mask(mask)
    if mask.ndim == 2 or not slice_wise:
        return ndimage.binary_fill_holes(mask)
    out = np.empty_like(mask)
    src, dst = np.moveaxis(mask, axis, 0), np.moveaxis(out, axis, 0)
    for i in range(src.shape[0]):
        dst[i] = ndimage.binary_fill_holes(src[i])
    return out


def instance_labels(
    mask: np.ndarray, axis: int = 0, per_slice: bool = True, connectivity: int = 1
) -> np.ndarray:
    """Connected components as int32 labels (e.g. EM cell interiors).

    For a stack with ``per_slice`` each 2D slice along ``axis`` is labelled on
    its own and ids continue across slices (unique in the whole stack);
    otherwise components are 3D.
    """
    mask = _as_mask(mask)
    if mask.ndim == 2 or not per_slice:
        labels, _ = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
        return labels.astype(np.int32, copy=False)
    if not -3 <= axis < 3:
        raise InputError(f"axis must be 0, 1 or 2 for a 3D stack, got {axis}")
    structure = _structure(2, connectivity)
    out = np.zeros(mask.shape, dtype=np.int32)
    src, dst = np.moveaxis(mask, axis, 0), np.moveaxis(out, axis, 0)
    offset = 0
    for i in range(src.shape[0]):
        lab, n = ndimage.label(src[i], structure=structure)
        if n:
            lab[lab > 0] += offset
            dst[i] = lab
            offset += n
    return out


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def labels_from_probabilities(
    prob: np.ndarray,
    threshold: float = 0.5,
    mode: str = "binary",
    min_size: int = 0,
    axis: int = 0,
) -> np.ndarray:
    """Threshold, then post-process by ``mode``.

    ``binary``: uint8 0/1 mask without components smaller than ``min_size``.
    ``largest``: uint8 0/1 mask of the largest (3D) connected component.
    ``instances``: int32 labels of connected components, per 2D slice along
    ``axis`` for stacks, ids 1..n in order, pieces under ``min_size`` dropped.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    mask = _threshold(prob, threshold)
    if mode == "instances":
        labels = instance_labels(mask, axis=axis, per_slice=True)
        if min_size > 1:
            sizes = np.bincount(labels.ravel())
            small = sizes < min_size
            small[0] = False
            labels[small[labels]] = 0
        elif min_size < 0:
            raise InputError(f"min_size must be non-negative, got {min_size}")
        return _relabel_sequential(labels)
    mask = remove_small_objects(mask, min_size)
    if mode == "largest":
        mask = largest_component(mask)
    return mask.astype(np.uint8)


_threshold = threshold


# ----------------------------------------------------------------------------- corrections


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = _check_array(labels, "labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def remove_small_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected pieces of each label smaller than ``min_size`` pixels / voxels.

    Pieces are face-connected and never span two labels; the dtype is kept.
    """
    from skimage.measure import label as connected

    if min_size <= 1:
        return labels.copy()
    pieces = connected(labels, background=0, connectivity=1)
    sizes = np.bincount(pieces.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return np.where(keep[pieces], labels, 0).astype(labels.dtype, copy=False)


def _fill_plane(plane: np.ndarray) -> np.ndarray:
    out = plane.copy()
    for lab, box in enumerate(ndimage.find_objects(plane), start=1):
        if box is None:
            continue
        sub = plane[box]
        filled = ndimage.binary_fill_holes(sub == lab) & (sub == 0)
        if filled.any():
            out[box][filled] = lab
    return out


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background enclosed by one label with that label (per 2-D slice of a stack)."""
    if labels.ndim == 2:
        return _fill_plane(labels)
    return np.stack([_fill_plane(p) for p in labels])


def keep_largest(labels: np.ndarray) -> np.ndarray:
    """Keep the labels inside the largest connected foreground component (3-D for a stack)."""
    return np.where(largest_component(labels > 0), labels, 0).astype(labels.dtype, copy=False)


def relabel_instances(labels: np.ndarray, offset: int = 0) -> np.ndarray:
    """Connected foreground components as new ids ``offset + 1 ...`` (per slice of a stack)."""
    out = instance_labels(labels > 0, per_slice=True)
    if offset:
        out[out > 0] += offset
    return out


def merge_labels(labels: np.ndarray, a: int, b: int, close_gap: int = 0) -> np.ndarray:
    """A copy of ``labels`` where label ``b`` becomes label ``a``.

    ``close_gap`` > 0 also gives label ``a`` the background (0) between the two labels, in
    gaps up to that many pixels wide (per 2-D slice of a stack): a pixel is filled when its
    distances to the nearest pixel of ``a`` and of ``b`` add up to at most ``close_gap + 1``.
    Without it a merge changes only label ids, and a foreground mask of the result (what
    training learns from) still shows two objects with a seam between them.
    """
    labels = _check_labels(labels)
    if a == b:
        raise InputError(f"cannot merge label {a} with itself")
    if b == 0:
        raise InputError("cannot merge the background (0) into a label; pick two labels")
    if not np.any(labels == b):
        raise InputError(f"label {b} is not in the labels")
    if close_gap < 0:
        raise InputError(f"close_gap must be non-negative, got {close_gap}")
    out = labels.copy()
    if close_gap:
        planes_in = labels if labels.ndim == 3 else labels[None]
        planes_out = out if out.ndim == 3 else out[None]
        for src, dst in zip(planes_in, planes_out, strict=True):
            _fill_gap(src, dst, a, b, close_gap)
    out[labels == b] = a
    return out


def _fill_gap(src: np.ndarray, dst: np.ndarray, a: int, b: int, gap: int) -> None:
    """Give ``a`` the background of ``src`` between labels ``a`` and ``b`` (writes ``dst``)."""
    ma, mb = src == a, src == b
    if not (ma.any() and mb.any()):
        return
    rs, cs = np.nonzero(ma | mb)
    r0, r1 = max(rs.min() - gap, 0), min(rs.max() + gap + 1, src.shape[0])
    c0, c1 = max(cs.min() - gap, 0), min(cs.max() + gap + 1, src.shape[1])
    box = (slice(r0, r1), slice(c0, c1))
    da, (ar, ac) = ndimage.distance_transform_edt(~ma[box], return_indices=True)
    db, (br, bc) = ndimage.distance_transform_edt(~mb[box], return_indices=True)
    # between the two: on (or next to) the straight path from the nearest pixel of ``a`` to
    # the nearest of ``b``, so the background around the ends of the gap is left alone
    span = np.hypot(ar - br, ac - bc)
    fill = (src[box] == 0) & (da + db <= gap + 1) & (da + db <= span + _BETWEEN_TOLERANCE)
    dst[box][fill] = a


#: How far (pixels) the path through a filled gap pixel may exceed the straight one.
_BETWEEN_TOLERANCE = 0.5


def _rasterize_polyline(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a 4-connected polyline through ``points`` (row, col), clipped."""
    from skimage.draw import line

    pts = np.rint(points).astype(np.int64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:], strict=True):
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        rows.append(rr)
        cols.append(cc)
        # thicken diagonal steps so the line is 4-connected and cuts 8-connectivity too
        diag = (np.abs(np.diff(rr)) == 1) & (np.abs(np.diff(cc)) == 1)
        rows.append(rr[:-1][diag])
        cols.append(cc[1:][diag])
    r, c = np.concatenate(rows), np.concatenate(cols)
    inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    mask = np.zeros(shape, dtype=bool)
    mask[r[inside], c[inside]] = True
    return mask


def split_label_along_line(
    labels: np.ndarray,
    label: int,
    line_points: np.ndarray,
    slice_index: int | None = None,
    axis: int = 0,
) -> np.ndarray:
    """Cut ``label`` along a polyline drawn on one 2D slice; a copy is returned.

    ``line_points`` are (K, 2) ``(row, col)`` points, or (K, 3) points of a
    stack (as napari gives them) whose ``axis`` column is the slice index.
    The cut region's 8-connected pieces are found; the largest keeps
    ``label``, every other piece gets a new id (max + 1, ...).  The line's
    pixels inside the region become background (0): a seam that a foreground
    mask of the result keeps, so that training learns the split and not only
    new ids.  A line that does not separate the region leaves it unchanged.
    """
    labels = _check_labels(labels)
    pts = np.asarray(line_points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] not in (2, 3):
        raise InputError(f"line_points must be (K, 2) or (K, 3) with K >= 2, got {pts.shape}")
    if label == 0:
        raise InputError("cannot split the background (label 0)")
    out = labels.copy()
    if labels.ndim == 3:
        if not -3 <= axis < 3:
            raise InputError(f"axis must be 0, 1 or 2 for a 3D stack, got {axis}")
        axis %= 3
        if pts.shape[1] == 3:
            if slice_index is None:
                idx = np.unique(np.rint(pts[:, axis]))
                if len(idx) != 1:
                    raise InputError("the line's points lie on different slices; draw on one")
                slice_index = int(idx[0])
            pts = np.delete(pts, axis, axis=1)
        if slice_index is None:
            raise InputError("slice_index is required for 2D line points on a 3D stack")
        if not 0 <= slice_index < labels.shape[axis]:
            raise InputError(f"slice {slice_index} is outside the stack ({labels.shape[axis]})")
        plane = np.moveaxis(out, axis, 0)[slice_index]  # a view into ``out``
    else:
        if pts.shape[1] == 3:
            pts = pts[:, 1:]
        plane = out
    region = plane == label
    if not region.any():
        where = "" if labels.ndim == 2 else f" on slice {slice_index}"
        raise InputError(f"label {label} is not present{where}")
    # work inside the region's bounding box (plus a 1-pixel margin)
    rs, cs = np.nonzero(region)
    r0, r1 = max(rs.min() - 1, 0), min(rs.max() + 2, plane.shape[0])
    c0, c1 = max(cs.min() - 1, 0), min(cs.max() + 2, plane.shape[1])
    box = region[r0:r1, c0:c1]
    cut = _rasterize_polyline(pts - [r0, c0], box.shape) & box
    pieces, n = ndimage.label(box & ~cut, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        log.info("the line does not split label %d into several pieces", label)
        return out
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    keep = int(np.argmax(sizes))
    next_id = int(labels.max()) + 1
    new_max = next_id + n - 2
    if new_max > np.iinfo(out.dtype).max:
        out = out.astype(np.promote_types(out.dtype, np.min_scalar_type(new_max)))
        plane = np.moveaxis(out, axis, 0)[slice_index] if labels.ndim == 3 else out
    target = plane[r0:r1, c0:c1]
    target[cut] = 0  # the seam: background along the cut
    for p in range(1, n + 1):
        if p == keep:
            continue
        target[pieces == p] = next_id
        next_id += 1
    return out
