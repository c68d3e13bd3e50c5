"""The training recipe: init, input normalization, decoupled decay, checkpoint selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_fcres.config import Config, preset_config
from napari_fcres.models import build_model
from napari_fcres.optim import DecoupledRMSprop, build_optimizer
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.selection import (
    learned_nothing_message,
    resolve_selection,
    trivial_scores,
)


@pytest.mark.parametrize("norm_stats", ["running", "image"])
def test_input_norm_learns_the_storage_range(norm_stats):
    """uint8, uint16-scaled and CT-range copies of one image train and predict the same.

    In training the input layer standardizes each batch, so the three copies give
    one output.  At prediction, "running" carries the learned range over in the
    running statistics (and then predicts like training); "image" standardizes each
    image by itself, so the storage range cannot matter.
    """
    x = torch.rand(4, 1, 32, 32) * 255
    train_outs, eval_outs = [], []
    for scale, shift in ((1.0, 0.0), (257.0, 0.0), (17.6, -3000.0)):
        torch.manual_seed(0)
        cfg = dataclasses.replace(preset_config("tiny").model, norm_stats=norm_stats)
        model = build_model(cfg)
        model.train()
        with torch.no_grad():
            train_out = model(x * scale + shift)
            for _ in range(200):  # running statistics settle on this range
                model(x * scale + shift)
            model.eval()
            eval_out = model(x * scale + shift)
        train_outs.append(train_out)
        eval_outs.append(eval_out)
        if norm_stats == "running":
            assert torch.allclose(eval_out, train_out, atol=2e-2 * float(train_out.abs().max()))
    for outs in (train_outs, eval_outs):
        for out in outs[1:]:
            assert torch.allclose(out, outs[0], atol=1e-3 * float(outs[0].abs().max()))


def test_legacy_config_rebuilds_the_old_network():
    """A checkpoint config saved before the fix (no model.init) keeps its old settings."""
    old = preset_config("tiny").to_dict()
    del old["model"]["init"]
    for key in ("preprocessor", "unet"):
        del old["model"][key]["merge_kernel"], old["model"][key]["input_norm"]
    del old["train"]["weight_decay_mode"], old["train"]["select_by"], old["train"]["warmup_steps"]
    del old["model"]["unet"]["block_norm"]
    cfg = Config.from_dict(old)
    assert cfg.model.init == "torch"
    assert cfg.model.unet.block_norm == "none"  # plain UNets saved before had no batch norm
    assert cfg.model.preprocessor.merge_kernel == 2
    assert cfg.model.preprocessor.input_norm == "none"
    assert cfg.train.weight_decay_mode == "coupled"
    assert cfg.train.select_by == "dice"
    keys = set(build_model(cfg.model).state_dict())
    assert "preprocessor.merge_convs.0.1.weight" in keys  # ZeroPad2d + 2x2 conv, as before
    assert not any("input_norm" in k for k in keys)


def test_new_defaults():
    cfg = preset_config("cpu")
    assert cfg.model.init == "he"
    assert cfg.model.preprocessor.input_norm == "batch"
    assert cfg.train.warmup_steps is None  # auto: after the loss
    assert cfg.model.preprocessor.merge_kernel == 3
    assert cfg.train.weight_decay_mode == "decoupled"
    assert cfg.train.select_by == "auto"
    assert cfg.model.unet.block_norm == "batch"
    assert cfg.model.preprocessor.block_norm == "none"  # Table I


def _one_step(mode: str) -> tuple[float, float]:
    """Relative and absolute change of zero-gradient weights after one step."""
    cfg = preset_config("tiny", "unet")
    cfg.train = dataclasses.replace(cfg.train, weight_decay=1e-2, weight_decay_mode=mode)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg)
    conv = model.unet.out
    before = conv.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = conv.weight.detach()
    return float((after / before).mean()), float((after - before).abs().mean())


def test_decoupled_decay_shrinks_by_lr_times_decay_whatever_the_gradient():
    """Coupled L2 through RMSprop moves a zero-gradient weight by ~lr, not lr * wd * w."""
    ratio, decoupled_step = _one_step("decoupled")
    assert ratio == pytest.approx(1 - 1e-3 * 1e-2, abs=1e-7)
    # coupled: the L2 term alone is normalised by RMSprop to a step of lr / sqrt(1 - alpha)
    _, coupled_step = _one_step("coupled")
    assert coupled_step == pytest.approx(1e-3 / np.sqrt(0.1), rel=0.05)
    assert coupled_step > 100 * decoupled_step


def test_biases_and_norm_parameters_are_not_decayed():
    cfg = preset_config("tiny")
    opt = build_optimizer(build_model(cfg.model), cfg)
    assert isinstance(opt, DecoupledRMSprop)
    for group in opt.param_groups:
        if group.get("decoupled_weight_decay", 0.0) > 0:
            assert all(p.ndim > 1 for p in group["params"])
        else:
            assert all(p.ndim == 1 for p in group["params"])


def test_auto_selection_picks_v_rand_for_cells_and_dice_for_blobs():
    _, labels = synthetic_em_stack(shape=(3, 192, 192), seed=2)
    target = (labels == labels.max()).astype(np.float32)
    mask = np.ones_like(target, dtype=bool)
    metric, why = resolve_selection("auto", target, mask, [0, 1, 2])
    assert metric == "v_rand", why
    blob = np.zeros((2, 64, 64), np.float32)
    blob[:, 20:40, 20:40] = 1
    metric, _ = resolve_selection("auto", blob, np.ones_like(blob, bool), [0, 1])
    assert metric == "dice"
    assert resolve_selection("dice", target, mask, [0])[0] == "dice"


def test_a_model_no_better_than_all_foreground_is_called_out():
    target = np.zeros((1, 32, 32), np.float32)
    target[:, :, :28] = 1  # 87.5 % foreground
    mask = np.ones_like(target, bool)
    trivial = trivial_scores(target, mask, "dice")
    assert trivial["all foreground"] == pytest.approx(2 * 0.875 / 1.875, abs=1e-3)
    msg = learned_nothing_message(trivial["all foreground"], "dice", trivial)
    assert msg and "all foreground" in msg and "Train longer" in msg
    assert learned_nothing_message(0.99, "dice", trivial) is None
