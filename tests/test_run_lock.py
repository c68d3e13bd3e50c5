"""One writer per run folder, and no training over a finished run (runs.py, run_lock.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile

from napari_fcres import runs
from napari_fcres.cli import main
from napari_fcres.errors import InputError
from napari_fcres.run_lock import acquire_run_lock, read_holder
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread_module")

#: A process that holds a folder's lock until its stdin closes.
HOLDER = """
import sys
from napari_fcres.run_lock import acquire_run_lock
lock = acquire_run_lock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock_stack")
    image, labels = synthetic_em_stack(shape=(3, 48, 48), seed=3)
    tifffile.imwrite(root / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(root / "labels.tif", labels, photometric="minisblack")
    return root


def cli_train(files: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "train", str(files / "image.tif"), str(files / "labels.tif"), "--out",
            str(out), "--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "2",
            "--crop-size", "32", "--batch-size", "2", "--device", "cpu", *extra]


def _holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = proc.stdout.readline().decode()
    assert line.strip() == "locked", proc.stderr.read().decode()
    return proc


# ----------------------------------------------------------------------------- the lock

def test_lock_names_its_holder_and_goes_with_the_run(tmp_path):
    folder = tmp_path / "run"
    with acquire_run_lock(folder) as lock:
        assert lock.path == runs.lock_path(folder)
        holder = read_holder(folder)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"]
        # a second writer, even in this process, is refused at once
        with pytest.raises(InputError, match=f"{folder} is in use.*pid {os.getpid()}"):
            acquire_run_lock(folder)
    assert not runs.lock_path(folder).exists()
    assert not folder.exists()  # the lock made the folder and nothing else was written
    (folder / "keep").mkdir(parents=True)
    with acquire_run_lock(folder):
        pass
    assert (folder / "keep").is_dir()


def test_a_second_training_fails_at_once_naming_folder_and_holder(tmp_path, stack_files,
                                                                   capsys):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        t0 = time.perf_counter()
        assert main(cli_train(stack_files, folder)) == 2
        assert time.perf_counter() - t0 < 10
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"{folder} is in use" in err and f"pid {proc.pid} on {socket.gethostname()}" in err
        assert not runs.run_checkpoints(folder) and not runs.config_path(folder).exists()
    finally:
        proc.communicate(b"", timeout=60)
    assert proc.returncode == 0
    assert main(cli_train(stack_files, folder)) == 0  # free again
    assert not runs.lock_path(folder).exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "run"
    proc = _holder(folder)
    proc.kill()
    proc.communicate(timeout=60)
    assert read_holder(folder)["pid"] == proc.pid  # left behind
    caplog.set_level(logging.WARNING, logger="napari_fcres")
    with acquire_run_lock(folder):
        assert read_holder(folder)["pid"] == os.getpid()
    assert f"taking over the lock of a training that no longer runs (pid {proc.pid}" in caplog.text


def test_a_lock_from_another_computer_is_reported_not_broken(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    stale = {"pid": 4242, "host": "cluster-node-7", "started": "2026-01-01 10:00:00"}
    runs.lock_path(folder).write_text(json.dumps(stale))
    with pytest.raises(InputError) as err:
        acquire_run_lock(folder)
    message = str(err.value)
    assert "pid 4242 on cluster-node-7" in message
    assert f"delete {runs.lock_path(folder)}" in message and "\n" not in message
    assert json.loads(runs.lock_path(folder).read_text()) == stale  # left as it was


# ----------------------------------------------------------------------------- existing runs

def test_a_finished_run_is_kept_unless_overwrite_moves_it_aside(tmp_path, stack_files, capsys,
                                                                caplog):
    out = tmp_path / "r1"
    assert main(cli_train(stack_files, out)) == 0
    best = out / "member_00" / "best.pt"
    before = md5(best)
    capsys.readouterr()
    # again without --resume / --overwrite: refused at once, the run untouched
    assert main(cli_train(stack_files, out, "--seed", "9")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out} already holds a run" in err
    assert "--resume" in err and "--overwrite" in err
    assert md5(best) == before and not runs.lock_path(out).exists()
    assert main(cli_train(stack_files, out, "--resume", "--overwrite")) == 2
    assert "exclude each other" in capsys.readouterr().err
    # --overwrite: the old run moves to a sibling, whole; a new one starts in the folder
    caplog.set_level(logging.INFO, logger="napari_fcres")
    assert main(cli_train(stack_files, out, "--overwrite", "--seed", "9")) == 0
    aside = sorted(tmp_path.glob(f"r1{runs.ASIDE_INFIX}*"))
    assert len(aside) == 1 and aside[0].name.startswith("r1.old-20")
    assert md5(aside[0] / "member_00" / "best.pt") == before
    assert (aside[0] / "member_00" / "last.pt").exists() and runs.config_path(aside[0]).exists()
    assert best.exists() and md5(best) != before
    assert f"moved the previous run in {out} aside to {aside[0]}" in caplog.text
    assert not runs.lock_path(aside[0]).exists() and not runs.lock_path(out).exists()


def test_folders_without_checkpoints_take_a_new_run(tmp_path, em_small, tiny_config):
    cfg = tiny_config(epochs=1, steps_per_epoch=1)
    only_config = tmp_path / "stopped_early"  # a run stopped before its first checkpoint
    runs.write_run_config(only_config, cfg)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    for folder in (only_config, tmp_path / "notes"):
        assert runs.claim_for_new_run(folder) is None
        result = run_training(cfg, *em_small, folder)
        assert result.moved_aside is None and result.best_checkpoints[0].exists()
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine"
    # an overwrite moves everything, the user's files too, and deletes nothing
    result = run_training(cfg, *em_small, tmp_path / "notes", overwrite=True)
    assert (result.moved_aside / "readme.txt").read_text() == "mine"
    assert not (tmp_path / "notes" / "readme.txt").exists()


def test_move_aside_never_reuses_a_folder(tmp_path):
    run = tmp_path / "run"
    runs.member_dir(run, 0).mkdir(parents=True)
    runs.best_path(run, 0).write_bytes(b"1")
    first = runs.move_aside(run)
    runs.best_path(run, 0).parent.mkdir()
    runs.best_path(run, 0).write_bytes(b"2")
    second = runs.move_aside(run)
    assert first != second and first.parent == second.parent == tmp_path
    assert runs.best_path(first, 0).read_bytes() == b"1"
    assert runs.best_path(second, 0).read_bytes() == b"2"
    assert run.is_dir() and not any(run.iterdir())
