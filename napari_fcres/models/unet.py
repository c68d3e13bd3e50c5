"""The UNet of Table I (the learned pre-processor) and the plain UNet baseline."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .norm import ImageBatchNorm2d

INPUT_NORMS = ("none", "batch", "instance")
BLOCK_NORMS = ("none", "batch")


def _double_conv(in_ch: int, out_ch: int, block_norm: str = "none") -> nn.Sequential:
    """Two 3x3 convolutions, each followed by ReLU (Table I "conv 3x3, repeat 2").

    ``block_norm="batch"`` puts a batch normalization between each convolution and its ReLU.
    """
    layers: list[nn.Module] = []
    for cin in (in_ch, out_ch):
        layers.append(nn.Conv2d(cin, out_ch, 3, padding=1))
        if block_norm == "batch":
            layers.append(ImageBatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _merge_conv(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    """The linear convolution after "repeat + merge".

    ``kernel=2`` is Table I as written: a 2x2 convolution with Keras "same"
    padding (one extra row/column at the end), which shifts the map by half a
    pixel at every level and so is not symmetric under flips.  ``kernel=3`` is
    the symmetric variant (zero padding on every side).
    """
    if kernel == 2:
        return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(in_ch, out_ch, 2))
    if kernel % 2 == 1:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2))
    raise ValueError(f"merge_kernel must be 2 (Table I) or odd, got {kernel}")


class InputNorm(nn.Module):
    """The network's first layer: a learned standardization of the raw input.

    ``mode="batch"`` (the default) is a one-channel batch normalization: while
    training it standardizes each batch of crops and learns the running mean and
    variance of the raw intensities, plus a gain and an offset; at prediction it
    applies those learned numbers, so a tile, a whole slice and a block of a
    larger-than-memory volume all get the same transform.  ``mode="instance"``
    standardizes every image (every *tile* when predicting) by its own
    statistics instead: indifferent to per-image brightness, but the prediction
    then depends on the tiling.  Either way it is part of the trained network
    (saved in every checkpoint and exported with it): the raw image goes in with
    no hand-made pre-processing, whatever its storage range (uint8, uint16, HU).
    """

    def __init__(self, mode: str = "batch", eps: float = 1e-5) -> None:
        super().__init__()
        self.mode = mode
        self.norm = (nn.InstanceNorm2d(1, affine=True, eps=eps) if mode == "instance"
                     else ImageBatchNorm2d(1, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


class UNet(nn.Module):
    """UNet as in Table I.

    Contracting path: two 3x3 conv + ReLU per level, 2x2 max-pooling.  Expanding
    path: nearest ("repeat") upsampling, concatenation with the skipped maps, a
    linear ``merge_kernel`` convolution (2x2 in Table I), two 3x3 conv + ReLU.
    The last layer is a convolution to one channel with no activation (3x3 for
    the pre-processor, 1x1 logits for the plain UNet baseline).  ``input_norm``
    ("batch" or "instance") puts :class:`InputNorm` in front.  ``block_norm="batch"``
    normalizes after every 3x3 convolution (the plain UNet baseline: Table I has no
    normalization, which the pre-processor can do without because the FC-ResNet's batch
    normalizations follow it, but a UNet alone under RMSprop blows its logits up to
    all-foreground within a few steps).  Inputs must have sides
    divisible by ``2**depth``; :class:`~napari_fcres.models.SegmentationModel`
    pads for it.
    """

    def __init__(
        self, base: int = 16, depth: int = 4, out_kernel: int = 3, merge_kernel: int = 2,
        input_norm: str = "none", block_norm: str = "none",
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if block_norm not in BLOCK_NORMS:
            raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
        widths = [base * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.input_norm = InputNorm(input_norm) if input_norm != "none" else None
        self.down = nn.ModuleList()
        in_ch = 1
        for w in widths[:-1]:
            self.down.append(_double_conv(in_ch, w, block_norm))
            in_ch = w
        self.pool = nn.MaxPool2d(2)
        self.across = _double_conv(widths[-2], widths[-1], block_norm)
        self.merge_convs = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            below, here = widths[level + 1], widths[level]
            self.merge_convs.append(_merge_conv(below + here, here, merge_kernel))
            self.up.append(_double_conv(here, here, block_norm))
        self.out = nn.Conv2d(widths[0], 1, out_kernel, padding=out_kernel // 2)

    @property
    def size_divisor(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            x = self.input_norm(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.across(x)
        for merge, block, skip in zip(self.merge_convs, self.up, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = merge(torch.cat([x, skip], dim=1))
            x = block(x)
        return self.out(x)
