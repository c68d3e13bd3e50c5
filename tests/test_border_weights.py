"""U-Net's separation weights (``train.border_weight``) and the weighted losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_fcres.border_weights import separation_weights
from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.config import preset_config
from napari_fcres.errors import InputError
from napari_fcres.losses import bce_dice_loss, dice_loss
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import run_training


def three_cells() -> np.ndarray:
    """Cells A | B two pixels apart, and C twenty pixels below B."""
    fg = np.zeros((60, 60), dtype=bool)
    fg[5:25, 5:25] = True  # A
    fg[5:25, 27:47] = True  # B: a 2-pixel gap from A
    fg[45:55, 27:47] = True  # C: a 20-pixel gap from B
    return fg


def test_narrow_gap_weighs_most_and_wide_gap_little():
    w = separation_weights(three_cells(), w0=10.0, sigma=5.0)
    narrow, wide = w[15, 25:27], w[35, 30:40]
    assert narrow.min() > 7.0  # d1 + d2 = 2-3 pixels: close to 1 + w0
    assert wide.max() < 1.5  # d1 + d2 = 20: exp(-8)
    assert w[0, 0] == pytest.approx(1.0, abs=1e-3)  # near one cell only
    assert w.dtype == np.float32 and w.shape == (60, 60)


def test_one_object_or_w0_zero_gives_ones():
    fg = np.zeros((40, 40), dtype=bool)
    fg[10:30, 10:30] = True
    assert np.all(separation_weights(fg, 10.0, 5.0) == 1.0)
    assert np.all(separation_weights(three_cells(), 0.0, 5.0) == 1.0)


def test_unannotated_pixels_keep_weight_one():
    valid = np.ones((60, 60), dtype=bool)
    valid[:, 26:] = False  # B and C not annotated: A stands alone
    w = separation_weights(three_cells(), 10.0, 5.0, valid=valid)
    assert np.all(w == 1.0)


def test_bad_input_is_one_line():
    with pytest.raises(InputError, match="2D"):
        separation_weights(np.zeros((2, 4, 4)), 10.0, 5.0)
    with pytest.raises(InputError, match="sigma"):
        separation_weights(three_cells(), 10.0, 0.0)
    with pytest.raises(InputError, match="border_weight"):
        dataclasses.replace(preset_config("tiny").train, border_weight=-1.0)


def test_weights_scale_the_cross_entropy_not_the_dice():
    torch.manual_seed(0)
    logits, target = torch.randn(1, 1, 8, 8), (torch.rand(1, 1, 8, 8) > 0.5).float()
    ones = torch.ones_like(target)
    weights = ones.clone()
    weights[..., :4] = 5.0
    assert float(dice_loss(logits, target, weights)) == pytest.approx(
        float(dice_loss(logits, target, ones)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = float((bce * weights).sum() / weights.sum() + dice_loss(logits, target, ones))
    assert float(bce_dice_loss(logits, target, weights)) == pytest.approx(expected, rel=1e-5)


def test_training_with_border_weights_runs_and_stores_them(tmp_path):
    image, labels = synthetic_em_stack(shape=(4, 64, 64), seed=1)
    cfg = preset_config("tiny")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, epochs=2, steps_per_epoch=2, crop_size=32, batch_size=2, device="cpu",
        val_split="slices", val_every_steps=2, loss="bce_dice", border_weight=10.0))
    result = run_training(cfg, image, labels, tmp_path)
    ck = read_checkpoint(result.best_checkpoints[0])
    assert ck["config"]["train"]["border_weight"] == 10.0
