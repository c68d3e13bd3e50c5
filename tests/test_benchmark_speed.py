"""Smoke test of benchmarks/speed.py: ``--quick all`` runs end to end.

Only the outputs' presence and layout are checked, never the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from napari_fcres.checkpoint import save_checkpoint
from napari_fcres.config import preset_config
from napari_fcres.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"

# the child writes UTF-8 (UTF-8 mode: its output and files) and we read UTF-8, whatever
# the locale (a C/ASCII locale would otherwise fail on the scripts' non-ASCII output)
CHILD_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
TEXT = {"text": True, "encoding": "utf-8", "errors": "replace", "env": CHILD_ENV}


def _history_checkpoint(path: Path, timed: bool) -> Path:
    dice = [0.5, 0.91, 0.935, 0.94]
    history = [
        {"epoch": e + 1, "step": 10 * (e + 1), "train_loss": -d, "val_dice": d,
         **({"elapsed_s": 60.0 * (e + 1)} if timed else {})}
        for e, d in enumerate(dice)
    ]
    cfg = preset_config("tiny")
    return save_checkpoint(path, {
        "config": cfg.to_dict(), "preset": "tiny",
        "model_state": build_model(cfg.model).state_dict(),
        "architecture": "pipeline", "history": history, "step": 40, "elapsed_s": 240.0,
    })


def test_time_to_dice_reads_history(tmp_path: Path, load_benchmark) -> None:
    speed = load_benchmark("speed")
    timed = speed.time_to_dice(_history_checkpoint(tmp_path / "a" / "last.pt", True))[0]
    assert timed["reached"]["0.90"]["seconds"] == 120.0
    assert timed["reached"]["0.93"]["epoch"] == 3
    assert timed["reached"]["0.95"] is None
    untimed = speed.time_to_dice(_history_checkpoint(tmp_path / "b" / "last.pt", False))[0]
    assert untimed["time_source"].startswith("estimated")
    assert untimed["reached"]["0.90"]["seconds"] == 20 * 6.0  # 20 steps x 240 s / 40 steps


def test_quick_all_writes_results(tmp_path: Path) -> None:
    ck = _history_checkpoint(tmp_path / "run" / "member_00" / "last.pt", True)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "all", "--device", "cpu", "--out", str(out),
         "--history", str(ck.parent.parent)],
        cwd=ROOT, capture_output=True, timeout=300, **TEXT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "results.md").read_text(encoding="utf-8").startswith("# Speed and memory")
    assert results["quick"] is True
    assert results["runs"][-1]["parts"] == ["train", "infer", "memory"]
    for key in ("cpu", "cpu_cores", "torch", "torch_threads", "gpu"):
        assert key in results["machine"], key
    train = results["train"]
    assert train and {"preset", "batch", "images_per_s", "seconds_per_step",
                      "device_name"} <= set(train[0])
    assert {"median", "min", "max", "n"} <= set(train[0]["images_per_s"])
    assert set(results["time_to_dice"][0]["reached"]) == {"0.90", "0.93", "0.95"}
    infer = results["infer"]
    cases = {row["case"] for row in infer["rows"]}
    assert {"predict (defaults)", "naive per-tile loop", "TTA x8 (single model)"} <= cases
    assert any(c.startswith("ensemble of") for c in cases)
    assert all("megapixels_per_s" in row for row in infer["rows"])
    assert any(r["comparison"].endswith("naive per-tile loop") for r in infer["speedups"])
    assert infer["naive_vs_predict_max_abs_diff"]["cpu"] < 1e-3
    memory = results["memory"]
    assert len(memory["rows"]) >= 2
    for row in memory["rows"]:
        for key in ("size", "peak_rss_mib", "input_uint16_mib", "output_float32_mib",
                    "peak_minus_arrays_mib"):
            assert key in row, key


def test_memory_rows_merge_by_size(load_benchmark) -> None:
    speed = load_benchmark("speed")
    settings = {"preset": "tiny", "tile": 512}

    def row(size: int, extra: float) -> dict:
        return {"size": size, "tiled": size > 512, "peak_minus_arrays_mib": extra}

    old = {"settings": settings, "rows": [row(1024, 10.0), row(4096, 12.0)]}
    new = {"settings": settings, "rows": [row(4096, 11.0), row(16384, 15.0)]}
    merged = speed.merge_memory(old, new)
    assert [r["size"] for r in merged["rows"]] == [1024, 4096, 16384]
    assert merged["rows"][1]["peak_minus_arrays_mib"] == 11.0
    assert merged["tiled_spread_mib"] == 5.0
    other = {"settings": {"preset": "cpu", "tile": 512}, "rows": [row(16384, 1.0)]}
    assert speed.merge_memory(old, other) is other
