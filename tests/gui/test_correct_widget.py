"""The Correct widget: every operation is one step of the labels layer's undo history."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QSlider

from napari_fcres.postprocess import labels_from_probabilities
from napari_fcres.widgets.correct import SPLIT_LAYER_NAME, CorrectWidget

pytestmark = pytest.mark.gui

SHAPE = (3, 64, 64)
CENTERS = ((20, 20), (44, 46))


def blobs() -> np.ndarray:
    """Probabilities of two Gaussian blobs per slice (1 at the centre, 0.5 at radius ~9)."""
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    plane = np.zeros(SHAPE[1:], dtype=np.float32)
    for (cy, cx), sigma in zip(CENTERS, (8.0, 6.0), strict=True):
        plane = np.maximum(plane, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return np.repeat(plane[None], SHAPE[0], axis=0).astype(np.float32)


@pytest.fixture
def layers(viewer):
    prob = blobs()
    labels = labels_from_probabilities(prob, 0.5, "instances")
    p = viewer.add_image(prob, name="img probability", scale=(1.0, 0.5, 0.5))
    lab = viewer.add_labels(labels, name="img labels", scale=(1.0, 0.5, 0.5))
    return p, lab


@pytest.fixture
def widget(viewer, layers) -> CorrectWidget:
    w = CorrectWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correct")
    return w


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def check_one_step(labels, before: np.ndarray) -> np.ndarray:
    """Undo restores ``before`` in ONE step, redo re-applies; return the corrected data."""
    after = labels.data.copy()
    assert not np.array_equal(after, before), "the operation changed nothing"
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()
    np.testing.assert_array_equal(labels.data, after)
    return after


def set_scope(widget: CorrectWidget, scope: str) -> None:
    widget.scope_combo.setCurrentText(scope)


def n_objects(mask: np.ndarray) -> int:
    """8-connected objects of a 2-D mask."""
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3)))[1])


def test_layers_and_tooltips(viewer, widget, layers):
    prob, labels = layers
    viewer.add_image(np.zeros(SHAPE, np.float32), name="other image")  # top-most image
    assert widget.labels_combo.layer().name == "img labels"
    assert widget.prob_combo.layer().name == "img probability"
    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QSlider)
    missing = [type(w).__name__ for w in widget.findChildren(kinds) if not w.toolTip()]
    assert not missing
    assert widget.scope_combo.isEnabled()


def test_threshold_slider_is_live_and_one_undo_step(viewer, qtbot, widget, layers):
    prob, labels = layers
    original = labels.data.copy()
    viewer.dims.set_current_step(0, 1)
    slider = widget.threshold_slider
    # dragging: live preview of the shown slice, nothing recorded yet
    slider.setSliderDown(True)
    slider.setValue(40)
    qtbot.waitUntil(lambda: (labels.data[1] > 0).sum() > (original[1] > 0).sum(), timeout=2000)
    slider.setValue(30)
    qtbot.wait(100)
    slider.setSliderDown(False)  # release: one undoable step
    qtbot.wait(50)
    expected = labels_from_probabilities(prob.data[1], 0.3, "instances")
    np.testing.assert_array_equal(labels.data[1] > 0, expected > 0)
    np.testing.assert_array_equal(labels.data[[0, 2]], original[[0, 2]])
    # instance ids of the slice stay unique in the stack
    assert not (set(np.unique(labels.data[1])) - {0}) & set(np.unique(original[[0, 2]]))
    assert widget.threshold_spin.value() == pytest.approx(0.3)
    thresholded = check_one_step(labels, original)

    # keyboard / spin box: recorded shortly after the last change, whole stack scope
    set_scope(widget, "whole stack")
    widget.threshold_spin.setValue(0.7)
    qtbot.waitUntil(lambda: "Threshold 0.70" in widget.status_label.text(), timeout=3000)
    np.testing.assert_array_equal(
        labels.data, labels_from_probabilities(prob.data, 0.7, "instances"))
    check_one_step(labels, thresholded)
    labels.undo()
    labels.undo()
    np.testing.assert_array_equal(labels.data, original)


def test_remove_small_and_fill_holes(viewer, qtbot, widget, layers):
    _, labels = layers
    data = labels.data
    data[1, 2:5, 2:5] = 9  # a 9-pixel speck on slice 1
    data[2, 2:5, 2:5] = 9  # and one on slice 2
    data[1, 19:22, 19:22] = 0  # a hole inside the first blob
    labels.refresh()
    start = labels.data.copy()
    viewer.dims.set_current_step(0, 1)
    widget.min_size_spin.setValue(20)
    click(qtbot, widget.remove_small_button)
    assert not (labels.data[1] == 9).any() and (labels.data[2] == 9).any()  # slice scope
    no_speck = check_one_step(labels, start)
    hole_label = int(start[1, 18, 20])
    click(qtbot, widget.fill_button)
    assert (labels.data[1, 19:22, 19:22] == hole_label).all()
    filled = check_one_step(labels, no_speck)
    set_scope(widget, "whole stack")
    click(qtbot, widget.remove_small_button)
    assert not (labels.data == 9).any()
    check_one_step(labels, filled)
    for _ in range(3):
        labels.undo()
    np.testing.assert_array_equal(labels.data, start)


def test_largest_relabel_and_merge(viewer, qtbot, widget, layers, notifications):
    _, labels = layers
    start = labels.data.copy()
    ids = sorted(set(np.unique(start[0])) - {0})
    assert len(ids) == 2
    set_scope(widget, "whole stack")
    click(qtbot, widget.largest_button)
    kept = set(np.unique(labels.data)) - {0}
    assert len(kept) == 3 and int(start[0, 20, 20]) in kept  # the bigger blob, every slice
    after_largest = check_one_step(labels, start)

    # binary slice 2, relabelled as instances on the current slice
    labels.undo()
    viewer.dims.set_current_step(0, 2)
    set_scope(widget, "current slice")
    labels.data_setitem(np.nonzero(labels.data > 0), 1)  # like a binary prediction
    binary = labels.data.copy()
    click(qtbot, widget.relabel_button)
    new_ids = set(np.unique(labels.data[2])) - {0}
    assert len(new_ids) == 2
    assert not new_ids & (set(np.unique(labels.data[[0, 1]])) - {0})
    relabelled = check_one_step(labels, binary)
    assert not np.array_equal(relabelled, after_largest)

    a, b = sorted(new_ids)
    widget.merge_a_spin.setValue(a)
    widget.merge_b_spin.setValue(b)
    click(qtbot, widget.merge_button)
    assert set(np.unique(labels.data[2])) == {0, a}
    merged = check_one_step(labels, relabelled)

    widget.merge_b_spin.setValue(12345)  # not there: an error, nothing changes
    click(qtbot, widget.merge_button)
    assert notifications.errors()
    np.testing.assert_array_equal(labels.data, merged)
    # the whole message is in the status line (a toast shows only its first words)
    assert widget.status_label.text() == "Correction failed: label 12345 is not in the labels"


def test_split_along_drawn_line(viewer, qtbot, widget, layers):
    _, labels = layers
    start = labels.data.copy()
    viewer.dims.set_current_step(0, 1)
    click(qtbot, widget.draw_line_button)
    shapes = viewer.layers[SPLIT_LAYER_NAME]
    assert viewer.layers.selection.active is shapes or shapes in viewer.layers.selection
    assert shapes.mode == "add_path"
    np.testing.assert_allclose(shapes.scale, labels.scale)
    # a vertical cut through the first blob on slice 1 (and an older line on slice 0)
    shapes.add_paths([np.array([[0, 5.0, 30.0], [0, 35.0, 30.0]]),
                      np.array([[1, 5.0, 20.0], [1, 35.0, 20.0]])])
    target = int(start[1, 20, 20])
    click(qtbot, widget.split_button)
    after = labels.data
    assert (after[1, 20, 14] == target) != (after[1, 20, 26] == target)
    new_id = int(max(after[1, 20, 14], after[1, 20, 26]))
    assert new_id > start.max()  # unique in the whole stack
    # a background seam along the cut: the foreground mask (what fine-tuning learns from)
    # shows two objects where there was one
    blob = start[1] == target
    assert (after[1][blob[:, 20], 20] == 0).all() and (after[1][:, 19][blob[:, 19]] > 0).all()
    assert n_objects(after[1] > 0) == n_objects(start[1] > 0) + 1
    assert "seam" in widget.status_label.text()
    # the message counts what changed: the seam became background, the cut-off piece a new id
    to_background = int(((start[1] > 0) & (after[1] == 0)).sum())
    new_ids = int(((start[1] > 0) & (after[1] > 0) & (after[1] != start[1])).sum())
    assert f"{to_background} pixels set to background" in widget.status_label.text()
    assert f"{new_ids} pixels got another id" in widget.status_label.text()
    np.testing.assert_array_equal(after[[0, 2]], start[[0, 2]])
    assert len(shapes.data) == 1  # the used line is gone, the other slice's line stays
    check_one_step(labels, start)

    # no line on the shown slice: an error, labels unchanged
    viewer.dims.set_current_step(0, 2)
    before = labels.data.copy()
    click(qtbot, widget.split_button)
    np.testing.assert_array_equal(labels.data, before)


def test_napari_painting_and_operations_share_one_history(viewer, qtbot, widget, layers):
    _, labels = layers
    start = labels.data.copy()
    viewer.dims.set_current_step(0, 0)
    labels.brush_size = 3
    labels.paint((0, 60, 4), 42)  # napari's own brush
    painted = labels.data.copy()
    assert (painted[0] == 42).sum() < 20
    widget.min_size_spin.setValue(20)
    click(qtbot, widget.remove_small_button)  # removes the small stroke
    assert not (labels.data == 42).any()
    labels.undo()
    np.testing.assert_array_equal(labels.data, painted)
    labels.undo()
    np.testing.assert_array_equal(labels.data, start)


def test_2d_labels(viewer, qtbot):
    prob = blobs()[0]
    labels = viewer.add_labels(labels_from_probabilities(prob, 0.5, "instances"), name="p labels")
    viewer.add_image(prob, name="p probability")
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct")
    widget.labels_combo.set_layer(labels)
    assert widget.prob_combo.layer().name == "p probability"
    assert not widget.scope_combo.isEnabled()
    start = labels.data.copy()
    widget.threshold_spin.setValue(0.8)
    widget.commit_threshold()
    np.testing.assert_array_equal(labels.data > 0, prob > 0.8)
    check_one_step(labels, start)
    shrunk = labels.data.copy()
    widget.draw_split_line().add_paths([np.array([[5.0, 20.0], [35.0, 20.0]])])
    click(qtbot, widget.split_button)
    assert len(set(np.unique(labels.data)) - {0}) == 3
    check_one_step(labels, shrunk)
    assert SPLIT_LAYER_NAME not in viewer.layers  # its only line was used: the layer is gone


def test_merge_after_split_restores_one_object(viewer, qtbot, widget, layers):
    """Split leaves a seam, merge fills it: both corrections reach the foreground mask."""
    _, labels = layers
    start = labels.data.copy()
    viewer.dims.set_current_step(0, 0)
    target = int(start[0, 20, 20])
    widget.draw_split_line().add_paths([np.array([[0, 5.0, 20.0], [0, 35.0, 20.0]])])
    click(qtbot, widget.split_button)
    split = labels.data.copy()
    assert n_objects(split[0] > 0) == n_objects(start[0] > 0) + 1
    new_id = int(split[0][(split[0] != target) & (start[0] == target)].max())
    widget.merge_a_spin.setValue(target)
    widget.merge_b_spin.setValue(new_id)
    assert widget.merge_gap_spin.value() >= 2
    click(qtbot, widget.merge_button)
    seam = (split[0] == 0) & (start[0] == target)
    assert (labels.data[0][seam] == target).all()  # the seam is filled
    assert n_objects(labels.data[0] > 0) == n_objects(start[0] > 0)
    assert ((labels.data[0] > 0) != (start[0] > 0)).sum() <= 6  # nothing much beyond it
    assert set(np.unique(labels.data[0])) == set(np.unique(start[0]))
    check_one_step(labels, split)
    # "keep gap": only the ids change
    labels.undo()
    widget.merge_gap_spin.setValue(0)
    assert widget.merge_gap_spin.text() == "keep gap"
    click(qtbot, widget.merge_button)
    np.testing.assert_array_equal(labels.data[0] > 0, split[0] > 0)


def test_hidden_labels_layer_corrects_the_shown_slice(viewer, qtbot, widget, layers,
                                                      notifications):
    """Split and merge with the labels layer hidden and the slider moved (issue 10, 5.3)."""
    _, labels = layers
    labels.visible = False
    viewer.dims.set_current_step(0, 2)  # napari does not re-slice the hidden layer
    start = labels.data.copy()
    target = int(start[2, 20, 20])
    widget.draw_split_line().add_paths([np.array([[2, 5.0, 20.0], [2, 35.0, 20.0]])])
    viewer.layers.selection.active = labels
    click(qtbot, widget.split_button)
    assert not notifications.errors(), [str(n.message) for n in notifications.errors()]
    assert len(set(np.unique(labels.data[2])) - {0}) == 3  # the cut blob and the other one
    np.testing.assert_array_equal(labels.data[[0, 1]], start[[0, 1]])
    split = check_one_step(labels, start)

    new_id = int(split[2].max())
    widget.merge_a_spin.setValue(target)
    widget.merge_b_spin.setValue(new_id)
    click(qtbot, widget.merge_button)
    assert not notifications.errors(), [str(n.message) for n in notifications.errors()]
    assert set(np.unique(labels.data[2])) == set(np.unique(start[2]))
    np.testing.assert_array_equal(labels.data[[0, 1]], start[[0, 1]])
    check_one_step(labels, split)
    assert "Correction failed" not in widget.status_label.text()
    labels.visible = True  # shows the corrected slice
    qtbot.wait(10)
