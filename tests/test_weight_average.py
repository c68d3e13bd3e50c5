"""The moving average of the weights (``train.ema_decay``): its arithmetic, what validation
scores and the checkpoints keep, and resuming a run that averages."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from torch import nn

from napari_fcres import training
from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.config import Config, preset_config
from napari_fcres.errors import InputError
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training, train
from napari_fcres.weight_average import WeightAverage, warm_decay


def tiny_config(**train_kw) -> Config:
    cfg = preset_config("tiny")
    kw = dict(epochs=3, steps_per_epoch=3, crop_size=32, batch_size=2, device="cpu", seed=5,
              val_split="slices", val_every_steps=3, loss="dice", ema_decay=0.9)
    kw.update(train_kw)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw))


@pytest.fixture(scope="module")
def stack():
    return synthetic_em_stack(shape=(4, 64, 64), seed=1)


def test_decay_warms_up_to_its_value():
    assert warm_decay(0.99, 0) == pytest.approx(0.1)
    assert warm_decay(0.99, 10) == pytest.approx(11 / 20)
    assert warm_decay(0.99, 10_000) == 0.99


def test_average_of_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    avg = WeightAverage(model, 0.99)
    avg.update(model)  # the first update copies
    torch.testing.assert_close(avg.model[0].weight, model[0].weight)
    before_w = model[0].weight.detach().clone()
    before_mean = model[1].running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(4, 1, 8, 8))  # moves the running statistics
    avg.update(model)
    d = warm_decay(0.99, 1)
    torch.testing.assert_close(avg.model[0].weight, d * before_w + (1 - d) * model[0].weight)
    torch.testing.assert_close(avg.model[1].running_mean,
                               d * before_mean + (1 - d) * model[1].running_mean)
    assert int(avg.model[1].num_batches_tracked) == int(model[1].num_batches_tracked)
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_decay_must_lie_below_one():
    with pytest.raises(InputError, match="ema_decay"):
        tiny_config(ema_decay=1.0)
    with pytest.raises(InputError, match="ema_decay"):
        tiny_config(ema_decay=-0.1)


def test_best_checkpoint_keeps_the_average_and_last_keeps_both(tmp_path, stack):
    image, labels = stack
    result = run_training(tiny_config(), image, labels, tmp_path)
    best = read_checkpoint(result.best_checkpoints[0])
    last = read_checkpoint(result.best_checkpoints[0].parent / "last.pt")
    avg = last["weight_average"]
    assert int(avg["updates"]) == last["step"] == 9
    assert "weight_average" not in best
    # the trained weights and their average differ; the best checkpoint is an average
    key = next(k for k, v in last["model_state"].items() if v.is_floating_point() and v.ndim == 4)
    assert not torch.allclose(last["model_state"][key], avg["model_state"][key])
    if best["step"] == last["step"]:
        torch.testing.assert_close(best["model_state"][key], avg["model_state"][key])


def test_validation_scores_the_average(tmp_path, stack, monkeypatch):
    image, labels = stack
    scored: list[nn.Module] = []
    real = training.validate_model

    def spy(model, *args, **kwargs):
        scored.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training, "validate_model", spy)
    gen = train(tiny_config(epochs=1), image, labels, tmp_path)
    for _ in gen:
        pass
    assert scored and all(not any(p.requires_grad for p in m.parameters()) for m in scored)


def test_resume_continues_the_average(tmp_path, stack, monkeypatch):
    image, labels = stack
    cfg = tiny_config()
    full = run_training(cfg, image, labels, tmp_path / "full")
    reference = read_checkpoint(full.best_checkpoints[0].parent / "last.pt")

    monkeypatch.setattr(training, "CHECKPOINT_INTERVAL_S", 0.0)
    gen = train(cfg, image, labels, tmp_path / "live")
    steps = 0
    while steps < 5:
        steps += next(gen).kind == "step"
    shutil.copytree(tmp_path / "live", tmp_path / "killed")
    gen.close()
    monkeypatch.setattr(training, "CHECKPOINT_INTERVAL_S", 300.0)
    run_training(cfg, image, labels, tmp_path / "killed", resume=True)
    last = read_checkpoint(tmp_path / "killed" / "member_00" / "last.pt")
    assert int(last["weight_average"]["updates"]) == 9
    for key, value in reference["weight_average"]["model_state"].items():
        torch.testing.assert_close(last["weight_average"]["model_state"][key], value,
                                   rtol=1e-4, atol=1e-5)
