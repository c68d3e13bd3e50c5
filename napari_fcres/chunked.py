"""Prediction of volumes larger than memory, block by block.

:func:`predict_chunked` reads a chunked array (a zarr array, the first level of
an OME-Zarr image, a dask array, or anything sliceable with ``.shape``) block by
block, runs :func:`napari_fcres.inference.predict` on each block plus a halo and
writes the block's centre into a zarr array, so memory is bounded by the block
size, never by the volume.

Blocks
    Planned by :mod:`napari_fcres.blocks`: whole slices along ``axis``, a
    ``halo`` of context across the slices (Y/X), cropped after prediction.
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

Labels
    :func:`predict_zarr_labels` predicts into an OME-Zarr image-label
    (``binary`` 0/1 or per-slice ``instances``, the second made by a pass
    over slabs of whole slices, :func:`instance_labels_chunked`);
    :func:`predict_ome_zarr` does the same from an OME-Zarr image path (the
    CLI's ``predict --chunked``).  The Predict widget calls the former.

OME-Zarr reading and writing lives in :mod:`napari_fcres.ome_zarr` (no torch);
its names and those of :mod:`napari_fcres.blocks` are re-exported here for
older imports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .blocks import (
    DEFAULT_BLOCK_VOXELS,
    Block,
    check_aligned,
    chunks_of,
    default_block_shape,
    default_chunks,
    plan_blocks,
    read_region,
)
from .errors import InputError, StoppedError
from .ome_zarr import (
    create_ome_zarr_image,
    create_ome_zarr_labels,
    ngff_version_for,
    spatial_level,
)

if TYPE_CHECKING:
    import zarr

    from .models import SegmentationModel

__all__ = [
    "predict_chunked",
    "predict_zarr_labels",
    "predict_ome_zarr",
    "ChunkedLabels",
    "LABEL_MODES",
    "instance_labels_chunked",
    "open_source",
    "create_array",
]

log = logging.getLogger(__name__)

#: Label modes that work block by block ("largest" needs the whole volume).
LABEL_MODES = ("binary", "instances")


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
    # evenly spaced slices of the whole volume (raw dtype) standing for it when choosing
    # and measuring batch-norm statistics ("auto" / "volume" models), so every block is
    # normalized as the whole volume would be
    reference: np.ndarray | None = None


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


#: slices of a larger-than-memory volume read to stand for it (batch-norm statistics)
REFERENCE_SLICES = 8


def _reference_slices(src: Any, axis: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """Up to :data:`REFERENCE_SLICES` evenly spaced whole slices along ``axis`` (Z, H, W)."""
    if len(shape) != 3:
        return None
    ax = axis % 3
    picks = np.unique(np.linspace(0, shape[ax] - 1, min(shape[ax], REFERENCE_SLICES))
                      .round().astype(int))
    out = []
    for z in picks:
        index: list[Any] = [slice(None)] * 3
        index[ax] = int(z)
        part = src[tuple(index)]
        out.append(np.asarray(part.compute() if hasattr(part, "compute") else part))
    return np.stack(out)


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
        should_stop=should_stop, norm_reference=settings.reference,
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
        from .runs import find_checkpoints

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
        target = create_array(target, shape, dtype, chunks_of(src) or default_chunks(shape, axis))
    for name, arr in (("target", target), ("labels_target", labels_target)):
        if arr is not None and tuple(arr.shape) != shape:
            raise InputError(f"{name} has shape {tuple(arr.shape)}, the volume {shape}")
    if target is not None:
        _to_output(np.zeros(1, np.float32), np.dtype(target.dtype))  # dtype check
    ref = target if target is not None else labels_target
    if block_shape is None:
        chunks = chunks_of(ref) or chunks_of(src) or default_chunks(shape, axis)
        block_shape = default_block_shape(shape, chunks, axis)
    for arr in (target, labels_target):
        if arr is not None:
            check_aligned(block_shape, arr, shape)
    blocks = plan_blocks(shape, block_shape, axis=axis, halo=halo, divisor=divisor)
    settings = _BlockSettings(axis, tile_size, overlap, batch_size, tta, str(device), threshold,
                              _reference_slices(src, axis, shape))
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
        raw = read_region(src, block.outer)
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


@dataclass
class ChunkedLabels:
    """Where :func:`predict_zarr_labels` wrote, and how many instances it found."""

    labels_path: Path
    probabilities_path: Path | None
    mode: str
    instances: int | None  # the instance count in ``instances`` mode, else None


def predict_zarr_labels(
    models: Sequence[SegmentationModel | str | Path] | SegmentationModel | str | Path,
    source: Any,
    out: str | Path,
    name: str,
    *,
    mode: str = "binary",
    spacing: Sequence[float] | None = None,
    probabilities: str | Path | None = None,
    threshold: float = 0.5,
    ngff_version: str | None = None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    label_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> ChunkedLabels:
    """Predict ``source`` block by block into the OME-Zarr image-label ``out/labels/<name>``.

    ``mode``: ``binary`` (uint8 0/1, written with the probabilities) or ``instances``
    (uint32 per-slice instance ids along axis 0, made by a second pass over slabs of whole
    slices, as :func:`~napari_fcres.postprocess.labels_from_probabilities` numbers them).
    ``probabilities``: also write them (float32) as an OME-Zarr image there.
    ``ngff_version``: default that of the existing store ``out``, else 0.4.  ``workers > 0``
    starts a local dask cluster of that many one-thread worker processes (checkpoint paths
    only).  ``progress(done, total)`` counts blocks, ``label_progress`` the labelling slabs;
    ``should_stop()`` is polled between both.  Other keyword arguments go to
    :func:`predict_chunked`.  Only one block (plus halo) is in memory at a time.
    """
    if mode not in LABEL_MODES:
        raise InputError(
            f"block-wise prediction makes {' or '.join(LABEL_MODES)} labels, not {mode!r}: "
            "'largest' keeps one 3-D component and needs the whole volume in memory"
        )
    src = open_source(source)
    axis = int(kwargs.get("axis", 0))
    _check_source(src, axis)
    out = Path(out)
    shape = tuple(int(n) for n in src.shape)
    chunks = chunks_of(src) or default_chunks(shape, axis)
    version = ngff_version or ngff_version_for(out)
    dtype = "uint32" if mode == "instances" else "uint8"
    labels = create_ome_zarr_labels(out, name, shape, chunks=chunks, dtype=dtype,
                                    spacing=spacing, ngff_version=version)
    prob_path = None if probabilities is None else Path(probabilities)
    prob = None
    if prob_path is not None:
        prob = create_ome_zarr_image(prob_path, shape, "float32", chunks=chunks,
                                     spacing=spacing, name="probabilities",
                                     ngff_version=version)
    run: dict[str, Any] = dict(labels_target=labels, threshold=threshold, progress=progress,
                               should_stop=should_stop, **kwargs)
    if workers > 0:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            predict_chunked(models, src, prob, client=client, **run)
    else:
        predict_chunked(models, src, prob, **run)
    instances = None
    if mode == "instances":
        instances = instance_labels_chunked(labels, progress=label_progress,
                                            should_stop=should_stop)
        log.info("%d instance(s) in %s", instances, out / "labels" / name)
    return ChunkedLabels(out / "labels" / name, prob_path, mode, instances)


def predict_ome_zarr(
    models: Sequence[str | Path] | str | Path,
    image: str | Path,
    out: str | Path,
    *,
    name: str = "fcres",
    mode: str = "binary",
    probabilities: str | Path | None = None,
    threshold: float = 0.5,
    ngff_version: str | None = None,
    workers: int = 0,
    **kwargs: Any,
) -> Path:
    """Labels of an OME-Zarr image (its first level) as ``out/labels/<name>``.

    ``out`` may be the image itself (the labels are added to it, in its NGFF
    version) or a new ``.zarr`` (NGFF 0.4 unless ``ngff_version``).  ``mode``,
    ``probabilities``, ``workers`` and other keyword arguments: as
    :func:`predict_zarr_labels`.  Returns the labels group's path.
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
    return predict_zarr_labels(
        models, src, out, name, mode=mode, spacing=spacing, probabilities=probabilities,
        threshold=threshold, ngff_version=ngff_version, workers=workers, **kwargs,
    ).labels_path


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
    raw = read_region(source, outer) if outer is not None else np.asarray(source)
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
    step = max(1, int((chunks_of(labels) or (1,))[0]))
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
