"""No convolution dies in training: the test that would have caught the 1e-38 weights.

With PyTorch's default init the norm-free UNet's deep levels got gradients far
below RMSprop's epsilon; the coupled weight decay then drove their weights to
zero (and to denormal floats) within ~150 steps.  Here every architecture and
preset trains briefly with the library's default recipe on the synthetic stack,
and every convolution must keep at least a tenth of its initial weight RMS while
gradients reach the deepest level.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_fcres.config import PRESETS, preset_config
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import _MemberRun, prepare_data

STEPS = 40


@pytest.fixture(scope="module")
def stack():
    image, labels = synthetic_em_stack(shape=(4, 96, 96), seed=3)
    return image, labels


def _conv_rms(model: torch.nn.Module) -> dict[str, float]:
    return {n: float(m.weight.detach().pow(2).mean().sqrt())
            for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def _top_grad(model: torch.nn.Module) -> float:
    """Gradient RMS of the last convolution (the output layer)."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    return float(last.weight.grad.detach().pow(2).mean().sqrt())


def _deepest_grad(model: torch.nn.Module) -> float:
    deep = [m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and ".across." in f".{n}."]
    assert deep, "no deepest-level convolution found"
    return max(float(m.weight.grad.detach().pow(2).mean().sqrt()) for m in deep
               if m.weight.grad is not None)


def _train_briefly(preset: str, architecture: str, stack, tmp_path, steps: int = STEPS,
                   init: str | None = None, unet_block_norm: str | None = None,
                   **train_changes):
    cfg = preset_config(preset, architecture)
    if init is not None:
        cfg.model = dataclasses.replace(cfg.model, init=init)
    if unet_block_norm is not None:
        cfg.model.unet = dataclasses.replace(cfg.model.unet, block_norm=unet_block_norm)
    cfg.train = dataclasses.replace(
        cfg.train, crop_size=64, batch_size=2, epochs=1, steps_per_epoch=steps, loss="dice",
        device="cpu", **train_changes,
    )
    cfg.augment = dataclasses.replace(cfg.augment, intensity=0.0)
    image, labels = stack
    data = prepare_data(image, labels, cfg)
    runner = _MemberRun(cfg, data, tmp_path / "m", 0, torch.device("cpu"), False, None, None)
    before = _conv_rms(runner.model)
    deepest = []
    gen = runner.run(None)
    for p in gen:
        if p.kind == "step":
            deepest.append(_deepest_grad(runner.model) / _top_grad(runner.model))
            if p.step >= steps:
                break
    gen.close()
    return before, _conv_rms(runner.model), deepest, runner.model


# the paper-size model is checked in test_paper_preset_gradients_reach_the_deepest_level
CASES = [(p, a) for a in ("pipeline", "unet") for p in PRESETS if p != "paper"]


@pytest.mark.parametrize(("preset", "architecture"), CASES)
def test_no_convolution_collapses(preset, architecture, stack, tmp_path):
    torch.manual_seed(0)
    before, after, deepest, _ = _train_briefly(preset, architecture, stack, tmp_path)
    collapsed = {n: (before[n], after[n]) for n in before if after[n] < 0.1 * before[n]}
    assert not collapsed, f"weights collapsed (initial RMS, final RMS): {collapsed}"
    # gradients reach the deepest level: its gradient RMS relative to the output layer's
    # (the old init gave 1e-7 here, He init ~1e-2; a model that saturates to one class
    # has small gradients everywhere, which the ratio does not mistake for depth)
    ratio = float(np.median(deepest))
    assert ratio > 1e-4, f"deepest / output-layer gradient RMS, median over steps: {ratio:.1e}"


@pytest.mark.parametrize("architecture", ["pipeline", "unet"])
def test_paper_preset_gradients_reach_the_deepest_level(architecture):
    """Tables I and II at their full width: one backward pass from the default init."""
    from napari_fcres.losses import dice_loss
    from napari_fcres.models import build_model

    torch.manual_seed(0)
    model = build_model(preset_config("paper", architecture).model).train()
    image, labels = synthetic_em_stack(shape=(1, 64, 64), seed=1)
    x = torch.from_numpy(image[:, None].astype("float32")).repeat(2, 1, 1, 1)
    y = torch.from_numpy((labels[:, None] == labels.max()).astype("float32")).repeat(2, 1, 1, 1)
    dice_loss(model(x), y).backward()
    assert _deepest_grad(model) / _top_grad(model) > 1e-4


def test_old_recipe_collapses(stack, tmp_path):
    """Guard the guard: PyTorch's default init with the coupled decay does collapse."""
    torch.manual_seed(0)
    before, after, _, _ = _train_briefly("cpu", "unet", stack, tmp_path, 60, init="torch",
                                      unet_block_norm="none", weight_decay_mode="coupled",
                                      warmup_steps=0)
    collapsed = [n for n in before if after[n] < 0.1 * before[n]]
    assert collapsed, "expected the old recipe to collapse some deep convolution"


def _saturated_fraction(model: torch.nn.Module, stack) -> float:
    """Share of pixels whose probability is above 0.99 or below 0.01 (training statistics)."""
    image, _ = stack
    x = torch.from_numpy(image[:2, None, :64, :64].astype("float32"))
    with torch.no_grad():
        p = torch.sigmoid(model.train()(x))
    return float(((p > 0.99) | (p < 0.01)).float().mean())


@pytest.mark.parametrize("block_norm", ["batch", "none"])
def test_plain_unet_logits_stay_in_range(block_norm, stack, tmp_path):
    """Without normalization the plain UNet's first RMSprop steps blow its logits up
    (ISBI: +6.5 everywhere by step 3, +150 by step 57, all-foreground for good); with a
    batch normalization after each convolution (the default) they stay in range."""
    torch.manual_seed(0)
    *_, model = _train_briefly("cpu", "unet", stack, tmp_path, unet_block_norm=block_norm)
    saturated = _saturated_fraction(model, stack)
    if block_norm == "batch":
        assert saturated < 0.5, f"{saturated:.0%} of the pixels saturated"
    else:  # guard the guard
        assert saturated > 0.5, f"only {saturated:.0%} of the pixels saturated"
