"""Which slices take their own batch-norm statistics (``norm_stats: auto``)."""

from __future__ import annotations

import numpy as np

from napari_fcres.norm_choice import own_statistics_slices
from napari_fcres.sample_data import synthetic_em_stack
from napari_fcres.synthetic_scan import synthetic_scan


def test_em_stack_with_drift_takes_per_slice_statistics():
    image, _ = synthetic_em_stack(shape=(8, 128, 128), seed=2)  # drifts in brightness/contrast
    image = image.astype(np.float32)
    image[3] = image[3] * 1.4 + 30  # a brighter, more contrasty slice: still per-slice
    assert own_statistics_slices(image).all()


def test_scan_takes_volume_statistics_everywhere():
    for modality in ("mri", "ct"):
        scan = synthetic_scan((24, 64, 64), modality=modality, seed=1)
        assert not own_statistics_slices(scan.image).any()


def test_blank_and_constant_slices_in_an_em_stack_take_volume_statistics():
    image, _ = synthetic_em_stack(shape=(8, 128, 128), seed=3)
    image = image.astype(np.float32)
    rng = np.random.default_rng(0)
    image[0] = rng.normal(8.0, 2.0, image.shape[1:])  # air: noise only
    image[7] = 0.0  # constant: no variance to divide by
    own = own_statistics_slices(image)
    assert not own[0] and not own[7]
    assert own[1:7].all()


def test_reference_stands_for_the_volume():
    scan = synthetic_scan((24, 64, 64), seed=2)
    mid = scan.image[12:13]
    # judged alone, one slice is its own typical slice; against the scan it is not
    assert own_statistics_slices(mid).all()
    assert not own_statistics_slices(mid, reference=scan.image).any()


def test_plan_per_kind_of_stack():
    from napari_fcres.norm_choice import statistics_plan

    scan = synthetic_scan((24, 64, 64), seed=3)
    assert statistics_plan(scan.image) == ["running"] * 24
    image, _ = synthetic_em_stack(shape=(6, 128, 128), seed=4)
    image = image.astype(np.float32)
    image[5] = 0.0
    assert statistics_plan(image) == ["image"] * 5 + ["volume"]
