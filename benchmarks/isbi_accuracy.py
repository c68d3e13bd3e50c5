"""Held-out accuracy on ISBI 2012: ours against normalization, UNet, torch-em, RF and floor.

Trains every method on the training slices of a fold with the same wall-clock budget,
predicts the held-out slices and scores them with :mod:`napari_fcres.metrics` (V_rand and
V_info by the challenge protocol over thresholds 0, 0.1, ..., 1; Dice and pixel error at
0.5), per slice and as means.

Methods:

* ``ours``: the learned pre-processor + FC-ResNet (``pipeline``), one model;
* ``ours-ensemble``: K of them, sharing the same total budget (napari_fcres splits
  ``max_minutes`` over the members);
* ``ours-dice``: ``ours`` trained with the paper's Dice loss (eq. 2) whatever ``--loss``
  says (our models default to BCE + Dice: it keeps thin membranes closed);
* ``fcresnet-standardize`` / ``fcresnet-rescale``: the FC-ResNet after standardization
  (the paper's ref. [17]) / after min-max rescaling;
* ``unet``: napari_fcres's plain UNet;
* ``torch-em-unet``: torch-em's ``UNet2d`` trained by torch-em's own trainer;
* ``random-forest``: an ilastik-style pixel classifier (scikit-learn);
* ``smoothed-raw``: the floor, smoothed raw intensity used as the probability.

Folds: ``main`` trains on slices 0-19 and tests 20-29; ``3fold`` holds out 0-9, 10-19
and 20-29 in turn (``fold0``, ``fold1``, ``fold2``; ``--folds fold1`` runs that one
alone).  ``--jobs`` trainings run side by
side as subprocesses, each with one thread (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1``, ``n_jobs=1``), so each method gets one core for the same time.

Output: ``OUT/<fold>/<method>/`` (for napari_fcres methods the training run folder,
loadable by ``napari_fcres.inference.load_models``) with ``probabilities.tif`` and
``scores.json``; ``OUT/results.json``, ``OUT/results.md`` and a V_rand plot.

    python benchmarks/isbi_accuracy.py --budget-minutes 10 --folds main
    python benchmarks/isbi_accuracy.py --budget-minutes 5 --folds 3fold
    python benchmarks/isbi_accuracy.py --quick --out /tmp/isbi_quick   # smoke run
    # the paper's recipe on a GPU: --config training/isbi_em.yaml --device cuda --jobs 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("isbi_accuracy")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by file path
    sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    ISBI_FOREGROUND,
    load_config,
    load_isbi,
    load_sample,
    local_isbi_dir,
    set_torch_threads,
    shared_isbi_dir,
    thread_env,
)

METHODS: tuple[str, ...] = (
    "ours", "ours-ensemble", "ours-dice", "fcresnet-standardize", "fcresnet-rescale", "unet",
    "torch-em-unet", "random-forest", "smoothed-raw",
)
#: napari_fcres methods and their architecture in the registry.
FCRES_ARCH: dict[str, str] = {
    "ours": "auto", "ours-ensemble": "auto", "ours-dice": "auto",
    "fcresnet-standardize":
    "fcresnet-standardize", "fcresnet-rescale": "fcresnet-rescale", "unet": "unet",
}
BENCH_VENV_PYTHON = Path("/tmp/bench-venv/bin/python")
FOREGROUND = ISBI_FOREGROUND


# --------------------------------------------------------------------------- data and folds


def load_data(quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image, labels, source)``: the ISBI 2012 training stack (255 = cell interior).

    Quick mode takes 6 slices cropped to 64x64 and falls back to the synthetic sample
    stack when ISBI 2012 is not on disk (``_common.local_isbi_dir``: ``$NAPARI_FCRES_ISBI_DIR``
    or the shared copy beside the checkout); it is never downloaded here.
    """
    folder = local_isbi_dir()
    if folder is not None:
        image, labels = load_isbi(local_dir=folder)
        source = f"ISBI 2012 train volume ({folder})"
    elif quick:
        image, labels = load_sample()
        labels = np.where(labels == labels.max(), FOREGROUND, 0).astype(np.uint8)
        source = "synthetic sample stack (ISBI 2012 not found)"
    else:
        raise SystemExit(f"ISBI 2012 not found in {shared_isbi_dir()}; run `fcres fetch-isbi`")
    if quick:
        z0, y0 = 0, image.shape[1] // 2 - 32
        image = image[z0:z0 + 6, y0:y0 + 64, y0:y0 + 64]
        labels = labels[z0:z0 + 6, y0:y0 + 64, y0:y0 + 64]
        source += ", quick: 6 slices cropped to 64x64"
    return np.ascontiguousarray(image), np.ascontiguousarray(labels), source


def make_folds(n: int, which: str) -> dict[str, tuple[list[int], list[int]]]:
    """``{fold: (train slices, test slices)}``; for 30 slices main = 0-19 / 20-29."""
    if which == "main":
        cut = (2 * n) // 3
        return {"main": (list(range(cut)), list(range(cut, n)))}
    bounds = [round(k * n / 3) for k in range(4)]
    folds = {}
    for k in range(3):
        test = list(range(bounds[k], bounds[k + 1]))
        folds[f"fold{k}"] = ([i for i in range(n) if i not in test], test)
    if which in folds:  # one fold of the three
        return {which: folds[which]}
    return folds


# --------------------------------------------------------------------------- interpreters


def _python_has(python: str, module: str) -> bool:
    """Whether ``python`` finds ``module`` (without importing it: that takes seconds)."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pick_python(explicit: str | None, module: str) -> tuple[str | None, str]:
    """Interpreter for a method needing ``module``: explicit, this one, or the bench venv."""
    if explicit:
        if _python_has(explicit, module):
            return explicit, ""
        return None, f"{explicit} cannot import {module}"
    if _python_has(sys.executable, module):
        return sys.executable, ""
    if BENCH_VENV_PYTHON.exists() and _python_has(str(BENCH_VENV_PYTHON), module):
        return str(BENCH_VENV_PYTHON), ""
    return None, (f"{module} is importable neither by {sys.executable} nor by "
                  f"{BENCH_VENV_PYTHON}; pass an interpreter that has it")


# --------------------------------------------------------------------------- workers


def _limit_threads(method: str, threads: int, device: str) -> None:
    """One thread for torch (the environment already limits OpenMP/BLAS pools)."""
    if method in ("random-forest", "smoothed-raw"):
        return
    import torch

    set_torch_threads(threads, interop=True)
    log.info("worker: torch threads %d, device %s", torch.get_num_threads(), device)


def _worker_fcres(spec: dict[str, Any], data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Train a napari_fcres architecture with the library's own loop; predict the test slices."""
    from napari_fcres.inference import load_models, predict
    from napari_fcres.runs import stored_config
    from napari_fcres.training import TrainProgress, replace_train, run_training

    method, run_dir = spec["method"], Path(spec["run_dir"])
    arch = FCRES_ARCH[method]
    if spec.get("config_yaml"):
        cfg = load_config(spec["config_yaml"], architecture=arch)
    else:
        cfg = load_config(preset=spec["preset"], architecture=arch)
    cfg.data.foreground_value = FOREGROUND
    k = spec["ensemble"] if method == "ours-ensemble" else 1
    changes: dict[str, Any] = dict(
        max_minutes=spec["budget_minutes"], epochs=100_000, seed=spec["seed"], ensemble=k,
        device=spec["device"], loss="dice" if method == "ours-dice" else spec["loss"],
    )
    if spec["quick"]:
        changes.update(crop_size=64, batch_size=2, patience_steps=1000)
    cfg = replace_train(cfg, **changes)
    last: dict[int, TrainProgress] = {}

    def on_progress(p: TrainProgress) -> None:
        if p.kind in ("step", "validation"):
            last[p.member] = p

    start = time.perf_counter()
    result = run_training(cfg, data["train_image"], data["train_labels"], run_dir,
                          on_progress=on_progress)
    train_s = time.perf_counter() - start
    models = load_models(run_dir, device=spec["device"])
    t0 = time.perf_counter()
    probs = predict(models, data["test_image"], tta=spec["tta"], device=spec["device"],
                    tile_size=cfg.train.inference_tile).probabilities
    return {
        "probabilities": probs,
        "train_seconds": train_s,
        "predict_seconds": time.perf_counter() - t0,
        "steps": int(sum(p.step for p in last.values())),
        "epochs": int(sum(p.epoch for p in last.values())),
        "members": k,
        "steps_per_member": [int(last[m].step) for m in sorted(last)],
        "epochs_per_member": [int(last[m].epoch) for m in sorted(last)],
        "best_val_dice": [float(v) for v in result.best_val_dice],
        "architecture": stored_config(run_dir).model.architecture,  # "auto" resolved
        "preset": cfg.model.preset,
        "batch_size": cfg.train.batch_size,
        "crop_size": cfg.train.crop_size,
        "tta": spec["tta"],
    }


def _worker_other(spec: dict[str, Any], data: dict[str, np.ndarray]) -> dict[str, Any]:
    """torch-em, random forest or the smoothed-raw floor."""
    import _baselines as bl

    method, quick = spec["method"], spec["quick"]
    budget_s = 60.0 * spec["budget_minutes"]
    if method == "smoothed-raw":
        t0 = time.perf_counter()
        probs = bl.smoothed_raw(data["test_image"], sigma=spec["raw_sigma"])
        return {"probabilities": probs, "train_seconds": 0.0, "steps": 0, "epochs": 0,
                "predict_seconds": time.perf_counter() - t0, "sigma": spec["raw_sigma"]}
    if method == "random-forest":
        rf, info = bl.train_random_forest(
            data["train_image"], data["train_labels"], budget_s,
            n_samples=2_000 if quick else spec["rf_samples"],
            n_estimators=10 if quick else spec["rf_trees"], seed=spec["seed"],
        )
        t0 = time.perf_counter()
        probs = bl.predict_random_forest(rf, data["test_image"])
        info.update(probabilities=probs, predict_seconds=time.perf_counter() - t0,
                    steps=info["trees"], epochs=1)
        return info
    if method == "torch-em-unet":
        probs, info = bl.run_torch_em(
            data["train_image"], data["train_labels"], data["test_image"],
            Path(spec["run_dir"]), budget_s, seed=spec["seed"], device=spec["device"],
            patch=64 if quick else 256, batch_size=2 if quick else 4, tta=spec["tta"],
        )
        info["probabilities"] = probs
        return info
    raise ValueError(f"unknown method {method}")


def run_worker(spec_path: Path) -> int:
    """Entry point of one training subprocess: train, predict, write results."""
    spec = json.loads(spec_path.read_text())
    _limit_threads(spec["method"], spec["threads"], spec["device"])
    return run_spec(spec)


def run_spec(spec: dict[str, Any]) -> int:
    """Train and predict one method of one fold; write probabilities.tif and train_info.json."""
    import tifffile

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    with np.load(spec["data"]) as f:
        data = {k: f[k] for k in f.files}
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if spec["method"] in FCRES_ARCH:
        out = _worker_fcres(spec, data)
    else:
        out = _worker_other(spec, data)
    probs = np.asarray(out.pop("probabilities"), dtype=np.float32)
    tifffile.imwrite(run_dir / "probabilities.tif", probs)
    out.update(python=sys.executable, threads=spec["threads"])
    (run_dir / "train_info.json").write_text(json.dumps(out, indent=2))
    log.info("%s: trained %.1f s, predicted %.1f s", spec["method"], out["train_seconds"],
             out.get("predict_seconds", 0.0))
    return 0


# --------------------------------------------------------------------------- scheduling


@dataclass
class Task:
    """One (fold, method) training run."""

    fold: str
    method: str
    run_dir: Path
    python: str
    spec: dict[str, Any]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    wall: float = 0.0
    error: str | None = None
    log_file: Any = field(default=None, repr=False)


def run_tasks(tasks: list[Task], jobs: int, spec_dir: Path) -> None:
    """Run the tasks, at most ``jobs`` at a time, each in its own single-thread process."""
    env = thread_env(tasks[0].spec["threads"] if tasks else 1)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    pending, running = [], []
    for t in tasks:
        if t.method != "smoothed-raw":
            pending.append(t)
            continue
        # no training: the floor is computed here, between nothing else
        if t.run_dir.exists():
            shutil.rmtree(t.run_dir)
        t.run_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        run_spec(t.spec)
        t.wall = time.perf_counter() - t0
    while pending or running:
        while pending and len(running) < jobs:
            t = pending.pop(0)
            if t.run_dir.exists():
                shutil.rmtree(t.run_dir)
            t.run_dir.mkdir(parents=True)
            spec_path = spec_dir / f"{t.fold}_{t.method}.json"
            spec_path.write_text(json.dumps(t.spec))
            t.log_file = open(t.run_dir / "benchmark.log", "w")  # noqa: SIM115
            cmd = [t.python, str(Path(__file__).resolve()), "--worker", str(spec_path)]
            log.info("start %s / %s (%s)", t.fold, t.method, t.python)
            t.started = time.perf_counter()
            t.proc = subprocess.Popen(cmd, stdout=t.log_file, stderr=subprocess.STDOUT, env=env)
            running.append(t)
        time.sleep(0.2)
        for t in list(running):
            assert t.proc is not None
            rc = t.proc.poll()
            if rc is None:
                continue
            t.wall = time.perf_counter() - t.started
            t.log_file.close()
            running.remove(t)
            if rc != 0:
                tail = (t.run_dir / "benchmark.log").read_text().strip().splitlines()[-5:]
                t.error = f"worker exited with {rc}: " + " | ".join(tail)
                log.error("%s / %s failed: %s", t.fold, t.method, t.error)
            else:
                log.info("done %s / %s in %.1f s", t.fold, t.method, t.wall)


# --------------------------------------------------------------------------- scoring


def score(probs: np.ndarray, labels: np.ndarray, test_slices: list[int]) -> dict[str, Any]:
    """Library scores: means and per-slice V_rand, V_info, Dice and pixel error."""
    from napari_fcres.metrics import dice, pixel_error, segmentation_scores

    s = segmentation_scores(probs, labels, threshold=0.5, foreground_value=FOREGROUND)
    fg = labels == FOREGROUND
    pred = probs > 0.5
    return {
        "v_rand": s["v_rand"], "v_info": s["v_info"], "dice": s["dice"],
        "pixel_error": s["pixel_error"],
        "v_rand_threshold": s["v_rand_threshold"], "v_info_threshold": s["v_info_threshold"],
        "dice_threshold": 0.5, "thresholds": s["thresholds"],
        "v_rand_per_threshold": s["v_rand_per_threshold"],
        "v_info_per_threshold": s["v_info_per_threshold"],
        "per_slice": {
            "slice": test_slices,
            "v_rand": s["v_rand_per_slice"], "v_info": s["v_info_per_slice"],
            "dice": [dice(pred[z], fg[z]) for z in range(len(test_slices))],
            "pixel_error": [pixel_error(pred[z], fg[z]) for z in range(len(test_slices))],
        },
    }


METRICS = ("v_rand", "v_info", "dice", "pixel_error")


def summarize(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean and std over folds of every metric and of the training time, per method."""
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        rows = [f[method] for f in results.values() if method in f and "v_rand" in f[method]]
        if not rows:
            continue
        entry: dict[str, Any] = {"folds": len(rows)}
        for key in (*METRICS, "train_seconds"):
            vals = np.array([r[key] for r in rows], dtype=float)
            entry[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0)),
                          "values": vals.tolist()}
        out[method] = entry
    return out


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables: one per fold, plus mean ± std for several folds."""
    st = report["settings"]
    lines = [
        "# ISBI 2012 held-out accuracy", "",
        f"Data: {st['data']}. Budget: {st['budget_minutes']:g} min of wall-clock training per "
        f"method, {st['jobs']} trainings side by side, each on {st['threads_per_job']} "
        f"thread(s) ({st['cpu_count']} logical CPUs, {st['machine']}); device {st['device']}; "
        f"our models: preset `{st['preset']}`{', config ' + st['config'] if st['config'] else ''}"
        f", loss {st.get('loss', 'dice')} (ours-dice: the paper's Dice loss)"
        f", ensemble of {st['ensemble']} sharing one budget. V_rand / V_info: best mean over "
        "thresholds 0..1 step 0.1 (challenge protocol); Dice and pixel error at 0.5.", "",
    ]
    if st["quick"]:
        lines += ["**Quick mode: smoke-test settings, the numbers mean nothing.**", ""]
    head = "| method | V_rand | V_info | Dice | pixel error | train time (s) |"
    for fold, rows in report["folds"].items():
        train, test = report["fold_slices"][fold]
        lines += [f"## {fold}: train slices {_ranges(train)}, test slices {_ranges(test)}", "",
                  head, "|---|---|---|---|---|---|"]
        for method, r in rows.items():
            if "v_rand" in r:
                lines.append(f"| {method} | {r['v_rand']:.4f} | {r['v_info']:.4f} | "
                             f"{r['dice']:.4f} | {r['pixel_error']:.4f} | "
                             f"{r['train_seconds']:.0f} |")
            else:
                lines.append(f"| {method} | – | – | – | – | {r.get('skipped') or r.get('error')} |")
        lines.append("")
    if len(report["folds"]) > 1:
        lines += [f"## mean ± std over {len(report['folds'])} folds", "", head,
                  "|---|---|---|---|---|---|"]
        for method, s in report["summary"].items():
            cells = [f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in METRICS]
            t = s["train_seconds"]
            lines.append(f"| {method} | " + " | ".join(cells)
                         + f" | {t['mean']:.0f} ± {t['std']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _ranges(idx: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    parts, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            parts.append(f"{start}-{v}" if v != start else f"{v}")
            start = None
    return ", ".join(parts)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar plot (one fold) or box plot (several folds) of V_rand per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    methods = list(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods)), 4.0))
    if len(report["folds"]) > 1:
        ax.boxplot([summary[m]["v_rand"]["values"] for m in methods], showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1))
        ax.set_title(f"ISBI 2012, V_rand over {len(report['folds'])} folds")
    else:
        fold = next(iter(report["folds"].values()))
        ax.bar(range(1, len(methods) + 1), [summary[m]["v_rand"]["mean"] for m in methods],
               yerr=[np.std(fold[m]["per_slice"]["v_rand"]) for m in methods], capsize=3)
        ax.set_xticks(range(1, len(methods) + 1))
        test = _ranges(next(iter(report["fold_slices"].values()))[1])
        ax.set_title(f"ISBI 2012, slices {test} held out: V_rand (bars: std over slices)")
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_ylabel("V_rand (higher is better)")
    ax.set_ylim(0, 1)
    st = report["settings"]
    ax.text(0.01, 0.02, f"{st['budget_minutes']:g} min training per method, "
            f"{st['threads_per_job']} thread(s) each", transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=10.0,
                   help="wall-clock training budget per method (an ensemble shares it)")
    p.add_argument("--folds", choices=("main", "3fold", "fold0", "fold1", "fold2"),
                   default="main",
                   help="main: train 0-19 / test 20-29; 3fold: hold out 0-9, 10-19, 20-29; "
                        "foldK: only the K-th of those three")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   metavar="METHOD", help=f"subset of: {', '.join(METHODS)}")
    p.add_argument("--ensemble", type=int, default=3, help="members of ours-ensemble")
    p.add_argument("--preset", default="cpu", help="napari_fcres preset of our models")
    p.add_argument("--config", default=None,
                   help="YAML training set-up for our models instead of --preset, e.g. "
                        "training/isbi_em.yaml (the paper's recipe; wants a GPU)")
    p.add_argument("--jobs", type=int, default=2, help="trainings run side by side")
    p.add_argument("--threads-per-job", type=int, default=1, help="threads of each training")
    p.add_argument("--out", type=Path, default=HERE / "results" / "isbi_accuracy")
    p.add_argument("--plot", type=Path, default=None,
                   help="V_rand plot path (default OUT/isbi_accuracy.png)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny preset, seconds of budget, 64x64 crops of 6 slices")
    p.add_argument("--device", default="cpu")
    p.add_argument("--loss", choices=["dice", "bce_dice"], default="dice",
                   help="training loss of our models; 'ours-dice' always uses the paper's "
                        "Dice loss (eq. 2)")
    p.add_argument("--tta", action="store_true",
                   help="8-fold test-time augmentation (ours and torch-em)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-em-python", default=None,
                   help="interpreter with torch_em (default: this one if it has torch_em, "
                        f"else {BENCH_VENV_PYTHON})")
    p.add_argument("--sklearn-python", default=None,
                   help="interpreter with scikit-learn for the random forest (same default)")
    p.add_argument("--rf-samples", type=int, default=200_000, help="balanced pixel sample")
    p.add_argument("--rf-trees", type=int, default=100)
    p.add_argument("--raw-sigma", type=float, default=2.0, help="smoothing of the floor")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.preset = "tiny"
        args.config = None
        args.budget_minutes = min(args.budget_minutes, 0.01)
        args.ensemble = min(args.ensemble, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--worker``, one training)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker)
    t_all = time.perf_counter()
    image, labels, source = load_data(args.quick)
    folds = make_folds(image.shape[0], args.folds)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pythons: dict[str, tuple[str | None, str]] = {}
    if "torch-em-unet" in args.methods:
        pythons["torch-em-unet"] = pick_python(args.torch_em_python, "torch_em")
    if "random-forest" in args.methods:
        pythons["random-forest"] = pick_python(args.sklearn_python, "sklearn")
    for method, (py, why) in pythons.items():
        if py is None:
            log.warning("skipping %s: %s", method, why)
    settings = {
        "data": source, "budget_minutes": args.budget_minutes, "folds": args.folds,
        "jobs": args.jobs, "threads_per_job": args.threads_per_job,
        "cpu_count": os.cpu_count(), "machine": f"{platform.machine()} {platform.node()}",
        "device": args.device, "preset": args.preset, "config": args.config,
        "ensemble": args.ensemble, "seed": args.seed, "tta": args.tta, "quick": args.quick,
        "loss": args.loss,
        "methods": list(args.methods),
        "fairness": f"{args.jobs} trainings side by side, each restricted to "
                    f"{args.threads_per_job} thread(s) (torch.set_num_threads, "
                    "OMP_NUM_THREADS, n_jobs=1) for the same wall-clock budget",
        "python": {m: py or why for m, (py, why) in pythons.items()},
    }
    log.info("%s", settings["fairness"])
    report: dict[str, Any] = {"settings": settings, "folds": {}, "fold_slices": {}}
    with tempfile.TemporaryDirectory(prefix="isbi_accuracy_") as tmp:
        tasks: list[Task] = []
        for fold, (train, test) in folds.items():
            npz = Path(tmp) / f"{fold}.npz"
            np.savez(npz, train_image=image[train], train_labels=labels[train],
                     test_image=image[test], test_labels=labels[test])
            report["fold_slices"][fold] = (train, test)
            report["folds"][fold] = {}
            for method in args.methods:
                py = pythons.get(method, (sys.executable, ""))[0]
                if py is None:
                    report["folds"][fold][method] = {"skipped": pythons[method][1]}
                    continue
                spec = {
                    "method": method, "fold": fold, "data": str(npz),
                    "run_dir": str(out / fold / method), "budget_minutes": args.budget_minutes,
                    "preset": args.preset, "config_yaml": args.config,
                    "ensemble": args.ensemble, "seed": args.seed, "device": args.device,
                    "tta": args.tta, "quick": args.quick, "threads": args.threads_per_job,
                    "loss": args.loss,
                    "rf_samples": args.rf_samples, "rf_trees": args.rf_trees,
                    "raw_sigma": args.raw_sigma,
                }
                tasks.append(Task(fold, method, out / fold / method, py, spec))
        run_tasks(tasks, max(1, args.jobs), Path(tmp))
    _collect(report, tasks, labels, folds, args)
    report["summary"] = summarize(report["folds"])
    report["total_seconds"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / "results.md").write_text(md + "\n")
    if report["summary"]:
        plot(report, args.plot or out / "isbi_accuracy.png")
    print(md)
    log.info("wrote %s in %.0f s", out, report["total_seconds"])
    return 0


def _collect(report: dict[str, Any], tasks: list[Task], labels: np.ndarray,
             folds: dict[str, tuple[list[int], list[int]]], args: argparse.Namespace) -> None:
    """Score every finished task; write its scores.json and fill the report."""
    import tifffile

    for t in tasks:
        if t.error is not None:
            report["folds"][t.fold][t.method] = {"error": t.error}
            continue
        test = folds[t.fold][1]
        probs = tifffile.imread(t.run_dir / "probabilities.tif")
        info = json.loads((t.run_dir / "train_info.json").read_text())
        s = score(probs, labels[test], test)
        s.update(method=t.method, fold=t.fold, budget_minutes=args.budget_minutes,
                 process_seconds=t.wall, **{k: v for k, v in info.items() if k not in s})
        (t.run_dir / "scores.json").write_text(json.dumps(s, indent=2))
        report["folds"][t.fold][t.method] = s
        log.info("%s / %s: V_rand %.4f V_info %.4f Dice %.4f pixel error %.4f", t.fold,
                 t.method, s["v_rand"], s["v_info"], s["dice"], s["pixel_error"])
    for fold, rows in report["folds"].items():  # table order = METHODS order
        report["folds"][fold] = {m: rows[m] for m in METHODS if m in rows}


if __name__ == "__main__":
    sys.exit(main())
