"""Choosing the compute device and the settings that go with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .errors import DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    """A device torch can use, with a human-readable name."""

    key: str  # "cpu", "mps", "cuda:0", ...
    name: str


def available_devices() -> list[DeviceInfo]:
    """Every device present: each CUDA GPU by name, Apple MPS, then the CPU."""
    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append(DeviceInfo(f"cuda:{i}", f"CUDA {i}: {torch.cuda.get_device_name(i)}"))
    if _mps_available():
        out.append(DeviceInfo("mps", "Apple MPS"))
    out.append(DeviceInfo("cpu", "CPU"))
    return out


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, or raise :class:`DeviceError`."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} requested but CUDA is not available "
                f"(torch {torch.__version__} build, no GPU visible); use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        return dev
    if name == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' requested but Apple MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def use_amp(device: torch.device) -> bool:
    """bf16 autocast pays only on CUDA (it is slower on CPU)."""
    return device.type == "cuda"


def use_channels_last_for_training(device: torch.device) -> bool:
    """channels_last helps CUDA training; on CPU it speeds inference, not training."""
    return device.type == "cuda"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
