"""The training loop: learning, stopping, resuming, fine-tuning, ensembles, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_fcres.checkpoint import load_model, read_checkpoint
from napari_fcres.config import Config, preset_config
from napari_fcres.errors import CheckpointError, DeviceError, InputError
from napari_fcres.losses import bce_dice_loss, dice_loss
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training, split_slices, train


def tiny_config(**train) -> Config:
    cfg = preset_config("tiny")
    defaults = dict(epochs=2, steps_per_epoch=3, crop_size=32, batch_size=2, device="cpu",
                    val_split="slices", val_every_steps=3, loss="dice")
    defaults.update(train)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **defaults))


@pytest.fixture(scope="module")
def stack():
    return synthetic_em_stack(shape=(4, 64, 64), seed=1)


def test_dice_loss_matches_equation_2():
    logits = torch.tensor([[[[100.0, -100.0], [100.0, -100.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert float(dice_loss(logits, target)) == pytest.approx(-1.0, abs=1e-4)
    assert float(dice_loss(-logits, target)) == pytest.approx(0.0, abs=1e-4)
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    half = torch.tensor([[[[100.0, -100.0], [-100.0, 100.0]]]])
    assert float(dice_loss(half, target, mask)) == pytest.approx(-1.0, abs=1e-4)
    assert float(bce_dice_loss(logits, target)) == pytest.approx(-1.0, abs=1e-3)


def test_split_is_random_24_6():
    train_s, val_s = split_slices(range(30), 0.2, seed=3)
    assert len(train_s) == 24 and len(val_s) == 6
    assert set(train_s) | set(val_s) == set(range(30))
    assert split_slices(range(30), 0.2, seed=4) != (train_s, val_s)


def test_training_learns_and_writes_checkpoints(tmp_path, stack):
    image, labels = stack
    cfg = tiny_config(epochs=4, steps_per_epoch=8, lr=3e-3)
    reports = list(train(cfg, image, labels, tmp_path))
    losses = [r.loss for r in reports if r.kind == "step"]
    assert len(losses) == 32
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert reports[-1].kind == "done"
    ck = read_checkpoint(tmp_path / "member_00" / "best.pt")
    assert ck["config"]["model"]["preset"] == "tiny"
    assert len(ck["history"]) >= 1 and "val_dice" in ck["history"][0]
    assert sorted(ck["split"]["train"] + ck["split"]["val"]) == [0, 1, 2, 3]
    model, _ = load_model(tmp_path / "member_00" / "best.pt")  # rebuilds alone
    assert model(torch.zeros(1, 1, 40, 40)).shape == (1, 1, 40, 40)


def test_stop_then_resume_matches_uninterrupted_run(tmp_path, stack):
    image, labels = stack
    cfg = tiny_config(epochs=3, steps_per_epoch=2, seed=5)
    full = run_training(cfg, image, labels, tmp_path / "full")
    full_state = read_checkpoint(full.best_checkpoints[0].parent / "last.pt")["model_state"]

    calls = {"n": 0}

    def stop_after_3() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    part = run_training(cfg, image, labels, tmp_path / "part", should_stop=stop_after_3)
    assert part.stopped
    last = read_checkpoint(tmp_path / "part" / "member_00" / "last.pt")
    assert last["step"] == 3 and not last["finished"]
    resumed = run_training(cfg, image, labels, tmp_path / "part", resume=True)
    assert not resumed.stopped
    state = read_checkpoint(tmp_path / "part" / "member_00" / "last.pt")["model_state"]
    for key, value in full_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5)


def test_generator_close_keeps_a_resumable_checkpoint(tmp_path, stack):
    image, labels = stack
    gen = train(tiny_config(epochs=50), image, labels, tmp_path)
    steps = 0
    while steps < 4:
        steps += next(gen).kind == "step"
    gen.close()
    last = read_checkpoint(tmp_path / "member_00" / "last.pt")
    assert last["step"] == 4
    assert (tmp_path / "member_00" / "best.pt").exists()


def test_ensemble_members_get_own_split_and_seed(tmp_path, stack):
    image, labels = stack
    result = run_training(tiny_config(ensemble=2, epochs=1), image, labels, tmp_path)
    assert len(result.best_checkpoints) == 2
    a, b = (read_checkpoint(p) for p in result.best_checkpoints)
    assert a["seed"] != b["seed"]
    assert a["split"] != b["split"] or a["seed"] != b["seed"]


def test_partial_annotation_uses_only_annotated_slices(tmp_path, stack):
    image, labels = stack
    partial = np.zeros(labels.shape, np.uint8)
    partial[1] = np.where(labels[1] == 255, 2, 1)
    partial[3] = np.where(labels[3] == 255, 2, 1)
    cfg = tiny_config(epochs=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, partial=True))
    result = run_training(cfg, image, partial, tmp_path)
    split = read_checkpoint(result.best_checkpoints[0])["split"]
    assert sorted(split["train"] + split["val"]) == [1, 3]


def test_finetune_only_preprocessor(tmp_path, stack):
    image, labels = stack
    base = run_training(tiny_config(epochs=1), image, labels, tmp_path / "base")
    before = read_checkpoint(base.best_checkpoints[0])["model_state"]
    cfg = tiny_config(epochs=1, freeze_fcresnet=True)
    tuned = run_training(cfg, image, labels, tmp_path / "tuned",
                         init_checkpoint=base.best_checkpoints[0])
    after = read_checkpoint(tuned.best_checkpoints[0].parent / "last.pt")["model_state"]
    fc_same = all(torch.equal(before[k], after[k]) for k in before if k.startswith("fcresnet."))
    pre_changed = any(not torch.equal(before[k], after[k])
                      for k in before if k.startswith("preprocessor."))
    assert fc_same and pre_changed


def test_init_from_other_preset_is_refused(tmp_path, stack):
    image, labels = stack
    base = run_training(tiny_config(epochs=1), image, labels, tmp_path / "base")
    cfg = preset_config("cpu")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, crop_size=32))
    with pytest.raises(CheckpointError, match="tiny"):
        next(train(cfg, image, labels, tmp_path / "x", init_checkpoint=base.best_checkpoints[0]))


@pytest.mark.parametrize(
    "arch", ["fcresnet-standardize", "fcresnet-rescale", "fcresnet-raw", "unet"]
)
def test_baselines_train(tmp_path, stack, arch):
    image, labels = stack
    cfg = tiny_config(epochs=1)
    cfg = dataclasses.replace(cfg, model=preset_config("tiny", arch).model)
    ct_like = image.astype(np.float32) * 16 - 1024
    result = run_training(cfg, ct_like, labels, tmp_path)
    model, _ = load_model(result.best_checkpoints[0])
    if arch == "fcresnet-standardize":  # statistics fitted on the CT-like range, saved
        assert float(model.shift) == pytest.approx(ct_like.mean(), rel=0.2)
        assert float(model.scale) == pytest.approx(ct_like.std(), rel=0.2)


def test_crop_larger_than_slices_is_fitted(tmp_path, stack, caplog):
    """A 64x64 stack with a 128 crop trains with the largest crop that fits, and says so."""
    image, labels = stack
    cfg = tiny_config(crop_size=128, epochs=1, steps_per_epoch=1)
    with caplog.at_level("WARNING"):
        result = run_training(cfg, image[:, :60, :62], labels[:, :60, :62], tmp_path)
    assert "training with 60x60 crops instead" in caplog.text
    saved = Config.from_yaml(tmp_path / "config.yaml")
    assert saved.train.crop_size < 128 and saved.train.crop_size % 4 == 0
    assert result.best_checkpoints[0].exists()


def test_bad_inputs_are_clear_errors(tmp_path, stack):
    image, labels = stack
    cfg = tiny_config()
    with pytest.raises(InputError, match="shape"):
        next(train(cfg, image[:, :32], labels, tmp_path))
    with pytest.raises(InputError):
        next(train(cfg, image, np.zeros_like(labels), tmp_path))
    with pytest.raises(InputError, match="at least"):
        next(train(tiny_config(crop_size=128), image[:, :3, :3], labels[:, :3, :3], tmp_path))
    bad = image.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        next(train(cfg, bad, labels, tmp_path))
    multi = labels.copy()
    multi[0, 0, :3] = [7, 8, 9]
    with pytest.raises(InputError):
        next(train(cfg, image, multi, tmp_path))
    with pytest.raises(InputError, match="RGB|channel"):
        next(train(cfg, np.zeros((64, 64, 3), np.uint8), labels[0], tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA"):
            next(train(tiny_config(device="cuda"), image, labels, tmp_path))


def test_reproducible_with_seed(tmp_path, stack):
    image, labels = stack
    cfg = tiny_config(epochs=1)
    a = run_training(cfg, image, labels, tmp_path / "a")
    b = run_training(cfg, image, labels, tmp_path / "b")
    sa = read_checkpoint(a.best_checkpoints[0])["model_state"]
    sb = read_checkpoint(b.best_checkpoints[0])["model_state"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])
