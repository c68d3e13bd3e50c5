"""The Predict widget driven like a user: checkpoints, Predict slice / stack, ensembles, Stop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QListWidget,
)

from napari_fcres.postprocess import labels_from_probabilities
from napari_fcres.widgets._pickers import remember_checkpoints
from napari_fcres.widgets.predict import PredictWidget, layer_names

pytestmark = pytest.mark.gui

WAIT_MS = 60_000
IMAGE = "EM (synthetic)"


@pytest.fixture(scope="module")
def second(tmp_path_factory, train_tiny) -> Path:
    """Another tiny model (other seed, fewer epochs): the second member of an ensemble."""
    return train_tiny(tmp_path_factory.mktemp("second"), epochs=8, seed=7)


def make_widget(viewer, checkpoints) -> PredictWidget:
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict")
    widget.checkpoint_list.set_checkpoints(checkpoints)
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.tile_spin.setValue(128)
    return widget


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def wait_done(qtbot, widget: PredictWidget) -> None:
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)
    qtbot.wait(10)


def assert_usable(widget: PredictWidget) -> None:
    assert not widget.is_running()
    assert widget.stack_button.isEnabled() and widget.slice_button.isEnabled()
    assert not widget.stop_button.isEnabled()


def test_every_control_has_a_tooltip(viewer, em_layers, trained_checkpoint):
    widget = make_widget(viewer, [trained_checkpoint])
    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QListWidget)
    controls = [w for w in widget.findChildren(kinds) if w.parent() is not None]
    assert len(controls) >= 9
    missing = [type(w).__name__ + ":" + getattr(w, "text", lambda: "")()
               for w in controls if not w.toolTip()]
    assert not missing


def test_predict_stack_adds_layers(viewer, qtbot, em_layers, trained_checkpoint):
    img, _ = em_layers
    img.scale = (2.0, 0.5, 0.5)
    img.translate = (0.0, 3.0, 4.0)
    widget = make_widget(viewer, [trained_checkpoint])
    assert widget.image_combo.layer().name == IMAGE
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as blocker:
        click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    assert_usable(widget)
    names = layer_names(IMAGE)
    assert blocker.args[0]["layers"] == {k: names[k] for k in
                                         ("normalized", "probability", "labels")}
    prob = viewer.layers[names["probability"]]
    assert prob.data.shape == img.data.shape and prob.data.dtype == np.float32
    assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0
    assert prob.colormap.name == "magma"
    assert tuple(prob.contrast_limits) == (0.0, 1.0)
    norm = viewer.layers[names["normalized"]]
    assert norm.data.shape == img.data.shape and np.ptp(norm.data) > 0
    labels = viewer.layers[names["labels"]]
    assert labels.data.shape == img.data.shape
    assert np.issubdtype(labels.data.dtype, np.integer)
    for layer in (prob, norm, labels):
        np.testing.assert_allclose(layer.scale, img.scale)
        np.testing.assert_allclose(layer.translate, img.translate)
    # instance labels of the thresholded probabilities, unique over the stack
    np.testing.assert_array_equal(
        labels.data, labels_from_probabilities(prob.data, 0.5, "instances"))
    assert labels.data.max() > 4
    assert names["disagreement"] not in viewer.layers
    meta = labels.metadata["fcres"]
    assert meta["checkpoints"] == [str(trained_checkpoint)]
    np.testing.assert_array_equal(meta["reference"], labels.data)

    # binary mode, predicted again: the labels layer is updated in place, undoably
    before = labels.data.copy()
    widget.mode_combo.setCurrentText("binary")
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    assert viewer.layers[names["labels"]] is labels or labels in viewer.layers
    assert set(np.unique(labels.data)) <= {0, 1}
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()
    assert set(np.unique(labels.data)) <= {0, 1}


def test_predict_current_slice(viewer, qtbot, em_layers, trained_checkpoint):
    img, _ = em_layers
    widget = make_widget(viewer, [trained_checkpoint])
    viewer.dims.set_current_step(0, 2)
    click(qtbot, widget.slice_button)
    wait_done(qtbot, widget)
    names = layer_names(IMAGE)
    prob = viewer.layers[names["probability"]].data
    labels = viewer.layers[names["labels"]]
    assert prob.shape == img.data.shape
    assert prob[2].max() > 0 and not prob[[0, 1, 3]].any()
    assert labels.data[2].any() and not labels.data[[0, 1, 3]].any()

    # a full prediction, a correction on slice 1, then a slice preview of the unedited
    # slice 2: written in place as one undoable step, the correction stays
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    labels.data_setitem((np.array([1]), np.array([5]), np.array([5])), 99)  # a correction
    corrected = labels.data.copy()
    viewer.dims.set_current_step(0, 2)
    click(qtbot, widget.slice_button)
    wait_done(qtbot, widget)
    ours = [la.name for la in viewer.layers
            if la.metadata.get("fcres_result", {}).get("kind") == "labels"]
    assert ours == [labels.name]
    after = labels.data.copy()
    np.testing.assert_array_equal(after[[0, 1, 3]], corrected[[0, 1, 3]])
    assert after[1, 5, 5] == 99
    # new ids of the previewed slice do not clash with the other slices
    other_ids = set(np.unique(after[[0, 1, 3]])) - {0}
    assert not (set(np.unique(after[2])) - {0}) & other_ids
    labels.undo()
    np.testing.assert_array_equal(labels.data, corrected)
    labels.redo()
    np.testing.assert_array_equal(labels.data, after)
    # the reference for the Export widget follows the preview of slice 2
    np.testing.assert_array_equal(labels.metadata["fcres"]["reference"][2], after[2])


def test_prediction_never_overwrites_corrections(viewer, qtbot, em_layers, trained_checkpoint,
                                                 notifications):
    widget = make_widget(viewer, [trained_checkpoint])
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    names = layer_names(IMAGE)
    labels = viewer.layers[names["labels"]]
    labels.data_setitem((np.array([1]), np.array([5]), np.array([5])), 99)  # a correction
    corrected = labels.data.copy()

    # predicting the corrected slice again: a new layer, the corrected one untouched
    viewer.dims.set_current_step(0, 1)
    with qtbot.waitSignal(widget.finished, timeout=WAIT_MS) as sig:
        click(qtbot, widget.slice_button)
    wait_done(qtbot, widget)
    np.testing.assert_array_equal(labels.data, corrected)
    assert "fcres_result" not in labels.metadata  # no prediction targets it any more
    # Export still knows
    assert labels.metadata["fcres"]["checkpoints"] == [str(trained_checkpoint)]
    new = viewer.layers[sig.args[0]["layers"]["labels"]]
    assert new.name != labels.name and new.metadata["fcres_result"]["kind"] == "labels"
    assert new.data[1].any() and not new.data[[0, 2, 3]].any()
    assert f"corrections in {names['labels']!r} are kept" in widget.status_label.text()
    assert new.visible and not labels.visible  # the corrections are kept, hidden
    assert any("are kept" in m for m in notifications.messages())

    # the whole stack: into the new (unedited) layer, in place
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    assert sig.args[0]["layers"]["labels"] == new.name and new.data[[0, 2]].any()
    np.testing.assert_array_equal(labels.data, corrected)
    assert len([la for la in viewer.layers if la.metadata.get("fcres_result", {}).get("kind")
                == "labels"]) == 1


def test_closing_the_dock_stops_and_drops_the_prediction(viewer, qtbot, em_layers,
                                                         trained_checkpoint, monkeypatch):
    import threading
    import time

    import napari_fcres.widgets.predict as predict_module

    widget = make_widget(viewer, [trained_checkpoint])
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    labels = viewer.layers[layer_names(IMAGE)["labels"]]
    labels.data_setitem((np.array([2]), np.array([5]), np.array([5])), 99)  # a correction
    corrected = labels.data.copy()
    layers_before = [la.name for la in viewer.layers]

    # a prediction that does not notice Stop and finishes after the dock closed (the race
    # of the issue: it came back 10 s later and overwrote the corrected layer)
    real_job = predict_module.predict_job

    def slow_job(*args, **kwargs):
        time.sleep(1.0)
        kwargs["stop"] = threading.Event()  # ignores the stop request
        return real_job(*args, **kwargs)

    monkeypatch.setenv("NAPARI_FCRES_WORKER", "thread")  # the patch lives in this process
    monkeypatch.setattr(predict_module, "predict_job", slow_job)
    with qtbot.waitSignal(widget.stopped, timeout=WAIT_MS):
        click(qtbot, widget.stack_button)
        assert widget.is_running()
        viewer.window.remove_dock_widget("all")  # the dock's close button does this
    wait_done(qtbot, widget)
    np.testing.assert_array_equal(labels.data, corrected)
    assert [la.name for la in viewer.layers] == layers_before
    assert "stopped" in widget.status_label.text()


def test_ensemble_adds_disagreement(viewer, qtbot, em_layers, trained_checkpoint, second):
    img, sample_labels = em_layers
    widget = make_widget(viewer, [trained_checkpoint, second])
    assert widget.checkpoint_list.checked() == [trained_checkpoint, second]
    assert widget.tta_check.isChecked()  # test-time augmentation is the default
    widget.tta_check.setChecked(False)
    widget.tta_check.setChecked(True)
    # the cost is said before it starts
    assert "about 8x the time of a plain prediction" in widget.status_label.text()
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    names = layer_names(IMAGE)
    # only the predicted labels are visible: no two label colourings or maps mix
    visible = [la.name for la in viewer.layers if la.visible]
    assert visible == [IMAGE, names["labels"]], visible
    assert f"hidden so that label colours do not mix: {sample_labels.name!r}" in \
        widget.status_label.text()
    # the next TTA prediction's cost comes from this one
    widget.tta_check.setChecked(False)
    widget.tta_check.setChecked(True)
    assert "expect about" in widget.status_label.text()
    spread = viewer.layers[names["disagreement"]]
    assert spread.data.shape == img.data.shape and spread.data.dtype == np.float32
    assert spread.data.max() > 0
    assert spread.colormap.name == "inferno"
    np.testing.assert_allclose(spread.scale, img.scale)
    meta = viewer.layers[names["labels"]].metadata["fcres"]
    assert meta["checkpoints"] == [str(trained_checkpoint), str(second)]


def test_stop_during_stack_prediction(viewer, qtbot, trained_checkpoint, notifications):
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (24, 256, 256), dtype=np.uint8), name="big")
    widget = make_widget(viewer, [trained_checkpoint])
    widget.tta_check.setChecked(True)
    with qtbot.waitSignal(widget.stopped, timeout=WAIT_MS):
        click(qtbot, widget.stack_button)
        assert widget.is_running()
        click(qtbot, widget.stop_button)
    wait_done(qtbot, widget)
    assert_usable(widget)
    assert "big probability" not in viewer.layers
    assert "stopped" in widget.status_label.text()
    assert not notifications.errors()
    # usable again: a slice preview works
    viewer.dims.set_current_step(0, 5)
    widget.tta_check.setChecked(False)
    click(qtbot, widget.slice_button)
    wait_done(qtbot, widget)
    assert viewer.layers["big probability"].data[5].any()


def test_bad_checkpoint_is_reported(viewer, qtbot, em_layers, tmp_path, notifications):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    widget = make_widget(viewer, [bad])
    click(qtbot, widget.stack_button)
    wait_done(qtbot, widget)
    assert_usable(widget)
    errors = notifications.errors()
    assert errors and "not a readable checkpoint" in str(errors[-1].message)
    assert f"{IMAGE} probability" not in viewer.layers


def test_checkpoint_list_follows_training(viewer, qtbot, em_layers, trained_checkpoint, second):
    remember_checkpoints([second])
    widget = PredictWidget(viewer)
    assert widget.checkpoint_list.checked() == [second]
    remember_checkpoints([trained_checkpoint])  # a newer run: ticked, the older one unticked
    assert widget.checkpoint_list.checked() == [trained_checkpoint]
    assert set(widget.checkpoint_list.paths()) == {trained_checkpoint, second}
    widget.checkpoint_list.list.item(0).setSelected(True)
    click(qtbot, widget.checkpoint_list.remove_button)
    assert widget.checkpoint_list.paths() == [second]
    assert not widget.stack_button.isEnabled()  # nothing ticked
    found = widget.checkpoint_list.add_folder(trained_checkpoint.parent.parent)
    assert found == [trained_checkpoint]
    assert widget.stack_button.isEnabled()
    widget.deleteLater()


def test_predict_2d_image(viewer, qtbot, em_small, trained_checkpoint):
    image = em_small[0][1]
    layer = viewer.add_image(image, name="plane", scale=(0.5, 0.5))
    widget = make_widget(viewer, [trained_checkpoint])
    widget.image_combo.set_layer(layer)
    click(qtbot, widget.slice_button)  # a 2-D image: the whole image
    wait_done(qtbot, widget)
    labels = viewer.layers["plane predicted labels"]
    assert labels.data.shape == image.shape and labels.data.any()
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))


def test_opened_after_a_prediction_picks_the_source_image(viewer, em_layers):
    img, _ = em_layers
    viewer.add_image(np.zeros(img.data.shape, np.float32), name=f"{IMAGE} probability")
    widget = PredictWidget(viewer)
    assert widget.image_combo.layer().name == IMAGE
    widget.deleteLater()


def test_a_users_layer_with_the_same_name_is_kept(viewer, qtbot, em_layers, trained_checkpoint):
    img, _ = em_layers
    mine = viewer.add_labels(np.ones((2, 8, 8), np.uint8), name=layer_names(IMAGE)["labels"])
    widget = make_widget(viewer, [trained_checkpoint])
    widget.image_combo.set_layer(img)
    for _ in range(2):
        click(qtbot, widget.stack_button)
        wait_done(qtbot, widget)
    assert mine in viewer.layers and mine.data.shape == (2, 8, 8) and mine.data.all()
    ours = [la for la in viewer.layers if la.metadata.get("fcres_result", {}).get("kind")
            == "labels"]
    assert len(ours) == 1 and ours[0].data.shape == img.data.shape
