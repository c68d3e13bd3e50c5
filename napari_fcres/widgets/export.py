"""Export and retrain dock widget: close the human-in-the-loop cycle.

Saves the corrected labels and the image as a training pair (compressed TIFF or NIfTI, the
layer scale as voxel spacing) next to a JSON note of the corrected slices, and fine-tunes the
model that made the prediction on the corrected slices through the Train widget.

Corrected slices are the slices whose labels differ from a reference: the labels as the
Predict widget made them (kept in ``layer.metadata["fcres"]["reference"]``) or, for a labels
layer that did not come from a prediction, the labels when this widget first saw the layer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..errors import FcresError, InputError
from ..io import safe_name
from ._docks import open_dock_widget, tab_with_other_docks
from ._forms import LayerCombo, PathEdit, scroll_body
from ._layers import METADATA_KEY, edit_events, layer_data, prefer_source_image
from ._notify import report, report_error

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

TRAIN_WIDGET_NAME = "Train / fine-tune"
FORMATS = {"TIFF (.tif)": ".tif", "NIfTI (.nii.gz)": ".nii.gz"}
LABEL_MODES = {
    "foreground (label > 0 → 1)": "foreground",
    "as painted": "as-is",
}
#: Recount corrected slices this long after the last edit.
RECOUNT_MS = 300


def default_export_dir() -> Path:
    """``~/napari-fcres/training-pairs`` (created on export)."""
    return Path.home() / "napari-fcres" / "training-pairs"


def pair_paths(folder: Path, name: str, ext: str) -> dict[str, Path]:
    """``{image, labels, info}`` paths that do not exist yet (``name``, ``name-2``, ...)."""
    n = 1
    while True:
        stem = name if n == 1 else f"{name}-{n}"
        paths = {
            "image": folder / f"{stem}_image{ext}",
            "labels": folder / f"{stem}_labels{ext}",
            "info": folder / f"{stem}_export.json",
        }
        if not any(p.exists() for p in paths.values()):
            return paths
        n += 1


def changed_slices(labels: np.ndarray, reference: np.ndarray) -> list[int]:
    """Indices along the first axis where ``labels`` differ from ``reference`` ([0] in 2-D)."""
    if labels.shape != reference.shape:
        raise InputError(
            f"labels shape {labels.shape} differs from the reference {reference.shape}"
        )
    if labels.ndim == 2:
        return [0] if not np.array_equal(labels, reference) else []
    diff = (labels != reference).reshape(labels.shape[0], -1).any(axis=1)
    return [int(i) for i in np.flatnonzero(diff)]


class ExportWidget(QWidget):
    """Export corrected labels as a training pair and fine-tune on the corrected slices.

    Public API: :meth:`corrected_slices`, :meth:`export`, :meth:`fine_tune`,
    :meth:`mark_reference`; attribute ``train_widget`` (the Train widget used last); signals
    ``exported(dict)`` (written paths) and ``fine_tune_started(object)`` (the TrainWidget).
    """

    exported = Signal(object)
    fine_tune_started = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_other_docks(self, "Export")
        self.viewer = napari_viewer
        self.train_widget: Any = None
        self._watched: Any = None
        self._name_edited = False
        self._build()
        self._recount_timer = QTimer(self)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(RECOUNT_MS)
        self._recount_timer.timeout.connect(self._update_count)
        self._train_poll = QTimer(self)
        self._train_poll.setInterval(250)
        self._train_poll.timeout.connect(self._poll_training)
        prefer_source_image(self.image_combo, self.viewer)
        self._on_image_changed()
        self._on_labels_changed()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from napari.layers import Image, Labels

        root = scroll_body(self)
        data_box = QGroupBox("Training pair")
        form = QFormLayout(data_box)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip("Image layer of the pair (the raw EM stack / scan)")
        self.image_combo.layer_changed.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.labels_combo = LayerCombo(self.viewer, Labels)
        self.labels_combo.setToolTip("Corrected labels layer of the same shape")
        self.labels_combo.layer_changed.connect(self._on_labels_changed)
        form.addRow("Labels", self.labels_combo)
        self.corrected_label = QLabel("")
        self.corrected_label.setWordWrap(True)
        self.corrected_label.setToolTip(
            "Slices whose labels differ from the prediction (or from the labels when this "
            "widget first saw the layer)"
        )
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip(
            "Take the current labels as the new reference: no slice counts as corrected"
        )
        self.reset_button.clicked.connect(self.mark_reference)
        row = QHBoxLayout()
        row.addWidget(self.corrected_label, 1)
        row.addWidget(self.reset_button)
        form.addRow("Corrected", row)
        root.addWidget(data_box)

        out_box = QGroupBox("Export")
        form = QFormLayout(out_box)
        self.folder_edit = PathEdit(
            "folder", placeholder=str(default_export_dir()),
            tooltip="Folder the training pair is written to (created if needed)",
        )
        self.folder_edit.set_path(default_export_dir())
        form.addRow("Folder", self.folder_edit)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(
            "File name stem: <name>_image, <name>_labels and <name>_export.json; an existing "
            "pair is never overwritten (a number is appended instead)"
        )
        self.name_edit.textEdited.connect(self._on_name_edited)
        form.addRow("Name", self.name_edit)
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(FORMATS))
        self.format_combo.setToolTip(
            "Compressed TIFF (ImageJ calibration) or NIfTI; the layer scale is kept as the "
            "voxel spacing"
        )
        form.addRow("Format", self.format_combo)
        self.labels_mode_combo = QComboBox()
        self.labels_mode_combo.addItems(list(LABEL_MODES))
        self.labels_mode_combo.setItemData(
            0, "Every label > 0 becomes foreground (1), 0 stays background: what training "
            "needs from instance labels", Qt.ToolTipRole)
        self.labels_mode_combo.setItemData(
            1, "Write the label values unchanged (e.g. a partial annotation 0/1/2)",
            Qt.ToolTipRole)
        self.labels_mode_combo.setToolTip(
            "How the labels are written and trained on: foreground mask (for predicted "
            "instance labels) or the values as painted (for partial annotations)"
        )
        form.addRow("Labels as", self.labels_mode_combo)
        self.corrected_only_check = QCheckBox("Only corrected slices")
        self.corrected_only_check.setToolTip(
            "Write only the corrected slices of a stack (the JSON note keeps their indices)"
        )
        form.addRow(self.corrected_only_check)
        self.export_button = QPushButton("Export training pair")
        self.export_button.setToolTip("Write image, labels and the JSON note to the folder")
        self.export_button.clicked.connect(self._on_export_clicked)
        form.addRow(self.export_button)
        root.addWidget(out_box)

        tune_box = QGroupBox("Retrain")
        form = QFormLayout(tune_box)
        self.freeze_check = QCheckBox("Adapt only the pre-processor")
        self.freeze_check.setToolTip(
            "Keep the FC-ResNet frozen and fine-tune only the learned pre-processor (new "
            "microscope or scanner, few corrected slices)"
        )
        form.addRow(self.freeze_check)
        self.tune_button = QPushButton("Fine-tune on corrected slices")
        self.tune_button.setToolTip(
            "Open the Train widget and fine-tune the checkpoint that made the prediction on "
            "the corrected slices (its other settings - epochs, time budget, device - apply); "
            "the new model appears in the Predict widget when done"
        )
        self.tune_button.clicked.connect(self._on_tune_clicked)
        form.addRow(self.tune_button)
        root.addWidget(tune_box)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("What the last export or fine-tune did")
        root.addWidget(self.status_label)
        root.addStretch(1)

    # ------------------------------------------------------------------ reference tracking
    def _meta(self, layer: Any) -> dict[str, Any]:
        return layer.metadata.setdefault(METADATA_KEY, {})

    def _reference(self, layer: Any) -> np.ndarray:
        """The labels to compare with; taken now if the layer has none of the right shape."""
        meta = self._meta(layer)
        ref = meta.get("reference")
        data = layer_data(layer)
        if ref is None or tuple(ref.shape) != data.shape:
            ref = np.array(data, copy=True)
            meta["reference"] = ref
            meta.setdefault("reference_source", "export widget")
        return ref

    def mark_reference(self) -> None:
        """Take the current labels as the reference (nothing counts as corrected)."""
        layer = self.labels_combo.layer()
        if layer is None:
            return
        self._meta(layer)["reference"] = np.array(layer_data(layer), copy=True)
        self._update_count()

    def corrected_slices(self) -> list[int]:
        """Slices (first axis) whose labels differ from the reference."""
        layer = self._labels_layer()
        return changed_slices(layer_data(layer), self._reference(layer))

    def _on_labels_changed(self, *_: Any) -> None:
        self._watch(self.labels_combo.layer())
        layer = self.labels_combo.layer()
        if layer is not None:
            meta = layer.metadata.get(METADATA_KEY, {})
            source = meta.get("image_layer")
            if source and self.image_combo.findText(source) >= 0:
                self.image_combo.set_layer(source)
            mode = "foreground" if meta.get("checkpoints") else None
            if mode is not None:
                self.labels_mode_combo.setCurrentIndex(0)
            self._reference(layer)
        self._update_count()
        self._update_enabled()

    def _on_image_changed(self, *_: Any) -> None:
        layer = self.image_combo.layer()
        if layer is not None and not self._name_edited:
            self.name_edit.setText(safe_name(layer.name))
        self._update_enabled()

    def _on_name_edited(self, *_: Any) -> None:
        self._name_edited = bool(self.name_edit.text().strip())

    def _watch(self, layer: Any) -> None:
        """Recount corrected slices after painting, undo / redo and data changes."""
        old = self._watched
        if old is layer:
            return
        if old is not None:
            for ev in edit_events(old):
                try:
                    ev.disconnect(self._schedule_recount)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._watched = layer
        if layer is not None:
            for ev in edit_events(layer):
                ev.connect(self._schedule_recount)

    def _schedule_recount(self, *_: Any) -> None:
        self._recount_timer.start()

    def _update_count(self) -> None:
        layer = self.labels_combo.layer()
        if layer is None:
            self.corrected_label.setText("no labels layer")
            return
        try:
            slices = changed_slices(layer_data(layer), self._reference(layer))
        except FcresError as exc:
            self.corrected_label.setText(str(exc))
            return
        if layer.ndim == 2:
            self.corrected_label.setText("corrected" if slices else "not corrected yet")
        else:
            n = layer_data(layer).shape[0]
            shown = ", ".join(str(s) for s in slices[:12]) + (" ..." if len(slices) > 12 else "")
            self.corrected_label.setText(
                f"{len(slices)} of {n} slices" + (f": {shown}" if slices else "")
            )
        self._update_enabled()

    def _update_enabled(self, *_: Any) -> None:
        ready = self.image_combo.layer() is not None and self.labels_combo.layer() is not None
        self.export_button.setEnabled(ready)
        busy = self.train_widget is not None and _safe_running(self.train_widget)
        self.tune_button.setEnabled(ready and not busy)

    # ------------------------------------------------------------------ export
    def _labels_layer(self) -> Any:
        layer = self.labels_combo.layer()
        if layer is None:
            raise InputError("choose the corrected labels layer")
        return layer

    def _layers(self) -> tuple[Any, Any]:
        image = self.image_combo.layer()
        if image is None:
            raise InputError("choose the image layer of the pair")
        labels = self._labels_layer()
        if getattr(image, "rgb", False):  # before the shapes: (y, x, 3) vs (y, x)
            raise InputError(
                f"image {image.name!r} is an RGB (colour) image; a training pair needs one "
                "grey-value channel: convert the layer to grey values first"
            )
        ishape, lshape = layer_data(image).shape, layer_data(labels).shape
        if ishape != lshape:
            raise InputError(
                f"image {image.name!r} has shape {ishape} but labels {labels.name!r} have "
                f"shape {lshape}; they must match"
            )
        return image, labels

    def _training_labels(self, labels: np.ndarray) -> np.ndarray:
        if LABEL_MODES[self.labels_mode_combo.currentText()] == "foreground":
            return (labels > 0).astype(np.uint8)
        return labels

    def _on_export_clicked(self) -> None:
        try:
            self.export()
        except (FcresError, OSError) as exc:
            report_error(self.status_label, exc, "Export failed")

    def export(self, folder: str | Path | None = None) -> dict[str, Path]:
        """Write the pair (and the JSON note) to ``folder`` (default: the folder field)."""
        from ..io import write_image, write_labels

        image_layer, labels_layer = self._layers()
        image, labels = layer_data(image_layer), layer_data(labels_layer)
        corrected = changed_slices(labels, self._reference(labels_layer))
        out_dir = Path(folder or self.folder_edit.path() or default_export_dir()).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        name = safe_name(self.name_edit.text() or image_layer.name)
        ext = FORMATS[self.format_combo.currentText()]
        paths = pair_paths(out_dir, name, ext)
        written_slices = None
        if self.corrected_only_check.isChecked() and labels.ndim == 3:
            if not corrected:
                raise InputError("no slice is corrected yet; correct some or untick "
                                 "'Only corrected slices'")
            image, labels = image[corrected], labels[corrected]
            written_slices = corrected
        spacing = tuple(float(s) for s in labels_layer.scale)
        write_image(paths["image"], image, spacing=spacing)
        write_labels(paths["labels"], self._training_labels(labels), spacing=spacing)
        meta = labels_layer.metadata.get(METADATA_KEY, {})
        info = {
            "image": paths["image"].name,
            "labels": paths["labels"].name,
            "image_layer": image_layer.name,
            "labels_layer": labels_layer.name,
            "shape": list(image.shape),
            "spacing": list(spacing),
            "labels_as": LABEL_MODES[self.labels_mode_combo.currentText()],
            "corrected_slices": corrected,
            "written_slices": written_slices,
            "source_checkpoints": [str(p) for p in meta.get("checkpoints", [])],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        paths["info"].write_text(json.dumps(info, indent=2))
        msg = f"Exported {paths['image'].name} and {paths['labels'].name} to {out_dir}"
        report(self.status_label, msg, toast="Exported the training pair")
        self.exported.emit(paths)
        return paths

    # ------------------------------------------------------------------ fine-tune
    def _on_tune_clicked(self) -> None:
        try:
            self.fine_tune()
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot fine-tune")

    def _find_train_widget(self) -> Any:
        """The docked Train widget; docked now (tabbed with the others) when there is none."""
        return open_dock_widget(self.viewer, TRAIN_WIDGET_NAME)

    def fine_tune(self) -> Any:
        """Fine-tune on the corrected slices via the Train widget; return that widget."""
        image_layer, labels_layer = self._layers()
        corrected = self.corrected_slices()
        if not corrected:
            raise InputError(
                "no slice is corrected yet: fix the labels of a few slices (paint, erase, or the "
                "Correct widget), then fine-tune"
            )
        meta = labels_layer.metadata.get(METADATA_KEY, {})
        checkpoints = [str(p) for p in meta.get("checkpoints", []) if Path(p).exists()]
        init = checkpoints[0] if checkpoints else None
        foreground = LABEL_MODES[self.labels_mode_combo.currentText()] == "foreground"
        widget = self._find_train_widget()
        if _safe_running(widget):
            raise FcresError("the Train widget is already running; stop it or wait")
        # what training reads (the foreground mask, or the values as painted) goes to the
        # Train widget as data: no extra (hidden) layer in the viewer
        train_labels = self._training_labels(layer_data(labels_layer))
        slices = corrected if layer_data(labels_layer).ndim == 3 else None
        widget.train_on(
            image_layer, labels_layer, slices=slices, init_checkpoint=init,
            freeze_fcresnet=self.freeze_check.isChecked(),
            partial=False if foreground else None, labels_data=train_labels,
        )
        if self.train_widget is not widget:
            widget.finished.connect(self._on_trained)
        self.train_widget = widget
        start = f"from {Path(init).parent.name}/{Path(init).name}" if init else "from scratch"
        where = f"{len(corrected)} corrected slice{'s' if len(corrected) > 1 else ''}"
        msg = f"Fine-tuning {start} on {where} in the Train widget ..."
        if len(checkpoints) > 1:
            msg += f" (the first of the {len(checkpoints)} ensemble checkpoints)"
        self.status_label.setText(msg)
        log.info(msg)
        self.fine_tune_started.emit(widget)
        self._update_enabled()
        self._train_poll.start()
        return widget

    def _on_trained(self, result: Any) -> None:
        best = [Path(p) for p in getattr(result, "best_checkpoints", [])]
        if best:
            self.status_label.setText(
                f"Fine-tuned model: {best[0]}; it is ticked in the Predict widget - predict "
                "again and correct the next slices"
            )
        self._update_enabled()

    def _poll_training(self) -> None:
        """Re-enable the fine-tune button once the Train widget stops running."""
        self._update_enabled()
        if self.train_widget is None or not _safe_running(self.train_widget):
            self._train_poll.stop()


def _safe_running(widget: Any) -> bool:
    try:
        return bool(widget.is_running())
    except (AttributeError, RuntimeError):
        return False
