"""Validation and stopping that mean the same on 3 annotated slices as on 300."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.config import Config
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.training import choose_validation, split_slices, train


@pytest.fixture(scope="module")
def three_slices():
    return synthetic_em_stack(shape=(3, 64, 64), seed=5)


def test_few_slices_hold_out_a_band_of_every_slice():
    split = choose_validation([0, 5, 10], width=512, val_fraction=0.2, val_split="auto", seed=0)
    assert split.kind == "regions"
    assert split.train == [0, 5, 10] and split.val == [0, 5, 10]
    for x0, x1 in split.regions.values():
        assert x1 - x0 == 102 and 0 <= x0 < x1 <= 512
    many = choose_validation(list(range(20)), width=512, val_fraction=0.2, val_split="auto",
                             seed=0)
    assert many.kind == "slices" and len(many.val) == 4 and not many.regions
    forced = choose_validation(list(range(20)), 512, 0.2, "regions", 0)
    assert forced.kind == "regions" and forced.train == list(range(20))


def test_validation_slices_span_the_whole_range_edges_included():
    for seed in range(5):
        train_s, val_s = split_slices(range(30, 110), 0.2, seed)
        assert 30 in val_s and 109 in val_s and len(val_s) == 16
        assert sorted(train_s + val_s) == list(range(30, 110))
    assert split_slices(range(20), 0.2, 0) != split_slices(range(20), 0.2, 1)


def test_three_slices_train_on_every_slice_to_the_time_budget(tmp_path, three_slices,
                                                               tiny_config):
    image, labels = three_slices
    cfg = tiny_config(epochs=None, max_minutes=0.05, crop_size=32, batch_size=2,
                      val_split="auto", val_every_steps=20)
    reports = list(train(cfg, image, labels, tmp_path))
    last = read_checkpoint(tmp_path / "member_00" / "last.pt")
    assert last["elapsed_s"] >= 3.0  # the 3 s budget was used, not cut short
    assert sorted(last["split"]["train"]) == [0, 1, 2]
    assert set(last["split"]["regions"]) == {"0", "1", "2"}
    basis = {r.validation_basis for r in reports if r.kind == "validation"}
    assert basis == {"validating on a held-out band of each of the 3 annotated slices"}
    # validations every 20 steps and at the end, not after every 1-step epoch
    vals = [r.step for r in reports if r.kind == "validation"]
    assert len(vals) >= 2 and all(b - a == 20 for a, b in zip(vals[:-2], vals[1:-1],
                                                                   strict=False))


def test_patience_counts_optimisation_steps(tmp_path, three_slices, tiny_config):
    image, labels = three_slices
    # lr 0: the weights never change, so the first validation stays the best
    cfg = tiny_config(epochs=1000, lr=0.0, warmup_steps=0, val_every_steps=2,
                      patience_steps=6, crop_size=32, batch_size=2)
    list(train(cfg, image, labels, tmp_path))
    last = read_checkpoint(tmp_path / "member_00" / "last.pt")
    assert last["best_step"] == 2
    assert last["step"] == 8  # 6 steps without a better score after step 2


def test_band_is_masked_out_of_the_training_loss(tmp_path, three_slices, tiny_config):
    import torch

    from napari_fcres.training import _MemberRun, prepare_data

    image, labels = three_slices
    cfg = tiny_config(crop_size=32, val_split="auto")
    data = prepare_data(image, labels, cfg)
    run = _MemberRun(cfg, data, tmp_path / "m", 0, torch.device("cpu"), False, None, None)
    mask = run._train_mask()
    for k, z in enumerate(run.split.train):
        x0, x1 = run.split.regions[z]
        assert not mask[k, :, x0:x1].any()
        assert mask[k, :, :x0].all() and mask[k, :, x1:].all()


def test_epoch_counted_keys_of_an_older_config_are_replaced(caplog):
    raw = Config().to_dict()
    raw["train"].pop("patience_steps")
    raw["train"].pop("val_every_steps")
    raw["train"]["patience"] = 50
    raw["train"]["val_every"] = 1
    with caplog.at_level(logging.WARNING):
        cfg = Config.from_dict(raw)
    assert cfg.train.patience_steps == 1000 and cfg.train.val_every_steps == 20
    assert "counted epochs" in caplog.text


def test_far_from_training_slices_are_named():
    from napari_fcres.foreground_check import foreground_outliers, outlier_message

    probs = np.zeros((5, 10, 10), np.float32)
    probs[:, :, :3] = 1.0  # 30 % foreground, as in training
    probs[4] = 1.0  # everything called foreground
    high, low = foreground_outliers(probs, [0.25, 0.3, 0.35])
    assert high == [4] and low == []
    assert "slice(s) 4 far more foreground" in outlier_message(high, low, [0.25, 0.3, 0.35])


def test_few_label_settings_follow_the_number_of_annotated_slices():
    from napari_fcres.config import preset_config
    from napari_fcres.training import resolve_few_label_settings

    cfg = preset_config("cpu")
    few = resolve_few_label_settings(cfg, 3)
    assert (few.augment.intensity, few.train.loss, few.train.warmup_steps) == (0.5, "bce_dice", 20)
    many = resolve_few_label_settings(cfg, 8)
    assert (many.augment.intensity, many.train.loss, many.train.warmup_steps) == (0.0, "dice", 100)
    # the warm-up follows the loss, and what a config says is kept
    bce = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss="bce_dice"))
    assert resolve_few_label_settings(bce, 30).train.warmup_steps == 20
    told = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmup_steps=7))
    assert resolve_few_label_settings(told, 3).train.warmup_steps == 7
    # the moving average of the weights: on for few slices, off for many, as told otherwise
    assert (few.train.ema_decay, many.train.ema_decay) == (0.99, 0.0)
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0.0))
    assert resolve_few_label_settings(off, 3).train.ema_decay == 0.0


def test_few_slices_keep_the_final_average_and_train_the_plain_unet():
    from napari_fcres.config import preset_config
    from napari_fcres.training import resolve_few_label_settings

    auto = preset_config("cpu", "auto")
    few, many = (resolve_few_label_settings(auto, n, "v_rand") for n in (3, 8))
    assert (few.train.keep, many.train.keep) == ("final", "best")
    # a blob-like target (validated by Dice) keeps the best validation checkpoint
    assert resolve_few_label_settings(auto, 3, "dice").train.keep == "best"
    assert (few.model.architecture, many.model.architecture) == ("unet", "pipeline")
    told = dataclasses.replace(auto, train=dataclasses.replace(auto.train, keep="best"),
                               model=dataclasses.replace(auto.model, architecture="pipeline"))
    kept = resolve_few_label_settings(told, 3, "v_rand")
    assert (kept.train.keep, kept.model.architecture) == ("best", "pipeline")


def test_a_final_run_keeps_its_last_weights_average_included(tmp_path, three_slices,
                                                             tiny_config):
    import torch

    image, labels = three_slices
    cfg = tiny_config(arch="auto", epochs=4, steps_per_epoch=4, crop_size=32, batch_size=2,
                      val_every_steps=3, select_by="v_rand")  # membranes: keep "final"
    gen = train(cfg, image, labels, tmp_path)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    best = read_checkpoint(tmp_path / "member_00" / "best.pt")
    last = read_checkpoint(tmp_path / "member_00" / "last.pt")
    assert best["kept"] == "final" and best["architecture"] == "unet"
    assert best["step"] == last["step"] == 16
    average = last["weight_average"]["model_state"]
    assert all(torch.equal(best["model_state"][k], average[k]) for k in average)
    final = last["history"][-1]
    assert final["step"] == 16  # validated at the end: the kept model's score is reported
    assert result.kept == "final"
    assert result.best_val_dice == [final.get("val_v_rand", final["val_dice"])]


def test_fine_tuning_with_auto_takes_the_checkpoints_network(tmp_path, three_slices,
                                                             tiny_config):
    image, labels = three_slices
    first = tiny_config(arch="pipeline", epochs=1, steps_per_epoch=2, crop_size=32,
                        batch_size=2)
    list(train(first, image, labels, tmp_path / "a"))
    again = tiny_config(arch="auto", epochs=1, steps_per_epoch=2, crop_size=32, batch_size=2)
    list(train(again, image[:2], labels[:2], tmp_path / "b",
               init_checkpoint=tmp_path / "a" / "member_00" / "best.pt"))
    assert read_checkpoint(tmp_path / "b" / "member_00" / "best.pt")["architecture"] == "pipeline"
