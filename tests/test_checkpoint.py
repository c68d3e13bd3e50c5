"""Checkpoint files: self-describing, atomic, and clear about what is wrong."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_fcres import runs
from napari_fcres.checkpoint import (
    load_model,
    plain_payload,
    read_checkpoint,
    save_checkpoint,
)
from napari_fcres.cli import main
from napari_fcres.config import preset_config
from napari_fcres.errors import CheckpointError, OutOfMemoryError
from napari_fcres.models import build_model
from napari_fcres.runs import find_checkpoints
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import replace_train, run_training


def _tiny_checkpoint(path, preset="tiny"):
    cfg = preset_config(preset)
    model = build_model(cfg.model)
    save_checkpoint(path, {"config": cfg.to_dict(), "model_state": model.state_dict()})
    return model


def test_checkpoint_rebuilds_its_model_alone(tmp_path):
    model = _tiny_checkpoint(tmp_path / "m.pt").eval()
    loaded, data = load_model(tmp_path / "m.pt")
    assert data["format"] == "napari-fcres-checkpoint" and data["package_version"]
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_corrupt_truncated_and_foreign_files(tmp_path):
    _tiny_checkpoint(tmp_path / "good.pt")
    raw = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "text.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-fcres checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_another_preset(tmp_path):
    _tiny_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError, match="'tiny' model but preset 'cpu'"):
        load_model(tmp_path / "tiny.pt", expected_preset="cpu")
    # weights that do not fit the config they claim
    cfg = preset_config("cpu")
    save_checkpoint(tmp_path / "mixed.pt", {
        "config": cfg.to_dict(), "model_state": build_model(preset_config("tiny").model)
        .state_dict()})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "mixed.pt")


def test_find_checkpoints_expands_folders(tmp_path):
    for k in range(3):
        _tiny_checkpoint(tmp_path / f"member_{k:02d}" / "best.pt")
    assert len(find_checkpoints([tmp_path])) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no best.pt"):
        find_checkpoints([tmp_path / "empty"])


def test_out_of_memory_during_training_says_what_to_change(tmp_path, monkeypatch):
    image, labels = synthetic_em_stack(shape=(2, 48, 48), seed=0)
    cfg = preset_config("tiny")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=1, steps_per_epoch=1, crop_size=32, batch_size=2, device="cpu"))

    def boom(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr("napari_fcres.models.Pipeline._forward", boom)
    with pytest.raises(OutOfMemoryError, match="batch size"):
        run_training(cfg, image, labels, tmp_path)


# ----------------------------------------------------------------------------- opening is safe

class _RunsCode:
    """Pickles as a call of ``os.system``: what a crafted checkpoint would run when opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path, marker: Path, *, looks_like_ours: bool) -> Path:
    """A checkpoint file whose unpickling would create ``marker``."""
    payload: dict = {"payload": _RunsCode(marker)}
    if looks_like_ours:  # our marker and keys, the code hidden in the random state
        cfg = preset_config("tiny")
        payload = {"format": "napari-fcres-checkpoint", "format_version": 1,
                   "config": cfg.to_dict(), "model_state": build_model(cfg.model).state_dict(),
                   "rng_state": {"numpy": _RunsCode(marker)}}
    torch.save(payload, path)
    return path


@pytest.mark.skipif(os.name != "posix", reason="the crafted file runs a POSIX shell command")
@pytest.mark.parametrize("looks_like_ours", [False, True])
def test_a_crafted_checkpoint_never_runs_code(tmp_path, looks_like_ours):
    marker = tmp_path / "MARKER"
    evil = _crafted(tmp_path / "evil.pt", marker, looks_like_ours=looks_like_ours)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(evil)
    message = str(err.value)
    assert str(evil) in message and "\n" not in message
    assert "refused unread" in message and "system" in message
    for opener in (load_model, runs.load_ensemble, lambda p: runs.init_model_config(p)):
        with pytest.raises(CheckpointError, match="refused unread"):
            opener(evil)
    assert not marker.exists()


@pytest.mark.skipif(os.name != "posix", reason="the crafted file runs a POSIX shell command")
def test_a_crafted_checkpoint_through_the_command_line(tmp_path, capsys):
    """predict --models, train --init and train --resume: exit 2, one line, nothing run."""
    marker = tmp_path / "MARKER"
    image, labels = synthetic_em_stack(shape=(2, 32, 32), seed=0)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    evil = _crafted(tmp_path / "evil.pt", marker, looks_like_ours=True)
    run = tmp_path / "run"  # a "run folder" whose last checkpoint is the crafted file
    runs.write_run_config(run, replace_train(preset_config("tiny"), crop_size=32))
    runs.member_dir(run, 0).mkdir()
    _crafted(runs.last_path(run, 0), marker, looks_like_ours=True)
    train = ["-q", "train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"),
             "--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "1", "--crop-size",
             "32", "--device", "cpu"]
    for argv in (["-q", "predict", str(tmp_path / "image.tif"), "--models", str(evil),
                  "--out", str(tmp_path / "o.tif")],
                 [*train, "--out", str(tmp_path / "tuned"), "--init", str(evil)],
                 [*train[:4], "--out", str(run), "--resume"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refused unread" in err, err
        assert not marker.exists()
    assert not (tmp_path / "o.tif").exists()


def test_every_checkpoint_training_writes_opens_weights_only(tmp_path, em_small, tiny_config,
                                                             one_thread):
    run_training(tiny_config(epochs=1, steps_per_epoch=2), *em_small, tmp_path)
    for name in ("best.pt", "last.pt"):
        path = tmp_path / "member_00" / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        data = torch.load(path, weights_only=True)
        assert isinstance(data["config"], dict)
    rng = torch.load(tmp_path / "member_00" / "last.pt", weights_only=True)["rng_state"]
    assert isinstance(rng["numpy"]["key"], torch.Tensor)
    assert isinstance(rng["python"]["state"], torch.Tensor)


def test_writing_refuses_what_would_need_unpickling(tmp_path):
    cfg = preset_config("tiny")
    base = {"config": cfg.to_dict(), "model_state": build_model(cfg.model).state_dict()}
    with pytest.raises(TypeError, match=r"\['extra'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "a.pt", {**base, "extra": np.zeros(3)})
    with pytest.raises(TypeError, match="pathlib"):
        save_checkpoint(tmp_path / "b.pt", {**base, "extra": [tmp_path]})
    assert not list(tmp_path.iterdir())  # nothing written
    # NumPy scalars become Python numbers; the state dict keeps its version metadata
    save_checkpoint(tmp_path / "c.pt", {**base, "history": [{"val": np.float64(0.5)}]})
    back = read_checkpoint(tmp_path / "c.pt")
    assert type(back["history"][0]["val"]) is float
    assert plain_payload(base["model_state"]) is base["model_state"]


def _old_format(last: Path) -> None:
    """Rewrite ``last`` as napari-fcres wrote it before the weights-only rule."""
    data = torch.load(last, weights_only=True)
    data["rng_state"]["numpy"] = np.random.get_state()
    data["rng_state"]["python"] = random.getstate()
    torch.save(data, last)


def _as_numpy1(src: Path, dst: Path) -> Path:
    """``src`` as NumPy 1 pickles it (``numpy.core`` instead of ``numpy._core``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info.filename, data)
    dst.write_bytes(buf.getvalue())
    return dst


def test_old_format_checkpoints_open_and_resume(tmp_path, em_small, tiny_config, caplog,
                                                one_thread):
    run = tmp_path / "run"
    run_training(tiny_config(epochs=1, steps_per_epoch=2), *em_small, run)
    last = run / "member_00" / "last.pt"
    _old_format(last)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(last)
    caplog.set_level(logging.INFO, logger="napari_fcres")
    old = read_checkpoint(last)
    assert isinstance(old["rng_state"]["numpy"][1], np.ndarray)
    assert "before the weights-only rule" in caplog.text
    assert read_checkpoint(_as_numpy1(last, tmp_path / "np1.pt"))["epoch"] == 1
    # resumes, and the next save is in the weights-only format
    run_training(tiny_config(epochs=2, steps_per_epoch=2), *em_small, run, resume=True)
    new = read_checkpoint(last)
    assert new["epoch"] == 2 and new["step"] == 4
    assert torch.serialization.get_unsafe_globals_in_checkpoint(last) == []


@pytest.mark.skipif(os.name != "posix", reason="the crafted file runs a POSIX shell command")
def test_the_old_format_allowance_is_numpy_arrays_only(tmp_path):
    """A file with NumPy arrays and something else is still refused, nothing run."""
    marker = tmp_path / "MARKER"
    cfg = preset_config("tiny")
    torch.save({"format": "napari-fcres-checkpoint", "format_version": 1,
                "config": cfg.to_dict(), "model_state": build_model(cfg.model).state_dict(),
                "rng_state": {"numpy": np.random.get_state(), "x": _RunsCode(marker)}},
               tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="refused unread.*system"):
        read_checkpoint(tmp_path / "mixed.pt")
    torch.save({"a": np.array(["text"], dtype=object)}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match="refused unread"):
        read_checkpoint(tmp_path / "objects.pt")
    assert not marker.exists()


def test_folders_are_resolved_by_runs_only(tmp_path):
    _tiny_checkpoint(tmp_path / "run" / "member_00" / "best.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path / "run")
    assert runs.checkpoint_file(tmp_path / "run") == tmp_path / "run" / "member_00" / "best.pt"
    assert runs.init_model_config(tmp_path / "run")["preset"] == "tiny"
