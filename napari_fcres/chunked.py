"""Prediction of volumes larger than memory, and OME-Zarr reading and writing.

:func:`predict_chunked` reads a chunked array (a zarr array, the first level of
an OME-Zarr image, a dask array, or anything sliceable with ``.shape``) block by
block, runs :func:`napari_fcres.inference.predict` on each block plus a halo and
writes the block's centre into a zarr array, so memory is bounded by the block
size, never by the volume.

Blocks
    The models are 2D and work slice by slice along ``axis``, so along that
    axis a block is a group of whole slices and needs no halo.  Across the
    slices (Y/X) a block that does not span the whole slice is read with a
    ``halo`` of context on each side (clipped at the volume border) and the
    halo is cropped after prediction.  The read region starts on a multiple of
    the models' size divisor, so the pooling grid matches the whole-volume one.
    When the blocks span whole slices the result equals in-memory
    :func:`~napari_fcres.inference.predict` exactly; with Y/X blocks it differs
    as tiles do (``halo`` = ``overlap`` by default: a few 1e-3 at most).

Memory
    One block at a time: its haloed source region in the source dtype, the
    float32 probabilities of that region and the converted output block, so
    roughly ``(itemsize + 9) * haloed block voxels`` plus the models.  The
    default block is one target chunk along ``axis`` and whole chunks in Y/X up
    to about 16 M voxels.  Writes are chunk-aligned (each block is a whole
    number of target chunks, or ends at the border), so blocks can also be
    written concurrently by :mod:`dask.distributed` workers (``client=``).

OME-Zarr
    :func:`write_ome_zarr_labels` / :func:`create_ome_zarr_labels` write a
    ``labels/<name>`` image-label group (NGFF 0.4 on zarr v2, or 0.5 on zarr
    v3), :func:`create_ome_zarr_image` an image group, and
    :func:`read_ome_zarr` returns the levels of a multiscale image as dask
    arrays with their metadata.  The metadata is written by hand following
    the NGFF specification (ome-zarr-py is not needed; the tests read our
    output back with it when it is installed).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, StoppedError

if TYPE_CHECKING:
    import zarr

    from .models import SegmentationModel

__all__ = [
    "predict_chunked",
    "predict_ome_zarr",
    "plan_blocks",
    "open_source",
    "read_ome_zarr",
    "spatial_level",
    "write_ome_zarr_labels",
    "create_ome_zarr_labels",
    "create_ome_zarr_image",
    "zarr_layer_data",
    "ngff_version_for",
    "ome_zarr_label_names",
    "instance_labels_chunked",
]

log = logging.getLogger(__name__)

NGFF_VERSIONS = ("0.4", "0.5")
DEFAULT_BLOCK_VOXELS = 2**24
_SPATIAL_NAMES = {2: ("y", "x"), 3: ("z", "y", "x")}


# ----------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """One block: ``inner`` is written, ``outer`` (inner plus halo) is read."""

    inner: tuple[slice, ...]
    outer: tuple[slice, ...]

    @property
    def crop(self) -> tuple[slice, ...]:
        """``inner`` relative to ``outer``."""
        return tuple(
            slice(i.start - o.start, i.stop - o.start)
            for i, o in zip(self.inner, self.outer, strict=True)
        )


def plan_blocks(
    shape: Sequence[int],
    block_shape: Sequence[int],
    *,
    axis: int = 0,
    halo: int = 0,
    divisor: int = 1,
) -> list[Block]:
    """Blocks tiling ``shape``; Y/X blocks get ``halo`` (slicing ``axis`` of a 3D volume none).

    The read region of a block starts on a multiple of ``divisor`` (the models'
    pooling grid) and is clipped at the borders.
    """
    shape = tuple(int(n) for n in shape)
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != len(shape):
        raise InputError(f"block shape {block_shape} does not match the volume shape {shape}")
    if any(b < 1 for b in block_shape):
        raise InputError(f"block shape must be positive, got {block_shape}")
    if halo < 0:
        raise InputError(f"halo must be non-negative, got {halo}")
    no_halo = axis % len(shape) if len(shape) == 3 else None
    per_axis: list[list[tuple[slice, slice]]] = []
    for ax, (n, b) in enumerate(zip(shape, block_shape, strict=True)):
        spans = []
        for start in range(0, n, b):
            stop = min(n, start + b)
            if ax == no_halo or (start == 0 and stop == n):
                spans.append((slice(start, stop), slice(start, stop)))
                continue
            lo = max(0, start - halo) // divisor * divisor
            hi = min(n, stop + halo)
            spans.append((slice(start, stop), slice(lo, hi)))
        per_axis.append(spans)
    blocks = []
    for combo in np.ndindex(*(len(s) for s in per_axis)):
        parts = [per_axis[ax][i] for ax, i in enumerate(combo)]
        blocks.append(Block(tuple(p[0] for p in parts), tuple(p[1] for p in parts)))
    return blocks


def _chunks_of(array: Any) -> tuple[int, ...] | None:
    """Write granularity of a zarr array (shards where sharded) or a dask array's chunks."""
    shards = getattr(array, "shards", None)
    if shards:
        return tuple(int(c) for c in shards)
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return None
    if chunks and isinstance(chunks[0], tuple):  # dask: per-axis tuples of chunk sizes
        return tuple(int(max(c)) for c in chunks)
    return tuple(int(c) for c in chunks)


def default_chunks(shape: Sequence[int], axis: int = 0) -> tuple[int, ...]:
    """Chunks for a new output: one slice along ``axis``, up to 1024 pixels in Y/X."""
    shape = tuple(int(n) for n in shape)
    slicing = axis % 3 if len(shape) == 3 else None
    return tuple(1 if ax == slicing else min(n, 1024) for ax, n in enumerate(shape))


def default_block_shape(
    shape: Sequence[int], chunks: Sequence[int], axis: int = 0,
    max_voxels: int = DEFAULT_BLOCK_VOXELS,
) -> tuple[int, ...]:
    """One chunk along ``axis``; whole chunks in Y/X, grown while under ``max_voxels``."""
    shape = tuple(int(n) for n in shape)
    block = [min(int(c), n) for c, n in zip(chunks, shape, strict=True)]
    slicing = axis % 3 if len(shape) == 3 else None
    spatial = [ax for ax in range(len(shape)) if ax != slicing]
    while True:
        grown = False
        for ax in spatial:
            if block[ax] >= shape[ax]:
                continue
            trial = list(block)
            trial[ax] = min(shape[ax], block[ax] + int(chunks[ax]))
            if math.prod(trial) <= max_voxels:
                block, grown = trial, True
        if not grown:
            return tuple(block)


def _check_aligned(block_shape: Sequence[int], target: Any, shape: Sequence[int]) -> None:
    chunks = _chunks_of(target)
    if chunks is None:
        return
    for b, c, n in zip(block_shape, chunks, shape, strict=True):
        if b % c and b < n:
            raise InputError(
                f"block shape {tuple(block_shape)} is not a whole number of the output's "
                f"chunks {chunks}; pick a multiple so that blocks never share a chunk"
            )


# ----------------------------------------------------------------------------- sources


def open_source(source: Any) -> Any:
    """A sliceable array: a path to a zarr array / OME-Zarr image opens its first level."""
    if isinstance(source, (str, Path)):
        return spatial_level(source)[0]
    if not hasattr(source, "shape") or not hasattr(source, "__getitem__"):
        raise InputError(
            f"cannot read blocks from a {type(source).__name__}; give a zarr array, "
            "a dask array, a numpy array or the path of a .zarr store"
        )
    return source


def _read(source: Any, region: tuple[slice, ...]) -> np.ndarray:
    block = source[region]
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)


def _check_source(source: Any, axis: int) -> None:
    ndim = len(source.shape)
    if ndim not in (2, 3):
        raise InputError(
            f"expected a 2D image or a 3D volume, got shape {tuple(source.shape)}; "
            "multi-channel or time series arrays: select one channel / time point first"
        )
    if ndim == 3 and not -3 <= axis < 3:
        raise InputError(f"axis must be 0, 1 or 2 for a 3D volume, got {axis}")
    dtype = np.dtype(source.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"the volume must hold real numbers, got dtype {dtype}")


# ----------------------------------------------------------------------------- prediction


@dataclass
class _BlockSettings:
    axis: int
    tile_size: int
    overlap: int
    batch_size: int | None
    tta: bool
    device: str
    threshold: float


def _to_output(probs: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return probs.astype(dtype, copy=False)
    if dtype == np.uint8:
        return np.rint(probs * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.rint(probs * 65535.0).astype(np.uint16)
    raise InputError(
        f"cannot store probabilities as {dtype}; use a float32 array or a uint8 array (scaled "
        "to 0..255)"
    )


def _predict_block(
    models: list[SegmentationModel], raw: np.ndarray, crop: tuple[slice, ...],
    settings: _BlockSettings, should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Float32 probabilities of the centre ``crop`` of the haloed block ``raw``."""
    from .inference import predict

    axis = settings.axis % raw.ndim if raw.ndim == 3 else 0
    probs = predict(
        models, raw, axis=axis, tile_size=settings.tile_size, overlap=settings.overlap,
        batch_size=settings.batch_size, tta=settings.tta, device=settings.device,
        should_stop=should_stop,
    ).probabilities
    return probs[crop]


def _write_block(
    probs: np.ndarray, inner: tuple[slice, ...], target: Any, labels_target: Any,
    threshold: float,
) -> None:
    if target is not None:
        target[inner] = _to_output(probs, np.dtype(target.dtype))
    if labels_target is not None:
        labels_target[inner] = (probs > threshold).astype(labels_target.dtype)


def predict_chunked(
    models: Sequence[SegmentationModel | str | Path] | SegmentationModel | str | Path,
    source: Any,
    target: zarr.Array | str | Path | None,
    *,
    axis: int = 0,
    halo: int | None = None,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int | None = None,
    tta: bool = False,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    block_shape: Sequence[int] | None = None,
    dtype: str = "float32",
    labels_target: zarr.Array | None = None,
    threshold: float = 0.5,
    client: Any = None,
    max_in_flight: int | None = None,
) -> zarr.Array | None:
    """Predict ``source`` block by block into the zarr array ``target``; return ``target``.

    ``models``: models, or checkpoint files / training folders (needed with
    ``client``: each dask worker loads them itself).  ``target``: a zarr array
    of the source's shape, or a path where one is created (``dtype``
    ``"float32"`` or ``"uint8"``, probabilities scaled to 0..255, chunked like
    the source).  ``labels_target``, optional, receives ``probabilities >
    threshold`` in the same pass.  ``halo`` defaults to ``overlap`` rounded up
    to the models' size divisor.  ``progress(done, total)`` counts blocks;
    ``should_stop()`` is polled between blocks (and tiles) and raises
    :class:`~napari_fcres.errors.StoppedError`; blocks already written stay
    written.  ``client``: a :class:`dask.distributed.Client` that maps the
    blocks over its workers.
    """
    from .inference import load_models

    src = open_source(source)
    _check_source(src, axis)
    shape = tuple(int(n) for n in src.shape)
    if isinstance(models, (str, Path)) or not isinstance(models, Sequence):
        models = [models]  # type: ignore[list-item]
    items = list(models)
    if not items:
        raise InputError("no model given")
    paths = [m for m in items if isinstance(m, (str, Path))]
    if paths and len(paths) != len(items):
        raise InputError("give either models or checkpoint paths, not a mix")
    if client is not None and not paths:
        raise InputError(
            "with a dask client the models travel as checkpoint paths; pass the checkpoint "
            "files (or training folders) instead of model objects"
        )
    if paths:
        from .checkpoint import find_checkpoints

        paths = [p.resolve() for p in find_checkpoints(paths)]
        model_list = load_models(paths, device=device)
    else:
        model_list = items  # type: ignore[assignment]
    divisor = 1
    for m in model_list:
        divisor = math.lcm(divisor, int(getattr(m, "size_divisor", 1)))
    if halo is None:
        halo = -(-overlap // divisor) * divisor
    if target is None and labels_target is None:
        raise InputError("nothing to write: give a target array (or labels_target)")
    if isinstance(target, (str, Path)):
        target = create_array(target, shape, dtype, _chunks_of(src) or default_chunks(shape, axis))
    for name, arr in (("target", target), ("labels_target", labels_target)):
        if arr is not None and tuple(arr.shape) != shape:
            raise InputError(f"{name} has shape {tuple(arr.shape)}, the volume {shape}")
    if target is not None:
        _to_output(np.zeros(1, np.float32), np.dtype(target.dtype))  # dtype check
    ref = target if target is not None else labels_target
    if block_shape is None:
        chunks = _chunks_of(ref) or _chunks_of(src) or default_chunks(shape, axis)
        block_shape = default_block_shape(shape, chunks, axis)
    for arr in (target, labels_target):
        if arr is not None:
            _check_aligned(block_shape, arr, shape)
    blocks = plan_blocks(shape, block_shape, axis=axis, halo=halo, divisor=divisor)
    settings = _BlockSettings(axis, tile_size, overlap, batch_size, tta, str(device), threshold)
    log.info(
        "chunked prediction of %s %s in %d block(s) of %s, halo %d, %d model(s)%s",
        shape, np.dtype(src.dtype), len(blocks), tuple(block_shape), halo, len(model_list),
        " on a dask cluster" if client is not None else "",
    )
    if client is not None:
        _run_distributed(client, [str(p) for p in paths], src, target, labels_target, blocks,
                         settings, progress, should_stop, max_in_flight)
        return target
    for k, block in enumerate(blocks):
        if should_stop is not None and should_stop():
            raise StoppedError(f"prediction stopped on request after {k} of {len(blocks)} blocks")
        raw = _read(src, block.outer)
        probs = _predict_block(model_list, raw, block.crop, settings, should_stop)
        del raw
        _write_block(probs, block.inner, target, labels_target, threshold)
        del probs
        if progress is not None:
            progress(k + 1, len(blocks))
    return target


def create_array(
    path: str | Path, shape: Sequence[int], dtype: str | np.dtype, chunks: Sequence[int],
) -> zarr.Array:
    """A new (overwritten) zarr array on disk, filled with zeros."""
    import zarr

    return zarr.open_array(
        str(path), mode="w", shape=tuple(shape), chunks=tuple(int(c) for c in chunks),
        dtype=np.dtype(dtype), fill_value=0,
    )


def predict_ome_zarr(
    models: Sequence[str | Path] | str | Path,
    image: str | Path,
    out: str | Path,
    *,
    name: str = "fcres",
    probabilities: str | Path | None = None,
    threshold: float = 0.5,
    ngff_version: str | None = None,
    workers: int = 0,
    **kwargs: Any,
) -> Path:
    """Binary labels of an OME-Zarr image (its first level) as ``out/labels/<name>``.

    ``out`` may be the image itself (the labels are added to it) or a new
    ``.zarr``.  ``probabilities``: also write them (float32) as an OME-Zarr
    image there.  ``workers > 0`` starts a local dask cluster of that many
    one-thread worker processes.  Other keyword arguments go to
    :func:`predict_chunked`.  Returns the labels group's path.
    """
    image, out = Path(image), Path(out)
    for what, p in (("image", image), ("output", out), ("probabilities", probabilities)):
        if p is not None and Path(p).suffix.lower() != ".zarr":
            raise InputError(f"chunked prediction reads and writes OME-Zarr: the {what} {p} "
                             "must be a .zarr path")
    src, spacing, meta = spatial_level(image)
    same = out.resolve() == image.resolve()
    if ngff_version is None:
        ngff_version = (meta.get("version") or "0.4") if same else "0.4"
    shape = tuple(int(n) for n in src.shape)
    chunks = _chunks_of(src) or default_chunks(shape, kwargs.get("axis", 0))
    labels = create_ome_zarr_labels(out, name, shape, chunks=chunks, dtype="uint8",
                                    spacing=spacing, ngff_version=ngff_version)
    prob = None
    if probabilities is not None:
        prob = create_ome_zarr_image(probabilities, shape, "float32", chunks=chunks,
                                     spacing=spacing, name="probabilities",
                                     ngff_version=ngff_version)
    if workers > 0:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            predict_chunked(models, src, prob, labels_target=labels, threshold=threshold,
                            client=client, **kwargs)
    else:
        predict_chunked(models, src, prob, labels_target=labels, threshold=threshold, **kwargs)
    return out / "labels" / name


# ----------------------------------------------------------------------------- dask.distributed

_WORKER_MODELS: dict[tuple[tuple[str, ...], str], list] = {}


def _worker_models(paths: tuple[str, ...], device: str) -> list:
    """The models of this worker process, loaded from the checkpoints once."""
    key = (paths, device)
    if key not in _WORKER_MODELS:
        import torch

        from .inference import load_models

        try:
            from distributed import get_worker

            torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
        except (ImportError, ValueError, AttributeError):
            pass
        _WORKER_MODELS.clear()
        _WORKER_MODELS[key] = load_models(list(paths), device=device)
    return _WORKER_MODELS[key]


def _block_task(
    paths: tuple[str, ...], source: Any, outer: tuple[slice, ...] | None, block: Block,
    target: Any, labels_target: Any, settings: dict[str, Any],
) -> int:
    """Run on a worker: read (unless ``source`` is the block itself), predict, write."""
    s = _BlockSettings(**settings)
    models = _worker_models(paths, s.device)
    raw = _read(source, outer) if outer is not None else np.asarray(source)
    probs = _predict_block(models, raw, block.crop, s)
    _write_block(probs, block.inner, target, labels_target, s.threshold)
    return int(np.prod(probs.shape))


def _run_distributed(
    client: Any, paths: list[str], src: Any, target: Any, labels_target: Any,
    blocks: list[Block], settings: _BlockSettings, progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None, max_in_flight: int | None,
) -> None:
    """Map the blocks over the client's workers, a bounded number in flight."""
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = max_in_flight or 2 * n_workers
    key_paths = tuple(paths)
    cfg = asdict(settings)
    # zarr arrays travel as (small) pickles and are read on the worker; others are
    # sliced here (dask: computed on the cluster) and handed over block by block.
    lazy = _is_zarr(src)

    def submit(block: Block) -> Any:
        if lazy:
            return client.submit(_block_task, key_paths, src, block.outer, block, target,
                                 labels_target, cfg, pure=False)
        region = src[block.outer]
        data = client.compute(region) if hasattr(region, "dask") else np.asarray(region)
        return client.submit(_block_task, key_paths, data, None, block, target, labels_target,
                             cfg, pure=False)

    queue = iter(blocks)
    running = as_completed()
    for block in queue:
        running.add(submit(block))
        if running.count() >= limit:
            break
    done = 0
    try:
        for future in running:
            future.result()  # re-raises a worker's error here
            done += 1
            if progress is not None:
                progress(done, len(blocks))
            if should_stop is not None and should_stop():
                raise StoppedError(
                    f"prediction stopped on request after {done} of {len(blocks)} blocks"
                )
            nxt = next(queue, None)
            if nxt is not None:
                running.add(submit(nxt))
    except BaseException:
        for f in running.futures:
            f.cancel()
        raise


def _is_zarr(array: Any) -> bool:
    return type(array).__module__.startswith("zarr")


# ----------------------------------------------------------------------------- OME-Zarr


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
    chunks = tuple(chunks) if chunks else (_chunks_of(labels) or default_chunks(shape))
    level = create_ome_zarr_labels(path, name, shape, chunks=chunks, dtype=dtype,
                                   spacing=spacing, ngff_version=ngff_version)
    for block in plan_blocks(shape, default_block_shape(shape, chunks), halo=0):
        values = _read(labels, block.inner)
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
    import zarr

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
        labels = list(_ome_attrs(node["labels"])[0].get("labels", []))
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
            arr = node[ds["path"]]
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
    import zarr

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


# ----------------------------------------------------------------------------- helpers


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
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - unreadable: read_ome_zarr reports it
        return False, []
    if isinstance(node, zarr.Array):
        return False, []
    meta, _ = _ome_attrs(node)
    names: list[str] = []
    if "labels" in node:
        names = [str(n) for n in _ome_attrs(node["labels"])[0].get("labels", [])]
    return bool(meta.get("multiscales")), names


def instance_labels_chunked(
    labels: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Turn a 0/1 mask array (zarr) into per-slice instance labels, in place; return the count.

    Works slab by slab along axis 0 (a chunk of whole slices, fewer when that is large; one
    slice is always held whole).  Ids continue across slices exactly as
    :func:`~napari_fcres.postprocess.labels_from_probabilities` with ``mode="instances"``
    numbers them for the whole stack.  A 2D array is labelled at once.
    """
    from .postprocess import instance_labels

    shape = tuple(int(n) for n in labels.shape)
    if len(shape) == 2:
        out = instance_labels(np.asarray(labels[...]) > 0)
        labels[...] = out.astype(labels.dtype, copy=False)
        if progress is not None:
            progress(1, 1)
        return int(out.max(initial=0))
    plane = shape[1] * shape[2]
    step = max(1, int((_chunks_of(labels) or (1,))[0]))
    if step * plane > 4 * DEFAULT_BLOCK_VOXELS:  # deep chunks of large slices: fewer slices
        step = max(1, DEFAULT_BLOCK_VOXELS // plane)
    starts = list(range(0, shape[0], step))
    offset = 0
    for k, start in enumerate(starts):
        if should_stop is not None and should_stop():
            raise StoppedError(f"labelling stopped on request after {k} of {len(starts)} slabs")
        region = slice(start, min(shape[0], start + step))
        mask = np.asarray(labels[region]) > 0
        lab = instance_labels(mask, axis=0, per_slice=True)
        if offset:
            lab[lab > 0] += offset
        offset = max(offset, int(lab.max(initial=0)))
        if np.iinfo(labels.dtype).max < offset:
            raise InputError(f"{offset} instances do not fit the labels' dtype {labels.dtype}")
        labels[region] = lab.astype(labels.dtype, copy=False)
        if progress is not None:
            progress(k + 1, len(starts))
    return offset
