"""Peak memory and wall time of :func:`napari_fcres.inference.predict` on one large slice.

Each size runs in a fresh subprocess so ``ru_maxrss`` is the peak of that run
alone.  Random weights are fine: memory does not depend on them.

    python benchmarks/predict_memory.py --sizes 1024 4096 8192 --preset cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_torch_threads  # noqa: E402

log = logging.getLogger("predict_memory")


def _rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _worker(args: argparse.Namespace) -> dict[str, float | int | str]:
    import numpy as np
    import torch

    from napari_fcres.inference import load_models, predict

    set_torch_threads(args.threads)
    if args.checkpoint:
        models = load_models([args.checkpoint], device=args.device)
        name = args.checkpoint
    else:
        from napari_fcres.config import preset_config
        from napari_fcres.models import build_model

        torch.manual_seed(0)
        models = [build_model(preset_config(args.preset).model)]
        name = f"preset {args.preset} (random weights)"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, size=(args.size, args.size), dtype=np.uint16)
    before = _rss_mib()
    start = time.perf_counter()
    result = predict(
        models,
        image,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        tta=args.tta,
    )
    seconds = time.perf_counter() - start
    assert result.probabilities.shape == image.shape
    return {
        "model": name,
        "size": args.size,
        "rss_before_predict_mib": round(before, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.worker:
        sys.stdout.write(json.dumps(_worker(args)) + "\n")
        return 0
    passthrough = [
        "--preset",
        args.preset,
        "--tile-size",
        str(args.tile_size),
        "--overlap",
        str(args.overlap),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if args.checkpoint:
        passthrough += ["--checkpoint", args.checkpoint]
    if args.tta:
        passthrough.append("--tta")
    for size in args.sizes or [args.size]:
        cmd = [sys.executable, __file__, "--worker", "--size", str(size), *passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", check=False)
        if proc.returncode != 0:
            log.error("size %d failed:\n%s", size, proc.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        out_mib = size * size * 4 / 2**20
        log.info(
            "%5d x %-5d peak RSS %8.1f MiB (before predict %.1f MiB, output array %.0f MiB)"
            "  %7.1f s  [%s, %d threads]",
            size,
            size,
            row["peak_rss_mib"],
            row["rss_before_predict_mib"],
            out_mib,
            row["seconds"],
            row["model"],
            row["threads"],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
