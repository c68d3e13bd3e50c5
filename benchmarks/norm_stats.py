"""Which batch-norm statistics a trained model should predict with, and what tiling costs.

Scores one trained run folder (or ``best.pt``) on held-out slices, changing only
the statistics every batch normalization uses at prediction:

* ``running``: the running averages of training (PyTorch's and Keras' eval mode);
* ``precise``: running averages recomputed on whole, un-augmented training slices;
* ``input-image``: the input layer on each slice's own statistics, the rest running;
* ``image``: every layer on the slice's own statistics (``model.norm_stats: image``).

Then, with ``image``, it predicts the same slices in smaller tiles that share one set
of statistics per slice (the default for images larger than a tile) and that use
each tile's own statistics, and reports how far each lies from one-tile prediction.

    python benchmarks/norm_stats.py --models runs/isbi30 --slices 20-29 \\
        --train-slices 0-15 --tiles 256 192
    python benchmarks/norm_stats.py --quick      # a tiny untrained model, synthetic stack
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_fcres.inference import load_models, predict
from napari_fcres.metrics import isbi_scores
from napari_fcres.models import SegmentationModel
from napari_fcres.models.norm import ImageBatchNorm2d, set_norm_stats

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path (the tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ISBI_FOREGROUND,
    load_isbi,
    load_sample,
    parse_slices,
    set_torch_threads,
)

log = logging.getLogger("norm_stats")


def _norm_layers(model: SegmentationModel) -> list[tuple[str, ImageBatchNorm2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ImageBatchNorm2d)]


def _precise(model: SegmentationModel, train: np.ndarray) -> None:
    """Running averages recomputed as the mean of whole training slices' statistics."""
    layers = [m for _, m in _norm_layers(model)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for s in train:
            model(torch.from_numpy(np.asarray(s, np.float32))[None, None])
    model.eval()


def _modes(train: np.ndarray) -> dict[str, Callable[[SegmentationModel], None]]:
    def running(m: SegmentationModel) -> None:
        set_norm_stats(m, "running")

    def precise(m: SegmentationModel) -> None:
        set_norm_stats(m, "running")
        _precise(m, train)

    def input_image(m: SegmentationModel) -> None:
        set_norm_stats(m, "running")
        for name, layer in _norm_layers(m):
            if "input_norm" in name:
                layer.norm_stats = "image"

    def image(m: SegmentationModel) -> None:
        set_norm_stats(m, "image")

    return {"running": running, "precise": precise, "input-image": input_image, "image": image}


def _own_tile_statistics(model: SegmentationModel, image: np.ndarray, tile: int) -> np.ndarray:
    """``predict`` with every tile normalized by its own statistics (no shared pass)."""
    import napari_fcres.inference as inference

    class _NoSharing:  # no layer shares statistics: each tile keeps its own
        layers: list = []
        mode = "image"
        per_volume = False

        def __init__(self, _model: SegmentationModel) -> None:
            pass

        def __bool__(self) -> bool:
            return False

    shared = inference.SharedImageStatistics
    inference.SharedImageStatistics = _NoSharing  # type: ignore[assignment,misc]
    try:
        return predict(model, image, tile_size=tile, overlap=min(64, tile // 4)).probabilities
    finally:
        inference.SharedImageStatistics = shared  # type: ignore[misc]


def run(paths: list[str], image: np.ndarray, labels: np.ndarray, train: np.ndarray,
        tiles: list[int], foreground: int | None) -> dict:
    whole_tile = max(image.shape[-2:])
    out: dict = {"modes": {}, "tiles": {}}
    for name, setup in _modes(train).items():
        models = load_models(paths)
        for m in models:
            setup(m)
        p = predict(models, image, tile_size=whole_tile).probabilities
        s = isbi_scores(p, labels, foreground_value=foreground)
        out["modes"][name] = {"v_rand": s["v_rand"], "v_info": s["v_info"]}
        log.info("%-12s V_rand %.4f V_info %.4f", name, s["v_rand"], s["v_info"])
    models = load_models(paths)
    whole = predict(models, image, tile_size=whole_tile).probabilities
    for tile in tiles:
        for kind in ("shared", "own"):
            if kind == "shared":
                p = predict(models, image, tile_size=tile, overlap=min(64, tile // 4)).probabilities
            else:
                p = np.mean([_own_tile_statistics(m, image, tile) for m in models], axis=0)
            s = isbi_scores(p, labels, foreground_value=foreground)
            row = {"v_rand": s["v_rand"], "v_info": s["v_info"],
                   "mean_abs_diff": float(np.abs(p - whole).mean()),
                   "mask_flips": float(((p > 0.5) != (whole > 0.5)).mean())}
            out["tiles"][f"{tile}-{kind}"] = row
            log.info("tile %d %-6s V_rand %.4f V_info %.4f mean|dp| %.4f mask flips %.2f%%",
                     tile, kind, row["v_rand"], row["v_info"], row["mean_abs_diff"],
                     100 * row["mask_flips"])
    return out


def _quick_models(tmp: Path) -> list[str]:
    from napari_fcres.checkpoint import save_checkpoint
    from napari_fcres.config import preset_config
    from napari_fcres.models import build_model

    cfg = preset_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 1, 64, 64) * 200)
    path = tmp / "best.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "preset": "tiny", "architecture": "pipeline",
                           "model_state": model.state_dict()})
    return [str(path)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="run folder(s) or best.pt file(s)")
    p.add_argument("--slices", default="20-29", help="held-out slices of the ISBI volume")
    p.add_argument("--train-slices", default="0-15", help="slices for the 'precise' averages")
    p.add_argument("--tiles", nargs="*", type=int, default=[256, 192])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny untrained model, synthetic stack")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_torch_threads(args.threads)
    if args.quick:
        import tempfile

        img, lab = load_sample()
        image, labels, train = img[:2, :128, :128], lab[:2, :128, :128], img[2:4, :128, :128]
        tmp = Path(tempfile.mkdtemp(prefix="norm_stats_"))
        paths, foreground, tiles = _quick_models(tmp), int(lab.max()), [64]
    else:
        if not args.models:
            p.error("--models is required (or --quick)")
        isbi_image, isbi_labels = load_isbi()
        image = isbi_image[parse_slices(args.slices)]
        labels = isbi_labels[parse_slices(args.slices)]
        train = isbi_image[parse_slices(args.train_slices)]
        paths, foreground, tiles = args.models, ISBI_FOREGROUND, args.tiles
    result = run(paths, image, labels, train, tiles, foreground)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
