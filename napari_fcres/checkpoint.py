"""Checkpoint files: atomic writes, self-describing contents, safe reads, clear errors.

A checkpoint is a ``torch.save`` dict holding the format tag, the package
version, the full :class:`~napari_fcres.config.Config` (a plain mapping) and the model
weights, plus for resumable ones the optimizer, schedule and RNG states (tensors and plain
numbers), the data split and the metric history.  :func:`load_model` rebuilds the model
from the file alone.

Opening a checkpoint never runs code: files are read with ``torch.load(weights_only=True)``,
which builds only tensors and plain Python values, and everything written here is checked
to be just that (:func:`save_checkpoint`).  Checkpoints written before this rule held their
NumPy random state as NumPy arrays; they are read under ``weights_only=True`` too, with
NumPy's array and dtype constructors (and nothing else) allowed (:data:`LEGACY_NUMPY`).
A file that would need anything more is refused unread.

This module reads and writes single files; a run folder is resolved to its checkpoint
file by :mod:`napari_fcres.runs` (:func:`~napari_fcres.runs.checkpoint_file`).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import Config
from .errors import CheckpointError, FcresError
from .models import SegmentationModel, build_model

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
    a truncated one (at worst an orphaned ``.NAME.XXXX.tmp``).  The payload must hold only
    what ``torch.load(weights_only=True)`` reads back (:func:`plain_payload`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = plain_payload({"format": FORMAT, "format_version": FORMAT_VERSION,
                          "package_version": __version__, **payload})
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


#: Values a checkpoint may hold besides tensors: exact types only (a NumPy float is a
#: ``float`` subclass, but reading one back would need NumPy's unpickling code).
_PLAIN_TYPES = (str, int, float, bool, type(None))


def plain_payload(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as ``torch.load(weights_only=True)`` reads it back, or :class:`TypeError`.

    Tensors, dicts (``OrderedDict`` state dicts too), lists, tuples and plain Python values
    pass unchanged; NumPy scalars become Python numbers; anything else (a NumPy array, a
    path, an arbitrary object) is a programming error named by its place in the payload.
    """
    kind = type(value)
    if kind in _PLAIN_TYPES or isinstance(value, (torch.Tensor, torch.Size, torch.dtype,
                                                  torch.device)):
        return value
    if isinstance(value, np.generic) and type(value.item()) in _PLAIN_TYPES:
        return value.item()
    if isinstance(value, Mapping) and kind in (dict, OrderedDict):
        items = {}
        for key, item in value.items():
            if type(key) not in _PLAIN_TYPES:
                raise TypeError(f"{where} has a {type(key).__name__} key; checkpoints take "
                                "plain keys only")
            items[key] = plain_payload(item, f"{where}[{key!r}]")
        if all(items[k] is value[k] for k in items):
            return value
        out = kind(items)
        if hasattr(value, "_metadata"):  # a state dict's per-module versions
            out._metadata = value._metadata  # type: ignore[attr-defined]
        return out
    if kind in (list, tuple):
        items_ = [plain_payload(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items_, value)) else kind(items_)
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}; checkpoints hold only tensors "
        "and plain values (str, int, float, bool, None, dict, list, tuple), so that opening "
        "one never runs code"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint file; raise :class:`CheckpointError` if unusable.

    The file is read with ``weights_only=True``: nothing in it can run code.  A run folder
    is not accepted here; :func:`napari_fcres.runs.checkpoint_file` resolves one.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; name the file")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    data = _load_weights_only(raw, path)
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
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{path} has no config mapping; the file is damaged")
    data["path"] = str(path)
    return data


def _load_weights_only(raw: bytes, path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pre-rule file with NumPy's constructors allowed."""
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # needs more than tensors and plain values: a pre-rule checkpoint, or refused
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise _unreadable(path, exc) from None
    allowed = _legacy_numpy_allowed()
    try:
        with allowed:
            data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _culprit(str(exc))
        if culprit is None:
            raise _unreadable(path, exc) from None
        raise CheckpointError(
            f"{path} was refused unread: opening it would call {culprit}, and napari-fcres "
            "opens only files of tensors and plain values (README: What is safe to open)"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from None
    log.info("%s: a checkpoint from before the weights-only rule (NumPy random state), read "
             "with NumPy's array constructors allowed", path)
    return data


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    text = " ".join(str(exc).split())[:200]
    return CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated file?): "
                           f"{type(exc).__name__}: {text}")


#: What the weights-only unpickler says when a file asks for more than it allows.
_REFUSALS = (
    re.compile(r"GLOBAL ([\w.]+)"),
    re.compile(r"unrecognized function (\S+)"),
    re.compile(r"but got <class '([^']+)'>"),
    re.compile(r"allowlisted via `add_safe_globals` but got (\S+)"),
)


def _culprit(message: str) -> str | None:
    """The global a weights-only load refused, or None when the file was merely damaged."""
    for pattern in _REFUSALS:
        match = pattern.search(message)
        if match:
            return match.group(1).rstrip(".,")
    return None


#: NumPy names checkpoints written before the weights-only rule use (the random state as
#: an array): array and dtype reconstruction only, under both spellings of NumPy's core.
LEGACY_NUMPY = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                "numpy.ndarray", "numpy.dtype")


def _legacy_numpy_allowed() -> Any:
    """``torch.serialization.safe_globals`` for :data:`LEGACY_NUMPY` and numeric dtypes.

    Object, string and structured dtypes stay refused.  Torch older than 2.5 has no such
    allow-list: such files are then refused with a note to upgrade torch.
    """
    serialization = torch.serialization
    if not hasattr(serialization, "safe_globals"):
        raise CheckpointError(
            "this checkpoint predates napari-fcres' weights-only format; reading it safely "
            "needs torch >= 2.5 (pip install -U torch)"
        )
    core = getattr(np, "_core", None) or np.core
    funcs = {"_reconstruct": core.multiarray._reconstruct, "scalar": core.multiarray.scalar}
    numeric = sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}, key=str)
    named: list[Any] = [np.ndarray, np.dtype, *numeric]
    if torch.torch_version.TorchVersion(torch.__version__) >= (2, 6):
        named += [(funcs[name.rsplit(".", 1)[1]], name) for name in LEGACY_NUMPY[:4]]
    else:  # only the spelling of the NumPy installed
        named += list(funcs.values())
    return serialization.safe_globals(named)


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
