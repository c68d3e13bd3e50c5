"""Suggest what to paint next: rank unpainted slices by how unsure the models are there.

After a prediction, the slices where the ensemble is most uncertain are the ones most likely
to be wrong, and painting them teaches the model most.  :func:`suggest_slices` ranks the
unpainted slices of a stack from the members' probability maps (or their mean and spread, as
:func:`napari_fcres.inference.predict` returns them); :func:`suggest_from_models` predicts
first.  The CLI (``fcres suggest``) and the Predict widget ("Next slice to annotate") use them.

Score
    Every pixel gets an uncertainty ``u = d + h`` in [0, 2]:

    * ``d = 2 * std_m(p_m)``, the disagreement of the members (standard deviation over the
      members, ddof=0, of their foreground probabilities; doubled so that it spans [0, 1]:
      1 when half the members say 0 and half say 1).  It measures what the models do not know
      (they were trained on different splits and seeds, yet differ); 0 for a single map.
    * ``h = H2(p)`` where the mean probability ``p`` is undecided (``0.2 < p < 0.8``), else 0:
      the predictive entropy (bits) of the mean, counted only where the prediction does not
      lean clearly either way.  Confident pixels are left out on purpose: the small entropy of
      the many pixels at p = 0.05 would otherwise outweigh a few truly undecided ones.

    A slice's score is the mean of ``u`` over its pixels (the mean disagreement plus the
    entropy-weighted fraction of undecided pixels); its region is the ``region_size`` square
    window with the highest mean ``u``.  A slice the model gets wrong has many undecided
    pixels and members that differ, so it ranks above one it gets right.  Without an ensemble
    the score is ``h`` alone, unless flipped predictions stand in for members
    (:func:`suggest_from_models` with ``flips``: the model's predictions of the image mirrored
    along y, x and both act as four members).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .models import SegmentationModel

__all__ = ["SliceSuggestion", "UNDECIDED", "suggest_slices", "suggest_from_models",
           "pixel_uncertainty"]

log = logging.getLogger(__name__)

#: Mean probabilities strictly inside this range count as undecided (their entropy counts).
UNDECIDED = (0.2, 0.8)
#: Default side of the suggested region, in pixels.
REGION_SIZE = 128


@dataclass(frozen=True)
class SliceSuggestion:
    """One slice worth painting next.

    ``slice``: index along the first axis; ``score``: mean uncertainty of the slice (see the
    module docstring; higher is more uncertain); ``region``: ``(y0, y1, x0, x1)`` (ends
    exclusive) of the most uncertain ``region_size`` window; ``reason``: the score in words.
    """

    slice: int
    score: float
    region: tuple[int, int, int, int]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``region`` as a list)."""
        out = asdict(self)
        out["region"] = list(self.region)
        return out


# ----------------------------------------------------------------------------- validation


def _check_map(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 3 or arr.size == 0:
        raise InputError(f"{what} must be a non-empty 3D stack (Z, Y, X), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{what} must hold float probabilities, got dtype {arr.dtype}")
    return arr


#: Rounding slack of the value checks (blended probabilities may end a hair above 1).
_SLACK = 1e-4


def _check_values(arr: np.ndarray, what: str, hi: float) -> None:
    """Finite and in [0, hi] (checked slice by slice: no full-size temporaries)."""
    for z in range(arr.shape[0]):
        s = arr[z]
        if not np.isfinite(s).all():
            raise InputError(f"{what} has NaN or infinite values in slice {z}")
        if s.min() < -_SLACK or s.max() > hi + _SLACK:
            raise InputError(f"{what} must lie in [0, {hi:g}]; slice {z} has values in "
                             f"[{float(s.min()):.3g}, {float(s.max()):.3g}]")


def _members(probabilities: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """The probability maps as a list of 3D arrays (a 4D array is a stack of members)."""
    if isinstance(probabilities, np.ndarray):
        if probabilities.ndim == 4:
            return list(probabilities)
        return [probabilities]
    maps = list(probabilities)
    if not maps:
        raise InputError("no probability map given")
    return maps


def _index_set(indices: Iterable[int], depth: int, what: str = "painted") -> set[int]:
    """Slice indices (negative ones count from the end) as a set; InputError when invalid."""
    out: set[int] = set()
    for p in indices:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise InputError(f"{what} slices must be integer indices, got {p!r}")
        if not -depth <= int(p) < depth:
            raise InputError(f"{what} slice {int(p)} is outside the stack of {depth} slices")
        out.add(int(p) % depth)
    return out


# ----------------------------------------------------------------------------- scoring


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    """H2(p) in bits (float32), 0 at p = 0 and 1."""
    q = np.clip(p, 1e-7, 1.0 - 1e-7)
    return -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))


def pixel_uncertainty(mean: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
    """``u = 2 * spread + H2(mean) * [0.2 < mean < 0.8]`` per pixel (float32, any shape)."""
    p = np.clip(np.asarray(mean, dtype=np.float32), 0.0, 1.0)
    undecided = (p > UNDECIDED[0]) & (p < UNDECIDED[1])
    u = np.where(undecided, _binary_entropy(p), np.float32(0)).astype(np.float32)
    if spread is not None:
        u += 2.0 * np.clip(np.asarray(spread, dtype=np.float32), 0.0, 0.5)
    return u


def _best_window(u: np.ndarray, size: int) -> tuple[tuple[int, int, int, int], float]:
    """The ``size`` square (clipped to the slice) with the highest mean of ``u``, and that mean.

    Window sums come from an integral image, so every position is tried; of windows that tie
    (a small uncertain patch fits in many), the one nearest their middle is taken, so the
    patch sits near the window's centre.
    """
    h, w = u.shape
    wh, ww = min(size, h), min(size, w)
    ii = np.zeros((h + 1, w + 1), dtype=np.float64)
    np.cumsum(np.cumsum(u, axis=0, dtype=np.float64), axis=1, out=ii[1:, 1:])
    sums = ii[wh:, ww:] - ii[:-wh, ww:] - ii[wh:, :-ww] + ii[:-wh, :-ww]
    best = float(sums.max())
    ys, xs = np.nonzero(sums >= best - 1e-6 * max(best, 1.0))
    pick = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    y0, x0 = int(ys[pick]), int(xs[pick])
    return (int(y0), int(y0) + wh, int(x0), int(x0) + ww), float(sums[y0, x0]) / (wh * ww)


def _score_slice(
    mean: np.ndarray, spread: np.ndarray | None, region_size: int
) -> tuple[float, tuple[int, int, int, int], str]:
    p = np.asarray(mean, dtype=np.float32)
    u = pixel_uncertainty(p, spread)
    score = float(u.mean(dtype=np.float64))
    region, region_mean = _best_window(u, region_size)
    undecided = float(np.mean((p > UNDECIDED[0]) & (p < UNDECIDED[1])))
    parts = []
    if spread is not None:
        parts.append(f"members disagree by {2.0 * float(spread.mean(dtype=np.float64)):.3f}")
    else:
        parts.append("one model: entropy only")
    parts.append(f"{undecided:.1%} of pixels undecided (p in {UNDECIDED[0]:g}-{UNDECIDED[1]:g})")
    parts.append(f"region mean {region_mean:.3f}")
    return score, region, "; ".join(parts)


def suggest_slices(
    probabilities: Sequence[np.ndarray] | np.ndarray,
    painted: Iterable[int] = (),
    k: int | None = 5,
    region_size: int = REGION_SIZE,
    *,
    spread: np.ndarray | None = None,
) -> list[SliceSuggestion]:
    """Rank the unpainted slices by the models' uncertainty there (most uncertain first).

    ``probabilities``: the ensemble members' foreground probabilities, a list of (Z, Y, X)
    float arrays in [0, 1] (or a (M, Z, Y, X) array), or one (Z, Y, X) map: a single model's,
    or the members' mean when ``spread`` (their per-pixel standard deviation, as
    :func:`napari_fcres.inference.predict` returns with ``return_spread``) is given.
    ``painted``: slice indices never suggested.  Returns at most ``k`` suggestions (``None``:
    every unpainted slice), each with the ``region_size`` window of highest uncertainty.  The
    score is described in the module docstring.  Bad input raises :class:`InputError`.
    """
    maps = [_check_map(m, f"probability map {i}") for i, m in enumerate(_members(probabilities))]
    shape = maps[0].shape
    for i, m in enumerate(maps[1:], start=1):
        if m.shape != shape:
            raise InputError(f"probability map {i} has shape {m.shape}, map 0 has {shape}; "
                             "the members must have the same shape")
    if spread is not None:
        if len(maps) > 1:
            raise InputError("give either several members or one mean map with its spread")
        spread = _check_map(spread, "the spread")
        if spread.shape != shape:
            raise InputError(f"the spread has shape {spread.shape}, the probabilities {shape}")
        _check_values(spread, "the spread", 0.5)
    for i, m in enumerate(maps):
        _check_values(m, f"probability map {i}", 1.0)
    if k is not None and (isinstance(k, bool) or int(k) < 1):
        raise InputError(f"k must be a positive number of slices, got {k}")
    if isinstance(region_size, bool) or int(region_size) < 1:
        raise InputError(f"region_size must be a positive number of pixels, got {region_size}")
    depth = shape[0]
    skip = _index_set(painted, depth)

    out: list[SliceSuggestion] = []
    for z in range(depth):
        if z in skip:
            continue
        if len(maps) == 1:
            mean, sd = maps[0][z], None if spread is None else spread[z]
        else:
            members = np.stack([m[z] for m in maps]).astype(np.float32, copy=False)
            mean, sd = members.mean(axis=0), members.std(axis=0)
        score, region, reason = _score_slice(mean, sd, int(region_size))
        out.append(SliceSuggestion(z, score, region, reason))
    out.sort(key=lambda s: (-s.score, s.slice))
    return out if k is None else out[: int(k)]


# ----------------------------------------------------------------------------- with models


#: Mirrorings of a slice that stand in for members of a single model: none, y, x, both.
FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))


def suggest_from_models(
    models: Sequence[SegmentationModel] | SegmentationModel,
    image: np.ndarray,
    painted: Iterable[int] = (),
    k: int | None = 1,
    tile: int = 512,
    device: str | torch.device = "cpu",
    *,
    region_size: int = REGION_SIZE,
    slices: Iterable[int] | None = None,
    flips: bool | None = None,
    overlap: int = 64,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[SliceSuggestion]:
    """Predict ``image`` (Z, Y, X) with the models, then :func:`suggest_slices`.

    Only the candidate slices are predicted: those in ``slices`` (default: all) that are not
    ``painted``.  An ensemble gives its members' spread; a single model, with ``flips`` (the
    default for one model), is run on the image mirrored along y, x and both, and the four
    predictions act as members (4x the prediction time; ``flips=False``: entropy only).
    ``tile`` / ``overlap`` / ``device`` go to :func:`napari_fcres.inference.predict`.
    """
    import torch

    from .inference import predict
    from .label_rules import validate_image

    image = np.asarray(validate_image(image))
    if image.ndim != 3:
        raise InputError(f"suggesting slices needs a 3D stack (Z, Y, X), got shape {image.shape}")
    depth = image.shape[0]
    model_list = [models] if isinstance(models, torch.nn.Module) else list(models)
    if not model_list:
        raise InputError("no model given")
    skip = _index_set(painted, depth)
    wanted = range(depth) if slices is None else _index_set(slices, depth, "candidate")
    candidates = sorted(set(wanted) - skip)
    if not candidates:
        log.info("every candidate slice is painted: nothing to suggest")
        return []
    use_flips = len(model_list) == 1 if flips is None else bool(flips)
    kwargs: dict[str, Any] = {"tile_size": tile, "overlap": min(overlap, tile // 2),
                              "device": device, "slices": candidates,
                              "should_stop": should_stop}
    if not use_flips:
        log.info("suggest: predicting %d slice(s) with %d model(s)", len(candidates),
                 len(model_list))
        res = predict(model_list, image, return_spread=len(model_list) > 1, progress=progress,
                      **kwargs)
        mean, spread = res.probabilities, res.spread
    else:
        log.info("suggest: predicting %d slice(s) with %d model(s) x %d mirrorings",
                 len(candidates), len(model_list), len(FLIPS))
        mean, spread = _flipped_mean_spread(model_list, image, kwargs, progress)
    exclude = set(range(depth)) - set(candidates)
    return suggest_slices(mean, exclude, k, region_size, spread=spread)


def _flipped_mean_spread(
    models: list[SegmentationModel], image: np.ndarray, kwargs: dict[str, Any],
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread (ddof=0) over the mirrored predictions (Welford, three arrays)."""
    from .inference import predict

    n = len(FLIPS)
    mean = m2 = None
    for i, axes in enumerate(FLIPS):
        def step(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress(i * total + done, n * total)

        view = np.flip(image, axes) if axes else image
        p = predict(models, view, progress=step, **kwargs).probabilities
        p = np.flip(p, axes) if axes else p
        if mean is None or m2 is None:
            mean, m2 = np.array(p, dtype=np.float32), np.zeros(p.shape, np.float32)
            continue
        delta = p - mean
        mean += delta / np.float32(i + 1)
        m2 += delta * (p - mean)
    assert mean is not None and m2 is not None
    spread = np.sqrt(np.maximum(m2 / np.float32(n), 0.0), dtype=np.float32)
    np.clip(spread, 0.0, 0.5, out=spread)
    np.clip(mean, 0.0, 1.0, out=mean)
    return mean, spread
