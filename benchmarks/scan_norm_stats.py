"""Prediction-time batch-norm statistics on scans whose content changes along the volume.

Per-slice statistics (``norm_stats: image``) lifted ISBI 2012, whose slices differ in
brightness and contrast only.  A scan's slices differ in content: the top of an organ,
slices of air.  This benchmark trains one model with the CLI defaults on the middle
slices of a synthetic scan (:mod:`napari_fcres.synthetic_scan`: MRI-like 0..2000 or
CT-like -1000..1500, the target shrinking to nothing at both ends, air beyond), predicts
the whole volume with every statistics mode, and reports the prostate measures (Dice,
ABD, HD95, RVD) and the voxels predicted in slices that hold no target at all.

With ``--isbi-models RUN`` it also predicts ISBI slices 20-29 with three blank slices
(air: a low constant plus noise) above and below, with each mode: V_rand on 20-29 and
the foreground called in the blank slices.

    python benchmarks/scan_norm_stats.py --minutes 3 --out benchmarks/results/scan_norm
    python benchmarks/scan_norm_stats.py --minutes 3 --painted 3   # few painted slices
    python benchmarks/scan_norm_stats.py --isbi-models runs/isbi30 --skip-scan
    python benchmarks/scan_norm_stats.py --quick        # seconds: smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ISBI_FOREGROUND, load_isbi, set_torch_threads  # noqa: E402

from napari_fcres.config import DEFAULT_TTA  # noqa: E402

log = logging.getLogger("scan_norm_stats")

MODES = ("auto", "image", "volume", "running")


def _predict_modes(models: list, image: np.ndarray, modes: tuple[str, ...],
                   tta: bool) -> dict[str, Any]:
    from napari_fcres.inference import predict
    from napari_fcres.models.norm import set_norm_stats

    out = {}
    for mode in modes:
        for m in models:
            set_norm_stats(m, mode)
        t0 = time.perf_counter()
        out[mode] = predict(models, image, tta=tta).probabilities
        log.info("predicted %s with %s statistics in %.1f s", image.shape, mode,
                 time.perf_counter() - t0)
    return out


def _slices_text(slices: list[int]) -> str:
    """``12-28`` for a run of slices, ``12, 20, 28`` otherwise."""
    if slices == list(range(slices[0], slices[-1] + 1)):
        return f"{slices[0]}-{slices[-1]}"
    return ", ".join(str(z) for z in slices)


def run_scan(args: argparse.Namespace, modality: str, out: Path) -> dict[str, Any]:
    """Train on the middle slices of a synthetic scan, predict it all with every mode."""
    from napari_fcres.inference import load_models
    from napari_fcres.metrics import volume_scores
    from napari_fcres.synthetic_scan import synthetic_scan
    from napari_fcres.train_config import build_train_config
    from napari_fcres.training import run_training

    shape = (24, 64, 64) if args.quick else (48, 128, 128)
    scan = synthetic_scan(shape, modality=modality, seed=args.seed)
    z0, z1 = scan.target_slices
    mid = (z0 + z1) // 2
    half = max(2, (z1 - z0) // 3)
    train = list(range(mid - half, mid + half + 1))
    if args.painted:  # a few painted slices, evenly spaced over the same range
        train = sorted({int(round(z)) for z in np.linspace(train[0], train[-1], args.painted)})
    cfg = build_train_config(
        preset="tiny" if args.quick else args.preset, max_minutes=args.minutes, seed=args.seed,
        device="cpu", crop_size=shape[1], architecture=args.architecture, keep=args.keep,
    )
    run_dir = out / f"{modality}_run"
    if not (run_dir / "member_00" / "best.pt").exists():
        t0 = time.perf_counter()
        run_training(cfg, scan.image[train], scan.labels[train], run_dir)
        log.info("%s: trained on slices %s in %.0f s", modality, _slices_text(train),
                 time.perf_counter() - t0)
    models = load_models(run_dir)
    probs = _predict_modes(models, scan.image, MODES, args.tta)
    empty = [z for z in range(shape[0]) if not scan.labels[z].any()]
    rows: dict[str, Any] = {}
    for mode, p in probs.items():
        pred = p > 0.5
        s = volume_scores(pred, scan.labels.astype(bool), spacing=scan.spacing)
        rows[mode] = {
            "dice": s["dice"], "abd_mm": s["average_boundary_distance"],
            "hd95_mm": s["hausdorff95"], "rvd_percent": s["relative_volume_difference"],
            "voxels_pred": int(pred.sum()), "voxels_true": int(scan.labels.sum()),
            "voxels_in_empty_slices": int(pred[empty].sum()),
            "per_slice_pred": [int(v) for v in pred.sum(axis=(1, 2))],
        }
        log.info("%s %-7s Dice %.3f ABD %.2f mm HD95 %.2f mm RVD %+.1f %% (%d voxels in the "
                 "%d target-free slices)", modality, mode, s["dice"],
                 s["average_boundary_distance"], s["hausdorff95"],
                 s["relative_volume_difference"], rows[mode]["voxels_in_empty_slices"],
                 len(empty))
    return {"modality": modality, "shape": list(shape), "train_slices": train,
            "target_slices": list(scan.target_slices), "body_slices": list(scan.body_slices),
            "per_slice_true": [int(v) for v in scan.labels.sum(axis=(1, 2))],
            "minutes": args.minutes, "modes": rows}


def run_isbi_blank(args: argparse.Namespace) -> dict[str, Any]:
    """ISBI 20-29 with blank slices above and below, every mode."""
    from napari_fcres.inference import load_models
    from napari_fcres.metrics import isbi_scores

    image, labels = load_isbi()
    rng = np.random.default_rng(args.seed)
    blank = np.clip(rng.normal(8.0, 3.0, (3, *image.shape[1:])), 0, 255).astype(image.dtype)
    stack = np.concatenate([blank, image[20:30], blank])
    models = load_models(args.isbi_models)
    rows = {}
    for mode, p in _predict_modes(models, stack, MODES, args.tta).items():
        s = isbi_scores(p[3:13], labels[20:30], foreground_value=ISBI_FOREGROUND)
        blank_fg = float(np.mean(p[[0, 1, 2, 13, 14, 15]] > 0.5))
        rows[mode] = {"v_rand": s["v_rand"], "v_info": s["v_info"],
                      "blank_foreground_fraction": blank_fg}
        log.info("ISBI + blank %-7s V_rand %.4f V_info %.4f, blank slices called foreground: "
                 "%.1f %%", mode, s["v_rand"], s["v_info"], 100 * blank_fg)
    return {"models": str(args.isbi_models), "modes": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for scan in report.get("scans", []):
        lines += [f"### Synthetic {scan['modality'].upper()} scan {scan['shape']}, trained on "
                  f"slices {_slices_text(scan['train_slices'])} for "
                  f"{scan['minutes']:g} min; target in slices {scan['target_slices'][0]}-"
                  f"{scan['target_slices'][1]}", "",
                  "| statistics | Dice | ABD (mm) | HD95 (mm) | RVD | voxels in target-free "
                  "slices |", "|---|---|---|---|---|---|"]
        for mode, r in scan["modes"].items():
            lines.append(f"| {mode} | {r['dice']:.3f} | {r['abd_mm']:.2f} | {r['hd95_mm']:.2f} "
                         f"| {r['rvd_percent']:+.1f} % | {r['voxels_in_empty_slices']} |")
        lines.append("")
    if "isbi_blank" in report:
        lines += ["### ISBI 2012 slices 20-29 with 3 blank slices above and below", "",
                  "| statistics | V_rand 20-29 | V_info 20-29 | blank slices called foreground |",
                  "|---|---|---|---|"]
        for mode, r in report["isbi_blank"]["modes"].items():
            lines.append(f"| {mode} | {r['v_rand']:.4f} | {r['v_info']:.4f} | "
                         f"{100 * r['blank_foreground_fraction']:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per scan")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--modalities", nargs="+", default=["mri", "ct"], choices=["mri", "ct"])
    p.add_argument("--isbi-models", type=Path, default=None,
                   help="a trained ISBI run: also predict ISBI 20-29 with blank slices around")
    p.add_argument("--skip-scan", action="store_true")
    p.add_argument("--painted", type=int, default=0,
                   help="train on this many evenly spaced slices of the middle range (0: all)")
    p.add_argument("--architecture", default=None,
                   help="network (default: the CLI's, auto); e.g. pipeline")
    p.add_argument("--keep", default=None, choices=["auto", "best", "final"],
                   help="checkpoint kept (default: the CLI's, auto)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=DEFAULT_TTA,
                   help="test-time augmentation at prediction (default: as `fcres predict`); "
                        "a folder that already holds a run is predicted again, not retrained")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scan_norm_stats"))
    p.add_argument("--quick", action="store_true", help="tiny preset, seconds: smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes = min(args.minutes, 0.05)
    set_torch_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"scans": []}
    if not args.skip_scan:
        for modality in args.modalities:
            report["scans"].append(run_scan(args, modality, args.out))
    if args.isbi_models is not None:
        report["isbi_blank"] = run_isbi_blank(args)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (args.out / "results.md").write_text(md + "\n")
    log.info("results in %s\n%s", args.out, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
