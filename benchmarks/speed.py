"""Speed and memory of training and prediction (issue section 3).

Parts (the positional argument; ``all`` runs the three):

``train``
    Images/s of full training steps on 256x256 crops for the presets tiny, cpu (batch 4),
    small and paper (batch 2).  A step is the library's own ``_MemberRun._train_step``:
    draw and augment a batch of crops from the embedded synthetic EM stack, forward,
    batch Dice loss, backward, RMSprop step, learning-rate schedule step (on CUDA with
    the bf16 autocast and channels_last that training uses there).  Warm-up steps are not
    timed; each repeat times enough steps to last about ``--train-repeat-s`` seconds.
    ``--history CKPT`` adds the time a finished run took to reach a validation Dice of
    0.90 / 0.93 / 0.95, read from the metric history its checkpoints store.
``infer``
    Megapixels/s of :func:`napari_fcres.inference.predict` on a random float32 image with
    random weights (speed does not depend on them): one model, an ensemble and 8-fold
    TTA, and side by side in the same run a naive per-tile loop over the same tiles and
    blending (batch 1, contiguous memory format, ``torch.no_grad`` only, fp32), plus
    ``predict`` with channels_last off and with batch size 1.  Speed-ups are medians of
    per-repeat ratios; the light cases are interleaved within each repeat.
``memory``
    Peak RSS of ``predict`` on uint16 square images (1k .. 16k), each size in a fresh
    subprocess through ``benchmarks/predict_memory.py``.  Memory of tiled prediction
    depends on the tile, batch and architecture, not on the weights, so the ``tiny``
    preset (default) keeps the 16k run affordable on a CPU.

Results go to ``OUT/results.json`` and ``OUT/results.md``, with the machine stated.  A
single part updates its own section of an existing ``results.json`` (memory rows measured
with the same settings merge by size), so parts can be run one at a time.  On
a CUDA machine train/infer also run on the GPU (bf16 autocast) and rows carry the card's
name.  ``--quick`` runs every part end to end on tiny settings; its numbers mean nothing.

    python benchmarks/speed.py all                    # full run
    python benchmarks/speed.py --quick all --out /tmp/speed
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("speed")

PARTS = ("train", "infer", "memory")
TRAIN_PRESETS = ("tiny", "cpu", "small", "paper")
TRAIN_BATCH = {"tiny": 4, "cpu": 4, "small": 2, "paper": 2}
DICE_LEVELS = (0.90, 0.93, 0.95)
MEMORY_SIZES = (1024, 4096, 8192, 16384)
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # loaded by file path (the tests)
    sys.path.insert(0, str(HERE))
from _common import load_sample, set_torch_threads  # noqa: E402

# A forked child's ru_maxrss starts at its parent's resident size (Linux keeps the pre-exec
# high-water mark), and this process holds torch and trained models.  The memory workers are
# therefore started by a small relay process, so their peak is their own.
_RELAY = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


# ----------------------------------------------------------------------------- helpers


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Median, min and max of repeated measurements."""
    vals = [float(v) for v in values]
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _release(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The machine the numbers come from."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import napari_fcres

        info["napari_fcres"] = getattr(napari_fcres, "__version__", "?")
    except ImportError:  # pragma: no cover - the benchmark needs the package anyway
        pass
    if torch.cuda.is_available():
        info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        info["gpu"] = "no GPU on this machine"
    return info


def resolve_devices(name: str) -> list[torch.device]:
    """``auto``: the CPU plus the GPU when there is one; ``cpu`` / ``cuda``: only that one."""
    if name == "cpu":
        return [torch.device("cpu")]
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available on this machine")
        return [torch.device("cuda")]
    devs = [torch.device("cpu")]
    if torch.cuda.is_available():
        devs.append(torch.device("cuda"))
    return devs


def device_label(dev: torch.device) -> str:
    """The card's name for a GPU, the CPU model and thread count otherwise."""
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA)"
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------- train


def bench_train(
    devices: Sequence[torch.device],
    presets: Sequence[str],
    repeats: int,
    repeat_s: float,
    warmup: int,
    crop: int = 256,
) -> list[dict[str, Any]]:
    """Images/s of full training steps (``_MemberRun._train_step``) per preset and device."""
    from napari_fcres.config import preset_config
    from napari_fcres.training import _MemberRun, prepare_data, replace_train

    image, labels = load_sample()
    rows: list[dict[str, Any]] = []
    for dev in devices:
        for preset in presets:
            batch = TRAIN_BATCH.get(preset, 2)
            cfg = replace_train(preset_config(preset), batch_size=batch, crop_size=crop,
                                device=str(dev))
            data = prepare_data(image, labels, cfg)
            with tempfile.TemporaryDirectory() as tmp:
                run = _MemberRun(cfg, data, Path(tmp) / "member_00", 0, dev, False, None, None)
            run._set_train_mode()
            log.info("train %s on %s: batch %d of %dx%d, %d warm-up step(s)",
                     preset, dev, batch, crop, crop, warmup)
            step_s = 0.0
            for _ in range(max(1, warmup)):
                t0 = time.perf_counter()
                run._train_step()
                step_s = time.perf_counter() - t0
            n_steps = max(1, min(50, math.ceil(repeat_s / max(step_s, 1e-6))))
            step_times: list[float] = []
            for r in range(repeats):
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(n_steps):
                    run._train_step()  # returns float(loss): synchronises on CUDA
                step_times.append((time.perf_counter() - t0) / n_steps)
                log.info("  repeat %d/%d: %.3f s/step", r + 1, repeats, step_times[-1])
            # the data part of a step alone (crop sampling + augmentation, on the CPU)
            t0 = time.perf_counter()
            for _ in range(n_steps):
                run.sampler.sample(batch)
            sample_s = (time.perf_counter() - t0) / n_steps
            s = summarize(step_times)
            rows.append({
                "device": dev.type,
                "device_name": device_label(dev),
                "preset": preset,
                "batch": batch,
                "crop": crop,
                "bf16_autocast": bool(run.amp),
                "channels_last": bool(run.channels_last),
                "steps_per_repeat": n_steps,
                "seconds_per_step": s,
                "images_per_s": {
                    "median": batch / s["median"], "min": batch / s["max"],
                    "max": batch / s["min"], "n": s["n"],
                },
                "crop_sampling_s_per_step": sample_s,
            })
            log.info("  %s on %s: %.2f images/s (median %.3f s/step, crops+augment %.3f s)",
                     preset, dev, batch / s["median"], s["median"], sample_s)
            del run, data
            _release(dev)
    return rows


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.glob("**/last.pt")) or sorted(path.glob("**/best.pt"))
        if not found:
            raise SystemExit(f"--history: no last.pt or best.pt under {path}")
        return found
    if not path.exists():
        raise SystemExit(f"--history: {path} does not exist")
    return [path]


def time_to_dice(
    path: str | Path,
    train_rows: Sequence[dict[str, Any]] = (),
    levels: Sequence[float] = DICE_LEVELS,
) -> list[dict[str, Any]]:
    """First elapsed time at which each member's validation Dice reached each level.

    ``history`` entries of a checkpoint hold ``epoch``, ``step``, ``val_dice`` and
    ``elapsed_s`` (wall time from the start of training to the end of that epoch's last
    step, earlier validations included; it accumulates over resumed sessions).  Where
    the time is missing, it is estimated as steps x the measured seconds per step of the
    checkpoint's preset (or the checkpoint's own mean step time) and labelled so.
    ``last.pt`` holds the whole history; ``best.pt`` only up to the best epoch.
    """
    from napari_fcres.checkpoint import read_checkpoint

    out = []
    for f in _checkpoint_files(Path(path)):
        ck = read_checkpoint(f)
        cfg = ck.get("config", {})
        preset = ck.get("preset") or cfg.get("model", {}).get("preset", "?")
        batch = cfg.get("train", {}).get("batch_size")
        history = list(ck.get("history", []))
        timed = bool(history) and all("elapsed_s" in h for h in history)
        step_s = None
        source = "elapsed_s stored in the history"
        if not timed:
            measured = [r for r in train_rows if r["preset"] == preset and r["device"] == "cpu"]
            if measured and batch:
                step_s = measured[0]["seconds_per_step"]["median"] * batch / measured[0]["batch"]
                source = (f"estimated: steps x {step_s:.3f} s/step measured here for "
                          f"{preset} (scaled to batch {batch})")
            elif ck.get("step"):
                step_s = float(ck.get("elapsed_s", 0.0)) / int(ck["step"])
                source = "estimated: steps x the checkpoint's mean seconds per step"
            else:
                source = "no timing available"
        reached: dict[str, Any] = {}
        for level in levels:
            hit = next((h for h in history if float(h.get("val_dice", -1)) >= level), None)
            if hit is None:
                reached[f"{level:.2f}"] = None
                continue
            if timed:
                seconds = float(hit["elapsed_s"])
            elif step_s is not None:
                seconds = int(hit.get("step", 0)) * step_s
            else:
                seconds = None
            reached[f"{level:.2f}"] = {
                "seconds": seconds, "epoch": hit.get("epoch"), "step": hit.get("step"),
                "val_dice": float(hit["val_dice"]),
            }
        best = max((float(h.get("val_dice", -1)) for h in history), default=None)
        out.append({
            "checkpoint": str(f), "preset": preset,
            "architecture": ck.get("architecture", cfg.get("model", {}).get("architecture")),
            "device": cfg.get("train", {}).get("device"), "batch": batch,
            "epochs_in_history": len(history), "best_val_dice": best,
            "total_elapsed_s": ck.get("elapsed_s"), "time_source": source,
            "reached": reached,
        })
        log.info("history %s: %s", f, {k: (v or {}).get("seconds") for k, v in reached.items()})
    return out


# ----------------------------------------------------------------------------- infer


def naive_predict(
    model: torch.nn.Module, image: np.ndarray, tile_size: int, overlap: int,
    device: torch.device,
) -> np.ndarray:
    """The baseline: the same tiles, blending and shared per-image batch-norm statistics as
    ``predict``, one tile at a time.

    Batch 1, default (contiguous) memory format, fp32, ``torch.no_grad`` only (no
    ``inference_mode``, no channels_last, no autocast).
    """
    from contextlib import nullcontext

    from napari_fcres.inference import _Grid
    from napari_fcres.models.norm import SharedImageStatistics

    was_training = model.training
    model.to(device=device, memory_format=torch.contiguous_format)
    model.train(False)
    h, w = image.shape
    grid = _Grid.build(h, w, min(tile_size, max(h, w)), overlap,
                       int(getattr(model, "size_divisor", 1)))
    acc = np.zeros((h, w), dtype=np.float32)

    def tile(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        t = np.ascontiguousarray(image[r0:r1, c0:c1], dtype=np.float32)
        return torch.from_numpy(t)[None, None].to(device)

    stats = SharedImageStatistics(model)
    shared = nullcontext()
    try:
        if stats and grid.n_tiles > 1:
            with stats.collecting(), torch.no_grad():
                for r0, r1 in grid.rows:
                    for c0, c1 in grid.cols:
                        model(tile(r0, r1, c0, c1))
            shared = stats.shared()
        with shared:
            for i, (r0, r1) in enumerate(grid.rows):
                for j, (c0, c1) in enumerate(grid.cols):
                    with torch.no_grad():
                        p = torch.sigmoid(model(tile(r0, r1, c0, c1)).float())[0, 0].cpu().numpy()
                    wgt = grid.row_win[i][:, None] * grid.col_win[j][None, :]
                    acc[r0:r1, c0:c1] += wgt * p
        grid.divide(acc)
    finally:
        model.train(was_training)
    return acc


def _n_tiles(shape: tuple[int, int], tile: int, overlap: int, divisor: int) -> int:
    from napari_fcres.inference import _Grid

    h, w = shape
    return _Grid.build(h, w, min(tile, max(h, w)), overlap, divisor).n_tiles


def _infer_cases(
    models: list[torch.nn.Module], image: np.ndarray, dev: torch.device, tile: int,
    overlap: int, batch: int,
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """The timed inference cases on one device: light ones and heavy ones."""
    from napari_fcres.inference import predict

    common = {"tile_size": tile, "overlap": overlap, "device": dev}
    one = models[0]
    light: dict[str, Callable[[], Any]] = {
        "predict (defaults)": partial(predict, one, image, batch_size=batch, **common),
        "naive per-tile loop": partial(naive_predict, one, image, tile, overlap, dev),
        "predict, channels_last off": partial(predict, one, image, batch_size=batch,
                                              channels_last=False, **common),
        "predict, batch 1": partial(predict, one, image, batch_size=1, **common),
    }
    if dev.type == "cuda":
        light["predict, fp32 (no bf16)"] = partial(predict, one, image, batch_size=batch,
                                                   amp=False, **common)
    heavy: dict[str, Callable[[], Any]] = {
        f"ensemble of {len(models)}": partial(predict, models, image, batch_size=batch,
                                              **common),
        "TTA x8 (single model)": partial(predict, one, image, batch_size=batch, tta=True,
                                         **common),
    }
    return light, heavy


def _probabilities(out: Any) -> np.ndarray:
    return out if isinstance(out, np.ndarray) else out.probabilities


def bench_infer(
    devices: Sequence[torch.device],
    preset: str,
    size: int,
    tile: int,
    overlap: int,
    batch: int,
    repeats: int,
    heavy_repeats: int,
    ensemble: int,
) -> dict[str, Any]:
    """Megapixels/s of predict (single, ensemble, TTA) and of the naive per-tile loop."""
    from napari_fcres.config import preset_config
    from napari_fcres.models import build_model

    rng = np.random.default_rng(0)
    image = (rng.random((size, size), dtype=np.float32) * 255.0).astype(np.float32)
    models = []
    for k in range(ensemble):
        torch.manual_seed(k)
        models.append(build_model(preset_config(preset).model))
    divisor = int(models[0].size_divisor)
    n_tiles = _n_tiles(image.shape, tile, overlap, divisor)
    mpx = size * size / 1e6
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    equivalence: dict[str, float] = {}
    for dev in devices:
        amp_default = dev.type == "cuda"
        light, heavy = _infer_cases(models, image, dev, tile, overlap, batch)
        work = {name: 1 for name in light}
        work[f"ensemble of {ensemble}"] = ensemble
        work["TTA x8 (single model)"] = 8
        log.info("infer %s on %s: %dx%d float32, %d tiles of %d (overlap %d), batch %d",
                 preset, dev, size, size, n_tiles, tile, overlap, batch)
        times: dict[str, list[float]] = {name: [] for name in [*light, *heavy]}
        # warm-up (one-off kernel / primitive creation); equivalence of naive and ours
        outs = {}
        for name in ("predict (defaults)", "naive per-tile loop"):
            outs[name] = _probabilities(light[name]())
        equivalence[dev.type] = float(np.abs(outs["predict (defaults)"]
                                             - outs["naive per-tile loop"]).max())
        del outs
        if dev.type == "cuda":
            for fn in [*light.values(), *heavy.values()]:
                fn()
        for r in range(repeats):
            for name, fn in light.items():
                _sync(dev)
                t0 = time.perf_counter()
                fn()
                _sync(dev)
                times[name].append(time.perf_counter() - t0)
            log.info("  repeat %d/%d: %s", r + 1, repeats,
                     ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items() if v))
        for r in range(heavy_repeats):
            for name, fn in heavy.items():
                _sync(dev)
                t0 = time.perf_counter()
                fn()
                _sync(dev)
                times[name].append(time.perf_counter() - t0)
            log.info("  heavy repeat %d/%d: %s", r + 1, heavy_repeats,
                     ", ".join(f"{n} {times[n][-1]:.2f} s" for n in heavy))
        for name, ts in times.items():
            s = summarize(ts)
            bf16 = amp_default and name not in ("naive per-tile loop", "predict, fp32 (no bf16)")
            rows.append({
                "device": dev.type, "device_name": device_label(dev), "preset": preset,
                "case": name, "image": f"{size}x{size}", "tiles": n_tiles,
                "forward_passes": n_tiles * work[name], "bf16_autocast": bf16,
                "seconds": s,
                "megapixels_per_s": {"median": mpx / s["median"], "min": mpx / s["max"],
                                     "max": mpx / s["min"], "n": s["n"]},
                "tiles_per_s": n_tiles * work[name] / s["median"],
            })
            log.info("  %-28s %.3f Mpx/s (median of %d)", name, mpx / s["median"], s["n"])
        base = times["predict (defaults)"]
        for name, label in (
            ("naive per-tile loop", "predict defaults vs naive per-tile loop"),
            ("predict, channels_last off", "channels_last on vs off"),
            ("predict, batch 1", f"batch {batch} vs batch 1"),
            ("predict, fp32 (no bf16)", "bf16 autocast vs fp32"),
        ):
            if name not in times:
                continue
            per_repeat = [o / b for o, b in zip(times[name], base)]
            ratios.append({"device": dev.type, "device_name": device_label(dev),
                           "comparison": label, "speedup": summarize(per_repeat)})
            log.info("  speed-up %s: %.2fx", label, statistics.median(per_repeat))
        for m in models:
            m.to("cpu")
        _release(dev)
    return {
        "settings": {"preset": preset, "image": f"{size}x{size} float32", "tile": tile,
                     "overlap": overlap, "batch": batch, "ensemble": ensemble,
                     "repeats": repeats, "heavy_repeats": heavy_repeats,
                     "naive": "per-tile python loop, batch 1, contiguous format, fp32, "
                              "torch.no_grad, same tiles and blending as predict"},
        "rows": rows,
        "speedups": ratios,
        "naive_vs_predict_max_abs_diff": equivalence,
    }


# ----------------------------------------------------------------------------- memory


def bench_memory(
    sizes: Sequence[int], preset: str, tile: int, overlap: int, batch: int, threads: int,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Peak RSS of predict per uint16 image size, each in a fresh predict_memory.py worker."""
    script = HERE / "predict_memory.py"
    rows = []
    for size in sizes:
        cmd = [sys.executable, "-c", _RELAY, sys.executable, str(script), "--worker",
               "--size", str(size), "--preset", preset,
               "--tile-size", str(tile), "--overlap", str(overlap), "--batch-size", str(batch),
               "--device", "cpu", "--threads", str(threads)]
        if checkpoint:
            cmd += ["--checkpoint", checkpoint]
        log.info("memory %dx%d (%s, fresh process) ...", size, size, preset)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker for size {size} failed:\n{proc.stderr[-2000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        input_mib = size * size * 2 / 2**20
        output_mib = size * size * 4 / 2**20
        row.update({
            "input_uint16_mib": round(input_mib, 1),
            "output_float32_mib": round(output_mib, 1),
            "peak_minus_arrays_mib": round(row["peak_rss_mib"] - input_mib - output_mib, 1),
            "tiled": size > tile,
            "process_wall_s": round(time.perf_counter() - t0, 1),
        })
        rows.append(row)
        log.info("  peak RSS %.1f MiB = input %.0f + output %.0f + %.1f MiB (predict %.1f s)",
                 row["peak_rss_mib"], input_mib, output_mib, row["peak_minus_arrays_mib"],
                 row["seconds"])
    return {
        "settings": {"preset": preset, "tile": tile, "overlap": overlap, "batch": batch,
                     "device": "cpu", "image": "random uint16, square",
                     "note": "memory of tiled prediction depends on tile, batch and "
                             "architecture, not on the weights; ru_maxrss of a fresh process "
                             "includes the interpreter and torch"},
        "rows": rows,
        "tiled_spread_mib": _spread(rows),
    }


# ----------------------------------------------------------------------------- report


def _fmt(s: dict[str, Any] | None, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, n={s['n']})"


def render_markdown(results: dict[str, Any]) -> str:
    """Human-readable tables of ``results``."""
    m = results["machine"]
    lines = ["# Speed and memory", ""]
    if results.get("quick"):
        lines += ["**--quick run: tiny settings, the numbers mean nothing.**", ""]
    gpu = m["gpu"] if isinstance(m["gpu"], str) else ", ".join(m["gpu"])
    lines += [
        f"- CPU: {m['cpu']}, {m['cpu_cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} threads",
        f"- GPU: {gpu}",
        f"- Python {m['python']}, {m['platform']}",
    ]
    for run in results.get("runs", []):
        lines.append(f"- Run `{run['command']}` ({', '.join(run['parts'])}): "
                     f"{run['wall_s']:.0f} s, load average {run['load_average_at_start']} at "
                     f"start, {run['load_average_at_end']} at end")
    lines += [
        "- Figures: median (min-max, n repeats). CPU timings on a shared machine: trust "
        "the ratios and medians, not single runs.",
        "",
    ]
    if "train" in results:
        lines += ["## Training throughput (256x256 crops)", "",
                  "One step = crop sampling + augmentation, forward, batch Dice loss, backward, "
                  "RMSprop and schedule step (`_MemberRun._train_step`).", "",
                  "| device | preset | batch | bf16 | images/s | s/step | crops+augment s/step |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["train"]:
            lines.append(f"| {r['device_name']} | {r['preset']} | {r['batch']} | "
                         f"{'yes' if r['bf16_autocast'] else 'no'} | {_fmt(r['images_per_s'])} "
                         f"| {_fmt(r['seconds_per_step'], 3)} | "
                         f"{r['crop_sampling_s_per_step']:.3f} |")
        lines.append("")
    if "time_to_dice" in results:
        lines += ["## Time to reach a validation Dice", ""]
        ttd = results["time_to_dice"]
        if isinstance(ttd, str):
            lines += [ttd, ""]
        else:
            heads = [f"Dice {lv:.2f}" for lv in DICE_LEVELS]
            lines += ["| checkpoint | preset | best Dice | " + " | ".join(heads) + " | timing |",
                      "|---|---|---|" + "---|" * len(heads) + "---|"]
            for r in ttd:
                cells = []
                for lv in DICE_LEVELS:
                    hit = r["reached"].get(f"{lv:.2f}")
                    if hit is None:
                        cells.append("not reached")
                    elif hit["seconds"] is None:
                        cells.append(f"epoch {hit['epoch']}")
                    else:
                        cells.append(f"{hit['seconds'] / 60:.1f} min (epoch {hit['epoch']})")
                best = "-" if r["best_val_dice"] is None else f"{r['best_val_dice']:.4f}"
                lines.append(f"| {r['checkpoint']} | {r['preset']} | {best} | "
                             + " | ".join(cells) + f" | {r['time_source']} |")
            lines.append("")
    if "infer" in results:
        inf = results["infer"]
        st = inf["settings"]
        lines += ["## Inference throughput", "",
                  f"{st['preset']} preset, random weights, {st['image']}, tiles {st['tile']} "
                  f"overlap {st['overlap']}, batch {st['batch']}. Naive: {st['naive']}.", "",
                  "| device | case | bf16 | Mpx/s | seconds | tiles | tile forwards/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in inf["rows"]:
            lines.append(f"| {r['device_name']} | {r['case']} | "
                         f"{'yes' if r['bf16_autocast'] else 'no'} | "
                         f"{_fmt(r['megapixels_per_s'], 3)} | {_fmt(r['seconds'])} | "
                         f"{r['tiles']} | {r['tiles_per_s']:.2f} |")
        lines += ["", "| device | speed-up | ratio of times |", "|---|---|---|"]
        for r in inf["speedups"]:
            lines.append(f"| {r['device_name']} | {r['comparison']} | {_fmt(r['speedup'])} |")
        diffs = ", ".join(f"{k}: {v:.2e}" for k, v in inf["naive_vs_predict_max_abs_diff"].items())
        lines += ["", f"Max |naive - predict| probability difference: {diffs}.", ""]
    if "memory" in results:
        mem = results["memory"]
        st = mem["settings"]
        lines += ["## Peak resident memory of prediction", "",
                  f"{st['preset']} preset, {st['image']}, tiles {st['tile']} overlap "
                  f"{st['overlap']}, batch {st['batch']}, on the {st['device']}; each size in a "
                  f"fresh process. {st['note']}.", "",
                  "| image | tiled | input MiB | output MiB | peak RSS MiB | peak - arrays MiB "
                  "| predict s |", "|---|---|---|---|---|---|---|"]
        for r in mem["rows"]:
            lines.append(f"| {r['size']}x{r['size']} | {'yes' if r['tiled'] else 'no'} | "
                         f"{r['input_uint16_mib']:.0f} | {r['output_float32_mib']:.0f} | "
                         f"{r['peak_rss_mib']:.1f} | {r['peak_minus_arrays_mib']:.1f} | "
                         f"{r['seconds']:.1f} |")
        if mem["tiled_spread_mib"] is not None:
            lines += ["", "Spread of (peak - input - output) over the tiled sizes: "
                          f"{mem['tiled_spread_mib']:.1f} MiB."]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _previous_results(out: Path, part: str, quick: bool) -> dict[str, Any] | None:
    """An earlier results.json to update: only for a single part and the same --quick."""
    path = out / "results.json"
    if part == "all" or not path.is_file():
        return None
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(prev, dict) or prev.get("quick") != quick or "runs" not in prev:
        return None
    log.info("updating the %s section of %s", part, path)
    return prev


def merge_memory(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Add ``new`` memory rows to earlier ones measured with the same settings."""
    if not previous or previous.get("settings") != new["settings"]:
        return new
    by_size = {r["size"]: r for r in previous["rows"]}
    by_size.update({r["size"]: r for r in new["rows"]})
    rows = [by_size[k] for k in sorted(by_size)]
    return {**new, "rows": rows, "tiled_spread_mib": _spread(rows)}


def _spread(rows: Sequence[dict[str, Any]]) -> float | None:
    tiled = [r["peak_minus_arrays_mib"] for r in rows if r["tiled"]]
    return round(max(tiled) - min(tiled), 1) if tiled else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", nargs="?", default="all", choices=(*PARTS, "all"))
    p.add_argument("--quick", action="store_true",
                   help="tiny settings end to end (exercises the code; numbers mean nothing)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: the CPU, plus the GPU when CUDA is available")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median, min, max)")
    p.add_argument("--heavy-repeats", type=int, default=3,
                   help="repeats of the ensemble and TTA inference cases")
    p.add_argument("--out", type=Path, default=HERE / "results" / "speed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--presets", nargs="+", default=list(TRAIN_PRESETS), choices=TRAIN_PRESETS,
                   help="training presets to time")
    p.add_argument("--train-repeat-s", type=float, default=2.0,
                   help="each training repeat times enough steps to last about this long")
    p.add_argument("--history", default=None,
                   help="checkpoint (or run folder) of a finished run: time to reach Dice")
    p.add_argument("--infer-preset", default="cpu")
    p.add_argument("--infer-size", type=int, default=0,
                   help="square image side (0: 1024 on the CPU, 2048 when a GPU is measured)")
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="predict's tile batch size")
    p.add_argument("--ensemble", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=list(MEMORY_SIZES),
                   help="memory: square image sides")
    p.add_argument("--memory-preset", default="tiny")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    set_torch_threads(args.threads)
    parts = PARTS if args.part == "all" else (args.part,)
    args.repeats, args.heavy_repeats = max(1, args.repeats), max(1, args.heavy_repeats)
    devices = resolve_devices(args.device)
    if args.quick:
        args.presets = ["tiny"]
        args.repeats, args.heavy_repeats = min(args.repeats, 2), 1
        args.train_repeat_s = 0.0
        args.infer_preset, args.ensemble = "tiny", 2
        args.infer_size = args.infer_size or 192
        args.tile_size, args.overlap = 128, 32
        args.sizes = [s for s in args.sizes if s <= 512] or [192, 320]
        args.memory_preset = "tiny"
    if not args.infer_size:
        args.infer_size = 2048 if any(d.type == "cuda" for d in devices) else 1024
    start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    previous = _previous_results(args.out, args.part, bool(args.quick))
    results: dict[str, Any] = dict(previous or {})
    results.update({"machine": machine_info(), "quick": bool(args.quick)})
    runs = list(results.get("runs", []))
    if not torch.cuda.is_available():
        results["gpu_note"] = "no GPU on this machine: CPU figures only"
    elif args.device == "cpu":
        results["gpu_note"] = "a GPU is present but --device cpu skipped it"
    else:
        results.pop("gpu_note", None)
    if "train" in parts:
        results["train"] = bench_train(devices, args.presets, 1 if args.quick else args.repeats,
                                       args.train_repeat_s, warmup=1 if args.quick else 2)
        if args.history:
            results["time_to_dice"] = time_to_dice(args.history, results["train"])
        else:
            results["time_to_dice"] = ("not measured: pass --history CHECKPOINT_OR_RUN_FOLDER "
                                       "of a finished training run")
    if "infer" in parts:
        results["infer"] = bench_infer(devices, args.infer_preset, args.infer_size,
                                       args.tile_size, args.overlap, args.batch_size,
                                       args.repeats, args.heavy_repeats, args.ensemble)
    if "memory" in parts:
        memory = bench_memory(args.sizes, args.memory_preset, args.tile_size,
                              args.overlap, args.batch_size, args.threads)
        results["memory"] = merge_memory(results.get("memory"), memory)
    runs.append({
        "command": " ".join([Path(sys.argv[0]).name,
                             *(argv if argv is not None else sys.argv[1:])]),
        "parts": list(parts),
        "devices": [device_label(d) for d in devices],
        "wall_s": round(time.perf_counter() - start, 1),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    })
    results["runs"] = runs
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(render_markdown(results))
    log.info("wrote %s and %s (%.0f s)", args.out / "results.json", args.out / "results.md",
             runs[-1]["wall_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
