"""An exponential moving average of the weights a run trains (``train.ema_decay``).

A short CPU run stops while RMSprop still moves the weights by its full learning rate;
the average of the last ~``1 / (1 - decay)`` steps is smoother than any one of them.
With an average, validation scores it and the best checkpoint stores it (the weights a
prediction uses); the trained weights themselves go on training and into the last
checkpoint, beside the average, so a resumed run continues both.

The average is :class:`torch.optim.swa_utils.AveragedModel` over parameters and buffers
(batch-norm running statistics included).  Its decay starts low and rises to
``ema_decay`` (``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, as TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so the first hundred steps, far from
any good weights, fade out quickly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warm_decay(decay: float, n_averaged: int) -> float:
    """The decay of update ``n_averaged + 1``: ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


class WeightAverage:
    """The moving average of one model's weights and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie between 0 and 1, got {decay}")
        self.decay = decay
        self.updates = 0  # counted here too: reading AveragedModel's on a GPU would sync

        def ema(averaged: list[torch.Tensor], current: list[torch.Tensor],
                _n_averaged: torch.Tensor) -> None:
            # called once per (device, dtype) group of tensors
            if not averaged[0].is_floating_point():  # num_batches_tracked: follow the model
                torch._foreach_copy_(averaged, current)
                return
            torch._foreach_lerp_(averaged, current, 1.0 - warm_decay(decay, self.updates))

        self.averaged = AveragedModel(model, multi_avg_fn=ema, use_buffers=True)
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def model(self) -> nn.Module:
        """The averaged network (the same class as the trained one)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (after each optimiser step);
        the first update copies them."""
        self.averaged.update_parameters(model)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        """The averaged weights and the update count, on the CPU (for the last checkpoint)."""
        return {"model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "updates": torch.tensor(self.updates)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model_state"])
        self.updates = int(state["updates"])
        self.averaged.n_averaged.fill_(self.updates)
