"""Model registry: the paper's pipeline and the ablation baselines.

Every model is a :class:`SegmentationModel`: it takes raw intensities of shape
``(N, 1, H, W)`` (any H, W: it pads internally and crops back) and returns
logits; :meth:`SegmentationModel.forward_with_normalized` also returns the
image the segmentation network actually sees (the learned pre-processor's
output, or the standardized / rescaled input for the baselines).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ARCHITECTURES, ModelConfig, UNetConfig
from ..errors import InputError
from .fcresnet import FCResNet
from .init import INIT_SCHEMES, init_weights
from .norm import NORM_STATS, set_norm_stats
from .unet import UNet

__all__ = [
    "FCResNet",
    "UNet",
    "SegmentationModel",
    "Pipeline",
    "NormalizedFCResNet",
    "PlainUNet",
    "build_model",
    "count_parameters",
    "count_conv_layers",
    "init_weights",
    "INIT_SCHEMES",
]


class SegmentationModel(nn.Module):
    """Base class: padding to the size divisor, logits plus normalized image."""

    size_divisor: int = 1

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward_with_normalized(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the normalized input, both cropped back to ``x``'s size."""
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        logits, normalized = self._forward(x)
        logits = logits[..., :h, :w]
        if normalized is not None:
            normalized = normalized[..., :h, :w]
        return logits, normalized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_normalized(x)[0]

    def segmentation_parameters(self) -> list[nn.Parameter]:
        """Parameters of the segmentation network proper (frozen by --freeze-fcresnet)."""
        return list(self.parameters())

    def preprocessor_parameters(self) -> list[nn.Parameter]:
        return []


class Pipeline(SegmentationModel):
    """Learned FCN pre-processor (Table I) followed by the FC-ResNet (Table II)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        p, f = cfg.preprocessor, cfg.fcresnet
        self.preprocessor = _unet(p)
        self.fcresnet = FCResNet(
            1, f.stem_width, f.simple_width, tuple(f.stage_widths), tuple(f.stage_blocks),
            f.across_width, f.across_blocks, f.bottleneck_ratio, f.dropout,
        )
        self.size_divisor = max(self.preprocessor.size_divisor, self.fcresnet.size_divisor)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normalized = self.preprocessor(x)
        return self.fcresnet(normalized), normalized

    def segmentation_parameters(self) -> list[nn.Parameter]:
        return list(self.fcresnet.parameters())

    def preprocessor_parameters(self) -> list[nn.Parameter]:
        return list(self.preprocessor.parameters())


class NormalizedFCResNet(SegmentationModel):
    """FC-ResNet after a hand-made normalization fitted on the training data.

    ``mode="standardize"`` is the paper's ref. [17] ((x - mean) / std);
    ``mode="rescale"`` maps the training range [min, max] to [0, 1];
    ``mode="raw"`` feeds the raw intensities unchanged (the ablation with no
    pre-processing at all).  The two statistics are buffers, so they travel
    inside every checkpoint.
    """

    def __init__(self, cfg: ModelConfig, mode: str) -> None:
        super().__init__()
        f = cfg.fcresnet
        self.mode = mode
        self.fcresnet = FCResNet(
            1, f.stem_width, f.simple_width, tuple(f.stage_widths), tuple(f.stage_blocks),
            f.across_width, f.across_blocks, f.bottleneck_ratio, f.dropout,
        )
        self.register_buffer("shift", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor(1.0))
        self.size_divisor = self.fcresnet.size_divisor

    @torch.no_grad()
    def fit_normalization(self, values: torch.Tensor) -> None:
        """Set the statistics from training intensities (any shape)."""
        if self.mode == "raw":
            return
        v = values.double().flatten()
        if self.mode == "standardize":
            shift, scale = v.mean(), v.std()
        else:
            shift, scale = v.min(), v.max() - v.min()
        self.shift.fill_(float(shift))
        self.scale.fill_(float(scale) if float(scale) > 0 else 1.0)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normalized = (x - self.shift) / self.scale
        return self.fcresnet(normalized), normalized


class PlainUNet(SegmentationModel):
    """The UNet baseline (ref. [38]) on raw input, width configurable."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        u = cfg.unet
        self.unet = _unet(u)
        self.size_divisor = self.unet.size_divisor

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.unet(x), None


def _unet(u: UNetConfig) -> UNet:
    return UNet(u.base, u.depth, out_kernel=u.out_kernel, merge_kernel=u.merge_kernel,
                input_norm=u.input_norm, block_norm=u.block_norm)


def build_model(cfg: ModelConfig) -> SegmentationModel:
    """Build the network a model config describes, initialised by ``cfg.init``."""
    if cfg.init not in INIT_SCHEMES:
        raise InputError(f"unknown init {cfg.init!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if cfg.norm_stats not in NORM_STATS:
        raise InputError(
            f"unknown norm_stats {cfg.norm_stats!r}; choose one of {', '.join(NORM_STATS)}"
        )
    arch = cfg.architecture
    model: SegmentationModel
    if arch == "auto":
        raise InputError("architecture 'auto' is chosen from the annotated slices when a "
                         "training run starts; name a network to build one: "
                         + ", ".join(ARCHITECTURES))
    if arch == "pipeline":
        model = Pipeline(cfg)
    elif arch == "fcresnet-standardize":
        model = NormalizedFCResNet(cfg, "standardize")
    elif arch == "fcresnet-rescale":
        model = NormalizedFCResNet(cfg, "rescale")
    elif arch == "fcresnet-raw":
        model = NormalizedFCResNet(cfg, "raw")
    elif arch == "unet":
        model = PlainUNet(cfg)
    else:
        raise InputError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    init_weights(model, cfg.init)
    set_norm_stats(model, cfg.norm_stats)
    return model


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_conv_layers(module: nn.Module, include_projections: bool = True) -> int:
    """Number of convolution layers; long/short-skip 1x1 projections optional."""
    n = 0
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            is_proj = name.endswith(".proj") or ".proj" in name
            if include_projections or not is_proj:
                n += 1
    return n
