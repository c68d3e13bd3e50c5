"""The Predict widget's "Next slice to annotate": jump to the most uncertain unpainted slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_fcres.widgets._layers import current_slice
from napari_fcres.widgets.predict import PredictWidget, layer_names

pytestmark = pytest.mark.gui

WAIT_MS = 60_000
IMAGE = "EM stack"


@pytest.fixture(scope="module")
def member_two(tmp_path_factory, train_tiny) -> Path:
    """A second tiny model (other seed): with ``trained_checkpoint``, a two-member ensemble."""
    return train_tiny(tmp_path_factory.mktemp("member_two"), epochs=20, seed=1)


def _predicted_widget(viewer, qtbot, checkpoints) -> tuple[PredictWidget, object]:
    """A 4 x 192 x 192 stack (scaled, shifted) predicted as a whole by ``checkpoints``."""
    from napari_fcres.sample_data import load_sample_stack

    image = load_sample_stack()[0][6:10, :192, :192]
    img = viewer.add_image(image, name=IMAGE, scale=(2.0, 0.5, 0.5), translate=(1.0, 3.0, 4.0))
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict")
    widget.checkpoint_list.set_checkpoints(checkpoints)
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.tile_spin.setValue(128)
    assert not widget.next_button.isEnabled()
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS):
        qtbot.mouseClick(widget.stack_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    return widget, img


def test_next_slice_moves_the_viewer_and_skips_painted(viewer, qtbot, trained_checkpoint,
                                                       member_two):
    widget, img = _predicted_widget(viewer, qtbot, [trained_checkpoint, member_two])
    assert widget.next_button.isEnabled() and widget.next_button.toolTip()
    ranked = [s.slice for s in widget._suggestions]
    assert sorted(ranked) == [0, 1, 2, 3]
    assert widget.next_label.text().startswith(f"Next: slice {ranked[0]} ")

    # the user's painting: slices ranked first and third are painted
    painted = np.zeros(img.data.shape, np.uint8)
    painted[ranked[0], 10:20, 10:20] = 1
    painted[ranked[2], 50, 50] = 2
    user = viewer.add_labels(painted, name="my painting", scale=img.scale, translate=img.translate)
    widget.painted_combo.set_layer(user)
    viewer.dims.set_current_step(0, ranked[3])
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9: viewer.scene.camera
    zoom_before = camera.zoom

    qtbot.mouseClick(widget.next_button, Qt.LeftButton)
    best = widget._suggestions[1]
    assert best.slice == ranked[1]
    assert current_slice(viewer, img) == ranked[1]
    y0, y1, x0, x1 = best.region
    assert (y1 - y0, x1 - x0) == (128, 128)
    centre = img.data_to_world((best.slice, (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2))
    np.testing.assert_allclose(camera.center[-2:], centre[1:], atol=1e-6)
    assert camera.zoom > zoom_before  # zoomed in on the 128-pixel region
    assert f"Slice {ranked[1]}" in widget.next_label.text()

    # clicked again without painting it: the next unpainted slice; then round again
    qtbot.mouseClick(widget.next_button, Qt.LeftButton)
    assert current_slice(viewer, img) == ranked[3]
    qtbot.mouseClick(widget.next_button, Qt.LeftButton)
    assert current_slice(viewer, img) == ranked[1]

    # a slice corrected in the prediction's labels layer counts as painted
    labels = viewer.layers[layer_names(IMAGE)["labels"]]
    labels.data[ranked[3]] = 0
    assert widget.next_suggestion().slice == ranked[1]
    labels.data[ranked[1], :5, :5] = 7
    assert widget.next_suggestion() is None
    qtbot.mouseClick(widget.next_button, Qt.LeftButton)
    assert "nothing left" in widget.next_label.text()


def test_single_model_and_fully_painted_labels(viewer, qtbot, trained_checkpoint):
    from napari_fcres.sample_data import load_sample_stack

    full = (load_sample_stack()[1][6:10, :192, :192] > 0).astype(np.uint8)
    viewer.add_labels(full, name="ground truth")  # opened before the widget: preselected
    widget, img = _predicted_widget(viewer, qtbot, [trained_checkpoint])
    assert widget.painted_combo.layer().name == "ground truth"
    assert widget.next_label.text() == "Every slice is painted"
    widget.painted_combo.set_layer(None)
    best = widget.go_to_next_slice()
    assert best is not None and "entropy only" in best.reason
    assert current_slice(viewer, img) == best.slice
