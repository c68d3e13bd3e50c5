"""Batch normalization that, at prediction, normalizes each image by its own statistics.

While training, :class:`ImageBatchNorm2d` is an ordinary batch normalization
(statistics of the batch of crops, running averages kept).  At prediction it
has two modes:

* ``"running"``: the running averages learned over training, the classical
  behaviour (and Keras', so the paper's);
* ``"image"``: the statistics of each image (each tile when a large image is
  tiled) in the batch, as in "prediction-time batch normalization"
  (Nado et al. 2020) and test-time BN adaptation (Schneider et al. 2020).
  Each image goes through the network standardized at every layer as a batch
  of training crops was, so a slice that is brighter or more contrasty than
  the training slices is not pushed off the learned operating point.
* ``"volume"``: the statistics of the whole stack being predicted, shared by all
  its slices (measured by :func:`napari_fcres.inference.predict` in a first pass
  over up to :data:`VOLUME_STAT_SLICES` evenly spaced slices).  A scan's slices
  are one acquisition whose content changes along the volume: a slice above the
  organ, or of air, keeps looking like background instead of being standardized
  into something that looks like tissue (a blank slice has no variance to divide
  by).  Between stacks it adapts like ``"image"``.
* ``"auto"`` (the default): ``"image"`` for the slices whose raw intensities differ
  from the stack's typical slice only in brightness and contrast (an EM stack),
  ``"volume"`` for every other slice (a scan, a blank slice); the rule is
  :func:`napari_fcres.norm_choice.own_statistics_slices`.

At prediction, the layers in ``"image"`` or ``"volume"`` mode normalize with the
statistics the caller shares through :class:`SharedImageStatistics`; a forward pass
outside such a context (a single tile with ``"volume"``) uses its batch's own
statistics, per image.

An image predicted in several tiles gets one set of statistics for all its
tiles (:class:`SharedImageStatistics`): a first pass over the tiles measures
every layer's mean and variance over the whole image, a second pass predicts
with them, so no tile seam comes from the normalization.

On ISBI 2012 the same trained weights score V_rand 0.867 with the running
averages and 0.968 with the image statistics (BENCHMARKS.md section 0b).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

NORM_STATS = ("auto", "image", "volume", "running")
#: the most slices a "volume" statistics pass reads (evenly spaced over the stack)
VOLUME_STAT_SLICES = 32


class _PredictionStatistics:
    """The prediction-time behaviour shared by the single-process and the synchronized layer."""

    norm_stats: str
    eps: float
    weight: torch.Tensor
    bias: torch.Tensor

    def _init_prediction_statistics(self, norm_stats: str) -> None:
        self.norm_stats = norm_stats
        # Set by SharedImageStatistics only (never saved): sums being collected over the
        # tiles of one image, and the statistics that image's tiles then share.
        self.tile_sums: list[torch.Tensor] | None = None
        self.shared_stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def _image_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tile_sums is not None:
            xd = x.detach().double()
            n = torch.full((1,), float(xd.shape[0] * xd.shape[2] * xd.shape[3]),
                           dtype=torch.float64, device=x.device)
            sums = [n, xd.sum(dim=(0, 2, 3)), xd.square().sum(dim=(0, 2, 3))]
            self.tile_sums = sums if not self.tile_sums else [
                a + b for a, b in zip(self.tile_sums, sums, strict=True)]
        if self.shared_stats is not None:
            mean, var = self.shared_stats
            # the statistics in the parameters' dtype: under bf16 autocast the input is bf16
            # and batch norm's mixed-precision kernels want every parameter in float32
            dtype = self.weight.dtype
            return F.batch_norm(x, mean.to(dtype), var.to(dtype), self.weight, self.bias,
                                False, 0.0, self.eps)
        if x.shape[2] * x.shape[3] == 1:
            # one pixel has no statistics of its own (the smallest input bioimage.io tests
            # reaches the deepest level at 1x1): use the running averages there
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True,
                               eps=self.eps)


class ImageBatchNorm2d(_PredictionStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters and buffers) with a choice of prediction statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, norm_stats: str = "image") -> None:
        super().__init__(num_features, eps=eps)
        self._init_prediction_statistics(norm_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.norm_stats == "running":
            return nn.BatchNorm2d.forward(self, x)
        return self._image_forward(x)


class ImageSyncBatchNorm(_PredictionStatistics, nn.SyncBatchNorm):
    """:class:`ImageBatchNorm2d` for multi-GPU training: statistics of the global batch."""

    def __init__(self, num_features: int, eps: float = 1e-5, norm_stats: str = "image") -> None:
        super().__init__(num_features, eps=eps)
        self._init_prediction_statistics(norm_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.norm_stats == "running":
            return nn.SyncBatchNorm.forward(self, x)
        return self._image_forward(x)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every batch normalization -> its synchronized form, prediction statistics kept."""
    out = module
    if isinstance(module, ImageBatchNorm2d):
        out = ImageSyncBatchNorm(module.num_features, module.eps, module.norm_stats)
        out.to(device=module.weight.device, dtype=module.weight.dtype)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out


def set_norm_stats(module: nn.Module, norm_stats: str) -> None:
    """Choose the prediction statistics of every :class:`ImageBatchNorm2d` in ``module``."""
    if norm_stats not in NORM_STATS:
        raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
    for m in module.modules():
        if isinstance(m, _PredictionStatistics):
            m.norm_stats = norm_stats


class SharedImageStatistics:
    """One set of batch-norm statistics for all the tiles of one image.

    ``with stats.collecting():`` run every tile once (each normalized by its own
    statistics meanwhile); every "image" layer sums its inputs.  ``with
    stats.shared():`` then normalizes every tile by the whole image's mean and
    variance at each layer.  Does nothing for a model without "image" layers.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules()
                       if isinstance(m, _PredictionStatistics) and m.norm_stats != "running"]
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __bool__(self) -> bool:
        return bool(self.layers)

    @property
    def per_volume(self) -> bool:
        """True when (some) slices share one set of statistics over the whole stack."""
        return self.mode in ("volume", "auto")

    @property
    def mode(self) -> str:
        """The model's prediction statistics: ``"auto"``, ``"image"`` or ``"volume"``."""
        return self.layers[0].norm_stats if self.layers else "running"

    @contextmanager
    def collecting(self) -> Iterator[None]:
        for m in self.layers:
            m.tile_sums = []
        try:
            yield
            self._stats = []
            for m in self.layers:
                if not m.tile_sums:
                    raise RuntimeError("no tile went through the model while collecting")
                n, s, ss = m.tile_sums
                mean = s / n
                self._stats.append((mean.float(), (ss / n - mean.square()).clamp_min(0).float()))
        finally:
            for m in self.layers:
                m.tile_sums = None

    @contextmanager
    def shared(self) -> Iterator[None]:
        if len(self._stats) != len(self.layers):
            raise RuntimeError("collect the statistics over the tiles first")
        for m, stats in zip(self.layers, self._stats, strict=True):
            m.shared_stats = stats
        try:
            yield
        finally:
            for m in self.layers:
                m.shared_stats = None
