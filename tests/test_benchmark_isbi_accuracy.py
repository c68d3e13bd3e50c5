"""Smoke test of benchmarks/isbi_accuracy.py: ``--quick`` end to end; files and keys only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "isbi_accuracy.py"

# the child writes UTF-8 (UTF-8 mode: its output and files) and we read UTF-8, whatever
# the locale (a C/ASCII locale would otherwise fail on the scripts' non-ASCII output)
CHILD_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
TEXT = {"text": True, "encoding": "utf-8", "errors": "replace", "env": CHILD_ENV}
FCRES_METHODS = (
    "ours", "ours-ensemble", "ours-dice", "fcresnet-standardize", "fcresnet-rescale", "unet",
)
ALL_METHODS = (*FCRES_METHODS, "torch-em-unet", "random-forest", "smoothed-raw")
SCORE_KEYS = ("v_rand", "v_info", "dice", "pixel_error", "per_slice", "v_rand_threshold",
              "v_info_threshold", "train_seconds", "steps", "epochs", "budget_minutes")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("isbi_quick")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out / "res"),
         "--plot", str(out / "vrand.png"), "--jobs", "4"],
        capture_output=True, timeout=300, **TEXT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_help() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                          timeout=60, **TEXT)
    assert done.returncode == 0
    for option in ("--budget-minutes", "--folds", "--methods", "--ensemble", "--jobs",
                   "--quick", "--torch-em-python", "--device", "--out", "--plot"):
        assert option in done.stdout


def test_folds_cover_the_stack_and_one_fold_runs_alone(load_benchmark) -> None:
    module = load_benchmark("isbi_accuracy")
    assert module.make_folds(30, "main") == {"main": (list(range(20)), list(range(20, 30)))}
    three = module.make_folds(30, "3fold")
    assert sorted(i for _, test in three.values() for i in test) == list(range(30))
    for name, (train, test) in three.items():
        assert not set(train) & set(test)
        assert module.make_folds(30, name) == {name: (train, test)}
    assert module.make_folds(30, "fold1")["fold1"][1] == list(range(10, 20))


def test_quick_outputs(quick_run: Path) -> None:
    res = quick_run / "res"
    report = json.loads((res / "results.json").read_text(encoding="utf-8"))
    assert {"settings", "folds", "summary", "fold_slices"} <= set(report)
    assert report["settings"]["quick"] is True
    assert "fairness" in report["settings"]
    assert (res / "results.md").read_text(encoding="utf-8").startswith("# ISBI 2012")
    assert (quick_run / "vrand.png").stat().st_size > 0
    rows = report["folds"]["main"]
    assert set(rows) == set(ALL_METHODS)
    for method in ALL_METHODS:
        row = rows[method]
        assert "error" not in row, f"{method}: {row.get('error')}"
        if "skipped" in row:  # torch-em / scikit-learn not installed here
            assert method in ("torch-em-unet", "random-forest")
            continue
        folder = res / "main" / method
        assert (folder / "probabilities.tif").is_file()
        scores = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
        assert set(SCORE_KEYS) <= set(scores)
        assert set(scores["per_slice"]) >= {"slice", "v_rand", "v_info", "dice", "pixel_error"}
        assert method in report["summary"]
    for method in FCRES_METHODS:
        folder = res / "main" / method
        assert (folder / "config.yaml").is_file()
        assert (folder / "member_00" / "best.pt").is_file()
    assert (res / "main" / "ours-ensemble" / "member_01" / "best.pt").is_file()


def test_quick_run_dir_loads(quick_run: Path) -> None:
    from napari_fcres.inference import load_models

    assert len(load_models(quick_run / "res" / "main" / "ours-ensemble")) == 2
