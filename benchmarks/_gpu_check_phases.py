"""The phases of ``benchmarks/gpu_check.py``, each run in a process of its own.

``python benchmarks/_gpu_check_phases.py SPEC.json`` runs the phase the spec names:

``train``
    Train one row (a preset with the ``fcres train`` defaults) on the training slices with
    napari_fcres's own loop, then score the held-out slices, single model and with TTA.
``predict``
    Time :func:`napari_fcres.inference.predict` on a large mosaic of held-out slices in fp32,
    with bf16 autocast (AMP) and with channels_last off; compare their probabilities; then
    run the Predict widget's job in the widgets' worker process and check that the GPU
    memory it held comes back when the process ends.
``ddp``
    One DDP training step (run under ``torchrun``: NCCL on CUDA, gloo on the CPU), every
    rank writing its own result file.

A phase writes its results to ``spec["result"]`` (atomically) after every stage and during
training every few seconds, so a phase killed at its deadline leaves what it had.  Only
torch, numpy, scipy, scikit-image, tifffile and pyyaml are imported, through napari_fcres:
the GPU machine has nothing else (no SimpleITK, napari, Qt, pooch, zarr or dask).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("gpu_check")

#: ISBI 2012 labels: 255 = cell interior (foreground), 0 = membrane.
FOREGROUND = 255
#: The result file of a training row is rewritten at most this often while it trains.
SAVE_EVERY_S = 10.0
#: Dry runs use crops of this side, so every stage takes a second or two.
DRY_CROP = 64


# ----------------------------------------------------------------------------- files


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2))
    os.replace(tmp, path)


def remaining(spec: dict[str, Any]) -> float:
    """Seconds left before the phase's deadline (wall clock, as the parent set it)."""
    return float(spec["deadline"]) - time.time()


# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    """Training and held-out slices (labels: 255 = cell interior)."""

    train_image: np.ndarray
    train_labels: np.ndarray
    test_image: np.ndarray
    test_labels: np.ndarray
    train_slices: list[int]
    test_slices: list[int]
    source: str


def read_isbi(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``train-volume.tif`` and ``train-labels.tif`` of an ISBI 2012 folder (30 x 512 x 512)."""
    import tifffile

    from napari_fcres.errors import InputError

    folder = Path(folder)
    paths = [folder / "train-volume.tif", folder / "train-labels.tif"]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"ISBI folder {str(folder)!r} lacks {', '.join(missing)}")
    image, labels = (tifffile.imread(p) for p in paths)
    if image.shape != labels.shape or image.ndim != 3 or image.shape[0] < 30:
        raise InputError(f"ISBI volume {image.shape} and labels {labels.shape} must be "
                         "two stacks of the same shape with 30 slices")
    return image, labels


def load_split(data: dict[str, Any]) -> Split:
    """Slices 0-19 / 20-29 of ISBI; a dry run takes 64 x 64 crops of a few slices.

    A dry run without an ISBI folder uses the shipped synthetic EM stack (slices 0-3 /
    4-5); with one, slices 0-3 / 20-21 of ISBI.
    """
    isbi, dry = data.get("isbi"), bool(data.get("dry_run"))
    if isbi:
        image, labels = read_isbi(isbi)
        train, test = list(range(20)), list(range(20, 30))
        source = f"ISBI 2012 train volume ({isbi})"
        if dry:
            train, test = train[:4], test[:2]
    else:
        from napari_fcres.sample_data import load_sample_stack

        image, labels = load_sample_stack()
        train, test = [0, 1, 2, 3], [4, 5]
        source = "synthetic sample stack (napari_fcres.sample_data)"
    if dry:
        y0 = image.shape[1] // 2 - DRY_CROP // 2
        crop = np.s_[:, y0:y0 + DRY_CROP, y0:y0 + DRY_CROP]
        image, labels = image[crop], labels[crop]
        source += f", dry run: {DRY_CROP}x{DRY_CROP} crops"
    labels = np.where(labels == FOREGROUND, FOREGROUND, 0).astype(np.uint8)
    return Split(np.ascontiguousarray(image[train]), np.ascontiguousarray(labels[train]),
                 np.ascontiguousarray(image[test]), np.ascontiguousarray(labels[test]),
                 train, test, source)


def mosaic(slices: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` image tiled from ``slices`` (cycled), e.g. 4096² from 512² slices."""
    n, h, w = slices.shape
    out = np.empty((size, size), dtype=slices.dtype)
    k = 0
    for r in range(0, size, h):
        for c in range(0, size, w):
            out[r:r + h, c:c + w] = slices[k % n][:min(h, size - r), :min(w, size - c)]
            k += 1
    return out


# ----------------------------------------------------------------------------- environment


def environment(device: str) -> dict[str, Any]:
    """torch, CUDA and card as this process sees them (a field that fails to read is None)."""
    import torch

    def read(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - a report field, never a reason to stop
            return None

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpu_count": os.cpu_count(), "device": device, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.node()}",
    }
    if env["cuda_available"]:
        env.update(
            gpu=read(lambda: torch.cuda.get_device_name(0)),
            gpu_memory_gib=read(lambda: torch.cuda.get_device_properties(0).total_memory / 2**30),
            cudnn=read(torch.backends.cudnn.version),
            bf16_supported=read(torch.cuda.is_bf16_supported),
            # "fp32" convolutions run as TF32 on Ampere and later unless this is off
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            nccl=read(lambda: str(torch.cuda.nccl.version())),
        )
    return env


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def gpu_peak(device: str) -> dict[str, float] | None:
    """Peak allocated / reserved GPU memory of this process since the last reset (MiB)."""
    if not is_cuda(device):
        return None
    import torch

    return {"allocated_mib": _mib(torch.cuda.max_memory_allocated()),
            "reserved_mib": _mib(torch.cuda.max_memory_reserved())}


def reset_peak(device: str) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats()


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# ----------------------------------------------------------------------------- train


def build_config(spec: dict[str, Any], **changes: Any) -> Any:
    """The row's config, built the way ``fcres train`` builds it (train_config)."""
    from napari_fcres.train_config import build_train_config

    overrides = {**spec.get("overrides", {}), **changes}
    return build_train_config(None, preset=spec.get("preset"), device=spec["device"],
                              foreground_value=FOREGROUND, **overrides)


def fcres_command(spec: dict[str, Any], minutes: float) -> str:
    """The ``fcres train`` command line this row is equivalent to."""
    parts = ["fcres train IMAGE LABELS --slices 0-19 --out RUN"]
    if spec.get("preset"):
        parts.append(f"--preset {spec['preset']}")
    parts.append(f"--max-minutes {minutes:g} --device {spec['device']}")
    for key, value in spec.get("overrides", {}).items():
        parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


class TrainTimer:
    """Throughput of the training loop from the times its reports arrive.

    A step's time is the gap between two consecutive step reports, so set-up, the first
    step (CUDA start-up), validations and checkpoint writes are left out of
    ``steps_per_s``; ``loop_steps_per_s`` counts the whole loop, validation included.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.start = time.perf_counter()
        self.last = self.start
        self.prev_kind: str | None = None
        self.step_time = 0.0
        self.timed_steps = 0
        self.steps = self.epochs = self.validations = 0
        self.loop_elapsed = 0.0
        self.loss: float | None = None
        self.best_score: float | None = None
        self.metric = "dice"
        self.message = ""

    def update(self, p: Any) -> None:
        now = time.perf_counter()
        if p.kind == "step":
            if self.prev_kind == "step":
                self.step_time += now - self.last
                self.timed_steps += 1
            self.steps, self.loss = p.step, p.loss
        elif p.kind == "validation":
            self.validations += 1
            self.epochs = p.epoch
        if p.best_val_dice is not None:
            self.best_score, self.metric = p.best_val_dice, p.metric
        if p.kind in ("step", "validation"):
            self.loop_elapsed = p.elapsed
        if p.kind == "done":
            self.message = p.message
        self.prev_kind, self.last = p.kind, now

    def summary(self) -> dict[str, Any]:
        sps = self.timed_steps / self.step_time if self.step_time > 0 else None
        loop = self.steps / self.loop_elapsed if self.loop_elapsed > 0 else None
        return {
            "steps": self.steps, "epochs": self.epochs, "validations": self.validations,
            "steps_per_s": sps, "images_per_s": None if sps is None else sps * self.batch_size,
            "timed_steps": self.timed_steps, "step_seconds": self.step_time,
            "loop_seconds": self.loop_elapsed, "loop_steps_per_s": loop,
            "loop_images_per_s": None if loop is None else loop * self.batch_size,
            "wall_seconds": time.perf_counter() - self.start, "last_loss": self.loss,
            "best_validation": self.best_score, "validation_metric": self.metric,
            "end": self.message,
        }


def run_train(spec: dict[str, Any]) -> None:
    """Train one row, then score the held-out slices single and with TTA."""
    from napari_fcres.device import resolve_device, use_amp, use_channels_last_for_training
    from napari_fcres.training import train

    out = spec["result"]
    result: dict[str, Any] = {"row": spec["row"], "stage": "starting"}
    set_threads(spec.get("threads"))
    result["environment"] = environment(spec["device"])
    write_json(out, result)
    split = load_split(spec["data"])
    result["data"] = {"source": split.source, "train_slices": split.train_slices,
                      "test_slices": split.test_slices}
    minutes = min(float(spec["minutes"]),
                  max(0.05, (remaining(spec) - float(spec["eval_reserve_s"])) / 60.0))
    if minutes < float(spec["minutes"]):
        log.warning("%s: %.2f min of training fit before the deadline, not %g",
                    spec["row"], minutes, spec["minutes"])
    cfg = build_config(spec, max_minutes=minutes)
    dev = resolve_device(cfg.train.device)
    t = cfg.train
    result["config"] = {
        "preset": cfg.model.preset, "architecture": cfg.model.architecture,
        "batch_size": t.batch_size, "crop_size": t.crop_size, "epochs": t.epochs,
        "patience_steps": t.patience_steps, "loss": t.loss, "select_by": t.select_by,
        "max_minutes": minutes, "device": str(dev), "amp_bf16": use_amp(dev),
        "channels_last": use_channels_last_for_training(dev),
        "equivalent_command": fcres_command(spec, minutes),
    }
    result["stage"] = "training"
    write_json(out, result)
    log.info("%s: training %s preset for %.2f min on %s (batch %d of %d²)", spec["row"],
             cfg.model.preset, minutes, dev, t.batch_size, t.crop_size)
    reset_peak(spec["device"])
    timer = TrainTimer(t.batch_size)
    saved = time.perf_counter()
    try:
        for p in train(cfg, split.train_image, split.train_labels, spec["run_dir"]):
            timer.update(p)
            if time.perf_counter() - saved >= SAVE_EVERY_S:
                result["training"] = {**timer.summary(), "gpu_peak": gpu_peak(spec["device"])}
                write_json(out, result)
                saved = time.perf_counter()
    finally:  # also when killed at the deadline (SIGTERM): keep what was measured
        result["training"] = {**timer.summary(), "gpu_peak": gpu_peak(spec["device"])}
        write_json(out, result)
    result["stage"] = "evaluating"
    write_json(out, result)
    log.info("%s: %d steps, %.2f steps/s (steps only)", spec["row"], timer.steps,
             result["training"]["steps_per_s"] or 0.0)
    evaluate(spec, split, cfg.train.inference_tile, result)
    result["stage"] = "done"
    write_json(out, result)


def evaluate(spec: dict[str, Any], split: Split, tile: int, result: dict[str, Any]) -> None:
    """Held-out V_rand / V_info of the run's best checkpoint, single model then with TTA.

    The protocol of ``benchmarks/isbi_accuracy.py``: :func:`napari_fcres.inference.predict`
    with the config's inference tile, scored by :func:`napari_fcres.metrics.segmentation_scores`
    (best over thresholds 0, 0.1, ..., 1).  TTA is skipped when it would not finish before
    the deadline (8 forward passes: estimated from the single model's time).
    """
    from napari_fcres.inference import load_models, predict
    from napari_fcres.metrics import segmentation_scores

    models = load_models(spec["run_dir"], device=spec["device"])
    result["parameters"] = sum(p.numel() for m in models for p in m.parameters())
    reset_peak(spec["device"])
    result["evaluation"] = {}
    cost = None
    for name, tta in (("single", False), ("tta", True)):
        if cost is not None and cost > remaining(spec) - 2.0:
            result["evaluation"][name] = {"skipped": f"needs about {cost:.0f} s, "
                                                     f"{remaining(spec):.0f} s were left"}
            log.warning("%s: %s evaluation skipped (time)", spec["row"], name)
            continue
        t0 = time.perf_counter()
        probs = predict(models, split.test_image, tta=tta, device=spec["device"],
                        tile_size=tile).probabilities
        t_pred = time.perf_counter() - t0
        s = segmentation_scores(probs, split.test_labels, threshold=0.5,
                                foreground_value=FOREGROUND)
        t_score = time.perf_counter() - t0 - t_pred
        result["evaluation"][name] = {
            "v_rand": s["v_rand"], "v_info": s["v_info"], "dice": s["dice"],
            "pixel_error": s["pixel_error"], "v_rand_threshold": s["v_rand_threshold"],
            "v_info_threshold": s["v_info_threshold"], "predict_seconds": t_pred,
            "score_seconds": t_score,
        }
        result["evaluation"]["gpu_peak"] = gpu_peak(spec["device"])
        write_json(spec["result"], result)
        log.info("%s %s: V_rand %.4f V_info %.4f", spec["row"], name, s["v_rand"], s["v_info"])
        cost = 1.5 * (8 * t_pred + t_score) + 2.0


# ----------------------------------------------------------------------------- predict


def _models_for(row: dict[str, Any], device: str) -> tuple[list[Any], str, list[str]]:
    """The row's trained best checkpoint, else a fresh model of its preset (random weights)."""
    from napari_fcres.config import preset_config
    from napari_fcres.errors import FcresError
    from napari_fcres.models import build_model
    from napari_fcres.runs import find_checkpoints, load_ensemble

    try:
        files = find_checkpoints(row["run_dir"])
        return load_ensemble(files, device), "trained (best checkpoint of the training phase)", \
            [str(f) for f in files]
    except FcresError as exc:
        log.warning("%s: no trained checkpoint (%s); timing random weights", row["row"], exc)
        model = build_model(preset_config(row["preset"] or "cpu").model).to(device)
        return [model], f"random weights ({exc})", []


def _timed_predict(models: list[Any], image: np.ndarray, spec: dict[str, Any], *, amp: bool,
                   channels_last: bool) -> tuple[np.ndarray, float]:
    from napari_fcres.inference import predict

    t0 = time.perf_counter()
    probs = predict(models, image, device=spec["device"], tile_size=spec["tile"],
                    overlap=spec["overlap"], amp=amp, channels_last=channels_last).probabilities
    return probs, time.perf_counter() - t0


#: The prediction settings timed, in order: (name, amp, channels_last).
SETTINGS = (("fp32", False, True), ("amp_bf16", True, True), ("fp32_contiguous", False, False))


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Largest and mean |Δp| and the fraction of pixels on another side of 0.5."""
    d = np.abs(a - b)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "flipped_fraction": float(np.mean((a > 0.5) != (b > 0.5)))}


def time_row(row: dict[str, Any], image: np.ndarray, spec: dict[str, Any],
             res: dict[str, Any], save: Callable[[], None]) -> None:
    """Fill ``res`` with Mpx/s of one row's model on ``image`` in every setting, and their
    agreement; ``save()`` after every setting (a kill at the deadline keeps those)."""
    models, weights, files = _models_for(row, spec["device"])
    res.update(weights=weights, checkpoints=files, settings={})
    mpx = image.size / 1e6
    warm = image[: image.shape[0] // 4, : image.shape[1] // 4]
    probs: dict[str, np.ndarray] = {}
    if spec.get("warmup", True):
        for _name, amp, cl in SETTINGS:  # load the kernels and let cuDNN choose its algorithms
            _timed_predict(models, warm, spec, amp=amp, channels_last=cl)
    estimate = 0.0  # seconds of the last prediction: the next one is skipped if it won't fit
    for name, amp, cl in SETTINGS:
        seconds: list[float] = []
        reset_peak(spec["device"])
        for _ in range(int(spec["repeats"])):
            if 1.2 * estimate > remaining(spec) - spec["reserve_s"]:
                break
            probs[name], estimate = _timed_predict(models, image, spec, amp=amp,
                                                   channels_last=cl)
            seconds.append(estimate)
        if not seconds:
            res["settings"][name] = {"skipped": f"needs about {estimate:.0f} s, "
                                                f"{remaining(spec):.0f} s were left"}
            log.warning("%s %s: skipped (time)", row["row"], name)
            continue
        res["settings"][name] = {"amp_bf16": amp, "channels_last": cl, "seconds": seconds,
                                 "mpx_per_s": mpx / min(seconds),
                                 "gpu_peak": gpu_peak(spec["device"])}
        log.info("%s %s: %.2f Mpx/s", row["row"], name, mpx / min(seconds))
        _agreement(res, probs, spec["amp_tolerance"])
        save()


def _agreement(res: dict[str, Any], probs: dict[str, np.ndarray],
               tol: dict[str, float]) -> None:
    """AMP against fp32 (within ``tol``?) and channels_last off against on, where both ran."""
    rate = {k: v["mpx_per_s"] for k, v in res["settings"].items() if "mpx_per_s" in v}
    if "fp32" in probs and "amp_bf16" in probs:
        diff = compare(probs["fp32"], probs["amp_bf16"])
        diff["agree"] = bool(diff["max_abs_diff"] <= tol["max_abs_diff"]
                             and diff["flipped_fraction"] <= tol["flipped_fraction"])
        diff["tolerance"] = tol
        res["amp_vs_fp32"] = diff
        res["amp_speedup"] = rate["amp_bf16"] / rate["fp32"]
    if "fp32" in probs and "fp32_contiguous" in probs:
        res["contiguous_vs_channels_last"] = compare(probs["fp32"], probs["fp32_contiguous"])
        res["channels_last_speedup"] = rate["fp32"] / rate["fp32_contiguous"]


def _free_mib(device: str) -> float | None:
    import torch

    if not is_cuda(device):
        return None
    try:
        free, _total = torch.cuda.mem_get_info()
    except Exception:  # noqa: BLE001 - e.g. a sandbox without the driver's memory query
        return None
    return _mib(free)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_release(spec: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
    """Run the Predict widget's job in the widgets' worker process and watch GPU memory.

    The card's free memory (``torch.cuda.mem_get_info``, all processes) is read before the
    job, at its first progress report (the child holds its model and tiles) and after the
    child has exited; "released" means it came back to within ``release_tolerance_mib``.
    The child's probabilities are compared with the same prediction made in this process.
    """
    import torch

    from napari_fcres.errors import CheckpointError
    from napari_fcres.inference import predict
    from napari_fcres.jobs import predict_job
    from napari_fcres.runs import find_checkpoints
    from napari_fcres.worker_process import REPORT, STOP, ProcessJob

    trained = [r for r in spec["rows"] if list(Path(r["run_dir"]).glob("**/best.pt"))]
    if not trained:
        raise CheckpointError("no training row left a checkpoint for the worker's job")
    row = trained[0]
    files = [str(f) for f in find_checkpoints(row["run_dir"])]
    models, _, _ = _models_for(row, spec["device"])
    here = predict(models, image, device=spec["device"], tile_size=spec["tile"],
                   overlap=min(64, spec["tile"] // 4)).probabilities
    del models
    if is_cuda(spec["device"]):
        torch.cuda.empty_cache()
    res: dict[str, Any] = {"job": "napari_fcres.jobs.predict_job", "checkpoints": files,
                           "image_shape": list(image.shape),
                           "release_tolerance_mib": spec["release_tolerance_mib"]}
    before = _free_mib(spec["device"])
    during: float | None = None
    t0 = time.perf_counter()
    job = ProcessJob(predict_job, files, image, device=spec["device"], tile_size=spec["tile"],
                     tta=False, mode="binary", slice_index=None, stop=STOP, progress=REPORT)
    res["pid"] = job.pid
    gen = job.stream()
    reports = 0
    while True:
        try:
            next(gen)
        except StopIteration as end:
            out = end.value
            break
        reports += 1
        if during is None:
            during = _free_mib(spec["device"])
    res["seconds"] = time.perf_counter() - t0
    res["progress_reports"] = reports
    res["child_exited"] = not _alive(job.pid)
    time.sleep(0.5)  # the driver frees a dead process's memory asynchronously
    after = _free_mib(spec["device"])
    res["max_abs_diff_vs_in_process"] = float(np.abs(out.result.probabilities - here).max())
    res["labels_shape"] = list(out.labels.shape)
    if before is None or during is None or after is None:
        res["released"] = None
        res["note"] = "no CUDA: the job ran in the worker process; GPU memory not measured"
    else:
        res.update(free_before_mib=before, free_during_mib=during, free_after_mib=after,
                   held_by_worker_mib=before - during)
        res["released"] = bool(after >= before - spec["release_tolerance_mib"])
    return res


def run_predict(spec: dict[str, Any]) -> None:
    """Time prediction for every row, then the worker process's memory release."""
    out = spec["result"]
    set_threads(spec.get("threads"))
    result: dict[str, Any] = {"environment": environment(spec["device"]), "rows": {}}
    split = load_split(spec["data"])
    image = mosaic(split.test_image, int(spec["size"]))
    result["image"] = {"shape": list(image.shape), "dtype": str(image.dtype),
                       "source": f"mosaic of held-out slices {split.test_slices} "
                                 f"({split.source})", "tile": spec["tile"],
                       "overlap": spec["overlap"]}
    write_json(out, result)
    for row in spec["rows"]:
        if remaining(spec) < spec["reserve_s"] + spec["min_row_s"]:
            result["rows"][row["row"]] = {"skipped": f"{remaining(spec):.0f} s left"}
            continue
        res = result["rows"][row["row"]] = {}
        try:
            time_row(row, image, spec, res, lambda: write_json(out, result))
        except Exception as exc:  # noqa: BLE001 - one row failing must not lose the others
            log.exception("%s: prediction timing failed", row["row"])
            res["error"] = f"{type(exc).__name__}: {exc}"
        write_json(out, result)
    if not spec.get("worker", True):
        result["worker_process"] = {"skipped": "not asked for"}
    elif remaining(spec) < spec["worker_min_s"]:
        result["worker_process"] = {"skipped": f"{remaining(spec):.0f} s left"}
    else:
        size = int(spec["worker_size"])
        try:
            result["worker_process"] = worker_release(spec, mosaic(split.test_image, size))
        except Exception as exc:  # noqa: BLE001
            log.exception("worker process check failed")
            result["worker_process"] = {"error": f"{type(exc).__name__}: {exc}"}
    write_json(out, result)


# ----------------------------------------------------------------------------- ddp


def run_ddp(spec: dict[str, Any]) -> None:
    """One DDP training step on every rank (under torchrun); each rank writes its result.

    The loop is napari_fcres's own: :func:`~napari_fcres.distributed.init_from_env` joins
    the group (NCCL on CUDA, gloo on the CPU), batch norm becomes SyncBatchNorm on CUDA and
    the Dice loss is all-reduced over the global batch, so every rank reports the same loss.
    """
    import torch

    from napari_fcres.distributed import init_from_env
    from napari_fcres.training import train

    rank = int(os.environ.get("RANK", "0"))
    out = Path(spec["result"]).with_name(f"{Path(spec['result']).stem}.rank{rank}.json")
    set_threads(spec.get("threads"))
    ctx = init_from_env(spec["device"])
    res: dict[str, Any] = {"rank": ctx.rank, "world_size": ctx.world_size,
                           "backend": ctx.backend, "device": str(ctx.device)}
    split = load_split(spec["data"])
    cfg = build_config(spec, epochs=1, steps_per_epoch=1)
    t0 = time.perf_counter()
    losses: list[float] = []
    try:
        for p in train(cfg, split.train_image, split.train_labels, spec["run_dir"], dist=ctx):
            if p.kind == "step":
                losses.append(float(p.loss))
                res["step_seconds"] = time.perf_counter() - t0
    finally:
        ctx.close()
    res.update(losses=losses, seconds=time.perf_counter() - t0,
               sync_batchnorm=ctx.device is not None and ctx.device.type == "cuda",
               gpu_peak=gpu_peak(spec["device"]) if torch.cuda.is_available() else None)
    write_json(out, res)


# ----------------------------------------------------------------------------- main


PHASES = {"train": run_train, "predict": run_predict, "ddp": run_ddp}


def main(argv: list[str] | None = None) -> int:
    """Run the phase that the spec file (the only argument) names."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    tag = spec.get("row") or spec["phase"]
    rank = os.environ.get("RANK")
    if rank is not None:
        tag += f" rank {rank}"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{tag}] %(name)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # the project travels as source
        sys.path.insert(0, root)
    # the parent's kill at the deadline: unwind, so each phase's ``finally`` keeps its figures
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    PHASES[spec["phase"]](spec)
    return 0


if __name__ == "__main__":
    code = main()
    # The results are written: end now.  Tearing down the interpreter (CUDA context, torch's
    # thread pools) can take seconds, which the budget should not pay for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
