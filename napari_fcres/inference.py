"""Tiled, memory-bounded inference of 2D images and 3D stacks.

:func:`predict` runs one model or an ensemble slice by slice over tiles that
overlap and are blended with a smooth window, so that seams do not show and
peak memory does not grow with the slice size beyond the output arrays.

Blending window
    Along each axis a tile's weight is 1 in its interior and rises / falls as a
    raised cosine (``0.5 - 0.5 cos(pi (i + 0.5) / overlap)``) over its first /
    last ``overlap`` pixels, except on sides that touch the image border, which
    keep weight 1.  Two neighbours overlapping by exactly ``overlap`` pixels
    therefore sum to 1 (a partition of unity); weights are floored at
    ``1e-3``.  The 2D window is the outer product of the two 1D windows and,
    because the tiles form a grid, the sum of all windows is the outer product
    of the per-axis sums: no per-pixel weight accumulator is needed.

Tile grid
    Tiles start at multiples of the models' size divisor (the pooling grid),
    so a tile's interior sees exactly what the whole image would; the last
    tile of a row / column ends at the image border (it may be up to
    ``divisor - 1`` pixels longer than ``tile_size``).  Images smaller than a
    tile are predicted whole.  With the tiny preset and 128-pixel tiles
    overlapping by 32, tiled and whole-image probabilities differ by at most
    a few 1e-3 (mean about 1e-4); the tests bound them at 0.05 (max) and 0.005
    (mean).

Model state
    The models are moved to ``device`` and left there, and put in eval mode
    for the run; their previous train/eval mode and memory format are restored
    afterwards (eval mode and the device are the only lasting changes if the
    run is interrupted by an error at the wrong moment).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import TTA_PASSES
from .device import is_out_of_memory, resolve_device
from .errors import CheckpointError, InputError, OutOfMemoryError, StoppedError
from .models.norm import VOLUME_STAT_SLICES, SharedImageStatistics

if TYPE_CHECKING:
    from .models import SegmentationModel

__all__ = ["PredictionResult", "predict", "load_models", "blend_window"]

log = logging.getLogger(__name__)

MIN_TILE = 128
_WEIGHT_FLOOR = 1e-3


#: Tiles per forward pass on GPUs; on the CPU one tile at a time measured fastest.
DEFAULT_GPU_BATCH = 4


@dataclass
class PredictionResult:
    """Output of :func:`predict`; every array has the input image's shape.

    ``probabilities``: mean foreground probability of the ensemble members.
    ``normalized``: mean pre-processor output (``None`` when not requested or
    when a model has no pre-processor output).  ``spread``: per-pixel standard
    deviation (ddof=0) of the members' probabilities (``None`` when not
    requested or for a single model).  Slices not listed in ``slices=`` are 0.
    """

    probabilities: np.ndarray
    normalized: np.ndarray | None = None
    spread: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. slices far from training


# ----------------------------------------------------------------------------- tiling


def blend_window(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1D blending weights of a tile along one axis.

    1 in the interior; over the first / last ``overlap`` pixels (on the sides
    flagged by ``ramp_start`` / ``ramp_end``) the outer quarter is ~0 (the
    floor) and the middle half rises as a raised cosine, so two neighbours
    overlapping by ``overlap`` sum to 1 and the few pixels next to a tile's
    border, which see the convolutions' zero padding, barely count.
    """
    w = np.ones(length, dtype=np.float32)
    ramp_len = min(overlap, length)
    if ramp_len > 0:
        dead = overlap / 4.0
        t = (np.arange(ramp_len, dtype=np.float64) + 0.5 - dead) / (overlap - 2.0 * dead)
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))).astype(np.float32)
        if ramp_start:
            w[:ramp_len] = np.minimum(w[:ramp_len], ramp)
        if ramp_end:
            w[length - ramp_len :] = np.minimum(w[length - ramp_len :], ramp[::-1])
    return np.maximum(w, _WEIGHT_FLOOR)


def _spans(n: int, tile: int, overlap: int, divisor: int) -> list[tuple[int, int]]:
    """Start/stop of the tiles along one axis of length ``n``."""
    if n <= tile:
        return [(0, n)]
    tile = max(divisor, tile // divisor * divisor)
    stride = max(divisor, (tile - overlap) // divisor * divisor)
    spans = []
    start = 0
    while start + tile < n:
        spans.append((start, start + tile))
        start += stride
    last = (n - tile) // divisor * divisor
    if not spans or last > spans[-1][0]:
        spans.append((last, n))
    else:  # the previous tile already starts at ``last``: stretch it to the border
        spans[-1] = (spans[-1][0], n)
    return spans


def _axis_windows(spans: list[tuple[int, int]], n: int, overlap: int) -> list[np.ndarray]:
    return [blend_window(b - a, overlap, a > 0, b < n) for a, b in spans]


def _axis_weight_sum(spans: list[tuple[int, int]], wins: list[np.ndarray], n: int) -> np.ndarray:
    total = np.zeros(n, dtype=np.float32)
    for (a, b), w in zip(spans, wins, strict=True):
        total[a:b] += w
    return total


@dataclass
class _Grid:
    """Tile grid of one slice."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    row_win: list[np.ndarray]
    col_win: list[np.ndarray]
    row_sum: np.ndarray
    col_sum: np.ndarray

    @classmethod
    def build(cls, h: int, w: int, tile: int, overlap: int, divisor: int) -> _Grid:
        rows, cols = _spans(h, tile, overlap, divisor), _spans(w, tile, overlap, divisor)
        rw, cw = _axis_windows(rows, h, overlap), _axis_windows(cols, w, overlap)
        return cls(rows, cols, rw, cw, _axis_weight_sum(rows, rw, h), _axis_weight_sum(cols, cw, w))

    @property
    def n_tiles(self) -> int:
        return len(self.rows) * len(self.cols)

    def batches(self, batch_size: int) -> Iterator[list[tuple[int, int]]]:
        """Batches of (row index, col index) pairs; tiles in a batch share one shape."""
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, (r0, r1) in enumerate(self.rows):
            for j, (c0, c1) in enumerate(self.cols):
                groups.setdefault((r1 - r0, c1 - c0), []).append((i, j))
        for members in groups.values():
            for k in range(0, len(members), batch_size):
                yield members[k : k + batch_size]

    def divide(self, acc: np.ndarray, extra: float = 1.0, chunk: int = 512) -> None:
        """``acc /= weight_sum * extra`` in place, a band of rows at a time."""
        for r in range(0, acc.shape[0], chunk):
            denom = self.row_sum[r : r + chunk, None] * self.col_sum[None, :]
            if extra != 1.0:
                denom = denom * np.float32(extra)
            acc[r : r + chunk] /= denom


# ----------------------------------------------------------------------------- helpers


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) dihedral transform of the last two dimensions."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def _dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return x


def _validate_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.size == 0:
        raise InputError(f"the image is empty (shape {image.shape})")
    if image.ndim not in (2, 3):
        raise InputError(
            f"expected a 2D image (H, W) or a 3D stack (D, H, W), got shape {image.shape}; "
            "RGB and multi-channel images are not supported: convert to one channel first"
        )
    if image.dtype == bool:
        return image
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise InputError(f"the image must hold real numbers, got dtype {image.dtype}")
    return image


@dataclass
class _Settings:
    tile: int
    overlap: int
    batch_size: int


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None) -> None:
        self.done, self.total, self.callback = 0, total, callback

    def step(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))


# ----------------------------------------------------------------------------- prediction


def predict(
    models: Sequence[SegmentationModel] | SegmentationModel,
    image: np.ndarray,
    *,
    axis: int = 0,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int | None = None,
    tta: bool = False,
    device: str | torch.device = "cpu",
    return_normalized: bool = False,
    return_spread: bool = False,
    slices: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    channels_last: bool | None = None,
    amp: bool | None = None,
    norm_reference: np.ndarray | None = None,
) -> PredictionResult:
    """Foreground probabilities of a 2D image or a 3D stack (slice-wise along ``axis``).

    Raw intensities of any real dtype are cast to float32 without
    normalization (the models learned it).  ``tta`` averages the 8 dihedral
    transforms of every tile (off here; the CLI and the Predict widget default to
    :data:`~napari_fcres.config.DEFAULT_TTA`).  ``slices`` restricts prediction to those
    indices along ``axis`` (the other slices are 0 in every output).
    ``progress(done, total)`` is called after every batch, counting tiles over
    slices and models; ``should_stop()`` is polled between batches and raises
    :class:`StoppedError`.  ``channels_last`` defaults to True on the CPU only;
    ``amp`` (bf16 autocast) to False.  ``batch_size`` (tiles per forward pass)
    defaults to 1 on the CPU, where it measured fastest, and 4 elsewhere.  On
    out-of-memory the batch size, then the tile size (down to 128) is halved and
    the slice retried before :class:`OutOfMemoryError` is raised.  Models whose
    batch normalizations use ``"volume"`` statistics measure them first over up to
    :data:`~napari_fcres.models.norm.VOLUME_STAT_SLICES` evenly spaced slices of the
    whole stack (all of it, not only ``slices``), or of ``norm_reference`` (slices
    ``(Z, H, W)`` along ``axis`` standing for the volume, e.g. read from a volume
    larger than memory).  For ``axis != 0`` the outputs are
    views with moved axes (no copy).
    """
    if isinstance(models, torch.nn.Module) and not isinstance(models, torch.nn.ModuleList):
        model_list = [models]
    else:
        model_list = list(models)
    if not model_list:
        raise InputError("no model given")
    image = _validate_image(image)
    dev = resolve_device(device)
    if batch_size is None:  # measured: batch 1 is ~1.6x faster than 4 on CPU (BENCHMARKS.md)
        batch_size = 1 if dev.type == "cpu" else DEFAULT_GPU_BATCH
    if tile_size < 1 or batch_size < 1:
        raise InputError(
            f"tile_size and batch_size must be positive, got {tile_size} and {batch_size}"
        )
    if not 0 <= overlap < tile_size:
        raise InputError(f"overlap must be in [0, tile_size), got {overlap} (tile {tile_size})")
    # measured (BENCHMARKS.md, "GPU check"): channels_last is 1.6x faster on the CPU and
    # 1.15-1.85x slower on an H200; bf16 autocast gave no speed there (0.96x)
    use_cl = (dev.type == "cpu") if channels_last is None else bool(channels_last)
    use_amp = False if amp is None else bool(amp)

    if image.ndim == 3:
        if not -3 <= axis < 3:
            raise InputError(f"axis must be 0, 1 or 2 for a 3D stack, got {axis}")
        axis = axis % 3
        stack = np.moveaxis(image, axis, 0)
    else:
        stack = image[None]
    depth, h, w = stack.shape
    indices = _slice_indices(slices, depth)
    for i in indices:
        if stack.dtype.kind == "f" and not np.isfinite(stack[i]).all():
            where = f"slice {i}" if image.ndim == 3 else "the image"
            raise InputError(f"{where} contains NaN or infinite values; replace them first")

    divisor = 1
    for m in model_list:
        divisor = math.lcm(divisor, int(getattr(m, "size_divisor", 1)))
    settings = _Settings(tile=min(tile_size, max(h, w)), overlap=overlap, batch_size=batch_size)
    n_models = len(model_list)
    want_spread = return_spread and n_models > 1

    probs = np.zeros((depth, h, w), dtype=np.float32)
    spread = np.zeros((depth, h, w), dtype=np.float32) if want_spread else None
    normalized = np.zeros((depth, h, w), dtype=np.float32) if return_normalized else None

    grid = _Grid.build(h, w, settings.tile, settings.overlap, divisor)
    tracker = _Progress(_tile_runs(model_list, grid) * len(indices), progress)

    saved = [_save_state(m) for m in model_list]
    try:
        for m in model_list:
            m.to(dev)
            m.eval()
            if use_cl:
                m.to(memory_format=torch.channels_last)
        reference = stack if norm_reference is None else _reference_stack(norm_reference)
        volume_stats = _VolumeStatistics(model_list, reference, settings, divisor, dev,
                                         use_cl, use_amp, should_stop)
        plan = _statistics_plan(model_list, stack, reference, indices)
        for pos, idx in enumerate(indices):
            while True:
                try:
                    has_norm = _predict_slice(
                        model_list,
                        stack[idx],
                        grid,
                        settings.batch_size,
                        tta,
                        dev,
                        use_cl,
                        use_amp,
                        probs[idx],
                        None if spread is None else spread[idx],
                        None if normalized is None else normalized[idx],
                        tracker,
                        should_stop,
                        volume_stats,
                        plan.get(idx, "image"),
                    )
                    break
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    oom_message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                # out of the except block so the failed tensors can be freed
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                _shrink(settings, oom_message, h, w, grid.n_tiles)
                grid = _Grid.build(h, w, settings.tile, settings.overlap, divisor)
                remaining = len(indices) - pos
                tracker.total = tracker.done + _tile_runs(model_list, grid) * remaining
            if normalized is not None and not has_norm:
                normalized = None
    finally:
        for m, state in zip(model_list, saved, strict=True):
            _restore_state(m, state)

    def back(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        return a[0] if image.ndim == 2 else np.moveaxis(a, 0, axis)

    result = PredictionResult(back(probs), back(normalized), back(spread))  # type: ignore[arg-type]
    result.warnings = _foreground_warnings(model_list, probs, indices)
    log.debug(
        "predicted %d slice(s) of %dx%d with %d model(s), tile %d, batch %d",
        len(indices),
        h,
        w,
        n_models,
        settings.tile,
        settings.batch_size,
    )
    return result


def _slice_indices(slices: Sequence[int] | None, depth: int) -> list[int]:
    if slices is None:
        return list(range(depth))
    out: list[int] = []
    for s in slices:
        try:
            i = int(s)
        except (TypeError, ValueError):
            raise InputError(f"slice indices must be integers, got {s!r}") from None
        if not -depth <= i < depth:
            raise InputError(f"slice index {i} is out of range for {depth} slice(s)")
        i %= depth
        if i not in out:
            out.append(i)
    return sorted(out)


def _shrink(settings: _Settings, message: str, h: int, w: int, n_tiles: int) -> None:
    """Halve the (effective) batch size, else the tile size; raise when nothing is left."""
    settings.batch_size = min(settings.batch_size, n_tiles)
    if settings.batch_size > 1:
        settings.batch_size //= 2
        log.warning("out of memory (%s); retrying with batch size %d", message, settings.batch_size)
        return
    current = min(settings.tile, max(h, w))
    if current > MIN_TILE:
        settings.tile = max(MIN_TILE, current // 2)
        if settings.overlap >= settings.tile // 2:
            settings.overlap = settings.tile // 4
        log.warning(
            "out of memory (%s); retrying with tile size %d, overlap %d",
            message,
            settings.tile,
            settings.overlap,
        )
        return
    raise OutOfMemoryError(
        f"out of memory even with batch size 1 and {current}-pixel tiles ({message}); "
        "lower the tile size or batch size, turn off test-time augmentation, use fewer "
        "ensemble models, close other programs using the device, or predict on the CPU"
    )


def _foreground_warnings(models: Sequence[SegmentationModel], probs: np.ndarray,
                         indices: Sequence[int]) -> list[str]:
    """A warning naming the slices whose predicted foreground share is far outside the
    training slices' (:mod:`napari_fcres.foreground_check`); checked for stacks only."""
    from .foreground_check import foreground_outliers, outlier_message

    ranges = [getattr(m, "train_foreground", None) for m in models]
    if len(indices) < 2 or not all(r and len(r) == 3 for r in ranges):
        return []
    expected = [min(r[0] for r in ranges), float(np.median([r[1] for r in ranges])),
                max(r[2] for r in ranges)]
    message = outlier_message(*foreground_outliers(probs, expected, indices), expected)
    if message:
        log.warning("%s", message)
    return [message] if message else []


def _save_state(model: torch.nn.Module) -> tuple[bool, bool]:
    cl = any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in model.parameters()
    )
    return model.training, cl


def _restore_state(model: torch.nn.Module, state: tuple[bool, bool]) -> None:
    training, cl = state
    model.train(training)
    model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _tile_runs(models: Sequence[SegmentationModel], grid: _Grid) -> int:
    """Tile forward passes per slice: one more per model that shares image statistics."""
    if grid.n_tiles == 1:
        return len(models)
    def runs(m: SegmentationModel) -> int:
        stats = SharedImageStatistics(m)
        return 2 if stats and not stats.per_volume else 1

    return sum(grid.n_tiles * runs(m) for m in models)


def _reference_stack(reference: np.ndarray) -> np.ndarray:
    ref = _validate_image(np.asarray(reference))
    return ref[None] if ref.ndim == 2 else ref


def _statistics_plan(
    models: Sequence[SegmentationModel], stack: np.ndarray, reference: np.ndarray,
    indices: Sequence[int],
) -> dict[int, str]:
    """For ``"auto"`` models: each slice's statistics (``"image"``, ``"volume"`` or
    ``"running"``) by :func:`napari_fcres.norm_choice.statistics_plan`."""
    if not any(SharedImageStatistics(m).mode == "auto" for m in models):
        return {}
    from .norm_choice import statistics_plan

    depth = reference.shape[0]
    picks = np.unique(np.linspace(0, depth - 1, min(depth, VOLUME_STAT_SLICES)).round()
                      .astype(int))
    modes = statistics_plan(stack[list(indices)], reference[picks])
    plan = {int(i): m for i, m in zip(indices, modes, strict=True)}
    if any(m == "running" for m in modes):
        log.info("batch-norm statistics: the slices' content changes along the volume (a "
                 "scan): every slice uses the averages learned in training")
    elif any(m == "volume" for m in modes):
        odd = [i for i, m in plan.items() if m == "volume"]
        log.info("batch-norm statistics: slice(s) %s differ from the stack's typical slice in "
                 "more than brightness and contrast and use the whole stack's statistics; "
                 "the others their own", ", ".join(map(str, odd[:20])))
    return plan


@contextmanager
def _running_statistics(stats: SharedImageStatistics) -> Iterator[None]:
    """Every prediction-statistics layer of a model on its running averages, for a while."""
    before = [m.norm_stats for m in stats.layers]
    for m in stats.layers:
        m.norm_stats = "running"
    try:
        yield
    finally:
        for m, mode in zip(stats.layers, before, strict=True):
            m.norm_stats = mode


class _VolumeStatistics:
    """Per model, batch-norm statistics over evenly spaced slices of ``stack``, measured
    the first time a slice asks for them (a ``"volume"`` model, or an ``"auto"`` model on
    a slice that may not take its own); None for other models."""

    def __init__(
        self, models: Sequence[SegmentationModel], stack: np.ndarray, settings: _Settings,
        divisor: int, dev: torch.device, use_cl: bool, use_amp: bool,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.models, self.stack, self.settings, self.divisor = models, stack, settings, divisor
        self.dev, self.use_cl, self.use_amp, self.should_stop = dev, use_cl, use_amp, should_stop
        self._stats: dict[int, SharedImageStatistics] = {}

    def mode(self, k: int) -> str:
        return SharedImageStatistics(self.models[k]).mode

    def get(self, k: int) -> SharedImageStatistics:
        if k not in self._stats:
            self._stats[k] = self._measure(self.models[k])
        return self._stats[k]

    def _measure(self, model: SegmentationModel) -> SharedImageStatistics:
        stack, settings = self.stack, self.settings
        depth = stack.shape[0]
        picks = np.unique(np.linspace(0, depth - 1, min(depth, VOLUME_STAT_SLICES)).round()
                          .astype(int))
        grid = _Grid.build(stack.shape[1], stack.shape[2],
                           min(settings.tile, max(stack.shape[1:])),
                           min(settings.overlap, settings.tile - 1), self.divisor)
        stats = SharedImageStatistics(model)
        with torch.inference_mode(), stats.collecting():
            for z in picks:
                raw = stack[z]
                if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                    raise InputError(f"slice {z} contains NaN or infinite values; replace "
                                     "them first")
                for _batch, _boxes, tiles in _tile_batches(raw, grid, settings.batch_size,
                                                           self.should_stop):
                    _run_model(model, tiles, False, self.dev, self.use_cl, self.use_amp, False)
        return stats


def _collect_image_statistics(
    model: SegmentationModel, stats: SharedImageStatistics, raw: np.ndarray, grid: _Grid,
    batch_size: int, dev: torch.device, use_cl: bool, use_amp: bool, tracker: _Progress,
    should_stop: Callable[[], bool] | None,
) -> None:
    """First pass over a slice's tiles (each normalized by its own statistics meanwhile):
    every "image" batch-norm layer measures its input over the whole slice.

    One pass: a second one, with the measured statistics applied, moved the tiled
    prediction further from the one-tile prediction on ISBI (BENCHMARKS.md, section 0b).
    """
    with stats.collecting():
        for batch, _boxes, tiles in _tile_batches(raw, grid, batch_size, should_stop):
            _run_model(model, tiles, False, dev, use_cl, use_amp, False)
            tracker.step(len(batch))


def _tile_batches(
    raw: np.ndarray, grid: _Grid, batch_size: int, should_stop: Callable[[], bool] | None,
) -> Iterator[tuple[list[tuple[int, int]], list[tuple[int, int, int, int]], np.ndarray]]:
    """Batches of a slice's tiles: grid indices, boxes and float32 pixels; polls the stop."""
    for batch in grid.batches(batch_size):
        if should_stop is not None and should_stop():
            raise StoppedError("prediction stopped on request")
        boxes = [(*grid.rows[i], *grid.cols[j]) for i, j in batch]
        tiles = np.stack([raw[r0:r1, c0:c1] for r0, r1, c0, c1 in boxes]).astype(np.float32)
        yield batch, boxes, tiles


def _predict_slice(
    models: list[SegmentationModel],
    raw: np.ndarray,
    grid: _Grid,
    batch_size: int,
    tta: bool,
    dev: torch.device,
    use_cl: bool,
    use_amp: bool,
    out: np.ndarray,
    spread: np.ndarray | None,
    normalized: np.ndarray | None,
    tracker: _Progress,
    should_stop: Callable[[], bool] | None,
    volume_stats: _VolumeStatistics | None = None,
    auto_mode: str = "image",
) -> bool:
    """Fill ``out`` (and ``spread`` / ``normalized``) for one slice; False if no model gives
    a normalized image.  ``volume_stats``: the stack's statistics per model; ``auto_mode``:
    what an ``"auto"`` model uses on this slice (``"image"``, ``"volume"`` or ``"running"``)."""
    out.fill(0)
    if normalized is not None:
        normalized.fill(0)
    n_models = len(models)
    # Without spread the members' weighted probabilities are summed straight into ``out``;
    # with spread each member gets its own accumulator and Welford updates mean and M2.
    member = np.zeros_like(out) if spread is not None else None
    if spread is not None:
        spread.fill(0)
    has_norm = normalized is not None
    for k, model in enumerate(models):
        acc = out if member is None else member
        if member is not None:
            member.fill(0)
        stats = SharedImageStatistics(model)
        shared: Any = nullcontext()
        mode = auto_mode if stats.mode == "auto" else stats.mode
        if mode == "running":
            shared = _running_statistics(stats)
        elif mode == "volume" and volume_stats is not None:
            shared = volume_stats.get(k).shared()
        elif stats and grid.n_tiles > 1:
            _collect_image_statistics(model, stats, raw, grid, batch_size, dev, use_cl, use_amp,
                                      tracker, should_stop)
            shared = stats.shared()
        with shared:
            has_norm = _predict_tiles(
                model, raw, grid, batch_size, tta, dev, use_cl, use_amp, acc,
                normalized if has_norm else None, tracker, should_stop,
            )
        if member is not None and spread is not None:
            grid.divide(member)
            # Welford: out holds the running mean, spread the running M2.
            delta = member - out
            out += delta / np.float32(k + 1)
            member -= out
            member *= delta
            spread += member
            del delta
    if member is None:
        grid.divide(out, n_models)
    else:
        spread /= np.float32(n_models)
        np.sqrt(np.maximum(spread, 0, out=spread), out=spread)
    if has_norm and normalized is not None:
        grid.divide(normalized, n_models)
    return has_norm


def _predict_tiles(
    model: SegmentationModel,
    raw: np.ndarray,
    grid: _Grid,
    batch_size: int,
    tta: bool,
    dev: torch.device,
    use_cl: bool,
    use_amp: bool,
    acc: np.ndarray,
    normalized: np.ndarray | None,
    tracker: _Progress,
    should_stop: Callable[[], bool] | None,
) -> bool:
    """Add one model's blend-weighted tile probabilities (and normalized images) of a slice
    to ``acc`` (and ``normalized``); False when the model gives no normalized image."""
    has_norm = normalized is not None
    for batch, boxes, tiles in _tile_batches(raw, grid, batch_size, should_stop):
        p, nrm = _run_model(model, tiles, tta, dev, use_cl, use_amp, has_norm)
        if has_norm and nrm is None:
            has_norm = False
        for b, ((i, j), (r0, r1, c0, c1)) in enumerate(zip(batch, boxes, strict=True)):
            wgt = grid.row_win[i][:, None] * grid.col_win[j][None, :]
            acc[r0:r1, c0:c1] += wgt * p[b]
            if has_norm and normalized is not None and nrm is not None:
                normalized[r0:r1, c0:c1] += wgt * nrm[b]
        tracker.step(len(batch))
    return has_norm


def _run_model(
    model: SegmentationModel,
    tiles: np.ndarray,
    tta: bool,
    dev: torch.device,
    use_cl: bool,
    use_amp: bool,
    want_norm: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (B, h, w) and normalized images of a batch of raw tiles."""
    x = torch.from_numpy(tiles[:, None]).to(dev)
    autocast = (
        torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if use_amp else nullcontext()
    )
    prob_sum: torch.Tensor | None = None
    norm_sum: torch.Tensor | None = None
    got_norm = want_norm
    transforms = range(TTA_PASSES) if tta else range(1)
    with torch.inference_mode(), autocast:
        for t in transforms:
            xt = _dihedral(x, t) if t else x
            if use_cl:
                xt = xt.contiguous(memory_format=torch.channels_last)
            logits, nrm = model.forward_with_normalized(xt)
            p = torch.sigmoid(logits.float())
            p = _dihedral_inverse(p, t) if t else p
            prob_sum = p if prob_sum is None else prob_sum + p
            if got_norm:
                if nrm is None:
                    got_norm = False
                    norm_sum = None
                else:
                    n = nrm.float()
                    n = _dihedral_inverse(n, t) if t else n
                    norm_sum = n if norm_sum is None else norm_sum + n
            del logits, nrm
    assert prob_sum is not None
    scale = 1.0 / len(transforms)
    probs = (prob_sum * scale)[:, 0].cpu().numpy()
    norm = None if norm_sum is None else (norm_sum * scale)[:, 0].cpu().numpy()
    return probs, norm


# ----------------------------------------------------------------------------- loading


def load_models(
    paths: Sequence[str | Path] | str | Path, device: str | torch.device = "cpu"
) -> list[SegmentationModel]:
    """Load checkpoints (:func:`napari_fcres.runs.load_ensemble`; folders give their best ones).

    Kept for older callers: a missing checkpoint raises :class:`InputError` here.
    """
    from .runs import find_checkpoints, load_ensemble

    try:
        files = find_checkpoints(paths)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    return load_ensemble(files, device)
