"""Few painted slices, minutes of CPU: the napari loop's real regime, on ISBI 2012.

k painted slices (fully labelled) are drawn from slices 0-11 of the ISBI 2012 training
volume; every method trains on them alone with the same one-core wall-clock budget, side
by side, then predicts slices 12-29.  Slices 12-19 are where recipes are chosen
(``select``), slices 20-29 give the final figure (``test``); both are reported, V_rand and
V_info by the challenge protocol (:mod:`napari_fcres.metrics`).

Slice choices:

* ``even``: evenly spaced over 0-11 (k=3: 0, 5, 10, the issue's set);
* ``random``: k slices of 0-11 drawn with the seed;
* ``suggested``: a simulated annotator.  It paints slice 5, trains, asks
  :func:`napari_fcres.suggest.suggest_from_models` for the next slice among 0-11, paints
  it, and so on until k slices (each round trains with the run's budget on one core).

Methods: ``ours`` (the library defaults: ``fcres train`` with no flags), ``unet`` (our
plain UNet), ``torch-em-unet`` (torch-em's UNet2d and trainer), as in
``isbi_accuracy.py``, whose one-core worker processes run them.  Every method predicts as
``fcres predict`` does by default, with test-time augmentation (the 8 flips and rotations;
torch-em's model gets the same); ``--no-tta`` predicts plainly.

    python benchmarks/few_labels.py --k 3 --choices even --budgets 10 \\
        --methods ours torch-em-unet                     # the issue's goal
    python benchmarks/few_labels.py --k 1 3 5 --choices even random --budgets 3
    python benchmarks/few_labels.py --quick --out /tmp/few_quick     # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import isbi_accuracy as ia  # noqa: E402

from napari_fcres.config import DEFAULT_TTA  # noqa: E402

log = logging.getLogger("few_labels")

METHODS = ("ours", "unet", "torch-em-unet")
CHOICES = ("even", "random", "suggested")
POOL = list(range(12))  # slices that may be painted
SELECT = list(range(12, 20))  # recipes are chosen here
TEST = list(range(20, 30))  # the final figure


def even_slices(k: int, pool: list[int] = POOL) -> list[int]:
    """k slices evenly spaced over ``pool`` (k=3 over 0-11: 0, 5, 10)."""
    if k == 1:
        return [pool[len(pool) // 2 - 1]]
    step = (len(pool) - 1) // (k - 1) if k > 1 else 0
    return [pool[i * step] for i in range(k)]


def random_slices(k: int, seed: int, pool: list[int] = POOL) -> list[int]:
    return sorted(random.Random(1000 + seed).sample(pool, k))


def _spec(method: str, run_dir: Path, npz: Path, args: argparse.Namespace,
          budget: float) -> dict[str, Any]:
    from napari_fcres.config import preset_config

    return {
        "method": method, "fold": run_dir.name, "data": str(npz), "run_dir": str(run_dir),
        "budget_minutes": budget, "preset": "tiny" if args.quick else "cpu",
        "config_yaml": args.config, "ensemble": 1, "seed": args.seed, "device": "cpu",
        "tta": args.tta, "quick": args.quick, "threads": 1,
        "loss": preset_config("cpu").train.loss,
        "rf_samples": 0, "rf_trees": 0, "raw_sigma": 2.0,
    }


def _run(tasks: list[ia.Task], jobs: int, tmp: Path) -> None:
    ia.run_tasks(tasks, jobs, tmp)
    for t in tasks:
        if t.error:
            log.error("%s failed: %s", t.run_dir, t.error)


def _data(image: np.ndarray, labels: np.ndarray, painted: list[int], tmp: Path,
          name: str) -> Path:
    npz = tmp / f"{name}.npz"
    test = SELECT + TEST
    np.savez(npz, train_image=image[painted], train_labels=labels[painted],
             test_image=image[test], test_labels=labels[test])
    return npz


def _suggest_next(run_dir: Path, image: np.ndarray, painted: list[int]) -> int:
    """The slice of 0-11 the tool suggests painting next, after a model trained on
    ``painted`` (its ``run`` folder)."""
    from napari_fcres.inference import load_models
    from napari_fcres.suggest import suggest_from_models

    models = load_models(run_dir)
    pool = [z for z in POOL if z not in painted]
    ranked = suggest_from_models(models, image[pool], painted=(), k=1)
    return pool[ranked[0].slice]


def score_run(run_dir: Path, labels: np.ndarray) -> dict[str, Any]:
    """V_rand / V_info on the selection slices and the test slices of one run."""
    import tifffile

    from napari_fcres.metrics import isbi_scores

    probs = tifffile.imread(run_dir / "probabilities.tif")
    out: dict[str, Any] = {}
    for name, rows in (("select", SELECT), ("test", TEST)):
        p = probs[[SELECT.index(z) if z in SELECT else len(SELECT) + TEST.index(z)
                   for z in rows]]
        s = isbi_scores(p, labels[rows], foreground_value=ia.FOREGROUND)
        out[name] = {"v_rand": s["v_rand"], "v_info": s["v_info"],
                     "v_rand_per_slice": s["v_rand_per_slice"]}
    info = json.loads((run_dir / "train_info.json").read_text())
    out["steps"] = info.get("steps")
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--choices", nargs="+", choices=CHOICES, default=["even", "random"])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 10.0],
                   help="one-core minutes of training per run")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--config", default=None, help="YAML for ours/unet instead of defaults")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=DEFAULT_TTA,
                   help="test-time augmentation at prediction, for ours and torch-em alike "
                        "(default: as `fcres predict`)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "few_labels")
    p.add_argument("--quick", action="store_true", help="tiny preset, 64x64 crops, seconds")
    args = p.parse_args(argv)
    if args.quick:  # ISBI or the synthetic sample, 64x64 crops, repeated to 30 slices
        image, labels, source = ia.load_data(True)
        reps = -(-30 // image.shape[0])
        image, labels = np.tile(image, (reps, 1, 1))[:30], np.tile(labels, (reps, 1, 1))[:30]
    else:
        image, labels, source = ia.load_data(False)
    if args.quick:
        args.budgets = [0.02]
        args.k = [k for k in args.k if k <= 3] or [1]
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="few_labels_") as tmp_s:
        tmp = Path(tmp_s)
        for budget in args.budgets:
            for k in args.k:
                for choice in args.choices:
                    results += _one_setting(args, image, labels, tmp, budget, k, choice)
    report = {"data": source, "settings": {k: str(v) for k, v in vars(args).items()},
              "cpu_count": os.cpu_count(), "results": results,
              "total_seconds": time.perf_counter() - t_all}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    md = markdown(results) + "\n\n" + summary(results)
    (args.out / "results.md").write_text(md + "\n")
    plot(results, args.out / "few_labels.png")
    print(md)
    return 0


def _round_dir(args: argparse.Namespace, budget: float, painted: list[int]) -> Path:
    """Where the simulated annotator's model for ``painted`` trains (shared by every k)."""
    return args.out / f"b{budget:g}_suggested_rounds" / f"slices_{'-'.join(map(str, painted))}"


def _suggested_slices(args: argparse.Namespace, image: np.ndarray, labels: np.ndarray,
                      tmp: Path, budget: float, k: int) -> list[int]:
    """The simulated annotator: paint slice 5, train ours, paint the slice the tool
    suggests, and so on until ``k`` slices.  Each round's model is kept (and reused by a
    larger k), so the k-slice model of this choice is the annotator's round k."""
    painted = [5]
    while True:
        rdir = _round_dir(args, budget, painted)
        if not (rdir / "train_info.json").exists():
            npz = _data(image, labels, painted, tmp, f"round_{len(painted)}")
            spec = _spec("ours", rdir, npz, args, budget)
            _run([ia.Task(rdir.name, "ours", rdir, sys.executable, spec)], 1, tmp)
        if len(painted) == k:
            return painted
        nxt = _suggest_next(rdir, image, painted)
        log.info("annotator (%g min): suggested slice %d after %s", budget, nxt, painted)
        painted = sorted([*painted, nxt])


def _one_setting(args: argparse.Namespace, image: np.ndarray, labels: np.ndarray, tmp: Path,
                 budget: float, k: int, choice: str) -> list[dict[str, Any]]:
    """Every method on one (budget, k, slice choice)."""
    tag = f"b{budget:g}_k{k}_{choice}"
    if choice == "even":
        painted = even_slices(k)
    elif choice == "random":
        painted = random_slices(k, args.seed)
    else:
        painted = _suggested_slices(args, image, labels, tmp, budget, k)
    npz = _data(image, labels, painted, tmp, tag)
    tasks = []
    for method in args.methods:
        py = sys.executable
        if method == "torch-em-unet":
            py, why = ia.pick_python(None, "torch_em")
            if py is None:
                log.warning("skipping torch-em: %s", why)
                continue
        if choice == "suggested" and method == "ours":
            continue  # trained as the annotator's last round (below)
        rdir = args.out / tag / method
        tasks.append(ia.Task(tag, method, rdir, py, _spec(method, rdir, npz, args, budget)))
    _run(tasks, args.jobs, tmp)
    rows = []
    if choice == "suggested" and "ours" in args.methods:
        done = ia.Task(tag, "ours", _round_dir(args, budget, painted), sys.executable, {})
        if not (done.run_dir / "train_info.json").exists():
            done.error = f"the annotator's round left no model in {done.run_dir}"
        tasks.insert(0, done)
    for t in tasks:
        if t.error:
            rows.append({"method": t.method, "budget": budget, "k": k, "choice": choice,
                         "painted": painted, "error": t.error})
            continue
        s = score_run(t.run_dir, labels)
        rows.append({"method": t.method, "budget": budget, "k": k, "choice": choice,
                     "painted": painted, **s})
        log.info("%s %s painted %s: select V_rand %.4f, test V_rand %.4f (V_info %.4f)", tag,
                 t.method, painted, s["select"]["v_rand"], s["test"]["v_rand"],
                 s["test"]["v_info"])
    return rows


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| budget (1-core min) | painted slices | choice | method | steps | V_rand 12-19 "
             "(select) | V_rand 20-29 (test) | V_info 20-29 |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['budget']:g} | {r['painted']} | {r['choice']} | {r['method']} "
                         f"| failed | | | |")
            continue
        lines.append(f"| {r['budget']:g} | {r['painted']} | {r['choice']} | {r['method']} | "
                     f"{r['steps']} | {r['select']['v_rand']:.4f} | {r['test']['v_rand']:.4f} | "
                     f"{r['test']['v_info']:.4f} |")
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    """Mean and spread (min-max) of test V_rand over the slice choices, per method, budget, k."""
    ok = [r for r in results if "error" not in r]
    lines = ["| budget (1-core min) | painted slices | method | choices | test V_rand mean "
             "| min-max |", "|---|---|---|---|---|---|"]
    for key in sorted({(r["budget"], r["k"], r["method"]) for r in ok}):
        rows = [r for r in ok if (r["budget"], r["k"], r["method"]) == key]
        vals = [r["test"]["v_rand"] for r in rows]
        lines.append(f"| {key[0]:g} | {key[1]} | {key[2]} | "
                     f"{', '.join(r['choice'] for r in rows)} | {np.mean(vals):.4f} | "
                     f"{min(vals):.4f}-{max(vals):.4f} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Test V_rand against painted slices: a line per method and budget (mean, spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    if not ok:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        for budget in sorted({r["budget"] for r in ok}):
            rows = [r for r in ok if r["method"] == method and r["budget"] == budget]
            ks = sorted({r["k"] for r in rows})
            if not ks:
                continue
            vals = [[r["test"]["v_rand"] for r in rows if r["k"] == k] for k in ks]
            mean = [float(np.mean(v)) for v in vals]
            lo = [float(np.min(v)) for v in vals]
            hi = [float(np.max(v)) for v in vals]
            line = ax.plot(ks, mean, marker="o", label=f"{method}, {budget:g} min")[0]
            ax.fill_between(ks, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("painted slices")
    ax.set_ylabel("V_rand on ISBI slices 20-29")
    ax.set_xticks(sorted({r["k"] for r in ok}))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
