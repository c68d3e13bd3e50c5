"""The Train widget says what each label value means, refuses useless labels, and reports a
model that learned nothing as a warning (issue 10, items 3, 4 and 6)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.widgets.train import TrainWidget

pytestmark = pytest.mark.gui

WAIT_MS = 90_000


def choose_mode(widget: TrainWidget, mode: str) -> None:
    """Pick a label mode as a user does (the combo's ``activated`` signal)."""
    index = widget.label_mode_combo.findData(mode)
    widget.label_mode_combo.setCurrentIndex(index)
    widget.label_mode_combo.activated.emit(index)


def isbi_like(labels01: np.ndarray, labelled: int) -> np.ndarray:
    """ISBI convention (255 cell, 0 membrane) on the first ``labelled`` slices, 0 elsewhere."""
    out = np.where(labels01 > 0, 255, 0).astype(np.uint8)
    out[labelled:] = 0
    return out


def test_isbi_labels_on_some_slices(viewer, qtbot, em_layers, tmp_path, notifications,
                                    make_train_widget, click):
    """0 = membrane must stay a class: never auto-partial, partial refused, slices-only works."""
    img, lab = em_layers
    viewer.add_labels(isbi_like(lab.data, 2), name="isbi")
    widget = make_train_widget(tmp_path, epochs=1)
    widget.labels_combo.set_layer("isbi")
    # full labels, not partial: 0 keeps its meaning (background); the empty slices are flagged
    assert widget.label_mode() == "full"
    text = widget.annotated_label.text()
    assert "background (0)" in text and "foreground (255)" in text
    assert "2 of 4 slices hold only 0" in text and "labelled slices only" in text

    # partial annotation would ignore every membrane pixel: shown, and Start refuses
    choose_mode(widget, "partial")
    text = widget.annotated_label.text()
    assert "unlabeled (0)" in text and "background (1) 0%" in text
    assert "no pixel is background" in text
    click(widget.start_button)
    assert not widget.is_running()
    status = widget.status_label.text()
    assert status.startswith("Cannot start training: no pixel is background")
    assert "choose full labels on the labelled slices only" in status  # whole, not cut
    assert any("no pixel is background" in m for m in notifications.messages())

    # the choice sticks while painting goes on; 'labelled slices only' trains on 2 slices
    choose_mode(widget, "slices")
    text = widget.annotated_label.text()
    assert "on 2 of 4 slices" in text and "background (0)" in text
    assert "✖" not in text
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS):
        click(widget.start_button)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    best = read_checkpoint(tmp_path / "run" / "member_00" / "best.pt")
    assert sorted(set(best["split"]["train"] + best["split"]["val"])) == [0, 1]


def test_counts_follow_painting_and_warn_on_slices_without_background(viewer, qtbot,
                                                                      em_layers, tmp_path,
                                                                      make_train_widget):
    img, _ = em_layers
    painted = np.zeros(img.data.shape, np.uint8)
    painted[0, :8] = 1
    painted[0, 20:40] = 2
    layer = viewer.add_labels(painted, name="painted")
    widget = make_train_widget(tmp_path, epochs=1)
    widget.labels_combo.set_layer(layer)
    assert widget.label_mode() == "partial"
    assert "on 1 of 4 slices" in widget.annotated_label.text()
    assert "⚠" not in widget.annotated_label.text()
    # paint foreground only on slice 2 (napari's brush records it like data_setitem)
    rr, cc = np.mgrid[10:30, 10:30]
    layer.data_setitem((np.full(rr.size, 2), rr.ravel(), cc.ravel()), 2)
    qtbot.waitUntil(lambda: "on 2 of 4 slices" in widget.annotated_label.text(), timeout=3000)
    assert "1 annotated slice (2) holds no background" in widget.annotated_label.text()
    assert widget.summary.no_background == [2] and widget.summary.ok


def test_model_that_learned_nothing_is_a_warning(viewer, qtbot, em_layers, tmp_path,
                                                 notifications, make_train_widget, click):
    widget = make_train_widget(tmp_path, epochs=1)
    widget.lr_spin.setValue(widget.lr_spin.minimum())  # one epoch at 1e-5: learns nothing
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        click(widget.start_button)
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    result = sig.args[0]
    assert result.warnings and "did not learn" in result.warnings[0]
    status = widget.status_label.text()
    assert status.startswith("Training finished, but the model did not learn")
    assert result.warnings[0] in status  # in full, with what to do
    assert "which is background" in status and "best validation Dice" in status
    assert widget.status_label.maximumHeight() > 1000  # grows to show the whole message
    warnings = [n for n in notifications.all() if str(n.severity).lower() == "warning"]
    assert any("did not learn" in str(n.message) for n in warnings)
    assert not any(str(n.message).startswith("Training finished:") for n in notifications.all())


def test_rgb_image_is_reported_as_rgb(viewer, qtbot, em_small, tmp_path, notifications,
                                      make_train_widget, click):
    image, labels = em_small
    viewer.add_image(np.stack([image[0]] * 3, axis=-1), name="colour", rgb=True)
    viewer.add_labels(labels[0].copy(), name="plane labels")
    widget = make_train_widget(tmp_path, epochs=1)
    assert widget.status_label.text() == "Ready"
    click(widget.start_button)
    assert not widget.is_running()
    status = widget.status_label.text()
    assert "RGB" in status and "shape" not in status
    assert status.startswith("Cannot start training: image 'colour' is an RGB")
    assert any("RGB" in m for m in notifications.messages())
