"""The one training loop, shared by the CLI, the scripts and the napari widgets.

:func:`train` is a generator: it yields a :class:`TrainProgress` after every
optimisation step and every validation, and stops cleanly at the next step
when ``should_stop()`` turns true or when the caller closes it (napari's
``thread_worker.quit()``).  Every member of an ensemble gets its own random
train/validation split and seed and its own member folder (layout:
:mod:`napari_fcres.runs`) holding its best checkpoint (best validation score, for
prediction) and its last one (everything needed to resume, written atomically at the
end of every epoch and every :data:`CHECKPOINT_INTERVAL_S` within one, so even a
killed run resumes).
Under ``torchrun`` the loop runs on every rank with DistributedDataParallel (see
:mod:`napari_fcres.distributed`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import CropSampler, SliceData
from .border_weights import stack_separation_weights
from .checkpoint import config_of, read_checkpoint, save_checkpoint
from .config import (
    DEFAULT_EPOCHS,
    DICE_WARMUP_STEPS,
    FEW_LABELS_ARCHITECTURE,
    FEW_LABELS_EMA_DECAY,
    FEW_LABELS_INTENSITY,
    FEW_SLICES,
    SHORT_WARMUP_STEPS,
    Config,
    resolved_loss,
    same_network,
    validation_by_regions,
    validation_count,
    validation_words,
)
from .device import is_out_of_memory, resolve_device, use_amp, use_channels_last_for_training
from .distributed import DistContext
from .errors import CheckpointError, InputError, OutOfMemoryError, TrainingError
from .foreground_check import training_foreground
from .io import as_binary_labels, check_image_labels, validate_image
from .losses import LOSSES
from .models import NormalizedFCResNet, Pipeline, SegmentationModel, build_model
from .optim import build_optimizer
from .run_lock import acquire_run_lock
from .runs import (
    BEST_NAME,
    LAST_NAME,
    RESUME_CHANGEABLE,
    checkpoint_file,
    claim_for_new_run,
    config_differences,
    member_dir,
    remove_stale_temp_files,
    resume_config,
    stored_config,
    write_run_config,
)
from .selection import (
    learned_nothing_message,
    resolve_selection,
    trivial_scores,
    validation_scores,
)
from .weight_average import WeightAverage

log = logging.getLogger(__name__)

#: The last checkpoint is rewritten at the end of every epoch and, within a long epoch, after the
#: first step that finds this many seconds passed since the last write (tests shorten it).
CHECKPOINT_INTERVAL_S = 300.0


@dataclass
class TrainProgress:
    """One report from the training loop."""

    kind: str  # "step", "validation", "member_done" or "done"
    member: int
    n_members: int
    epoch: int
    epochs: int
    step: int  # optimisation steps taken by this member
    steps_per_epoch: int
    loss: float | None = None
    val_dice: float | None = None
    best_val_dice: float | None = None  # best validation score by ``metric`` (Dice or V_rand)
    metric: str = "dice"  # the score that keeps the best checkpoint: "dice" or "v_rand"
    val_score: float | None = None  # this validation's score by ``metric``
    best_epoch: int | None = None
    best_step: int | None = None  # the step of the best validation score
    lr: float | None = None
    elapsed: float = 0.0
    fraction: float = 0.0  # of the whole run (all members), 0..1
    checkpoint: Path | None = None
    message: str = ""
    validation_basis: str = ""  # what the validation scores are measured on, in words


@dataclass
class TrainResult:
    """What a finished (or stopped) run left behind."""

    out_dir: Path
    best_checkpoints: list[Path] = field(default_factory=list)
    # the validation score (by ``metric``) of each kept model: the best one, or with
    # ``kept == "final"`` the last validation's (-1: none since the last step)
    best_val_dice: list[float] = field(default_factory=list)
    kept: str = "best"  # which weights ``best_checkpoints`` hold: "best" or "final"
    stopped: bool = False
    metric: str = "dice"
    warnings: list[str] = field(default_factory=list)  # e.g. a member that learned nothing
    moved_aside: Path | None = None  # where ``overwrite`` moved the folder's previous run


@dataclass
class PreparedData:
    """Slices ready for training: raw image, target, valid mask, annotated slice indices."""

    image: np.ndarray  # (Z, H, W) float32 raw intensities
    target: np.ndarray  # (Z, H, W) float32 0/1
    mask: np.ndarray  # (Z, H, W) bool
    annotated: list[int]
    metric: str = "dice"  # the validation score that keeps the best checkpoint (selection.py)
    crop_size: int = 256  # training crop that fits these slices


def prepare_data(image: np.ndarray, labels: np.ndarray, cfg: Config) -> PreparedData:
    """Validate image and labels and bring them to ``(Z, H, W)`` slices along the axis."""
    image = validate_image(np.asarray(image))
    labels = np.asarray(labels)
    check_image_labels(image, labels)
    d = cfg.data
    target, mask = as_binary_labels(
        labels, foreground_value=d.foreground_value, ignore_value=d.ignore_value,
        partial=d.partial,
    )
    if image.ndim == 2:
        image, target, mask = image[None], target[None], mask[None]
    else:
        if not -3 <= d.axis < 3:
            raise InputError(f"axis {d.axis} does not exist for a 3D stack")
        image = np.moveaxis(image, d.axis, 0)
        target = np.moveaxis(target, d.axis, 0)
        mask = np.moveaxis(mask, d.axis, 0)
    annotated = [int(i) for i in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))]
    if not annotated:
        raise InputError("the labels annotate no pixel at all; paint some labels first")
    crop = fit_crop_size(cfg.train.crop_size, *image.shape[1:], _size_divisor(cfg))
    metric, why = resolve_selection(cfg.train.select_by, target, mask, annotated)
    log.info("validation scores by %s: %s",
             "V_rand" if metric == "v_rand" else "Dice", why)
    return PreparedData(
        np.ascontiguousarray(image, dtype=np.float32),
        np.ascontiguousarray(target, dtype=np.float32),
        np.ascontiguousarray(mask, dtype=bool),
        annotated, metric, crop,
    )


def _size_divisor(cfg: Config) -> int:
    """Side multiple the configured network needs (16 for every preset but ``tiny``)."""
    m = cfg.model
    pre = 2**m.preprocessor.depth
    unet = 2**m.unet.depth
    fcres = 2 ** (1 + len(m.fcresnet.stage_widths))
    if m.architecture == "pipeline":
        return max(pre, fcres)
    return unet if m.architecture == "unet" else fcres


def fit_crop_size(crop: int, h: int, w: int, divisor: int) -> int:
    """``crop``, or the largest multiple of ``divisor`` that fits an ``h`` x ``w`` slice.

    A 189 x 233 MRI slice trains with 176 x 176 crops instead of stopping on the
    256 x 256 default; the change is logged.
    """
    if h >= crop and w >= crop:
        return crop
    fitted = (min(h, w) // divisor) * divisor
    if fitted < divisor:
        raise InputError(
            f"image slices are {h}x{w} pixels, smaller than the {divisor}x{divisor} pixels "
            "this network needs at least; use a smaller preset or larger slices"
        )
    log.warning("slices are %dx%d pixels, smaller than the training crop of %dx%d: "
                "training with %dx%d crops instead", h, w, crop, crop, fitted, fitted)
    return fitted


@dataclass
class ValidationSplit:
    """What trains and what validates: slice indices and, for regions, each slice's band.

    With ``regions`` every annotated slice trains, except a band of columns ``x0:x1``
    (``val_fraction`` of its width, at a random place per slice) that is masked out of
    its training loss and is what validation scores.
    """

    train: list[int]
    val: list[int]
    regions: dict[int, tuple[int, int]] = field(default_factory=dict)  # slice -> (x0, x1)

    @property
    def kind(self) -> str:
        return "regions" if self.regions else "slices"

    def describe(self, n_annotated: int) -> str:
        """``validating on 1 slice: scores are rough`` and the like."""
        if self.regions:
            return validation_words(len(self.regions), 0, regions=True)
        return validation_words(n_annotated, len(self.val), regions=False)


def choose_validation(
    annotated: Sequence[int], width: int, val_fraction: float, val_split: str, seed: int,
) -> ValidationSplit:
    """The validation split of a run (see :class:`ValidationSplit`).

    ``auto`` holds out whole slices when at least :data:`MIN_VAL_SLICES` would validate
    (8 or more annotated slices at the default 0.2), else a band of every slice: with 3
    painted slices, all 3 train and all 3 validate, instead of 2 and 1.
    """
    train_s, val_s = split_slices(annotated, val_fraction, seed)
    if not validation_by_regions(len(annotated), val_fraction, val_split):
        return ValidationSplit(train_s, val_s)
    rng = random.Random(seed)
    band = max(1, min(width - 1, int(round(val_fraction * width))))
    regions = {}
    for z in annotated:
        x0 = rng.randrange(0, width - band + 1)
        regions[int(z)] = (x0, x0 + band)
    return ValidationSplit(list(annotated), list(annotated), regions)


def resolve_few_label_settings(cfg: Config, n_annotated: int, metric: str = "dice") -> Config:
    """``augment.intensity: None``, ``train.loss: auto``, ``train.warmup_steps: None``,
    ``train.ema_decay: None``, ``train.keep: auto`` and ``model.architecture: auto`` made
    concrete for ``n_annotated``.

    With fewer than :data:`~napari_fcres.config.FEW_SLICES` annotated slices the crops'
    brightness and contrast are jittered (a few slices span a narrow intensity range, and the
    slices to segment may be brighter), the loss is BCE + Dice and validation scores a moving
    average of the weights; with more, the paper's recipe (no jitter, Dice, the trained
    weights).  ``train.keep: auto`` keeps the final weights when few slices are validated by
    V_rand (``metric``: cells separated by membranes, where V_rand on a band of a few slices
    wobbles and picked worse checkpoints than the end of the run on ISBI), else the best
    validation checkpoint (on a scan's blob-like target the band's Dice chose better).  The warm-up
    follows the loss: 20 steps with BCE + Dice, 100 with Dice.  Measured on ISBI with 3
    painted slices (BENCHMARKS.md 1c).  The network: the plain UNet with few slices (it
    learned more than the pipeline from 3 painted slices in 10 CPU minutes), the paper's
    pipeline with more.
    """
    few = n_annotated < FEW_SLICES
    aug, t = cfg.augment, cfg.train
    changes = {}
    if aug.intensity is None:
        aug = dataclasses.replace(aug, intensity=FEW_LABELS_INTENSITY if few else 0.0)
        changes["augment.intensity"] = aug.intensity
    if t.loss == "auto":
        t = dataclasses.replace(t, loss=resolved_loss(t.loss, n_annotated))
        changes["train.loss"] = t.loss
    if t.warmup_steps is None:  # after the loss: Dice has an all-foreground plateau, BCE not
        t = dataclasses.replace(t, warmup_steps=(SHORT_WARMUP_STEPS if t.loss == "bce_dice"
                                                 else DICE_WARMUP_STEPS))
        changes["train.warmup_steps"] = t.warmup_steps
    if t.ema_decay is None:
        t = dataclasses.replace(t, ema_decay=FEW_LABELS_EMA_DECAY if few else 0.0)
        changes["train.ema_decay"] = t.ema_decay
    if t.keep == "auto":
        t = dataclasses.replace(t, keep="final" if few and metric == "v_rand" else "best")
        changes["train.keep"] = t.keep
    model = cfg.model
    if model.architecture == "auto":
        model = dataclasses.replace(
            model, architecture=FEW_LABELS_ARCHITECTURE if few else "pipeline")
        changes["model.architecture"] = model.architecture
    if changes:
        log.info("%d annotated slice(s)%s: %s", n_annotated,
                 f" (fewer than {FEW_SLICES})" if few else "",
                 ", ".join(f"{k} {v}" for k, v in changes.items()))
    return dataclasses.replace(cfg, model=model, augment=aug, train=t)


def split_slices(annotated: Sequence[int], val_fraction: float, seed: int) -> tuple[list, list]:
    """Train/validation split of the annotated slices (24/6 for 30 at 0.2).

    The validation slices are spread over the whole annotated range, edges included: the
    sorted slices are cut into as many runs as there are validation slices, and the
    first run gives its first slice, the last run its last, every other run a random one.
    A scan's first and last annotated slices (the ends of an organ, where it differs most
    from its middle) are then always validated on.
    """
    order = sorted(int(z) for z in annotated)
    n_val = validation_count(len(order), val_fraction)
    rng = random.Random(seed)
    if n_val < 2:
        val = rng.sample(order, n_val)
    else:
        runs = [list(r) for r in np.array_split(np.asarray(order), n_val)]
        val = [runs[0][0], *(rng.choice(r) for r in runs[1:-1]), runs[-1][-1]]
    val_set = {int(v) for v in val}
    return [z for z in order if z not in val_set], sorted(val_set)


def member_seed(seed: int, member: int) -> int:
    return seed + 1000 * member


def _lr_lambda(
    decay: float, warmup_steps: int = 0, budget_fraction: Callable[[], float] | None = None,
) -> Callable[[int], float]:
    """Keras' inverse-time decay, after a linear warm-up of ``warmup_steps``; times a half
    cosine of the time budget used so far when ``budget_fraction`` is given."""
    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        anneal = 1.0
        if budget_fraction is not None:
            anneal = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, budget_fraction()))))
        return warm * anneal / (1.0 + decay * it)

    return factor


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every random state of this process as tensors and plain values (weights-only loadable)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "sampler": gen.get_state(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Restore :func:`_rng_state` (or the NumPy / Python tuples of older checkpoints)."""
    torch.set_rng_state(state["torch"])
    np_state, py_state = state["numpy"], state["python"]
    if isinstance(np_state, dict):
        np_state = (np_state["kind"], np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                    np_state["has_gauss"], np_state["gauss"])
    np.random.set_state(np_state)
    if isinstance(py_state, dict):
        py_state = (py_state["version"], tuple(py_state["state"].tolist()), py_state["gauss"])
    random.setstate(py_state)
    gen.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def validate_model(
    model: SegmentationModel, data: PreparedData, slices: Sequence[int], device: torch.device,
    tile: int, metric: str = "dice", regions: dict[int, tuple[int, int]] | None = None,
) -> dict[str, float]:
    """Validation scores on ``slices`` (annotated pixels): Dice, and V_rand if it selects.

    With ``regions`` (slice -> columns ``x0:x1``, all of one width) the whole slices are
    predicted, for context, and only those bands are scored.
    """
    from .inference import predict

    idx = list(slices)
    probs = predict(model, data.image[idx], tile_size=tile, device=device).probabilities
    target, mask = data.target[idx], data.mask[idx]
    if regions:
        bands = [regions[z] for z in idx]
        probs, target, mask = (np.stack([a[k, :, x0:x1] for k, (x0, x1) in enumerate(bands)])
                               for a in (probs, target, mask))
    return validation_scores(probs, target, mask, metric)


def train(
    config: Config,
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_checkpoint: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: DistContext | None = None,
    ensemble_parallel: bool = False,
) -> Generator[TrainProgress, None, TrainResult]:
    """Train ``config.train.ensemble`` models; yields progress, returns a :class:`TrainResult`.

    ``resume`` continues each member from its last checkpoint; without it a folder that
    holds a run is refused, unless ``overwrite`` moves that run aside first
    (:func:`~napari_fcres.runs.claim_for_new_run`).  The folder is locked for the whole
    run: a second training into it fails at once (:mod:`napari_fcres.run_lock`).
    ``init_checkpoint`` (a file, or a folder with one best checkpoint) fine-tunes from
    trained weights (``config.train.freeze_fcresnet`` then adapts only the pre-processor).
    ``dist`` (from :func:`~napari_fcres.distributed.init_from_env`) trains each member with
    DDP over all ranks, or with ``ensemble_parallel`` member k alone on rank k % world_size.
    """
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: continue the run in the "
                         "folder, or move it aside and start over")
    dist = dist or DistContext()
    if resume:
        stored_config(out_dir)  # "nothing to resume in ..." before anything is written
    lock = acquire_run_lock(out_dir) if dist.is_main else nullcontext()
    with lock:
        return (yield from _train(config, image, labels, out_dir, resume=resume,
                                  overwrite=overwrite, init_checkpoint=init_checkpoint,
                                  should_stop=should_stop, dist=dist,
                                  ensemble_parallel=ensemble_parallel))


def _train(
    config: Config,
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_checkpoint: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    dist: DistContext | None = None,
    ensemble_parallel: bool = False,
) -> Generator[TrainProgress, None, TrainResult]:
    """:func:`train`, holding the folder's lock."""
    out_dir = Path(out_dir)
    cfg = config
    dist = dist or DistContext()
    data = prepare_data(image, labels, cfg)
    if data.crop_size != cfg.train.crop_size:
        cfg = replace_train(cfg, crop_size=data.crop_size)
    init = read_checkpoint(checkpoint_file(init_checkpoint)) if init_checkpoint else None
    if init is not None and cfg.model.architecture == "auto":  # fine-tune: the file's network
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, architecture=config_of(init).model.architecture))
    cfg = resolve_few_label_settings(cfg, len(data.annotated), data.metric)
    if resume:  # the run's stored config; only harmless changes (napari_fcres.runs)
        cfg = resume_config(out_dir, cfg)
    device = dist.device if dist.enabled and dist.device else resolve_device(cfg.train.device)
    init_state = None
    if init is not None:
        init_cfg = config_of(init)
        if not same_network(init_cfg.model, cfg.model):
            raise CheckpointError(
                f"{init_checkpoint} holds a {init_cfg.model.preset!r} "
                f"{init_cfg.model.architecture} model, but the run asks for "
                f"{cfg.model.preset!r} {cfg.model.architecture}; use the checkpoint's preset"
            )
        init_state = init["model_state"]
    if cfg.train.freeze_fcresnet and cfg.model.architecture != "pipeline":
        raise InputError("freezing the FC-ResNet needs the 'pipeline' architecture")
    moved = None if resume or not dist.is_main else \
        claim_for_new_run(out_dir, overwrite=overwrite)  # never over a finished run
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        write_run_config(out_dir, cfg)
    result = TrainResult(out_dir, metric=data.metric, moved_aside=moved)
    k_members = cfg.train.ensemble
    parallel = ensemble_parallel and dist.enabled
    sequential = math.ceil(k_members / dist.world_size) if parallel else k_members
    budget = cfg.train.max_minutes * 60.0 / sequential if cfg.train.max_minutes else None
    member_dist = DistContext(device=device) if parallel else dist
    done: list[tuple[int, Path, float]] = []
    for member in range(k_members):
        if parallel and member % dist.world_size != dist.rank:
            continue
        runner = _MemberRun(cfg, data, member_dir(out_dir, member), member, device,
                            resume, init_state, budget, member_dist)
        stopped = yield from runner.run(should_stop)
        done.append((member, runner.best_path, runner.kept_score()))
        warning = runner.learned_nothing()
        if warning:
            prefix = f"member {member + 1}: " if k_members > 1 else ""
            result.warnings.append(prefix + warning)
            log.warning("%s%s", prefix, warning)
        yield runner.progress("member_done", message=f"member {member + 1} done")
        if stopped:
            result.stopped = True
            break
    if parallel:  # every rank learns every member's result
        gathered = dist.gather_objects((done, result.stopped))
        done = sorted(item for d, _ in gathered for item in d)
        result.stopped = any(s for _, s in gathered)
    dist.barrier()
    result.best_checkpoints = [p for _, p, _ in done]
    result.best_val_dice = [v for _, _, v in done]
    result.kept = cfg.train.keep
    log.info("training finished: %s", result)
    yield TrainProgress("done", k_members - 1, k_members, 0, cfg.train.epochs or 0, 0, 0,
                        fraction=1.0, metric=data.metric,
                        message="; ".join(
                            ["stopped" if result.stopped else "finished", *result.warnings]))
    return result


class _MemberRun:
    """State of one ensemble member's training."""

    def __init__(
        self, cfg: Config, data: PreparedData, folder: Path, member: int,
        device: torch.device, resume: bool, init_state: dict | None, budget_s: float | None,
        dist: DistContext | None = None,
    ) -> None:
        cfg = resolve_few_label_settings(cfg, len(data.annotated), data.metric)  # no-op
        self.cfg, self.data, self.folder, self.member = cfg, data, folder, member
        self.device = device
        self.dist = dist or DistContext()
        self.rank_rng_states: list[dict[str, Any]] | None = None
        self.seed = member_seed(cfg.train.seed, member)
        self.budget_s = budget_s
        self.best_path = folder / BEST_NAME
        self.last_path = folder / LAST_NAME
        t = cfg.train
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed + self.dist.rank)  # own crops per rank
        self.split = choose_validation(data.annotated, data.image.shape[2], t.val_fraction,
                                       t.val_split, self.seed)
        if not self.split.val:
            log.warning("only one annotated slice: validating on the training slice")
        self.model = build_model(cfg.model)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        if isinstance(self.model, NormalizedFCResNet) and init_state is None:
            tr = data.image[self.split.train][self._train_mask()]
            self.model.fit_normalization(torch.from_numpy(tr))
        if t.freeze_fcresnet and isinstance(self.model, Pipeline):
            for p in self.model.fcresnet.parameters():
                p.requires_grad_(False)
        self.model.to(device)
        self.channels_last = use_channels_last_for_training(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp = use_amp(device)
        self.model = self.dist.convert_batchnorm(self.model)
        # the weights validation scores and the best checkpoint keeps (the average, if any)
        self.average = WeightAverage(self.model, t.ema_decay) if t.ema_decay else None
        self.elapsed = 0.0  # training seconds so far (the budget-cosine schedule reads it)
        self.opt = build_optimizer(self.model, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _lr_lambda(t.lr_decay, t.warmup_steps, self._budget_fraction
                                 if t.lr_schedule == "budget_cosine" and budget_s else None)
        )
        self.loss_fn = self.dist.loss(t.loss) if self.dist.enabled else LOSSES[t.loss]
        h, w = data.image.shape[1:]
        crops_per_epoch = len(self.split.train) * h * w / t.crop_size**2
        global_batch = t.batch_size * self.dist.world_size
        self.steps_per_epoch = t.steps_per_epoch or max(
            1, math.ceil(crops_per_epoch / global_batch)
        )
        self.epoch = 0
        self.step = 0
        self.step_in_epoch = 0
        self.epoch_losses: list[float] = []
        self.best_val = -1.0  # best validation score by self.metric
        self.metric = data.metric
        self.best_epoch = 0
        self.best_step = 0
        self.last_val_step = 0
        self.epochs = t.epochs or (None if budget_s else DEFAULT_EPOCHS)  # None: the budget
        self.history: list[dict[str, float]] = []
        self.elapsed = 0.0
        self.finished = False
        if resume and self.dist.is_main:
            remove_stale_temp_files(folder)  # a write cut short by a kill
        if resume and self.last_path.exists():
            self._resume()
        self.ddp_model = self.dist.wrap(self.model)  # forward pass; self.model for checkpoints
        log.info("member %d: %s", member, self.split.describe(len(data.annotated)))
        self.train_foreground = training_foreground(data.target[self.split.train],
                                                    self._train_mask())
        sd = SliceData(
            torch.from_numpy(data.image[self.split.train]),
            torch.from_numpy(data.target[self.split.train]),
            torch.from_numpy(self._loss_weights()),
        )
        self.sampler = CropSampler(sd, t.crop_size, cfg.augment, self.gen)

    @property
    def train_slices(self) -> list[int]:
        return self.split.train

    @property
    def val_slices(self) -> list[int]:
        return self.split.val

    def _train_mask(self) -> np.ndarray:
        """Annotated pixels of the training slices, without the validation bands."""
        mask = self.data.mask[self.split.train].copy()
        for k, z in enumerate(self.split.train):
            if z in self.split.regions:
                x0, x1 = self.split.regions[z]
                mask[k, :, x0:x1] = False
        return mask

    def _loss_weights(self) -> np.ndarray:
        """The training slices' loss mask: 0 off the annotated pixels, else each pixel's
        weight (1, or the separation weights with ``train.border_weight``)."""
        mask = self._train_mask()
        t = self.cfg.train
        if not t.border_weight:
            return mask.astype(np.float32)
        if t.loss == "dice":
            log.warning("train.border_weight weighs the cross-entropy; the Dice loss has none")
        weights = stack_separation_weights(self.data.target[self.split.train] > 0,
                                           t.border_weight, t.border_sigma, mask)
        return (weights * mask).astype(np.float32)

    # ------------------------------------------------------------------ state
    def _payload(self, with_training_state: bool) -> dict[str, Any]:
        p: dict[str, Any] = {
            "config": self.cfg.to_dict(),
            "preset": self.cfg.model.preset,
            "architecture": self.cfg.model.architecture,
            "model_state": {k: v.detach().cpu()
                            for k, v in self._kept_model(with_training_state).state_dict().items()},
            "member": self.member,
            "seed": self.seed,
            "split": {"train": self.split.train, "val": self.split.val,
                      "regions": {str(z): list(r) for z, r in self.split.regions.items()}},
            "history": self.history,
            "epoch": self.epoch,
            "step": self.step,
            "step_in_epoch": self.step_in_epoch,
            "epoch_losses": self.epoch_losses,
            "best_val_dice": self.best_val,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "train_foreground": self.train_foreground,
            "last_val_step": self.last_val_step,
            "elapsed_s": self.elapsed,
            "finished": self.finished,
            "kept": self.cfg.train.keep,
        }
        if with_training_state:
            if self.average is not None:
                p["weight_average"] = self.average.state()
            p["optimizer_state"] = self.opt.state_dict()
            p["scheduler_state"] = self.sched.state_dict()
            p["rng_state"] = _rng_state(self.gen)
            if self.rank_rng_states is not None and len(self.rank_rng_states) > 1:
                p["rng_state_ranks"] = self.rank_rng_states
        return p

    def _kept_model(self, training_state: bool) -> torch.nn.Module:
        """The trained weights (to resume from), or the weights a prediction uses."""
        if training_state or self.average is None:
            return self.model
        return self.average.model

    def _resume(self) -> None:
        ck = read_checkpoint(self.last_path)
        diffs = config_differences(config_of(ck), self.cfg, ignore=RESUME_CHANGEABLE)
        if diffs:
            raise CheckpointError(
                f"{self.last_path} was trained with another configuration ("
                + "; ".join(diffs) + "); resume with the run's settings or start a new "
                "output folder"
            )
        self.model.load_state_dict(ck["model_state"])
        if self.average is not None and "weight_average" in ck:
            self.average.load_state(ck["weight_average"])
        elif self.average is not None:  # trained without one: its first update copies
            log.info("member %d: the moving average of the weights starts at step %s",
                     self.member, ck["step"])
        self.opt.load_state_dict(ck["optimizer_state"])
        self.sched.load_state_dict(ck["scheduler_state"])
        _set_rng_state(self._own_rng_state(ck), self.gen)
        regions = {int(z): (int(r[0]), int(r[1]))
                   for z, r in (ck["split"].get("regions") or {}).items()}
        self.split = ValidationSplit(list(ck["split"]["train"]), list(ck["split"]["val"]), regions)
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.step_in_epoch = int(ck.get("step_in_epoch", 0))
        self.epoch_losses = list(ck.get("epoch_losses", []))
        self.best_val, self.best_epoch = float(ck["best_val_dice"]), int(ck["best_epoch"])
        self.best_step = int(ck.get("best_step", self.step))
        self.last_val_step = int(ck.get("last_val_step", self.step))
        self.history = list(ck["history"])
        self.elapsed = float(ck["elapsed_s"])
        self.finished = bool(ck.get("finished", False))
        if self.finished and not (
            self._epochs_done() or self._patience_out()
            or (self.budget_s and self.elapsed >= self.budget_s)
        ):  # more epochs, minutes or patience than the run ended with: train on
            self.finished = False
        log.info("member %d resumed at epoch %d, step %d%s", self.member, self.epoch, self.step,
                 " (finished)" if self.finished else "")

    def _own_rng_state(self, ck: dict[str, Any]) -> dict[str, Any]:
        """This rank's saved random state; a fresh crop stream if the world size changed."""
        states = ck.get("rng_state_ranks")
        if states and len(states) == self.dist.world_size:
            return states[self.dist.rank]
        if self.dist.rank == 0:
            return ck["rng_state"]
        log.warning("rank %d: %s has no random state for this rank; new crop stream",
                    self.dist.rank, self.last_path)
        state = dict(ck["rng_state"])
        seed = self.seed + self.dist.rank + 7919 * int(ck["step"])
        state["sampler"] = torch.Generator().manual_seed(seed).get_state()
        return state

    def _budget_fraction(self) -> float:
        """Share of this member's time budget used (0 without a budget)."""
        return self.elapsed / self.budget_s if self.budget_s else 0.0

    def _epochs_done(self) -> bool:
        return self.epochs is not None and self.epoch >= self.epochs

    def _patience_out(self) -> bool:
        """No better validation score for ``patience_steps`` steps (0: never)."""
        patience = self.cfg.train.patience_steps
        return bool(patience) and self.step - self.best_step >= patience

    def progress(self, kind: str, **kw: Any) -> TrainProgress:
        t = self.cfg.train
        frac_epochs = self.step / (self.steps_per_epoch * self.epochs) if self.epochs else 0.0
        frac_time = self.elapsed / self.budget_s if self.budget_s else 0.0
        frac = min(1.0, max(frac_epochs, frac_time))
        if self.finished:
            frac = 1.0
        return TrainProgress(
            kind=kind, member=self.member, n_members=t.ensemble, epoch=self.epoch,
            epochs=self.epochs or 0, step=self.step, steps_per_epoch=self.steps_per_epoch,
            best_val_dice=self.best_val if self.best_val >= 0 else None, metric=self.metric,
            best_epoch=self.best_epoch or None, best_step=self.best_step or None,
            lr=self.sched.get_last_lr()[0],
            elapsed=self.elapsed, fraction=(self.member + frac) / t.ensemble,
            validation_basis=self.split.describe(len(self.data.annotated)), **kw,
        )

    # ------------------------------------------------------------------ loop
    def _train_step(self) -> float:
        x, y, m = self.sampler.sample(self.cfg.train.batch_size)
        x, y, m = (v.to(self.device, non_blocking=True) for v in (x, y, m))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.ddp_model(x)
        loss = self.loss_fn(logits, y, m)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at step {self.step}; lower the learning rate "
                f"(now {self.cfg.train.lr}) or check the image for extreme values"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.average is not None:
            self.average.update(self.model)
        return float(loss.detach())

    def _set_train_mode(self) -> None:
        self.ddp_model.train()
        if self.cfg.train.freeze_fcresnet and isinstance(self.model, Pipeline):
            self.model.fcresnet.eval()  # frozen: keep its batch-norm statistics too

    def run(self, should_stop: Callable[[], bool] | None) -> Generator[TrainProgress, None, bool]:
        """Train this member; returns True when stopped on request.

        Validation runs every ``val_every_steps`` optimisation steps and when the run
        ends; early stopping counts steps since the best score (``patience_steps``), so
        both mean the same for 3 annotated slices as for 300.  An epoch (crops covering
        the training slices once) only counts passes for ``epochs``.
        """
        t = self.cfg.train
        if self.finished:
            log.info("member %d already finished; skipping", self.member)
            return False
        stopped = completed = False
        start = time.perf_counter() - self.elapsed
        self._saved_at = time.perf_counter()
        try:
            while not self._epochs_done():
                self._set_train_mode()
                if self.dist.any(should_stop is not None and should_stop()):
                    stopped = True
                    break
                try:
                    loss = self._train_step()
                except RuntimeError as exc:
                    if is_out_of_memory(exc):
                        raise OutOfMemoryError(
                            f"{self.device} ran out of memory at batch size {t.batch_size} "
                            f"and crop {t.crop_size}; lower the batch size or crop size, "
                            "or pick a smaller preset"
                        ) from None
                    raise
                self.epoch_losses.append(loss)  # since the last validation
                self.step += 1
                self.step_in_epoch += 1
                if self.step_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.step_in_epoch = 0
                self.elapsed = time.perf_counter() - start
                yield self.progress("step", loss=loss)
                out_of_time = bool(self.budget_s) and self.dist.any(
                    self.elapsed >= self.budget_s)
                end = out_of_time or self._epochs_done()
                if end or self.step - self.last_val_step >= t.val_every_steps:
                    losses, self.epoch_losses = self.epoch_losses, []
                    yield from self._validate(float(np.mean(losses)) if losses else math.nan)
                    self.elapsed = time.perf_counter() - start
                    if self._patience_out():
                        log.info("member %d: early stop at step %d (best at step %d)",
                                 self.member, self.step, self.best_step)
                        break
                    if out_of_time:
                        log.info("member %d: time budget reached at step %d", self.member,
                                 self.step)
                        break
                    if not end:
                        self._save_last()
                elif self.dist.any(time.perf_counter() - self._saved_at >= CHECKPOINT_INTERVAL_S):
                    self._save_last()
            if not stopped:
                self.finished = True
            completed = True
        finally:
            # Always leave a resumable state, also when the caller closes the generator.
            self.elapsed = time.perf_counter() - start
            if completed:  # a collective: only when every rank gets here
                self.rank_rng_states = self.dist.gather_objects(_rng_state(self.gen))
            if self.dist.is_main:
                save_checkpoint(self.last_path, self._payload(with_training_state=True))
        if self.dist.is_main and (self.keeps_final or not self.best_path.exists()):
            # "final": the prediction model is the end of the run (stopped or not)
            save_checkpoint(self.best_path, self._payload(with_training_state=False))
        return stopped

    @property
    def keeps_final(self) -> bool:
        return self.cfg.train.keep == "final"

    def kept_score(self) -> float:
        """Validation score of the weights :data:`BEST_NAME` holds (-1: not validated)."""
        if not self.keeps_final:
            return self.best_val
        if self.history and self.last_val_step == self.step:
            return float(self.history[-1].get(f"val_{self.metric}",
                                              self.history[-1]["val_dice"]))
        return -1.0

    def _save_last(self) -> None:
        """Write the resumable state to the last checkpoint (a collective: every rank calls it)."""
        self.rank_rng_states = self.dist.gather_objects(_rng_state(self.gen))
        if self.dist.is_main:
            save_checkpoint(self.last_path, self._payload(with_training_state=True))
        self._saved_at = time.perf_counter()

    def learned_nothing(self) -> str | None:
        """A warning when the best validation score does not beat a trivial prediction."""
        if self.best_val < 0 or not self.dist.is_main:
            return None
        idx = self.val_slices or self.train_slices
        target, mask = self.data.target[idx], self.data.mask[idx]
        if self.split.regions:
            target, mask = (np.stack([a[k, :, slice(*self.split.regions[z])]
                                      for k, z in enumerate(idx)]) for a in (target, mask))
        trivial = trivial_scores(target, mask, self.metric)
        return learned_nothing_message(self.best_val, self.metric, trivial)

    def _validate(self, train_loss: float) -> Generator[TrainProgress, None, None]:
        slices = self.val_slices or self.train_slices
        tile = self.cfg.train.inference_tile
        # rank 0 validates and broadcasts, so early stopping agrees on every rank
        scores = validate_model(self._kept_model(False), self.data, slices, self.device, tile,
                                self.metric, self.split.regions) if self.dist.is_main else {}
        self.last_val_step = self.step
        val = self.dist.broadcast_float(scores.get(self.metric, 0.0))
        dice_val = scores.get("dice", val)
        entry = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                 "val_dice": dice_val, "elapsed_s": self.elapsed,
                 "lr": self.sched.get_last_lr()[0]}
        if self.metric != "dice":
            entry[f"val_{self.metric}"] = val
        self.history.append(entry)
        improved = val > self.best_val
        if improved:
            self.best_val, self.best_epoch, self.best_step = val, self.epoch, self.step
            if self.dist.is_main:
                save_checkpoint(self.best_path, self._payload(with_training_state=False))
        extra = f" val {self.metric} {val:.4f}" if self.metric != "dice" else ""
        log.info("member %d step %d (epoch %d): loss %.4f val dice %.4f%s%s", self.member,
                 self.step, self.epoch, train_loss, dice_val, extra, " (best)" if improved else "")
        yield self.progress("validation", loss=train_loss, val_dice=dice_val, val_score=val,
                            checkpoint=self.best_path if improved else None)


def run_training(
    config: Config, image: np.ndarray, labels: np.ndarray, out_dir: str | Path,
    on_progress: Callable[[TrainProgress], None] | None = None, **kwargs: Any,
) -> TrainResult:
    """Drain :func:`train`, passing each report to ``on_progress``; return the result."""
    gen = train(config, image, labels, out_dir, **kwargs)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


def replace_train(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with some training settings changed."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))
