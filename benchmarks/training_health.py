"""Per-layer weight and gradient health over training, and held-out ISBI accuracy.

One run trains one model with ``napari_fcres.training`` (the library's own loop)
for a fixed number of epochs, so one-factor-at-a-time comparisons get the same
number of optimisation steps whatever else shares the CPU.  Every
``--probe-every`` steps it records, per convolution, the RMS of the weights and
of their gradients.  It keeps two snapshots, the best validation Dice and the
best validation V_rand, and scores both on the held-out slices (ISBI protocol,
with and without 8-fold TTA).  It ends with the conv layers of the kept
``best.pt`` whose mean |w| is below 1e-6 ("dead").

    python benchmarks/training_health.py --data isbi --epochs 25 --threads 1 \\
        --set model.init=glorot --set train.weight_decay_mode=decoupled \\
        --out benchmarks/results/health/glorot_decoupled

``--set`` takes dotted config keys with YAML values (``augment.rotation=0``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_fcres.inference import predict
from napari_fcres.metrics import isbi_scores
from napari_fcres.models import count_parameters
from napari_fcres.training import _MemberRun, prepare_data

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ISBI_FOREGROUND,
    dotted_overrides,
    load_config,
    load_isbi,
    load_sample,
    parse_slices,
    set_torch_threads,
)

log = logging.getLogger("training_health")
DEAD = 1e-6


def load(data: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Image, labels and the foreground value."""
    if data == "isbi":
        image, labels = load_isbi()
        return image, labels, ISBI_FOREGROUND
    img, lab = load_sample()
    return img, lab, int(lab.max())


def conv_stats(model: torch.nn.Module, with_grad: bool) -> dict[str, dict[str, float]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach()
            s = {"w_rms": float(w.pow(2).mean().sqrt()), "w_abs": float(w.abs().mean())}
            if with_grad and m.weight.grad is not None:
                s["g_rms"] = float(m.weight.grad.detach().pow(2).mean().sqrt())
            out[name] = s
    return out


def score(model: torch.nn.Module, image: np.ndarray, labels: np.ndarray, fg: int,
          tta: bool) -> dict[str, Any]:
    probs = predict(model, image, tile_size=512, tta=tta, device="cpu").probabilities
    s = isbi_scores(probs, (labels == fg).astype(np.uint8), foreground_value=1)
    dice_fg = float(2 * ((probs > 0.5) & (labels == fg)).sum()
                    / max((probs > 0.5).sum() + (labels == fg).sum(), 1))
    return {"v_rand": s["v_rand"], "v_info": s["v_info"], "dice": dice_fg,
            "v_rand_per_slice": s["v_rand_per_slice"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_torch_threads(args.threads)
    image, labels, fg = load(args.data)
    train_idx, test_idx = parse_slices(args.train_slices), parse_slices(args.test_slices)
    raw = dotted_overrides(args.set)
    raw.setdefault("train", {})
    raw["train"].update({"epochs": args.epochs, "device": "cpu", "seed": args.seed})
    raw["train"].setdefault("patience_steps", 0)
    raw["train"].setdefault("loss", "dice")  # the recipe under study, whatever the slice count
    raw.setdefault("augment", {}).setdefault("intensity", 0.0)
    raw.setdefault("data", {})["foreground_value"] = fg
    cfg = load_config(overrides=raw, preset=args.preset)
    data = prepare_data(image[train_idx], labels[train_idx], cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = _MemberRun(cfg, data, out / "member_00", 0, torch.device("cpu"), False, None, None)
    # score both selection rules on held-out data: force V_rand scoring during validation
    runner.metric = "v_rand"
    model = runner.model
    probes: list[dict[str, Any]] = [{"step": 0, "layers": conv_stats(model, False)}]
    initial = probes[0]["layers"]
    snaps: dict[str, tuple[float, int, dict]] = {}
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for p in runner.run(None):
        if p.kind == "step" and (p.step % args.probe_every == 0 or p.step == 1):
            probes.append({"step": p.step, "loss": p.loss, "layers": conv_stats(model, True)})
        if p.kind == "validation":
            h = runner.history[-1]
            history.append(h)
            for key, val in (("dice", h["val_dice"]), ("v_rand", h.get("val_v_rand"))):
                if val is not None and (key not in snaps or val > snaps[key][0]):
                    snaps[key] = (val, p.epoch, copy.deepcopy(model.state_dict()))
            log.info("epoch %d step %d loss %.4f val dice %.4f val v_rand %.4f (%.0f s)",
                     p.epoch, p.step, p.loss, h["val_dice"], h.get("val_v_rand", math.nan),
                     time.perf_counter() - t0)
    train_s = time.perf_counter() - t0
    final = conv_stats(model, False)
    dead = [n for n, s in final.items() if s["w_abs"] < DEAD]
    shrunk = [n for n, s in final.items() if s["w_rms"] < 0.1 * initial[n]["w_rms"]]
    last_probe = probes[-1]["layers"]
    deepest_g = {n: s.get("g_rms") for n, s in last_probe.items()
                 if n.startswith(("preprocessor.across", "unet.across", "preprocessor.down.3",
                                  "unet.down.3"))}
    report: dict[str, Any] = {
        "config": cfg.to_dict(), "args": vars(args), "train_seconds": train_s,
        "steps": runner.step, "params": count_parameters(model), "history": history,
        "dead_convs": dead, "shrunk_convs": shrunk, "deepest_grad_rms": deepest_g,
        "probes": probes, "test": {},
    }
    test_img, test_lab = image[test_idx], labels[test_idx]
    for key, (val, epoch, state) in snaps.items():
        model.load_state_dict(state)
        model.eval()
        for tta in (False, True) if args.tta else (False,):
            name = f"best_{key}" + ("_tta" if tta else "")
            r = score(model, test_img, test_lab, fg, tta)
            r.update({"val": val, "epoch": epoch})
            report["test"][name] = r
            log.info("%s (epoch %d, val %.4f): test V_rand %.4f V_info %.4f dice %.4f",
                     name, epoch, val, r["v_rand"], r["v_info"], r["dice"])
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def summary_line(report: dict[str, Any]) -> str:
    t = report["test"]
    cells = [f"{t[k]['v_rand']:.3f}" if k in t else "-" for k in
             ("best_dice", "best_v_rand", "best_dice_tta", "best_v_rand_tta")]
    return (f"| {report['args']['label']} | {report['steps']} | {len(report['dead_convs'])} | "
            + " | ".join(cells) + f" | {report['train_seconds'] / 60:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("isbi", "sample"), default="isbi")
    p.add_argument("--train-slices", default="0-19")
    p.add_argument("--test-slices", default="20-29")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument("--tta", action="store_true", help="also score with 8-fold TTA")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--label", default=None, help="row name in the summary line")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.label = args.label or Path(args.out).name
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    report = run(args)
    log.info("dead convs (mean |w| < %g): %d %s", DEAD, len(report["dead_convs"]),
             report["dead_convs"])
    log.info("convs below a tenth of their initial RMS: %d", len(report["shrunk_convs"]))
    log.info("deepest-level gradient RMS at the end: %s", report["deepest_grad_rms"])
    print(summary_line(report))  # noqa: T201 (the table row is the script's output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
