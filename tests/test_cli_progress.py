"""What `fcres train` shows while it works: member, epoch, step, best score, time left."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from napari_fcres.cli import main
from napari_fcres.cli_progress import describe, format_duration, score_name, time_left
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import TrainProgress


def report(**kw) -> TrainProgress:
    base = dict(kind="step", member=0, n_members=1, epoch=2, epochs=50, step=12,
                steps_per_epoch=5, loss=0.25, best_val_dice=0.73, best_epoch=2, elapsed=60.0,
                fraction=0.05)
    base.update(kw)
    return TrainProgress(**base)


def test_describe_speaks_in_members_epochs_steps_and_time():
    text = describe(report())
    assert text.startswith("epoch 3/50 step 12, loss 0.2500")
    assert "best val Dice 0.7300" in text
    assert "1:00 elapsed" in text
    # 60 s for 12 steps: 238 steps to go -> 19:50 at the epoch limit
    assert "~19:50 left (epoch limit)" in text
    assert "\u2030" not in text and text.isascii()
    ens = describe(report(member=1, n_members=3, kind="validation", epoch=3, step=15))
    assert ens.startswith("member 2/3, step 15 validated")
    assert describe(report(kind="done", message="finished")) == "finished"


def test_time_left_takes_whichever_limit_ends_first():
    assert time_left(report(), None) == pytest.approx((1190.0, "epoch limit"))
    seconds, why = time_left(report(), max_minutes=2.0)
    assert why == "time limit" and seconds == pytest.approx(60.0)
    # an ensemble shares the budget; two more members after this one
    seconds, why = time_left(report(n_members=3), max_minutes=6.0)
    assert why == "time limit" and seconds == pytest.approx(60.0 + 2 * 120.0)
    assert time_left(report(step=0, elapsed=0.0), None) is None
    assert format_duration(3723) == "1:02:03" and format_duration(65) == "1:05"


def test_score_name_follows_the_selection_metric():
    p = report()
    assert score_name(p) == "Dice"
    if "metric" in {f.name for f in dataclasses.fields(TrainProgress)}:
        assert score_name(dataclasses.replace(p, metric="v_rand")) == "V_rand"


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bar")
    image, labels = synthetic_em_stack(shape=(4, 64, 64), seed=2)
    tifffile.imwrite(root / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(root / "labels.tif", labels, photometric="minisblack")
    return root


def test_bar_only_after_inputs_are_validated(stack_files, tmp_path, capsys):
    d = stack_files
    bad = np.zeros((2, 32, 32), np.uint8)
    tifffile.imwrite(tmp_path / "bad.tif", bad, photometric="minisblack")
    rc = main(["train", str(tmp_path / "bad.tif"), str(d / "labels.tif"), "--out",
               str(tmp_path / "x"), "--preset", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "shape" in err
    assert "%|" not in err  # no (empty) bar before the error
    rc = main(["train", str(d / "image.tif"), str(d / "labels.tif"), "--out",
               str(tmp_path / "ok"), "--preset", "tiny", "--epochs", "1",
               "--steps-per-epoch", "2", "--crop-size", "32", "--batch-size", "2",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "epoch 1/1 step" in err and "best val" in err
    assert "\u2030" not in err and "s/" not in err
