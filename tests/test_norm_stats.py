"""Batch normalization with per-image statistics at prediction (models/norm.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_fcres.config import Config, preset_config
from napari_fcres.inference import predict
from napari_fcres.models import build_model
from napari_fcres.models.norm import ImageBatchNorm2d, SharedImageStatistics, set_norm_stats


def _trained_bn(seed: int = 0) -> tuple[ImageBatchNorm2d, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    ours, ref = ImageBatchNorm2d(3), nn.BatchNorm2d(3)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 3, 8, 8) * 3 + 5
    ours.train()(x)
    ref.train()(x)
    return ours, ref


def test_training_and_running_mode_are_plain_batch_norm():
    ours, ref = _trained_bn()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(ours.running_mean, ref.running_mean)
    ours.norm_stats = "running"
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_image_mode_normalizes_each_image_by_itself():
    ours, _ = _trained_bn()
    ours.eval()
    a = torch.randn(1, 3, 8, 8)
    b = torch.randn(1, 3, 8, 8)
    both = ours(torch.cat([a, 4 * b + 7]))
    torch.testing.assert_close(both[:1], ours(a))  # another image in the batch changes nothing
    torch.testing.assert_close(both[1:], ours(b), atol=1e-4, rtol=1e-4)


def test_image_mode_uses_the_running_averages_on_a_single_pixel():
    """A 1x1 map (the deepest level of the smallest input) has no statistics of its own."""
    ours, ref = _trained_bn()
    x = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def _model(norm_stats: str = "image"):
    cfg = preset_config("tiny", architecture="pipeline").model
    cfg.norm_stats = norm_stats
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with torch.no_grad():  # a few training batches give the running averages real values
        for _ in range(3):
            model(torch.rand(2, 1, 64, 64) * 200)
    return model.eval()


def test_a_brighter_more_contrasty_image_gets_the_same_prediction():
    """The learned input normalization then sees the same image: acquisition shifts vanish."""
    rng = np.random.default_rng(0)
    img = rng.uniform(20, 120, (64, 64)).astype(np.float32)
    model = _model("image")
    p = predict(model, img, tile_size=64, overlap=0).probabilities
    q = predict(model, 1.8 * img + 40, tile_size=64, overlap=0).probabilities
    np.testing.assert_allclose(p, q, atol=1e-4)
    set_norm_stats(model, "running")
    r = predict(model, 1.8 * img + 40, tile_size=64, overlap=0).probabilities
    assert np.abs(r - p).max() > 1e-2  # the running averages do not adapt


def test_tiles_of_one_image_share_its_statistics():
    """A tiled slice is normalized by the statistics of the whole slice, not of each tile."""
    yy, xx = np.mgrid[:128, :128]
    rng = np.random.default_rng(1)
    img = (rng.normal(0, 10, (128, 128)) + 60 + 0.8 * xx + 60 * (yy > 64)).astype(np.float32)
    model = _model("image")
    stats = SharedImageStatistics(model)
    assert len(stats.layers) == sum(isinstance(m, ImageBatchNorm2d) for m in model.modules())
    # The input layer sees the raw tiles: over four tiles its statistics are the slice's.
    with torch.no_grad(), stats.collecting():
        for r in (0, 64):
            for c in (0, 64):
                model(torch.from_numpy(img[None, None, r:r + 64, c:c + 64].copy()))
    first = model.preprocessor.input_norm.norm
    with stats.shared():
        mean, var = first.shared_stats
        assert mean.item() == pytest.approx(float(img.mean()), rel=1e-5)
        assert var.item() == pytest.approx(float(img.var()), rel=1e-4)
    assert all(m.tile_sums is None and m.shared_stats is None for m in stats.layers)

    # The pre-processor's output (normalized by the first layer only) then matches the
    # one-tile prediction away from tile borders; with each tile's own statistics it does not.
    def normalized(tile: int) -> np.ndarray:
        out = predict(model, img, tile_size=tile, overlap=16 if tile < 128 else 0,
                      return_normalized=True).normalized
        assert out is not None
        return out

    whole, tiled = normalized(128), normalized(64)
    with torch.no_grad():
        own = np.concatenate([
            np.concatenate([model.forward_with_normalized(torch.from_numpy(
                img[None, None, r:r + 64, c:c + 64].copy()))[1][0, 0].numpy()
                for c in (0, 64)], axis=1) for r in (0, 64)])
    inner = np.s_[16:-16, 16:-16]
    err_shared = np.abs(tiled - whole)[inner].mean()
    err_own = np.abs(own - whole)[inner].mean()
    assert err_shared < 0.35 * err_own, (err_shared, err_own)


def test_tiled_prediction_with_shared_statistics_runs_under_bf16_autocast():
    """AMP (``predict(amp=True)``): bf16 activations, float32 shared statistics and weights.

    Batch norm's mixed-precision kernels want every parameter in float32; statistics cast
    to the activations' bf16 failed on the CPU ("mixed dtype").
    """
    rng = np.random.default_rng(2)
    img = rng.uniform(20, 120, (96, 96)).astype(np.float32)
    model = _model("image")
    fp32 = predict(model, img, tile_size=64, overlap=16).probabilities
    bf16 = predict(model, img, tile_size=64, overlap=16, amp=True).probabilities
    assert bf16.dtype == np.float32 and np.isfinite(bf16).all()
    assert np.abs(bf16 - fp32).mean() < 0.02


def test_collecting_needs_a_tile():
    stats = SharedImageStatistics(_model())
    with pytest.raises(RuntimeError, match="no tile"), stats.collecting():
        pass
    with pytest.raises(RuntimeError, match="collect"), stats.shared():
        pass


def test_old_checkpoints_keep_running_averages():
    legacy = Config.from_dict({"model": {"architecture": "pipeline", "preset": "tiny"}})
    assert legacy.model.norm_stats == "running"
    assert Config().model.norm_stats == "auto"
    model = build_model(legacy.model)
    assert all(m.norm_stats == "running" for m in model.modules()
               if isinstance(m, ImageBatchNorm2d))
