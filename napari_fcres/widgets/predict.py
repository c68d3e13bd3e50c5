"""Predict dock widget: run one checkpoint or an ensemble on the image layer in the viewer.

Adds (or updates) ``<image> predicted labels``, ``<image> probability``, ``<image> normalized``
(the learned pre-processor's output) and, for ensembles, ``<image> disagreement`` (per-pixel
spread of the members: where to correct first).  Only the predicted labels are shown at first:
the other result layers are added hidden, and other labels layers over the image (e.g. the
sample's own labels, or corrections a prediction left alone) are hidden when new predicted
labels are added, so that no two label colourings mix; the status line says what is hidden.
The labels layer remembers the checkpoints and the labels as predicted
(``layer.metadata["fcres"]``) so the Export widget can tell which slices were corrected and
fine-tune the model that made them.  A prediction never
overwrites corrections: when the labels it would replace were edited, that layer is left as it
is and the prediction goes to a new labels layer.  Closing the dock stops a running prediction
and drops its result.

After a stack prediction, "Next slice to annotate" moves the viewer to the unpainted slice where
the models are least sure (:mod:`napari_fcres.suggest`, ranked in the worker) and zooms on its
most uncertain region; slices painted in the chosen labels layer, and slices corrected in the
prediction's labels layer, are skipped.

Lazy images (dask or zarr data, multiscale layers: the full-resolution level) are never loaded
whole: they are predicted block by block (:func:`napari_fcres.chunked.predict_chunked`) into an
OME-Zarr store (``<store>/labels/<image>``, NGFF image-label metadata), and the labels are shown
lazily from there.  The same route is taken for any image when an OME-Zarr output is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..config import DEFAULT_TTA, TTA_PASSES
from ..errors import FcresError, InputError
from ..io import layer_spacing
from ..jobs import THRESHOLD, PredictJobResult, predict_job, preview_job
from ..worker_process import REPORT, STOP
from ._docks import tab_with_other_docks
from ._forms import DeviceCombo, LayerCombo, PathEdit, scroll_body
from ._job import WidgetJob, prestart_worker_process
from ._layers import (
    METADATA_KEY,
    PREVIEW_SUFFIX,
    RESULT_KEY,
    apply_labels,
    current_slice,
    is_lazy_layer,
    label_name,
    layer_names,
    layer_source,
    prefer_source_image,
)
from ._notify import WorkerFailed, notify_info, notify_warning, report, report_error
from ._pickers import CheckpointList

if TYPE_CHECKING:
    import napari


log = logging.getLogger(__name__)

#: Resolution of the activity-dock progress bar.
PROGRESS_TOTAL = 1000
#: Refresh the time left in the status line at most this often (seconds).
ETA_INTERVAL_S = 1.0

MODE_HELP = {
    "instances": "connected components of the foreground as separate labels (per slice), "
                 "e.g. EM cell interiors",
    "binary": "one label (1) for all foreground, 0 for background",
    "largest": "only the largest 3-D connected component (e.g. one organ in CT/MRI)",
}


def default_zarr_path(image_name: str) -> Path:
    """``~/napari-fcres/predictions/<image>.zarr``: the OME-Zarr output of a lazy image."""
    return Path.home() / "napari-fcres" / "predictions" / f"{label_name(image_name)}.zarr"


def probabilities_path(labels_store: str | Path) -> Path:
    """Where the probabilities of an OME-Zarr prediction go: ``<store>_probabilities.zarr``."""
    p = Path(labels_store)
    return p.with_name(f"{p.stem}_probabilities.zarr")


@dataclass
class _ZarrJob:
    """What the block-wise (OME-Zarr) worker returns: where it wrote."""

    labels_path: Path
    probabilities_path: Path | None
    checkpoints: list[str]
    mode: str
    instances: int | None


class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(int, int)


def _predict_zarr_job(
    paths: list[str],
    source: Any,
    out: Path,
    name: str,
    *,
    spacing: tuple[float, ...] | None,
    device: str,
    tile_size: int,
    tta: bool,
    mode: str,
    probabilities: bool,
    stop: threading.Event,
    relay: _ProgressRelay,
) -> _ZarrJob:
    """Worker body: predict ``source`` block by block into ``out/labels/<name>``.

    A thin call to :func:`napari_fcres.chunked.predict_zarr_labels` (which the CLI's
    ``predict --chunked`` uses too); the instance pass takes the last tenth of the progress.
    Touches no layer.
    """
    from ..chunked import predict_zarr_labels
    from ..runs import load_ensemble

    models = load_ensemble(paths, device, should_stop=stop.is_set)
    share = 0.9 if mode == "instances" else 1.0

    def blocks_done(done: int, total: int) -> None:
        relay.progressed.emit(int(PROGRESS_TOTAL * share * done / max(total, 1)), PROGRESS_TOTAL)

    def slabs_done(done: int, total: int) -> None:
        frac = share + (1.0 - share) * done / max(total, 1)
        relay.progressed.emit(int(PROGRESS_TOTAL * frac), PROGRESS_TOTAL)

    result = predict_zarr_labels(
        models, source, out, name, mode=mode, spacing=spacing,
        probabilities=probabilities_path(out) if probabilities else None, threshold=THRESHOLD,
        tile_size=tile_size, overlap=min(64, tile_size // 4), tta=tta, device=device,
        progress=blocks_done, label_progress=slabs_done, should_stop=stop.is_set,
    )
    return _ZarrJob(result.labels_path, result.probabilities_path, list(paths), mode,
                    result.instances)


class PredictWidget(QWidget):
    """Predict foreground probabilities and labels of an image layer.

    Public API: :meth:`predict_stack`, :meth:`predict_current_slice`, :meth:`stop`,
    :meth:`is_running`, :meth:`zarr_output`, :meth:`next_suggestion`,
    :meth:`go_to_next_slice`; ``checkpoint_list`` (a :class:`CheckpointList`),
    ``zarr_edit`` (the OME-Zarr output path); signals ``finished(dict)`` (``{"layers": {kind:
    name}, "slice": int | None, "checkpoints": [...]}``, plus ``"ome_zarr"``: the labels group
    written, for block-wise predictions), ``failed(WorkerFailed)`` and ``stopped()``.
    """

    finished = Signal(object)
    failed = Signal(object)
    stopped = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_other_docks(self, "Predict")
        self.viewer = napari_viewer
        self.job = WidgetJob(self, "prediction", on_state_changed=self._update_enabled,
                             on_stop_requested=self._on_stop_requested)
        self._relay: _ProgressRelay | None = None
        self._target: tuple[Any, int | None] | None = None
        self._landing: Iterator[None] | None = None  # result layers still to add, one by one
        #: seconds per tile pass of the last plain / TTA prediction, by device and tile size
        self._pass_seconds: dict[tuple[str, int, bool], float] = {}
        self._started: tuple[float, str, tuple[str, int, bool], int] | None = None
        self._eta_shown = 0.0
        self._zarr_out: Path | None = None
        self._build()
        prefer_source_image(self.image_combo, self.viewer)
        self._update_enabled()
        prestart_worker_process()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from napari.layers import Image

        root = scroll_body(self)

        data_box = QGroupBox("Image and models")
        form = QFormLayout(data_box)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip(
            "Image layer to segment (2-D image or 3-D stack, predicted slice by slice)"
        )
        form.addRow("Image", self.image_combo)
        self.checkpoint_list = CheckpointList()
        self.checkpoint_list.changed.connect(self._update_enabled)
        form.addRow("Checkpoints", self.checkpoint_list)
        root.addWidget(data_box)

        settings_box = QGroupBox("Settings")
        form = QFormLayout(settings_box)
        self.device_combo = DeviceCombo()
        self.device_combo.setToolTip("Compute device (a GPU is much faster than the CPU)")
        form.addRow("Device", self.device_combo)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(128, 4096)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(512)
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Slices are predicted in overlapping tiles of this size, blended without seams; "
            "lower it if the device runs out of memory"
        )
        form.addRow("Tile size", self.tile_spin)
        self.tta_check = QCheckBox("Test-time augmentation")
        self.tta_check.setChecked(DEFAULT_TTA)
        self.tta_check.setToolTip(
            f"Average the {TTA_PASSES} flips/rotations of every tile: fewer merged cells "
            f"(ISBI V_rand +0.01 to +0.02) at about {TTA_PASSES} times the time of a plain "
            "prediction (the status line gives an estimate when one was timed); untick it "
            "for a quick look"
        )
        self.tta_check.toggled.connect(self._on_tta_toggled)
        form.addRow(self.tta_check)
        self.mode_combo = QComboBox()
        for i, mode in enumerate(MODE_HELP):
            self.mode_combo.addItem(mode)
            self.mode_combo.setItemData(i, MODE_HELP[mode], Qt.ToolTipRole)
        self.mode_combo.setCurrentText("instances")
        self.mode_combo.setToolTip(
            f"How the probability map (thresholded at {THRESHOLD}) becomes labels: "
            + "; ".join(f"{k}: {v}" for k, v in MODE_HELP.items())
        )
        form.addRow("Labels", self.mode_combo)
        root.addWidget(settings_box)

        out_box = QGroupBox("OME-Zarr output")
        form = QFormLayout(out_box)
        self.zarr_edit = PathEdit(
            "file", save=True, filter="OME-Zarr (*.zarr);;All files (*)",
            tooltip=(
                "Optional .zarr folder. When set, 'Predict stack' predicts block by block and "
                "writes the labels into <folder>/labels/<image name> (OME-Zarr image-label "
                "metadata; an existing OME-Zarr image gets the labels added), then shows them "
                "lazily from there. Empty: in-memory images get an in-memory result; lazy "
                "images (dask, zarr, multiscale) always take the block-wise route and write to "
                "~/napari-fcres/predictions/<image>.zarr, because an in-memory result of a "
                "huge volume would defeat the purpose"
            ),
        )
        self.zarr_edit.changed.connect(self._update_placeholder)
        form.addRow("Write to", self.zarr_edit)
        self.zarr_prob_check = QCheckBox("Also write probabilities")
        self.zarr_prob_check.setToolTip(
            "With an OME-Zarr output: also write the float32 probabilities block by block to "
            "<folder>_probabilities.zarr and show them lazily (4 bytes per voxel on disk)"
        )
        form.addRow(self.zarr_prob_check)
        root.addWidget(out_box)

        self.slice_button = QPushButton("Predict current slice")
        self.slice_button.setToolTip(
            "Quick preview: predict only the slice shown in the viewer (undo with Ctrl+Z on "
            "the labels layer)"
        )
        self.slice_button.clicked.connect(self._on_slice_clicked)
        self.stack_button = QPushButton("Predict stack")
        self.stack_button.setToolTip(
            "Predict every slice (progress in the activity dock, bottom right)"
        )
        self.stack_button.clicked.connect(self._on_stack_clicked)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the running prediction (its result is discarded)")
        self.stop_button.clicked.connect(self.stop)
        row = QHBoxLayout()
        row.addWidget(self.slice_button)
        row.addWidget(self.stack_button)
        row.addWidget(self.stop_button)
        root.addLayout(row)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("What the last prediction did")
        self._kept: str | None = None  # an edited labels layer a prediction left alone
        self._hidden: list[str] = []  # labels layers hidden when new predicted labels came
        root.addWidget(self.status_label)
        self._build_next_slice(root)
        root.addStretch(1)
        self.image_combo.layer_changed.connect(self._update_enabled)
        self.image_combo.layer_changed.connect(self._update_placeholder)
        self._update_placeholder()

    def _update_placeholder(self, *_: Any) -> None:
        layer = self.image_combo.layer()
        if layer is not None and is_lazy_layer(layer):
            text = f"lazy image: {default_zarr_path(layer.name)}"
        else:
            text = "none: the result stays in memory"
        self.zarr_edit.edit.setPlaceholderText(text)

    def zarr_output(self, layer: Any | None = None) -> Path | None:
        """Where 'Predict stack' writes OME-Zarr labels for ``layer`` (None: in memory)."""
        layer = layer if layer is not None else self.image_combo.layer()
        text = self.zarr_edit.path()
        if text:
            out = Path(text)
            if out.suffix.lower() != ".zarr":
                raise InputError(f"the OME-Zarr output must be a .zarr folder, got {out}")
            return out
        if layer is not None and is_lazy_layer(layer):
            return default_zarr_path(layer.name)
        return None

    # ------------------------------------------------------------------ state
    def is_running(self) -> bool:
        """True while a prediction runs, until its layers are all in the viewer."""
        return self.job.running or self._landing is not None

    def _update_enabled(self, *_: Any) -> None:
        running = self.is_running()
        ready = not running and self.image_combo.layer() is not None and bool(
            self.checkpoint_list.checked()
        )
        self.slice_button.setEnabled(ready)
        self.stack_button.setEnabled(ready)
        self.stop_button.setEnabled(self.job.running and not self.job.stopping)
        for w in (self.image_combo, self.checkpoint_list, self.device_combo, self.tile_spin,
                  self.tta_check, self.mode_combo, self.zarr_edit, self.zarr_prob_check):
            w.setEnabled(not running)

    # ------------------------------------------------------------------ actions
    def _on_slice_clicked(self) -> None:
        try:
            self.predict_current_slice()
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot predict")

    def _on_stack_clicked(self) -> None:
        try:
            self.predict_stack()
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot predict")

    def predict_current_slice(self) -> None:
        """Predict the slice the viewer shows (the whole image for 2-D layers)."""
        layer = self._image_layer()
        index = current_slice(self.viewer, layer) if layer.ndim == 3 else None
        self._start(layer, index)

    def predict_stack(self) -> None:
        """Predict every slice of the chosen image layer."""
        self._start(self._image_layer(), None)

    def stop(self) -> None:
        """Stop the running prediction at its next batch of tiles.

        Closing the dock stops it too; a stopped prediction's result is dropped: nothing is
        written into the viewer after the dock closed.
        """
        self.job.stop()

    def _on_stop_requested(self) -> None:
        self.status_label.setText("Stopping ...")

    def _dropped(self, what: str) -> bool:
        """True (and say so) when the run was stopped: its result must not be shown."""
        if not self.job.stopping:
            return False
        text = f"Prediction stopped; {what}"
        self.status_label.setText(text)
        log.info(text)
        self.stopped.emit()
        return True

    def _image_layer(self) -> Any:
        layer = self.image_combo.layer()
        if layer is None:
            raise InputError("choose an image layer to predict")
        return layer

    def _start(self, layer: Any, slice_index: int | None) -> None:
        self.job.check_idle()
        paths = [str(p) for p in self.checkpoint_list.checked()]
        if not paths:
            raise InputError("add and tick at least one checkpoint (Add file... / Add folder...)")
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise InputError(f"checkpoint not found: {missing[0]}")
        if getattr(layer, "rgb", False):
            raise InputError("RGB images are not supported; convert the layer to grey values")
        source = layer_source(layer)  # nothing loaded yet (dask / zarr stay lazy)
        shape = tuple(int(n) for n in source.shape)
        if len(shape) not in (2, 3):
            raise InputError(f"expected a 2-D image or 3-D stack, got shape {shape}")
        lazy = is_lazy_layer(layer)
        if len(shape) == 2:
            slice_index = None
        out = self.zarr_output(layer) if slice_index is None else None
        mode = self.mode_combo.currentText()
        if out is not None and mode == "largest":
            raise InputError(
                "'largest' keeps one 3-D component and needs the whole volume in memory; "
                "choose 'binary' or 'instances' for lazy images and OME-Zarr output"
            )
        n = len(paths)
        what = "stack" if slice_index is None else f"slice {slice_index}"
        if len(shape) == 2:
            what = "image"
        desc = f"Predicting {what} with {n} model{'s' if n > 1 else ''}"
        if out is not None:
            desc += " block by block"
        common: dict[str, Any] = {
            "device": str(self.device_combo.currentData() or "cpu"),
            "tile_size": self.tile_spin.value(), "tta": self.tta_check.isChecked(),
            "mode": mode,
        }
        self._target = (layer, slice_index)
        self._zarr_out = out
        tta = self.tta_check.isChecked()
        if tta:
            desc += " and test-time augmentation"
        key = (common["device"], self.tile_spin.value(), tta)
        n_slices = 1 if slice_index is not None or len(shape) == 2 else shape[0]
        self._started = (time.perf_counter(), desc, key, n * n_slices)
        self._eta_shown = time.perf_counter()
        status = desc + " ..."
        if tta:
            status += f" {self.tta_cost(n * n_slices)}"
        self.status_label.setText(status)
        log.info("%s: %s%s", desc, ", ".join(paths), f" -> {out}" if out else "")
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._on_progress)
        callbacks: dict[str, Any] = {
            "progress_desc": desc, "on_error": self._on_error, "on_stopped": self._on_stopped,
            "on_finished": self._on_finished,
        }
        if out is not None:
            self.job.start(
                _predict_zarr_job, paths, source, out, label_name(layer.name),
                spacing=_spacing(layer), probabilities=self.zarr_prob_check.isChecked(),
                stop=self.job.stop_event, relay=self._relay, process=False,
                on_done=self._on_zarr_done, **common, **callbacks,
            )
        elif lazy and slice_index is not None:
            self.job.start(
                preview_job, paths, source, slice_index, stop=STOP, progress=REPORT,
                on_yield=self._on_reported, on_done=self._on_done, **common, **callbacks,
            )
        else:
            image = np.asarray(source)  # an in-memory numpy array: no copy
            self.job.start(
                predict_job, paths, image, slice_index=slice_index, stop=STOP,
                progress=REPORT, on_yield=self._on_reported, on_done=self._on_done,
                **common, **callbacks,
            )

    # ------------------------------------------------------------------ worker callbacks
    def _on_reported(self, progress: tuple[int, int]) -> None:
        self._on_progress(*progress)

    def _on_progress(self, done: int, total: int) -> None:
        self.job.set_progress(done / max(total, 1))
        started = self._started
        now = time.perf_counter()
        if started is None or done <= 0 or now - self._eta_shown < ETA_INTERVAL_S:
            return
        self._eta_shown = now
        elapsed = now - started[0]
        left = elapsed * (total - done) / done
        self.status_label.setText(
            f"{started[1]}: {100 * done / max(total, 1):.0f}% done, about "
            f"{_duration(left)} left"
        )

    def tta_cost(self, passes: int) -> str:
        """What test-time augmentation will cost for ``passes`` slice predictions (slices times
        models), from the last timed prediction with these settings when there is one."""
        device = str(self.device_combo.currentData() or "cpu")
        tile = self.tile_spin.value()
        text = f"({TTA_PASSES} passes per tile: about {TTA_PASSES}x the time of a plain prediction"
        tta_rate = self._pass_seconds.get((device, tile, True))
        plain = self._pass_seconds.get((device, tile, False))
        if tta_rate is not None:
            text += f"; expect about {_duration(tta_rate * passes)}"
        elif plain is not None:
            text += (f"; a plain one takes about {_duration(plain * passes)} here: expect "
                     f"about {_duration(TTA_PASSES * plain * passes)}")
        return text + ")"

    def _on_tta_toggled(self, on: bool) -> None:
        if on and not self.is_running():
            layer = self.image_combo.layer()
            shape = tuple(layer_source(layer).shape) if layer is not None else ()
            slices = shape[0] if len(shape) == 3 else 1
            n = max(len(self.checkpoint_list.checked()), 1)
            self.status_label.setText(
                f"Test-time augmentation on {self.tta_cost(n * slices)}")

    def _record_time(self) -> None:
        """Remember how long one slice pass of one model took (for the TTA estimate)."""
        started, self._started = self._started, None
        if started is not None and started[3] > 0:
            self._pass_seconds[started[2]] = (time.perf_counter() - started[0]) / started[3]

    def _on_stopped(self) -> None:
        text = "Prediction stopped; nothing was changed"
        if self._zarr_out is not None:
            text = f"Prediction stopped; the OME-Zarr output {self._zarr_out} is incomplete"
        self.status_label.setText(text)
        notify_info("Prediction stopped")
        self.stopped.emit()

    def _on_error(self, exc: WorkerFailed) -> None:
        report_error(self.status_label, exc, "Prediction failed")
        self.failed.emit(exc)

    def _on_finished(self) -> None:
        self._relay = None
        self._started = None

    def _on_done(self, job: PredictJobResult) -> None:
        if self._dropped("nothing was changed"):
            return
        self._record_time()
        target = self._target
        layer = target[0] if target else None
        if layer is None or layer not in self.viewer.layers:
            self.status_label.setText("The image layer was removed; the prediction is dropped")
            return
        self._kept = None
        self._hidden = []
        pieces = self._show_preview(layer, job) if job.preview is not None else \
            self._show(layer, job)
        self._land(pieces, lambda names: self._landed(layer, job, names))

    # ------------------------------------------------------------------ landing
    def _land(self, pieces: Generator[None, None, dict[str, str]],
              then: Callable[[dict[str, str]], None]) -> None:
        """Add the result layers one per turn of the event loop (each is napari's work of
        tens to hundreds of milliseconds: together they froze the viewer for a second), then
        ``then(names)``.  :meth:`is_running` holds until the last one is in."""
        self._landing = pieces
        self._update_enabled()

        def step() -> None:
            if self._landing is not pieces:  # cancelled (the dock closed)
                return
            try:
                next(pieces)
            except StopIteration as done:
                self._landing = None
                self._update_enabled()
                then(done.value)
                return
            except FcresError as exc:
                self._landing = None
                self._update_enabled()
                report_error(self.status_label, exc, "Cannot show the prediction")
                return
            QTimer.singleShot(0, step)

        QTimer.singleShot(0, step)

    def _cancel_landing(self) -> None:
        """Add no more result layers (the dock was closed)."""
        if self._landing is not None:
            self._landing.close()
            self._landing = None
            log.info("result layers not added: the Predict dock was closed")

    def event(self, event: QEvent) -> bool:  # noqa: D102 - Qt override
        if event.type() == QEvent.ParentChange and self.parent() is None:
            self._cancel_landing()  # closing the dock: nothing more goes into the viewer
        return super().event(event)

    def _landed(self, layer: Any, job: PredictJobResult, names: dict[str, str]) -> None:
        """Every result layer is in: say what was done."""
        where = "the stack" if job.slice_index is None else f"slice {job.slice_index}"
        if job.preview is not None:
            where = f"slice {job.preview} (preview of a lazy image)"
        elif layer.ndim == 2:
            where = "the image"
        n = len(job.checkpoints)
        msg = f"Predicted {where} with {n} model{'s' if n > 1 else ''}"
        if job.result.spread is not None and "disagreement" in names:
            msg += (f"; bright pixels in {names['disagreement']!r} (hidden: tick its eye) are "
                    "where to correct first")
        if self._kept is not None:
            kept = (f"your corrections in {self._kept!r} are kept; the new labels are in "
                    f"{names['labels']!r}")
            msg += f"; {kept}"
            notify_info("Your corrections are kept in their own layer")
        if self._hidden:
            msg += "; hidden so that label colours do not mix: " + ", ".join(
                repr(h) for h in self._hidden)
        for warning in getattr(job.result, "warnings", None) or []:  # far from training
            msg += f"\nWarning: {warning}"
            notify_warning("Some slices are far from what the model was trained on: see the "
                           "Predict dock")
        self.status_label.setText(msg)
        log.info(msg)
        if job.suggestions is not None:
            self._set_suggestions(layer, job.suggestions)
        self.finished.emit({"layers": names, "checkpoints": job.checkpoints,
                            "slice": job.slice_index if job.preview is None else job.preview})

    def _on_zarr_done(self, job: _ZarrJob) -> None:
        if self._dropped(f"the labels written to {job.labels_path} are not shown"):
            return
        target = self._target
        layer = target[0] if target else None
        if layer is None or layer not in self.viewer.layers:
            self.status_label.setText(
                f"The image layer was removed; the labels are in {job.labels_path}"
            )
            return
        try:
            names = self._show_zarr(layer, job)
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot show the prediction")
            return
        n = len(job.checkpoints)
        msg = (f"Predicted {'the image' if layer.ndim == 2 else 'the stack'} block by block "
               f"with {n} model{'s' if n > 1 else ''}; labels written to {job.labels_path}")
        report(self.status_label, msg, toast="Predicted block by block into OME-Zarr")
        self.finished.emit({"layers": names, "slice": None, "checkpoints": job.checkpoints,
                            "ome_zarr": str(job.labels_path)})

    # ------------------------------------------------------------------ next slice to annotate
    def _build_next_slice(self, root: Any) -> None:
        from napari.layers import Labels

        box = QGroupBox("Next slice to annotate")
        form = QFormLayout(box)
        self.painted_combo = LayerCombo(self.viewer, Labels, allow_none=True,
                                        none_text="(no labels layer)")
        self.painted_combo.setToolTip(
            "Your painted labels: slices holding any label here are never suggested (slices "
            "you corrected in the prediction's labels layer are skipped too)"
        )
        for layer in reversed(list(self.viewer.layers)):  # preselect the user's own labels
            if isinstance(layer, Labels) and RESULT_KEY not in layer.metadata:
                self.painted_combo.set_layer(layer)
                break
        form.addRow("Painted in", self.painted_combo)
        self.next_button = QPushButton("Next slice to annotate")
        self.next_button.setToolTip(
            "Go to the unpainted slice where the models are least sure (ensemble disagreement "
            "and undecided pixels of the last stack prediction) and zoom on its most uncertain "
            "region; click again for the next one"
        )
        self.next_button.setEnabled(False)
        self.next_button.clicked.connect(self._on_next_clicked)
        form.addRow(self.next_button)
        self.next_label = QLabel("Predict the stack to rank its slices")
        self.next_label.setWordWrap(True)
        form.addRow(self.next_label)
        self._suggestions: list[Any] = []
        self._suggest_image: Any | None = None
        self._skipped: set[int] = set()
        self._last_shown: int | None = None
        root.addWidget(box)

    def _set_suggestions(self, image_layer: Any, suggestions: list[Any]) -> None:
        self._suggestions, self._suggest_image = list(suggestions), image_layer
        self._skipped, self._last_shown = set(), None
        self.next_button.setEnabled(bool(self._suggestions))
        try:
            best = self.next_suggestion()
        except FcresError as exc:
            self.next_label.setText(f"Cannot rank the slices: {exc}")
            return
        self.next_label.setText(
            "Every slice is painted" if best is None else
            f"Next: slice {best.slice} ({best.reason})"
        )

    def _painted(self, image_layer: Any) -> set[int]:
        """Slices painted in the chosen labels layer or corrected in the prediction's labels."""
        from ..label_rules import annotated_slices

        depth = int(layer_source(image_layer).shape[0])
        out: set[int] = set()
        layers = [self.painted_combo.layer()]
        marker = {"image": image_layer.name, "kind": "labels"}
        layers += [la for la in self.viewer.layers if la.metadata.get(RESULT_KEY) == marker]
        for layer in {id(la): la for la in layers if la is not None}.values():
            data = np.asarray(layer_source(layer))
            if data.ndim != 3 or data.shape[0] != depth:
                raise InputError(f"labels layer {layer.name!r} has shape {data.shape}; it needs "
                                 f"{depth} slices like {image_layer.name!r}")
            ref = layer.metadata.get(METADATA_KEY, {}).get("reference")
            if ref is not None and np.shape(ref) == data.shape:  # a prediction: its corrections
                out.update(int(z) for z in np.flatnonzero(
                    (data != ref).reshape(depth, -1).any(axis=1)))
            else:
                out.update(annotated_slices(data))
        return out

    def next_suggestion(self) -> Any | None:
        """The best-ranked slice of the last stack prediction that is not painted (or None)."""
        layer = self._suggest_image
        if layer is None or layer not in self.viewer.layers:
            return None
        painted = self._painted(layer)
        left = [s for s in self._suggestions if s.slice not in painted]
        fresh = [s for s in left if s.slice not in self._skipped]
        if not fresh:  # every unpainted slice was shown once: start again from the top
            self._skipped.clear()
            fresh = left
        return fresh[0] if fresh else None

    def _on_next_clicked(self) -> None:
        try:
            self.go_to_next_slice()
        except FcresError as exc:
            report_error(self.next_label, exc, "Cannot suggest a slice")

    def go_to_next_slice(self) -> Any | None:
        """Show the next slice to annotate, zoomed on its most uncertain region; return it.

        Clicking again without painting the slice shown moves on to the next-ranked one.
        """
        best = self.next_suggestion()
        if best is not None and best.slice == self._last_shown:
            self._skipped.add(best.slice)
            best = self.next_suggestion()
        layer = self._suggest_image
        if best is None or layer is None:
            self.next_label.setText("Every slice is painted: nothing left to suggest"
                                    if layer is not None else "Predict the stack first")
            return None
        self._last_shown = best.slice
        y0, y1, x0, x1 = best.region
        centre = layer.data_to_world((best.slice, (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2))
        first = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(first, centre[0])
        if self.viewer.dims.ndisplay == 2 and list(self.viewer.dims.displayed) == [first + 1,
                                                                                 first + 2]:
            self.viewer.fit_to_view(layers=[layer])
            extent = np.ptp(np.asarray(layer.extent.world, dtype=float)[:, -2:], axis=0)
            size = np.abs(np.asarray(layer.scale, dtype=float)[-2:]) * (y1 - y0, x1 - x0)
            camera = getattr(self.viewer, "scene", self.viewer).camera  # napari >= 0.9: scene
            camera.center = (centre[1], centre[2])
            camera.zoom *= max(1.0, float(np.min(extent / np.maximum(size, 1e-12))))
        self.next_label.setText(f"Slice {best.slice}, region y {y0}-{y1}, x {x0}-{x1}: "
                                f"{best.reason}")
        log.info("next slice to annotate: %d (score %.4f)", best.slice, best.score)
        return best

    # ------------------------------------------------------------------ layers
    def _replace(self, kind: str, image_layer: Any) -> None:
        """Remove the layers an earlier prediction of this image made for ``kind``."""
        marker = {"image": image_layer.name, "kind": kind}
        for layer in list(self.viewer.layers):
            if layer.metadata.get(RESULT_KEY) == marker:
                self.viewer.layers.remove(layer)

    def _show_zarr(self, image_layer: Any, job: _ZarrJob) -> dict[str, str]:
        """Add the labels (and probabilities) read back lazily from the OME-Zarr output."""
        from ..ome_zarr import read_ome_zarr

        geo = _geometry(image_layer)
        names = layer_names(image_layer.name)
        shown: dict[str, str] = {}
        if job.probabilities_path is not None:
            levels, _ = read_ome_zarr(job.probabilities_path)
            self._replace("probability-zarr", image_layer)
            prob = self.viewer.add_image(
                levels[0], name=names["probability"], colormap="magma",
                contrast_limits=(0.0, 1.0), opacity=0.6, visible=False, **geo,
                metadata={RESULT_KEY: {"image": image_layer.name, "kind": "probability-zarr"},
                          "source_path": str(job.probabilities_path)},
            )
            shown["probability"] = prob.name
        levels, _ = read_ome_zarr(job.labels_path)
        self._replace("labels-zarr", image_layer)
        meta = {"checkpoints": job.checkpoints, "image_layer": image_layer.name,
                "threshold": THRESHOLD, "mode": job.mode, "ome_zarr": str(job.labels_path)}
        labels = self.viewer.add_labels(
            levels[0], name=names["labels"], opacity=0.5, **geo,
            metadata={RESULT_KEY: {"image": image_layer.name, "kind": "labels-zarr"},
                      METADATA_KEY: meta, "source_path": str(job.labels_path)},
        )
        shown["labels"] = labels.name
        return shown

    def _show_preview(self, image_layer: Any, job: PredictJobResult
                      ) -> Generator[None, None, dict[str, str]]:
        """Show one predicted slice of a lazy image as one-slice layers placed at that slice
        (one layer per step)."""
        z = int(job.preview or 0)
        geo = _geometry(image_layer)
        geo["translate"] = geo["translate"].copy()
        geo["translate"][0] += z * geo["scale"][0]
        names = layer_names(image_layer.name)
        data = {
            "probability": job.result.probabilities[None],
            "labels": job.labels[None],
        }
        shown: dict[str, str] = {}
        for kind, arr in data.items():
            yield
            marker = {"image": image_layer.name, "kind": f"{kind}-preview"}
            if kind == "labels":
                self._keep_edited(marker)
            self._replace(marker["kind"], image_layer)
            name = names[kind] + PREVIEW_SUFFIX
            if kind == "labels":
                layer = self.viewer.add_labels(arr, name=name, opacity=0.5, **geo)
                layer.metadata[METADATA_KEY] = {"reference": np.array(arr, copy=True)}
            else:
                layer = self.viewer.add_image(arr, name=name, colormap="magma",
                                              contrast_limits=(0.0, 1.0), opacity=0.6,
                                              visible=False, **geo)
            layer.metadata[RESULT_KEY] = marker
            shown[kind] = layer.name
        return shown

    def _hide_other_labels(self, image_layer: Any) -> None:
        """Hide the visible labels layers over ``image_layer`` (same shape, same place): new
        predicted labels on top of them would mix two label colourings."""
        from napari.layers import Labels

        shape = tuple(layer_source(image_layer).shape)
        for layer in self.viewer.layers:
            if (isinstance(layer, Labels) and layer.visible and not layer.multiscale
                    and tuple(layer.data.shape) == shape
                    and np.allclose(layer.scale, image_layer.scale)
                    and np.allclose(layer.translate, image_layer.translate)):
                layer.visible = False
                self._hidden.append(layer.name)

    def _keep_edited(self, marker: dict[str, str]) -> None:
        """Unmark (so that nothing replaces it) an edited labels layer carrying ``marker``."""
        for layer in list(self.viewer.layers):
            if layer.metadata.get(RESULT_KEY) == marker and _edited(layer, None):
                layer.metadata.pop(RESULT_KEY, None)
                self._kept = layer.name

    def _show(self, image_layer: Any, job: PredictJobResult
              ) -> Generator[None, None, dict[str, str]]:
        """Add or update the result layers, one per step (the shown labels first, then the
        hidden maps); return ``{kind: layer name}``.  Contrast limits are given, never
        computed from the data by napari."""
        z = job.slice_index
        res = job.result
        geo = _geometry(image_layer)
        shown: dict[str, str] = {}
        yield
        shown["labels"] = self._put_labels(job, image_layer, geo)
        yield
        shown["probability"] = self._put_image(
            "probability", image_layer, res.probabilities, z, geo, colormap="magma",
            contrast_limits=(0.0, 1.0), opacity=0.6, visible=False,
        )
        if res.spread is not None:
            yield
            shown["disagreement"] = self._put_image(
                "disagreement", image_layer, res.spread, z, geo, colormap="inferno",
                contrast_limits=(0.0, 0.25), blending="additive", visible=False,
            )
        if res.normalized is not None:
            yield
            norm_slice = res.normalized if z is None else res.normalized[z]
            lo, hi = _robust_range(norm_slice)
            shown["normalized"] = self._put_image(
                "normalized", image_layer, res.normalized, z, geo, colormap="gray",
                contrast_limits=(lo, hi), visible=False,
            )
        return {k: shown[k] for k in ("normalized", "probability", "disagreement", "labels")
                if k in shown}

    def _find(self, kind: str, image_layer: Any, cls: type, shape: tuple[int, ...]
              ) -> Any | None:
        """The layer an earlier prediction of this image made for ``kind``, if still usable.

        Layers are recognised by a marker in their metadata (not by name, so a user's own
        layer that happens to have the name is never overwritten); an outdated result layer
        of another shape or type is removed.
        """
        marker = {"image": image_layer.name, "kind": kind}
        for layer in list(self.viewer.layers):
            if layer.metadata.get(RESULT_KEY) != marker:
                continue
            if isinstance(layer, cls) and tuple(layer.data.shape) == tuple(shape) and not \
                    getattr(layer, "multiscale", False):
                return layer
            self.viewer.layers.remove(layer)
        return None

    def _put_image(self, kind: str, image_layer: Any, data: np.ndarray, z: int | None,
                   geo: dict[str, Any], **kwargs: Any) -> str:
        from napari.layers import Image

        layer = self._find(kind, image_layer, Image, data.shape)
        if layer is None:
            layer = self.viewer.add_image(
                data, name=layer_names(image_layer.name)[kind], **geo, **kwargs
            )
            layer.metadata[RESULT_KEY] = {"image": image_layer.name, "kind": kind}
            return layer.name
        if z is None:
            layer.data = data
        else:
            layer.data[z] = data[z]
            layer.refresh()
        layer.scale, layer.translate = geo["scale"], geo["translate"]
        return layer.name

    def _put_labels(self, job: PredictJobResult, image_layer: Any, geo: dict[str, Any]) -> str:
        from napari.layers import Labels

        shape = tuple(layer_source(image_layer).shape)
        z = job.slice_index
        layer = self._find("labels", image_layer, Labels, shape)
        if layer is not None and _edited(layer, z):
            # never overwrite corrections: that layer stays the user's, a new one is made
            layer.metadata.pop(RESULT_KEY, None)
            self._kept = layer.name
            log.info("labels layer %r was edited: predicting into a new layer", layer.name)
            layer = None
        meta = {"checkpoints": job.checkpoints, "image_layer": image_layer.name,
                "threshold": THRESHOLD, "mode": job.mode}
        if layer is None:
            full = job.labels if z is None else _embed(job.labels, z, shape)
            self._hide_other_labels(image_layer)
            layer = self.viewer.add_labels(
                full, name=layer_names(image_layer.name)["labels"], opacity=0.5, **geo
            )
            layer.metadata[RESULT_KEY] = {"image": image_layer.name, "kind": "labels"}
            meta["reference"] = np.array(full, copy=True)
            layer.metadata[METADATA_KEY] = meta
            return layer.name
        new = job.labels
        if z is not None and job.mode == "instances" and new.any():
            data = layer.data
            others = max(int(data[:z].max(initial=0)), int(data[z + 1:].max(initial=0)))
            new = np.where(new > 0, new + others, 0).astype(np.int32) if others else new
        # one undoable step: Ctrl+Z on the labels layer brings the previous labels back
        apply_labels(layer, new, z)
        layer.scale, layer.translate = geo["scale"], geo["translate"]
        old = layer.metadata.get(METADATA_KEY, {})
        reference = old.get("reference")
        if z is None or reference is None or tuple(reference.shape) != shape:
            reference = np.array(layer.data, copy=True)
        else:
            reference[z] = layer.data[z]
        meta["reference"] = reference
        layer.metadata[METADATA_KEY] = meta
        return layer.name


def _edited(layer: Any, z: int | None) -> bool:
    """True when the user changed the labels a prediction would overwrite (slice ``z``).

    Compares with the labels as predicted (``metadata["fcres"]["reference"]``); without a
    usable reference any non-zero label counts as an edit.
    """
    data = layer.data
    region = data if z is None else data[z]
    ref = layer.metadata.get(METADATA_KEY, {}).get("reference")
    if ref is None or tuple(np.shape(ref)) != tuple(data.shape):
        return bool(np.any(region))
    return not np.array_equal(region, ref if z is None else ref[z])


def _geometry(layer: Any) -> dict[str, np.ndarray]:
    """``scale`` and ``translate`` of ``layer`` (result layers sit on top of the image)."""
    return {"scale": np.asarray(layer.scale, dtype=float),
            "translate": np.asarray(layer.translate, dtype=float)}


def _spacing(layer: Any) -> tuple[float, ...] | None:
    """The layer scale as OME-Zarr voxel spacing (None when unusable)."""
    return layer_spacing(layer.scale, layer.ndim)


def _embed(slice_labels: np.ndarray, z: int, shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=slice_labels.dtype)
    full[z] = slice_labels
    return full


def _duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min"`` or ``"1 h 05 min"``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _robust_range(a: np.ndarray) -> tuple[float, float]:
    """0.5 / 99.5 percentiles of (a sample of) ``a`` as contrast limits."""
    flat = np.asarray(a, dtype=np.float32).ravel()
    if flat.size > 200_000:  # enough for two percentiles; the GUI thread waits for it
        flat = flat[:: flat.size // 200_000]
    lo, hi = (float(v) for v in np.percentile(flat, (0.5, 99.5)))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi
