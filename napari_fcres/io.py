"""Reading and writing images and labels.

Supported formats for :func:`read_image`:

* TIFF / OME-TIFF / ImageJ TIFF (``.tif``, ``.tiff``) via tifffile; spacing is taken from the
  ImageJ ``spacing`` entry, the X/YResolution tags, OME ``PhysicalSize*`` or a tifffile
  JSON description;
* NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``, ``.mhd``), NRRD (``.nrrd``, ``.nhdr``)
  and single DICOM files (``.dcm``) via SimpleITK;
* single PNG / JPEG / BMP images via scikit-image;
* a folder of 2D slices (tif/png/jpg/bmp, natural name order) stacked along Z;
* a folder of DICOM slices read as one volume with SimpleITK's ``ImageSeriesReader``;
* a zarr array or the first (finest) level of an OME-Zarr image (``.zarr``), read into memory
  (for volumes larger than memory see :mod:`napari_fcres.chunked`).

All arrays are in numpy/napari axis order (``z, y, x``) and spacings are given per axis in that
same order.

What images and labels must look like and what each label value means (full / partial labels,
annotated slices) is decided in :mod:`napari_fcres.label_rules`.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

# The label rules moved to napari_fcres.label_rules; re-exported for code that imports them here.
from .label_rules import (  # noqa: F401
    annotated_slices,
    as_binary_labels,
    check_image_labels,
    validate_image,
)

logger = logging.getLogger(__name__)

TIFF_EXTENSIONS = (".tif", ".tiff")
SITK_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
PLAIN_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SLICE_EXTENSIONS = TIFF_EXTENSIONS + PLAIN_2D_EXTENSIONS
WRITE_EXTENSIONS = TIFF_EXTENSIONS + (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")

SUPPORTED_FORMATS = (
    "TIFF/OME-TIFF (.tif, .tiff), NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), "
    "NRRD (.nrrd, .nhdr), DICOM (.dcm or a folder of DICOM slices), PNG/JPEG/BMP (.png, .jpg, "
    ".jpeg, .bmp), folders of 2D TIFF/PNG/JPEG slices and OME-Zarr / zarr arrays (.zarr)"
)
SUPPORTED_WRITE_FORMATS = (
    "TIFF (.tif, .tiff), NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd)"
)

_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


@dataclass
class Volume:
    """An image read from disk.

    ``spacing`` has one entry per axis of ``data`` in numpy/napari order (e.g. ``(z, y, x)``),
    or is ``None`` when the file stores no physical pixel size.
    """

    data: np.ndarray
    spacing: tuple[float, ...] | None
    path: str | None = None
    metadata: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _extension(path: Path) -> str:
    """Return the lower-case extension of ``path``, treating ``.nii.gz`` as one extension."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders ``slice2`` before ``slice10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _unreadable(path: Path, exc: BaseException | str) -> InputError:
    reason = str(exc)
    if "ERROR:" in reason:  # SimpleITK: drop the C++ source location before the message
        reason = reason.split("ERROR:", 1)[1]
    reason = " ".join(reason.split()).rstrip(".") or type(exc).__name__
    return InputError(
        f"cannot read {str(path)!r}: {reason}. Supported formats: {SUPPORTED_FORMATS}."
    )


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Validate a per-axis spacing; returns it as a tuple of floats (or None)."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(f"spacing must be a sequence of numbers, got {spacing!r}") from exc
    if len(values) != ndim:
        raise InputError(
            f"spacing {values} has {len(values)} entries but the array has {ndim} axes; "
            "give one spacing per axis in (z, y, x) order"
        )
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing values must be positive and finite, got {values}")
    return values


def layer_spacing(scale: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """A napari layer ``scale`` as voxel spacing, or None (with a warning) when unusable."""
    if scale is None:
        return None
    try:
        return _check_spacing(tuple(abs(float(s)) for s in scale), ndim)
    except (InputError, TypeError, ValueError):
        logger.warning("ignoring layer scale %s for %d-D data", scale, ndim)
        return None


def safe_name(name: str, default: str = "export") -> str:
    """A file- and zarr-group-friendly version of a layer name (``default`` when empty)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip()).strip("._")
    return cleaned or default


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> Volume:
    """Read an image file or a folder of slices into a :class:`Volume`.

    The dtype is kept as stored.  Raises :class:`InputError` for a missing path, an unknown
    extension or a file that cannot be decoded.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{str(p)!r} does not exist. Supported formats: {SUPPORTED_FORMATS}.")
    ext = _extension(p)
    if p.is_dir() and any((p / n).exists() for n in (".zgroup", ".zarray", "zarr.json")):
        ext = ".zarr"  # a zarr group or array, e.g. ``image.zarr/labels/cells``
    if p.is_dir() and ext != ".zarr":
        return _read_folder(p)
    readers: dict[str, Callable[[Path], Volume]] = {".zarr": _read_zarr}
    readers.update(dict.fromkeys(TIFF_EXTENSIONS, _read_tiff))
    readers.update(dict.fromkeys(SITK_EXTENSIONS, _read_sitk))
    readers.update(dict.fromkeys(PLAIN_2D_EXTENSIONS, _read_plain))
    reader = readers.get(ext)
    if reader is None:
        raise InputError(
            f"{str(p)!r} has an unknown extension {ext or '(none)'!r}. "
            f"Supported formats: {SUPPORTED_FORMATS}."
        )
    try:
        volume = reader(p)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a user-facing input problem
        raise _unreadable(p, exc) from exc
    if volume.data.size == 0:
        raise _unreadable(p, "the file holds no pixels")
    logger.info(
        "read %s: shape %s, dtype %s, spacing %s",
        p,
        volume.data.shape,
        volume.data.dtype,
        volume.spacing,
    )
    return volume


def _tiff_spacing(tif: Any, axes: str) -> tuple[tuple[float, ...] | None, dict]:
    """Collect the physical spacing stored in an open ``TiffFile`` for the given series axes."""
    meta: dict[str, Any] = {"axes": axes}
    sx = sy = sz = None
    # OME-XML
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
            if pixels is not None:
                for key, name in (
                    ("PhysicalSizeX", "x"),
                    ("PhysicalSizeY", "y"),
                    ("PhysicalSizeZ", "z"),
                ):
                    if key in pixels.attrib:
                        value = float(pixels.attrib[key])
                        if name == "x":
                            sx = value
                        elif name == "y":
                            sy = value
                        else:
                            sz = value
                unit = pixels.attrib.get("PhysicalSizeXUnit")
                if unit:
                    meta["unit"] = unit
        except (ET.ParseError, ValueError) as exc:
            logger.warning("ignoring unreadable OME metadata: %s", exc)
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    ij = tif.imagej_metadata or {}
    # X/YResolution tags: pixels per unit -> spacing = 1 / resolution
    if sx is None:
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        unit_tag = page.tags.get("ResolutionUnit")
        unit_value = int(unit_tag.value) if unit_tag is not None else 1
        if xres is not None and yres is not None:
            xnum, xden = xres.value
            ynum, yden = yres.value
            explicit = (xnum, xden) != (ynum, yden) or xnum != xden or ij.get("unit")
            if xnum > 0 and ynum > 0 and explicit:
                sx, sy = xden / xnum, yden / ynum
                if not ij.get("unit") and unit_value in (2, 3):
                    meta["unit"] = "inch" if unit_value == 2 else "cm"
        if ij.get("unit"):
            meta["unit"] = ij["unit"]
    if sz is None and ij.get("spacing") is not None:
        sz = float(ij["spacing"])
    # tifffile JSON description ("shaped" metadata) written by write_labels for non-ImageJ dtypes
    shaped = None
    try:
        shaped = tif.shaped_metadata
    except Exception:  # noqa: BLE001 - optional metadata
        shaped = None
    if shaped and isinstance(shaped[0], dict) and shaped[0].get("spacing") is not None:
        spacing = tuple(float(s) for s in shaped[0]["spacing"])
        if len(spacing) == len(axes):
            if shaped[0].get("unit"):
                meta["unit"] = shaped[0]["unit"]
            return spacing, meta
    if sx is None and sy is None and sz is None:
        return None, meta
    stack_axes = [a for a in axes if a not in "XYS"]
    values: list[float] = []
    for axis in axes:
        if axis == "X":
            values.append(sx if sx is not None else 1.0)
        elif axis == "Y":
            values.append(sy if sy is not None else 1.0)
        elif axis == "Z" or (axis in "IQ" and len(stack_axes) == 1):
            values.append(sz if sz is not None else 1.0)
        else:
            values.append(1.0)
    return tuple(float(v) for v in values), meta


def _read_tiff(path: Path) -> Volume:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        spacing, meta = _tiff_spacing(tif, axes)
        meta["format"] = "ome-tiff" if tif.is_ome else ("imagej-tiff" if tif.is_imagej else "tiff")
    if data.ndim != len(axes):  # defensive: tifffile squeezes consistently, but be safe
        spacing = None
    return Volume(data=data, spacing=spacing, path=str(path), metadata=meta)


def _sitk_volume(image: Any, path: Path, meta: dict) -> Volume:
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    if image.GetNumberOfComponentsPerPixel() > 1:
        spacing = spacing + (1.0,)
        meta["components"] = image.GetNumberOfComponentsPerPixel()
    meta.setdefault("origin", tuple(image.GetOrigin()))
    meta.setdefault("direction", tuple(image.GetDirection()))
    if data.ndim != len(spacing):
        spacing = None
    return Volume(data=data, spacing=spacing, path=str(path), metadata=meta)


def _read_sitk(path: Path) -> Volume:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return _sitk_volume(image, path, {"format": _extension(path).lstrip(".")})


def _read_plain(path: Path) -> Volume:
    from skimage import io as skio

    data = np.asarray(skio.imread(str(path)))
    return Volume(data=data, spacing=None, path=str(path), metadata={"format": path.suffix[1:]})


def _read_zarr(path: Path) -> Volume:
    """The finest level of an OME-Zarr image (singleton channel/time dropped) or a zarr array."""
    from .ome_zarr import spatial_level

    array, spacing, meta = spatial_level(path)
    meta = {"format": "ome-zarr" if meta.get("version") else "zarr", **meta}
    return Volume(data=np.asarray(array[...]), spacing=spacing, path=str(path), metadata=meta)


def _read_slice(path: Path) -> np.ndarray:
    if _extension(path) in TIFF_EXTENSIONS:
        import tifffile

        return np.asarray(tifffile.imread(path))
    from skimage import io as skio

    return np.asarray(skio.imread(str(path)))


def _read_folder(folder: Path) -> Volume:
    """Read a folder of 2D slices or a DICOM series."""
    files = sorted(
        (f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")),
        key=lambda f: _natural_key(f.name),
    )
    slices = [f for f in files if _extension(f) in SLICE_EXTENSIONS]
    if slices:
        return _read_slice_folder(folder, slices)
    dicom = _read_dicom_folder(folder)
    if dicom is not None:
        return dicom
    raise InputError(
        f"folder {str(folder)!r} holds no image slices (tif/png/jpg) and no DICOM series. "
        f"Supported formats: {SUPPORTED_FORMATS}."
    )


def _read_slice_folder(folder: Path, slices: list[Path]) -> Volume:
    arrays: list[np.ndarray] = []
    for f in slices:
        try:
            arr = _read_slice(f)
        except Exception as exc:  # noqa: BLE001
            raise _unreadable(f, exc) from exc
        if arrays and arr.shape != arrays[0].shape:
            raise InputError(
                f"slice {f.name!r} in {str(folder)!r} has shape {arr.shape} but "
                f"{slices[0].name!r} has shape {arrays[0].shape}; all slices must have the same "
                "shape"
            )
        if arrays and arr.dtype != arrays[0].dtype:
            raise InputError(
                f"slice {f.name!r} in {str(folder)!r} has dtype {arr.dtype} but "
                f"{slices[0].name!r} has dtype {arrays[0].dtype}; all slices must have the same "
                "dtype"
            )
        arrays.append(arr)
    data = np.stack(arrays, axis=0)
    logger.info("read %d slices from %s: shape %s", len(slices), folder, data.shape)
    return Volume(
        data=data,
        spacing=None,
        path=str(folder),
        metadata={"format": "slices", "files": [f.name for f in slices]},
    )


def _read_dicom_folder(folder: Path) -> Volume | None:
    """Read the largest DICOM series in ``folder``; None when the folder holds no DICOM."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    try:
        series_ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    except Exception as exc:  # noqa: BLE001
        logger.debug("GDCM found no series in %s: %s", folder, exc)
        return None
    if not series_ids:
        return None
    by_id = {sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(by_id[sid]))
    if len(series_ids) > 1:
        logger.warning(
            "%s holds %d DICOM series; reading the largest (%s, %d files)",
            folder,
            len(series_ids),
            chosen,
            len(by_id[chosen]),
        )
    reader.SetFileNames(by_id[chosen])
    try:
        image = reader.Execute()
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(folder, exc) from exc
    meta = {
        "format": "dicom",
        "series_id": chosen,
        "series_ids": series_ids,
        "files": [Path(f).name for f in by_id[chosen]],
    }
    return _sitk_volume(image, folder, meta)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path`` then move it over ``path``.

    An interrupted or failed write leaves any existing ``path`` untouched and removes the temp.
    """
    ext = _extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise InputError(
            f"cannot write {str(path)!r}: unknown extension {ext or '(none)'!r}. "
            f"Supported formats: {SUPPORTED_WRITE_FORMATS}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(ext)] if ext else path.name
    tmp = path.parent / f".{stem}.{uuid.uuid4().hex[:12]}.partial{ext}"
    # create with O_EXCL so the permissions follow the umask, like a normal file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    extra: list[Path] = []
    if ext == ".mhd":  # the pixel data lives in a companion file named after the header
        extra = [tmp.with_suffix(".raw"), tmp.with_suffix(".zraw")]
    try:
        write(tmp)
        if ext == ".mhd":
            _finish_mhd(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        for f in [tmp, *extra]:
            f.unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)
    return path


def _finish_mhd(tmp: Path, path: Path) -> None:
    """Rename the pixel file of a temp ``.mhd`` header and point the header at it."""
    header = tmp.read_text()
    match = re.search(r"^ElementDataFile\s*=\s*(.+)$", header, flags=re.MULTILINE)
    if match is None:
        return
    old = tmp.parent / match.group(1).strip()
    new = path.with_suffix(old.suffix)
    os.replace(old, new)
    header = header[: match.start(1)] + new.name + header[match.end(1) :]
    tmp.write_text(header)


def _write_tiff(tmp: Path, data: np.ndarray, spacing: tuple[float, ...] | None, unit: str) -> None:
    import tifffile

    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack"}
    imagej = data.dtype in _IMAGEJ_DTYPES and data.ndim in (2, 3)
    if imagej:
        axes = "ZYX" if data.ndim == 3 else "YX"
        metadata: dict[str, Any] = {"axes": axes}
        if spacing is not None:
            kwargs["resolution"] = (1.0 / spacing[-1], 1.0 / spacing[-2])
            metadata["unit"] = unit
            if data.ndim == 3:
                metadata["spacing"] = spacing[0]
        tifffile.imwrite(tmp, data, imagej=True, metadata=metadata, **kwargs)
    else:
        metadata = {}
        if spacing is not None:
            kwargs["resolution"] = (1.0 / spacing[-1], 1.0 / spacing[-2])
            metadata = {"spacing": list(spacing), "unit": unit}
        tifffile.imwrite(tmp, data, metadata=metadata, **kwargs)


def _write_sitk(tmp: Path, data: np.ndarray, spacing: tuple[float, ...] | None) -> None:
    import SimpleITK as sitk

    if data.ndim not in (2, 3, 4):
        raise InputError(f"SimpleITK formats need a 2-D to 4-D array, got shape {data.shape}")
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    image = sitk.GetImageFromArray(data, isVector=False)
    if spacing is not None:
        image.SetSpacing(tuple(reversed(spacing)))
    sitk.WriteImage(image, str(tmp), True)


def _write(
    path: str | os.PathLike, data: np.ndarray, spacing: tuple[float, ...] | None, unit: str
) -> Path:
    p = Path(path)
    ext = _extension(p)
    if ext in TIFF_EXTENSIONS:
        return _atomic_write(p, lambda tmp: _write_tiff(tmp, data, spacing, unit))
    return _atomic_write(p, lambda tmp: _write_sitk(tmp, data, spacing))


def _smallest_label_dtype(max_label: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise InputError(f"label value {max_label} is too large (at most {np.iinfo(np.uint32).max})")


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    unit: str = "micron",
) -> Path:
    """Write a label image atomically, in the smallest unsigned dtype that holds its labels.

    TIFF files are zlib-compressed with ImageJ-compatible calibration (``unit`` is written only
    to TIFFs); NIfTI/MHA/MHD/NRRD are written with SimpleITK with ``spacing`` in (z, y, x) order.
    Negative or non-integer labels raise :class:`InputError`.
    """
    arr = np.asarray(labels)
    if arr.size == 0:
        raise InputError(f"labels are empty (shape {arr.shape})")
    if arr.ndim < 2:
        raise InputError(f"labels must be 2-D or 3-D, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all() or not np.array_equal(arr, np.round(arr)):
            raise InputError("labels must be non-negative integers; got non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels must be non-negative integers; got dtype {arr.dtype}")
    min_label = arr.min()
    if min_label < 0:
        raise InputError(
            f"labels must be non-negative integers; got negative values (min {min_label})"
        )
    dtype = _smallest_label_dtype(int(arr.max()))
    out = arr.astype(dtype, copy=False)
    sp = _check_spacing(spacing, out.ndim)
    return _write(path, out, sp, unit)


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    unit: str = "micron",
) -> Path:
    """Write an image (e.g. a probability map) atomically, keeping its dtype.

    TIFF files are zlib-compressed (ImageJ-compatible for uint8/uint16/float32); other formats
    go through SimpleITK.  Booleans are written as uint8.
    """
    arr = np.asarray(data)
    if arr.size == 0:
        raise InputError(f"image is empty (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"cannot write an image of dtype {arr.dtype}; need a real numeric dtype")
    sp = _check_spacing(spacing, arr.ndim)
    return _write(path, arr, sp, unit)

