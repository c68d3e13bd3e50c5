"""Checkpoints: atomic writes, self-describing contents, clear errors.

A checkpoint is a ``torch.save`` dict holding the format tag, the package
version, the full :class:`~napari_fcres.config.Config` and the model weights,
plus for resumable ones the optimizer, schedule and RNG states, the data split
and the metric history.  :func:`load_model` rebuilds the model from the file
alone.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config
from .errors import CheckpointError, FcresError
from .models import SegmentationModel, build_model
from .runs import find_checkpoints as find_checkpoints  # re-export: runs.py owns finding
from .runs import single_checkpoint

log = logging.getLogger(__name__)

FORMAT = "napari-fcres-checkpoint"
FORMAT_VERSION = 1


#: Test hook: ``NAME:N`` SIGKILLs this process in the N-th write of a checkpoint called
#: NAME, after the temporary file is complete and before it replaces ``NAME``.
KILL_IN_WRITE_ENV = "NAPARI_FCRES_TEST_KILL_IN_WRITE"
_writes: dict[str, int] = {}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tag and version) atomically to ``path``.

    The data go to a temporary file in the same folder, are flushed and fsync'ed, and
    the file then replaces ``path`` in one ``os.replace``; the folder is fsync'ed too.
    A process killed at any moment leaves either the old or the new checkpoint, never
    a truncated one (at worst an orphaned ``.NAME.XXXX.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "package_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _maybe_kill_in_write(path.name)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _maybe_kill_in_write(name: str) -> None:
    spec = os.environ.get(KILL_IN_WRITE_ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(":")
    if target != name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if _writes[name] == int(count):
        import signal

        log.warning("%s: killing this process in write %d of %s", KILL_IN_WRITE_ENV,
                    _writes[name], name)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint dict; raise :class:`CheckpointError` if unusable."""
    path = Path(path)
    if path.is_dir():
        path = single_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = path.read_bytes()
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or truncated file?): "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a napari-fcres checkpoint (a foreign PyTorch file?); "
            "train one with `fcres train` or the Train widget"
        )
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer napari-fcres ({data.get('package_version')}); "
            "upgrade napari-fcres to read it"
        )
    for key in ("config", "model_state"):
        if key not in data:
            raise CheckpointError(f"{path} lacks '{key}'; the file is incomplete")
    data["path"] = str(path)
    return data


def config_of(data: dict[str, Any]) -> Config:
    try:
        return Config.from_dict(data["config"])
    except FcresError as exc:
        raise CheckpointError(f"checkpoint {data.get('path')} has an unusable config: {exc}") \
            from None


def model_from_checkpoint(data: dict[str, Any]) -> SegmentationModel:
    """Rebuild the model a checkpoint dict describes and load its weights."""
    cfg = config_of(data)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(data["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights in {data.get('path')} do not fit a {cfg.model.preset!r} "
            f"{cfg.model.architecture} model: {str(exc)[:300]}"
        ) from None
    return model


def load_model(
    path: str | Path, device: str | torch.device = "cpu", expected_preset: str | None = None
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Model (in eval mode, on ``device``) and the checkpoint dict it came from."""
    data = read_checkpoint(path)
    cfg = config_of(data)
    if expected_preset is not None and cfg.model.preset != expected_preset:
        raise CheckpointError(
            f"{data['path']} holds a {cfg.model.preset!r} model but preset "
            f"{expected_preset!r} was asked for; drop --preset or pick {cfg.model.preset!r}"
        )
    model = model_from_checkpoint(data)
    model.to(device).eval()
    return model, data
