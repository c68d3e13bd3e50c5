"""Smoke test of benchmarks/normalization_claims.py: ``--quick all`` runs end to end.

Only the outputs' presence and layout are checked, never the numbers.  Without the
ISBI 2012 data the quick mode falls back to the synthetic sample stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "normalization_claims.py"

# the child writes UTF-8 (UTF-8 mode: its output and files) and we read UTF-8, whatever
# the locale (a C/ASCII locale would otherwise fail on the scripts' non-ASCII output)
CHILD_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
TEXT = {"text": True, "encoding": "utf-8", "errors": "replace", "env": CHILD_ENV}


def test_storage_forms_and_shifts_keep_shape_and_dtype(load_benchmark) -> None:
    nc = load_benchmark("normalization_claims")
    x = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16), dtype=np.uint8)
    assert nc.to_storage(x, "uint16").dtype == np.uint16
    assert int(nc.to_storage(x, "uint16").max()) == int(x.max()) * 257
    assert nc.to_storage(x, "float32").min() == float(x.min()) * 16 - 1024
    for shift in nc.SHIFTS:
        y = nc.apply_shift(x, shift)
        assert y.dtype == np.uint8 and y.shape == x.shape
    assert np.array_equal(nc.apply_shift(x, "identity"), x)
    stats = nc.gauss_stats(np.zeros(100) + np.arange(100) % 3, np.arange(100) % 5 + 10.0)
    assert stats["d_prime"] > 0 and 0.0 <= stats["overlap"] <= 1.0


def test_quick_all_writes_results(tmp_path: Path) -> None:
    out, plots = tmp_path / "out", tmp_path / "plots"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "all", "--out", str(out),
         "--plot-dir", str(plots)],
        cwd=ROOT, capture_output=True, timeout=300, **TEXT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Raw-range robustness" in proc.stdout
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "results.md").read_text(encoding="utf-8").startswith("# ")
    for name in ("normalization_fig6.png", "normalization_range.png",
                 "normalization_shift.png"):
        assert (plots / name).stat().st_size > 0, name
    assert results["meta"]["quick"] is True
    runs = results["range"]["runs"]
    assert set(runs) == {"uint8", "uint16", "float32"}
    for form in runs.values():
        for arch in ("pipeline", "fcresnet-raw", "fcresnet-standardize"):
            run = form[arch]
            for key in ("best_val_dice", "diverged", "steps", "scores"):
                assert key in run, (arch, key)
    shift = results["shift"]["results"]
    assert "pipeline" in shift
    assert set(shift["pipeline"]["shifts"]) == set(results["shift"]["shifts"])
    fig6 = results["fig6"]
    for where in ("input", "after_preprocessor"):
        assert {"membrane", "interior", "d_prime", "overlap"} <= set(fig6[where])
