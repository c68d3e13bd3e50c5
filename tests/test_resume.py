"""Resuming: periodic last.pt, SIGKILL mid-epoch and mid-write, one rule for --resume."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_fcres.training as training
from napari_fcres.checkpoint import KILL_IN_WRITE_ENV, load_model, read_checkpoint
from napari_fcres.cli import main
from napari_fcres.config import Config, preset_config
from napari_fcres.errors import InputError
from napari_fcres.resume import RESUME_CHANGEABLE, resume_config, resume_request
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training, train

needs_sigkill = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
#: flags of a small, fast CLI run (dice selection keeps validation cheap)
SMALL = ["--preset", "tiny", "--crop-size", "32", "--batch-size", "2", "--device", "cpu"]


def tiny_config(**train_kw) -> Config:
    cfg = preset_config("tiny")
    kw = dict(epochs=3, steps_per_epoch=3, crop_size=32, batch_size=2, device="cpu", seed=5,
              val_split="slices", val_every_steps=3, loss="dice")
    kw.update(train_kw)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw))


@pytest.fixture(scope="module")
def stack():
    return synthetic_em_stack(shape=(4, 64, 64), seed=1)


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory, stack):
    root = tmp_path_factory.mktemp("resume_stack")
    image, labels = stack
    tifffile.imwrite(root / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(root / "labels.tif", labels, photometric="minisblack")
    return root


def cli_train(files: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "train", str(files / "image.tif"), str(files / "labels.tif"),
            "--out", str(out), *extra]


# ----------------------------------------------------------------------------- the rule

def test_nothing_to_resume_is_an_input_error_naming_the_folder(tmp_path, stack, stack_files,
                                                                capsys):
    image, labels = stack
    with pytest.raises(InputError, match="nothing to resume.*does not exist"):
        next(train(tiny_config(), image, labels, tmp_path / "missing", resume=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"nothing to resume in .*empty.*last\.pt"):
        next(train(tiny_config(), image, labels, tmp_path / "empty", resume=True))
    assert not (tmp_path / "empty" / "member_00").exists()  # did not start over
    rc = main(cli_train(stack_files, tmp_path / "empty", "--resume"))
    err = capsys.readouterr().err
    assert rc == 2 and "nothing to resume in" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_uses_the_stored_config_and_refuses_other_flags(tmp_path, stack_files, capsys):
    out = tmp_path / "run"
    assert main(cli_train(stack_files, out, *SMALL, "--epochs", "1", "--steps-per-epoch", "2",
                          "--lr", "0.001")) == 0
    stored = Config.from_yaml(out / "config.yaml")
    capsys.readouterr()
    # a flag that changes the recipe: refused, naming the key and both values
    rc = main(cli_train(stack_files, out, "--resume", "--lr", "0.01"))
    err = capsys.readouterr().err
    assert rc == 2 and "train.lr: 0.001 in the run, 0.01 now" in err
    rc = main(cli_train(stack_files, out, "--resume", "--preset", "cpu", "--batch-size", "3"))
    err = capsys.readouterr().err
    assert rc == 2 and "model.preset: tiny in the run, cpu now" in err
    assert "train.batch_size: 2 in the run, 3 now" in err
    assert Config.from_yaml(out / "config.yaml") == stored  # nothing overwritten
    # no flags at all: the stored tiny config (not the cpu default); --epochs may grow
    assert main(cli_train(stack_files, out, "--resume", "--epochs", "2")) == 0
    after = Config.from_yaml(out / "config.yaml")
    assert after.train.epochs == 2 and after.model == stored.model
    assert after.train.lr == stored.train.lr and after.train.batch_size == 2
    last = read_checkpoint(out / "member_00" / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 4 and last["finished"]


def test_resume_config_allows_only_harmless_changes(tmp_path, stack):
    image, labels = stack
    cfg = tiny_config(epochs=1)
    run_training(cfg, image, labels, tmp_path)
    for key in RESUME_CHANGEABLE:
        assert key.startswith("train.") or key == "augment.intensity"
    longer = training.replace_train(cfg, epochs=5, max_minutes=3.0, patience_steps=7)
    assert resume_config(tmp_path, longer) == longer
    assert resume_request(tmp_path, {"train": {"epochs": 9}}).train.epochs == 9
    with pytest.raises(InputError, match=r"train\.seed: 5 in the run, 6 now"):
        resume_config(tmp_path, training.replace_train(cfg, seed=6))
    other_aug = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, flips=False))
    with pytest.raises(InputError, match=r"augment\.flips: True in the run, False now"):
        next(train(other_aug, image, labels, tmp_path, resume=True))


# ----------------------------------------------------------------------------- periodic saves

def test_last_pt_is_written_every_epoch(tmp_path, stack):
    image, labels = stack
    gen = train(tiny_config(epochs=50), image, labels, tmp_path)
    steps = 0
    while steps < 4:  # suspended in epoch 2, after its first step
        steps += next(gen).kind == "step"
    last = read_checkpoint(tmp_path / "member_00" / "last.pt")  # what a kill would leave
    assert last["epoch"] == 1 and last["step"] == 3 and last["step_in_epoch"] == 0
    assert len(last["history"]) == 1 and "optimizer_state" in last and "rng_state" in last
    gen.close()


def test_mid_epoch_snapshot_resumes_like_an_uninterrupted_run(tmp_path, stack, monkeypatch):
    image, labels = stack
    cfg = tiny_config(epochs=3, steps_per_epoch=3)
    full = run_training(cfg, image, labels, tmp_path / "full")
    reference = read_checkpoint(full.best_checkpoints[0].parent / "last.pt")

    monkeypatch.setattr(training, "CHECKPOINT_INTERVAL_S", 0.0)  # write after every step
    gen = train(cfg, image, labels, tmp_path / "live")
    steps = 0
    while steps < 5:  # the report of step 5 (epoch 2, its 2nd step)
        steps += next(gen).kind == "step"
    # the folder as a SIGKILL would leave it now: copy it before anything else runs.  Its
    # last.pt is step 4's (a snapshot is written after a step's report, between validations
    # every CHECKPOINT_INTERVAL_S): mid-epoch, after the validation of step 3
    shutil.copytree(tmp_path / "live", tmp_path / "killed")
    gen.close()
    snap = read_checkpoint(tmp_path / "killed" / "member_00" / "last.pt")
    assert (snap["epoch"], snap["step"], snap["step_in_epoch"]) == (1, 4, 1)
    assert snap["last_val_step"] == 3

    monkeypatch.setattr(training, "CHECKPOINT_INTERVAL_S", 300.0)
    resumed = run_training(cfg, image, labels, tmp_path / "killed", resume=True)
    assert not resumed.stopped
    last = read_checkpoint(tmp_path / "killed" / "member_00" / "last.pt")
    assert last["step"] == 9 and last["finished"]
    assert [h["epoch"] for h in last["history"]] == [1, 2, 3]
    for key, value in reference["model_state"].items():
        torch.testing.assert_close(last["model_state"][key], value, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- real kills

def _child(out: Path, files: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "napari_fcres.cli", *cli_train(files, out, *SMALL, *extra)]
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8",
                 **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env)


def _epoch_on_disk(path: Path) -> int:
    try:
        return int(read_checkpoint(path)["epoch"])
    except Exception:  # not written yet
        return -1


@needs_sigkill
def test_sigkill_mid_epoch_then_resume_continues(tmp_path, stack_files, caplog):
    out = tmp_path / "run"
    last_pt = out / "member_00" / "last.pt"
    proc = _child(out, stack_files, "--epochs", "1000", "--steps-per-epoch", "20")
    try:
        deadline = time.monotonic() + 120
        while _epoch_on_disk(last_pt) < 2:
            assert proc.poll() is None, proc.communicate()[1].decode("utf-8", "replace")
            assert time.monotonic() < deadline, "no last.pt after two epochs"
            time.sleep(0.05)
        time.sleep(0.1)  # into the next epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed = read_checkpoint(last_pt)
    epoch = int(killed["epoch"])
    assert epoch >= 2 and not killed["finished"]

    caplog.set_level(logging.INFO, logger="napari_fcres")
    assert main(cli_train(stack_files, out, "--resume", "--epochs", str(epoch + 1))) == 0
    assert f"member 0 resumed at epoch {epoch}, step {20 * epoch}" in caplog.text
    # the killed run's lock is provably free: taken over, said in the log
    assert f"taking over the lock of a training that no longer runs (pid {proc.pid}" \
        in caplog.text
    last = read_checkpoint(last_pt)
    assert last["finished"] and last["epoch"] == epoch + 1 and last["step"] == 20 * (epoch + 1)
    assert [h["epoch"] for h in last["history"]] == list(range(1, epoch + 2))
    model, _ = load_model(out / "member_00" / "best.pt")
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


@needs_sigkill
def test_sigkill_inside_a_checkpoint_write_leaves_no_corrupt_file(tmp_path, stack_files):
    out = tmp_path / "run"
    member = out / "member_00"
    # killed between the complete temporary file and its rename, in the 3rd write of
    # last.pt: after the validation of step 9 (one every 3 steps)
    proc = _child(out, stack_files, "--epochs", "10", "--steps-per-epoch", "3",
                  "--val-every", "3", env={KILL_IN_WRITE_ENV: "last.pt:3"})
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err.decode("utf-8", "replace")[-2000:]
    leftovers = list(member.glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1
    for name in ("last.pt", "best.pt"):  # both whole and readable
        read_checkpoint(member / name)
    last = read_checkpoint(member / "last.pt")  # the 2nd write: step 6
    assert (last["step"], last["epoch"]) == (6, 2)

    assert main(cli_train(stack_files, out, "--resume", "--epochs", "4")) == 0
    last = read_checkpoint(member / "last.pt")
    assert last["finished"] and last["epoch"] == 4 and last["step"] == 12
    assert not list(member.glob(".*.tmp"))
    load_model(member / "best.pt")
    assert np.isfinite([h["train_loss"] for h in last["history"]]).all()
