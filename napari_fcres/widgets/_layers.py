"""Layer names, metadata keys and layer edits shared by the napari-fcres widgets.

The widgets never import each other; what they agree on about layers lives here:

* :data:`METADATA_KEY` - ``layer.metadata`` key of a prediction's provenance (checkpoints,
  image layer, mode, the labels as predicted under ``"reference"``).
* :data:`RESULT_KEY` - ``layer.metadata`` key marking the layers a prediction made
  (``{"image": <image layer name>, "kind": <kind>}``).
* :func:`layer_names` / :func:`label_name` / :func:`is_result_layer` /
  :func:`prefer_source_image` - the names of result layers and how to tell them apart.
* :func:`apply_labels` - write new labels into a Labels layer as ONE undoable step.
* :func:`edit_events` - the events after which a labels layer's values may differ.
* :func:`layer_data` / :func:`current_slice` - a layer's data as numpy and the slice the
  viewer shows.
* :func:`layer_source` / :func:`is_lazy_layer` - a layer's full-resolution data without
  loading it, and whether it is lazy (dask / zarr / multiscale: predict it block by block).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import safe_name

log = logging.getLogger(__name__)

__all__ = [
    "METADATA_KEY",
    "RESULT_KEY",
    "PREVIEW_SUFFIX",
    "RESULT_SUFFIXES",
    "layer_names",
    "label_name",
    "is_result_layer",
    "prefer_source_image",
    "apply_labels",
    "edit_events",
    "layer_source",
    "is_lazy_layer",
    "layer_data",
    "current_slice",
]

#: ``layer.metadata`` key under which prediction provenance is kept.
METADATA_KEY = "fcres"
#: ``layer.metadata`` key marking the layers a prediction made (``{"image", "kind"}``).
RESULT_KEY = "fcres_result"
#: Suffix of the single-slice preview layers of a lazy image.
PREVIEW_SUFFIX = " (preview)"
#: Name endings of the image layers a prediction adds.
RESULT_SUFFIXES = (" probability", " normalized", " disagreement",
                   " probability" + PREVIEW_SUFFIX)


def layer_names(image_name: str) -> dict[str, str]:
    """Names of the layers a prediction of ``image_name`` creates.

    One style: ``"<image> <what it holds>"``.  The labels are "predicted labels": a sample's or
    a user's own labels of the image are often called ``"<image> labels"`` (e.g. "ISBI 2012
    train labels"), and two layers of one name would be told apart only by napari's "[1]".
    """
    return {
        "probability": f"{image_name} probability",
        "normalized": f"{image_name} normalized",
        "disagreement": f"{image_name} disagreement",
        "labels": f"{image_name} predicted labels",
    }


def label_name(image_name: str) -> str:
    """The ``labels/<name>`` group name of an image's prediction (file-name friendly)."""
    return safe_name(image_name, default="labels")


def is_result_layer(name: str) -> bool:
    """True for the image layers a prediction adds (not worth predicting or exporting)."""
    return name.endswith(RESULT_SUFFIXES)


def prefer_source_image(combo: Any, viewer: Any) -> None:
    """If ``combo`` (a layer combo) shows a prediction result, choose the top-most other image."""
    from napari.layers import Image

    layer = combo.layer()
    if layer is None or not is_result_layer(layer.name):
        return
    for candidate in reversed(list(viewer.layers)):
        if isinstance(candidate, Image) and not is_result_layer(candidate.name):
            combo.set_layer(candidate.name)
            return


def edit_events(layer: Any) -> list[Any]:
    """Events after which a labels layer's values may differ (paint, data, undo / redo)."""
    if layer is None:
        return []
    ev = layer.events
    return [getattr(ev, name) for name in ("paint", "data", "labels_update", "set_data")
            if hasattr(ev, name)]


# ----------------------------------------------------------------------------- layer data


def layer_source(layer: Any) -> Any:
    """A layer's full-resolution data as it is (numpy, dask or zarr), nothing loaded."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def is_lazy_layer(layer: Any) -> bool:
    """True for a multiscale layer or data that is not an in-memory numpy array."""
    return bool(getattr(layer, "multiscale", False)) or not isinstance(
        layer_source(layer), np.ndarray
    )


def layer_data(layer: Any) -> np.ndarray:
    """A layer's data as a numpy array (loads lazy data: small layers only)."""
    return np.asarray(layer_source(layer))


def current_slice(viewer: Any, layer: Any, axis: int = 0) -> int:
    """Index along ``axis`` of ``layer``'s data that the viewer shows (0 for 2-D layers)."""
    if layer.ndim < 3:
        return 0
    point = layer.world_to_data(viewer.dims.point[-layer.ndim:])
    n = layer_source(layer).shape[axis]
    return int(np.clip(round(float(point[axis])), 0, n - 1))


# ----------------------------------------------------------------------------- undoable writes


def _index_dtype(n: int) -> np.dtype:
    """Smallest unsigned dtype that indexes an axis of length ``n`` (history memory)."""
    for dtype in (np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.intp)


def apply_labels(layer: Any, new: np.ndarray, index: int | None = None) -> int:
    """Write ``new`` into a Labels layer as ONE undoable step; return the pixels changed.

    ``index`` selects a slice along the first axis (``new`` is then 2-D), ``None`` the whole
    data.  Only changed pixels are recorded (their indices in the smallest integer dtype).  If
    the new labels do not fit the layer's dtype it is widened first (the history stays valid).
    """
    if getattr(layer, "multiscale", False):
        raise InputError("multiscale labels layers cannot be corrected here")
    data = layer.data
    if not isinstance(data, np.ndarray):
        raise InputError(
            f"labels layer {layer.name!r} is not held in memory ({type(data).__name__}); "
            "load it as a numpy array to correct it here"
        )
    target = data if index is None else data[index]
    new = np.asarray(new)
    if new.shape != target.shape:
        raise InputError(f"new labels have shape {new.shape}, expected {target.shape}")
    changed = target != new
    n = int(np.count_nonzero(changed))
    if n == 0:
        return 0
    values = new[changed]
    if np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
        lo, hi = int(values.min()), int(values.max())
    else:
        raise InputError(f"labels must be integers, got {values.dtype}")
    if lo < 0:
        raise InputError("labels must not be negative")
    if hi > np.iinfo(data.dtype).max:
        wider = np.int32 if hi <= np.iinfo(np.int32).max else np.int64
        log.warning("widening labels layer %r from %s to %s to hold label %d",
                    layer.name, data.dtype, np.dtype(wider), hi)
        layer.data = data.astype(wider)
        data = layer.data
    idx = [ix.astype(_index_dtype(data.shape[ax + (index is not None)]), copy=False)
           for ax, ix in enumerate(np.nonzero(changed))]
    if index is not None:
        idx.insert(0, np.full(n, index, dtype=_index_dtype(data.shape[0])))
    if not layer.visible:
        # napari does not re-slice a hidden layer when the slider moves, and data_setitem
        # updates the displayed slice it last made (IndexError on a stale slice): slice now
        layer.set_view_slice()
    with layer.block_history():
        layer.data_setitem(tuple(idx), values.astype(data.dtype, copy=False))
    return n
