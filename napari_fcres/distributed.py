"""Multi-process training with PyTorch DistributedDataParallel (``torchrun``).

``torchrun --nproc_per_node N -m napari_fcres.cli train ...`` (or the ``fcres``
script) starts N ranks; :func:`init_from_env` reads ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``, joins the process group (NCCL on CUDA, gloo on the CPU) and
returns the :class:`DistContext` that :func:`napari_fcres.training.train` takes.

Conventions
    * ``train.batch_size`` is **per rank**: the global batch is
      ``batch_size * world_size`` and an epoch has correspondingly fewer steps
      (the learning rate is not rescaled).  Each rank draws its own crops from
      a sampler seeded ``seed + rank``.
    * The batch Dice of eq. (2) is computed over the **global** batch: the
      sums of every rank are all-reduced (differentiably) before the ratio, so
      DDP's gradient equals that of one process on the union of the ranks'
      crops.  (With plain per-rank Dice the ratio of sums would differ.)
    * Batch normalisation: on CUDA the models' BatchNorm layers become
      :class:`torch.nn.SyncBatchNorm` (statistics of the global batch).
      SyncBatchNorm does not run on the CPU, so gloo/CPU runs normalise each
      rank's batch on its own; only the BN-free ``unet`` architecture is then
      exactly equivalent to one process.
    * Validation runs on rank 0 only; its Dice is broadcast, so best epoch and
      early stopping are identical on every rank.  Stop requests and the time
      budget are agreed on (any rank stops -> all stop) every step.
    * Checkpoints are written by rank 0 only; a member's last checkpoint
      (:data:`napari_fcres.runs.LAST_NAME`) also holds every rank's
      random-number state, so ``--resume`` continues each rank's crop stream.
    * ``--ensemble-parallel``: member k trains on rank k % world_size alone
      (no DDP), one member per GPU at a time.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .device import resolve_device
from .errors import DeviceError, InputError

log = logging.getLogger(__name__)

__all__ = ["DistContext", "init_from_env", "env_world_size", "global_dice_loss",
           "global_bce_dice_loss"]


@dataclass
class DistContext:
    """Rank, world size and device of this process; a no-op for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None
    owns_group: bool = False
    sync_batchnorm: bool = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------- collectives
    def _flag_device(self) -> torch.device:
        return self.device if self.backend == "nccl" and self.device else torch.device("cpu")

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._flag_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_float(self, value: float, src: int = 0) -> float:
        """Rank ``src``'s value on every rank."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._flag_device())
        torch.distributed.broadcast(t, src)
        return float(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    # ---------------------------------------------------------------- model
    def wrap(self, model: nn.Module) -> nn.Module:
        """The DDP wrapper for the forward pass (the model itself for one process)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device is not None and self.device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[self.device.index],
                                           output_device=self.device.index)
        return DistributedDataParallel(model)

    def convert_batchnorm(self, model: nn.Module) -> nn.Module:
        """BatchNorm -> SyncBatchNorm where supported (CUDA); unchanged otherwise."""
        if not self.enabled or not self.sync_batchnorm:
            return model
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if not has_bn:
            return model
        if self.device is None or self.device.type != "cuda":
            log.warning(
                "SyncBatchNorm needs CUDA: batch-norm statistics are computed per rank on %s",
                self.device or "cpu",
            )
            return model
        from .models.norm import convert_sync_batchnorm

        return convert_sync_batchnorm(model)

    def loss(self, name: str) -> Callable[..., torch.Tensor]:
        """The training loss over the global batch."""
        from .losses import LOSSES

        if not self.enabled:
            return LOSSES[name]
        if name == "dice":
            return global_dice_loss
        if name == "bce_dice":
            return global_bce_dice_loss
        raise InputError(f"unknown loss {name!r}")

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks too."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce: backward sums the gradients of every rank."""
    return _AllReduceSum.apply(t)


def global_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Eq. (2) over the union of every rank's batch (same value on every rank).

    Backward through the all-reduce sums ``dL/dS`` of the ``world_size`` ranks
    and DDP then averages the parameter gradients, so the result is exactly
    the single-process gradient of the global batch.
    """
    o = torch.sigmoid(logits.float())
    y = target.float()
    if mask is not None:
        m = (mask > 0).float()  # annotated pixels; loss weights are the BCE's
        o, y = o * m, y * m
    sums = _all_reduce_sum(torch.stack([(o * y).sum(), o.sum() + y.sum()]))
    return -(2.0 * sums[0] + eps) / (sums[1] + eps)


def global_bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean BCE over the annotated pixels of the global batch (``mask``: 0 or the
    pixel's weight) plus the global Dice loss."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    if mask is not None:
        m = mask.float()
        total = torch.stack([(bce * m).sum(), m.sum().detach()])
    else:
        total = torch.stack([bce.sum(), torch.tensor(float(bce.numel()), device=bce.device)])
    total = _all_reduce_sum(total)
    return total[0] / total[1].clamp_min(1.0) + global_dice_loss(logits, target, mask)


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init_from_env(
    device: str = "auto", *, timeout_s: float = 1800.0, sync_batchnorm: bool = True
) -> DistContext:
    """Join the process group torchrun describes; a single-process context otherwise.

    ``device`` is the training device setting: CUDA ranks use ``cuda:LOCAL_RANK``
    and the NCCL backend, CPU ranks gloo.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext(device=resolve_device(device), sync_batchnorm=sync_batchnorm)
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise InputError(
            "WORLD_SIZE is set but RANK is missing or not a number; start with torchrun"
        ) from None
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(
                f"rank {rank} wants cuda:{local_rank} but only {torch.cuda.device_count()} GPU(s) "
                "are visible; use --nproc_per_node at most the GPU count"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise DeviceError(f"distributed training supports CUDA and CPU, not {dev.type}")
    owns = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        owns = True
    log.info("rank %d/%d (local %d) on %s with %s", rank, world, local_rank, dev, backend)
    return DistContext(rank, world, local_rank, backend, dev, owns, sync_batchnorm)
