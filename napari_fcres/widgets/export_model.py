"""Export model dock widget: trained checkpoint(s) as one bioimage.io model package (zip).

One ticked checkpoint is exported as one model; several become one model that averages their
probabilities (:func:`napari_fcres.bioimageio_export.export_bioimageio`).  The export runs in a
napari thread worker (it traces the model and writes test tensors: seconds to a minute).
"""

from __future__ import annotations

import getpass
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import FcresError, InputError
from ._docks import tab_with_other_docks
from ._forms import LayerCombo, PathEdit, scroll_body
from ._job import WidgetJob
from ._layers import label_name, layer_source
from ._notify import WorkerFailed, report, report_error
from ._pickers import CheckpointList

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

DEFAULT_NAME = "napari-fcres segmentation"
DEFAULT_DESCRIPTION = "Binary segmentation with a learned pre-processor and an FC-ResNet"
LICENSES = ("BSD-3-Clause", "MIT", "Apache-2.0", "CC-BY-4.0", "CC0-1.0")
NO_TEST_IMAGE = "(built-in synthetic EM)"


def default_model_dir() -> Path:
    """``~/napari-fcres/models`` (created on export)."""
    return Path.home() / "napari-fcres" / "models"


def default_author() -> str:
    """The login name, or ``napari-fcres user`` when it cannot be found."""
    try:
        return getpass.getuser() or "napari-fcres user"
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "napari-fcres user"


def _export_job(checkpoints: list[str], out: Path, **kwargs: Any) -> Path:
    """Worker body: write the package (touches no layer)."""
    from ..bioimageio_export import export_bioimageio

    return export_bioimageio(checkpoints, out, **kwargs)


class ExportModelWidget(QWidget):
    """Export ticked checkpoints as a bioimage.io model package.

    Public API: :meth:`export`, :meth:`is_running`; ``checkpoint_list`` (a
    :class:`~napari_fcres.widgets._pickers.CheckpointList`), ``output_edit``; signals
    ``exported(Path)`` and ``failed(WorkerFailed)``.
    """

    exported = Signal(object)
    failed = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_other_docks(self, "Export model")
        self.viewer = napari_viewer
        self.job = WidgetJob(self, "model export", on_state_changed=self._update_enabled)
        self._output_edited = False
        self._build()
        self._update_enabled()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from napari.layers import Image

        root = scroll_body(self)
        models_box = QGroupBox("Checkpoints")
        lay = QVBoxLayout(models_box)
        self.checkpoint_list = CheckpointList()
        self.checkpoint_list.list.setToolTip(
            "Checkpoints to export: one ticked checkpoint is exported as one model, several "
            "as one model averaging their probabilities (an ensemble)"
        )
        self.checkpoint_list.changed.connect(self._update_enabled)
        lay.addWidget(self.checkpoint_list)
        root.addWidget(models_box)

        meta_box = QGroupBox("Model card")
        form = QFormLayout(meta_box)
        self.name_edit = QLineEdit(DEFAULT_NAME)
        self.name_edit.setToolTip("Model name shown on bioimage.io and in the package README")
        self.name_edit.textEdited.connect(self._on_name_edited)
        form.addRow("Name", self.name_edit)
        self.description_edit = QLineEdit(DEFAULT_DESCRIPTION)
        self.description_edit.setToolTip("One-sentence description of what the model segments")
        form.addRow("Description", self.description_edit)
        self.authors_edit = QLineEdit(default_author())
        self.authors_edit.setToolTip("Author names, separated by commas")
        form.addRow("Authors", self.authors_edit)
        self.license_combo = QComboBox()
        self.license_combo.setEditable(True)
        self.license_combo.addItems(list(LICENSES))
        self.license_combo.setToolTip("SPDX license identifier of the weights")
        form.addRow("License", self.license_combo)
        self.test_combo = LayerCombo(self.viewer, Image, allow_none=True,
                                     none_text=NO_TEST_IMAGE)
        self.test_combo.setToolTip(
            "Image the package's test input / output tensors and cover are made from (a "
            "centred crop of its middle slice); none: the built-in synthetic EM stack"
        )
        form.addRow("Test image", self.test_combo)
        self.torchscript_check = QCheckBox("Add TorchScript weights")
        self.torchscript_check.setChecked(True)
        self.torchscript_check.setToolTip(
            "Also store a TorchScript copy of the weights (needed by some bioimage.io "
            "consumers, e.g. deepImageJ); the package gets about twice as large"
        )
        form.addRow(self.torchscript_check)
        root.addWidget(meta_box)

        out_box = QGroupBox("Output")
        form = QFormLayout(out_box)
        self.output_edit = PathEdit(
            "file", save=True, filter="bioimage.io package (*.zip)",
            tooltip="The model package (.zip) to write; an existing file is replaced",
        )
        self.output_edit.set_path(default_model_dir() / f"{label_name(DEFAULT_NAME)}.zip")
        self.output_edit.edit.textEdited.connect(self._on_output_edited)
        form.addRow("Package", self.output_edit)
        self.export_button = QPushButton("Export model")
        self.export_button.setToolTip(
            "Write the bioimage.io package (runs in the background; a notification says when "
            "it is done)"
        )
        self.export_button.clicked.connect(self._on_export_clicked)
        form.addRow(self.export_button)
        root.addWidget(out_box)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("What the last export did")
        root.addWidget(self.status_label)
        root.addStretch(1)

    # ------------------------------------------------------------------ state
    def is_running(self) -> bool:
        """True while an export runs."""
        return self.job.running

    def _update_enabled(self, *_: Any) -> None:
        running = self.is_running()
        self.export_button.setEnabled(not running and bool(self.checkpoint_list.checked()))
        for w in (self.checkpoint_list, self.name_edit, self.description_edit,
                  self.authors_edit, self.license_combo, self.test_combo,
                  self.torchscript_check, self.output_edit):
            w.setEnabled(not running)

    def _on_name_edited(self, text: str) -> None:
        if not self._output_edited:
            folder = Path(self.output_edit.path() or default_model_dir()).parent
            self.output_edit.set_path(folder / f"{label_name(text or DEFAULT_NAME)}.zip")

    def _on_output_edited(self, *_: Any) -> None:
        self._output_edited = True

    # ------------------------------------------------------------------ actions
    def _on_export_clicked(self) -> None:
        try:
            self.export()
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot export the model")

    def _test_image(self) -> np.ndarray | None:
        """The middle slice of the chosen test image layer (read without loading the rest)."""
        layer = self.test_combo.layer()
        if layer is None:
            return None
        data = layer_source(layer)
        if len(data.shape) == 3:
            data = data[data.shape[0] // 2]
        if len(data.shape) != 2 or getattr(layer, "rgb", False):
            raise InputError("the test image must be a grey-value 2-D image or 3-D stack")
        if hasattr(data, "compute"):
            data = data.compute()
        return np.asarray(data)

    def export(self, out: str | Path | None = None) -> Any:
        """Start exporting the ticked checkpoints to ``out`` (default: the Package field)."""
        self.job.check_idle()
        paths = [str(p) for p in self.checkpoint_list.checked()]
        if not paths:
            raise InputError("add and tick at least one checkpoint (Add file... / Add folder...)")
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise InputError(f"checkpoint not found: {missing[0]}")
        out = Path(out) if out is not None else Path(self.output_edit.path() or "")
        if out.suffix.lower() != ".zip":
            raise InputError(f"the package must be a .zip file, got {str(out) or 'nothing'}")
        name = self.name_edit.text().strip() or DEFAULT_NAME
        authors = [a.strip() for a in self.authors_edit.text().split(",") if a.strip()]
        if not authors:
            raise InputError("give at least one author")
        kwargs: dict[str, Any] = {
            "name": name,
            "description": self.description_edit.text().strip() or DEFAULT_DESCRIPTION,
            "authors": authors,
            "license": self.license_combo.currentText().strip() or LICENSES[0],
            "test_image": self._test_image(),
            "torchscript": self.torchscript_check.isChecked(),
        }
        n = len(paths)
        what = f"an ensemble of {n} models" if n > 1 else "one model"
        self.status_label.setText(f"Exporting {what} to {out} ...")
        log.info("exporting %s to %s: %s", what, out, ", ".join(paths))
        return self.job.start(
            _export_job, paths, out, **kwargs, process=False,
            progress_bar={"desc": "Exporting model"},
            on_done=self._on_done, on_error=self._on_error,
        )

    # ------------------------------------------------------------------ worker callbacks
    def _on_done(self, path: Path) -> None:
        msg = f"Exported the bioimage.io model package {path}"
        report(self.status_label, msg, toast="Exported the model package")
        self.exported.emit(Path(path))

    def _on_error(self, exc: WorkerFailed) -> None:
        report_error(self.status_label, exc, "Model export failed")
        self.failed.emit(exc)
