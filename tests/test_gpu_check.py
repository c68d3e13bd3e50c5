"""benchmarks/gpu_check.py: its dry run end to end, with only what the GPU machine has.

The GPU machine has torch, numpy, scipy, scikit-image, tifffile and pyyaml, and the project
as source: no SimpleITK, napari, Qt, pooch, zarr or dask.  A ``sitecustomize`` on the
children's ``PYTHONPATH`` blocks those modules in every process of the check (the script,
its phase processes, the widgets' worker process and the torchrun ranks), so an import of
one at module level anywhere on the path fails the run.  Numbers are not judged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
#: Absent on the GPU machine (or GUI-only): importing any of them must not be needed.
BLOCKED = ("SimpleITK", "pooch", "napari", "qtpy", "zarr", "dask", "magicgui", "superqt")
SITECUSTOMIZE = f"""
import os, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # import raises ImportError
with open(os.environ["GPU_CHECK_PROCESS_LOG"], "a") as f:
    f.write(f"{{os.getpid()}}\\n")
"""


def _env(tmp: Path) -> dict[str, str]:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
            "GPU_CHECK_PROCESS_LOG": str(tmp / "processes.txt"),
            "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}


def _run(args: list[str], tmp: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, encoding="utf-8", errors="replace", env=_env(tmp),
                          cwd=str(tmp), timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    tmp = tmp_path_factory.mktemp("gpu_check")
    done = _run(["--dry-run", "--ddp-cpu", "2", "--out", str(tmp / "out" / "check.json")],
                tmp, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp / "out" / "check.json").read_text()), tmp, done.stderr


def test_blocked_modules_are_blocked_in_every_process(dry_run):
    _, tmp, _ = dry_run
    pids = (tmp / "processes.txt").read_text().split()
    # the script, two trainings, prediction, the worker process, torchrun and its 2 ranks
    assert len(set(pids)) >= 8


def test_every_phase_ran(dry_run):
    report, tmp, log = dry_run
    assert {n: p["status"] for n, p in report["phases"].items()} == dict.fromkeys(
        ("train_cpu", "train_paper", "predict", "ddp"), "ok")
    assert report["settings"]["dry_run"] and report["settings"]["device"] == "cpu"
    assert (tmp / "out" / "check.log").exists()  # every phase's log beside the JSON
    assert "| preset | steps/s | images/s | peak GPU memory |" in log


def test_training_rows(dry_run):
    report, _, _ = dry_run
    assert set(report["training"]) == {"cpu", "paper"}
    for row in report["training"].values():
        assert row["stage"] == "done"
        assert row["config"]["preset"] == "tiny"
        assert row["config"]["equivalent_command"].startswith("fcres train")
        tr = row["training"]
        assert tr["steps"] == 4 and tr["steps_per_s"] > 0 and tr["images_per_s"] > 0
        assert tr["gpu_peak"] is None  # the CPU has no GPU memory to report
        for mode in ("single", "tta"):
            scores = row["evaluation"][mode]
            assert 0.0 <= scores["v_rand"] <= 1.0 and 0.0 <= scores["v_info"] <= 1.0


def test_prediction_timings_and_amp_agreement(dry_run):
    report, _, _ = dry_run
    pred = report["prediction"]
    assert pred["image"]["shape"] == [192, 192]
    for row in ("cpu", "paper"):
        res = pred["rows"][row]
        assert res["weights"].startswith("trained")
        for setting in ("fp32", "amp_bf16", "fp32_contiguous"):
            assert res["settings"][setting]["mpx_per_s"] > 0
        amp = res["amp_vs_fp32"]
        assert 0.0 <= amp["max_abs_diff"] <= 1.0 and isinstance(amp["agree"], bool)
        assert amp["tolerance"] == report["settings"]["amp_tolerance"]
        # channels_last changes the memory layout, not the result
        assert res["contiguous_vs_channels_last"]["max_abs_diff"] < 1e-3


def test_worker_process_and_ddp(dry_run):
    report, _, _ = dry_run
    wp = report["worker_process"]
    assert wp["child_exited"] and wp["progress_reports"] >= 1
    assert wp["max_abs_diff_vs_in_process"] < 1e-5  # the widget's job predicts the same
    assert wp["released"] is None  # no CUDA here: nothing to measure
    ddp = report["ddp"]
    assert ddp["status"] == "ran" and ddp["backend"] == "gloo" and ddp["world_size"] == 2
    assert ddp["same_loss_on_every_rank"]


def test_budget_is_a_hard_limit(tmp_path):
    """With no time for it, a phase is killed or skipped and the JSON is still written."""
    out = tmp_path / "check.json"
    done = _run(["--dry-run", "--budget-minutes", "0.2", "--out", str(out)], tmp_path,
                timeout=120)
    assert done.returncode == 1
    report = json.loads(out.read_text())
    phases = report["phases"]
    assert phases["train_cpu"]["status"] == "killed at its deadline"
    assert phases["predict"]["status"].startswith("skipped")
    assert report["total_seconds"] < 0.2 * 60 + 10
    assert report["ddp"]["status"].endswith("DDP/NCCL not run")


def test_isbi_folder_is_required_outside_a_dry_run(tmp_path):
    done = _run(["--out", str(tmp_path / "x.json")], tmp_path, timeout=60)
    assert done.returncode == 2 and "--isbi" in done.stderr
