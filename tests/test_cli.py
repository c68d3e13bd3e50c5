"""The `fcres` command line end to end on tiny inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile

from napari_fcres.cli import build_parser, main, parse_slices
from napari_fcres.errors import InputError
from napari_fcres.inference import predict
from napari_fcres.runs import load_ensemble
from napari_fcres.sample_data import synthetic_em_stack


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    image, labels = synthetic_em_stack(shape=(4, 64, 64), seed=2)
    tifffile.imwrite(root / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(root / "labels.tif", labels, photometric="minisblack")
    return root


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for cmd in ("info", "train", "predict", "evaluate", "demo", "fetch-isbi"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: fcres " + cmd in capsys.readouterr().out


def test_info_paper_json(capsys):
    assert main(["info", "--preset", "paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Table I's 1.8 M with 2x2 merge convolutions; our symmetric 3x3 merges make it 2.16 M
    assert info["parts"]["preprocessor"]["parameters"] == 2_158_547
    assert 10.5e6 < info["parts"]["fcresnet"]["parameters"] < 12.5e6
    assert info["parts"]["preprocessor"]["conv_layers"] == 23


def test_parse_slices():
    assert parse_slices("0-3") == [0, 1, 2, 3]
    assert parse_slices("20:23") == [20, 21, 22]
    assert parse_slices("1,4,7") == [1, 4, 7]
    with pytest.raises(InputError):
        parse_slices("a-b")
    with pytest.raises(InputError, match="outside"):
        parse_slices("0-40", 30)


def test_train_predict_evaluate(stack_files, tmp_path, capsys):
    d = stack_files
    out = tmp_path / "run"
    # the pipeline (4 slices would train the plain UNet, which has no --normalized output)
    rc = main(["-q", "train", str(d / "image.tif"), str(d / "labels.tif"), "--out", str(out),
               "--preset", "tiny", "--architecture", "pipeline", "--epochs", "2",
               "--steps-per-epoch", "2", "--crop-size", "32", "--batch-size", "2",
               "--ensemble", "2", "--device", "cpu"])
    assert rc == 0
    assert (out / "member_00" / "best.pt").exists() and (out / "member_01" / "best.pt").exists()
    labels_out = tmp_path / "pred.tif"
    rc = main(["-q", "predict", str(d / "image.tif"), "--models", str(out), "--out",
               str(labels_out), "--probabilities", str(tmp_path / "p.tif"),
               "--normalized", str(tmp_path / "n.tif"), "--spread", str(tmp_path / "s.tif"),
               "--tile", "48", "--overlap", "8", "--device", "cpu", "--mode", "instances"])
    assert rc == 0
    prob = tifffile.imread(tmp_path / "p.tif")
    assert prob.shape == (4, 64, 64) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1
    assert tifffile.imread(tmp_path / "n.tif").shape == (4, 64, 64)
    assert tifffile.imread(labels_out).shape == (4, 64, 64)
    # test-time augmentation is the default; --no-tta predicts plainly
    models = load_ensemble(out)
    image = tifffile.imread(d / "image.tif")
    tiles = {"tile_size": 48, "overlap": 8}
    np.testing.assert_allclose(prob, predict(models, image, tta=True, **tiles).probabilities,
                               atol=1e-5)
    assert main(["-q", "predict", str(d / "image.tif"), "--models", str(out), "--out",
                 str(tmp_path / "plain.tif"), "--probabilities", str(tmp_path / "plain_p.tif"),
                 "--tile", "48", "--overlap", "8", "--device", "cpu", "--no-tta"]) == 0
    plain = tifffile.imread(tmp_path / "plain_p.tif")
    np.testing.assert_allclose(plain, predict(models, image, tta=False, **tiles).probabilities,
                               atol=1e-5)
    assert np.abs(plain - prob).max() > 1e-4  # the two really differ
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "p.tif"), str(d / "labels.tif"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    for key in ("v_rand", "v_info", "dice", "pixel_error"):
        assert 0.0 <= scores[key] <= 1.0


def test_resume_and_init(stack_files, tmp_path):
    d = stack_files
    common = ["--preset", "tiny", "--steps-per-epoch", "2", "--crop-size", "32",
              "--batch-size", "2", "--device", "cpu"]
    out = tmp_path / "run"
    # the pipeline (4 slices would train the plain UNet): --freeze-fcresnet fine-tunes it below
    assert main(["-q", "train", str(d / "image.tif"), str(d / "labels.tif"), "--out", str(out),
                 "--epochs", "1", "--architecture", "pipeline", *common]) == 0
    assert main(["-q", "train", str(d / "image.tif"), str(d / "labels.tif"), "--out", str(out),
                 "--epochs", "2", "--resume", *common]) == 0
    tuned = tmp_path / "tuned"
    assert main(["-q", "train", str(d / "image.tif"), str(d / "labels.tif"), "--out",
                 str(tuned), "--init", str(out / "member_00" / "best.pt"), "--freeze-fcresnet",
                 "--epochs", "1", "--steps-per-epoch", "1", "--crop-size", "32",
                 "--batch-size", "2", "--device", "cpu"]) == 0


def test_errors_are_one_line_not_tracebacks(stack_files, tmp_path, capsys):
    d = stack_files
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "small.tif", rng.integers(0, 255, (2, 32, 32), dtype=np.uint8),
                     photometric="minisblack")
    rc = main(["-q", "train", str(tmp_path / "small.tif"), str(d / "labels.tif"),
               "--out", str(tmp_path / "x"), "--preset", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "shape" in err and "Traceback" not in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rc = main(["-q", "predict", str(d / "image.tif"), "--models", str(tmp_path / "junk.pt"),
               "--out", str(tmp_path / "o.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint" in err
    rc = main(["-q", "predict", str(d / "image.tif"), "--models", str(tmp_path / "junk.pt"),
               "--out", str(tmp_path / "o.tif"), "--device", "cuda:7"])
    assert rc == 2
    rc = main(["info", "--preset", "paper", "--architecture", "pipeline"])
    assert rc == 0


def test_demo_runs_end_to_end(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="napari_fcres")
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--preset", "tiny", "--epochs", "1",
                 "--minutes", "0.2", "--device", "cpu"]) == 0
    assert "V_rand" in capsys.readouterr().out
    # the one epoch's validation is reported once (the training loop's line), not twice
    val_lines = [r.getMessage() for r in caplog.records
                 if "epoch" in r.getMessage() and "val" in r.getMessage().lower()]
    assert len(val_lines) == 1, val_lines
    for name in ("labels.tif", "probabilities.tif", "normalized.tif", "scores.json"):
        assert (out / name).exists()
    scores = json.loads((out / "scores.json").read_text())
    assert 0 <= scores["v_rand"] <= 1
