"""The whole napari loop on the synthetic stack, as a microscopist drives it.

Partial labels on 3 slices -> train (Stop, Resume) -> inspect -> predict with an ensemble
(disagreement map) -> split a merged cell -> export -> fine-tune from the corrected labels.
Every job runs in a worker process, as in a user's napari.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_fcres.checkpoint import read_checkpoint
from napari_fcres.io import read_image
from napari_fcres.widgets.correct import SPLIT_LAYER_NAME, CorrectWidget
from napari_fcres.widgets.export import ExportWidget
from napari_fcres.widgets.inspect import InspectWidget
from napari_fcres.widgets.predict import PredictWidget
from napari_fcres.widgets.train import TrainWidget

pytestmark = pytest.mark.gui

WAIT_MS = 120_000
IMAGE = "EM (synthetic)"


def press(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=WAIT_MS)


def test_annotate_train_inspect_predict_correct_export_fine_tune(
        viewer, qtbot, em_small, tmp_path, tiny_checkpoint, monkeypatch):
    image, full = em_small
    img = viewer.add_image(image, name=IMAGE)
    painted = np.zeros_like(full)
    for z in (0, 1, 2):  # 1 = background, 2 = foreground, 0 = not annotated
        painted[z] = np.where(full[z] > 0, 2, 1)
    annotations = viewer.add_labels(painted, name="annotations")

    # --- train, stop, resume --------------------------------------------------------------
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train")
    train.image_combo.set_layer(img)
    train.labels_combo.set_layer(annotations)
    assert train.label_mode() == "partial"
    assert "3 of 4" in train.annotated_label.text()
    train.preset_combo.setCurrentText("tiny")
    train.epochs_spin.setValue(3)
    train.minutes_spin.setValue(0)
    train.crop_spin.setValue(32)
    train.device_combo.setCurrentIndex(train.device_combo.findData("cpu"))
    run = tmp_path / "run"
    train.output_edit.set_path(run)
    steps: list[int] = []
    train.progressed.connect(lambda p: steps.append(p.step) if p.kind == "step" else None)
    press(qtbot, train.start_button)
    qtbot.waitUntil(lambda: bool(steps), timeout=WAIT_MS)
    with qtbot.waitSignal(train.finished, timeout=WAIT_MS) as stopped:
        press(qtbot, train.stop_button)
    idle(qtbot, train)
    assert stopped.args[0].stopped
    at_stop = max(steps)
    qtbot.waitUntil(train.resume_button.isEnabled, timeout=5000)
    with qtbot.waitSignal(train.finished, timeout=WAIT_MS) as finished:
        press(qtbot, train.resume_button)
    idle(qtbot, train)
    result = finished.args[0]
    assert not result.stopped and result.best_checkpoints
    trained = result.best_checkpoints[0]
    assert max(steps) > at_stop  # resumed where it stopped, not from step 0

    # 3 painted slices: "auto" trained the plain UNet
    assert read_checkpoint(trained)["architecture"] == "unet"

    # --- inspect: the UNet has no pre-processor, and the widget says so; a pipeline's -------
    inspect = InspectWidget(viewer)
    viewer.window.add_dock_widget(inspect, name="Inspect")
    inspect.image_combo.set_layer(img)
    inspect.checkpoint_combo.set_path(trained)
    inspect.device_combo.setCurrentIndex(inspect.device_combo.findData("cpu"))
    press(qtbot, inspect.show_button)
    idle(qtbot, inspect)
    assert inspect.last_result is None
    assert "no pre-processor output" in inspect.status_label.text()
    assert "'pipeline'" in inspect.status_label.text()
    inspect.checkpoint_combo.set_path(tiny_checkpoint)
    press(qtbot, inspect.show_button)
    idle(qtbot, inspect)
    assert inspect.last_result is not None
    assert inspect.last_result.histograms["normalized"]["background"][0].size > 0
    assert any("normalized" in la.name for la in viewer.layers)

    # --- predict with an ensemble of two: probability, labels, disagreement --------------------
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict, name="Predict")
    predict.image_combo.set_layer(img)
    predict.checkpoint_list.set_checkpoints([trained, tiny_checkpoint])
    predict.device_combo.setCurrentIndex(predict.device_combo.findData("cpu"))
    predict.mode_combo.setCurrentText("instances")
    press(qtbot, predict.stack_button)
    idle(qtbot, predict)
    labels = viewer.layers[f"{IMAGE} predicted labels"]
    disagreement = viewer.layers[f"{IMAGE} disagreement"]
    assert disagreement.data.shape == image.shape and float(np.max(disagreement.data)) > 0

    # --- a merged cell on slice 3 (not trained on), split along a drawn line -----------------
    z = 3
    merged = int(labels.data.max()) + 1
    rows, cols = np.arange(20, 44), np.arange(16, 48)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    labels.data_setitem((np.full(rr.size, z), rr.ravel(), cc.ravel()), merged)
    viewer.dims.set_current_step(0, z)
    correct = CorrectWidget(viewer)
    viewer.window.add_dock_widget(correct, name="Correct")
    correct.labels_combo.set_layer(labels)
    press(qtbot, correct.draw_line_button)
    shapes = viewer.layers[SPLIT_LAYER_NAME]
    shapes.add_paths([np.array([[z, 15.0, 32.0], [z, 49.0, 32.0]])])
    press(qtbot, correct.split_button)
    corrected = labels.data[z]
    seam = (rr[:, 0], np.full(len(rows), 32))
    assert (corrected[seam] == 0).all(), "the split leaves a background seam along the cut"
    left, right = corrected[30, 20], corrected[30, 44]
    assert left > 0 and right > 0 and left != right

    # --- export: the seam is background in the exported training labels ----------------------
    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export, name="Export")
    export.image_combo.set_layer(img)
    export.labels_combo.set_layer(labels)
    assert z in export.corrected_slices()
    paths = export.export(tmp_path / "pairs")
    exported = np.asarray(read_image(paths["labels"]).data)
    if exported.ndim == 3 and exported.shape[0] == image.shape[0]:
        exported = exported[z]
    elif exported.ndim == 3:
        exported = exported[export.corrected_slices().index(z)]
    assert (exported[seam] == 0).all()
    assert exported[30, 20] > 0 and exported[30, 44] > 0

    # --- fine-tune from the corrected labels, starting at the model that predicted -----------
    calls: list[dict] = []
    real_train_on = TrainWidget.train_on

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real_train_on(self, *args, **kwargs)

    monkeypatch.setattr(TrainWidget, "train_on", spy)
    with qtbot.waitSignal(train.finished, timeout=WAIT_MS) as tuned:
        press(qtbot, export.tune_button)
    idle(qtbot, train)
    assert calls and calls[0]["init_checkpoint"] == str(trained)
    assert z in list(calls[0]["slices"])
    sent = np.asarray(calls[0]["labels_data"])[z]
    assert (sent[seam] == 0).all() and sent[30, 20] > 0  # the seam reaches the training data
    assert not tuned.args[0].stopped and tuned.args[0].best_checkpoints
