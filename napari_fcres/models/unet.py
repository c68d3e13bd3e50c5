"""The UNet of Table I (the learned pre-processor) and the plain UNet baseline."""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by ReLU (Table I "conv 3x3, repeat 2")."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """UNet as in Table I.

    Contracting path: two 3x3 conv + ReLU per level, 2x2 max-pooling.  Expanding
    path: nearest ("repeat") upsampling, concatenation with the skipped maps, a
    2x2 convolution without non-linearity, two 3x3 conv + ReLU.  The last layer
    is a convolution to one channel with no activation (3x3 for the
    pre-processor, 1x1 logits for the plain UNet baseline).  Inputs must have
    sides divisible by ``2**depth``; :class:`~napari_fcres.models.SegmentationModel`
    pads for it.
    """

    def __init__(self, base: int = 16, depth: int = 4, out_kernel: int = 3) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList()
        in_ch = 1
        for w in widths[:-1]:
            self.down.append(_double_conv(in_ch, w))
            in_ch = w
        self.pool = nn.MaxPool2d(2)
        self.across = _double_conv(widths[-2], widths[-1])
        self.merge_convs = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            below, here = widths[level + 1], widths[level]
            # Table I: "conv 2x2" after the merge, no non-linearity.
            # Keras "same" padding of an even kernel: one extra row/column at the end.
            self.merge_convs.append(
                nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(below + here, here, 2))
            )
            self.up.append(_double_conv(here, here))
        self.out = nn.Conv2d(widths[0], 1, out_kernel, padding=out_kernel // 2)

    @property
    def size_divisor(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.across(x)
        for merge, block, skip in zip(self.merge_convs, self.up, reversed(skips), strict=True):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = merge(torch.cat([x, skip], dim=1))
            x = block(x)
        return self.out(x)
