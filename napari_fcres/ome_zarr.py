"""OME-Zarr (NGFF) reading and writing: multiscale levels, image-labels, NGFF versions.

:func:`write_ome_zarr_labels` / :func:`create_ome_zarr_labels` write a
``labels/<name>`` image-label group (NGFF 0.4 on zarr v2, or 0.5 on zarr v3),
:func:`create_ome_zarr_image` an image group, :func:`read_ome_zarr` returns the
levels of a multiscale image as dask arrays with their metadata and
:func:`spatial_level` one level reduced to its space axes.

The metadata is written by hand following the NGFF specification: ome-zarr-py
is not a dependency (the tests read our output back with it when it is
installed).  This module imports neither torch nor the inference code, so
reading a file never loads the models' stack.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .blocks import chunks_of, default_block_shape, default_chunks, plan_blocks, read_region
from .errors import InputError

if TYPE_CHECKING:
    import zarr

__all__ = [
    "NGFF_VERSIONS",
    "read_ome_zarr",
    "spatial_level",
    "write_ome_zarr_labels",
    "create_ome_zarr_labels",
    "create_ome_zarr_image",
    "zarr_layer_data",
    "ngff_version_for",
    "ome_zarr_label_names",
]

log = logging.getLogger(__name__)

#: NGFF versions written: 0.4 (zarr v2 stores) and 0.5 (zarr v3 stores).
NGFF_VERSIONS = ("0.4", "0.5")
_SPATIAL_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


def _axes(ndim: int) -> list[dict[str, str]]:
    if ndim not in _SPATIAL_NAMES:
        raise InputError(f"OME-Zarr output needs a 2D or 3D array, got {ndim} dimensions")
    return [{"name": n, "type": "space"} for n in _SPATIAL_NAMES[ndim]]


def _multiscale(name: str, ndim: int, spacing: Sequence[float] | None, version: str) -> dict:
    scale = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    if len(scale) != ndim or not all(math.isfinite(s) and s > 0 for s in scale):
        raise InputError(f"spacing {spacing} must hold {ndim} positive numbers (z, y, x order)")
    ms: dict[str, Any] = {
        "name": name,
        "axes": _axes(ndim),
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": scale}]}],
    }
    if version == "0.4":
        ms = {"version": "0.4", **ms}
    return ms


def _check_version(version: str) -> str:
    if version not in NGFF_VERSIONS:
        raise InputError(f"unknown NGFF version {version!r}; choose one of {NGFF_VERSIONS}")
    return version


def _zarr_format(version: str) -> int:
    return 2 if version == "0.4" else 3


def _reading_zarr() -> Any:
    """The zarr module, if it reads stores safely: zarr-python 2 unpickles 'pickle' codecs."""
    import zarr

    if int(str(zarr.__version__).split(".")[0]) < 3:
        raise InputError(f"reading zarr needs zarr-python >= 3 (installed: {zarr.__version__}; "
                         "older versions may unpickle, i.e. run, data stored in a file): "
                         "pip install -U zarr")
    return zarr


def _store_name(path: Path, name: Any, what: str) -> str:
    """A dataset path or label name from a store's metadata, if it stays inside the store."""
    text = name if isinstance(name, str) else ""
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith(("/", "\\")) or ":" in text or \
            any(part in ("", ".", "..") for part in parts):
        raise InputError(f"{path}: {what} {name!r} in its metadata does not name a node inside "
                         "the store; refused")
    return text


def _ome_attrs(group: Any) -> tuple[dict[str, Any], str | None]:
    """The OME metadata of a group (0.5: under ``ome``) and its NGFF version."""
    attrs = dict(group.attrs)
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        return dict(attrs["ome"]), str(attrs["ome"].get("version", "0.5"))
    ms = attrs.get("multiscales")
    version = ms[0].get("version") if isinstance(ms, list) and ms else None
    if version is None and isinstance(attrs.get("image-label"), dict):
        version = attrs["image-label"].get("version")
    return attrs, version


def _set_ome_attrs(group: Any, values: dict[str, Any], version: str) -> None:
    if version == "0.4":
        group.attrs.update(values)
    else:
        ome = dict(group.attrs.get("ome", {}))
        ome.update(values)
        ome["version"] = version
        group.attrs["ome"] = ome


def _new_level(group: Any, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
               version: str, compressors: Any = "auto") -> zarr.Array:
    ndim = len(shape)
    kwargs: dict[str, Any] = {}
    if version == "0.4":
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = list(_SPATIAL_NAMES[ndim])
    return group.create_array(
        "0", shape=tuple(int(n) for n in shape), chunks=tuple(int(c) for c in chunks),
        dtype=np.dtype(dtype), fill_value=0, overwrite=True, compressors=compressors, **kwargs,
    )


def _open_or_create_root(path: Path, version: str) -> Any:
    import zarr

    if path.exists():
        try:
            root = zarr.open_group(str(path), mode="r+")
        except Exception as exc:  # noqa: BLE001 - a non-group store
            raise InputError(f"{path} exists and is not a zarr group: {exc}") from None
        found = root.metadata.zarr_format
        if found != _zarr_format(version):
            raise InputError(
                f"{path} is a zarr v{found} store; NGFF {version} needs zarr "
                f"v{_zarr_format(version)}: pass ngff_version="
                f"{'0.4' if found == 2 else '0.5'!r} or another path"
            )
        return root
    return zarr.open_group(str(path), mode="w", zarr_format=_zarr_format(version))


def create_ome_zarr_labels(
    path: str | Path,
    name: str,
    shape: Sequence[int],
    *,
    chunks: Sequence[int] | None = None,
    dtype: str | np.dtype = "uint8",
    spacing: Sequence[float] | None = None,
    ngff_version: str = "0.4",
    color: Sequence[int] = (255, 0, 255, 255),
) -> zarr.Array:
    """Create ``path/labels/<name>`` (an NGFF image-label) and return its empty level 0.

    ``path`` may be an existing OME-Zarr image (the labels then point at it as
    their source image) or a new store, which then holds only the labels.
    """
    version = _check_version(ngff_version)
    if not name or "/" in name:
        raise InputError(f"label name {name!r} must be a non-empty name without '/'")
    p = Path(path)
    root = _open_or_create_root(p, version)
    root_meta, _ = _ome_attrs(root)
    has_image = bool(root_meta.get("multiscales"))
    labels_group = root.require_group("labels")
    names = list(_ome_attrs(labels_group)[0].get("labels", []))
    if name not in names:
        names.append(name)
    _set_ome_attrs(labels_group, {"labels": names}, version)
    group = labels_group.require_group(name)
    shape = tuple(int(n) for n in shape)
    level = _new_level(group, shape, dtype, chunks or default_chunks(shape), version)
    image_label: dict[str, Any] = {
        "colors": [{"label-value": 1, "rgba": [int(c) for c in color]}],
        "properties": [{"label-value": 1, "class": "foreground"}],
    }
    if has_image:
        image_label["source"] = {"image": "../../"}
    if version == "0.4":
        image_label = {"version": "0.4", **image_label}
    _set_ome_attrs(group, {"multiscales": [_multiscale(name, len(shape), spacing, version)],
                           "image-label": image_label}, version)
    return level


def create_ome_zarr_image(
    path: str | Path,
    shape: Sequence[int],
    dtype: str | np.dtype = "float32",
    *,
    chunks: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    name: str = "image",
    ngff_version: str = "0.4",
    compressors: Any = "auto",
) -> zarr.Array:
    """Create a one-level OME-Zarr image at ``path`` and return its empty level 0.

    ``compressors``: zarr's default (``"auto"``) or ``None`` for raw chunks.
    """
    import zarr

    version = _check_version(ngff_version)
    shape = tuple(int(n) for n in shape)
    root = zarr.open_group(str(path), mode="w", zarr_format=_zarr_format(version))
    level = _new_level(root, shape, dtype, chunks or default_chunks(shape), version, compressors)
    _set_ome_attrs(root, {"multiscales": [_multiscale(name, len(shape), spacing, version)]},
                   version)
    return level


def write_ome_zarr_labels(
    path: str | Path,
    labels: Any,
    name: str,
    spacing: Sequence[float] | None = None,
    *,
    chunks: Sequence[int] | None = None,
    ngff_version: str = "0.4",
) -> Path:
    """Write a label image (numpy, dask or zarr; non-negative integers) as ``path/labels/<name>``.

    Written block by block (of the chunk shape), so dask or zarr labels larger
    than memory work too.  Returns the labels group's path.
    """
    shape = tuple(int(n) for n in labels.shape)
    dtype = np.dtype(labels.dtype)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    elif dtype.kind == "i":
        dtype = np.dtype(f"u{dtype.itemsize}")
    elif dtype.kind != "u":
        raise InputError(f"labels must hold non-negative integers, got dtype {labels.dtype}")
    chunks = tuple(chunks) if chunks else (chunks_of(labels) or default_chunks(shape))
    level = create_ome_zarr_labels(path, name, shape, chunks=chunks, dtype=dtype,
                                   spacing=spacing, ngff_version=ngff_version)
    for block in plan_blocks(shape, default_block_shape(shape, chunks), halo=0):
        values = read_region(labels, block.inner)
        if values.dtype.kind == "i" and values.size and values.min() < 0:
            raise InputError(f"labels must be non-negative; found {values.min()}")
        level[block.inner] = values.astype(dtype, copy=False)
    out = Path(path) / "labels" / name
    log.info("wrote OME-Zarr labels %s %s", out, shape)
    return out


def read_ome_zarr(path: str | Path) -> tuple[list[Any], dict[str, Any]]:
    """Levels (dask arrays, finest first) and metadata of an OME-Zarr image or a zarr array.

    Metadata: ``version``, ``name``, ``axes`` (list of ``{"name", "type"}``),
    ``scales`` (per level), ``labels`` (names under ``labels/``), ``image-label``
    when the group is a label image, and ``path``.  A store that holds only
    ``labels/`` (as written by :func:`write_ome_zarr_labels` to a new path)
    opens its first label image.
    """
    import dask.array as da

    zarr = _reading_zarr()
    p = Path(path)
    if not p.exists():
        raise InputError(f"{str(p)!r} does not exist")
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001 - any zarr failure is an input problem
        raise InputError(f"cannot open {str(p)!r} as zarr: {exc}") from None
    if isinstance(node, zarr.Array):
        ndim = node.ndim
        axes = [{"name": n, "type": "space"} for n in _SPATIAL_NAMES.get(ndim, ())] or None
        return [da.from_zarr(node)], {"version": None, "name": p.stem, "axes": axes,
                                      "scales": [None], "labels": [], "path": str(p),
                                      "datasets": [""]}
    meta, version = _ome_attrs(node)
    labels: list[str] = []
    if "labels" in node:
        labels = [_store_name(p, n, "label image")
                  for n in _ome_attrs(node["labels"])[0].get("labels", [])]
    multiscales = meta.get("multiscales")
    if not multiscales:
        if labels:
            return read_ome_zarr(p / "labels" / labels[0])
        raise InputError(
            f"{str(p)!r} is a zarr group without OME-Zarr 'multiscales' metadata; open one of "
            f"its arrays instead ({', '.join(sorted(node.array_keys())) or 'none found'})"
        )
    ms = multiscales[0]
    axes = ms.get("axes")
    if axes and isinstance(axes[0], str):  # NGFF 0.3: axis names only
        axes = [{"name": a, "type": "space" if a in "zyx" else None} for a in axes]
    global_scale = _scale_of(ms.get("coordinateTransformations"))
    levels, scales, datasets = [], [], []
    for ds in ms.get("datasets", []):
        try:
            arr = node[_store_name(p, ds.get("path"), "dataset")]
        except KeyError:
            raise InputError(f"{p}: dataset {ds['path']!r} listed but missing") from None
        levels.append(da.from_zarr(arr))
        datasets.append(str(ds["path"]))
        scale = _scale_of(ds.get("coordinateTransformations"))
        if scale is not None and global_scale is not None:
            scale = [a * b for a, b in zip(scale, global_scale, strict=True)]
        scales.append(scale)
    if not levels:
        raise InputError(f"{str(p)!r} lists no datasets in its multiscales metadata")
    out: dict[str, Any] = {"version": version or ms.get("version"), "name": ms.get("name"),
                           "axes": axes, "scales": scales, "labels": labels, "path": str(p),
                           "datasets": datasets}
    if "image-label" in meta:
        out["image-label"] = meta["image-label"]
    return levels, out


def _scale_of(transforms: list[dict] | None) -> list[float] | None:
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            return [float(s) for s in t["scale"]]
    return None


def spatial_level(
    path: str | Path, level: int = 0
) -> tuple[Any, tuple[float, ...] | None, dict[str, Any]]:
    """One level reduced to its space axes: ``(array, spacing, metadata)``.

    Singleton time / channel axes are dropped; a real channel or time axis
    raises :class:`InputError`.  The array is the zarr array itself when it has
    only space axes (cheap to pickle for dask workers), else a dask view.
    """
    zarr = _reading_zarr()
    levels, meta = read_ome_zarr(path)
    arr = levels[level]
    axes = meta.get("axes") or [{"name": f"dim_{i}", "type": "space"} for i in range(arr.ndim)]
    if len(axes) != arr.ndim:
        raise InputError(f"{path}: {len(axes)} axes in the metadata, {arr.ndim} in the array")
    keep = [i for i, a in enumerate(axes) if a.get("type") in ("space", None)]
    drop = [i for i in range(arr.ndim) if i not in keep]
    for i in drop:
        if arr.shape[i] != 1:
            raise InputError(
                f"{path} has a {axes[i].get('name')} axis of length {arr.shape[i]}; the models "
                "take one channel and one time point: extract it first"
            )
    scale = meta["scales"][level]
    spacing = tuple(scale[i] for i in keep) if scale is not None else None
    if drop:
        arr = arr[tuple(0 if i in drop else slice(None) for i in range(arr.ndim))]
    else:  # hand out the zarr array itself (cheap to pickle), not the dask wrapper
        node = zarr.open(meta["path"], mode="r")
        arr = node if isinstance(node, zarr.Array) else node[meta["datasets"][level]]
    return arr, spacing, meta


def zarr_layer_data(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """napari layer data of an OME-Zarr image (multiscale) and its labels, lazily (dask)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[tuple[Any, dict[str, Any], str]] = []
    for item in paths:
        p = Path(item)
        levels, meta = read_ome_zarr(p)
        layers.append(_layer(levels, meta, p.stem))
        if "image-label" not in meta:
            for name in meta.get("labels", []):
                lv, lm = read_ome_zarr(p / "labels" / name)
                layers.append(_layer(lv, lm, name))
    return layers


def _layer(levels: list[Any], meta: dict[str, Any], default: str) -> tuple[Any, dict, str]:
    kind = "labels" if "image-label" in meta else "image"
    kwargs: dict[str, Any] = {"name": meta.get("name") or default,
                              "metadata": {"source_path": meta["path"],
                                           "ome": json.loads(json.dumps(meta, default=str))}}
    if meta["scales"][0] is not None and len(meta["scales"][0]) == levels[0].ndim:
        kwargs["scale"] = tuple(meta["scales"][0])
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return levels, kwargs, kind
    return levels[0], kwargs, kind


def ngff_version_for(path: str | Path) -> str:
    """The NGFF version to write into ``path``: that of an existing zarr store, else 0.4."""
    import zarr

    p = Path(path)
    if not p.exists():
        return "0.4"
    try:
        root = zarr.open_group(str(p), mode="r")
    except Exception:  # noqa: BLE001 - not a group: the writer reports it
        return "0.4"
    return "0.4" if root.metadata.zarr_format == 2 else "0.5"


def ome_zarr_label_names(path: str | Path) -> tuple[bool, list[str]]:
    """``(has_image, label names)`` of an OME-Zarr store (``(False, [])`` for other zarr)."""
    zarr = _reading_zarr()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - unreadable: read_ome_zarr reports it
        return False, []
    if isinstance(node, zarr.Array):
        return False, []
    meta, _ = _ome_attrs(node)
    names: list[str] = []
    if "labels" in node:
        names = [_store_name(Path(path), n, "label image")
                 for n in _ome_attrs(node["labels"])[0].get("labels", [])]
    return bool(meta.get("multiscales")), names
