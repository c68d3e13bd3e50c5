"""One builder of training configurations: a preset or YAML mapping with overrides over it.

``fcres train`` (:func:`napari_fcres.cli.build_train_config`) and the Train widget
(:meth:`napari_fcres.widgets.train.TrainWidget.build_config`) parse their own flags and
forms, then both call :func:`build_train_config` with what was given.  A resumed run lays
the same :func:`train_request` over its stored configuration instead
(:func:`napari_fcres.runs.resume_request`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Config, config_from_mapping
from .errors import InputError

#: Overrides that go to ``Config.train``.
TRAIN_KEYS: tuple[str, ...] = (
    "epochs", "max_minutes", "ensemble", "device", "seed", "batch_size", "crop_size", "lr",
    "loss", "steps_per_epoch", "patience_steps", "val_every_steps", "val_fraction",
    "val_split", "select_by", "keep",
    "freeze_fcresnet",
)
#: Overrides that go to ``Config.data``.
DATA_KEYS: tuple[str, ...] = ("foreground_value", "ignore_value", "axis", "partial")


def train_request(
    base: Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    architecture: str | None = None,
    init_checkpoint: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The nested, partial config asked for: ``base`` with the overrides given laid over it.

    ``base`` is a config mapping (e.g. a YAML file's; None: none given).  An override of
    None is not given.  Fine-tuning without a preset or a base takes the network of
    ``init_checkpoint`` (:func:`napari_fcres.runs.init_model_config`).
    """
    unknown = sorted(set(overrides) - set(TRAIN_KEYS) - set(DATA_KEYS))
    if unknown:
        raise InputError(f"unknown training setting(s): {', '.join(unknown)}; "
                         f"known: {', '.join(TRAIN_KEYS + DATA_KEYS)}")
    raw: dict[str, Any] = dict(base or {})
    model = dict(raw.get("model") or {})
    if preset:
        model["preset"] = preset
    if architecture:
        model["architecture"] = architecture
    if init_checkpoint and not preset and base is None:
        from .runs import init_model_config

        model = init_model_config(init_checkpoint)
    raw["model"] = model
    for section, keys in (("train", TRAIN_KEYS), ("data", DATA_KEYS)):
        values = dict(raw.get(section) or {})
        values.update({k: overrides[k] for k in keys if overrides.get(k) is not None})
        raw[section] = values
    return raw


def build_train_config(
    base: Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    architecture: str | None = None,
    init_checkpoint: str | Path | None = None,
    **overrides: Any,
) -> Config:
    """A full :class:`Config`: the preset (default ``cpu``) under :func:`train_request`."""
    return config_from_mapping(train_request(
        base, preset=preset, architecture=architecture, init_checkpoint=init_checkpoint,
        **overrides,
    ))
