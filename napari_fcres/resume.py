"""Resuming a run: one rule for the CLI, the Train widget and :func:`~napari_fcres.training.train`.

A resumed run trains with the configuration stored in its folder (``config.yaml``, or
a member's ``last.pt`` where that file is missing).  What the caller asks for is laid
over the stored configuration with :func:`resume_request`; :func:`resume_config` then
refuses every difference outside :data:`RESUME_CHANGEABLE`, naming each key, for
example ``train.lr: 0.001 in the run, 0.01 now``.  A folder without any
``member_KK/last.pt`` has nothing to resume, and says so.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import Config, merge_nested
from .errors import InputError

log = logging.getLogger(__name__)

#: Settings a resumed run may change: budgets, stopping and where it runs.  Everything
#: else (model, optimizer, schedule, data split, augmentation) must match the run.
RESUME_CHANGEABLE: tuple[str, ...] = (
    "train.epochs",
    "train.max_minutes",
    "train.patience",
    "train.device",
    "train.num_workers",
    "train.inference_tile",
)

CONFIG_NAME = "config.yaml"


def last_checkpoints(run_dir: str | Path) -> list[Path]:
    """The resumable ``member_KK/last.pt`` files of a run folder."""
    return sorted(Path(run_dir).glob("member_*/last.pt"))


def stored_config(run_dir: str | Path) -> Config:
    """The configuration a run folder was trained with; InputError if nothing to resume."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"nothing to resume: {run_dir} does not exist; "
                         "start a new run (without resume) or name the run's folder")
    lasts = last_checkpoints(run_dir)
    if not lasts:
        raise InputError(
            f"nothing to resume in {run_dir}: it holds no member_KK/last.pt (no run, or one "
            "stopped before its first checkpoint); start a new run there without resume"
        )
    if (run_dir / CONFIG_NAME).is_file():
        return Config.from_yaml(run_dir / CONFIG_NAME)
    from .checkpoint import config_of, read_checkpoint

    return config_of(read_checkpoint(lasts[0]))


def resume_request(run_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """The stored configuration with ``overrides`` (a nested, partial mapping) laid over it.

    Nothing is refused here: :func:`resume_config` (called by ``train``) does that, once
    the data have been seen (the crop size may have been fitted to the slices).
    """
    stored = stored_config(run_dir)
    if not overrides:
        return stored
    return Config.from_dict(merge_nested(stored.to_dict(), overrides))


def resume_config(run_dir: str | Path, requested: Config) -> Config:
    """``requested`` if it differs from the run's stored configuration only in harmless keys.

    Raises :class:`InputError` naming the folder when there is nothing to resume, and
    naming every differing key otherwise.
    """
    stored = stored_config(run_dir)
    diffs = config_differences(stored, requested, ignore=RESUME_CHANGEABLE)
    if diffs:
        raise InputError(
            f"cannot resume {run_dir} with another configuration: " + "; ".join(diffs)
            + ". Resume with the run's own settings (only "
            + ", ".join(k.split(".", 1)[1] for k in RESUME_CHANGEABLE)
            + " may change) or start a new run in another folder"
        )
    changed = config_differences(stored, requested)
    if changed:
        log.info("resuming %s with %s", run_dir, "; ".join(changed))
    return requested


def config_differences(a: Config, b: Config, ignore: Iterable[str] = ()) -> list[str]:
    """``"key: A in the run, B now"`` for every dotted key whose value differs."""
    skip = set(ignore)
    flat_a, flat_b = _flatten(a.to_dict()), _flatten(b.to_dict())
    return [
        f"{key}: {_show(flat_a.get(key))} in the run, {_show(flat_b.get(key))} now"
        for key in sorted(set(flat_a) | set(flat_b))
        if key not in skip and flat_a.get(key) != flat_b.get(key)
    ]


def write_run_config(run_dir: str | Path, cfg: Config) -> Path:
    """Write ``config.yaml`` atomically (other ranks may be reading it)."""
    import yaml

    path = Path(run_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temporary files a killed checkpoint write left behind (``.NAME.XXXX.tmp``)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d unfinished checkpoint write(s) in %s", len(removed), folder)
    return removed


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)
