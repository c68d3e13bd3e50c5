"""Random training crops with the paper's augmentation, done in one resampling.

Each crop is drawn straight from its whole slice through a sampling grid that
combines a random position, flips, rotation, shear and a UNet-style elastic
(cubic spline) warp, so rotated crops never show empty corners and the work is
one ``grid_sample`` per batch.  Images are interpolated bilinearly, labels and
masks by nearest neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .config import AugmentConfig


@dataclass
class SliceData:
    """Training slices as tensors: raw image, 0/1 target and valid mask, (Z, H, W).

    The mask is 0 where a pixel does not count and its loss weight elsewhere (1, or the
    separation weights of :mod:`napari_fcres.border_weights`).
    """

    image: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        # Crop centres: uniform for densely annotated slices, else on annotated pixels.
        self.valid_fraction = (self.mask > 0).flatten(1).float().mean(1)


class CropSampler:
    """Draws augmented batches of ``crop_size`` crops from training slices."""

    def __init__(
        self, data: SliceData, crop_size: int, augment: AugmentConfig, generator: torch.Generator
    ) -> None:
        self.data = data
        self.crop = crop_size
        self.aug = augment
        self.gen = generator
        _, self.h, self.w = data.image.shape
        self._valid_coords = [
            torch.nonzero(m > 0) if f < 0.5 else None
            for m, f in zip(data.mask, data.valid_fraction, strict=True)
        ]
        # Pick slices in proportion to how many annotated pixels they hold.
        self._slice_weights = (data.mask > 0).flatten(1).float().sum(1)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch ``(image, target, mask)``, each ``(B, 1, crop, crop)`` float32."""
        b, s, a = batch_size, self.crop, self.aug
        idx = torch.multinomial(self._slice_weights, b, replacement=True, generator=self.gen)
        centers = torch.empty(b, 2)
        half_h, half_w = (s - 1) / 2, (s - 1) / 2
        for i, z in enumerate(idx.tolist()):
            coords = self._valid_coords[z]
            if coords is not None and len(coords):
                k = int(torch.randint(len(coords), (1,), generator=self.gen))
                centers[i] = coords[k].float()
            else:
                centers[i, 0] = half_h + self._rand(1) * max(self.h - s, 0)
                centers[i, 1] = half_w + self._rand(1) * max(self.w - s, 0)
        grid = self._grid(b, centers)
        # Gather per-sample slices; sampling is from the whole slice with reflection.
        stack = torch.stack([self.data.image, self.data.target, self.data.mask], 1)[idx]
        img = F.grid_sample(
            stack[:, :1], grid, mode="bilinear", padding_mode="reflection", align_corners=True
        )
        lab = F.grid_sample(
            stack[:, 1:], grid, mode="nearest", padding_mode="reflection", align_corners=True
        )
        if a.intensity:
            gain = 1 + (self._rand(b, 1, 1, 1) * 2 - 1) * a.intensity
            std = img.flatten(1).std(1).view(b, 1, 1, 1)
            offset = (self._rand(b, 1, 1, 1) * 2 - 1) * a.intensity * std
            mean = img.flatten(1).mean(1).view(b, 1, 1, 1)
            img = (img - mean) * gain + mean + offset
        return img.contiguous(), lab[:, :1].contiguous(), lab[:, 1:].contiguous()

    def _grid(self, b: int, centers: torch.Tensor) -> torch.Tensor:
        """Sampling grid ``(B, S, S, 2)`` in normalized slice coordinates."""
        s, a = self.crop, self.aug
        r = torch.arange(s, dtype=torch.float32) - (s - 1) / 2
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        pts = torch.stack([yy, xx], -1).view(1, s * s, 2).expand(b, -1, -1)  # (B, N, [y, x])
        mats = torch.eye(2).repeat(b, 1, 1)
        if a.flips:
            fy = torch.where(self._rand(b) < 0.5, -1.0, 1.0)
            fx = torch.where(self._rand(b) < 0.5, -1.0, 1.0)
            mats = mats @ torch.diag_embed(torch.stack([fy, fx], -1))
        if a.shear > 0:
            sh = (self._rand(b) * 2 - 1) * a.shear
            shear = torch.zeros(b, 2, 2)
            shear[:, 0, 0] = torch.cos(sh)
            shear[:, 1, 0] = -torch.sin(sh)
            shear[:, 1, 1] = 1.0
            mats = shear @ mats
        if a.rotation > 0:
            th = (self._rand(b) * 2 - 1) * math.radians(a.rotation)
            c, si = torch.cos(th), torch.sin(th)
            rot = torch.stack([torch.stack([c, -si], -1), torch.stack([si, c], -1)], -2)
            mats = rot @ mats
        pts = pts @ mats.transpose(1, 2)
        if a.elastic and a.elastic_sigma > 0:
            g = max(2, a.elastic_grid)
            disp = torch.randn(b, 2, g, g, generator=self.gen) * a.elastic_sigma
            dense = F.interpolate(disp, size=(s, s), mode="bicubic", align_corners=True)
            pts = pts + dense.permute(0, 2, 3, 1).reshape(b, s * s, 2)
        pts = pts + centers.view(b, 1, 2)
        ny = pts[..., 0] / max(self.h - 1, 1) * 2 - 1
        nx = pts[..., 1] / max(self.w - 1, 1) * 2 - 1
        return torch.stack([nx, ny], -1).view(b, s, s, 2)
