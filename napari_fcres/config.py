"""Typed configuration of models, training, augmentation and data.

Every checkpoint stores ``Config.to_dict()`` so a checkpoint rebuilds its
model alone.  Presets give ready-made model sizes: ``paper`` is Tables I and
II of Drozdzal et al. as written; the smaller ones train on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import InputError

log = logging.getLogger(__name__)

Architecture = Literal[
    "pipeline", "fcresnet-standardize", "fcresnet-rescale", "fcresnet-raw", "unet"
]
ARCHITECTURES: tuple[str, ...] = (
    "pipeline", "fcresnet-standardize", "fcresnet-rescale", "fcresnet-raw", "unet"
)
#: what a training run may ask for: a network, or "auto" (resolved from the annotated
#: slices when the run starts: FEW_LABELS_ARCHITECTURE below FEW_SLICES, else the pipeline)
ARCHITECTURE_CHOICES: tuple[str, ...] = ("auto", *ARCHITECTURES)
WEIGHT_DECAY_MODES: tuple[str, ...] = ("coupled", "decoupled")
OPTIMIZERS: tuple[str, ...] = ("rmsprop", "adamw")
SELECT_BY: tuple[str, ...] = ("auto", "dice", "v_rand")
KEEP_CHOICES: tuple[str, ...] = ("auto", "best", "final")
VAL_SPLITS: tuple[str, ...] = ("auto", "slices", "regions")
LR_SCHEDULES: tuple[str, ...] = ("inverse_time", "budget_cosine")
LOSS_CHOICES: tuple[str, ...] = ("auto", "dice", "bce_dice")
#: fewer annotated slices than this is "few labels": validation on a band of every slice,
#: intensity jitter and BCE + Dice unless the config says otherwise (BENCHMARKS.md 1c)
FEW_SLICES = 8
FEW_LABELS_INTENSITY = 0.5
#: warm-up steps when ``train.warmup_steps`` is None: with the Dice loss, with BCE + Dice
DICE_WARMUP_STEPS = 100
SHORT_WARMUP_STEPS = 20
#: moving average of the weights when ``train.ema_decay`` is None and few slices are annotated
FEW_LABELS_EMA_DECAY = 0.99
#: the network ``model.architecture: auto`` trains when few slices are annotated
FEW_LABELS_ARCHITECTURE = "unet"

#: Forward passes per tile with test-time augmentation (the 8 flips and rotations).
TTA_PASSES = 8
#: Whether user-facing predictions (``fcres predict``, ``fcres demo``, the Predict widget)
#: average the :data:`TTA_PASSES` flips and rotations unless told otherwise.  Chosen on ISBI
#: slices 12-19 with 3 painted slices and 10 one-core minutes: it raised V_rand for each of
#: three seeds (mean 0.948 -> 0.958), at 8x the prediction time (BENCHMARKS.md 1c).
#: :func:`napari_fcres.inference.predict` itself (validation, the suggestion) defaults to off.
DEFAULT_TTA = True

#: fewer validation slices than this makes the scores "rough"
MIN_VAL_SLICES = 2


def resolved_loss(loss: str, n_annotated: int) -> str:
    """The loss a run trains with: ``auto`` is BCE + Dice below :data:`FEW_SLICES`, else Dice."""
    if loss != "auto":
        return loss
    return "bce_dice" if n_annotated < FEW_SLICES else "dice"


def validation_count(n_annotated: int, val_fraction: float) -> int:
    """How many whole slices a slice split holds out (at least 1 when 2 or more exist)."""
    if n_annotated < 2:
        return 0
    n_val = int(round(val_fraction * n_annotated))
    return min(max(n_val, 1 if val_fraction > 0 else 0), n_annotated - 1)


def validation_by_regions(n_annotated: int, val_fraction: float, val_split: str) -> bool:
    """True when validation is a band of every annotated slice (``auto``: few slices)."""
    if val_fraction == 0:
        return False
    if val_split == "auto":
        return n_annotated < FEW_SLICES
    return val_split == "regions"


def validation_words(n_annotated: int, n_val: int, regions: bool) -> str:
    """``validating on 1 of 3 annotated slices: scores are rough`` and the like."""
    if regions:
        plural = "s" if n_annotated != 1 else ""
        return (f"validating on a held-out band of each of the {n_annotated} annotated "
                f"slice{plural}" + (": scores are rough" if n_annotated < 3 else ""))
    if not n_val:
        return "validating on the training slice itself: scores are optimistic"
    return (f"validating on {n_val} of {n_annotated} annotated slices"
            + (": scores are rough" if n_val < MIN_VAL_SLICES else ""))


#: epoch limit of a run given no time budget and no ``epochs``
DEFAULT_EPOCHS = 200
#: How the validation scores are written for people.
METRIC_NAMES: dict[str, str] = {"dice": "Dice", "v_rand": "V_rand"}


def metric_name(metric: str) -> str:
    """How a metric is written for people: "Dice" or "V_rand"."""
    return METRIC_NAMES.get(metric, metric)


@dataclass
class UNetConfig:
    """UNet of Table I: widths ``base * 2**level`` for ``depth`` poolings."""

    base: int = 16
    depth: int = 4
    out_kernel: int = 3  # Table I ends with a 3x3 conv; the plain UNet baseline uses 1
    merge_kernel: int = 3  # linear conv after repeat + merge: 3 (symmetric) or 2 (Table I)
    input_norm: str = "batch"  # learned input standardization as first layer: batch|instance|none
    # normalization after every 3x3 conv: "none" (Table I; the pre-processor) or "batch" (the
    # plain UNet baseline, whose logits otherwise blow up to all-foreground under RMSprop)
    block_norm: str = "none"

    def __post_init__(self) -> None:
        for name, allowed in (("input_norm", ("none", "batch", "instance")),
                              ("block_norm", ("none", "batch"))):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}"
                )


def plain_unet(base: int, depth: int = 4) -> UNetConfig:
    """The plain UNet baseline: 1x1 logits, batch normalization after every 3x3 conv."""
    return UNetConfig(base=base, depth=depth, out_kernel=1, block_norm="batch")


@dataclass
class FCResNetConfig:
    """FC-ResNet of Table II (widths are block output widths)."""

    stem_width: int = 32  # Down 1 / Up 5 (3x3 conv)
    simple_width: int = 32  # Down 2 / Up 4 (simple blocks)
    stage_widths: tuple[int, ...] = (128, 256, 512)  # Down 3..5, mirrored by Up 3..1
    stage_blocks: tuple[int, ...] = (3, 8, 10)
    across_width: int = 1024
    across_blocks: int = 3
    bottleneck_ratio: int = 4  # inner width of a bottleneck = width / ratio
    dropout: float = 0.0


@dataclass
class ModelConfig:
    """Which network to build and at what size."""

    # a network of ARCHITECTURES, or "auto" (training.resolve_few_label_settings)
    architecture: str = "pipeline"
    preset: str = "cpu"
    init: str = "he"  # "he", "glorot" (Keras' default, as in the paper) or "torch"
    # batch-norm statistics at prediction: "auto" (each slice's own in an EM-like stack, the
    # training averages in a scan: napari_fcres.norm_choice), "image" (each image's own),
    # "volume" (the whole stack's) or "running" (the training averages; the paper's)
    norm_stats: str = "auto"
    preprocessor: UNetConfig = field(default_factory=UNetConfig)
    fcresnet: FCResNetConfig = field(default_factory=FCResNetConfig)
    unet: UNetConfig = field(default_factory=lambda: plain_unet(base=16))


def same_network(a: ModelConfig, b: ModelConfig) -> bool:
    """True when two model configs build the same network (init and prediction statistics aside)."""
    return dataclasses.replace(a, init=b.init, norm_stats=b.norm_stats) == b


@dataclass
class AugmentConfig:
    """Random augmentation of training crops (the paper's EM recipe by default)."""

    flips: bool = True
    shear: float = 0.41  # maximal shear (Keras ``shear_range``, radians)
    rotation: float = 25.0  # maximal rotation in degrees
    elastic: bool = True
    elastic_grid: int = 3  # control points per side of the UNet-style spline warp
    elastic_sigma: float = 10.0  # displacement std of control points, in pixels
    # random contrast/brightness jitter of each crop (0 = off, as in the paper); None = auto:
    # FEW_LABELS_INTENSITY when fewer than FEW_SLICES slices are annotated, else 0
    intensity: float | None = None


@dataclass
class DataConfig:
    """How labels are read."""

    foreground_value: int | None = None  # None: the larger of two label values
    ignore_value: int | None = None  # pixels with this label value never count
    partial: bool = False  # 0 = unlabeled, 1 = background, >=2 = foreground
    axis: int = 0  # slicing axis of 3D stacks


@dataclass
class TrainConfig:
    """Optimisation recipe; defaults follow the paper's EM experiment."""

    # "dice" (eq. 2), "bce_dice", or "auto": bce_dice when fewer than FEW_SLICES slices are
    # annotated, else dice (training.resolve_few_label_settings)
    loss: str = "auto"
    lr: float = 1e-3
    lr_decay: float = 1e-3  # Keras inverse-time decay per iteration: lr / (1 + decay * it)
    # "inverse_time": Keras' decay above (the paper); "budget_cosine": with max_minutes, the
    # learning rate also follows a half cosine from 1 to 0 over the time budget (elapsed
    # time), so a short run ends annealed; without a budget it is "inverse_time"
    lr_schedule: str = "inverse_time"
    weight_decay: float = 1e-4
    weight_decay_fcresnet: float | None = None  # liver runs: 5e-4 on the FC-ResNet
    # "coupled": L2 added to the gradient (Keras regularizers, torch's weight_decay);
    # "decoupled": weights shrink by lr * weight_decay per step, outside RMSprop's scaling
    weight_decay_mode: str = "decoupled"
    optimizer: str = "rmsprop"  # "rmsprop" (the paper) or "adamw"
    rmsprop_alpha: float = 0.9  # Keras RMSprop rho
    rmsprop_eps: float = 1e-7
    # linear learning-rate warm-up over the first steps: RMSprop's first steps are
    # ~3x lr on every weight (its running average starts at 0) and can kill ReLUs.  None =
    # auto, after the loss: 100 steps with the Dice loss (shorter warm-ups left Dice runs
    # stuck at all-foreground), 20 with BCE + Dice (BCE has no such plateau; 20 steps cover
    # RMSprop's start, 0.9^20 = 0.12, and leave a 3-minute run most of its ~150 steps at
    # full rate): training.resolve_few_label_settings, BENCHMARKS.md 1c
    warmup_steps: int | None = None
    batch_size: int = 8
    crop_size: int = 256
    # passes over the training slices; None: no limit when ``max_minutes`` is given (the
    # time budget is used), else DEFAULT_EPOCHS
    epochs: int | None = None
    steps_per_epoch: int | None = None  # None: crops covering the training slices once
    max_minutes: float | None = None
    # early stopping: optimisation steps without a better validation score (0: never).
    # Counted in steps, not epochs, so it means the same for 3 slices and for 300.
    patience_steps: int = 1000
    # U-Net's separation weights on the BCE (napari_fcres.border_weights): thin background
    # between two objects weighs up to 1 + border_weight; 0: off.  The Dice loss is unweighted
    border_weight: float = 0.0
    border_sigma: float = 5.0  # pixels
    # exponential moving average of the weights (0: off): validation scores the average and
    # the best checkpoint keeps it (napari_fcres.weight_average).  None = auto:
    # FEW_LABELS_EMA_DECAY with fewer than FEW_SLICES annotated slices, else off
    ema_decay: float | None = None
    # which validation score keeps the best checkpoint: "dice", "v_rand" (ISBI foreground-restricted
    # Rand score, for membrane EM) or "auto" (v_rand for stacks of many touching cells)
    select_by: str = "auto"
    # which weights the run keeps for prediction (``best.pt``): "best" (the best validation
    # score), "final" (the weights when training ends; the moving average when there is one)
    # or "auto": final with fewer than FEW_SLICES annotated slices validated by V_rand
    # (membrane EM), else best
    # (training.resolve_few_label_settings, BENCHMARKS.md 1c)
    keep: str = "auto"
    val_fraction: float = 0.2  # 24/6 for 30 slices; the share of each slice with "regions"
    val_every_steps: int = 20  # validate every N optimisation steps (and at the end)
    # what is held out for validation: "slices" (whole annotated slices), "regions" (a band
    # of every annotated slice, so every painted slice also trains) or "auto" (regions when
    # whole slices would leave fewer than MIN_VAL_SLICES slices to validate on)
    val_split: str = "auto"
    ensemble: int = 1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    freeze_fcresnet: bool = False
    inference_tile: int = 512

    def __post_init__(self) -> None:
        if self.loss not in LOSS_CHOICES:
            raise InputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_CHOICES)}")
        for name, allowed in (("weight_decay_mode", WEIGHT_DECAY_MODES),
                              ("optimizer", OPTIMIZERS), ("select_by", SELECT_BY),
                              ("keep", KEEP_CHOICES), ("val_split", VAL_SPLITS),
                              ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise InputError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}"
                )
        for name in ("batch_size", "crop_size", "epochs", "ensemble", "val_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        for name in ("warmup_steps", "patience_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise InputError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.border_weight < 0 or self.border_sigma <= 0:
            raise InputError(f"border_weight must be 0 or more and border_sigma above 0, got "
                             f"{self.border_weight} and {self.border_sigma}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be 0 (off) or below 1, got {self.ema_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class Config:
    """Everything needed to rebuild and retrain a model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), safe for YAML/JSON/torch.save."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Rebuild a config; unknown keys raise :class:`InputError`.

        Configs saved before the recipe fix (no ``model.init`` key) get the
        settings they were trained with, so old checkpoints rebuild their model.
        """
        return _build(cls, _with_legacy_defaults(data), "config")

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Read a YAML config; a ``preset:`` key under ``model`` fills in the sizes."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise InputError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise InputError(f"config file {path} must hold a mapping, not {type(raw).__name__}")
        return config_from_mapping(raw)


#: What configs saved before ``model.init`` existed were built and trained with.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"init": "torch", "norm_stats": "running"},
    "unet_like": {"merge_kernel": 2, "input_norm": "none"},
    "train": {"weight_decay_mode": "coupled", "select_by": "dice", "warmup_steps": 0},
}


#: Epoch-counted stopping keys of configs written before stopping was counted in steps.
EPOCH_COUNTED_KEYS: tuple[str, ...] = ("patience", "val_every")


def _with_step_counted_stopping(data: Any) -> Any:
    """Drop the epoch-counted ``train.patience`` / ``train.val_every`` of an older config.

    An epoch meant 2 steps for 3 slices and 100 for 300, so they are not converted: the
    run gets the step-counted defaults (``patience_steps``, ``val_every_steps``).
    """
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
        return data
    old = [k for k in EPOCH_COUNTED_KEYS if k in data["train"]]
    if not old:
        return data
    log.warning("config: %s counted epochs and are replaced by patience_steps / "
                "val_every_steps (counted in optimisation steps)",
                ", ".join(f"train.{k}" for k in old))
    return {**data, "train": {k: v for k, v in data["train"].items() if k not in old}}


def _with_legacy_defaults(data: Any) -> Any:
    """Fill in the pre-fix settings for a config mapping saved without ``model.init``."""
    data = _with_step_counted_stopping(data)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return data
    model = data["model"]
    if "init" in model:
        return data
    out = dict(data)
    model = {**LEGACY_DEFAULTS["model"], **model}
    for key in ("preprocessor", "unet"):
        if isinstance(model.get(key), dict):
            model[key] = {**LEGACY_DEFAULTS["unet_like"], **model[key]}
    out["model"] = model
    if isinstance(out.get("train"), dict):
        out["train"] = {**LEGACY_DEFAULTS["train"], **out["train"]}
    return out


def config_from_mapping(raw: dict[str, Any]) -> Config:
    """Build a config from a (possibly partial) mapping, starting from its preset.

    A mapping that names no architecture asks for ``auto`` (what ``fcres train`` and the
    Train widget do by default).
    """
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.get("preset", "cpu")
    base = preset_config(preset, architecture=model_raw.get("architecture", "auto"))
    merged = merge_nested(base.to_dict(), raw)
    return Config.from_dict(merged)


def merge_nested(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_nested(out[key], value)
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"unknown {where} key(s): {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        current = getattr(defaults, name)
        if is_dataclass(current):
            kwargs[name] = _build(type(current), value, f"{where}.{name}")
        elif isinstance(current, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------- presets

def _paper() -> ModelConfig:
    return ModelConfig(preset="paper")


def _cpu() -> ModelConfig:
    return ModelConfig(
        preset="cpu",
        preprocessor=UNetConfig(base=8, depth=4),
        fcresnet=FCResNetConfig(
            stem_width=16, simple_width=16, stage_widths=(32, 64, 128), stage_blocks=(1, 2, 2),
            across_width=128, across_blocks=1,
        ),
        unet=plain_unet(base=16),
    )


def _small() -> ModelConfig:
    return ModelConfig(
        preset="small",
        preprocessor=UNetConfig(base=8, depth=4),
        fcresnet=FCResNetConfig(
            stem_width=16, simple_width=16, stage_widths=(64, 128, 256), stage_blocks=(2, 3, 4),
            across_width=512, across_blocks=2,
        ),
        unet=plain_unet(base=32),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        preprocessor=UNetConfig(base=4, depth=2),
        fcresnet=FCResNetConfig(
            stem_width=8, simple_width=8, stage_widths=(16,), stage_blocks=(1,),
            across_width=32, across_blocks=1,
        ),
        unet=plain_unet(base=4, depth=2),
    )


PRESETS = {"paper": _paper, "small": _small, "cpu": _cpu, "tiny": _tiny}
PRESET_HELP = {
    "paper": "Tables I and II (2.2 M + 11.7 M parameters; 1.8 M with 2x2 merges); wants a GPU",
    "small": "about 2 M parameters; a GPU or a patient CPU",
    "cpu": "fast on a laptop CPU: learns ISBI EM in minutes",
    "tiny": "for tests and smoke runs only",
}


def preset_config(preset: str, architecture: str = "pipeline") -> Config:
    """A full default config for a preset and architecture."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if architecture not in ARCHITECTURE_CHOICES:
        raise InputError(f"unknown architecture {architecture!r}; choose one of "
                         f"{', '.join(ARCHITECTURE_CHOICES)}")
    model = PRESETS[preset]()
    model.architecture = architecture
    cfg = Config(model=model)
    if preset in ("cpu", "tiny"):
        cfg.train = dataclasses.replace(cfg.train, batch_size=4)
    return cfg
