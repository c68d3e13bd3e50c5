"""Tiled, blended, ensembled inference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_fcres.config import preset_config
from napari_fcres.errors import InputError, OutOfMemoryError, StoppedError
from napari_fcres.inference import (
    PredictionResult,
    _spans,
    blend_window,
    load_models,
    predict,
)
from napari_fcres.models import SegmentationModel, build_model


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), 3) * 5).astype(np.float32)


def _model(seed: int = 0, architecture: str = "pipeline") -> SegmentationModel:
    """A tiny random model whose output has real contrast.

    Random weights give nearly constant probabilities (std ~1e-4), which
    would make every comparison trivially pass; the last convolution is
    rescaled so the logits have std ~3 on test images.
    """
    torch.manual_seed(seed)
    # PyTorch's default init: a random He-initialised network amplifies the zero padding
    # at tile edges far more than a trained one, which would swamp the seam comparison.
    # Batch norm with its running averages, so tiles are blended from one fixed network
    # (per-image statistics shared over tiles: tests/test_norm_stats.py).
    cfg = preset_config("tiny", architecture=architecture).model
    model = build_model(dataclasses.replace(cfg, init="torch", norm_stats="running")).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    probe = torch.from_numpy(_image((96, 96), seed=99))[None, None]
    with torch.no_grad():
        logits = model(probe)
        k = 3.0 / float(logits.std())
        last.weight.mul_(k)
        last.bias.mul_(k).sub_(float(logits.mean()) * k)
    return model


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    return _model(0)


def _direct(model: SegmentationModel, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(np.asarray(image, np.float32))[None, None])
    return torch.sigmoid(logits)[0, 0].numpy()


# ----------------------------------------------------------------------------- tiling


def test_spans_cover_axis_aligned_to_divisor():
    for n in (50, 128, 129, 300, 1000):
        spans = _spans(n, 128, 32, 4)
        assert spans[0][0] == 0 and spans[-1][1] == n
        covered = np.zeros(n, bool)
        for a, b in spans:
            assert a % 4 == 0
            assert b - a <= 128 + 3
            covered[a:b] = True
        assert covered.all()
        for (_, b0), (a1, _) in zip(spans[:-1], spans[1:], strict=True):
            assert b0 - a1 >= 32  # neighbours overlap by at least ``overlap``


def test_blend_window_partition_of_unity():
    left = blend_window(128, 32, False, True)
    right = blend_window(128, 32, True, True)
    assert left[0] == 1.0 and left[-1] == pytest.approx(1e-3)
    np.testing.assert_allclose(left[96:] + right[:32], 1.0, atol=2e-3)
    assert blend_window(64, 0, True, True).min() == 1.0


def test_tiled_matches_whole_image(model):
    image = _image((300, 270))
    whole = predict(model, image, tile_size=1024).probabilities
    np.testing.assert_allclose(whole, _direct(model, image), atol=1e-4)
    assert whole.std() > 0.05  # the comparison below is not trivial
    tiled = predict(model, image, tile_size=128, overlap=32, batch_size=3).probabilities
    diff = np.abs(tiled - whole)
    # measured: max ~2e-3, mean ~1e-4 over several random tiny models
    assert diff.max() < 0.01
    assert diff.mean() < 0.001


def test_result_types(model):
    res = predict(model, _image((40, 50)))
    assert isinstance(res, PredictionResult)
    assert res.probabilities.shape == (40, 50) and res.probabilities.dtype == np.float32
    assert res.normalized is None and res.spread is None
    assert 0.0 <= res.probabilities.min() and res.probabilities.max() <= 1.0


@pytest.mark.parametrize("axis", [0, 2])
def test_stack_predicted_slice_wise(model, axis):
    stack = _image((3, 40, 36)) if axis == 0 else _image((40, 36, 3))
    res = predict(model, stack, axis=axis, tile_size=64, overlap=16, return_normalized=True)
    assert res.probabilities.shape == stack.shape
    assert res.normalized is not None and res.normalized.shape == stack.shape
    for i in range(3):
        sl = np.take(stack, i, axis=axis)
        single = predict(model, sl, tile_size=64, overlap=16, return_normalized=True)
        np.testing.assert_allclose(
            np.take(res.probabilities, i, axis=axis), single.probabilities, atol=1e-6
        )
        np.testing.assert_allclose(
            np.take(res.normalized, i, axis=axis), single.normalized, atol=1e-5
        )


def test_dtypes_are_raw_values(model):
    ramp = np.arange(48 * 40).reshape(48, 40)
    cases = [
        (ramp % 251).astype(np.uint8),
        (ramp * 20).astype(np.uint16),
        (ramp - 1500).astype(np.int16),  # negative, CT-like
        (ramp / 7.0).astype(np.float64),
        ramp % 3 == 0,
    ]
    for image in cases:
        got = predict(model, image).probabilities
        assert got.dtype == np.float32 and got.shape == image.shape
        np.testing.assert_allclose(got, _direct(model, image.astype(np.float32)), atol=1e-4)


def test_ensemble_mean_and_spread():
    m1, m2 = _model(1), _model(2)
    stack = _image((2, 60, 52))
    p1 = predict(m1, stack, return_normalized=True)
    p2 = predict(m2, stack, return_normalized=True)
    res = predict([m1, m2], stack, return_spread=True, return_normalized=True)
    np.testing.assert_allclose(
        res.probabilities, (p1.probabilities + p2.probabilities) / 2, atol=1e-6
    )
    assert res.spread is not None
    np.testing.assert_allclose(
        res.spread, np.abs(p1.probabilities - p2.probabilities) / 2, atol=1e-5
    )
    assert res.spread.max() > 0.01
    np.testing.assert_allclose(res.normalized, (p1.normalized + p2.normalized) / 2, atol=1e-5)
    assert predict(m1, stack, return_spread=True).spread is None  # one model: no spread


def test_ensemble_with_tiles_and_no_normalized():
    m1, m2 = _model(3), _model(4, architecture="unet")
    image = _image((150, 140))
    kw = {"tile_size": 64, "overlap": 16}
    p1, p2 = predict(m1, image, **kw).probabilities, predict(m2, image, **kw).probabilities
    res = predict([m1, m2], image, return_spread=True, return_normalized=True, **kw)
    assert res.normalized is None  # the plain UNet has no pre-processor output
    np.testing.assert_allclose(res.probabilities, (p1 + p2) / 2, atol=1e-6)
    np.testing.assert_allclose(res.spread, np.abs(p1 - p2) / 2, atol=1e-5)


def test_tta_is_mean_of_dihedral_predictions(model):
    image = _image((44, 36))
    got = predict(model, image, tta=True).probabilities
    outs = []
    for flip in (False, True):
        base = image[:, ::-1] if flip else image
        for k in range(4):
            p = np.rot90(_direct(model, np.rot90(base, k).copy()), -k)
            outs.append(p[:, ::-1] if flip else p)
    np.testing.assert_allclose(got, np.mean(outs, axis=0), atol=1e-5)
    assert np.abs(got - _direct(model, image)).max() > 1e-3  # TTA did change something


def test_slices_only(model):
    stack = _image((4, 32, 32))
    res = predict(model, stack, slices=[2, -1])
    full = predict(model, stack)
    assert not res.probabilities[0].any() and not res.probabilities[1].any()
    np.testing.assert_allclose(res.probabilities[2:], full.probabilities[2:], atol=1e-6)
    with pytest.raises(InputError):
        predict(model, stack, slices=[4])


def test_progress_and_stop(model):
    calls: list[tuple[int, int]] = []
    predict(
        model,
        _image((2, 100, 100)),
        tile_size=64,
        overlap=16,
        batch_size=3,
        progress=lambda d, t: calls.append((d, t)),
    )
    # 2x2 tiles per slice, 2 slices
    assert calls[-1] == (8, 8)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    seen = []

    def stop() -> bool:
        seen.append(1)
        return len(seen) > 1

    with pytest.raises(StoppedError):
        predict(
            model, _image((2, 100, 100)), tile_size=64, overlap=16, batch_size=1, should_stop=stop
        )


def test_bad_inputs(model):
    bad = _image((20, 20))
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predict(model, bad)
    inf_img = _image((20, 20))
    inf_img[0, 0] = np.inf
    with pytest.raises(InputError):
        predict(model, inf_img)
    with pytest.raises(InputError):
        predict(model, np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(InputError):
        predict(model, np.zeros((0, 16), np.float32))
    with pytest.raises(InputError):
        predict(model, np.zeros(16, np.float32))
    with pytest.raises(InputError):
        predict(model, _image((20, 20)), tile_size=64, overlap=64)
    with pytest.raises(InputError):
        predict([], _image((20, 20)))


def test_model_state_restored(model):
    model.train()
    predict(model, _image((20, 20)), channels_last=True)
    assert model.training
    assert all(p.is_contiguous() for p in model.parameters())
    model.eval()


class _OomBelow(SegmentationModel):
    """Raises CUDA OOM for batches > 1 or tiles larger than ``limit``."""

    def __init__(self, inner: SegmentationModel, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.size_divisor = inner.size_divisor

    def forward_with_normalized(self, x):
        if x.shape[0] > 1 or max(x.shape[-2:]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return self.inner.forward_with_normalized(x)


def test_oom_retry_halves_batch_then_tile(model, caplog):
    image = _image((300, 260))
    oom = _OomBelow(model, limit=140)
    calls: list[tuple[int, int]] = []
    with caplog.at_level("WARNING"):
        got = predict(
            oom,
            image,
            tile_size=256,
            overlap=64,
            batch_size=8,
            progress=lambda d, t: calls.append((d, t)),
        )
    # 2x2 tiles of 256: batch 8 -> (4) -> 2 -> 1, then tiles 256 -> 128 (overlap 64 -> 32)
    assert "batch size 2" in caplog.text and "batch size 1" in caplog.text
    assert "tile size 128, overlap 32" in caplog.text and "batch size 4" not in caplog.text
    want = predict(model, image, tile_size=128, overlap=32, batch_size=1).probabilities
    np.testing.assert_allclose(got.probabilities, want, atol=1e-5)
    assert calls[-1][0] == calls[-1][1]
    with pytest.raises(OutOfMemoryError, match="tile size"):
        predict(_OomBelow(model, limit=64), image, batch_size=2)


def test_load_models_errors(tmp_path):
    with pytest.raises(InputError, match="best.pt"):
        load_models([tmp_path])
    with pytest.raises(InputError, match="not found"):
        load_models([tmp_path / "missing.pt"])


def test_cpu_default_is_one_tile_per_forward_pass(model):
    """On the CPU batch 1 measured fastest (BENCHMARKS.md), so it is the default there."""
    calls: list[tuple[int, int]] = []
    predict(model, _image((300, 260)), tile_size=256, overlap=64, device="cpu",
            progress=lambda d, t: calls.append((d, t)))
    assert [d for d, _ in calls] == [1, 2, 3, 4]  # 2x2 tiles, one per batch
