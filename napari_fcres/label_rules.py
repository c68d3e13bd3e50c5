"""What images and labels must look like, and what each label value means for training.

One owner for the label rules used by training, the widgets and the label summary:

* :func:`validate_image` / :func:`check_image_labels`: a single-channel 2-D or 3-D real image
  without NaN/inf, and labels of exactly the image's shape.
* **full** labels (``partial=False``, :func:`as_binary_labels`): every pixel is labelled; at
  most two values (e.g. ISBI 2012: 0 = membrane, 255 = cell interior); the larger value is
  foreground (:func:`full_foreground_value`) unless ``foreground_value`` says otherwise.
* **partial** labels (``partial=True``), as painted in a napari labels layer
  (:func:`partial_masks`, :func:`partial_role`): ``0`` = not annotated (ignored), ``1`` =
  background / membrane, ``2`` or any larger value = foreground.
* the plain rule (:func:`plain_foreground`): every label > 0 is foreground, 0 is background.
* annotated slices (:func:`painted_slices`, :func:`annotated_slices`): the Z slices holding any
  value other than the "not painted" value (0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "UNLABELED",
    "annotated_slices",
    "as_binary_labels",
    "check_image_labels",
    "full_foreground_value",
    "painted_slices",
    "partial_masks",
    "partial_role",
    "plain_foreground",
    "validate_image",
]

#: partial labels: the value of pixels that are not annotated (napari's "not painted")
UNLABELED = 0
#: partial labels: background / membrane
BACKGROUND = 1
#: partial labels: this value and every larger one is foreground
FOREGROUND = 2


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

_MULTICHANNEL = "RGB/multi-channel images are not supported; convert to one channel"


def validate_image(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Check that ``image`` is a single-channel 2-D or 3-D real array without NaN/inf.

    Returns ``image`` unchanged; raises :class:`InputError` naming the problem otherwise.
    """
    if image is None:
        raise InputError(f"{name} is missing")
    arr = np.asarray(image)
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if arr.ndim == 4 or (
        arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[0], arr.shape[1]) > 4
    ):
        raise InputError(f"{name}: {_MULTICHANNEL} (got shape {arr.shape})")
    if arr.ndim not in (2, 3):
        raise InputError(f"{name} must be 2-D (y, x) or 3-D (z, y, x); got shape {arr.shape}")
    if arr.dtype == bool:
        raise InputError(f"{name} is boolean; a grey-value image is needed")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} has non-numeric dtype {arr.dtype}; a grey-value image is needed")
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise InputError(
                f"{name} contains {n_bad} NaN/inf pixels (of {arr.size}); replace them first"
            )
    return image


def check_image_labels(image: np.ndarray, labels: np.ndarray) -> None:
    """Raise :class:`InputError` unless ``image`` and ``labels`` have the same shape."""
    ishape, lshape = tuple(np.shape(image)), tuple(np.shape(labels))
    if ishape == lshape:
        return
    if {len(ishape), len(lshape)} == {2, 3}:
        raise InputError(
            f"image is {len(ishape)}-D (shape {ishape}) but labels are {len(lshape)}-D "
            f"(shape {lshape}); 2D vs 3D mismatch: use labels with exactly the image's shape "
            "(e.g. a labels layer created from this image)"
        )
    raise InputError(
        f"image shape {ishape} and labels shape {lshape} differ; they must be the same"
    )


# --------------------------------------------------------------------------------------------
# label conventions
# --------------------------------------------------------------------------------------------


def partial_masks(
    labels: np.ndarray, foreground_value: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The partial-label rule: ``(annotated, foreground)`` boolean masks of ``labels``.

    ``annotated``: every value but :data:`UNLABELED` (0).  ``foreground``: values of
    :data:`FOREGROUND` (2) or more, or only ``foreground_value`` when given.  Background is
    ``annotated & ~foreground`` (1, or every other annotated value with ``foreground_value``).
    """
    arr = np.asarray(labels)
    annotated = arr != UNLABELED
    if foreground_value is not None:
        return annotated, arr == foreground_value
    return annotated, arr >= FOREGROUND


def partial_role(value: int) -> str:
    """``"unlabeled"``, ``"background"`` or ``"foreground"``: one value under the partial rule."""
    annotated, foreground = partial_masks(np.asarray(value))
    if foreground:
        return "foreground"
    return "background" if annotated else "unlabeled"


def full_foreground_value(values: Sequence[int] | np.ndarray) -> int | None:
    """The full-label rule: the larger of the distinct label values is foreground.

    Returns None when that value is 0 (all labels are 0: nothing is foreground).
    """
    top = max(values)
    return None if top == 0 else top


def plain_foreground(labels: np.ndarray) -> np.ndarray:
    """The plain rule: every label > 0 is foreground (bool mask), 0 is background."""
    return np.asarray(labels) > 0


def _integer_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.size == 0:
        raise InputError(f"labels are empty (shape {arr.shape})")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if np.isfinite(arr).all() and np.array_equal(arr, np.round(arr)):
            return arr
        raise InputError("labels must hold integer values; got non-integer or NaN values")
    raise InputError(f"labels have non-numeric dtype {arr.dtype}")


def as_binary_labels(
    labels: np.ndarray,
    foreground_value: int | None = None,
    ignore_value: int | None = None,
    partial: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a label image into a binary target and a mask of pixels that count.

    Returns ``(target, valid)``: ``target`` is float32 with 1 = foreground, 0 = background
    (and 0 at invalid pixels); ``valid`` is bool, False where a pixel must be ignored.

    Full labels (``partial=False``): every pixel is labelled.  With ``foreground_value``,
    foreground is ``labels == foreground_value``; without it the labels may hold at most two
    distinct values (besides ``ignore_value``) and the larger is foreground (ISBI 2012: 255 =
    cell interior is foreground, 0 = membrane is background).

    Partial labels (``partial=True``), as painted in napari: ``0`` = not annotated (invalid),
    ``1`` = background / membrane, ``2`` or any larger value = foreground.  With
    ``foreground_value`` only that value is foreground and every other non-zero value is
    background.

    Pixels equal to ``ignore_value`` are invalid in both modes.  Labels without any valid
    foreground pixel raise :class:`InputError`; labels with only foreground are allowed.
    """
    arr = _integer_labels(labels)
    valid = np.ones(arr.shape, dtype=bool) if ignore_value is None else arr != ignore_value
    if partial:
        annotated, fg = partial_masks(arr, foreground_value)
        valid &= annotated
        if not valid.any():
            raise InputError(
                "labels hold no annotation: in partial mode 0 = not annotated, 1 = background, "
                "2 (or more) = foreground; paint some pixels first"
            )
    else:
        if not valid.any():
            raise InputError(f"every label pixel equals ignore_value={ignore_value}")
        if foreground_value is not None:
            fg = arr == foreground_value
        else:
            values = np.unique(arr[valid])
            if len(values) > 2:
                shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
                raise InputError(
                    f"labels have {len(values)} distinct values ({shown}); pass "
                    "foreground_value (or use partial labels: 0 = unlabelled, 1 = background, "
                    "2 = foreground)"
                )
            fg_value = full_foreground_value(values)
            if fg_value is None:
                raise InputError("labels are all zero: there is no foreground to learn")
            fg = arr == fg_value
    fg &= valid
    if not fg.any():
        raise InputError(
            "labels contain no foreground pixel"
            + (
                f" equal to foreground_value={foreground_value}"
                if foreground_value is not None
                else ""
            )
            + "; at least some foreground must be labelled"
        )
    return fg.astype(np.float32), valid


def painted_slices(labels: np.ndarray, unlabeled_value: int | None = None) -> np.ndarray:
    """Per Z slice (first axis; 2-D labels are one slice): does it carry any annotation?

    A pixel is annotated when it differs from ``unlabeled_value`` (``None`` means 0, napari's
    "not painted").  Returns a bool array with one entry per slice.
    """
    arr = np.asarray(labels)
    unlabeled = 0 if unlabeled_value is None else unlabeled_value
    if arr.ndim == 2:
        return np.array([bool(np.any(arr != unlabeled))])
    if arr.ndim != 3:
        raise InputError(f"labels must be 2-D or 3-D, got shape {arr.shape}")
    return (arr != unlabeled).reshape(arr.shape[0], -1).any(axis=1)


def annotated_slices(labels: np.ndarray, unlabeled_value: int | None = None) -> list[int]:
    """Indices of the Z slices that carry any annotation (see :func:`painted_slices`).

    For 2-D labels returns ``[0]`` when anything is annotated, else ``[]``.
    """
    return [int(i) for i in np.flatnonzero(painted_slices(labels, unlabeled_value))]
