"""Run folders (napari_fcres.runs) and the one training-config builder (train_config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from napari_fcres import runs
from napari_fcres.checkpoint import save_checkpoint
from napari_fcres.cli import build_parser
from napari_fcres.cli import build_train_config as cli_build_train_config
from napari_fcres.cli import train_request as cli_train_request
from napari_fcres.config import Config, preset_config
from napari_fcres.errors import CheckpointError, InputError, StoppedError
from napari_fcres.inference import load_models
from napari_fcres.models import build_model
from napari_fcres.train_config import build_train_config, train_request


def _save(path: Path, cfg: Config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    save_checkpoint(path, {"config": cfg.to_dict(), "model_state": model.state_dict()})
    return model


@pytest.fixture
def run(tmp_path) -> tuple[Path, list[torch.nn.Module]]:
    """A tiny two-member run folder: config.yaml, member_KK/best.pt and last.pt (untrained)."""
    folder = tmp_path / "run"
    cfg = preset_config("tiny")
    runs.write_run_config(folder, cfg)
    models = []
    for k in range(2):
        models.append(_save(runs.best_path(folder, k), cfg, seed=k))
        _save(runs.last_path(folder, k), cfg, seed=10 + k)  # other weights: never picked
    return folder, models


# ----------------------------------------------------------------------------- layout


def test_paths_of_a_run_folder(tmp_path):
    assert runs.member_dir(tmp_path, 3) == tmp_path / "member_03"
    assert runs.best_path(tmp_path, 3) == tmp_path / "member_03" / "best.pt"
    assert runs.last_path(tmp_path, 0) == tmp_path / "member_00" / "last.pt"
    assert runs.best_path(tmp_path) == tmp_path / "best.pt"
    assert runs.config_path(tmp_path) == tmp_path / "config.yaml"
    assert runs.run_dir_of(runs.best_path(tmp_path, 1)) == tmp_path
    assert runs.run_dir_of(tmp_path / "elsewhere" / "model.pt") == tmp_path / "elsewhere"


def test_member_discovery_prefers_best_over_last(run):
    folder, _ = run
    assert runs.find_checkpoints([folder]) == [runs.best_path(folder, 0),
                                               runs.best_path(folder, 1)]
    assert runs.find_checkpoints(folder) == runs.find_checkpoints([str(folder)])
    assert runs.last_checkpoints(folder) == [runs.last_path(folder, 0),
                                             runs.last_path(folder, 1)]
    # a single file is taken as it is, a last checkpoint too
    assert runs.find_checkpoints(runs.last_path(folder, 1)) == [runs.last_path(folder, 1)]
    assert runs.single_checkpoint(runs.member_dir(folder, 1)) == runs.best_path(folder, 1)
    with pytest.raises(CheckpointError, match="holding 2 best.pt"):
        runs.single_checkpoint(folder)


def test_missing_or_empty_folders_say_so(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        runs.find_checkpoints([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no best.pt"):
        runs.find_checkpoints([tmp_path / "empty"])
    assert runs.find_checkpoints([]) == []


# ----------------------------------------------------------------------------- new runs


def test_default_output_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = runs.runs_root()
    assert root == tmp_path / "home" / ".napari-fcres" / "runs"
    out = runs.default_output_dir()
    assert out.parent == root and not out.exists()
    # never a folder that holds a run (or anything else): the first free numbered sibling
    runs.write_run_config(out, preset_config("tiny"))
    assert runs.holds_run(out) and not runs.is_resumable(out)
    assert runs.unused_dir(out) == out.parent / f"{out.name}-2"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runs.unused_dir(empty) == empty


# ----------------------------------------------------------------------------- loading


def test_ensemble_loading_from_a_tiny_run_folder(run):
    folder, saved = run
    models = runs.load_ensemble(folder, device="cpu")
    assert len(models) == 2 and not any(m.training for m in models)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        for got, want in zip(models, saved, strict=True):
            torch.testing.assert_close(got(x), want(x))
    # the old entry point loads the same ensemble
    assert len(load_models([folder])) == 2
    with pytest.raises(StoppedError):
        runs.load_ensemble(folder, should_stop=lambda: True)
    with pytest.raises(InputError, match="no checkpoint"):
        runs.load_ensemble([])
    with pytest.raises(CheckpointError, match="not found"):
        runs.load_ensemble(folder / "missing.pt")


def test_stored_config_and_resume_rules(run):
    folder, _ = run
    assert runs.is_resumable(folder)
    stored = runs.stored_config(folder)
    assert stored == preset_config("tiny")
    runs.config_path(folder).unlink()  # the config of a member's last checkpoint then
    assert runs.stored_config(folder) == stored
    asked = runs.resume_request(folder, {"train": {"epochs": 7}})
    assert runs.resume_config(folder, asked).train.epochs == 7
    with pytest.raises(InputError, match="train.lr"):
        runs.resume_config(folder, runs.resume_request(folder, {"train": {"lr": 0.5}}))
    with pytest.raises(InputError, match="nothing to resume in"):
        runs.stored_config(runs.member_dir(folder, 0))


# ----------------------------------------------------------------------------- config builder

#: a Train widget's form, as keyword arguments of the builder
WIDGET_FORM = dict(
    epochs=7, max_minutes=None, ensemble=2, device="cpu", batch_size=3, crop_size=64,
    lr=0.002, val_fraction=0.25, patience_steps=9, select_by="dice", seed=4, freeze_fcresnet=False,
    partial=True,
)
CLI_FLAGS = ["--preset", "tiny", "--architecture", "unet", "--epochs", "7", "--ensemble", "2",
             "--device", "cpu", "--batch-size", "3", "--crop-size", "64", "--lr", "0.002",
             "--val-fraction", "0.25", "--patience", "9", "--select-by", "dice", "--seed", "4",
             "--partial"]


def _cli_args(*flags: str):
    return build_parser().parse_args(["train", "image.tif", "labels.tif", "--out", "o", *flags])


def test_one_builder_for_cli_and_widget():
    from_cli = cli_build_train_config(_cli_args(*CLI_FLAGS))
    from_widget = build_train_config(preset="tiny", architecture="unet", **WIDGET_FORM)
    assert from_cli == from_widget
    # what TrainWidget.build_config used to build by hand
    cfg = preset_config("tiny", "unet")
    form = {k: v for k, v in WIDGET_FORM.items() if k != "partial"}
    cfg.train = dataclasses.replace(cfg.train, **form)
    cfg.data = dataclasses.replace(cfg.data, partial=True)
    assert from_widget == cfg


def test_the_request_holds_only_what_was_given():
    request = cli_train_request(_cli_args("--epochs", "3"))
    assert request == {"model": {}, "train": {"epochs": 3}, "data": {}}
    assert train_request(epochs=3) == request
    assert build_train_config() == preset_config("cpu", "auto")  # the network: at the start
    with pytest.raises(InputError, match="unknown training setting"):
        build_train_config(epochz=3)


def test_fine_tuning_takes_the_checkpoint_network_unless_a_preset_is_given(tmp_path):
    ckpt = tmp_path / "tiny.pt"
    _save(ckpt, preset_config("tiny", "unet"), seed=0)
    cfg = cli_build_train_config(_cli_args("--init", str(ckpt)))
    assert cfg.model == preset_config("tiny", "unet").model
    assert build_train_config(init_checkpoint=ckpt).model == cfg.model
    assert build_train_config(preset="cpu", init_checkpoint=ckpt).model.preset == "cpu"
    assert build_train_config({}, init_checkpoint=ckpt).model.preset == "cpu"  # a YAML given
