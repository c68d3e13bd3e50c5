"""npe2 reader: EM / CT / MRI stacks as napari layers, with the voxel spacing as ``scale``.

Handles TIFF / OME-TIFF, NIfTI, MetaImage, NRRD, single DICOM files and folders of DICOM or
2-D slices (read as one volume).  A file whose name contains "label" and holds integer data
opens as a labels layer; everything else as an image layer.  A ``.zarr`` folder opens lazily
(dask, multiscale) as an OME-Zarr image with its ``labels/`` as labels layers; a store holding
only labels (as the OME-Zarr writer and the Predict widget make) opens every label image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .io import SITK_EXTENSIONS, SLICE_EXTENSIONS, TIFF_EXTENSIONS, read_image

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

_FILE_EXTENSIONS = TIFF_EXTENSIONS + SITK_EXTENSIONS


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` file or a file with the DICOM magic ``DICM`` at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _readable_folder(path: Path) -> bool:
    """A folder of DICOM files or of 2-D slices that :func:`read_image` stacks."""
    try:
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return False
    if any(p.suffix.lower() in SLICE_EXTENSIONS for p in files):
        return True
    return any(_is_dicom_file(p) for p in files[:20])


def _accepts(path: Path) -> bool:
    if path.is_dir():
        return _readable_folder(path)
    return _extension(path) in _FILE_EXTENSIONS


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader function when napari-fcres can read ``path`` (or every path), else None."""
    if isinstance(path, (str, Path)) and str(path).rstrip("/\\").lower().endswith(".zarr") \
            and Path(path).is_dir():
        return read_zarr
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_accepts(Path(p)) for p in paths):
        return None
    return read_layers


def read_zarr(path: str | list[str]) -> list[LayerData]:
    """OME-Zarr stores / zarr arrays as lazy (dask) layers; all labels of a labels-only store."""
    from .ome_zarr import ome_zarr_label_names, zarr_layer_data

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    for item in paths:
        p = Path(item)
        has_image, names = ome_zarr_label_names(p)
        if has_image or not names:
            layers.extend(zarr_layer_data(str(p)))
            continue
        for name in names:
            layers.extend(zarr_layer_data(str(p / "labels" / name)))
    return layers


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", *_FILE_EXTENSIONS):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _layer_from_path(path: Path) -> LayerData:
    volume = read_image(path)
    data = volume.data
    meta: dict[str, Any] = {"name": _stem(path), "metadata": dict(volume.metadata)}
    meta["metadata"]["source_path"] = str(path)
    spacing = volume.spacing
    rgb = (
        data.ndim >= 3 and data.shape[-1] in (3, 4)
        and str(volume.metadata.get("axes", "")).upper().endswith("S")
    )
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if rgb:
            spacing = spacing[:-1]
        if len(spacing) == data.ndim - (1 if rgb else 0):
            meta["scale"] = spacing
            meta["metadata"]["spacing"] = spacing
    integer = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    if "label" in path.name.lower() and integer and not rgb:
        if data.dtype == bool:
            data = data.astype(np.uint8)
        return data, meta, "labels"
    if rgb:
        meta["rgb"] = True
    return data, meta, "image"


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one path (or several) into napari layer data tuples."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [_layer_from_path(Path(p)) for p in paths]
