"""Smoke test of benchmarks/norm_stats.py: ``--quick`` runs end to end (numbers not judged)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "norm_stats.py"


def test_quick_reports_every_mode_and_tiling(tmp_path, load_benchmark):
    module = load_benchmark("norm_stats")
    out = tmp_path / "norm_stats.json"
    assert module.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"running", "precise", "input-image", "image"}
    assert set(result["tiles"]) == {"64-shared", "64-own"}
    for row in [*result["modes"].values(), *result["tiles"].values()]:
        assert 0.0 <= row["v_rand"] <= 1.0
    assert result["tiles"]["64-shared"]["mean_abs_diff"] >= 0.0
