"""The optimiser of a training run: RMSprop (the paper) or AdamW, with weight decay.

Weight decay applies to convolution kernels only, as Keras' kernel regularizers
did in the paper; biases and batch-norm parameters are never decayed.  With
``weight_decay_mode="coupled"`` the decay is an L2 term added to the gradient
(Keras' regularizers; with RMSprop its step is divided by the running gradient
RMS, so on layers whose gradients are tiny it dominates and drives the weights
to zero).  With ``"decoupled"`` the weights shrink by ``lr * weight_decay`` per
step, independent of the gradient scale (Loshchilov & Hutter's AdamW rule,
here also for RMSprop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .config import Config
from .errors import TrainingError


class DecoupledRMSprop(torch.optim.RMSprop):
    """RMSprop whose parameter groups may carry a ``decoupled_weight_decay``."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        for group in self.param_groups:
            wd = group.get("decoupled_weight_decay", 0.0)
            if wd:
                factor = 1.0 - group["lr"] * wd
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(factor)
        return super().step(closure)


def _split_decay(params: Iterable[nn.Parameter]) -> tuple[list, list]:
    """(kernels, the rest): only conv/linear kernels are decayed."""
    decay, keep = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim > 1 else keep).append(p)
    return decay, keep


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The optimiser ``cfg.train`` asks for, with the pre-processor/FC-ResNet decay split."""
    t = cfg.train
    seg_wd = t.weight_decay if t.weight_decay_fcresnet is None else t.weight_decay_fcresnet
    pre_params = model.preprocessor_parameters()  # type: ignore[operator]
    seg_params = model.segmentation_parameters()  # type: ignore[operator]
    decoupled = t.weight_decay_mode == "decoupled" or t.optimizer == "adamw"
    groups: list[dict] = []
    for params, wd in ((pre_params, t.weight_decay), (seg_params, seg_wd)):
        decay, keep = _split_decay(params)
        for ps, w in ((decay, wd), (keep, 0.0)):
            if not ps:
                continue
            if t.optimizer == "adamw":
                groups.append({"params": ps, "weight_decay": w})
            elif decoupled:
                groups.append({"params": ps, "weight_decay": 0.0, "decoupled_weight_decay": w})
            else:
                groups.append({"params": ps, "weight_decay": w})
    if not groups:
        raise TrainingError("nothing to train: every parameter is frozen")
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, eps=t.rmsprop_eps)
    return DecoupledRMSprop(groups, lr=t.lr, alpha=t.rmsprop_alpha, eps=t.rmsprop_eps)
