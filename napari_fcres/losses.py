"""Losses: the batch Dice loss of eq. (2) and an optional BCE + Dice."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Eq. (2): ``-2 sum(o y) / (sum o + sum y)`` over the whole batch (minimum -1).

    ``mask`` (same shape) restricts the sums to annotated pixels (``mask > 0``), so
    partially annotated stacks and ignore labels never count; its values do not weigh.
    """
    o = torch.sigmoid(logits.float())
    y = target.float()
    if mask is not None:
        m = (mask > 0).float()
        o, y = o * m, y * m
    return -(2.0 * (o * y).sum() + eps) / (o.sum() + y.sum() + eps)


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy plus the Dice loss.

    ``mask``: 0 where a pixel does not count, else the weight of its cross-entropy (1, or
    the separation weights of :mod:`napari_fcres.border_weights`); the cross-entropy is
    the weighted mean, the Dice term counts every annotated pixel alike.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    if mask is not None:
        m = mask.float()
        bce = (bce * m).sum() / m.sum().clamp_min(1.0)
    else:
        bce = bce.mean()
    return bce + dice_loss(logits, target, mask)


LOSSES = {"dice": dice_loss, "bce_dice": bce_dice_loss}
