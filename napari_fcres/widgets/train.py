"""Train / fine-tune dock widget: the pipeline of Drozdzal et al. on the layers in the viewer.

Training runs :func:`napari_fcres.jobs.train_job` in a spawned worker process (the widget's
:class:`~napari_fcres.widgets._job.WidgetJob`); the GUI thread only copies the layer data, plots
the progress and shows notifications.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QWidget,
)

from ..config import (
    ARCHITECTURE_CHOICES,
    KEEP_CHOICES,
    PRESET_HELP,
    PRESETS,
    SELECT_BY,
    Config,
    metric_name,
    preset_config,
    resolved_loss,
    validation_by_regions,
    validation_count,
    validation_words,
)
from ..errors import FcresError, InputError
from ..jobs import train_job
from ..labels_summary import LABEL_MODES, LabelSummary, detect_label_mode, summarize_labels
from ..runs import (
    ASIDE_INFIX,
    BEST_NAME,
    LAST_NAME,
    LAYOUT,
    default_output_dir,
    resume_request,
    run_checkpoints,
    runs_root,
    stored_config,
)
from ..runs import holds_run as _holds_run
from ..runs import is_resumable as _resumable
from ..runs import unused_dir as _unused
from ..train_config import build_train_config
from ..worker_process import STOP, WorkerProcessDied, cpu_threads_for_worker
from ._docks import tab_with_other_docks
from ._forms import DeviceCombo, LayerCombo, PathEdit, scroll_body
from ._job import WidgetJob, prestart_worker_process, start_worker
from ._layers import edit_events, is_lazy_layer, layer_data
from ._notify import WorkerFailed, notify_warning, report, report_error
from ._pickers import remember_checkpoints
from ._plot import TrainingPlot, loss_label, shown_loss

if TYPE_CHECKING:
    import napari

    from ..training import TrainProgress, TrainResult

log = logging.getLogger(__name__)

ARCHITECTURE_HELP = {
    "auto": "the plain UNet when fewer than 8 slices are painted (it learns more from a few "
            "slices in minutes of CPU), else the pipeline",
    "pipeline": "learned UNet pre-processor followed by the FC-ResNet (the paper's pipeline)",
    "fcresnet-standardize": "FC-ResNet on standardized input (baseline without pre-processor)",
    "fcresnet-rescale": "FC-ResNet on input rescaled to [0, 1] (baseline)",
    "fcresnet-raw": "FC-ResNet on the raw intensities, no pre-processing at all (ablation)",
    "unet": "plain UNet (baseline)",
}

#: Redraw the live plot at most this often (ms): drawing is the costly part on the GUI thread.
PLOT_INTERVAL_MS = 400
#: Recount the label values this long after the last paint stroke / undo (ms).
RECOUNT_MS = 400
#: Labels up to this many pixels are counted on the GUI thread, larger ones in a thread.
COUNT_AT_ONCE = 2_000_000
#: The label-mode choices: (mode, text shown, tooltip).
LABEL_MODE_ITEMS = (
    ("full", "full labels", LABEL_MODES["full"] + " (e.g. ISBI: 0 membrane, 255 cell)"),
    ("slices", "full labels, labelled slices only", LABEL_MODES["slices"]
     + " (e.g. 3 of 30 slices labelled 0 / 255)"),
    ("partial", "partial annotation (0 = not annotated)", LABEL_MODES["partial"]
     + " (as painted in napari)"),
)
QWIDGETSIZE_MAX = 16777215


def detect_partial(labels: np.ndarray, axis: int = 0) -> bool:
    """Guess whether labels are a partial annotation (0 = not annotated).

    True only for labels as painted in napari: exactly the values 0, 1 (background) and 2
    (foreground).  Slices without labels alone never make labels partial: that would turn a
    class labelled 0 (e.g. ISBI's membranes) into "not annotated"
    (:func:`~napari_fcres.labels_summary.detect_label_mode`).  ``axis`` is kept for
    compatibility.
    """
    return detect_label_mode(labels) == "partial"


def count_labels(labels: np.ndarray, mode: str | None) -> tuple[str, LabelSummary]:
    """``(mode, summary)``: the label values counted in ``mode`` (None: detected)."""
    mode = mode or detect_label_mode(labels)
    return mode, summarize_labels(labels, mode)


def validation_basis(
    n_slices: int, val_fraction: float, val_split: str = "auto", progress: Any = None,
) -> str:
    """What the validation scores of a run are based on, in words ("" when unknown).

    The run's own account (``progress.validation_basis``, when the training loop reports one)
    wins; before it, the words of the split training will make (the rule lives in
    :mod:`napari_fcres.config`, which imports no torch).
    """
    told = getattr(progress, "validation_basis", None)
    if told:
        return str(told)
    if progress is not None or n_slices < 1:
        return ""
    regions = validation_by_regions(n_slices, val_fraction, val_split)
    return validation_words(n_slices, validation_count(n_slices, val_fraction), regions)


def _rgb_error(name: str) -> InputError:
    return InputError(
        f"image {name!r} is an RGB (colour) image; training needs one grey-value channel: "
        "convert the layer to grey values (e.g. keep one channel) first"
    )


class TrainWidget(QWidget):
    """Train the pipeline (or a baseline) on an image layer and a labels layer.

    Public API:

    * :meth:`train_on` - start a run programmatically (used by the Export widget);
    * :meth:`stop` / :meth:`is_running`;
    * ``last_result`` (:class:`~napari_fcres.training.TrainResult` or None) and
      ``best_checkpoints`` (paths of the last run's best checkpoints);
    * signals ``finished(TrainResult)`` (also for stopped runs), ``failed(WorkerFailed)`` and
      ``progressed(TrainProgress)``.
    """

    finished = Signal(object)
    failed = Signal(object)
    progressed = Signal(object)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_other_docks(self, "Train")
        self.viewer = napari_viewer
        self.last_result: TrainResult | None = None
        self.best_checkpoints: list[Path] = []
        self.job = WidgetJob(self, "training run", on_state_changed=self._update_enabled,
                             on_stop_requested=self._on_stop_requested)
        self._mode_user_set = False
        self._watched: Any = None
        self.summary: LabelSummary | None = None
        self._plot_dir: Path | None = None
        self._latest: TrainProgress | None = None
        self._shown: TrainProgress | None = None
        self._ticking = False
        self._run_dir: Path | None = None
        self._loss = "dice"
        self._basis = ""  # what the validation of the running run is based on
        self._counting: object | None = None  # the label count running in a thread
        self._build()
        self._plot_timer = QTimer(self)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._tick)
        self._recount_timer = QTimer(self)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(RECOUNT_MS)
        self._recount_timer.timeout.connect(self._refresh_summary)
        self._on_labels_changed()
        self._update_enabled()
        prestart_worker_process()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from napari.layers import Image, Labels

        root = scroll_body(self)

        # data
        data_box = QGroupBox("Data")
        form = QFormLayout(data_box)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip("Image layer to learn from (2-D image or 3-D stack)")
        form.addRow("Image", self.image_combo)
        self.labels_combo = LayerCombo(self.viewer, Labels)
        self.labels_combo.setToolTip(
            "Labels layer of the same shape: full labels (two values, the larger is "
            "foreground) or a partial annotation (0 = not annotated, 1 = background/"
            "membrane, 2 = foreground)"
        )
        self.labels_combo.layer_changed.connect(self._on_labels_changed)
        form.addRow("Labels", self.labels_combo)
        self.label_mode_combo = QComboBox()
        for i, (mode, text, tip) in enumerate(LABEL_MODE_ITEMS):
            self.label_mode_combo.addItem(text, mode)
            self.label_mode_combo.setItemData(i, tip, Qt.ToolTipRole)
        self.label_mode_combo.setToolTip(
            "What the label values mean.  " + "  ".join(
                f"{text}: {tip}." for _, text, tip in LABEL_MODE_ITEMS)
            + "  Chosen from the labels (partial only for painted 0 / 1 / 2) until you "
            "change it; the counts below show what training will see."
        )
        self.label_mode_combo.activated.connect(self._on_mode_chosen)
        form.addRow("Label values", self.label_mode_combo)
        self.annotated_label = QLabel("")
        self.annotated_label.setWordWrap(True)
        self.annotated_label.setTextFormat(Qt.RichText)
        self.annotated_label.setToolTip(
            "Pixels per role on the slices training uses: unlabeled (ignored), background "
            "and foreground, with the label values of each; problems (red) stop Start, "
            "warnings (orange) say what to check"
        )
        form.addRow(self.annotated_label)
        root.addWidget(data_box)

        # model
        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.preset_combo = QComboBox()
        for i, name in enumerate(PRESETS):
            self.preset_combo.addItem(name)
            self.preset_combo.setItemData(i, PRESET_HELP.get(name, ""), Qt.ToolTipRole)
        self.device_combo = DeviceCombo()  # laid out below; it decides the default preset
        self.preset_combo.setCurrentText("small" if self.device_combo.has_gpu() else "cpu")
        self._preset_defaulted = True  # until someone chooses: "small" once a GPU shows up
        self.preset_combo.currentTextChanged.connect(self._on_preset_changed)
        self.device_combo.devices_changed.connect(self._on_devices_listed)
        form.addRow("Preset", self.preset_combo)
        self.arch_combo = QComboBox()
        for i, name in enumerate(ARCHITECTURE_CHOICES):
            self.arch_combo.addItem(name)
            self.arch_combo.setItemData(i, ARCHITECTURE_HELP.get(name, ""), Qt.ToolTipRole)
        self.arch_combo.setCurrentText("auto")
        self.arch_combo.currentTextChanged.connect(self._on_arch_changed)
        form.addRow("Architecture", self.arch_combo)

        self.scratch_radio = QRadioButton("from scratch")
        self.scratch_radio.setToolTip("Start from randomly initialised weights")
        self.finetune_radio = QRadioButton("fine-tune checkpoint")
        self.finetune_radio.setToolTip(
            "Start from trained weights (the preset and architecture then come from the "
            "checkpoint)"
        )
        self.scratch_radio.setChecked(True)
        self._start_group = QButtonGroup(self)
        self._start_group.addButton(self.scratch_radio)
        self._start_group.addButton(self.finetune_radio)
        self.finetune_radio.toggled.connect(self._update_enabled)
        row = QHBoxLayout()
        row.addWidget(self.scratch_radio)
        row.addWidget(self.finetune_radio)
        form.addRow("Start", row)
        self.checkpoint_edit = PathEdit(
            "file", filter="Checkpoints (*.pt);;All files (*)",
            placeholder=f"{BEST_NAME} of an earlier run",
            tooltip=f"Checkpoint to fine-tune (a {BEST_NAME} or {LAST_NAME} written by "
            "napari-fcres)",
        )
        form.addRow("Checkpoint", self.checkpoint_edit)
        self.freeze_check = QCheckBox("Adapt only the pre-processor")
        self.freeze_check.setToolTip(
            "Freeze the FC-ResNet and train only the learned pre-processor: adapts a trained "
            "pipeline to a new microscope or scanner from few labels"
        )
        form.addRow(self.freeze_check)
        root.addWidget(model_box)

        # budget
        budget_box = QGroupBox("Budget and output")
        form = QFormLayout(budget_box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 100000)
        self.epochs_spin.setValue(0)
        self.epochs_spin.setSpecialValueText("no limit")
        self.epochs_spin.setToolTip(
            "Maximum number of epochs per ensemble member (0 = no limit: the time limit ends "
            "the run, or 200 epochs without one)")
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.0, 100000.0)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setValue(10.0)
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setSpecialValueText("no limit")
        self.minutes_spin.setToolTip(
            "Wall-clock budget of the whole run, shared by the ensemble members (0 = no limit); "
            "training ends at whichever of epochs and minutes comes first"
        )
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Time limit", self.minutes_spin)
        self.ensemble_spin = QSpinBox()
        self.ensemble_spin.setRange(1, 20)
        self.ensemble_spin.setValue(1)
        self.ensemble_spin.setToolTip(
            "Number of models trained on different train/validation splits; their averaged "
            "prediction is more accurate and gives an uncertainty map"
        )
        form.addRow("Ensemble", self.ensemble_spin)
        self.device_combo.setToolTip("Compute device (CUDA GPUs by name, Apple MPS, CPU)")
        form.addRow("Device", self.device_combo)
        self.output_edit = PathEdit(
            "folder",
            tooltip=f"Folder of the run: {LAYOUT}.  Start never overwrites a run: on a "
            "folder that holds one it asks whether to resume it or to move it aside and "
            "start over; Resume continues the run here.",
        )
        self._setting_output = False
        self.output_edit.set_path(default_output_dir())
        self.output_edit.changed.connect(self._update_enabled)
        self.output_edit.changed.connect(self._on_output_changed)
        form.addRow("Output", self.output_edit)
        root.addWidget(budget_box)

        # advanced
        from superqt import QCollapsible

        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        form = QFormLayout(adv)
        self.crop_spin = QSpinBox()
        self.crop_spin.setRange(16, 2048)
        self.crop_spin.setSingleStep(16)
        self.crop_spin.setValue(256)
        self.crop_spin.setToolTip(
            "Side of the square training crops in pixels (at most the slice size; larger "
            "crops see more context but need more memory)"
        )
        form.addRow("Crop size", self.crop_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setToolTip("Crops per optimisation step; lower it when out of memory")
        form.addRow("Batch size", self.batch_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-3)
        self.lr_spin.setToolTip("RMSprop learning rate (the paper: 0.001)")
        form.addRow("Learning rate", self.lr_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.0, 0.9)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.2)
        self.val_spin.setToolTip(
            "Fraction of the annotated slices held out to pick the best epoch"
        )
        form.addRow("Validation", self.val_spin)
        self.patience_spin = QSpinBox()
        self.patience_spin.setRange(0, 1000000)
        self.patience_spin.setValue(1000)
        self.patience_spin.setSpecialValueText("never")
        self.patience_spin.setSuffix(" steps")
        self.patience_spin.setToolTip(
            "Stop a member when its validation score has not improved for this many "
            "optimisation steps (0 = never): the same meaning for 3 painted slices as for 300"
        )
        form.addRow("Patience", self.patience_spin)
        self.select_combo = QComboBox()
        self.select_combo.addItems(list(SELECT_BY))
        self.select_combo.setToolTip(
            "Validation score that keeps the best model: 'v_rand' (ISBI Rand score, for "
            "cells separated by membranes), 'dice', or 'auto' (v_rand when the labels are "
            "many touching cells, else dice)"
        )
        form.addRow("Keep best by", self.select_combo)
        self.keep_combo = QComboBox()
        self.keep_combo.addItems(list(KEEP_CHOICES))
        self.keep_combo.setToolTip(
            "The model the run keeps for prediction: 'best' (best validation score), 'final' "
            "(the end of the run, the moving average of the weights when there is one) or "
            "'auto' (final with fewer than 8 painted slices of membrane EM, whose V_rand on a "
            "validation band is too rough to pick a checkpoint by; else best)"
        )
        form.addRow("Keep model", self.keep_combo)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Random seed (splits, crops, initial weights)")
        form.addRow("Seed", self.seed_spin)
        self.advanced.addWidget(adv)
        self.advanced.setToolTip("Crop size, batch size, learning rate, validation, seed")
        root.addWidget(self.advanced)

        # buttons
        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Train into a fresh output folder")
        self.start_button.clicked.connect(self._on_start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip(
            f"End training at the next step; {BEST_NAME} and a resumable {LAST_NAME} are kept"
        )
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            f"Continue the run in the output folder from its {LAST_NAME} (e.g. after Stop or a "
            "crash) with the run's stored settings; only epochs, time limit, patience and "
            "device may differ.  Choosing a run's folder shows its settings."
        )
        self.resume_button.clicked.connect(self._on_resume)
        for b in (self.start_button, self.stop_button, self.resume_button):
            row.addWidget(b)
        root.addLayout(row)

        self.status_label = QLabel("Ready")
        self.status_label.setWordWrap(True)
        self.status_label.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        # a fixed height during a run: a label that grows by a line would resize (and fully
        # redraw) the plot; between runs it grows to show a whole message
        self._status_height = self.status_label.fontMetrics().lineSpacing() * 3 + 4
        self.status_label.setMinimumHeight(self._status_height)
        self.status_label.setToolTip("State of the current or last run")
        root.addWidget(self.status_label)

        self.plot = TrainingPlot(self.viewer)
        root.addWidget(self.plot.widget, 1)
        self._on_preset_changed(self.preset_combo.currentText())
        self._preset_defaulted = True
        self._on_arch_changed(self.arch_combo.currentText())

    # ------------------------------------------------------------------ state
    def is_running(self) -> bool:
        """True while a training worker runs."""
        return self.job.running

    def _update_enabled(self, *_: Any) -> None:
        running = self.is_running()
        for w in (
            self.image_combo, self.labels_combo, self.label_mode_combo, self.preset_combo,
            self.arch_combo, self.scratch_radio, self.finetune_radio, self.epochs_spin,
            self.minutes_spin, self.ensemble_spin, self.device_combo, self.output_edit,
            self.advanced,
        ):
            w.setEnabled(not running)
        finetune = self.finetune_radio.isChecked()
        self.checkpoint_edit.setEnabled(not running and finetune)
        self.freeze_check.setEnabled(not running and finetune)
        self.preset_combo.setEnabled(not running and not finetune)
        self.arch_combo.setEnabled(not running and not finetune)
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running and not self.job.stopping)
        out = Path(self.output_edit.path()) if self.output_edit.path() else None
        done = self.last_result
        finished_here = done is not None and not done.stopped and Path(done.out_dir) == out
        self.resume_button.setEnabled(
            not running and out is not None and _resumable(out) and not finished_here
        )

    def _on_devices_listed(self) -> None:
        """The device list came: a GPU makes "small" the default preset (unless chosen)."""
        if self._preset_defaulted and self.device_combo.has_gpu():
            self.preset_combo.setCurrentText("small")
            self._preset_defaulted = True

    def _on_preset_changed(self, preset: str) -> None:
        self._preset_defaulted = False
        if preset in PRESETS:
            self.batch_spin.setValue(preset_config(preset).train.batch_size)
            self.preset_combo.setToolTip(
                f"Model size.  {preset}: {PRESET_HELP.get(preset, '')}"
            )

    def _on_arch_changed(self, arch: str) -> None:
        self.arch_combo.setToolTip(
            f"Network to train.  {arch}: {ARCHITECTURE_HELP.get(arch, '')}"
        )

    # ------------------------------------------------------------------ label values
    def label_mode(self) -> str:
        """The chosen meaning of the label values: "full", "slices" or "partial"."""
        return str(self.label_mode_combo.currentData() or "full")

    def set_label_mode(self, mode: str, *, user: bool = True) -> None:
        """Choose the label mode (``user``: keep it when the labels change)."""
        index = self.label_mode_combo.findData(mode)
        if index < 0:
            raise InputError(f"unknown label mode {mode!r}; choose one of "
                             f"{', '.join(LABEL_MODES)}")
        self.label_mode_combo.setCurrentIndex(index)
        if user:
            self._mode_user_set = True
        self._refresh_summary()

    def _on_mode_chosen(self, *_: Any) -> None:
        self._mode_user_set = True
        self._refresh_summary()

    def _on_labels_changed(self, *_: Any) -> None:
        layer = self.labels_combo.layer()
        if layer is not self._watched:
            self._mode_user_set = False  # a new layer: its values decide again
            self._watch(layer)
        self._refresh_summary()

    def _watch(self, layer: Any) -> None:
        """Recount after painting, undo / redo and data changes of the chosen layer."""
        old, self._watched = self._watched, layer
        for ev in edit_events(old):
            try:
                ev.disconnect(self._schedule_recount)
            except (TypeError, ValueError, RuntimeError):
                pass
        for ev in edit_events(layer):
            ev.connect(self._schedule_recount)

    def _schedule_recount(self, *_: Any) -> None:
        layer = self._watched
        if not self.is_running() and layer is not None and not is_lazy_layer(layer):
            self._recount_timer.start()  # lazy (dask / zarr) labels: counted on choice only

    def _refresh_summary(self, *, wait: bool = False) -> None:
        """Count the label values of the chosen layer in the chosen (or detected) mode.

        Small labels are counted at once; larger ones (a 30-slice stack: tens of ms or more)
        in a thread, so that choosing the layer or pausing a brush stroke never freezes the
        viewer.  ``wait`` counts at once whatever the size (before a run starts).
        """
        self._recount_timer.stop()
        layer = self.labels_combo.layer()
        if layer is None:
            self._counting = None
            self.summary = None
            self.annotated_label.setText("")
            return
        try:
            labels = layer_data(layer)
        except (ValueError, MemoryError, FcresError) as exc:
            self._counted(None, exc)
            return
        mode = self.label_mode() if self._mode_user_set else None
        if wait or labels.size <= COUNT_AT_ONCE:
            self._counting = None
            try:
                self._counted(count_labels(labels, mode))
            except (ValueError, MemoryError, FcresError) as exc:
                self._counted(None, exc)
            return
        token = object()
        self._counting = token
        self.annotated_label.setText(f"counting the label values of {layer.name!r} ...")

        def done(counted: tuple[str, LabelSummary]) -> None:
            if self._counting is token:  # else a newer count is on its way
                self._counting = None
                with contextlib.suppress(RuntimeError):  # the widget is gone
                    self._counted(counted)

        def failed(exc: WorkerFailed) -> None:
            if self._counting is token:
                self._counting = None
                with contextlib.suppress(RuntimeError):
                    self._counted(None, exc)

        start_worker(count_labels, labels, mode, on_done=done, on_error=failed)

    def _counted(self, counted: tuple[str, LabelSummary] | None,
                 error: BaseException | None = None) -> None:
        """Show a count (or why there is none); a detected mode becomes the choice."""
        if counted is None:
            self.summary = None
            message = getattr(error, "message", None) or str(error)
            self.annotated_label.setText(f"cannot count the label values: {message}")
            return
        mode, summary = counted
        if not self._mode_user_set:
            self.label_mode_combo.setCurrentIndex(
                max(0, self.label_mode_combo.findData(mode)))
        self.show_summary(summary)

    def show_summary(self, summary: LabelSummary) -> None:
        """Show counts, problems (red) and warnings (orange) under the labels."""
        import html

        self.summary = summary
        lines = [html.escape(summary.counts_text())]
        left_out = summary.n_slices - len(summary.annotated)
        if left_out > 0:
            n = len(summary.annotated)
            lines.append(html.escape(
                f"(% of the pixels on {'that slice' if n == 1 else f'those {n} slices'}; the "
                f"other {left_out} slice{'s' if left_out > 1 else ''} hold no labels and "
                f"{'is' if left_out == 1 else 'are'} left out)"))
        lines += [f"<span style='color:#ff6b6b'>✖ {html.escape(p)}</span>"
                  for p in summary.problems]
        lines += [f"<span style='color:#f0a030'>⚠ {html.escape(w)}</span>"
                  for w in summary.warnings]
        self.annotated_label.setText("<br>".join(lines))

    # ------------------------------------------------------------------ config
    def build_config(self, *, partial: bool, slice_shape: tuple[int, int] | None = None,
                     freeze_fcresnet: bool | None = None) -> Config:
        """The run's :class:`Config` from the widget's settings (one builder with the CLI)."""
        crop = self.crop_spin.value()
        if slice_shape is not None and crop > min(slice_shape):
            crop = int(min(slice_shape))
            log.info("crop size lowered to %d to fit slices of %s", crop, slice_shape)
        minutes = self.minutes_spin.value()
        freeze = self.freeze_check.isChecked() if freeze_fcresnet is None else freeze_fcresnet
        return build_train_config(
            preset=self.preset_combo.currentText(),
            architecture=self.arch_combo.currentText(),
            epochs=self.epochs_spin.value() or None,
            max_minutes=minutes if minutes > 0 else None,
            ensemble=self.ensemble_spin.value(),
            device=str(self.device_combo.currentData() or "cpu"),
            batch_size=self.batch_spin.value(),
            crop_size=crop,
            lr=self.lr_spin.value(),
            val_fraction=self.val_spin.value(),
            patience_steps=self.patience_spin.value(),
            select_by=self.select_combo.currentText(),
            keep=self.keep_combo.currentText(),
            seed=self.seed_spin.value(),
            freeze_fcresnet=bool(freeze),
            partial=partial,
        )

    def _resume_overrides(self, cfg: Config, slice_shape: tuple[int, int]) -> dict[str, Any]:
        """The settings this widget shows, as a partial config to lay over a stored run."""
        t = cfg.train
        keys = ("epochs", "max_minutes", "ensemble", "device", "batch_size", "lr",
                "val_fraction", "patience_steps", "select_by", "keep", "seed",
                "freeze_fcresnet")
        train = {k: getattr(t, k) for k in keys}
        if self.crop_spin.value() <= min(slice_shape):  # else "as large as fits", as stored
            train["crop_size"] = t.crop_size
        out: dict[str, Any] = {"train": train, "data": {"partial": cfg.data.partial}}
        if not self.finetune_radio.isChecked():  # fine-tuned: the model came from a file
            out["model"] = {"preset": cfg.model.preset, "architecture": cfg.model.architecture}
        return out

    def show_settings(self, cfg: Config) -> None:
        """Set the controls to a run's config (so Resume asks for what the run has)."""
        if cfg.model.preset in PRESETS:
            self.preset_combo.setCurrentText(cfg.model.preset)  # resets the batch size
        self.arch_combo.setCurrentText(cfg.model.architecture)
        t = cfg.train
        self.epochs_spin.setValue(t.epochs or 0)
        self.minutes_spin.setValue(t.max_minutes or 0.0)
        self.ensemble_spin.setValue(t.ensemble)
        self.crop_spin.setValue(t.crop_size)
        self.batch_spin.setValue(t.batch_size)
        self.lr_spin.setValue(t.lr)
        self.val_spin.setValue(t.val_fraction)
        self.patience_spin.setValue(t.patience_steps)
        self.select_combo.setCurrentText(t.select_by)
        self.keep_combo.setCurrentText(t.keep)
        self.seed_spin.setValue(t.seed)
        self.freeze_check.setChecked(t.freeze_fcresnet)

    def _set_output(self, path: str | Path) -> None:
        """Set the output folder from code (a user's choice loads a run's settings)."""
        self._setting_output = True
        try:
            self.output_edit.set_path(path)
        finally:
            self._setting_output = False

    def _on_output_changed(self, *_: Any) -> None:
        if self._setting_output or self.is_running():
            return
        out = Path(self.output_edit.path()) if self.output_edit.path() else None
        if out is None or not _resumable(out):
            return
        try:
            cfg = stored_config(out)
        except FcresError as exc:
            log.warning("cannot read the settings of %s: %s", out, exc)
            return
        self.show_settings(cfg)
        self.status_label.setText(f"Settings of the run in {out}: Resume continues it")

    # ------------------------------------------------------------------ actions
    def _on_start(self) -> None:
        self._launch(resume=False)

    def _on_resume(self) -> None:
        self._launch(resume=True)

    def _launch(self, resume: bool) -> None:
        try:
            overwrite = False
            if not resume:  # Start on a chosen folder that holds a run: ask what to do
                choice = self._ask_about_existing_run()
                if choice == "cancel":
                    return
                resume, overwrite = choice == "resume", choice == "overwrite"
            if self.finetune_radio.isChecked() and not self.checkpoint_edit.path() and not resume:
                raise InputError("choose the checkpoint to fine-tune (or start from scratch)")
            self._start_run(
                self.image_combo.layer(), self.labels_combo.layer(), resume=resume,
                overwrite=overwrite,
                init_checkpoint=(
                    self.checkpoint_edit.path() or None
                    if self.finetune_radio.isChecked() else None
                ),
                label_mode=self._current_label_mode(),
            )
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot start training")

    def _ask_about_existing_run(self) -> str:
        """``"new"`` unless the chosen output folder holds a run; else the user's choice.

        The question offers Resume (when the run is resumable), starting over with the old
        run moved aside (:func:`~napari_fcres.runs.move_aside`, nothing deleted) and Cancel.
        A default folder under ``~/.napari-fcres/runs`` is never asked about: Start takes a
        fresh one instead.
        """
        text = self.output_edit.path()
        out = Path(text).expanduser() if text else None
        if out is None or out.parent == runs_root() or not run_checkpoints(out):
            return "new"
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Question)
        box.setWindowTitle("The output folder holds a run")
        box.setText(f"{out} already holds a training run.")
        box.setInformativeText(
            "Resume it, or start over: the old run is then moved to "
            f"{out.name}{ASIDE_INFIX}DATE-TIME beside it (nothing is deleted)."
        )
        buttons = {}
        if _resumable(out):
            buttons[box.addButton("Resume", QMessageBox.AcceptRole)] = "resume"
        buttons[box.addButton("Start over (move old run aside)",
                              QMessageBox.DestructiveRole)] = "overwrite"
        cancel = box.addButton(QMessageBox.Cancel)
        box.setDefaultButton(cancel)
        box.exec_()
        return buttons.get(box.clickedButton(), "cancel")

    def _current_label_mode(self) -> str:
        """The mode shown, after counting any pending paint strokes."""
        if self._recount_timer.isActive() or self.summary is None or self._counting is not None:
            self._refresh_summary(wait=True)
        return self.label_mode()

    def train_on(
        self,
        image_layer: Any,
        labels_layer: Any,
        *,
        slices: list[int] | None = None,
        init_checkpoint: str | None = None,
        freeze_fcresnet: bool = False,
        output_dir: str | None = None,
        partial: bool | None = None,
        label_mode: str | None = None,
        labels_data: np.ndarray | None = None,
    ) -> None:
        """Train on two layers with the widget's other settings (the Export widget's hook).

        ``slices`` restricts training to those indices along the first axis of a stack;
        ``init_checkpoint`` fine-tunes those weights (``freeze_fcresnet``: adapt only the
        pre-processor); ``output_dir`` defaults to a fresh folder under
        ``~/.napari-fcres/runs``; ``label_mode`` ("full", "slices" or "partial"; or the older
        ``partial`` flag; None: detect) says what the values mean; ``labels_data`` trains on
        these values instead of the layer's (e.g. a foreground mask of instance labels; no
        extra layer is added).  Returns at once; ``finished`` / ``failed`` report the end.
        Raises :class:`FcresError` when a run is already active or the inputs cannot be used
        (e.g. labels without any background).
        """
        self.job.check_idle()
        if init_checkpoint:
            self.finetune_radio.setChecked(True)
            self.checkpoint_edit.set_path(init_checkpoint)
        else:
            self.scratch_radio.setChecked(True)
        self.freeze_check.setChecked(bool(freeze_fcresnet))
        if output_dir is not None:
            self._set_output(output_dir)
        self._start_run(
            image_layer, labels_layer, resume=False, init_checkpoint=init_checkpoint,
            slices=slices, freeze_fcresnet=freeze_fcresnet, partial=partial,
            output_dir=Path(output_dir).expanduser() if output_dir else None,
            label_mode=label_mode, labels_data=labels_data,
        )

    def _start_run(
        self,
        image_layer: Any,
        labels_layer: Any,
        *,
        resume: bool,
        overwrite: bool = False,
        init_checkpoint: str | None = None,
        slices: Sequence[int] | None = None,
        freeze_fcresnet: bool | None = None,
        partial: bool | None = None,
        output_dir: Path | None = None,
        label_mode: str | None = None,
        labels_data: np.ndarray | None = None,
    ) -> None:
        self.job.check_idle()
        if image_layer is None:
            raise InputError("choose an image layer to train on")
        if labels_layer is None:
            raise InputError("choose a labels layer (add one and paint some labels)")
        self.image_combo.set_layer(image_layer)
        self.labels_combo.set_layer(labels_layer)
        if getattr(image_layer, "rgb", False):  # before the shapes: (y, x, 3) vs (y, x)
            raise _rgb_error(image_layer.name)
        image = layer_data(image_layer)
        source = layer_data(labels_layer) if labels_data is None else labels_data
        labels = np.array(source, copy=True)  # painting may go on
        if (image.ndim == labels.ndim + 1 and image.shape[-1] in (3, 4)
                and image.shape[:-1] == labels.shape):
            raise _rgb_error(image_layer.name)
        if image.shape != labels.shape:
            raise InputError(
                f"image {image_layer.name!r} has shape {image.shape} but labels "
                f"{labels_layer.name!r} have shape {labels.shape}; they must match"
            )
        if slices is not None:
            if image.ndim != 3:
                raise InputError("slices can only be chosen in a 3-D stack")
            index = sorted({int(s) for s in slices})
            if not index or index[0] < 0 or index[-1] >= image.shape[0]:
                raise InputError(
                    f"slices {list(slices)} are out of range for {image.shape[0]} slices"
                )
            image = np.take(image, index, axis=0)
            labels = np.take(labels, index, axis=0)
        if label_mode is None:
            label_mode = (detect_label_mode(labels) if partial is None
                          else "partial" if partial else "full")
        if label_mode not in LABEL_MODES:
            raise InputError(f"unknown label mode {label_mode!r}; choose one of "
                             f"{', '.join(LABEL_MODES)}")
        summary = summarize_labels(labels, label_mode)
        self.label_mode_combo.setCurrentIndex(self.label_mode_combo.findData(label_mode))
        self.show_summary(summary)
        if not summary.ok:
            raise InputError("; ".join(summary.problems))
        if label_mode == "slices" and image.ndim == 3 and len(summary.annotated) < len(image):
            image = np.take(image, summary.annotated, axis=0)
            labels = np.take(labels, summary.annotated, axis=0)
        partial = label_mode == "partial"
        if init_checkpoint and not Path(init_checkpoint).expanduser().exists():
            raise InputError(f"checkpoint not found: {init_checkpoint}")

        out = output_dir or (Path(self.output_edit.path()) if self.output_edit.path() else None)
        if resume:
            if out is None:
                raise InputError("choose the output folder of the run to resume")
            stored_config(out)  # "nothing to resume in ..." when it holds no resumable save
        else:
            if out is None:
                out = default_output_dir()
            elif _holds_run(out) and not overwrite:
                # never overwrite a run: a fresh default folder, or a numbered sibling
                out = default_output_dir() if out.parent == runs_root() else _unused(out)
        self._set_output(out)

        cfg = self.build_config(
            partial=bool(partial), slice_shape=image.shape[-2:], freeze_fcresnet=freeze_fcresnet
        )
        if resume:  # the run's stored config with these settings over it (one rule)
            cfg = resume_request(out, self._resume_overrides(cfg, image.shape[-2:]))
        if init_checkpoint:
            init_checkpoint = str(Path(init_checkpoint).expanduser())

        self._latest = self._shown = None
        if not (resume and self._plot_dir == out):
            self._reset_plot_data()
            select = cfg.train.select_by
            loss = resolved_loss(cfg.train.loss, len(summary.annotated))
            self._setup_axes(loss=loss, metric=None if select == "auto" else select)
        fresh_plot = not (resume and self._plot_dir == out)
        self._plot_dir = out
        self._run_dir = out
        desc = f"Training {cfg.model.preset} {cfg.model.architecture}"
        verb = "Resuming" if resume else "Starting"
        self._basis = validation_basis(len(summary.annotated), cfg.train.val_fraction,
                                       cfg.train.val_split)
        aside = " (its previous run is moved aside)" if overwrite else ""
        self.status_label.setText(f"{verb} training into {out}{aside} ({self._basis}) ...")
        log.info("%s training into %s (labels: %s, %s; slices=%s)", verb.lower(), out,
                 label_mode, summary.counts_text(), None if slices is None else list(slices))
        if summary.warnings:  # in full (orange) under the labels; the toast only points there
            notify_warning("Training starts, but check the labels (see the Train dock)")
            log.warning("check the labels: %s", " ".join(summary.warnings))
        self.status_label.setFixedHeight(self._status_height)
        self._plot_timer.start()
        self.job.start(
            train_job, cfg, image, labels, out, resume, init_checkpoint, STOP, overwrite,
            threads=cpu_threads_for_worker(), progress_desc=desc,
            on_yield=self._on_progress, on_done=self._on_done, on_error=self._on_error,
            on_finished=self._on_finished,
        )
        if fresh_plot:  # after the start: napari's new progress bar runs the event loop,
            self.plot.draw()  # which would do this full draw inside the click (measured)

    def stop(self) -> None:
        """End the run at the next step (its best and resumable checkpoints are kept).

        Closing the dock stops it too.
        """
        self.job.stop()

    def _on_stop_requested(self) -> None:
        self.status_label.setText("Stopping at the next step ...")

    # ------------------------------------------------------------------ worker callbacks
    def _on_progress(self, p: TrainProgress) -> None:
        # Only record here: napari's progress bar calls processEvents() when updated, which
        # would deliver later reports re-entrantly; the GUI is refreshed by the timer (_tick).
        self._latest = p
        self.plot.set_metric(p.metric)
        score = p.val_score if p.val_score is not None else p.val_dice
        if p.kind == "step" and p.loss is not None:
            self.plot.add_step(p.member, p.step, p.loss)
        elif p.kind == "validation" and score is not None:
            self.plot.add_validation(p.member, p.step, score)
        self.progressed.emit(p)

    def _tick(self, force: bool = False) -> None:
        """Refresh status, progress bar and plot from the latest report (timer-driven)."""
        if self._ticking:
            return
        self._ticking = True
        try:
            p = self._latest
            if p is not None and p.kind in ("step", "validation") and (
                force or p is not self._shown
            ):
                self._shown = p
                self.status_label.setText(self._status_text(p))
                self.job.set_progress(
                    p.fraction,
                    f"Training member {p.member + 1}/{p.n_members}, step {p.step}",
                )
            self._redraw(force)
        finally:
            self._ticking = False

    def _status_text(self, p: TrainProgress) -> str:
        parts = []
        if p.n_members > 1:
            parts.append(f"member {p.member + 1}/{p.n_members}")
        epoch = p.epoch + 1 if p.kind == "step" else p.epoch
        parts.append(f"epoch {min(epoch, p.epochs)}/{p.epochs}" if p.epochs else f"epoch {epoch}")
        parts.append(f"step {p.step}")
        if p.loss is not None:
            parts.append(f"loss ({loss_label(self._loss)}) {shown_loss(p.loss):.4f}")
        if p.best_val_dice is not None:
            parts.append(f"best val {metric_name(p.metric)} {p.best_val_dice:.3f} "
                         f"(step {p.best_step})")
        parts.append(f"{int(p.elapsed) // 60}:{int(p.elapsed) % 60:02d} elapsed")
        basis = validation_basis(0, 0.0, "auto", p) or self._basis
        if basis:
            parts.append(basis)
        return " · ".join(parts)

    def _on_done(self, result: TrainResult) -> None:
        self.last_result = result
        self.best_checkpoints = [Path(p) for p in result.best_checkpoints if Path(p).exists()]
        remember_checkpoints(self.best_checkpoints)
        dice = ", ".join(f"{d:.3f}" for d in result.best_val_dice if d is not None and d >= 0)
        state = "stopped" if result.stopped else "finished"
        where = self.best_checkpoints[0] if len(self.best_checkpoints) == 1 else result.out_dir
        name = metric_name(result.metric)
        final = result.kept == "final"
        best = f"{'final' if final else 'best'} validation {name} {dice or 'n/a'}"
        if result.moved_aside is not None:
            where = f"{where}; the previous run is in {result.moved_aside}"
        basis = f" ({self._basis})" if self._basis else ""
        self.status_label.setMaximumHeight(QWIDGETSIZE_MAX)
        if result.warnings:  # e.g. no better than predicting one class everywhere
            msg = (f"Training {state}, but " + "; ".join(result.warnings).rstrip(".")
                   + f".  ({best}; checkpoint: {where}){basis}")
            first = result.warnings[0].split(":")[0]
            report(self.status_label, msg, toast=f"Training {state}, but {first}",
                   level="warning")
        else:
            model = "final model" if final else "best model"
            msg = f"Training {state}: {best}{basis}; {model}: {where}"
            report(self.status_label, msg,
                   toast=f"Training {state}: {'final' if final else 'best'} {name} {dice or 'n/a'}")
        self.finished.emit(result)

    def _on_error(self, exc: WorkerFailed) -> None:
        self.status_label.setMaximumHeight(QWIDGETSIZE_MAX)
        if isinstance(exc.original, WorkerProcessDied):
            exc = WorkerFailed(f"{exc.message}. {self._after_death()}",
                               original_type=exc.original_type, original=exc.original)
        report_error(self.status_label, exc, "Training failed")
        self.failed.emit(exc)

    def _after_death(self) -> str:
        """What the user can do after the worker process died: resume, or start again."""
        out = self._run_dir
        if out is None:
            return "Start the run again"
        try:
            stored_config(out)
        except FcresError:
            return f"Nothing resumable was saved in {out} yet; start the run again"
        return f"The run in {out} is resumable: press Resume to go on from its last save"

    def _on_finished(self) -> None:
        self.status_label.setMaximumHeight(QWIDGETSIZE_MAX)  # whole messages between runs
        self._plot_timer.stop()
        self._redraw(force=True)
        # the Output field keeps the run's folder, as the status names it: Start never writes
        # into a folder holding a run (it picks a fresh one), Resume is off for a finished run

    # ------------------------------------------------------------------ plot
    canvas = property(lambda self: self.plot.canvas, doc="The plot's Qt canvas.")
    figure = property(lambda self: self.plot.figure, doc="The plot's matplotlib figure.")
    ax_loss = property(lambda self: self.plot.ax_loss, doc="Axes of the loss per step.")
    ax_score = property(lambda self: self.plot.ax_score,
                        doc="Axes of the validation score that keeps the best checkpoint.")

    def _reset_plot_data(self) -> None:
        self.plot.reset()

    def _setup_axes(self, loss: str = "dice", metric: str | None = None) -> None:
        self._loss = loss
        self.plot.setup_axes(loss=loss, metric=metric)

    def plot_data(self) -> dict[str, dict[int, tuple[list, list]]]:
        """The plotted series: ``{"loss": {member: (steps, losses as shown)}, "score": {member:
        (epochs, validation scores)}}`` (see :class:`~._plot.TrainingPlot`)."""
        return self.plot.data()

    def _redraw(self, force: bool = False) -> None:
        latest = self._latest
        self.plot.redraw(force, running=self.is_running(),
                         steps_per_epoch=latest.steps_per_epoch if latest is not None else 0)
