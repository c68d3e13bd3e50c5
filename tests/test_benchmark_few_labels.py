"""Smoke test of benchmarks/few_labels.py: ``--quick`` with the simulated annotator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "few_labels.py"
CHILD_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}


def test_slice_choices(load_benchmark) -> None:
    module = load_benchmark("few_labels")
    assert module.even_slices(3) == [0, 5, 10]
    assert module.even_slices(1) == [5]
    drawn = module.random_slices(3, seed=0)
    assert len(set(drawn)) == 3 and set(drawn) <= set(module.POOL)
    assert drawn == module.random_slices(3, seed=0)


def test_annotator_rounds_are_shared_by_every_k(tmp_path: Path) -> None:
    out = tmp_path / "res"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--k", "1", "2", "--choices", "suggested",
         "--methods", "ours", "--jobs", "1", "--out", str(out)],
        capture_output=True, timeout=600, text=True, encoding="utf-8", errors="replace",
        env=CHILD_ENV,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(r["k"], r["choice"]) for r in rows] == [(1, "suggested"), (2, "suggested")]
    assert rows[0]["painted"] == [5]
    second = rows[1]["painted"]
    assert 5 in second and len(second) == 2  # the annotator added the slice the tool suggested
    rounds = sorted(p.name for p in (out / "b0.02_suggested_rounds").iterdir())
    assert rounds == sorted(["slices_5", "slices_" + "-".join(map(str, second))])
    assert all("error" not in r and 0.0 <= r["test"]["v_rand"] <= 1.0 for r in rows)
    assert "test V_rand mean" in (out / "results.md").read_text()  # mean and spread table
