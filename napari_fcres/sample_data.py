"""Sample data: a synthetic serial-section-TEM-like stack and the ISBI 2012 challenge data.

* :func:`synthetic_em_stack` makes a deterministic EM-like stack with its labels from our own
  code (no download, no third-party data): 255 = cell interior, 0 = membrane, like ISBI 2012.
* :func:`load_sample_stack` reads the copy shipped in ``<repo>/sample_data/`` (made by
  ``sample_data/make_sample_data.py``) or regenerates the identical stack.
* :func:`fetch_isbi2012` / :func:`load_isbi2012` give the ISBI 2012 "Segmentation of neuronal
  structures in EM stacks" data (Cardona et al. 2010; Arganda-Carreras et al. 2015), from a
  local folder when one is available, else downloaded once with pooch (sha256-checked) from the
  project's mirror.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .errors import FcresError, InputError

logger = logging.getLogger(__name__)

SAMPLE_SHAPE = (16, 256, 256)
SAMPLE_SEED = 0
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
SAMPLE_IMAGE_NAME = "synthetic_em_image.tif"
SAMPLE_LABELS_NAME = "synthetic_em_labels.tif"

#: Environment variable naming a folder that already holds the three ISBI 2012 TIFFs.
ISBI_DIR_ENV = "NAPARI_FCRES_ISBI_DIR"
#: Environment variable overriding the download base URL.
ISBI_URL_ENV = "NAPARI_FCRES_ISBI_URL"
#: The project's mirror of the ISBI 2012 files (zlib re-encoded TIFFs, official pixel values).
ISBI_DEFAULT_URL = "https://github.com/napari-fcres/isbi2012-data/releases/download/v1/"
#: sha256 of every file fetched from the mirror (module level so tests can patch it).
ISBI_REGISTRY: dict[str, str] = {
    "train-volume.tif": "sha256:f6b526356c4a8eff10939d05b893d09377cc38216489b930438de4fa260d8b51",
    "train-labels.tif": "sha256:ed192dc70a360c85e982baf9b6fc91d492fc5554eaa0d85b80d5d349a46f0470",
    "test-volume.tif": "sha256:44ca05e57cc211c225f88c3d40d6805986b78b0062aea3fd59fcc6bb7fa985dd",
}
#: Copy kept beside a development checkout (``<repo>/../shared/data/isbi2012``), if present.
SHARED_ISBI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"

_ISBI_KEYS = {
    "train-volume.tif": "train_image",
    "train-labels.tif": "train_labels",
    "test-volume.tif": "test_image",
}


# --------------------------------------------------------------------------------------------
# synthetic EM stack
# --------------------------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]
) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation (float32)."""
    field = ndi.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect"
    )
    std = float(field.std())
    return field / std if std > 0 else field


def _place_seeds(
    rng: np.random.Generator, height: int, width: int, margin: int, min_dist: float, n_target: int
) -> np.ndarray:
    """Random points in the padded frame, at least ``min_dist`` apart (dart throwing)."""
    lo = np.array([-margin, -margin], dtype=np.float64)
    hi = np.array([height + margin, width + margin], dtype=np.float64)
    points: list[np.ndarray] = []
    for _ in range(n_target * 30):
        p = lo + rng.random(2) * (hi - lo)
        if all(np.hypot(*(p - q)) >= min_dist for q in points):
            points.append(p)
            if len(points) >= n_target:
                break
    return np.array(points)


def synthetic_em_stack(
    shape: tuple[int, int, int] = (8, 256, 256), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Make a deterministic serial-section-TEM-like stack and its membrane labels.

    Cells are a weighted Voronoi tessellation of randomly placed seeds on a smoothly warped
    grid; seeds drift slowly between slices so neighbouring slices are correlated.  Cells are
    separated by dark membranes 2-5 px thick and hold textured cytoplasm, dark mitochondria-like
    blobs and vesicles.  The image is blurred, gets Poisson and Gaussian noise and a
    slice-to-slice drift of brightness and contrast.

    Returns ``(image, labels)``, both uint8 of ``shape`` (z, y, x); labels are 255 = cell
    interior (organelles included) and 0 = membrane, as in ISBI 2012.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape must be three positive sizes (z, y, x), got {shape!r}")
    nz, ny, nx = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    margin = 40

    # ---- cell seeds, sizes and drift ------------------------------------------------------
    mean_cell = 34.0  # px, typical cell diameter
    n_seeds = int(round((ny + 2 * margin) * (nx + 2 * margin) / mean_cell**2 * 1.15))
    seeds0 = _place_seeds(rng, ny, nx, margin, min_dist=mean_cell * 0.45, n_target=n_seeds)
    n_seeds = len(seeds0)
    weights = np.exp(rng.normal(0.0, 0.28, n_seeds))  # multiplicative weights: varied sizes
    velocity = rng.normal(0.0, 0.9, (n_seeds, 2))  # px per slice
    wobble = np.cumsum(rng.normal(0.0, 0.35, (nz, n_seeds, 2)), axis=0)
    cell_brightness = rng.normal(0.0, 1.0, n_seeds)
    dark_cells = rng.random(n_seeds) < 0.06

    # ---- smooth fields shared through z (warp, membrane thickness, texture) ---------------
    warp_amp = 7.0
    warp_y = _smooth_noise(rng, (nz, ny, nx), (3.0, 14.0, 14.0)) * warp_amp
    warp_x = _smooth_noise(rng, (nz, ny, nx), (3.0, 14.0, 14.0)) * warp_amp
    thickness = 1.5 + 0.4 * _smooth_noise(rng, (nz, ny, nx), (2.0, 10.0, 10.0))
    thickness = np.clip(thickness, 1.0, 2.5)  # half-thickness in px: membranes 2-5 px
    texture = 0.6 * _smooth_noise(rng, (nz, ny, nx), (0.5, 1.0, 1.0)) + 0.4 * _smooth_noise(
        rng, (nz, ny, nx), (1.0, 3.0, 3.0)
    )

    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)

    labels = np.empty((nz, ny, nx), dtype=np.uint8)
    clean = np.empty((nz, ny, nx), dtype=np.float32)

    # ---- organelles in 3-D: (z, y, x, radius y, radius x, angle, z half-extent, kind) -------
    n_mito = max(1, int(ny * nx / 2600))
    n_ves = max(1, int(ny * nx / 700))
    mito = np.column_stack(
        [
            rng.uniform(-1, nz, n_mito),
            rng.uniform(0, ny, n_mito),
            rng.uniform(0, nx, n_mito),
            rng.uniform(2.5, 4.5, n_mito),
            rng.uniform(5.0, 11.0, n_mito),
            rng.uniform(0, np.pi, n_mito),
            rng.uniform(1.0, 3.0, n_mito),
        ]
    )
    ves = np.column_stack(
        [
            rng.uniform(-1, nz, n_ves),
            rng.uniform(0, ny, n_ves),
            rng.uniform(0, nx, n_ves),
            rng.uniform(2.0, 3.5, n_ves),
            rng.uniform(0.5, 1.5, n_ves),
        ]
    )

    for z in range(nz):
        seeds = seeds0 + velocity * z + wobble[z]
        py = yy + warp_y[z]
        px = xx + warp_x[z]
        # weighted distances (pixels x seeds), two nearest per pixel
        d = np.sqrt(
            (py[..., None] - seeds[:, 0].astype(np.float32)) ** 2
            + (px[..., None] - seeds[:, 1].astype(np.float32)) ** 2
        )
        d /= weights.astype(np.float32)
        two = np.partition(d, 1, axis=-1)[..., :2]
        owner = np.argmin(d, axis=-1)
        boundary_dist = (two[..., 1] - two[..., 0]) * 0.5 * weights[owner].astype(np.float32)
        membrane = boundary_dist < thickness[z]
        interior = ~membrane
        labels[z] = np.where(membrane, 0, 255).astype(np.uint8)

        # cytoplasm: per-cell brightness + texture, darker near the membrane
        base = 0.66 + 0.045 * cell_brightness[owner]
        base = np.where(dark_cells[owner], base - 0.22, base)
        cyto = base + 0.05 * texture[z]
        halo = np.exp(-np.maximum(boundary_dist - thickness[z], 0.0) / 2.5).astype(np.float32)
        cyto -= 0.08 * halo
        img = np.where(membrane, 0.2 + 0.05 * texture[z], cyto).astype(np.float32)

        deep = interior & (boundary_dist > thickness[z] + 1.5)
        # mitochondria: dark elongated ellipses with a lighter striped inside
        for oz, oy, ox, ry, rx, ang, hz in mito:
            dz = (z - oz) / hz
            if abs(dz) >= 1.0:
                continue
            scale = np.sqrt(1.0 - dz * dz)
            ca, sa = np.cos(ang), np.sin(ang)
            y0, y1 = int(max(oy - rx - 2, 0)), int(min(oy + rx + 3, ny))
            x0, x1 = int(max(ox - rx - 2, 0)), int(min(ox + rx + 3, nx))
            if y0 >= y1 or x0 >= x1:
                continue
            sy, sx = yy[y0:y1, x0:x1] - oy, xx[y0:y1, x0:x1] - ox
            u = (ca * sx + sa * sy) / (rx * scale)
            v = (-sa * sx + ca * sy) / (ry * scale)
            r2 = u * u + v * v
            inside = (r2 < 1.0) & deep[y0:y1, x0:x1]
            edge = inside & (r2 > 0.55)
            stripes = 0.5 + 0.5 * np.cos(u * rx * 1.6)
            patch = img[y0:y1, x0:x1]
            patch[inside] = (0.36 + 0.08 * stripes)[inside]
            patch[edge] = 0.28
        # vesicles: small dark rings with a lighter core
        for oz, oy, ox, r, hz in ves:
            if abs(z - oz) >= hz:
                continue
            y0, y1 = int(max(oy - r - 2, 0)), int(min(oy + r + 3, ny))
            x0, x1 = int(max(ox - r - 2, 0)), int(min(ox + r + 3, nx))
            if y0 >= y1 or x0 >= x1:
                continue
            rr = np.hypot(yy[y0:y1, x0:x1] - oy, xx[y0:y1, x0:x1] - ox)
            inside = (rr < r) & deep[y0:y1, x0:x1]
            ring = inside & (rr > r - 1.2)
            patch = img[y0:y1, x0:x1]
            patch[inside] = 0.74
            patch[ring] = 0.3
        clean[z] = img

    # ---- optics and detector --------------------------------------------------------------
    clean = ndi.gaussian_filter(clean, (0.0, 1.0, 1.0))
    gain = 1.0 + np.cumsum(rng.normal(0.0, 0.025, nz))
    offset = np.cumsum(rng.normal(0.0, 0.015, nz))
    gy = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[:, None]
    gx = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, :]
    tilt = rng.normal(0.0, 0.03, (nz, 2))
    for z in range(nz):
        shading = 1.0 + tilt[z, 0] * gy + tilt[z, 1] * gx
        clean[z] = (clean[z] * gain[z] + offset[z]) * shading
    photons = 80.0
    noisy = rng.poisson(np.clip(clean, 0.0, None) * photons).astype(np.float32) / photons
    noisy += rng.normal(0.0, 0.025, noisy.shape).astype(np.float32)
    image = np.clip(np.round(noisy * 230.0), 0, 255).astype(np.uint8)
    return image, labels


def load_sample_stack() -> tuple[np.ndarray, np.ndarray]:
    """Return the shipped synthetic sample ``(image, labels)`` (16 x 256 x 256, uint8).

    Reads ``<repo>/sample_data/synthetic_em_{image,labels}.tif`` when present (a source
    checkout); otherwise (e.g. an installed wheel) regenerates the same deterministic stack.
    """
    image_path = SAMPLE_DIR / SAMPLE_IMAGE_NAME
    labels_path = SAMPLE_DIR / SAMPLE_LABELS_NAME
    if image_path.is_file() and labels_path.is_file():
        try:
            import tifffile

            image = tifffile.imread(image_path)
            labels = tifffile.imread(labels_path)
            if image.shape == labels.shape == SAMPLE_SHAPE:
                return image, labels
            logger.warning(
                "shipped sample has shape %s / %s; regenerating", image.shape, labels.shape
            )
        except Exception as exc:  # noqa: BLE001 - fall back to generating
            logger.warning("cannot read shipped sample data (%s); regenerating", exc)
    return synthetic_em_stack(shape=SAMPLE_SHAPE, seed=SAMPLE_SEED)


# --------------------------------------------------------------------------------------------
# ISBI 2012
# --------------------------------------------------------------------------------------------


def _complete_dir(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ISBI_REGISTRY)


def _local_paths(folder: Path) -> dict[str, Path]:
    return {name: folder / name for name in ISBI_REGISTRY}


def _require_dir(folder: Path, source: str) -> dict[str, Path]:
    if not _complete_dir(folder):
        missing = [n for n in ISBI_REGISTRY if not (folder / n).is_file()]
        raise InputError(
            f"{source} {str(folder)!r} lacks the ISBI 2012 file(s) {', '.join(missing)}; "
            f"it must hold {', '.join(ISBI_REGISTRY)}"
        )
    return _local_paths(folder)


def fetch_isbi2012(
    cache_dir: str | os.PathLike | None = None,
    local_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Return the paths of ``train-volume.tif``, ``train-labels.tif`` and ``test-volume.tif``.

    Looks, in order, at ``local_dir``, the folder named by ``$NAPARI_FCRES_ISBI_DIR`` and a copy
    beside a development checkout (``<repo>/../shared/data/isbi2012``); local files are used
    as they are.  Otherwise the files are downloaded once with pooch into ``cache_dir``
    (default: the OS cache folder of ``napari-fcres``) from the project's mirror (base URL
    overridable with ``$NAPARI_FCRES_ISBI_URL``) and checked against known sha256 hashes.
    """
    if local_dir is not None:
        return _require_dir(Path(local_dir), "local_dir")
    env_dir = os.environ.get(ISBI_DIR_ENV)
    if env_dir:
        return _require_dir(Path(env_dir), f"${ISBI_DIR_ENV}")
    if _complete_dir(SHARED_ISBI_DIR):
        logger.info("using the ISBI 2012 copy in %s", SHARED_ISBI_DIR)
        return _local_paths(SHARED_ISBI_DIR)
    return _download_isbi2012(cache_dir)


def _download_isbi2012(cache_dir: str | os.PathLike | None) -> dict[str, Path]:
    import pooch

    base_url = os.environ.get(ISBI_URL_ENV) or ISBI_DEFAULT_URL
    if not base_url.endswith("/"):
        base_url += "/"
    path = Path(cache_dir) if cache_dir is not None else Path(pooch.os_cache("napari-fcres"))
    path = path / "isbi2012"
    fetcher = pooch.create(path=path, base_url=base_url, registry=dict(ISBI_REGISTRY))
    out: dict[str, Path] = {}
    for name in ISBI_REGISTRY:
        try:
            out[name] = Path(fetcher.fetch(name, progressbar=False))
        except Exception as exc:  # noqa: BLE001 - network, HTTP and hash errors alike
            raise FcresError(
                f"could not download {name} from {base_url} into {path}: {exc}. "
                f"Download train-volume.tif, train-labels.tif and test-volume.tif of the ISBI "
                f"2012 challenge yourself and set {ISBI_DIR_ENV} to their folder (or pass "
                "local_dir)."
            ) from exc
    return out


def load_isbi2012(
    cache_dir: str | os.PathLike | None = None,
    local_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Load ISBI 2012 as arrays ``train_image``, ``train_labels`` and ``test_image``.

    See :func:`fetch_isbi2012` for where the files come from.
    """
    import tifffile

    paths = fetch_isbi2012(cache_dir=cache_dir, local_dir=local_dir)
    out: dict[str, np.ndarray] = {}
    for name, key in _ISBI_KEYS.items():
        try:
            out[key] = tifffile.imread(paths[name])
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot read ISBI 2012 file {str(paths[name])!r}: {exc}") from exc
    return out
