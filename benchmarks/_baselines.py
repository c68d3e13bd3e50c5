"""Baselines of ``benchmarks/isbi_accuracy.py`` that do not come from napari_fcres.

* :func:`smoothed_raw`: the floor, Gaussian-smoothed raw intensity as probability;
* :func:`train_random_forest` / :func:`predict_random_forest`: an ilastik-style pixel
  classifier (scikit-learn random forest on ilastik's standard filter bank);
* :func:`run_torch_em`: torch-em's ``UNet2d`` trained by torch-em's own trainer.

Each works on ``(Z, H, W)`` uint8 stacks with 255 = cell interior and returns float32
probabilities of the cell interior.  Only numpy and scipy are imported at module level;
scikit-learn, torch and torch_em are imported where they are used, so this module loads
under any interpreter.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger("isbi_accuracy.baselines")

#: ilastik's standard scales.
ILASTIK_SIGMAS: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5, 5.0)


# --------------------------------------------------------------------------- floor


def smoothed_raw(image: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Per-slice Gaussian smoothing, min-max rescaled to [0, 1] over the whole stack."""
    img = np.asarray(image, dtype=np.float32)
    out = np.stack([ndi.gaussian_filter(s, sigma) for s in img]).astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)


# --------------------------------------------------------------------------- ilastik features


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (larger, smaller) of the symmetric 2x2 field [[a, b], [b, c]]."""
    mean = 0.5 * (a + c)
    root = np.sqrt(0.25 * (a - c) ** 2 + b**2)
    return mean + root, mean - root


def ilastik_features(
    slice_2d: np.ndarray, sigmas: tuple[float, ...] = ILASTIK_SIGMAS
) -> np.ndarray:
    """ilastik's standard pixel features of one slice, shape ``(H, W, F)`` float32.

    Per scale: Gaussian smoothing, Laplacian of Gaussian, Gaussian gradient magnitude,
    difference of Gaussians (sigma vs 0.66 sigma), the two structure-tensor eigenvalues
    (inner scale sigma, outer 0.5 sigma) and the two Hessian-of-Gaussian eigenvalues;
    plus Gaussian smoothing at 0.3 (the raw intensity), as ilastik's default selection.
    """
    img = np.asarray(slice_2d, dtype=np.float32)
    feats = [ndi.gaussian_filter(img, 0.3)]
    for s in sigmas:
        feats.append(ndi.gaussian_filter(img, s))
        feats.append(ndi.gaussian_laplace(img, s))
        feats.append(ndi.gaussian_gradient_magnitude(img, s))
        feats.append(ndi.gaussian_filter(img, s) - ndi.gaussian_filter(img, 0.66 * s))
        gy = ndi.gaussian_filter(img, s, order=(1, 0))
        gx = ndi.gaussian_filter(img, s, order=(0, 1))
        outer = 0.5 * s
        st = _eig2(ndi.gaussian_filter(gy * gy, outer), ndi.gaussian_filter(gx * gy, outer),
                   ndi.gaussian_filter(gx * gx, outer))
        feats.extend(st)
        he = _eig2(ndi.gaussian_filter(img, s, order=(2, 0)),
                   ndi.gaussian_filter(img, s, order=(1, 1)),
                   ndi.gaussian_filter(img, s, order=(0, 2)))
        feats.extend(he)
    return np.stack(feats, axis=-1).astype(np.float32)


def _balanced_sample(
    fg: np.ndarray, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of up to ``n_samples`` pixels, half foreground, half background."""
    flat = fg.ravel()
    chosen = []
    for value in (True, False):
        where = np.flatnonzero(flat == value)
        k = min(len(where), n_samples // 2)
        chosen.append(rng.choice(where, size=k, replace=False))
    idx = np.sort(np.concatenate(chosen))
    return idx, flat[idx].astype(np.int8)


def train_random_forest(
    image: np.ndarray,
    labels: np.ndarray,
    budget_s: float,
    n_samples: int = 200_000,
    n_estimators: int = 100,
    seed: int = 0,
    foreground_value: int = 255,
) -> tuple[Any, dict[str, Any]]:
    """Fit a random forest on a balanced pixel sample of the training slices.

    Trees are added in chunks (``warm_start``) until ``n_estimators`` or until the
    wall-clock ``budget_s`` (feature computation included) is used up.
    """
    from sklearn.ensemble import RandomForestClassifier

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    fg = np.asarray(labels) == foreground_value
    idx, y = _balanced_sample(fg, n_samples, rng)
    per_slice = fg[0].size
    xs = []
    for z in range(image.shape[0]):
        lo, hi = np.searchsorted(idx, [z * per_slice, (z + 1) * per_slice])
        if hi > lo:
            f = ilastik_features(image[z])
            xs.append(f.reshape(-1, f.shape[-1])[idx[lo:hi] - z * per_slice])
    x = np.concatenate(xs)
    feature_s = time.perf_counter() - start
    log.info("random forest: %d samples x %d features in %.1f s", *x.shape, feature_s)
    rf = RandomForestClassifier(n_estimators=0, n_jobs=1, random_state=seed, warm_start=True)
    chunk = max(1, n_estimators // 10)
    while rf.n_estimators < n_estimators:
        if rf.n_estimators and time.perf_counter() - start >= budget_s:
            log.info("random forest: budget reached after %d trees", rf.n_estimators)
            break
        rf.set_params(n_estimators=min(n_estimators, rf.n_estimators + chunk))
        rf.fit(x, y)
    info = {
        "train_seconds": time.perf_counter() - start,
        "feature_seconds": feature_s,
        "trees": int(rf.n_estimators),
        "n_samples": int(len(y)),
        "n_features": int(x.shape[1]),
    }
    return rf, info


def predict_random_forest(rf: Any, image: np.ndarray) -> np.ndarray:
    """Foreground probability of every pixel of a ``(Z, H, W)`` stack."""
    col = list(rf.classes_).index(1)
    out = np.zeros(image.shape, dtype=np.float32)
    for z in range(image.shape[0]):
        f = ilastik_features(image[z])
        out[z] = rf.predict_proba(f.reshape(-1, f.shape[-1]))[:, col].reshape(image.shape[1:])
    return out


# --------------------------------------------------------------------------- torch-em


def import_torch_em() -> Any:
    """Import torch_em; works around a torchvision whose compiled ops cannot load.

    torch_em only needs torchvision's pure-Python parts (``transforms``, ``utils``).
    A CUDA torchvision wheel next to a CPU torch fails in ``_meta_registrations``;
    then that one module is replaced by an empty one and the import retried.
    """
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        log.warning("torchvision does not import (%s); loading it without its C++ ops", exc)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations"
        )
    import torch_em

    return torch_em


class _NoProgress:
    """A silent stand-in for tqdm, which torch-em's trainer drives."""

    total = 0

    def update(self, n: int = 1) -> None:  # noqa: D102
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        pass


class _OutOfTime(Exception):
    """Raised by the budgeted trainer between epochs once the budget is used."""


def _budget_trainer_class(base: type) -> type:
    """``base`` (torch-em's DefaultTrainer) with a wall-clock deadline."""

    class BudgetTrainer(base):  # type: ignore[misc, valid-type]
        deadline = math.inf

        def _out_of_time(self) -> bool:
            return time.perf_counter() >= self.deadline

        def _end_epoch_if_late(self) -> None:
            if self._out_of_time():
                self.max_iteration = self._iteration + 1  # the loop breaks after this step

        def _backprop(self, loss: Any) -> None:
            super()._backprop(loss)
            self._end_epoch_if_late()

        def _backprop_mixed(self, loss: Any) -> None:
            super()._backprop_mixed(loss)
            self._end_epoch_if_late()

        def _train_epoch_impl(self, progress: Any, forward_context: Any, backprop: Any) -> float:
            if self._iteration > 0 and self._out_of_time():
                raise _OutOfTime
            return super()._train_epoch_impl(progress, forward_context, backprop)

    return BudgetTrainer


def _dihedral_mean(model: Any, x: Any, tta: bool) -> Any:
    """``model(x)``, or with ``tta`` the mean over the 8 flips/rotations of ``x`` (N, C, H, W)
    mapped back, with ``napari_fcres.inference``'s own transforms."""
    from napari_fcres.config import TTA_PASSES
    from napari_fcres.inference import _dihedral, _dihedral_inverse

    if not tta:
        return model(x)
    return sum(_dihedral_inverse(model(_dihedral(x, k)), k) for k in range(TTA_PASSES)) / TTA_PASSES


def run_torch_em(
    train_image: np.ndarray,
    train_labels: np.ndarray,
    test_image: np.ndarray,
    run_dir: Path,
    budget_s: float,
    seed: int = 0,
    device: str = "cpu",
    patch: int = 256,
    batch_size: int = 4,
    val_fraction: float = 0.2,
    foreground_value: int = 255,
    tta: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train torch-em's UNet2d with torch-em's trainer for ``budget_s``; predict the test stack.

    Data go through torch-em's own loaders (an HDF5 file per split, ``ndim=2``,
    patches of ``(1, patch, patch)``, torch-em's default augmentations and per-patch
    standardization); the trainer is ``default_segmentation_trainer`` (AdamW,
    ReduceLROnPlateau, DiceLoss as loss and metric), stopped at the budget.  torch-em
    would ``torch.compile`` the model by default; that is switched off here, as for
    every other method (on a CPU, compiling eats minutes of the budget).  The best
    checkpoint by validation metric predicts whole standardized test slices; with ``tta``
    it averages the 8 flips and rotations of each slice, as ``napari_fcres`` does.
    """
    import h5py
    import torch

    torch_em = import_torch_em()
    from torch_em.model import UNet2d
    from torch_em.trainer import DefaultTrainer
    from torch_em.transform.raw import standardize

    from napari_fcres.training import split_slices

    torch.manual_seed(seed)
    np.random.seed(seed)
    n = train_image.shape[0]
    train_idx, val_idx = split_slices(list(range(n)), val_fraction, seed)
    if not val_idx:
        val_idx = train_idx
    target = (np.asarray(train_labels) == foreground_value).astype(np.float32)
    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torch_em_data_") as tmp:
        paths = {}
        for split, idx in (("train", train_idx), ("val", val_idx)):
            paths[split] = str(Path(tmp) / f"{split}.h5")
            with h5py.File(paths[split], "w") as f:
                f.create_dataset("raw", data=np.asarray(train_image)[idx])
                f.create_dataset("labels", data=target[idx])
        per_slice = max(1, (train_image.shape[1] * train_image.shape[2]) // patch**2)
        loaders = {
            split: torch_em.default_segmentation_loader(
                paths[split], "raw", paths[split], "labels", batch_size=batch_size,
                patch_shape=(1, patch, patch), ndim=2, is_seg_dataset=True,
                n_samples=max(batch_size, len(idx) * per_slice), shuffle=split == "train",
                num_workers=0, pin_memory=False,
            )
            for split, idx in (("train", train_idx), ("val", val_idx))
        }
        model = UNet2d(in_channels=1, out_channels=1, depth=4, initial_features=16,
                       final_activation="Sigmoid")
        trainer = torch_em.default_segmentation_trainer(
            name="torch-em-unet", model=model, train_loader=loaders["train"],
            val_loader=loaders["val"], device=device, logger=None, save_root=str(run_dir),
            trainer_class=_budget_trainer_class(DefaultTrainer), compile_model=False,
        )
        start = time.perf_counter()
        trainer.deadline = start + budget_s
        try:
            trainer.fit(iterations=10**9, progress=_NoProgress())
        except _OutOfTime:
            log.info("torch-em: budget reached at epoch %d", trainer._epoch)
        train_s = time.perf_counter() - start
    best = Path(trainer.checkpoint_folder) / "best.pt"
    # torch-em's own checkpoint, written just above by this process into run_dir (never a
    # file from elsewhere); torch-em saves its trainer's init data (loader and model
    # arguments, which may be classes) and reads it back with weights_only=False itself
    state = torch.load(best, map_location=device, weights_only=False)
    prefix = "_orig_mod."  # a compiled model's keys
    model.load_state_dict({k.removeprefix(prefix): v for k, v in state["model_state"].items()})
    model.eval()
    t0 = time.perf_counter()
    probs = np.zeros(test_image.shape, dtype=np.float32)
    h, w = test_image.shape[1:]
    ph, pw = (-h) % 16, (-w) % 16
    with torch.no_grad():
        for z in range(test_image.shape[0]):
            x = standardize(np.asarray(test_image[z], dtype=np.float32))
            x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
            y = _dihedral_mean(model, torch.from_numpy(x)[None, None].to(device), tta)
            probs[z] = y[0, 0, :h, :w].float().cpu().numpy()
    info = {
        "train_seconds": train_s,
        "predict_seconds": time.perf_counter() - t0,
        "steps": int(trainer._iteration),
        "epochs": int(trainer._epoch),
        "best_epoch": int(state.get("epoch", 0)),
        "best_val_dice_loss": float(state.get("best_metric", float("nan"))),
        "train_slices": [int(i) for i in train_idx],
        "val_slices": [int(i) for i in val_idx],
        "checkpoint": str(best),
        "tta": tta,
        "recipe": "torch_em.default_segmentation_trainer: AdamW lr 1e-3, ReduceLROnPlateau, "
                  "DiceLoss; UNet2d(1, 1, depth=4, initial_features=16, Sigmoid); "
                  f"batch {batch_size} of {patch}x{patch} patches, default augmentations",
    }
    return probs, info
