"""The fully convolutional ResNet of Table II with the blocks of Fig. 2.

Reading of the table (see README "Architecture notes"):

* Blocks are pre-activation (BN -> ReLU -> conv).  Simple blocks hold two 3x3
  convolutions; bottleneck blocks 1x1 -> 3x3 -> 1x1 where the 1x1s reduce the
  width to ``width / bottleneck_ratio`` and restore it.
* The first block of each contracting stage downsamples (simple block: 2x2
  max-pooling; bottleneck: stride-2 first 1x1 conv), the first block of each
  expanding stage upsamples by repetition (nearest).  Table II's resolutions
  give four downsamplings (512 -> 32), so that is what is built.
* Short (residual) shortcuts are identity where shape allows, else a 1x1
  (strided) projection.  Long skips sum the output of each contracting stage
  into the output of the first (upsampling) block of the expanding stage at
  the same resolution, through a 1x1 projection where widths differ.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .norm import ImageBatchNorm2d


def _bn_relu_conv(in_ch: int, out_ch: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [
        ImageBatchNorm2d(in_ch),
        nn.ReLU(inplace=False),
        nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=k // 2, bias=False),
    ]


class _Shortcut(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        stride = 2 if mode == "strided" else 1
        self.proj = (
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            if in_ch != out_ch or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


class SimpleBlock(nn.Module):
    """Fig. 2(b): two BN-ReLU-3x3 conv; resample by max-pooling or repetition first."""

    def __init__(self, in_ch: int, out_ch: int, resample: str = "none", dropout: float = 0.0):
        super().__init__()
        self.resample = resample
        layers = _bn_relu_conv(in_ch, out_ch, 3)
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += _bn_relu_conv(out_ch, out_ch, 3)
        self.body = nn.Sequential(*layers)
        self.shortcut = _Shortcut(in_ch, out_ch, "plain")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            x = F.max_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.body(x) + self.shortcut(x)


class BottleneckBlock(nn.Module):
    """Fig. 2(c): BN-ReLU-1x1 (reduce), BN-ReLU-3x3, BN-ReLU-1x1 (restore)."""

    def __init__(
        self, in_ch: int, out_ch: int, resample: str = "none", ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.resample = resample
        mid = max(1, out_ch // ratio)
        stride = 2 if resample == "down" else 1
        layers = _bn_relu_conv(in_ch, mid, 1, stride=stride)
        layers += _bn_relu_conv(mid, mid, 3)
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += _bn_relu_conv(mid, out_ch, 1)
        self.body = nn.Sequential(*layers)
        self.shortcut = _Shortcut(in_ch, out_ch, "strided" if resample == "down" else "plain")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.body(x) + self.shortcut(x)


def _stage(
    in_ch: int, out_ch: int, blocks: int, resample: str, ratio: int, dropout: float
) -> nn.Sequential:
    mods = [BottleneckBlock(in_ch, out_ch, resample, ratio, dropout)]
    mods += [BottleneckBlock(out_ch, out_ch, "none", ratio, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(*mods)


class FCResNet(nn.Module):
    """Table II: conv, simple block, bottleneck stages, across, mirrored expanding path.

    ``forward`` returns logits (the sigmoid is applied by the caller).
    """

    def __init__(
        self,
        in_channels: int = 1,
        stem_width: int = 32,
        simple_width: int = 32,
        stage_widths: tuple[int, ...] = (128, 256, 512),
        stage_blocks: tuple[int, ...] = (3, 8, 10),
        across_width: int = 1024,
        across_blocks: int = 3,
        bottleneck_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(stage_widths) != len(stage_blocks):
            raise ValueError("stage_widths and stage_blocks must have the same length")
        r, p = bottleneck_ratio, dropout
        self.stem = nn.Conv2d(in_channels, stem_width, 3, padding=1)  # Down 1
        self.down_simple = SimpleBlock(stem_width, simple_width, "down", p)  # Down 2
        self.down_stages = nn.ModuleList()
        ch = simple_width
        for w, n in zip(stage_widths, stage_blocks, strict=True):  # Down 3..5
            self.down_stages.append(_stage(ch, w, n, "down", r, p))
            ch = w
        self.across = _stage(ch, across_width, across_blocks, "none", r, p)
        ch = across_width
        # Expanding path mirrors the contracting one: Up 1..3 are bottleneck stages
        # whose outputs match the resolutions of Down 4, Down 3 and Down 2.
        skip_widths = [simple_width, *stage_widths[:-1]]
        self.up_first = nn.ModuleList()
        self.up_rest = nn.ModuleList()
        self.skip_proj = nn.ModuleList()
        for w, n, skip_w in zip(
            reversed(stage_widths), reversed(stage_blocks), reversed(skip_widths), strict=True
        ):
            self.up_first.append(BottleneckBlock(ch, w, "up", r, p))
            self.skip_proj.append(_Shortcut(skip_w, w, "plain"))
            rest = [BottleneckBlock(w, w, "none", r, p) for _ in range(n - 1)]
            self.up_rest.append(nn.Sequential(*rest))
            ch = w
        self.up_simple = SimpleBlock(ch, simple_width, "up", p)  # Up 4
        self.stem_skip = _Shortcut(stem_width, simple_width, "plain")
        self.up_conv = nn.Sequential(  # Up 5
            ImageBatchNorm2d(simple_width),
            nn.ReLU(),
            nn.Conv2d(simple_width, stem_width, 3, padding=1),
        )
        self.classifier = nn.Sequential(
            ImageBatchNorm2d(stem_width), nn.ReLU(), nn.Conv2d(stem_width, 1, 1)
        )
        self.n_down = 1 + len(stage_widths)

    @property
    def size_divisor(self) -> int:
        return 2**self.n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        x = self.down_simple(stem)
        skips = [x]
        for stage in self.down_stages:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest stage feeds "across", not a long skip
        x = self.across(x)
        for first, proj, rest, skip in zip(
            self.up_first, self.skip_proj, self.up_rest, reversed(skips), strict=True
        ):
            x = first(x) + proj(skip)
            x = rest(x)
        x = self.up_simple(x) + self.stem_skip(stem)
        x = self.up_conv(x)
        return self.classifier(x)
