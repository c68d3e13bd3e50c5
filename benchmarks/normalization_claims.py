"""The paper's claim: a learned normalization instead of hand-made pre-processing.

Three parts (Drozdzal et al., section IV and Fig. 6), on ISBI 2012 (train slices
0-19, test slices 20-29, interior = 255):

``range``
    The same training with the stack stored as uint8, as uint16 (x * 257) and as
    float32 on a CT-like range (x * 16 - 1024), applied to train and test slices.
    Trains each architecture of ``--archs`` (default ``pipeline``, ``fcresnet-raw``
    and the hand-made reference ``fcresnet-standardize``) on each storage form and
    scores V_rand, V_info, Dice and pixel error on the test slices, with the
    train-time validation Dice and whether the loss diverged (NaN).
``shift``
    uint8 models (from ``range``, or with ``--models-from DIR`` the run folders
    ``DIR/main/<method>/``) on test slices under an acquisition shift: gamma 0.5
    and 2, contrast x0.5 around the mean, brightness +40, Gaussian noise
    (sigma 15).  Which front end degrades least?
``fig6``
    Fig. 6 on ISBI: histograms of membrane (label 0) and interior (255)
    intensities at the input and after the learned pre-processor, with fitted
    normal curves, and their separability (d' and histogram overlap).

Trainings run ``--jobs`` side by side in worker processes, each with
``torch.set_num_threads(1)`` and ``OMP_NUM_THREADS=1``: every training gets one
CPU core for the same wall-clock budget.

    python benchmarks/normalization_claims.py range --budget-minutes 5
    python benchmarks/normalization_claims.py shift --models-from benchmarks/results/isbi_accuracy
    python benchmarks/normalization_claims.py fig6 --plot-dir benchmarks
    python benchmarks/normalization_claims.py --quick all --out /tmp/norm   # smoke run

Results: ``results.json`` and ``results.md`` under ``--out`` (parts run later
are merged into them), PNG plots under ``--plot-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("normalization_claims")

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # a source checkout without installing; _common
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
from _common import (  # noqa: E402
    ISBI_FOREGROUND,
    init_one_core_worker,
    load_isbi,
    load_sample,
    local_isbi_dir,
    thread_env,
)

FOREGROUND = ISBI_FOREGROUND
TRAIN_SLICES = range(0, 20)
TEST_SLICES = range(20, 30)
DEFAULT_ARCHS = ("pipeline", "fcresnet-raw", "fcresnet-standardize")
STORAGE_FORMS: dict[str, str] = {
    "uint8": "uint8 as stored (0..255)",
    "uint16": "uint16, x * 257 (0..65535)",
    "float32": "float32, x * 16 - 1024 (CT-like, -1024..3056)",
}
SHIFTS: dict[str, str] = {
    "identity": "unchanged",
    "gamma0.5": "gamma 0.5 on [0, 1]-scaled intensities",
    "gamma2": "gamma 2 on [0, 1]-scaled intensities",
    "contrast0.5": "contrast x0.5 around the mean",
    "brightness+40": "brightness +40 grey levels (clipped)",
    "noise15": "Gaussian noise, sigma 15 grey levels (clipped)",
}
#: ``--models-from DIR`` reads ``DIR/main/<method>/`` for these methods.
MODELS_FROM_METHODS = ("ours", "ours-dice", "fcresnet-standardize", "fcresnet-rescale", "unet")
SCORE_KEYS = ("v_rand", "v_info", "dice", "pixel_error")
MAX_HIST_SAMPLES = 200_000
MEMBRANE_COLOR = "#e8743b"
INTERIOR_COLOR = "#3ba7e8"


# ----------------------------------------------------------------------------- data


def load_data(kind: str, quick: bool) -> dict[str, Any]:
    """Train / test slices of ISBI 2012 (or the synthetic sample stack) and where they came from.

    ``kind``: ``auto`` (ISBI when available locally, in quick mode else the synthetic
    stack), ``isbi`` (downloads if needed) or ``synthetic``.  Quick mode keeps four
    training and two test slices, cropped to 128 x 128.
    """
    local = local_isbi_dir()
    if kind == "isbi" or (kind == "auto" and (local or not quick)):
        image, labels = load_isbi()
        train, test, source = list(TRAIN_SLICES), list(TEST_SLICES), "ISBI 2012 train-volume"
    else:
        if kind == "auto":
            log.warning("ISBI 2012 not found locally; quick mode uses the synthetic sample stack")
        image, labels = load_sample()
        train, test, source = list(range(0, 10)), list(range(10, 16)), "synthetic sample stack"
    if quick:
        train, test = train[:4], test[:2]
    out = {
        "train_image": np.asarray(image[train]), "train_labels": np.asarray(labels[train]),
        "test_image": np.asarray(image[test]), "test_labels": np.asarray(labels[test]),
        "source": source, "train_slices": _span(train), "test_slices": _span(test),
    }
    if quick:
        for key in ("train_image", "train_labels", "test_image", "test_labels"):
            out[key] = np.ascontiguousarray(out[key][:, :128, :128])
    return out


def _span(idx: Sequence[int]) -> str:
    return f"{idx[0]}-{idx[-1]}"


def to_storage(image: np.ndarray, form: str) -> np.ndarray:
    """The uint8 stack in one of :data:`STORAGE_FORMS`."""
    x = np.asarray(image)
    if form == "uint8":
        return x.astype(np.uint8)
    if form == "uint16":
        return x.astype(np.uint16) * np.uint16(257)
    if form == "float32":
        return x.astype(np.float32) * 16.0 - 1024.0
    raise ValueError(f"unknown storage form {form!r}")


def apply_shift(image: np.ndarray, shift: str, seed: int = 0) -> np.ndarray:
    """One of :data:`SHIFTS` applied to a uint8 stack; the result stays uint8."""
    x = np.asarray(image, dtype=np.float64)
    if shift == "identity":
        out = x
    elif shift.startswith("gamma"):
        g = float(shift[len("gamma"):])
        lo, hi = float(x.min()), float(x.max())
        span = hi - lo if hi > lo else 1.0
        out = ((x - lo) / span) ** g * span + lo
    elif shift == "contrast0.5":
        m = x.mean()
        out = m + 0.5 * (x - m)
    elif shift == "brightness+40":
        out = x + 40.0
    elif shift == "noise15":
        out = x + np.random.default_rng(seed).normal(0.0, 15.0, size=x.shape)
    else:
        raise ValueError(f"unknown shift {shift!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- workers


def _score(models: Any, image: np.ndarray, labels: np.ndarray, device: str) -> dict[str, Any]:
    """V_rand, V_info, Dice and pixel error of the models on a stack."""
    from napari_fcres.inference import predict
    from napari_fcres.metrics import segmentation_scores

    prob = predict(models, image, device=device).probabilities
    if not np.isfinite(prob).all():
        return {"error": "non-finite probabilities"}
    s = segmentation_scores(prob, labels, foreground_value=FOREGROUND)
    keep = SCORE_KEYS + ("v_rand_threshold", "v_info_threshold")
    return {k: float(s[k]) for k in keep}


def train_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one architecture on one storage form and score it on the test slices."""
    from napari_fcres.checkpoint import read_checkpoint
    from napari_fcres.config import preset_config
    from napari_fcres.errors import FcresError, TrainingError
    from napari_fcres.inference import load_models
    from napari_fcres.training import replace_train, run_training

    name = f"{spec['storage']}/{spec['arch']}"
    run_dir = Path(spec["run_dir"])
    data = np.load(spec["data"])
    cfg = preset_config(spec["preset"], spec["arch"])
    cfg = replace_train(cfg, max_minutes=spec["budget_minutes"], seed=spec["seed"],
                        device=spec["device"], **spec["train_overrides"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                            foreground_value=FOREGROUND))
    out: dict[str, Any] = {"storage": spec["storage"], "arch": spec["arch"],
                           "run_dir": str(run_dir), "diverged": False, "error": None}
    log.info("training %s (%s, %.2f min)", name, spec["preset"], spec["budget_minutes"])
    if run_dir.exists():  # this benchmark's own output of an earlier call: train anew
        log.info("removing the earlier run in %s", run_dir)
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    try:
        run_training(cfg, data["train_image"], data["train_labels"], run_dir)
    except TrainingError as exc:
        out["diverged"] = "loss became" in str(exc)
        out["error"] = str(exc)
        log.warning("%s: %s", name, exc)
    except FcresError as exc:
        out["error"] = str(exc)
        log.warning("%s failed: %s", name, exc)
    out["train_wall_s"] = round(time.perf_counter() - start, 1)
    last = run_dir / "member_00" / "last.pt"
    if last.exists():
        ck = read_checkpoint(last)
        hist = ck.get("history", [])
        losses = [h["train_loss"] for h in hist]
        out.update(
            best_val_dice=float(ck["best_val_dice"]) if ck["best_val_dice"] >= 0 else None,
            best_epoch=int(ck["best_epoch"]), epochs=int(ck["epoch"]), steps=int(ck["step"]),
            last_train_loss=float(losses[-1]) if losses else None,
            nan_loss=out["diverged"] or any(not math.isfinite(v) for v in losses),
        )
    best = run_dir / "member_00" / "best.pt"
    if best.exists() and out.get("best_val_dice") is not None:
        try:
            models = load_models(best, device=spec["device"])
            out["scores"] = _score(models, data["test_image"], data["test_labels"],
                                   spec["device"])
        except (FcresError, RuntimeError, ValueError) as exc:
            out["scores"] = {"error": str(exc)}
    else:
        out["scores"] = {"error": "no validated checkpoint"}
    log.info("done %s: val dice %s, test %s", name, out.get("best_val_dice"), out["scores"])
    return out


def shift_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Score one front end on the test slices under every acquisition shift."""
    from napari_fcres.inference import load_models

    data = np.load(spec["data"])
    models = load_models(spec["folder"], device=spec["device"])
    out: dict[str, Any] = {"method": spec["method"], "folder": spec["folder"],
                           "n_models": len(models), "shifts": {}}
    for shift in spec["shifts"]:
        shifted = apply_shift(data["test_image"], shift, seed=spec["seed"])
        try:
            out["shifts"][shift] = _score(models, shifted, data["test_labels"], spec["device"])
        except (RuntimeError, ValueError) as exc:
            out["shifts"][shift] = {"error": str(exc)}
        log.info("%s %s: %s", spec["method"], shift, out["shifts"][shift])
    return out


def run_pool(
    fn: Callable[[dict[str, Any]], dict[str, Any]], specs: list[dict[str, Any]], jobs: int
) -> list[dict[str, Any]]:
    """Run ``fn`` over ``specs`` in ``jobs`` single-threaded worker processes."""
    import multiprocessing as mp

    os.environ.update(thread_env(1, base={}))  # inherited by the spawned workers
    results: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx,
                             initializer=init_one_core_worker,
                             initargs=(log.getEffectiveLevel(),)) as ex:
        futures = {ex.submit(fn, s): s for s in specs}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except Exception as exc:  # noqa: BLE001 - a crashed worker is a result too
                spec = futures[fut]
                log.error("task %s failed: %s", spec.get("name"), exc)
                results.append({**{k: spec.get(k) for k in ("storage", "arch", "method")},
                                "error": f"{type(exc).__name__}: {exc}", "scores": {}})
    return results


# ----------------------------------------------------------------------------- parts


def train_overrides(quick: bool) -> dict[str, Any]:
    """Training settings besides the budget (quick: a couple of tiny steps)."""
    if quick:
        return {"crop_size": 64, "batch_size": 2, "epochs": 1, "steps_per_epoch": 2,
                "val_fraction": 0.25, "inference_tile": 128}
    return {}


def part_range(args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train every architecture on every storage form; score on the test slices."""
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    specs = []
    for form in STORAGE_FORMS:
        path = data_dir / f"{form}.npz"
        np.savez(path, train_image=to_storage(data["train_image"], form),
                 train_labels=data["train_labels"],
                 test_image=to_storage(data["test_image"], form), test_labels=data["test_labels"])
        for arch in args.archs:
            specs.append({
                "name": f"{form}/{arch}", "storage": form, "arch": arch, "data": str(path),
                "run_dir": str(out / "range" / form / arch), "preset": args.preset,
                "budget_minutes": args.budget_minutes, "seed": args.seed,
                "device": args.device,
                "train_overrides": {**train_overrides(args.quick), "loss": args.loss},
            })
    log.info("range: %d trainings, %d side by side, each one CPU thread "
             "(torch.set_num_threads(1), OMP_NUM_THREADS=1), %.2f min wall budget each",
             len(specs), args.jobs, args.budget_minutes)
    runs: dict[str, dict[str, Any]] = {form: {} for form in STORAGE_FORMS}
    for r in run_pool(train_task, specs, args.jobs):
        runs[r["storage"]][r["arch"]] = r
    for form in STORAGE_FORMS:
        (data_dir / f"{form}.npz").unlink(missing_ok=True)
    return {"storage_forms": STORAGE_FORMS, "archs": list(args.archs), "runs": runs}


def shift_sources(args: argparse.Namespace, out: Path) -> dict[str, str]:
    """Front end -> model folder, from ``--models-from`` or the ``range`` part's uint8 runs."""
    found: dict[str, str] = {}
    if args.models_from:
        base = Path(args.models_from) / "main"
        for method in MODELS_FROM_METHODS:
            folder = base / method
            if any(folder.glob("**/best.pt")):
                found[method] = str(folder)
            else:
                log.info("shift: no checkpoint in %s; skipping %s", folder, method)
    else:
        for arch in args.archs:
            folder = out / "range" / "uint8" / arch
            if any(folder.glob("**/best.pt")):
                found[arch] = str(folder)
            else:
                log.info("shift: no uint8 %s run in %s; skipping (run 'range' first)", arch,
                         folder)
    return found


def part_shift(args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Score uint8 models on test slices under acquisition shifts."""
    sources = shift_sources(args, out)
    if not sources:
        log.error("shift: no models found; run 'range' first or pass --models-from")
        return {"error": "no models found", "results": {}}
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "shift_uint8.npz"
    np.savez(path, test_image=data["test_image"].astype(np.uint8),
             test_labels=data["test_labels"])
    specs = [{"name": m, "method": m, "folder": f, "data": str(path), "shifts": list(SHIFTS),
              "seed": args.seed, "device": args.device} for m, f in sources.items()]
    log.info("shift: %d front ends x %d conditions, %d side by side (one thread each)",
             len(specs), len(SHIFTS), args.jobs)
    results = {r["method"]: r for r in run_pool(shift_task, specs, args.jobs) if r.get("method")}
    path.unlink(missing_ok=True)
    drops = {}
    for method, r in results.items():
        base = r.get("shifts", {}).get("identity", {})
        for s in r.get("shifts", {}).values():
            for key in ("v_rand", "dice"):
                if key in s and key in base:
                    s[f"{key}_drop"] = base[key] - s[key]
        vals = [s["v_rand_drop"] for k, s in r.get("shifts", {}).items()
                if k != "identity" and "v_rand_drop" in s]
        if vals:
            drops[method] = {"mean_v_rand_drop": float(np.mean(vals)),
                             "max_v_rand_drop": float(np.max(vals))}
    least = min(drops, key=lambda m: drops[m]["mean_v_rand_drop"]) if drops else None
    return {"source": args.models_from or str(out / "range" / "uint8"), "shifts": SHIFTS,
            "results": results, "drops": drops, "least_degraded": least}


def gauss_stats(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Normal fits of two classes, d' = |mu1 - mu0| / sqrt((s0^2 + s1^2) / 2), histogram overlap.

    The overlap is the shared area of the two density histograms (100 common bins over
    the 0.1-99.9 percentile range of both): 1 = identical, 0 = disjoint.  Both measures
    are unchanged by an affine map of the intensities.
    """
    fa = (float(a.mean()), float(a.std())) if a.size else (math.nan, math.nan)
    fb = (float(b.mean()), float(b.std())) if b.size else (math.nan, math.nan)
    pooled = math.sqrt((fa[1] ** 2 + fb[1] ** 2) / 2.0)
    dprime = abs(fb[0] - fa[0]) / pooled if pooled > 0 else math.nan
    both = np.concatenate([a, b])
    lo, hi = np.percentile(both, (0.1, 99.9)) if both.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 101)
    ha, _ = np.histogram(np.clip(a, lo, hi), bins=bins, density=True)
    hb, _ = np.histogram(np.clip(b, lo, hi), bins=bins, density=True)
    overlap = float(np.minimum(ha, hb).sum() * (bins[1] - bins[0]))
    return {"membrane": {"mean": fa[0], "std": fa[1]}, "interior": {"mean": fb[0], "std": fb[1]},
            "d_prime": float(dprime), "overlap": overlap}


def fig6_checkpoint(args: argparse.Namespace, out: Path) -> Path | None:
    """The pipeline checkpoint to inspect: --checkpoint, the range run or --models-from."""
    candidates = []
    if args.checkpoint:
        candidates.append(Path(args.checkpoint))
    candidates.append(out / "range" / "uint8" / "pipeline")
    if args.models_from:
        candidates.append(Path(args.models_from) / "main" / "ours")
    for c in candidates:
        if c.is_file():
            return c
        found = sorted(c.glob("**/best.pt")) if c.is_dir() else []
        if found:
            return found[0]
        if c == candidates[0] and args.checkpoint:
            log.error("fig6: no checkpoint at %s", c)
            return None
    return None


def part_fig6(args: argparse.Namespace, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fig. 6: class histograms at the input and after the pre-processor, with normal fits."""
    from napari_fcres.inference import load_models, predict

    ckpt = fig6_checkpoint(args, out)
    if ckpt is None:
        log.error("fig6: no pipeline checkpoint; run 'range' first or pass --checkpoint")
        return {"error": "no pipeline checkpoint"}
    models = load_models(ckpt, device=args.device)
    image = data["test_image"]
    res = predict(models, image, device=args.device, return_normalized=True)
    if res.normalized is None:
        return {"checkpoint": str(ckpt), "error": "the model has no pre-processor output"}
    labels = data["test_labels"]
    membrane, interior = labels == 0, labels == FOREGROUND
    rng = np.random.default_rng(args.seed)

    def sample(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        v = values[mask].astype(np.float32)
        return rng.choice(v, MAX_HIST_SAMPLES, replace=False) if v.size > MAX_HIST_SAMPLES else v

    raw = np.asarray(image, dtype=np.float32)
    panels = {
        "input": (sample(raw, membrane), sample(raw, interior)),
        "after_preprocessor": (sample(res.normalized, membrane),
                               sample(res.normalized, interior)),
    }
    stats = {k: gauss_stats(*v) for k, v in panels.items()}
    stats["input"]["n_pixels"] = {"membrane": int(membrane.sum()), "interior": int(interior.sum())}
    plot_dir = Path(args.plot_dir) if args.plot_dir else out
    png = plot_dir / "normalization_fig6.png"
    _plot_fig6(panels, stats, png, f"{data['source']}, slices {data['test_slices']}")
    return {"checkpoint": str(ckpt), "slices": data["test_slices"], **stats, "plot": str(png)}


# ----------------------------------------------------------------------------- plots


def _plot_fig6(panels: dict[str, tuple[np.ndarray, np.ndarray]], stats: dict[str, Any],
               png: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    titles = {"input": "input of the pipeline (raw)",
              "after_preprocessor": "after the learned pre-processor"}
    for ax, (key, (mem, inn)) in zip(axes, panels.items()):
        st = stats[key]
        both = np.concatenate([mem, inn])
        lo, hi = np.percentile(both, (0.1, 99.9)) if both.size else (0.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 80)
        xs = np.linspace(lo, hi, 400)
        for cls, vals, color in (("membrane", mem, MEMBRANE_COLOR),
                                 ("interior", inn, INTERIOR_COLOR)):
            mu, sd = st[cls]["mean"], st[cls]["std"]
            ax.hist(np.clip(vals, lo, hi), bins=bins, density=True, alpha=0.45, color=color,
                    label=f"{cls}: mu={mu:.3g}, sigma={sd:.3g}")
            if sd > 0:
                pdf = np.exp(-0.5 * ((xs - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
                ax.plot(xs, pdf, "--", color="red" if cls == "interior" else "darkred", lw=1.2)
        ax.set_title(f"{titles[key]}\nd'={st['d_prime']:.2f}, overlap={st['overlap']:.2f}",
                     fontsize=9)
        ax.set_xlabel("intensity")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.suptitle(f"Fig. 6 on {where} (dashed: fitted normal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    log.info("wrote %s", png)


def _plot_bars(groups: dict[str, dict[str, float]], title: str, ylabel: str, png: Path) -> None:
    """Grouped bars: outer key = group on the x axis, inner key = bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    bars = list(dict.fromkeys(b for g in groups.values() for b in g))
    if not names or not bars:
        return
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names) * len(bars) / 2), 3.6))
    w = 0.8 / len(bars)
    for i, b in enumerate(bars):
        ys = [groups[n].get(b, math.nan) for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(bars) - 1) / 2) * w, ys, w, label=b)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(len(bars), 4))
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    log.info("wrote %s", png)


# ----------------------------------------------------------------------------- report


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def report_range(r: dict[str, Any]) -> str:
    """Markdown tables of the range part."""
    forms = list(r["storage_forms"])
    archs = r["archs"]
    runs = r["runs"]
    out = ["## Raw-range robustness", "",
           "Storage forms: " + "; ".join(f"`{k}` = {v}" for k, v in r["storage_forms"].items())
           + ". Test slices, no pre-processing outside the model.", ""]
    names = {"v_rand": "V_rand", "v_info": "V_info", "dice": "Dice",
             "pixel_error": "pixel error"}
    for key, label in names.items():
        rows = []
        for arch in archs:
            vals = [runs.get(f, {}).get(arch, {}).get("scores", {}).get(key) for f in forms]
            ok = [v for v in vals if v is not None]
            spread = max(ok) - min(ok) if len(ok) == len(forms) else None
            rows.append([arch] + [_fmt(v) for v in vals] + [_fmt(spread)])
        out += [f"**{label}** (test)", "", _table(["architecture"] + forms + ["max - min"], rows),
                ""]
    rows = []
    for arch in archs:
        cells = []
        for f in forms:
            x = runs.get(f, {}).get(arch, {})
            state = "DIVERGED (NaN loss)" if x.get("diverged") else (
                "error" if x.get("error") else "ok")
            cells.append(f"{_fmt(x.get('best_val_dice'))} ({x.get('steps', '-')} steps, "
                         f"{state})")
        rows.append([arch] + cells)
    out += ["**Train-time validation Dice** (best; steps taken; status)", "",
            _table(["architecture"] + forms, rows), ""]
    errors = [f"- {f}/{a}: {x['error']}" for f in forms for a, x in runs.get(f, {}).items()
              if x.get("error")]
    if errors:
        out += ["Errors:", ""] + errors + [""]
    return "\n".join(out)


def report_shift(r: dict[str, Any]) -> str:
    """Markdown tables of the shift part."""
    out = ["## Acquisition shift", ""]
    if not r.get("results"):
        return "\n".join(out + [f"No results: {r.get('error', 'no models')}.", ""])
    out += [f"Models: `{r['source']}` (trained on the original uint8 slices). Shifts: "
            + "; ".join(f"`{k}` = {v}" for k, v in r["shifts"].items()) + ".", ""]
    shifts = list(r["shifts"])
    for key, label in (("v_rand", "V_rand"), ("dice", "Dice")):
        rows = []
        for method, res in r["results"].items():
            cells = []
            for s in shifts:
                x = res.get("shifts", {}).get(s, {})
                if key not in x:
                    cells.append("-")
                elif s == "identity":
                    cells.append(_fmt(x[key]))
                else:
                    cells.append(f"{_fmt(x[key])} ({0.0 - x[f'{key}_drop']:+.3f})")
            rows.append([method] + cells)
        out += [f"**{label}** (change from identity in brackets)", "",
                _table(["front end"] + shifts, rows), ""]
    rows = [[m, _fmt(d["mean_v_rand_drop"]), _fmt(d["max_v_rand_drop"])]
            for m, d in r["drops"].items()]
    out += [_table(["front end", "mean V_rand drop", "worst V_rand drop"], rows), ""]
    if r.get("least_degraded"):
        out += [f"Least degraded (mean V_rand drop over the shifts): **{r['least_degraded']}**. "
                "A front end that is poor at identity can look robust: read the drop together "
                "with the identity column.", ""]
    return "\n".join(out)


def report_fig6(r: dict[str, Any]) -> str:
    """Markdown table of the Fig. 6 part."""
    out = ["## Fig. 6: class intensity distributions", ""]
    if "error" in r:
        return "\n".join(out + [f"Not computed: {r['error']}.", ""])
    rows = []
    for key, label in (("input", "input (raw)"), ("after_preprocessor", "after pre-processor")):
        s = r[key]
        rows.append([label, f"{s['membrane']['mean']:.4g} / {s['membrane']['std']:.4g}",
                     f"{s['interior']['mean']:.4g} / {s['interior']['std']:.4g}",
                     f"{s['d_prime']:.3f}", f"{s['overlap']:.3f}"])
    out += [f"Checkpoint `{r['checkpoint']}`, test slices {r['slices']}; membrane = label 0, "
            f"interior = 255. d' = |mu1 - mu0| / sqrt((s0^2 + s1^2) / 2); overlap = shared "
            "area of the two density histograms.", "",
            _table(["where", "membrane mu / sigma", "interior mu / sigma", "d'", "overlap"],
                   rows), "", f"Plot: `{r['plot']}`", ""]
    return "\n".join(out)


def write_report(results: dict[str, Any], out: Path) -> str:
    """Write results.json and results.md; return the markdown."""
    meta = results.get("meta", {})
    quick = ", QUICK MODE (numbers meaningless)" if meta.get("quick") else ""
    md = ["# Learned normalization vs hand-made pre-processing", "",
          f"Command: `{meta.get('command', '')}`", "",
          f"Data: {meta.get('data')} (train slices {meta.get('train_slices')}, test slices "
          f"{meta.get('test_slices')}); preset `{meta.get('preset')}`, "
          f"{meta.get('budget_minutes')} min training budget each, device {meta.get('device')}, "
          f"seed {meta.get('seed')}{quick}.",
          "", meta.get("parallel_note", ""), ""]
    for part, fn in (("range", report_range), ("shift", report_shift), ("fig6", report_fig6)):
        if part in results:
            md.append(fn(results[part]))
            pm = results[part].get("meta")
            if pm and pm.get("command") != meta.get("command"):
                md += [f"(This part: `{pm['command']}`, preset `{pm['preset']}`, "
                       f"{pm['budget_minutes']} min budget, {pm.get('wall_s')} s wall.)", ""]
    text = "\n".join(md)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return text


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", default="all", choices=("range", "shift", "fig6", "all"))
    p.add_argument("--preset", default="cpu", choices=("paper", "small", "cpu", "tiny"))
    p.add_argument("--budget-minutes", type=float, default=5.0, help="per training (wall clock)")
    p.add_argument("--loss", choices=("dice", "bce_dice"), default="bce_dice",
                   help="training loss (as in benchmarks/isbi_accuracy.py)")
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side, 1 thread each")
    p.add_argument("--archs", default=",".join(DEFAULT_ARCHS),
                   help="comma-separated architectures for 'range' (and 'shift' from it)")
    p.add_argument("--models-from", help="shift/fig6: use DIR/main/<method>/ run folders")
    p.add_argument("--checkpoint", help="fig6: a pipeline best.pt or run folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "normalization"))
    p.add_argument("--plot-dir", help="where PNGs go (default: --out)")
    p.add_argument("--data", default="auto", choices=("auto", "isbi", "synthetic"))
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="tiny preset, seconds of training, 128-px crops: a smoke run")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    if args.quick:
        args.preset = "tiny"
        args.budget_minutes = min(args.budget_minutes, 0.05)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from napari_fcres.config import ARCHITECTURES

    bad = [a for a in args.archs if a not in ARCHITECTURES]
    if bad:
        log.error("unknown architecture(s) %s; choose from %s", bad, ", ".join(ARCHITECTURES))
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    data = load_data(args.data, args.quick)
    log.info("data: %s, train %s %s, test %s %s", data["source"], data["train_slices"],
             data["train_image"].shape, data["test_slices"], data["test_image"].shape)
    results: dict[str, Any] = {}
    if (out / "results.json").exists():
        try:
            results = json.loads((out / "results.json").read_text())
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", out / "results.json")
    note = (f"Trainings and evaluations ran {args.jobs} side by side as worker processes, each "
            "with torch.set_num_threads(1) and OMP_NUM_THREADS=1: every training got one CPU "
            f"core for the same {args.budget_minutes:g}-minute wall-clock budget.")
    log.info(note)
    results["meta"] = {
        "command": "python benchmarks/normalization_claims.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "data": data["source"], "train_slices": data["train_slices"],
        "test_slices": data["test_slices"], "preset": args.preset,
        "budget_minutes": args.budget_minutes, "jobs": args.jobs, "device": args.device,
        "loss": args.loss, "seed": args.seed, "quick": args.quick, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "parallel_note": note,
    }
    parts = ("range", "shift", "fig6") if args.part == "all" else (args.part,)
    plot_dir = Path(args.plot_dir) if args.plot_dir else out
    timings = results.setdefault("wall_s", {})
    for part in parts:
        start = time.perf_counter()
        log.info("=== %s ===", part)
        if part == "range":
            results["range"] = part_range(args, data, out)
            _plot_bars({f: {a: results["range"]["runs"][f].get(a, {}).get("scores", {})
                            .get("v_rand", math.nan) for a in args.archs}
                        for f in STORAGE_FORMS},
                       "V_rand on test slices per storage form", "V_rand",
                       plot_dir / "normalization_range.png")
        elif part == "shift":
            results["shift"] = part_shift(args, data, out)
            res = results["shift"].get("results", {})
            _plot_bars({s: {m: r.get("shifts", {}).get(s, {}).get("v_rand", math.nan)
                            for m, r in res.items()} for s in SHIFTS},
                       "V_rand under acquisition shift", "V_rand",
                       plot_dir / "normalization_shift.png")
        else:
            results["fig6"] = part_fig6(args, data, out)
        timings[part] = round(time.perf_counter() - start, 1)
        results[part]["meta"] = {**results["meta"], "wall_s": timings[part]}
        log.info("%s took %.1f s", part, timings[part])
    text = write_report(results, out)
    print(text)
    log.info("wrote %s and %s", out / "results.json", out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
