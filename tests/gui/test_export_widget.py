"""The Export widget: training pairs on disk and fine-tuning on the corrected slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

from napari_fcres.io import read_image
from napari_fcres.widgets._pickers import recent_checkpoints
from napari_fcres.widgets.export import ExportWidget, changed_slices, pair_paths
from napari_fcres.widgets.predict import PredictWidget
from napari_fcres.widgets.train import TrainWidget

pytestmark = pytest.mark.gui

WAIT_MS = 90_000
SCALE = (2.0, 0.5, 0.5)


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.LeftButton)


def make_widget(viewer, folder: Path) -> ExportWidget:
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Export")
    widget.folder_edit.set_path(folder)
    return widget


def paint(labels, z: int, value: int) -> None:
    """A correction as napari's brush would make it (recorded in the layer's history)."""
    rr, cc = np.mgrid[10:20, 30:40]
    labels.data_setitem((np.full(rr.size, z), rr.ravel(), cc.ravel()), value)


def test_helpers(tmp_path):
    a = np.zeros((3, 4, 4), np.int32)
    b = a.copy()
    b[2, 1, 1] = 5
    assert changed_slices(b, a) == [2]
    assert changed_slices(b[2], a[2]) == [0]
    first = pair_paths(tmp_path, "x", ".tif")
    first["labels"].write_bytes(b"")
    assert pair_paths(tmp_path, "x", ".tif")["image"].name == "x-2_image.tif"


def test_export_pair_tiff_and_nifti(viewer, qtbot, em_layers, tmp_path):
    img, labels = em_layers
    img.scale = SCALE
    labels.scale = SCALE
    widget = make_widget(viewer, tmp_path / "pairs")
    kinds = (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit)
    assert not [type(w).__name__ for w in widget.findChildren(kinds) if not w.toolTip()]
    assert widget.image_combo.layer() is img or widget.image_combo.layer().name == img.name
    assert widget.name_edit.text() == "EM_synthetic"
    assert widget.corrected_label.text().startswith("0 of 4")
    paint(labels, 2, 0)
    qtbot.waitUntil(lambda: widget.corrected_label.text().startswith("1 of 4 slices: 2"),
                    timeout=3000)
    assert widget.corrected_slices() == [2]

    widget.labels_mode_combo.setCurrentIndex(1)  # as painted
    with qtbot.waitSignal(widget.exported, timeout=5000):
        click(qtbot, widget.export_button)
    folder = tmp_path / "pairs"
    image_file, labels_file = folder / "EM_synthetic_image.tif", folder / "EM_synthetic_labels.tif"
    np.testing.assert_array_equal(tifffile.imread(image_file), img.data)
    np.testing.assert_array_equal(tifffile.imread(labels_file), labels.data)
    vol = read_image(labels_file)
    np.testing.assert_allclose(vol.spacing, SCALE)
    info = json.loads((folder / "EM_synthetic_export.json").read_text())
    assert info["corrected_slices"] == [2]
    assert info["image"] == image_file.name and info["spacing"] == list(SCALE)

    # again: never overwritten; NIfTI, foreground mask, only the corrected slice
    widget.format_combo.setCurrentIndex(1)
    widget.labels_mode_combo.setCurrentIndex(0)
    widget.corrected_only_check.setChecked(True)
    paths = widget.export()
    assert paths["image"].name == "EM_synthetic-2_image.nii.gz"
    assert image_file.exists() and labels_file.exists()
    vol = read_image(paths["labels"])
    np.testing.assert_array_equal(vol.data, (labels.data[[2]] > 0).astype(np.uint8))
    np.testing.assert_allclose(vol.spacing, SCALE)
    np.testing.assert_array_equal(read_image(paths["image"]).data, img.data[[2]])
    assert json.loads(paths["info"].read_text())["written_slices"] == [2]

    # undoing the correction: nothing corrected any more
    labels.undo()
    qtbot.waitUntil(lambda: widget.corrected_label.text().startswith("0 of 4"), timeout=3000)


def test_fine_tune_on_corrected_slices(viewer, qtbot, em_layers, tiny_checkpoint, tmp_path,
                                       notifications):
    img, _ = em_layers
    # predict with the tiny model: the labels layer remembers checkpoint and reference
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict, name="Predict")
    predict.checkpoint_list.set_checkpoints([tiny_checkpoint])
    predict.device_combo.setCurrentIndex(predict.device_combo.findData("cpu"))
    predict.mode_combo.setCurrentText("binary")
    click(qtbot, predict.stack_button)
    qtbot.waitUntil(lambda: not predict.is_running(), timeout=WAIT_MS)
    labels = viewer.layers["EM (synthetic) predicted labels"]

    # the Train widget as napari opens it from the Plugins menu, kept tiny
    _, train = viewer.window.add_plugin_dock_widget("napari-fcres", "Train / fine-tune")
    assert isinstance(train, TrainWidget)
    train.epochs_spin.setValue(1)
    train.minutes_spin.setValue(0)
    train.crop_spin.setValue(32)
    train.device_combo.setCurrentIndex(train.device_combo.findData("cpu"))
    train.output_edit.set_path(tmp_path / "finetune")

    widget = make_widget(viewer, tmp_path / "pairs")
    widget.labels_combo.set_layer(labels)
    assert widget.image_combo.layer().name == img.name
    click(qtbot, widget.tune_button)  # nothing corrected yet
    assert not train.is_running()
    assert "no slice is corrected" in notifications.messages()[-1]

    for z in (1, 3):  # a real change whatever the tiny model predicted there
        paint(labels, z, 0 if labels.data[z, 10:20, 30:40].mean() > 0.5 else 1)
    labels.data[3, 40:50, 0:64] = 0  # and some background
    labels.refresh()
    assert widget.corrected_slices() == [1, 3]
    with qtbot.waitSignal(widget.fine_tune_started, timeout=5000) as started:
        click(qtbot, widget.tune_button)
    assert started.args[0] is train
    assert train.is_running()
    assert train.checkpoint_edit.path() == str(tiny_checkpoint)
    # the foreground mask goes to the Train widget as data: no hidden "(training)" layer
    assert not [la.name for la in viewer.layers if "(training)" in la.name]
    assert train.labels_combo.layer().name == labels.name
    assert train.label_mode() == "full" and "foreground (1)" in train.annotated_label.text()
    assert "on 2 of 2 slices" in train.annotated_label.text()  # the corrected slices
    with qtbot.waitSignal(train.finished, timeout=WAIT_MS) as done:
        pass
    qtbot.waitUntil(lambda: not train.is_running(), timeout=WAIT_MS)
    best = done.args[0].best_checkpoints
    assert best and Path(best[0]).exists()
    assert Path(best[0]) in recent_checkpoints()
    assert predict.checkpoint_list.checked() == [Path(best[0])]  # ready for the next round
    assert "Fine-tuned model" in widget.status_label.text()
    qtbot.waitUntil(widget.tune_button.isEnabled, timeout=2000)
