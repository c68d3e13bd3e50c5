"""npe2 single-layer writers: a labels layer as compressed TIFF, NIfTI or OME-Zarr.

The layer scale is kept as the voxel spacing.  OME-Zarr labels go to ``<path>/labels/<layer
name>`` with NGFF image-label metadata, written block by block (dask / zarr labels are never
loaded whole); an existing OME-Zarr image gets the labels added next to its image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .io import layer_spacing, safe_name, write_labels

log = logging.getLogger(__name__)


def _spacing(data: Any, meta: dict[str, Any]) -> tuple[float, ...] | None:
    return layer_spacing(meta.get("scale"), len(data.shape))


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


def write_labels_zarr(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer as OME-Zarr image-label ``<path>/labels/<layer name>``."""
    from .errors import InputError
    from .ome_zarr import ngff_version_for, write_ome_zarr_labels

    if meta.get("multiscale") or isinstance(data, (list, tuple)):
        data = data[0]  # the full-resolution level
    out = Path(path)
    if out.suffix.lower() != ".zarr":
        out = out.with_name(out.name + ".zarr")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a zarr folder")
    name = safe_name(meta.get("name") or "", default="labels")
    target = out / "labels" / name
    source = (meta.get("metadata") or {}).get("source_path")
    if source and Path(source).resolve() == target.resolve():
        # the layer is read from this very array: rewriting it would read what it erases
        log.info("labels layer %r is already stored in %s", name, target)
        return [str(out)]
    write_ome_zarr_labels(out, data, name, _spacing(data, meta),
                          ngff_version=ngff_version_for(out))
    return [str(out)]
