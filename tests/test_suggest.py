"""Suggest what to paint next: ranking by uncertainty, painted slices, bad input, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_fcres.cli import main
from napari_fcres.errors import InputError
from napari_fcres.suggest import (
    SliceSuggestion,
    pixel_uncertainty,
    suggest_from_models,
    suggest_slices,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _confident(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A map that is sure everywhere (0.03 or 0.97)."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) > 0.5, 0.97, 0.03).astype(np.float32)


# ----------------------------------------------------------------------------- constructed


def test_members_that_disagree_rank_first_with_their_region():
    a = _confident((4, 200, 300))
    b = a.copy()
    b[2, 40:80, 200:260] = 1.0 - b[2, 40:80, 200:260]  # the members differ only here
    b[0, 150:160, 10:20] = 1.0 - b[0, 150:160, 10:20]  # and a little here
    out = suggest_slices([a, b], k=4, region_size=64)
    assert [s.slice for s in out[:2]] == [2, 0]
    assert out[0].score > out[1].score > out[2].score == out[3].score == 0.0
    y0, y1, x0, x1 = out[0].region
    assert (y1 - y0, x1 - x0) == (64, 64)
    assert y0 <= 40 and y1 >= 80 and x0 <= 200 and x1 >= 260  # the whole patch is inside
    assert "disagree" in out[0].reason
    assert all(isinstance(s, SliceSuggestion) for s in out)


def test_mean_and_spread_equal_the_members():
    a, b, c = (_confident((3, 40, 50), seed) for seed in range(3))
    members = np.stack([a, b, c])
    from_members = suggest_slices([a, b, c], k=None, region_size=16)
    from_stack = suggest_slices(members, k=None, region_size=16)
    from_mean = suggest_slices(members.mean(0), k=None, region_size=16,
                               spread=members.std(0))
    for x, y, z in zip(from_members, from_stack, from_mean, strict=True):
        assert x.slice == y.slice == z.slice and x.region == y.region == z.region
        assert x.score == pytest.approx(y.score) and x.score == pytest.approx(z.score, abs=1e-6)


def test_single_model_falls_back_to_entropy_of_undecided_pixels():
    p = _confident((3, 64, 64))
    p[1, 10:30, 30:50] = 0.5  # undecided: 1 bit each
    p[2, :, :] = np.where(p[2] > 0.5, 0.85, 0.15)  # leaning but outside 0.2-0.8: not counted
    out = suggest_slices(p, k=3, region_size=16)
    assert out[0].slice == 1
    assert out[0].score == pytest.approx(20 * 20 / 64**2, rel=1e-4)
    assert out[0].region == (12, 28, 32, 48)  # centred on the 20 x 20 patch
    assert out[1].score == out[2].score == 0.0
    assert "entropy only" in out[0].reason


def test_pixel_uncertainty_formula():
    mean = np.array([0.5, 0.1, 0.7, 0.2], np.float32)
    spread = np.array([0.5, 0.0, 0.1, 0.0], np.float32)
    h07 = -(0.7 * np.log2(0.7) + 0.3 * np.log2(0.3))
    np.testing.assert_allclose(pixel_uncertainty(mean, spread), [2.0, 0.0, h07 + 0.2, 0.0],
                               rtol=1e-5)


def test_painted_slices_are_never_suggested():
    a = _confident((6, 32, 32))
    b = 1.0 - a  # every slice equally uncertain
    out = suggest_slices([a, b], painted=[0, 2, -1], k=None)
    assert sorted(s.slice for s in out) == [1, 3, 4]
    assert suggest_slices([a, b], painted=range(6)) == []
    assert len(suggest_slices([a, b], k=2)) == 2
    # the region is clipped to small slices
    assert suggest_slices(a, k=1, region_size=128)[0].region == (0, 32, 0, 32)


@pytest.mark.parametrize(
    ("probabilities", "kwargs", "match"),
    [
        ([np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 9), np.float32)], {}, "same shape"),
        (np.zeros((8, 8), np.float32), {}, "3D"),
        (np.zeros((2, 8, 8), np.uint8), {}, "float"),
        ([], {}, "no probability"),
        (np.full((2, 8, 8), np.nan, np.float32), {}, "NaN"),
        (np.full((2, 8, 8), 1.5, np.float32), {}, r"\[0, 1\]"),
        (np.zeros((2, 8, 8), np.float32), {"painted": [2]}, "outside"),
        (np.zeros((2, 8, 8), np.float32), {"painted": ["a"]}, "integer"),
        (np.zeros((2, 8, 8), np.float32), {"k": 0}, "k must"),
        (np.zeros((2, 8, 8), np.float32), {"region_size": 0}, "region_size"),
        ([np.zeros((2, 8, 8), np.float32)] * 2, {"spread": np.zeros((2, 8, 8), np.float32)},
         "either"),
        (np.zeros((2, 8, 8), np.float32), {"spread": np.full((2, 8, 8), 0.7, np.float32)},
         "spread must lie"),
    ],
)
def test_bad_input_is_one_line(probabilities, kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        suggest_slices(probabilities, **kwargs)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def member_b(tmp_path_factory, train_tiny) -> Path:
    """A second tiny model (other seed): with ``trained_checkpoint``, a two-member ensemble."""
    return train_tiny(tmp_path_factory.mktemp("member_b"), epochs=20, seed=1)


@pytest.fixture(scope="module")
def noisy_stack():
    """Six unseen 64 x 64 slices of the synthetic sample; slice 3 is buried in heavy noise."""
    from napari_fcres.sample_data import load_sample_stack

    image, labels = load_sample_stack()
    stack = image[6:12, :64, :64].astype(np.float32)
    rng = np.random.default_rng(0)
    stack[3] = np.clip(stack[3] + rng.normal(0.0, 80.0, stack[3].shape), 0, 255)
    return stack, labels[6:12, :64, :64] > 0


def _errors(models, image, truth) -> np.ndarray:
    from napari_fcres.inference import predict

    p = predict(models, image).probabilities
    return np.array([np.mean((p[z] > 0.5) != truth[z]) for z in range(len(image))])


@pytest.mark.parametrize("members", [1, 2])
def test_trained_models_rank_the_slice_they_get_wrong_first(members, trained_checkpoint,
                                                            member_b, noisy_stack):
    from napari_fcres.runs import load_ensemble

    models = load_ensemble([trained_checkpoint, member_b][:members])
    image, truth = noisy_stack
    errors = _errors(models, image, truth)
    assert errors[3] > errors[np.arange(6) != 3].max()  # the model really gets slice 3 wrong
    # one model: its four mirrored predictions act as members
    out = suggest_from_models(models, image, k=None, tile=64, region_size=32)
    assert [s.slice for s in out][0] == 3
    assert out[0].score > out[1].score
    assert sorted(s.slice for s in out) == list(range(6))
    # painted and non-candidate slices are skipped (and not predicted)
    out = suggest_from_models(models, image, painted=[3], k=2, tile=64, slices=[1, 2, 3, 4])
    assert len(out) == 2 and {s.slice for s in out} <= {1, 2, 4}
    assert suggest_from_models(models, image, painted=[0, 1], slices=[0, 1]) == []


def test_suggest_from_models_refuses_bad_input(trained_checkpoint):
    from napari_fcres.runs import load_ensemble

    models = load_ensemble([trained_checkpoint])
    with pytest.raises(InputError, match="3D"):
        suggest_from_models(models, np.zeros((32, 32), np.float32))
    with pytest.raises(InputError, match="no model"):
        suggest_from_models([], np.zeros((2, 32, 32), np.float32))
    with pytest.raises(InputError, match="candidate slice 5"):
        suggest_from_models(models, np.zeros((2, 32, 32), np.float32), slices=[5])


# ----------------------------------------------------------------------------- CLI


def test_cli_suggest_json_and_table(tmp_path, capsys, trained_checkpoint, member_b, noisy_stack):
    image, truth = noisy_stack
    tifffile.imwrite(tmp_path / "image.tif", image.astype(np.uint8))
    painted = np.zeros(image.shape, np.uint8)
    painted[1] = truth[1] + 1  # slice 1 painted (1 = membrane, 2 = cell)
    painted[4, 5, 5] = 2  # a single stroke is painting too
    tifffile.imwrite(tmp_path / "labels.tif", painted)
    run = trained_checkpoint.parent  # a member folder: its best.pt
    args = ["-q", "suggest", str(tmp_path / "image.tif"), "--models", str(run), str(member_b),
            "--labels", str(tmp_path / "labels.tif"), "--device", "cpu", "--tile", "64",
            "--region", "32", "-k", "3"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["members"] == 2 and data["painted"] == [1, 4] and not data["flips"]
    slices = [s["slice"] for s in data["suggestions"]]
    assert len(slices) == 3 and slices[0] == 3 and not {1, 4} & set(slices)
    first = data["suggestions"][0]
    assert len(first["region"]) == 4 and first["score"] > 0 and first["reason"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "painted slices: 1, 4" in text and "2 members" in text
    assert text.splitlines()[2].split()[:2] == ["1", "3"]  # rank 1: slice 3


def test_cli_suggest_errors(tmp_path, capsys, trained_checkpoint):
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((2, 32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "labels.tif", np.zeros((3, 32, 32), np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((32, 32), np.uint8))
    base = ["suggest", "--models", str(trained_checkpoint), "--device", "cpu"]
    assert main([*base, str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif")]) \
        == 2
    assert main([*base, str(tmp_path / "flat.tif")]) == 2
    assert main([*base, str(tmp_path / "image.tif"), "--slices", "0-7"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 3 and "shape" in lines[0] and "3D" in lines[1] and "outside" in lines[2]
    assert "Traceback" not in err
