"""npe2 single-layer writers: a labels layer as compressed TIFF or NIfTI, keeping its spacing."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .io import write_labels

log = logging.getLogger(__name__)


def _spacing(data: np.ndarray, meta: dict[str, Any]) -> tuple[float, ...] | None:
    scale = meta.get("scale")
    if scale is None:
        return None
    spacing = tuple(abs(float(s)) for s in scale)
    if len(spacing) != data.ndim or not all(s > 0 for s in spacing):
        log.warning("ignoring layer scale %s for data of shape %s", scale, data.shape)
        return None
    return spacing


def _write(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    arr = np.asarray(data)
    out = write_labels(path, arr, spacing=_spacing(arr, meta))
    return [str(out)]


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer as a zlib-compressed (ImageJ-compatible) TIFF."""
    return _write(path, data, meta)


def write_labels_nifti(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer as NIfTI (``.nii`` or ``.nii.gz``)."""
    return _write(path, data, meta)
