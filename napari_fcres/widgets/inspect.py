"""Inspect widget: what did the learned pre-processor do to the image?

Shows the pre-processor's output beside the raw image (napari grid mode: both share camera
and slice) and, as Fig. 6 of Drozdzal et al., the intensity histograms of background and
foreground pixels at the input and after the pre-processor, with fitted normal curves.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QButtonGroup,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QWidget,
)

from ..errors import FcresError, InputError
from ..jobs import InspectResult, inspect_job
from ..runs import BEST_NAME
from ..worker_process import STOP
from ._docks import tab_with_other_docks
from ._forms import DeviceCombo, LayerCombo, scroll_body
from ._job import WidgetJob, prestart_worker_process
from ._layers import RESULT_KEY, current_slice, layer_data, layer_names
from ._notify import WorkerFailed, report_error
from ._pickers import CheckpointCombo
from ._plot import LazyCanvas, style_axes

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

#: Axes margins in pixels (left, right, top, bottom, gap): the legends sit right of the axes.
LEGEND_MARGINS_PX = (44, 62, 22, 30, 46)
BACKGROUND_COLOR = "#e8743b"
FOREGROUND_COLOR = "#3ba7e8"


def _normal_pdf(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """The normal density (numpy only: importing scipy.stats costs the GUI thread ~0.3 s)."""
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * np.sqrt(2.0 * np.pi))


def grid_of(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, else ``.grid``)."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


class InspectWidget(QWidget):
    """Pre-processor output beside the raw image, and the paper's Fig. 6 histograms."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_other_docks(self, "Inspect")
        self.viewer = napari_viewer
        self.last_result: InspectResult | None = None
        self.job = WidgetJob(self, "computation", on_state_changed=self._update_enabled)
        self._build()
        self._update_enabled()
        prestart_worker_process()

    def _build(self) -> None:
        from napari.layers import Image, Labels

        root = scroll_body(self)
        form = QFormLayout()
        self.image_combo = LayerCombo(self.viewer, Image)
        self.image_combo.setToolTip("Raw image layer to feed to the model")
        form.addRow("Image", self.image_combo)
        self.checkpoint_combo = CheckpointCombo(
            tooltip=f"Trained checkpoint ({BEST_NAME}); defaults to the last one trained in this "
            "session"
        )
        self.checkpoint_combo.changed.connect(self._update_enabled)
        form.addRow("Checkpoint", self.checkpoint_combo)
        self.labels_combo = LayerCombo(self.viewer, Labels, allow_none=True,
                                       none_text="(none: use the prediction)")
        self.labels_combo.setToolTip(
            "Labels that say which pixels are foreground and background for the histograms; "
            "without labels the model's probability is thresholded at 0.5"
        )
        form.addRow("Labels", self.labels_combo)
        self.slice_radio = QRadioButton("current slice")
        self.slice_radio.setToolTip("Only the slice shown in the viewer (fast)")
        self.stack_radio = QRadioButton("whole stack")
        self.stack_radio.setToolTip("Every slice of the stack (progress in the activity dock)")
        self.slice_radio.setChecked(True)
        self._scope = QButtonGroup(self)
        self._scope.addButton(self.slice_radio)
        self._scope.addButton(self.stack_radio)
        row = QHBoxLayout()
        row.addWidget(self.slice_radio)
        row.addWidget(self.stack_radio)
        form.addRow("Scope", row)
        self.device_combo = DeviceCombo()
        self.device_combo.setToolTip("Compute device for the model")
        form.addRow("Device", self.device_combo)
        root.addLayout(form)

        row = QHBoxLayout()
        self.show_button = QPushButton("Show")
        self.show_button.setToolTip(
            "Compute the pre-processor's output, show it beside the image (grid mode) and plot "
            "the intensity histograms"
        )
        self.show_button.clicked.connect(self._on_show)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop a whole-stack computation")
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.show_button)
        row.addWidget(self.stop_button)
        root.addLayout(row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("State of the last computation")
        root.addWidget(self.status_label)

        self.plot_box = LazyCanvas(
            (4.0, 4.4), nrows=2, viewer=self.viewer, margins=LEGEND_MARGINS_PX,
            tooltip="Intensity histograms of background and foreground pixels at the input "
            "(top) and after the learned pre-processor (bottom); dashed: fitted normal "
            "distributions",
        )
        self.plot_box.ready.connect(self._setup_axes)
        if self.plot_box.is_ready:
            self._setup_axes()
        root.addWidget(self.plot_box, 1)

    # the figure comes once matplotlib is imported (in the background); these make it now
    @property
    def canvas(self) -> Any:
        """The histograms' Qt canvas."""
        self.plot_box.ensure()
        return self.plot_box.canvas

    @property
    def figure(self) -> Any:
        """The histograms' matplotlib figure."""
        self.plot_box.ensure()
        return self.plot_box.figure

    @property
    def ax_raw(self) -> Any:
        """Axes of the input histograms."""
        self.plot_box.ensure()
        return self.plot_box.axes[0]

    @property
    def ax_norm(self) -> Any:
        """Axes of the pre-processor output histograms."""
        self.plot_box.ensure()
        return self.plot_box.axes[1]

    def _setup_axes(self) -> None:
        for ax, title in ((self.ax_raw, "input"), (self.ax_norm, "pre-processor output")):
            ax.cla()
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("density", fontsize=8)
            ax.tick_params(labelsize=7)
        self.ax_norm.set_xlabel("intensity", fontsize=8)
        style_axes(self.figure, [self.ax_raw, self.ax_norm], self.viewer)

    # ------------------------------------------------------------------ state
    def is_running(self) -> bool:
        return self.job.running

    def _update_enabled(self, *_: Any) -> None:
        running = self.is_running()
        self.show_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for w in (self.image_combo, self.checkpoint_combo, self.labels_combo,
                  self.slice_radio, self.stack_radio, self.device_combo):
            w.setEnabled(not running)

    def stop(self) -> None:
        """Stop a running computation at the next tile batch (closing the dock does too)."""
        self.job.stop()

    # ------------------------------------------------------------------ compute
    def _on_show(self) -> None:
        try:
            self.show_normalization(whole_stack=self.stack_radio.isChecked())
        except FcresError as exc:
            report_error(self.status_label, exc, "Cannot inspect")

    def show_normalization(self, whole_stack: bool = False) -> None:
        """Start computing the pre-processor output (current slice or whole stack)."""
        self.job.check_idle()
        layer = self.image_combo.layer()
        if layer is None:
            raise InputError("choose an image layer")
        if getattr(layer, "rgb", False):
            raise InputError("RGB images are not supported; convert the layer to grey values")
        checkpoint = self.checkpoint_combo.path()
        if not checkpoint:
            raise InputError(f"choose a checkpoint (train one first or browse for a {BEST_NAME})")
        image = layer_data(layer)
        if image.ndim not in (2, 3):
            raise InputError(f"the image must be 2-D or 3-D, got shape {image.shape}")
        stack = image[None] if image.ndim == 2 else image
        labels_layer = self.labels_combo.layer()
        labels = None
        if labels_layer is not None:
            labels = layer_data(labels_layer)
            if labels.shape != image.shape:
                raise InputError(
                    f"labels {labels_layer.name!r} have shape {labels.shape}, the image "
                    f"{image.shape}; choose matching labels or none"
                )
            labels = labels[None] if labels.ndim == 2 else labels
        if whole_stack:
            slices = list(range(stack.shape[0]))
        else:
            slices = [current_slice(self.viewer, layer)] if image.ndim == 3 else [0]
        self._image_layer = layer
        what = "the whole stack" if whole_stack and len(slices) > 1 else f"slice {slices[0]}"
        self.status_label.setText(f"Computing the pre-processor output of {what} ...")
        self.job.start(
            inspect_job, checkpoint, stack, slices, labels,
            str(self.device_combo.currentData() or "cpu"), STOP,
            progress_bar={"total": len(slices), "desc": "Inspecting the pre-processor"},
            on_done=self._on_done, on_error=self._on_error,
            on_stopped=lambda: self.status_label.setText("Stopped"),
        )

    def _on_error(self, exc: WorkerFailed) -> None:
        report_error(self.status_label, exc, "Inspect failed")

    def _on_done(self, result: InspectResult) -> None:
        self.last_result = result
        layer = self._image_layer
        self._show_layer(layer, result)
        self.plot(result)
        where = f"slice {result.slices[0]}" if len(result.slices) == 1 else \
            f"{len(result.slices)} slices"
        text = f"Pre-processor output of {where}; histogram classes from the {result.source}"
        if result.note:
            text += f" ({result.note})"
        self.status_label.setText(text)

    def normalized_layer_name(self, layer: Any) -> str:
        """``"<image> normalized"``: the same layer the Predict widget fills."""
        return layer_names(layer.name)["normalized"]

    def _normalized_layer(self, image_layer: Any, shape: tuple[int, ...]) -> Any | None:
        """The image's "<image> normalized" layer (also the Predict widget's), if usable."""
        from napari.layers import Image

        marker = {"image": image_layer.name, "kind": "normalized"}
        name = self.normalized_layer_name(image_layer)
        for layer in list(self.viewer.layers):
            ours = layer.metadata.get(RESULT_KEY) == marker
            if not ours and not (layer.name == name and layer.metadata.get("source_layer")):
                continue  # a user's own layer of that name is never touched
            if isinstance(layer, Image) and np.shape(layer.data) == shape and isinstance(
                layer.data, np.ndarray
            ):
                return layer
            self.viewer.layers.remove(layer)
        return None

    def _show_layer(self, image_layer: Any, result: InspectResult) -> None:
        """Write the output into the "<image> normalized" layer and switch to grid mode."""
        name = self.normalized_layer_name(image_layer)
        shape = layer_data(image_layer).shape
        target = self._normalized_layer(image_layer, shape)
        data = np.zeros(shape, dtype=np.float32) if target is None else np.asarray(target.data)
        if len(shape) == 2:
            data[...] = result.normalized[0]
        else:
            data[result.slices] = result.normalized
        lo, hi = result.contrast_limits
        if target is None:
            added = self.viewer.add_image(
                data, name=name, colormap="gray", contrast_limits=(float(lo), float(hi)),
                scale=image_layer.scale, translate=image_layer.translate,
                metadata={"source_layer": image_layer.name,
                          RESULT_KEY: {"image": image_layer.name, "kind": "normalized"}},
            )
            # right above its image: neighbours in the grid
            layers = self.viewer.layers
            src = layers.index(image_layer.name)
            layers.move(layers.index(added.name), src + 1)
        else:
            target.visible = True  # a Predict widget's copy starts hidden
            target.contrast_limits_range = (
                min(float(lo), target.contrast_limits_range[0]),
                max(float(hi), target.contrast_limits_range[1]),
            )
            target.contrast_limits = (float(lo), float(hi))
            target.refresh()
        grid = grid_of(self.viewer)
        if not grid.enabled:
            grid.shape = (1, -1)  # one row: raw and normalized side by side
            grid.enabled = True
            self.viewer.reset_view()

    # ------------------------------------------------------------------ plot
    def plot(self, result: InspectResult) -> None:
        """Fig. 6: histograms of background / foreground pixels with fitted normal curves."""
        self._setup_axes()
        for ax, key in ((self.ax_raw, "raw"), (self.ax_norm, "normalized")):
            # histograms were binned in the worker: here one step artist each (a bar per bin
            # took ~0.4 s of the GUI thread)
            histograms = result.histograms[key]
            for name, short, color in (
                ("background", "bg", BACKGROUND_COLOR),
                ("foreground", "fg", FOREGROUND_COLOR),
            ):
                if name not in histograms:
                    continue
                density, edges = histograms[name]
                mu, sigma = result.fits[name][key]
                ax.stairs(density, edges, fill=True, color=color, alpha=0.45,
                          label=f"{short}\nμ={mu:.3g}\nσ={sigma:.3g}")
                if sigma > 0:
                    xs = np.linspace(edges[0], edges[-1], 400)
                    ax.plot(xs, _normal_pdf(xs, mu, sigma), "--", color=color, lw=1.3)
            ax.legend(fontsize=6, framealpha=0.5, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      borderaxespad=0.0)
        self.canvas.draw_idle()
