"""Predict an OME-Zarr volume larger than the memory the process may use.

Writes a synthetic float32 OME-Zarr volume (default 97 x 1856 x 1856, 1.25 GiB)
and a random-weight ``tiny`` checkpoint, then runs

    fcres predict VOLUME.zarr --models MODEL.pt --out VOLUME.zarr --chunked ...

in a subprocess whose address space is capped with ``RLIMIT_AS`` (default
1 GiB, i.e. smaller than the volume alone), and reports its peak resident
and virtual memory.  As a control the in-memory path (``--out x.tif``, which
reads the whole volume) runs under the same cap and fails.  Finally a few
slices of the chunked labels are compared with in-memory prediction.

    nice -n 19 python benchmarks/chunked_memory.py            # the full demo
    python benchmarks/chunked_memory.py --slices 4 --limit-mib 0   # quick check

Random weights are fine: memory does not depend on them.  RLIMIT_AS counts
virtual memory, and torch alone maps about 0.65 GiB, so the cap cannot be much
lower; peak RSS is the figure to compare with the volume.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import thread_env  # noqa: E402

log = logging.getLogger("chunked_memory")


def _status() -> dict[str, int]:
    """VmPeak / VmHWM of this process in MiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmPeak", "VmHWM")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def _worker(cli_args: list[str]) -> int:
    """Run the CLI in this (limited) process and print its peak memory as JSON."""
    import contextlib
    import io

    from napari_fcres.cli import main

    start = time.perf_counter()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(cli_args)
        lines = err.getvalue().strip().splitlines()
        error = lines[-1][:300] if rc and lines else ""
    except BaseException as exc:  # noqa: BLE001 - report any failure, e.g. MemoryError
        rc, error = 1, f"{type(exc).__name__}: {str(exc)[:300]}"
    row = {"rc": rc, "error": error, "seconds": round(time.perf_counter() - start, 1),
           "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
           **_status()}
    sys.stdout.write("RESULT " + json.dumps(row) + "\n")
    return 0


def _make_inputs(root: Path, slices: int, size: int, preset: str) -> tuple[Path, Path]:
    import numpy as np
    import torch
    from scipy import ndimage

    from napari_fcres.checkpoint import save_checkpoint
    from napari_fcres.config import preset_config
    from napari_fcres.models import build_model
    from napari_fcres.ome_zarr import create_ome_zarr_image

    root.mkdir(parents=True, exist_ok=True)
    model_path = root / "model.pt"
    torch.manual_seed(0)
    cfg = preset_config(preset)
    save_checkpoint(model_path, {"config": cfg.to_dict(), "preset": preset,
                                 "architecture": cfg.model.architecture,
                                 "model_state": build_model(cfg.model).state_dict()})
    volume = root / "volume.zarr"
    shutil.rmtree(volume, ignore_errors=True)
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((size, size), dtype=np.float32), 4) * 4000
    level = create_ome_zarr_image(volume, (slices, size, size), "float32",
                                  chunks=(1, size // 2, size // 2), spacing=(40.0, 4.0, 4.0),
                                  name="volume", compressors=None)  # on disk = in memory
    t0 = time.perf_counter()
    for z in range(slices):  # slice by slice: the parent stays small too
        level[z] = np.roll(base, 7 * z, axis=1) * (1 + 0.002 * z) + 10.0 * z
    log.info("wrote %s (%d x %d x %d float32, %.2f GiB) in %.0f s", volume, slices, size, size,
             slices * size * size * 4 / 2**30, time.perf_counter() - t0)
    return volume, model_path


def _run_limited(cli_args: list[str], limit_mib: int, threads: int) -> dict:
    def limit() -> None:
        if limit_mib > 0:
            cap = limit_mib * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**thread_env(threads), "MALLOC_ARENA_MAX": "2"}
    cmd = [sys.executable, __file__, "--worker", "--", *cli_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", preexec_fn=limit, env=env,
                          check=False)
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not rows:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"rc": proc.returncode, "error": " | ".join(tail), "seconds": None}
    return json.loads(rows[-1][len("RESULT "):])


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker(argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/fcres_chunked_memory")
    parser.add_argument("--slices", type=int, default=97)
    parser.add_argument("--size", type=int, default=1856,
                        help="slice side; 1856 = 4 tiles of 512 overlapping by 64")
    parser.add_argument("--limit-mib", type=int, default=1024, help="RLIMIT_AS (0: none)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the volume afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    root = Path(args.dir)
    volume, model = _make_inputs(root, args.slices, args.size, args.preset)
    nbytes = args.slices * args.size**2 * 4
    common = ["-q", "predict", str(volume), "--models", str(model), "--tile", str(args.tile),
              "--overlap", str(args.overlap), "--batch-size", "1", "--device", "cpu"]

    control = _run_limited([*common, "--out", str(root / "in_memory.tif")], args.limit_mib,
                           args.threads)
    log.info("in-memory predict under the cap: rc %s, %s", control["rc"],
             control.get("error") or ("succeeded" if control["rc"] == 0 else "failed"))
    chunked = _run_limited([*common, "--out", str(volume), "--chunked"], args.limit_mib,
                           args.threads)
    if chunked["rc"] != 0:
        log.error("chunked prediction failed: %s", chunked)
        return 1

    # spot check: chunked labels of a few slices equal in-memory prediction of them
    import numpy as np
    import zarr

    from napari_fcres.inference import load_models, predict

    labels = zarr.open_array(str(volume / "labels" / "fcres" / "0"), mode="r")
    source = zarr.open_array(str(volume / "0"), mode="r")
    models = load_models([model])
    for z in (0, args.slices // 2, args.slices - 1):
        ref = predict(models, source[z], tile_size=args.tile, overlap=args.overlap).probabilities
        assert np.array_equal(labels[z], (ref > 0.5).astype(np.uint8)), f"slice {z} differs"

    summary = {
        "volume": f"{args.slices} x {args.size} x {args.size} float32",
        "volume_gib": round(nbytes / 2**30, 3),
        "volume_on_disk_gib": round(_dir_size(volume / "0") / 2**30, 3),
        "rlimit_as_mib": args.limit_mib,
        "peak_rss_mib": chunked["VmHWM"],
        "peak_virtual_mib": chunked["VmPeak"],
        "seconds": chunked["seconds"],
        "in_memory_control": control.get("error") or f"rc {control['rc']}",
        "command": "fcres " + " ".join([*common, "--out", str(volume), "--chunked"]),
    }
    log.info("%s", json.dumps(summary, indent=2))
    log.info(
        "chunked: peak RSS %d MiB (%.0f%% of the %.2f GiB volume), peak virtual %d MiB "
        "under RLIMIT_AS %d MiB, %.0f s", chunked["VmHWM"],
        100 * chunked["VmHWM"] * 2**20 / nbytes, nbytes / 2**30, chunked["VmPeak"],
        args.limit_mib, chunked["seconds"],
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
