"""A synthetic CT/MRI-like scan whose content changes along the volume.

EM stacks have nearly the same content in every slice; a scan does not: the organ's
cross-section shrinks to nothing at its top and bottom, and the slices beyond it hold
only air.  :func:`synthetic_scan` makes such a volume with raw intensities in an MRI
(0..2000) or CT (-1000..1500 HU) range, a target structure to segment inside a body,
smooth intensity inhomogeneity and noise, so the prediction-time batch-norm statistics
(:mod:`napari_fcres.models.norm`) can be checked on the slices where per-slice
statistics fail (a blank slice standardized by its own statistics looks like tissue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

#: (air, body, target) mean intensities and noise std of each modality's raw range
MODALITIES: dict[str, tuple[float, float, float, float]] = {
    "mri": (0.0, 700.0, 1300.0, 40.0),  # T1-like, 0..2000
    "ct": (-1000.0, 40.0, 180.0, 20.0),  # HU: air, soft tissue, contrast-enhanced organ
}


@dataclass
class SyntheticScan:
    """Image (float32 raw intensities), binary labels (uint8, 1 = target) and spacing (mm)."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    body_slices: tuple[int, int]  # first and last slice that holds any body voxel
    target_slices: tuple[int, int]  # first and last slice that holds any target voxel


def _ellipsoid(shape: tuple[int, int, int], center: np.ndarray, radii: np.ndarray,
               warp: np.ndarray | None = None) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    r = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 \
        + ((xx - center[2]) / radii[2]) ** 2
    if warp is not None:
        r = r + warp
    return r <= 1.0


def synthetic_scan(
    shape: tuple[int, int, int] = (48, 128, 128), modality: str = "mri", seed: int = 0,
) -> SyntheticScan:
    """A scan of ``shape`` (Z, Y, X): a body with a lobed target inside, air around them.

    Along Z the body covers the middle ~70 % of the slices and the target ~55 %, both
    shrinking to nothing at their ends; the remaining slices are air (noise only).
    """
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    z, h, w = shape
    if z < 8 or h < 32 or w < 32:
        raise InputError(f"a synthetic scan needs at least 8 x 32 x 32 voxels, got {shape}")
    rng = np.random.default_rng(seed)
    air, body_i, target_i, noise = MODALITIES[modality]
    center = np.array([(z - 1) / 2, (h - 1) / 2, (w - 1) / 2], dtype=np.float32)
    body = _ellipsoid(shape, center, np.array([0.35 * z, 0.45 * h, 0.40 * w]))
    lobes = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                sigma=(z / 8, h / 10, w / 10))
    lobes *= 0.35 / (np.abs(lobes).max() + 1e-6)
    target = _ellipsoid(shape, center + np.array([0, 0.04 * h, 0]),
                        np.array([0.28 * z, 0.28 * h, 0.25 * w]), warp=lobes) & body
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=1.5)
    texture *= 1.0 / (texture.std() + 1e-6)
    image = np.full(shape, air, dtype=np.float32)
    image[body] = body_i
    image[target] = target_i
    span = abs(target_i - body_i)
    image[body] += 0.15 * span * texture[body]
    # a smooth multiplicative inhomogeneity of the tissue (bias field), +-15 %
    bias = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                               sigma=(z / 3, h / 3, w / 3))
    bias *= 0.15 / (np.abs(bias).max() + 1e-6)
    image[body] = air + (image[body] - air) * (1.0 + bias[body])
    image = ndi.gaussian_filter(image, sigma=(0, 0.7, 0.7))
    image += rng.normal(0.0, noise, shape).astype(np.float32)
    if modality == "mri":
        image = np.abs(image)  # magnitude images: Rician-like, never negative
    zs_body = np.flatnonzero(body.any(axis=(1, 2)))
    zs_target = np.flatnonzero(target.any(axis=(1, 2)))
    return SyntheticScan(
        image.astype(np.float32), target.astype(np.uint8), (2.0, 1.0, 1.0),
        (int(zs_body[0]), int(zs_body[-1])), (int(zs_target[0]), int(zs_target[-1])),
    )
