"""The bodies of the widgets' background jobs: devices, train, predict, inspect (no Qt here).

They run in a worker process (:mod:`napari_fcres.worker_process`), so they are module-level
functions of a core module, take only picklable arguments and return picklable results.
``stop`` is anything with ``is_set()``; ``progress`` a callable taking ``(done, total)``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import FcresError, InputError

if TYPE_CHECKING:
    from .config import Config
    from .inference import PredictionResult
    from .suggest import SliceSuggestion
    from .training import TrainProgress, TrainResult

log = logging.getLogger(__name__)

#: Probability above which a pixel is foreground.
THRESHOLD = 0.5
#: At most this many pixels per class enter the inspect histograms and fits.
MAX_SAMPLES = 200_000


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


# ----------------------------------------------------------------------------- devices


def device_job() -> list[tuple[str, str]]:
    """``(label, key)`` of every compute device the worker sees: CUDA GPUs by name, Apple MPS,
    then the CPU (asked in a worker so that napari's process never imports torch)."""
    from .device import available_devices

    return [(d.name, d.key) for d in available_devices()]


# ----------------------------------------------------------------------------- training


def train_job(
    cfg: Config,
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: Path,
    resume: bool,
    init_checkpoint: str | None,
    stop: StopFlag,
    overwrite: bool = False,
) -> Generator[TrainProgress, None, TrainResult]:
    """Finish the config from the checkpoint, then train (yields training progress).

    On resume ``cfg`` is already the run's stored config with the widget's settings laid
    over it (:func:`~napari_fcres.resume.resume_request`); ``train`` refuses it if they
    change more than the harmless keys.  ``overwrite`` moves a run already in ``out_dir``
    aside (:func:`~napari_fcres.runs.claim_for_new_run`); without it such a folder is refused.
    """
    from .checkpoint import config_of, read_checkpoint
    from .runs import checkpoint_file
    from .training import train

    if resume:
        init_checkpoint = None  # the run's resumable saves carry the weights
    elif init_checkpoint:
        model = config_of(read_checkpoint(checkpoint_file(init_checkpoint))).model
        if cfg.train.freeze_fcresnet and model.architecture != "pipeline":
            raise InputError(
                f"{init_checkpoint} holds a {model.architecture!r} model; adapting only the "
                "pre-processor needs a 'pipeline' checkpoint"
            )
        cfg = dataclasses.replace(cfg, model=model)
    result = yield from train(
        cfg, image, labels, out_dir, resume=resume, overwrite=overwrite,
        init_checkpoint=init_checkpoint, should_stop=stop.is_set,
    )
    return result


# ----------------------------------------------------------------------------- prediction


@dataclass
class PredictJobResult:
    """What a prediction job returns to the Predict widget."""

    result: PredictionResult
    labels: np.ndarray  # full shape (stack) or the predicted slice (slice mode)
    slice_index: int | None
    checkpoints: list[str]
    mode: str
    preview: int | None = None  # slice of a lazy image predicted on its own
    #: every slice of a predicted stack ranked by uncertainty (:mod:`napari_fcres.suggest`);
    #: None for single slices and 2-D images
    suggestions: list[SliceSuggestion] | None = None


def predict_job(
    paths: list[str],
    image: np.ndarray,
    *,
    device: str,
    tile_size: int,
    tta: bool,
    mode: str,
    slice_index: int | None,
    stop: StopFlag,
    progress: Callable[[int, int], None] | None = None,
    preview: int | None = None,
) -> PredictJobResult:
    """Load the checkpoints, predict ``image`` (or one slice of it), threshold."""
    from .inference import predict
    from .postprocess import labels_from_probabilities
    from .runs import load_ensemble

    models = load_ensemble(paths, device, should_stop=stop.is_set)
    slices = None if slice_index is None else [slice_index]
    result = predict(
        models, image, tile_size=tile_size, overlap=min(64, tile_size // 4), tta=tta,
        device=device, return_normalized=True, return_spread=len(models) > 1, slices=slices,
        progress=progress, should_stop=stop.is_set,
    )
    prob = result.probabilities if slice_index is None else result.probabilities[slice_index]
    labels = compact_labels(labels_from_probabilities(prob, THRESHOLD, mode))
    suggestions = None
    if slice_index is None and prob.ndim == 3:  # the widget drops painted slices itself
        from .suggest import suggest_slices

        suggestions = suggest_slices(prob, k=None, spread=result.spread)
    return PredictJobResult(result, labels, slice_index, list(paths), mode, preview,
                            suggestions)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as uint16 when every value fits (else int32).

    napari shows uint8 / uint16 labels as they are, but hashes every shown slice of 32-bit
    labels to a texture (and compiles that hashing with numba the first time: most of a
    second on the GUI thread when a prediction lands); uint16 is also half the memory.
    """
    labels = np.asarray(labels)
    if labels.size and 0 <= labels.min() and labels.max() <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16, copy=False)
    return labels.astype(np.int32, copy=False)


def preview_job(paths: list[str], source: Any, index: int, **kwargs: Any) -> PredictJobResult:
    """Read one slice of a lazy image (dask / zarr) and predict it on its own."""
    image = source[index]
    if hasattr(image, "compute"):
        image = image.compute()
    return predict_job(paths, np.asarray(image), slice_index=None, preview=index, **kwargs)


# ----------------------------------------------------------------------------- inspection


@dataclass
class ClassSamples:
    """Pixel values of one class at the input and after the pre-processor."""

    raw: np.ndarray
    normalized: np.ndarray


@dataclass
class InspectResult:
    """What the inspect job computed for the chosen slices."""

    slices: list[int]
    normalized: np.ndarray  # (k, H, W) float32 pre-processor output
    probabilities: np.ndarray  # (k, H, W) float32
    background: ClassSamples
    foreground: ClassSamples
    source: str  # where the classes came from: "labels" or "prediction"
    note: str
    fits: dict[str, dict[str, tuple[float, float]]]
    #: ``{"raw" | "normalized": {"background" | "foreground": (density, bin_edges)}}``,
    #: computed in the worker so the GUI thread only draws them.
    histograms: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    #: 0.5-99.5 percentile range of ``normalized`` (the layer's contrast limits)
    contrast_limits: tuple[float, float]


def robust_limits(values: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile range of ``values`` (a unit range when it is flat or empty)."""
    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5))) if values.size else (0., 1.)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


#: Bins of the inspect histograms.
HISTOGRAM_BINS = 80


def class_histograms(
    background: ClassSamples, foreground: ClassSamples, bins: int = HISTOGRAM_BINS
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Density histograms of both classes on shared bins (0.1-99.9 percentile range)."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in ("raw", "normalized"):
        bg, fg = getattr(background, key), getattr(foreground, key)
        both = np.concatenate([bg, fg]) if bg.size + fg.size else np.zeros(1, np.float32)
        lo, hi = (float(v) for v in np.percentile(both, (0.1, 99.9)))
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        out[key] = {}
        for name, values in (("background", bg), ("foreground", fg)):
            if values.size:
                density, _ = np.histogram(values, bins=edges, density=True)
                out[key][name] = (density, edges)
    return out


def normal_fit(values: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood normal fit ``(mean, std)`` (scipy.stats.norm.fit)."""
    from scipy.stats import norm

    if values.size < 2:
        return (float(values.mean()) if values.size else 0.0, 0.0)
    mu, sigma = norm.fit(values.astype(np.float64))
    return float(mu), float(sigma)


def _sample(values: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    picked = values[mask]
    if picked.size > MAX_SAMPLES:
        picked = rng.choice(picked, MAX_SAMPLES, replace=False)
    return picked.astype(np.float32, copy=False)


def class_masks(
    labels: np.ndarray | None, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Foreground and background masks from the labels, else from the prediction at 0.5."""
    from .io import as_binary_labels
    from .labels_summary import detect_label_mode

    if labels is not None:
        try:
            partial = detect_label_mode(labels) == "partial"
            target, valid = as_binary_labels(labels, partial=partial)
            fg, bg = valid & (target > 0.5), valid & (target <= 0.5)
            if fg.any() and bg.any():
                return fg, bg, "labels", ""
            note = "the labels hold only one class here"
        except FcresError as exc:
            note = str(exc)
        log.info("histogram classes from the prediction: %s", note)
        note = f"labels unusable on these slices ({note}); classes from the prediction"
    else:
        note = ""
    fg = probabilities > 0.5
    return fg, ~fg, "prediction", note


def inspect_job(
    checkpoint: str,
    stack: np.ndarray,
    slices: list[int],
    labels: np.ndarray | None,
    device: str,
    stop: StopFlag,
) -> Generator[tuple[int, int], None, InspectResult]:
    """Run the model on each slice; yields ``(done, total)``."""
    from .checkpoint import load_model
    from .inference import predict
    from .runs import checkpoint_file

    model, ckpt = load_model(checkpoint_file(checkpoint), device=device)
    arch = ckpt.get("architecture", "")
    h, w = stack.shape[-2:]
    normalized = np.zeros((len(slices), h, w), dtype=np.float32)
    probs = np.zeros((len(slices), h, w), dtype=np.float32)
    for k, z in enumerate(slices):
        out = predict(model, stack[z], device=device, return_normalized=True,
                      should_stop=stop.is_set, norm_reference=stack)
        if out.normalized is None:
            raise InputError(
                f"the {arch or 'chosen'} model of {checkpoint} has no pre-processor output to "
                "inspect; choose a 'pipeline' (or FC-ResNet baseline) checkpoint. With fewer "
                "than 8 painted slices training picks the plain UNet ('auto'); set the Train "
                "widget's Architecture to 'pipeline' to train one"
            )
        normalized[k] = out.normalized
        probs[k] = out.probabilities
        yield k + 1, len(slices)
    raw = np.asarray(stack[slices], dtype=np.float32)
    lab = None if labels is None else np.asarray(labels[slices])
    fg, bg, source, note = class_masks(lab, probs)
    rng = np.random.default_rng(0)
    background = ClassSamples(_sample(raw, bg, rng), _sample(normalized, bg, rng))
    foreground = ClassSamples(_sample(raw, fg, rng), _sample(normalized, fg, rng))
    fits = {
        name: {"raw": normal_fit(c.raw), "normalized": normal_fit(c.normalized)}
        for name, c in (("background", background), ("foreground", foreground))
    }
    return InspectResult(slices, normalized, probs, background, foreground, source, note, fits,
                         class_histograms(background, foreground), robust_limits(normalized))
