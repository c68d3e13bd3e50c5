"""The Inspect widget: pre-processor output beside the image and the Fig. 6 histograms."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_fcres.config import preset_config
from napari_fcres.jobs import normal_fit
from napari_fcres.training import replace_train, run_training
from napari_fcres.widgets._pickers import remember_checkpoints
from napari_fcres.widgets.inspect import InspectWidget, grid_of

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


def make_widget(viewer) -> InspectWidget:
    widget = InspectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Inspect")
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    return widget


def show(qtbot, widget: InspectWidget) -> None:
    assert widget.show_button.isEnabled()
    qtbot.mouseClick(widget.show_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)


def histogram_parts(ax) -> tuple[int, list]:
    """Fewest bins of the axes' class histograms (filled step patches), and the fit curves."""
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    bins = [len(p.get_data().values) for p in ax.patches if hasattr(p, "get_data")]
    assert len(bins) == 2  # background and foreground
    return min(bins), dashed


def test_current_slice_with_labels(viewer, qtbot, em_layers, tiny_checkpoint):
    img, lab = em_layers
    remember_checkpoints([tiny_checkpoint])  # as a Train widget does after a run
    widget = make_widget(viewer)
    assert widget.checkpoint_combo.path() == str(tiny_checkpoint)
    widget.labels_combo.set_layer(lab)
    viewer.dims.set_current_step(0, 2)
    show(qtbot, widget)

    name = f"{img.name} normalized"  # the name the Predict widget uses too
    assert name in viewer.layers
    norm = viewer.layers[name]
    assert norm.data.shape == img.data.shape and norm.data.dtype == np.float32
    filled = [z for z in range(4) if np.any(norm.data[z] != 0)]
    assert filled == [2]
    assert grid_of(viewer).enabled
    np.testing.assert_allclose(norm.scale, img.scale)

    result = widget.last_result
    assert result.slices == [2] and result.source == "labels"
    expected_fg = int((lab.data[2] > 0).sum())
    assert result.foreground.raw.size == expected_fg
    assert result.background.raw.size == lab.data[2].size - expected_fg
    for ax in (widget.ax_raw, widget.ax_norm):
        n_bars, dashed = histogram_parts(ax)
        assert n_bars > 20 and len(dashed) == 2
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(t.startswith("bg") and "μ=" in t for t in texts)
        assert any(t.startswith("fg") and "σ=" in t for t in texts)
    mu, sigma = result.fits["foreground"]["raw"]
    assert mu == pytest.approx(float(result.foreground.raw.mean()), rel=1e-4)
    assert sigma == pytest.approx(float(result.foreground.raw.std()), rel=1e-3)

    # another slice fills the same layer
    viewer.dims.set_current_step(0, 0)
    show(qtbot, widget)
    assert [z for z in range(4) if np.any(norm.data[z] != 0)] == [0, 2]
    assert len([layer for layer in viewer.layers if "normalized" in layer.name]) == 1
    assert norm.metadata["fcres_result"] == {"image": img.name, "kind": "normalized"}


def test_whole_stack_without_labels(viewer, qtbot, em_layers, tiny_checkpoint):
    img, _ = em_layers
    widget = make_widget(viewer)
    widget.checkpoint_combo.set_path(tiny_checkpoint)
    assert widget.labels_combo.layer() is None  # default: no labels, use the prediction
    widget.stack_radio.setChecked(True)
    show(qtbot, widget)
    norm = viewer.layers[f"{img.name} normalized"]
    assert all(np.any(norm.data[z] != 0) for z in range(4))
    result = widget.last_result
    assert result.slices == [0, 1, 2, 3] and result.source == "prediction"
    total = result.foreground.raw.size + result.background.raw.size
    assert total == img.data.size
    assert "prediction" in widget.status_label.text()


def test_default_checkpoint_follows_training(viewer, qtbot, em_layers, tiny_checkpoint):
    widget = make_widget(viewer)
    assert widget.checkpoint_combo.path() == ""
    remember_checkpoints([tiny_checkpoint])
    assert widget.checkpoint_combo.path() == str(tiny_checkpoint)


def test_unet_has_no_preprocessor(viewer, qtbot, em_layers, em_small, tmp_path, notifications):
    cfg = replace_train(preset_config("tiny", "unet"), epochs=1, crop_size=32, device="cpu")
    unet = run_training(cfg, *em_small, tmp_path / "unet").best_checkpoints[0]
    widget = make_widget(viewer)
    widget.checkpoint_combo.set_path(unet)
    show(qtbot, widget)
    assert any("no pre-processor output" in m for m in notifications.messages())
    assert widget.show_button.isEnabled() and not widget.is_running()
    assert not any("normalized" in layer.name for layer in viewer.layers)


def test_missing_checkpoint_is_reported(viewer, qtbot, em_layers, tmp_path, notifications):
    widget = make_widget(viewer)
    widget.checkpoint_combo.set_path(tmp_path / "nope.pt")
    show(qtbot, widget)
    assert any("not found" in m for m in notifications.messages())
    assert widget.show_button.isEnabled()


def test_normal_fit_matches_moments():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 10_000)
    mu, sigma = normal_fit(x)
    assert mu == pytest.approx(3.0, abs=0.1) and sigma == pytest.approx(2.0, abs=0.1)
