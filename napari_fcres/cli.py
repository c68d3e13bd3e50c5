"""The ``fcres`` command line: info, train, predict, evaluate, demo, fetch, bioimage.io."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import (
    ARCHITECTURE_CHOICES,
    ARCHITECTURES,
    DEFAULT_TTA,
    KEEP_CHOICES,
    PRESET_HELP,
    PRESETS,
    SELECT_BY,
    TTA_PASSES,
    VAL_SPLITS,
    Config,
    config_from_mapping,
)
from .errors import FcresError, InputError

log = logging.getLogger("napari_fcres")


def parse_slices(text: str | None, n: int | None = None) -> list[int] | None:
    """``"0-19"``, ``"20:30"`` or ``"0,3,5"`` (inclusive ranges with ``-``) -> indices."""
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if ":" in part:
                a, b = part.split(":")
                out.extend(range(int(a), int(b)))
            elif "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise InputError(f"cannot read slice selection {text!r}; use e.g. 0-19, 20:30 or 1,4,7") \
            from None
    if n is not None:
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise InputError(f"slice(s) {bad[:5]} outside the stack of {n} slices")
    return out


def load_source(spec: str | Path) -> Any:
    """Read an image by path, or by the shorthands ``isbi2012:NAME`` and ``sample:image|labels``.

    ``isbi2012:train-volume`` (also ``train-labels``, ``test-volume``) reads the ISBI 2012
    stack from the local copy or the download cache; ``sample:image`` the embedded
    synthetic EM stack.
    """
    from .io import Volume, read_image

    text = str(spec)
    if text.startswith("isbi2012:"):
        from .sample_data import fetch_isbi2012

        name = text.split(":", 1)[1]
        files = fetch_isbi2012()
        key = name if name.endswith(".tif") else f"{name}.tif"
        if key not in files:
            raise InputError(f"unknown ISBI 2012 file {name!r}; choose one of "
                             + ", ".join(k.removesuffix(".tif") for k in files))
        return read_image(files[key])
    if text.startswith("sample:"):
        from .sample_data import load_sample_stack

        image, labels = load_sample_stack()
        which = text.split(":", 1)[1]
        if which not in ("image", "labels"):
            raise InputError("use sample:image or sample:labels")
        return Volume(image if which == "image" else labels, None, text)
    return read_image(text)


def _select(data: np.ndarray, slices: list[int] | None, axis: int = 0) -> np.ndarray:
    if slices is None:
        return data
    if data.ndim != 3:
        raise InputError("--slices needs a 3D stack")
    return np.take(data, slices, axis=axis)


# ----------------------------------------------------------------------------- info

def cmd_info(args: argparse.Namespace) -> int:
    from .config import preset_config
    from .models import build_model, count_conv_layers, count_parameters

    cfg = preset_config(args.preset, args.architecture)
    model = build_model(cfg.model)
    parts: dict[str, Any] = {}
    for name, child in model.named_children():
        parts[name] = {
            "parameters": count_parameters(child),
            "conv_layers": count_conv_layers(child, include_projections=False),
            "projection_convs": count_conv_layers(child) - count_conv_layers(child, False),
        }
    info = {
        "preset": args.preset,
        "architecture": args.architecture,
        "description": PRESET_HELP[args.preset],
        "parameters": count_parameters(model),
        "size_divisor": model.size_divisor,
        "parts": parts,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"preset {args.preset} ({PRESET_HELP[args.preset]}), {args.architecture}")
        for name, p in parts.items():
            print(f"  {name:13s} {p['parameters'] / 1e6:8.3f} M parameters, "
                  f"{p['conv_layers']} conv layers (+{p['projection_convs']} 1x1 projections)")
        print(f"  {'total':13s} {info['parameters'] / 1e6:8.3f} M parameters")
    return 0


# ----------------------------------------------------------------------------- train

def build_train_config(args: argparse.Namespace) -> Config:
    """Preset/YAML config with the command-line overrides applied."""
    from .train_config import build_train_config as build

    base, overrides = _train_settings(args)
    return build(base, **overrides)


def train_request(args: argparse.Namespace) -> dict[str, Any]:
    """What ``fcres train`` asks for: the ``--config`` YAML and the flags given, nested."""
    from .train_config import train_request as request

    base, overrides = _train_settings(args)
    return request(base, **overrides)


def _train_settings(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The ``--config`` mapping (None without one) and the flags given, for train_config."""
    from .train_config import DATA_KEYS, TRAIN_KEYS

    base: dict[str, Any] | None = None
    if args.config:
        import yaml

        try:
            base = yaml.safe_load(Path(args.config).read_text()) or {}
        except FileNotFoundError:
            raise InputError(f"config file not found: {args.config}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"config file {args.config} is not valid YAML: "
                             + " ".join(str(exc).split())) from None
        if not isinstance(base, dict):
            raise InputError(f"config file {args.config} must hold a mapping, not "
                             f"{type(base).__name__}")
        base.pop("run", None)  # data paths of training/*.yaml, read by training/train.py
    overrides: dict[str, Any] = {k: getattr(args, k, None) for k in TRAIN_KEYS + DATA_KEYS}
    overrides["freeze_fcresnet"] = True if args.freeze_fcresnet else None  # flags: on or unset
    overrides["partial"] = True if args.partial else None
    overrides.update(preset=args.preset, architecture=args.architecture,
                     init_checkpoint=args.init)
    return base, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .cli_progress import TrainBar, score_name
    from .distributed import init_from_env
    from .training import train

    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other: continue the run in "
                         "--out, or move it aside and start over")
    if args.resume:  # the run's stored config; train() refuses flags that change it
        from .resume import resume_request

        cfg = resume_request(args.out, train_request(args))
    else:
        cfg = build_train_config(args)
    image = load_source(args.image).data
    labels = load_source(args.labels).data
    slices = parse_slices(args.slices, image.shape[cfg.data.axis] if image.ndim == 3 else None)
    image = _select(image, slices, cfg.data.axis)
    labels = _select(labels, slices, cfg.data.axis) if labels.ndim == 3 else labels
    log.info("training %s/%s on %s %s, %d member(s) -> %s", cfg.model.preset,
             cfg.model.architecture, image.shape, image.dtype, cfg.train.ensemble, args.out)
    dist = init_from_env(cfg.train.device)  # torchrun: DDP over WORLD_SIZE ranks
    gen = train(cfg, image, labels, args.out, resume=args.resume, overwrite=args.overwrite,
                init_checkpoint=args.init, dist=dist, ensemble_parallel=args.ensemble_parallel)
    name = "Dice"  # of the score that keeps the best checkpoint, as the members report it
    # the bar is drawn at the first report, once the inputs have been validated
    with TrainBar(cfg.train.max_minutes, disable=args.quiet or not dist.is_main) as bar:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            except BaseException:
                bar.close()
                dist.close()
                raise
            bar.update(p)
            if p.kind != "done":
                name = score_name(p)
    dist.close()
    if not dist.is_main:
        return 0
    which = "final" if result.kept == "final" else "best"
    for path, score in zip(result.best_checkpoints, result.best_val_dice, strict=True):
        print(f"{path}\t{which} validation {name} " + (f"{score:.4f}" if score >= 0 else "n/a"))
    return 0


# ----------------------------------------------------------------------------- predict

def _tta_note(tta: bool) -> str:
    """How a prediction log line names test-time augmentation."""
    return (f", averaging {TTA_PASSES} flips/rotations per tile (--no-tta: {TTA_PASSES}x "
            "faster)" if tta else ", without test-time augmentation")


def cmd_predict(args: argparse.Namespace) -> int:
    if args.chunked:
        return _predict_chunked(args)
    from tqdm import tqdm

    from .device import resolve_device
    from .inference import predict
    from .io import write_image, write_labels
    from .postprocess import labels_from_probabilities
    from .runs import load_ensemble

    device = resolve_device(args.device)
    models = load_ensemble(args.models, device)
    log.info("predicting with %d model(s) on %s%s", len(models), device, _tta_note(args.tta))
    vol = load_source(args.image)
    image = vol.data
    slices = parse_slices(args.slices, image.shape[args.axis] if image.ndim == 3 else None)
    image = _select(image, slices, args.axis)
    bar = tqdm(total=1, desc="predict", unit="tile", disable=args.quiet, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    t0 = time.perf_counter()
    res = predict(
        models, image, axis=args.axis, tile_size=args.tile, overlap=args.overlap,
        batch_size=args.batch_size, tta=args.tta, device=device,
        return_normalized=bool(args.normalized), return_spread=bool(args.spread),
        progress=progress,
    )
    bar.close()
    log.info("prediction took %.1f s", time.perf_counter() - t0)
    spacing = vol.spacing
    labels = labels_from_probabilities(res.probabilities, threshold=args.threshold,
                                       mode=args.mode, min_size=args.min_size)
    print(write_labels(args.out, labels, spacing=spacing))
    if args.probabilities:
        print(write_image(args.probabilities, res.probabilities, spacing=spacing))
    if args.normalized:
        if res.normalized is None:
            log.warning("the model has no pre-processor output; --normalized not written")
        else:
            print(write_image(args.normalized, res.normalized, spacing=spacing))
    if args.spread and res.spread is not None:
        print(write_image(args.spread, res.spread, spacing=spacing))
    return 0


def _predict_chunked(args: argparse.Namespace) -> int:
    """``predict --chunked``: an OME-Zarr image in, OME-Zarr labels out, block by block."""
    from tqdm import tqdm

    from .chunked import LABEL_MODES, predict_ome_zarr
    from .device import resolve_device

    for flag in ("normalized", "spread", "slices"):
        if getattr(args, flag):
            raise InputError(f"--{flag} is not available with --chunked")
    if args.mode not in LABEL_MODES or args.min_size:
        raise InputError("--chunked writes binary or instances labels; --mode largest and "
                         "--min-size need the whole volume in memory")
    log.info("predicting %s block by block%s", args.image, _tta_note(args.tta))
    bars: dict[str, Any] = {}

    def show(desc: str, unit: str, done: int, total: int) -> None:
        """One bar per pass (blocks, then labelling slabs in instances mode)."""
        if desc not in bars:
            for other in bars.values():
                other.close()
            bars[desc] = tqdm(total=total, desc=desc, unit=unit, disable=args.quiet,
                              dynamic_ncols=True)
        bar = bars[desc]
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        out = predict_ome_zarr(
            args.models, args.image, args.out, name=args.label_name, mode=args.mode,
            probabilities=args.probabilities, threshold=args.threshold, workers=args.workers,
            ngff_version=args.ngff_version, axis=args.axis, tile_size=args.tile,
            overlap=args.overlap, batch_size=args.batch_size, tta=args.tta,
            device=str(resolve_device(args.device)),
            progress=lambda done, total: show("predict", "block", done, total),
            label_progress=lambda done, total: show("label", "slab", done, total),
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(out)
    return 0


# ----------------------------------------------------------------------------- suggest

def cmd_suggest(args: argparse.Namespace) -> int:
    """Rank the unpainted slices by the models' uncertainty: what to paint next."""
    from tqdm import tqdm

    from .device import resolve_device
    from .label_rules import annotated_slices, check_image_labels
    from .runs import find_checkpoints, load_ensemble
    from .suggest import suggest_from_models

    device = resolve_device(args.device)
    files = find_checkpoints(args.models)
    models = load_ensemble(files, device)
    image = load_source(args.image).data
    if image.ndim != 3:
        raise InputError(f"fcres suggest needs a 3D stack, got an image of shape {image.shape}")
    painted: list[int] = []
    if args.labels:
        labels = load_source(args.labels).data
        check_image_labels(image, labels)
        painted = annotated_slices(labels)
    candidates = parse_slices(args.slices, image.shape[0])
    bar = tqdm(total=1, desc="suggest", unit="tile", disable=args.quiet, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        found = suggest_from_models(
            models, image, painted, k=args.k, tile=args.tile, device=device,
            region_size=args.region, slices=candidates, flips=False if args.no_flips else None,
            progress=progress,
        )
    finally:
        bar.close()
    flips = len(models) == 1 and not args.no_flips
    if args.json:
        print(json.dumps({
            "image": str(args.image), "checkpoints": [str(f) for f in files],
            "members": len(models), "flips": flips, "painted": painted,
            "suggestions": [s.as_dict() for s in found],
        }, indent=2))
        return 0
    basis = (f"{len(models)} members" if len(models) > 1 else
             "1 model, 4 mirrored predictions" if flips else "1 model, entropy only")
    print(f"painted slices: {_ranges(painted) or 'none'}; uncertainty from {basis}")
    if not found:
        print("every candidate slice is painted: nothing to suggest")
        return 0
    print(f"{'rank':>4s} {'slice':>5s} {'score':>7s}  region (y0:y1, x0:x1)  why")
    for rank, s in enumerate(found, start=1):
        y0, y1, x0, x1 = s.region
        print(f"{rank:4d} {s.slice:5d} {s.score:7.4f}  {f'{y0}:{y1}, {x0}:{x1}':21s}  "
              f"{s.reason}")
    return 0


def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out: list[str] = []
    for i in sorted(indices):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


# ----------------------------------------------------------------------------- evaluate

#: File formats whose header carries a voxel spacing in mm (SimpleITK), by reader format name.
_SCAN_FORMATS = {"nii": "NIfTI", "nii.gz": "NIfTI", "mha": "MetaImage", "mhd": "MetaImage",
                 "nrrd": "NRRD", "nhdr": "NRRD", "dcm": "DICOM", "dicom": "DICOM"}
#: Spellings of mm in TIFF / OME metadata: a stack with spacing in mm is a scan, not EM (cm
#: and inch are left out: they mostly come from a default 72 dpi resolution tag).
_SCAN_UNITS = {"mm": "mm", "millimeter": "mm", "millimetre": "mm"}
_UNITS = {**_SCAN_UNITS, "micron": "um", "um": "um", "µm": "um", "\\u00b5m": "um",
          "micrometer": "um", "micrometre": "um", "nm": "nm", "nanometer": "nm",
          "nanometre": "nm", "centimeter": "cm", "meter": "m"}


def _unit_of(vol: Any) -> str | None:
    """Length unit of a volume's spacing: mm for scan formats, else the one the file names."""
    meta = vol.metadata or {}
    if meta.get("format") in _SCAN_FORMATS:
        return "mm"
    unit = meta.get("unit")
    if unit is None:  # OME-Zarr: one unit per space axis
        units = {a.get("unit") for a in meta.get("axes") or [] if isinstance(a, dict)
                 and a.get("type") in ("space", None)} - {None}
        unit = units.pop() if len(units) == 1 else None
    return None if unit is None else _UNITS.get(str(unit).strip().lower(), str(unit))


def _choose_measures(requested: str, vols: dict[str, Any], ndim: int,
                     spacing_given: bool) -> tuple[str, str]:
    """``(measures, reason)``: ``em``, ``volume`` or ``all``, and why (see ``--measures``)."""
    if requested != "auto":
        return requested, f"--measures {requested}"
    if spacing_given:
        return "volume", "auto: --spacing given"
    for role, vol in vols.items():
        fmt = (vol.metadata or {}).get("format")
        is_, has = ("are", "have") if role == "labels" else ("is", "has")
        if fmt in _SCAN_FORMATS:
            return "volume", (f"auto: the {role} {is_} a {_SCAN_FORMATS[fmt]} scan with voxel "
                              "spacing")
        if vol.spacing is not None and _unit_of(vol) == "mm":
            return "volume", f"auto: the {role} {has} voxel spacing in mm"
    what = "a 2D image" if ndim == 2 else "an EM-like stack: no scan format, no spacing in mm"
    return "em", f"auto: {what}"


def _format_spacing(spacing: Sequence[float], unit: str | None) -> str:
    return " x ".join(f"{s:g}" for s in spacing) + f" {unit or '(no unit stored)'}"


def _evaluate_spacing(override: Sequence[float] | None, vols: dict[str, Any],
                      ndim: int) -> tuple[tuple[float, ...] | None, str, str]:
    """``(spacing, unit, source)`` for the volume measures; None / px when no file has one."""
    if override:
        spacing = tuple(float(s) for s in override)
        if len(spacing) != ndim:
            raise InputError(f"--spacing has {len(spacing)} values but the images have {ndim} "
                             "axes; give one voxel size per axis in Z Y X order (mm)")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"--spacing values must be positive, got {spacing}")
        return spacing, "mm", "--spacing"
    found = [(role, vol) for role, vol in vols.items()
             if vol.spacing is not None and len(vol.spacing) == ndim]
    if not found:
        return None, "px", "none stored in either file: 1 px per axis"
    if len(found) == 2:
        (r1, v1), (r2, v2) = found
        if not np.allclose(v1.spacing, v2.spacing, rtol=1e-4, atol=0.0):
            raise InputError(
                f"the prediction {v1.path} has voxel spacing "
                f"{_format_spacing(v1.spacing, _unit_of(v1))} but the labels {v2.path} have "
                f"{_format_spacing(v2.spacing, _unit_of(v2))} (Z Y X); resample one onto the "
                "other, or pass --spacing Z Y X (mm) to choose"
            )
    # a scan header's mm wins over a TIFF unit (fcres predict may have written a TIFF)
    units = [_unit_of(vol) for _, vol in found]
    unit = "mm" if "mm" in units else next((u for u in units if u), "units")
    source = "the " + " and ".join(r for r, _ in found) + " header" + "s"[: len(found) > 1]
    return tuple(float(s) for s in found[0][1].spacing), unit, source


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN / inf floats as None (strict JSON); numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _print_volume_scores(scores: dict[str, Any], unit: str, ndim: int) -> None:
    print(f"{'abd':12s} {scores['average_boundary_distance']:.4f} {unit}"
          "  (average boundary distance)")
    print(f"{'hd95':12s} {scores['hausdorff95']:.4f} {unit}  (95th percentile Hausdorff)")
    print(f"{'rvd':12s} {scores['relative_volume_difference']:+.2f} %"
          "  (relative volume difference)")
    print(f"{'voxels':12s} {scores['voxels_pred']} predicted, {scores['voxels_true']} ground "
          f"truth (prediction > {scores['threshold']:g})")
    print(f"{'volume':12s} {scores['volume_pred']:.6g} predicted, {scores['volume_true']:.6g} "
          f"ground truth ({unit}^{ndim})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import evaluate_volume, segmentation_scores

    vols = {"prediction": load_source(args.prediction), "labels": load_source(args.labels)}
    pred, labels = vols["prediction"].data, vols["labels"].data
    if args.slices:
        labels = _select(labels, parse_slices(args.slices, labels.shape[0]))
    if args.prediction_slices:
        pred = _select(pred, parse_slices(args.prediction_slices, pred.shape[0]))
    if pred.shape != labels.shape:
        raise InputError(f"the prediction has shape {pred.shape} but the labels have shape "
                         f"{labels.shape}; they must be the same (see --slices)")
    measures, reason = _choose_measures(args.measures, vols, pred.ndim, bool(args.spacing))
    scores: dict[str, Any] = {"measures": measures, "measures_rule": reason,
                              "spacing": None, "unit": None, "spacing_source": "not used"}
    if measures in ("em", "all"):
        scores.update(segmentation_scores(pred, labels, threshold=args.threshold,
                                          foreground_value=args.foreground_value))
    unit = "px"
    if measures in ("volume", "all"):
        spacing, unit, source = _evaluate_spacing(args.spacing, vols, pred.ndim)
        scores.update(spacing=spacing, unit=unit, spacing_source=source)
        scores.update(evaluate_volume(pred, labels, spacing, threshold=args.threshold,
                                      foreground_value=args.foreground_value))
    if args.json:
        print(json.dumps(_json_safe(scores), indent=2, allow_nan=False))
        return 0
    print(f"{'measures':12s} {measures} ({reason})")
    if scores["spacing"] is not None:
        print(f"{'spacing':12s} {_format_spacing(scores['spacing'], unit)} (Z Y X, from "
              f"{scores['spacing_source']})")
    elif measures != "em":
        print(f"{'spacing':12s} none stored in either file: distances in px "
              "(pass --spacing Z Y X for mm)")
    for key in ("v_rand", "v_info", "dice", "pixel_error"):
        if key in scores:
            print(f"{key:12s} {scores[key]:.4f}")
    if measures != "em":
        _print_volume_scores(scores, unit, pred.ndim)
    for note in scores.get("notes", []):
        print(f"{'note':12s} {note}")
    if "v_rand_threshold" in scores:
        print(f"(V_rand at threshold {scores['v_rand_threshold']}, "
              f"V_info at {scores['v_info_threshold']})")
    return 0

# ----------------------------------------------------------------------------- demo

def cmd_demo(args: argparse.Namespace) -> int:
    """Train on the embedded synthetic EM stack, predict held-out slices, evaluate."""
    from .inference import predict
    from .io import write_image, write_labels
    from .metrics import segmentation_scores
    from .postprocess import labels_from_probabilities
    from .sample_data import load_sample_stack
    from .training import run_training

    out = Path(args.out)
    image, labels = load_sample_stack()
    n_train = max(1, int(round(image.shape[0] * 0.75)))
    cfg = config_from_mapping({
        "model": {"preset": args.preset},
        "train": {"max_minutes": args.minutes, "epochs": args.epochs, "device": args.device,
                  "seed": args.seed, "crop_size": min(128, image.shape[1]), "batch_size": 4},
    })
    log.info("demo: training %s on %d synthetic slices for up to %.1f min", args.preset,
             n_train, args.minutes)
    last = [time.perf_counter()]

    def report(p: Any) -> None:
        # the training loop logs every validation itself; between them (a long epoch),
        # one line every 10 s shows the run is alive
        if p.kind != "step" or time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            if p.kind == "step":
                log.info("epoch %d step %d loss %.4f", p.epoch + 1, p.step, p.loss)

    result = run_training(cfg, image[:n_train], labels[:n_train], out / "model",
                          on_progress=report, overwrite=args.overwrite)
    from .checkpoint import load_model

    model, _ = load_model(result.best_checkpoints[0])
    test_image, test_labels = image[n_train:], labels[n_train:]
    log.info("demo: predicting the %d held-out slices%s", len(test_image), _tta_note(DEFAULT_TTA))
    res = predict(model, test_image, return_normalized=True, tta=DEFAULT_TTA)
    pred_labels = labels_from_probabilities(res.probabilities, mode="instances")
    write_image(out / "test_image.tif", test_image)
    write_image(out / "probabilities.tif", res.probabilities)
    if res.normalized is not None:
        write_image(out / "normalized.tif", res.normalized)
    write_labels(out / "labels.tif", pred_labels)
    scores = segmentation_scores(res.probabilities, test_labels, foreground_value=255)
    (out / "scores.json").write_text(json.dumps(scores, indent=2, default=float))
    print(f"held-out synthetic slices: V_rand {scores['v_rand']:.4f}  "
          f"V_info {scores['v_info']:.4f}  Dice {scores['dice']:.4f}  "
          f"pixel error {scores['pixel_error']:.4f}")
    print(f"outputs written to {out.resolve()}")
    return 0


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from .bioimageio_export import export_bioimageio

    print(export_bioimageio(
        args.models, args.out, name=args.name, description=args.description,
        authors=args.author or ("napari-fcres",), maintainers=args.maintainer or (),
        license=args.license, test_image=load_source(args.test_image).data
        if args.test_image else None, torchscript=not args.no_torchscript,
    ))
    return 0


def cmd_import_bioimageio(args: argparse.Namespace) -> int:
    from .bioimageio_export import import_bioimageio

    print(import_bioimageio(args.package, args.out, member=args.member))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .sample_data import fetch_isbi2012

    for name, path in fetch_isbi2012(cache_dir=args.cache_dir).items():
        print(f"{name}\t{path}")
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from .runs import BEST_NAME, LAST_NAME, LAYOUT, MEMBER_PREFIX

    p = argparse.ArgumentParser(
        prog="fcres",
        description="Learned normalization + FC-ResNet segmentation (Drozdzal et al.)",
    )
    p.add_argument("--version", action="version", version=f"napari-fcres {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="parameter and conv-layer counts of a preset")
    s.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    s.add_argument("--architecture", default="pipeline", choices=ARCHITECTURES)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train (or fine-tune) a model or an ensemble")
    s.add_argument("image", help="image stack (TIFF, NIfTI, MHA, NRRD, folder of slices)")
    s.add_argument("labels", help="label stack of the same shape")
    s.add_argument("--out", required=True, help=f"output folder ({LAYOUT})")
    s.add_argument("--preset", choices=sorted(PRESETS), help="model size (default cpu)")
    s.add_argument("--architecture", choices=ARCHITECTURE_CHOICES,
                   help="auto (default: the plain UNet when fewer than 8 slices are annotated, "
                        "else the pipeline), pipeline, or an ablation baseline")
    s.add_argument("--config", help="YAML config (see training/*.yaml)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--max-minutes", type=float, help="wall-clock budget for the whole run")
    s.add_argument("--ensemble", type=int, help="number of models (own split and seed each)")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--seed", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--crop-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--loss", choices=["auto", "dice", "bce_dice"],
                   help="dice (eq. 2), bce_dice, or auto (default: bce_dice when fewer than 8 "
                        "slices are annotated, else dice)")
    s.add_argument("--steps-per-epoch", type=int)
    s.add_argument("--patience", type=int, dest="patience_steps",
                   help="early stopping: optimisation steps without a better validation "
                        "score (default 1000; 0 never stops early)")
    s.add_argument("--select-by", choices=list(SELECT_BY),
                   help=f"validation score that keeps {BEST_NAME}: dice, v_rand (membrane EM), or "
                        "auto (default: v_rand when the labels are many cells separated by "
                        "boundaries, else dice)")
    s.add_argument("--keep", choices=list(KEEP_CHOICES),
                   help=f"the weights {BEST_NAME} holds: best (best validation score), final "
                        "(the end of the run: the moving average of the weights when there is "
                        "one), or auto (default: final when fewer than 8 slices of cells "
                        "separated by membranes are annotated, validated by V_rand; else best)")
    s.add_argument("--val-every", type=int, dest="val_every_steps",
                   help="validate every N optimisation steps (default 20)")
    s.add_argument("--val-fraction", type=float,
                   help="share held out for validation: of the slices, or of every slice "
                        "with --val-split regions (default 0.2)")
    s.add_argument("--val-split", choices=list(VAL_SPLITS),
                   help="hold out whole slices, or a band of every annotated slice "
                        "(regions); auto (default): regions when fewer than 8 slices are "
                        "annotated, so every painted slice also trains")
    s.add_argument("--slices", help="train on these slices only, e.g. 0-19")
    s.add_argument("--axis", type=int, help="slicing axis of a 3D stack (default 0)")
    s.add_argument("--foreground-value", type=int, help="label value of the foreground")
    s.add_argument("--ignore-value", type=int, help="label value that never counts")
    s.add_argument("--partial", action="store_true",
                   help="partially annotated: 0 unlabeled, 1 background, >=2 foreground")
    s.add_argument("--resume", action="store_true",
                   help=f"continue the run in --out from its {LAST_NAME}, with the config stored "
                        "there; other flags may change only --epochs, --max-minutes, "
                        "--patience and --device (anything else is refused)")
    s.add_argument("--overwrite", action="store_true",
                   help="--out already holds a run: move it aside to OUT.old-DATE-TIME (never "
                        "deleted) and start a new one there (without it such a folder is "
                        "refused)")
    s.add_argument("--init", help="fine-tune from this checkpoint (a file, or a run folder "
                                   f"with one {BEST_NAME})")
    s.add_argument("--freeze-fcresnet", action="store_true",
                   help="with --init: adapt only the pre-processor")
    s.add_argument("--ensemble-parallel", action="store_true",
                   help="under torchrun: member k trains alone on rank k %% world size "
                        "(no DDP)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("predict", help="predict with one model or an ensemble")
    s.add_argument("image")
    s.add_argument("--models", nargs="+", required=True,
                   help=f"checkpoint files or training folders (all {BEST_NAME} inside)")
    s.add_argument("--out", required=True, help="labels file (.tif or .nii.gz)")
    s.add_argument("--probabilities", help="also write the probability map here")
    s.add_argument("--normalized", help="also write the pre-processor's output here")
    s.add_argument("--spread", help="also write the ensemble disagreement here")
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=DEFAULT_TTA,
                   help=f"average the {TTA_PASSES} flips/rotations of every tile (default: "
                        f"{'on' if DEFAULT_TTA else 'off'}; --no-tta is {TTA_PASSES}x faster, "
                        "with somewhat more merged cells)")
    s.add_argument("--device", default="auto")
    s.add_argument("--tile", type=int, default=512, help="tile size in pixels")
    s.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    s.add_argument("--batch-size", type=int,
                   help="tiles per forward pass (default: 1 on CPU, fastest there; 4 on GPU)")
    s.add_argument("--axis", type=int, default=0)
    s.add_argument("--slices", help="predict only these slices, e.g. 20-29")
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--mode", default="binary", choices=["binary", "largest", "instances"],
                   help="labels: 0/1 mask, largest 3D component, or cell instances")
    s.add_argument("--min-size", type=int, default=0, help="drop objects smaller than this")
    s.add_argument("--chunked", action="store_true",
                   help="IMAGE and --out are .zarr: predict block by block (larger than "
                        "memory) into OUT/labels/NAME (OME-Zarr); --mode binary or instances")
    s.add_argument("--label-name", default="fcres", help="with --chunked: labels/NAME")
    s.add_argument("--ngff-version", choices=["0.4", "0.5"],
                   help="with --chunked: OME-Zarr version of new stores (default 0.4)")
    s.add_argument("--workers", type=int, default=0,
                   help="with --chunked: dask worker processes (0: in this process)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("suggest", help="rank the unpainted slices: what to paint next")
    s.add_argument("image", help="image stack (Z, Y, X)")
    s.add_argument("--models", nargs="+", required=True,
                   help=f"checkpoint files or training folders (all {BEST_NAME} inside)")
    s.add_argument("--labels", help="painted labels of the stack: slices holding any non-zero "
                                    "label are never suggested")
    s.add_argument("--slices", help="suggest only among these slices, e.g. 0-19")
    s.add_argument("-k", type=int, default=5, help="how many slices to list (default 5)")
    s.add_argument("--region", type=int, default=128,
                   help="side of the most uncertain region shown per slice (px)")
    s.add_argument("--no-flips", action="store_true",
                   help="one model: score its entropy only instead of also comparing its "
                        "predictions of the mirrored image (4x faster)")
    s.add_argument("--device", default="auto")
    s.add_argument("--tile", type=int, default=512, help="tile size in pixels")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_suggest)

    s = sub.add_parser("evaluate", help="Dice, ABD/HD95/RVD for scans, V_rand/V_info for EM")
    s.add_argument("prediction", help="probability map or mask")
    s.add_argument("labels", help="ground truth")
    s.add_argument("--measures", default="auto", choices=["auto", "em", "volume", "all"],
                   help="auto (default): volume measures (Dice, average boundary distance, "
                        "95%% Hausdorff, relative volume difference) when either file is "
                        "NIfTI/MHA/NRRD/DICOM, stores its spacing in mm, or --spacing is "
                        "given; else the ISBI EM measures (V_rand, V_info, Dice, pixel error)")
    s.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="voxel size in mm per axis, Z Y X (Y X for 2D); overrides the headers")
    s.add_argument("--slices", help="compare against these label slices, e.g. 20-29")
    s.add_argument("--prediction-slices", help="use these slices of the prediction")
    s.add_argument("--threshold", type=float, default=0.5,
                   help="prediction > THRESHOLD is the mask for Dice, pixel error and the "
                        "volume measures (default 0.5)")
    s.add_argument("--foreground-value", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="train, predict and evaluate on the embedded sample stack")
    s.add_argument("--out", default="demo_output")
    s.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    s.add_argument("--minutes", type=float, default=3.0)
    s.add_argument("--epochs", type=int, default=200)
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true",
                   help="OUT/model already holds a run: move it aside (never deleted) and "
                        "train anew")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("export-bioimageio",
                       help="write trained model(s) as one bioimage.io model package (.zip)")
    s.add_argument("--models", nargs="+", required=True,
                   help="checkpoint files or training folders (an ensemble is averaged)")
    s.add_argument("--out", required=True, help="package zip to write")
    s.add_argument("--name", default="napari-fcres segmentation")
    s.add_argument("--description",
                   default="Binary segmentation with a learned pre-processor and an FC-ResNet")
    s.add_argument("--author", action="append", help="author name (repeatable)")
    s.add_argument("--maintainer", action="append", help="GitHub user name (repeatable)")
    s.add_argument("--license", default="BSD-3-Clause", help="SPDX license of the weights")
    s.add_argument("--test-image", help="image for the test tensors (default: sample:image)")
    s.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript copy")
    s.set_defaults(func=cmd_export_bioimageio)

    s = sub.add_parser("import-bioimageio",
                       help="turn a package written by export-bioimageio into checkpoint(s)")
    s.add_argument("package", help="package zip, folder or rdf.yaml")
    s.add_argument("--out", required=True,
                   help="checkpoint file (one model) or folder (ensemble: "
                        f"{MEMBER_PREFIX}KK/{BEST_NAME})")
    s.add_argument("--member", type=int, help="import only this ensemble member")
    s.set_defaults(func=cmd_import_bioimageio)

    s = sub.add_parser("fetch-isbi", help="download (or locate) the ISBI 2012 EM data")
    s.add_argument("--cache-dir")
    s.set_defaults(func=cmd_fetch)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except FcresError as exc:
        print(f"fcres {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fcres {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
