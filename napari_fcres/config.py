"""Typed configuration of models, training, augmentation and data.

Every checkpoint stores ``Config.to_dict()`` so a checkpoint rebuilds its
model alone.  Presets give ready-made model sizes: ``paper`` is Tables I and
II of Drozdzal et al. as written; the smaller ones train on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import InputError

Architecture = Literal[
    "pipeline", "fcresnet-standardize", "fcresnet-rescale", "fcresnet-raw", "unet"
]
ARCHITECTURES: tuple[str, ...] = (
    "pipeline", "fcresnet-standardize", "fcresnet-rescale", "fcresnet-raw", "unet"
)


@dataclass
class UNetConfig:
    """UNet of Table I: widths ``base * 2**level`` for ``depth`` poolings."""

    base: int = 16
    depth: int = 4
    out_kernel: int = 3  # Table I ends with a 3x3 conv; the plain UNet baseline uses 1


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

    architecture: str = "pipeline"
    preset: str = "cpu"
    preprocessor: UNetConfig = field(default_factory=UNetConfig)
    fcresnet: FCResNetConfig = field(default_factory=FCResNetConfig)
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(base=16, depth=4, out_kernel=1))


@dataclass
class AugmentConfig:
    """Random augmentation of training crops (the paper's EM recipe by default)."""

    flips: bool = True
    shear: float = 0.41  # maximal shear (Keras ``shear_range``, radians)
    rotation: float = 25.0  # maximal rotation in degrees
    elastic: bool = True
    elastic_grid: int = 3  # control points per side of the UNet-style spline warp
    elastic_sigma: float = 10.0  # displacement std of control points, in pixels
    intensity: float = 0.0  # optional random contrast/brightness jitter (0 = off, as in the paper)


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

    loss: str = "dice"  # "dice" (eq. 2) or "bce_dice"
    lr: float = 1e-3
    lr_decay: float = 1e-3  # Keras inverse-time decay per iteration: lr / (1 + decay * it)
    weight_decay: float = 1e-4
    weight_decay_fcresnet: float | None = None  # liver runs: 5e-4 on the FC-ResNet
    rmsprop_alpha: float = 0.9  # Keras RMSprop rho
    rmsprop_eps: float = 1e-7
    batch_size: int = 8
    crop_size: int = 256
    epochs: int = 200
    steps_per_epoch: int | None = None  # None: crops covering the training slices once
    max_minutes: float | None = None
    patience: int = 50  # early stopping on validation Dice, in epochs
    val_fraction: float = 0.2  # 24/6 for 30 slices
    val_every: int = 1
    ensemble: int = 1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    freeze_fcresnet: bool = False
    inference_tile: int = 512

    def __post_init__(self) -> None:
        if self.loss not in ("dice", "bce_dice"):
            raise InputError(f"unknown loss {self.loss!r}; choose 'dice' or 'bce_dice'")
        for name in ("batch_size", "crop_size", "epochs", "ensemble", "val_every", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
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
        """Rebuild a config; unknown keys raise :class:`InputError`."""
        return _build(cls, data, "config")

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


def config_from_mapping(raw: dict[str, Any]) -> Config:
    """Build a config from a (possibly partial) mapping, starting from its preset."""
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.get("preset", "cpu")
    base = preset_config(preset, architecture=model_raw.get("architecture", "pipeline"))
    merged = _merge(base.to_dict(), raw)
    return Config.from_dict(merged)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
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
        unet=UNetConfig(base=16, depth=4, out_kernel=1),
    )


def _small() -> ModelConfig:
    return ModelConfig(
        preset="small",
        preprocessor=UNetConfig(base=8, depth=4),
        fcresnet=FCResNetConfig(
            stem_width=16, simple_width=16, stage_widths=(64, 128, 256), stage_blocks=(2, 3, 4),
            across_width=512, across_blocks=2,
        ),
        unet=UNetConfig(base=32, depth=4, out_kernel=1),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        preprocessor=UNetConfig(base=4, depth=2),
        fcresnet=FCResNetConfig(
            stem_width=8, simple_width=8, stage_widths=(16,), stage_blocks=(1,),
            across_width=32, across_blocks=1,
        ),
        unet=UNetConfig(base=4, depth=2, out_kernel=1),
    )


PRESETS = {"paper": _paper, "small": _small, "cpu": _cpu, "tiny": _tiny}
PRESET_HELP = {
    "paper": "Tables I and II as written (1.8 M + 11 M parameters); wants a GPU",
    "small": "about 2 M parameters; a GPU or a patient CPU",
    "cpu": "fast on a laptop CPU: learns ISBI EM in minutes",
    "tiny": "for tests and smoke runs only",
}


def preset_config(preset: str, architecture: str = "pipeline") -> Config:
    """A full default config for a preset and architecture."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if architecture not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    model = PRESETS[preset]()
    model.architecture = architecture
    cfg = Config(model=model)
    if preset in ("cpu", "tiny"):
        cfg.train = dataclasses.replace(cfg.train, batch_size=4)
    return cfg
