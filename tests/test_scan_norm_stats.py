"""A scan's end slices under the default prediction statistics (issue: per-slice batch norm
turned a scan's blank and mostly-background slices into foreground)."""

from __future__ import annotations

import pytest

from napari_fcres.inference import load_models, predict
from napari_fcres.models.norm import set_norm_stats
from napari_fcres.synthetic_scan import synthetic_scan
from napari_fcres.train_config import build_train_config
from napari_fcres.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def scan_model(tmp_path_factory, one_thread_module):
    """A tiny pipeline trained on the middle slices of a small synthetic MRI scan."""
    scan = synthetic_scan((32, 64, 64), modality="mri", seed=0)
    z0, z1 = scan.target_slices
    mid = (z0 + z1) // 2
    train = list(range(mid - 4, mid + 5))
    cfg = build_train_config(preset="tiny", epochs=40, steps_per_epoch=5, crop_size=64,
                             batch_size=4, lr=3e-3, device="cpu", seed=0)
    folder = tmp_path_factory.mktemp("scan_run")
    run_training(cfg, scan.image[train], scan.labels[train], folder)
    return scan, load_models(folder)


def test_default_predicts_the_end_slices_of_a_scan_without_blow_up(scan_model):
    scan, models = scan_model
    assert models[0].fcresnet is not None  # the pipeline, default statistics "auto"
    probs = predict(models, scan.image).probabilities
    pred = probs > 0.5
    truth = int(scan.labels.sum())
    assert abs(int(pred.sum()) - truth) <= 0.10 * truth
    empty = [z for z in range(scan.image.shape[0]) if not scan.labels[z].any()]
    assert pred[empty].sum() <= 0.01 * truth


def test_per_slice_statistics_blow_the_scan_ends_up(scan_model):
    """The mechanism, kept visible: each slice's own statistics call air foreground."""
    scan, models = scan_model
    for m in models:
        set_norm_stats(m, "image")
    try:
        probs = predict(models, scan.image).probabilities
    finally:
        for m in models:
            set_norm_stats(m, "auto")
    empty = [z for z in range(scan.image.shape[0]) if not scan.labels[z].any()]
    assert (probs[empty] > 0.5).sum() > 0.2 * int(scan.labels.sum())
