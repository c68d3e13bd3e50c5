"""Checkpoint files: self-describing, atomic, and clear about what is wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_fcres.checkpoint import (
    find_checkpoints,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from napari_fcres.config import preset_config
from napari_fcres.errors import CheckpointError, OutOfMemoryError
from napari_fcres.models import build_model
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training


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
