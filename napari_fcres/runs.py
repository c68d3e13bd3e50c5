"""Training run folders: their layout, and everything that finds, loads or derives from them.

A run folder (``fcres train --out``, the Train widget's output folder) holds::

    config.yaml            the configuration the run trains with (CONFIG_NAME)
    member_00/best.pt      member 0's best validation checkpoint, for prediction (BEST_NAME)
    member_00/last.pt      everything needed to resume member 0 (LAST_NAME)
    member_01/...          one folder per ensemble member (member_dir)
    .fcres-train.lock      while a training writes here: who (LOCK_NAME, napari_fcres.run_lock)

This module is the only one that knows these names.  It finds checkpoints (a folder
contributes every best checkpoint below it, never a last one; a file is taken as it is),
resolves a folder to its one checkpoint file (:func:`checkpoint_file`), loads an ensemble,
picks a fresh default folder for a new run and holds the rules that derive a resumed run's
configuration from its folder: the stored configuration, with only the keys in
:data:`RESUME_CHANGEABLE` allowed to change.  A folder without any last checkpoint has
nothing to resume, and says so.  A new run never lands on a finished one: a folder holding
checkpoints is refused unless the old run is moved aside first (:func:`claim_for_new_run`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, merge_nested
from .errors import CheckpointError, InputError, StoppedError

if TYPE_CHECKING:
    import torch

    from .models import SegmentationModel

log = logging.getLogger(__name__)

#: The configuration of a run, at the top of its folder.
CONFIG_NAME = "config.yaml"
#: A member's checkpoint with the best validation score (what prediction uses).
BEST_NAME = "best.pt"
#: A member's resumable checkpoint (weights, optimizer, schedule, RNG states, history).
LAST_NAME = "last.pt"
#: Folder of member ``k``: ``MEMBER_PREFIX`` + two digits.
MEMBER_PREFIX = "member_"
#: The lock file of the training writing into a run folder (napari_fcres.run_lock).
LOCK_NAME = ".fcres-train.lock"
#: A run moved aside by ``--overwrite`` goes to the sibling ``NAME`` + this + a timestamp.
ASIDE_INFIX = ".old-"
#: The layout in words, for help texts and tooltips.
LAYOUT = f"{CONFIG_NAME} and {MEMBER_PREFIX}KK/{BEST_NAME}, {LAST_NAME}"

#: Settings a resumed run may change: budgets, stopping and where it runs.  Everything
#: else (model, optimizer, schedule, data split, augmentation) must match the run.
RESUME_CHANGEABLE: tuple[str, ...] = (
    "train.epochs",
    "train.max_minutes",
    "train.patience_steps",
    # resolved from the annotated slices when the run starts (training.resolve_few_label_settings)
    "train.loss",
    "augment.intensity",
    "train.warmup_steps",
    "train.ema_decay",
    "train.keep",
    "train.device",
    "train.num_workers",
    "train.inference_tile",
)


# ----------------------------------------------------------------------------- paths


def member_dir(run: str | Path, member: int) -> Path:
    """``run/member_KK``: the folder of ensemble member ``member``."""
    return Path(run) / f"{MEMBER_PREFIX}{member:02d}"


def best_path(folder: str | Path, member: int | None = None) -> Path:
    """``folder/member_KK/best.pt``, or ``folder/best.pt`` without a member."""
    base = Path(folder) if member is None else member_dir(folder, member)
    return base / BEST_NAME


def last_path(folder: str | Path, member: int | None = None) -> Path:
    """``folder/member_KK/last.pt``, or ``folder/last.pt`` without a member."""
    base = Path(folder) if member is None else member_dir(folder, member)
    return base / LAST_NAME


def config_path(run: str | Path) -> Path:
    """``run/config.yaml``."""
    return Path(run) / CONFIG_NAME


def lock_path(run: str | Path) -> Path:
    """``run/.fcres-train.lock``."""
    return Path(run) / LOCK_NAME


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of ``<run>/member_KK/<file>`` (else the file's own folder)."""
    parent = Path(checkpoint).parent
    return parent.parent if parent.name.startswith(MEMBER_PREFIX) else parent


def last_checkpoints(run: str | Path) -> list[Path]:
    """The resumable ``member_KK/last.pt`` files of a run folder, sorted."""
    return sorted(Path(run).glob(f"{MEMBER_PREFIX}*/{LAST_NAME}"))


def run_checkpoints(run: str | Path) -> list[Path]:
    """Every ``member_KK/best.pt`` and ``member_KK/last.pt`` of a run folder, sorted."""
    run = Path(run)
    return sorted([*run.glob(f"{MEMBER_PREFIX}*/{BEST_NAME}"), *last_checkpoints(run)])


def holds_run(path: str | Path) -> bool:
    """Whether ``path`` holds (part of) a run: a config or a member's last checkpoint."""
    path = Path(path)
    return path.is_dir() and (config_path(path).exists() or bool(last_checkpoints(path)))


def is_resumable(path: str | Path) -> bool:
    """Whether ``path`` holds a run's config and at least one member's last checkpoint."""
    path = Path(path)
    return path.is_dir() and config_path(path).exists() and bool(last_checkpoints(path))


# ----------------------------------------------------------------------------- new runs


def runs_root() -> Path:
    """Parent of the default output folders: ``~/.napari-fcres/runs``."""
    return Path.home() / ".napari-fcres" / "runs"


def default_output_dir() -> Path:
    """A fresh ``~/.napari-fcres/runs/<timestamp>`` folder name (not created)."""
    return unused_dir(runs_root() / time.strftime("%Y%m%d-%H%M%S"))


def unused_dir(path: str | Path) -> Path:
    """``path`` if it holds no run and nothing else, else the first free ``path-N`` (N >= 2)."""
    path = Path(path)
    if not holds_run(path) and not (path.exists() and any(path.iterdir())):
        return path
    i = 2
    while (path.parent / f"{path.name}-{i}").exists():
        i += 1
    return path.parent / f"{path.name}-{i}"


def claim_for_new_run(run: str | Path, *, overwrite: bool = False) -> Path | None:
    """Make ``run`` ready for a new (not resumed) run; the old run's new folder, if moved.

    A folder holding checkpoints of a run is refused (:class:`InputError` naming it)
    unless ``overwrite``: then everything in it but the lock moves to a sibling
    ``NAME.old-YYYYmmdd-HHMMSS`` (:func:`move_aside`), nothing is deleted.  A folder with
    only a ``config.yaml`` (a run stopped before its first checkpoint) or other files is
    used as it is.  Call it holding the folder's lock (:mod:`napari_fcres.run_lock`).
    """
    run = Path(run)
    found = run_checkpoints(run) if run.is_dir() else []
    if not found:
        return None
    if not overwrite:
        shown = ", ".join(str(p.relative_to(run)) for p in found[:2])
        more = f" and {len(found) - 2} more" if len(found) > 2 else ""
        raise InputError(
            f"{run} already holds a run ({shown}{more}); continue it with --resume (Resume "
            "in the Train widget), start over with --overwrite (the old run is moved to "
            f"{run.name}{ASIDE_INFIX}DATE-TIME beside it), or train into another folder"
        )
    return move_aside(run)


def move_aside(run: str | Path) -> Path:
    """Move everything in ``run`` but its lock to a new sibling ``NAME.old-YYYYmmdd-HHMMSS``.

    Returns the sibling.  Renames only (same file system): nothing is copied or deleted.
    """
    run = Path(run)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run.parent / f"{run.name}{ASIDE_INFIX}{stamp}"
    i = 2
    while aside.exists():
        aside = run.parent / f"{run.name}{ASIDE_INFIX}{stamp}-{i}"
        i += 1
    aside.mkdir()
    for entry in sorted(run.iterdir()):
        if entry.name != LOCK_NAME:
            os.replace(entry, aside / entry.name)
    log.warning("moved the previous run in %s aside to %s (--overwrite)", run, aside)
    return aside


# ----------------------------------------------------------------------------- finding


def find_checkpoints(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """Expand files and folders into checkpoint files.

    A folder contributes every ``best.pt`` below it (sorted; ``last.pt`` files never count),
    a file is taken as it is (a best or a last checkpoint).  Raises :class:`CheckpointError`
    for a missing path or a folder without any best checkpoint.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob(f"**/{BEST_NAME}"))
            if not found:
                raise CheckpointError(f"no {BEST_NAME} checkpoint found under {p}")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise CheckpointError(f"checkpoint not found: {p}")
    return out


def single_checkpoint(folder: str | Path) -> Path:
    """The one ``best.pt`` below ``folder``; :class:`CheckpointError` for none or several."""
    candidates = sorted(Path(folder).glob(f"**/{BEST_NAME}"))
    if len(candidates) != 1:
        raise CheckpointError(
            f"{folder} is a folder holding {len(candidates)} {BEST_NAME} checkpoints; "
            "name one file (or pass the folder where an ensemble is accepted)"
        )
    return candidates[0]


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: a file as it is, a folder's one ``best.pt``."""
    path = Path(path)
    return single_checkpoint(path) if path.is_dir() else path


# ----------------------------------------------------------------------------- loading


def load_ensemble(
    paths: Sequence[str | Path] | str | Path,
    device: str | torch.device = "cpu",
    *,
    should_stop: Callable[[], bool] | None = None,
) -> list[SegmentationModel]:
    """The models (eval mode, on ``device``) of checkpoint files and run folders.

    Paths expand as in :func:`find_checkpoints`; ``device`` may be ``auto``
    (:func:`~napari_fcres.device.resolve_device`).  ``should_stop()`` is polled before each
    model and raises :class:`StoppedError`.  No path at all raises :class:`InputError`.
    """
    from .checkpoint import load_model
    from .device import resolve_device

    files = find_checkpoints(paths)
    if not files:
        raise InputError("no checkpoint given")
    dev = resolve_device(device)
    models = []
    for f in files:
        if should_stop is not None and should_stop():
            raise StoppedError("stopped while loading the models")
        model, data = load_model(f, device=dev)
        # the training slices' foreground range, for inference's far-from-training warning
        model.train_foreground = list(data.get("train_foreground") or [])
        models.append(model)
    return models


def init_model_config(checkpoint: str | Path) -> dict[str, Any]:
    """The ``model`` section a fine-tuning run takes from ``checkpoint`` (its network)."""
    from .checkpoint import config_of, read_checkpoint

    return config_of(read_checkpoint(checkpoint_file(checkpoint))).to_dict()["model"]


# ----------------------------------------------------------------------------- resuming


def stored_config(run: str | Path) -> Config:
    """The configuration a run folder was trained with; InputError if nothing to resume.

    ``config.yaml``, or the config in a member's last checkpoint where that file is missing.
    """
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"nothing to resume: {run} does not exist; "
                         "start a new run (without resume) or name the run's folder")
    lasts = last_checkpoints(run)
    if not lasts:
        raise InputError(
            f"nothing to resume in {run}: it holds no {MEMBER_PREFIX}KK/{LAST_NAME} (no run, "
            "or one stopped before its first checkpoint); start a new run there without resume"
        )
    if config_path(run).is_file():
        return Config.from_yaml(config_path(run))
    from .checkpoint import config_of, read_checkpoint

    return config_of(read_checkpoint(lasts[0]))


def resume_request(run: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """The stored configuration with ``overrides`` (a nested, partial mapping) laid over it.

    Nothing is refused here: :func:`resume_config` (called by ``train``) does that, once
    the data have been seen (the crop size may have been fitted to the slices).
    """
    stored = stored_config(run)
    if not overrides:
        return stored
    return Config.from_dict(merge_nested(stored.to_dict(), overrides))


def resume_config(run: str | Path, requested: Config) -> Config:
    """``requested`` if it differs from the run's stored configuration only in harmless keys.

    Raises :class:`InputError` naming the folder when there is nothing to resume, and
    naming every differing key otherwise.
    """
    stored = stored_config(run)
    diffs = config_differences(stored, requested, ignore=RESUME_CHANGEABLE)
    if diffs:
        raise InputError(
            f"cannot resume {run} with another configuration: " + "; ".join(diffs)
            + ". Resume with the run's own settings (only "
            + ", ".join(k.split(".", 1)[1] for k in RESUME_CHANGEABLE)
            + " may change) or start a new run in another folder"
        )
    changed = config_differences(stored, requested)
    if changed:
        log.info("resuming %s with %s", run, "; ".join(changed))
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


def write_run_config(run: str | Path, cfg: Config) -> Path:
    """Write ``config.yaml`` atomically (other ranks may be reading it)."""
    import yaml

    path = config_path(run)
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
