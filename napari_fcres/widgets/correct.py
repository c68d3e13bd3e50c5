"""Correct dock widget: fix predicted labels on top of napari's own painting tools.

Every operation here is ONE step in the labels layer's own undo history: the change is written
with :meth:`napari.layers.Labels.data_setitem` (the public API that records history) inside
``layer.block_history()``, so Ctrl+Z / Shift+Ctrl+Z in napari (``layer.undo()`` /
``layer.redo()``) undo and redo it like a brush stroke.  The live threshold slider previews on
the shown slice without touching the history and records one step when the slider is released
(or shortly after the last keyboard / wheel change).

Corrections are made so that training can learn from them: a split leaves a background seam
along the cut and a merge fills the background gap between the two labels, so the foreground
mask that fine-tuning uses (labels > 0) changes too, not only the label ids.  Every operation
works on the slice the viewer shows, whether or not the labels layer is visible.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QWidget,
)

from ..errors import FcresError, InputError
from ..postprocess import (
    fill_label_holes,
    keep_largest,
    labels_from_probabilities,
    merge_labels,
    relabel_instances,
    remove_small_labels,
    split_label_along_line,
)
from ._docks import tab_with_other_docks
from ._forms import LayerCombo, scroll_body
from ._layers import METADATA_KEY, RESULT_KEY, apply_labels, current_slice, layer_data
from ._notify import report_error

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

SPLIT_LAYER_NAME = "split line"
SCOPES = ("current slice", "whole stack")
#: Coalesce slider moves into one preview per this many ms.
PREVIEW_MS = 40
#: Record the threshold as one undo step this long after the last keyboard / wheel change.
COMMIT_MS = 600
#: Merge fills background gaps up to this many pixels wide between the two labels (default).
MERGE_GAP = 6
MODE_HELP = {
    "instances": "connected components as separate labels (per slice)",
    "binary": "one label (1) for all foreground",
    "largest": "only the largest connected component",
}


# ----------------------------------------------------------------------------- label operations


def _max_outside(data: np.ndarray, index: int | None) -> int:
    """Largest label outside slice ``index`` (0 for the whole data)."""
    if index is None:
        return 0
    return max(int(data[:index].max(initial=0)), int(data[index + 1:].max(initial=0)))


def _line_label(plane: np.ndarray, pts: np.ndarray) -> int:
    """Most common non-zero label under the polyline ``pts`` (row, col)."""
    from skimage.draw import line

    values = []
    p = np.rint(pts).astype(int)
    for (r0, c0), (r1, c1) in zip(p[:-1], p[1:], strict=True):
        rr, cc = line(int(r0), int(c0), int(r1), int(c1))
        ok = (rr >= 0) & (rr < plane.shape[0]) & (cc >= 0) & (cc < plane.shape[1])
        values.append(plane[rr[ok], cc[ok]])
    v = np.concatenate(values) if values else np.zeros(0, dtype=plane.dtype)
    v = v[v > 0]
    if v.size == 0:
        raise InputError("the split line crosses no label; draw it across the label to cut")
    ids, counts = np.unique(v, return_counts=True)
    return int(ids[np.argmax(counts)])


def _change_text(old: np.ndarray, new: np.ndarray) -> str:
    """What a correction changes, counted by kind: pixels set to background (0), pixels
    labelled from background, and pixels whose id changed (e.g. the pieces of a split)."""
    changed = old != new
    to_bg = int(np.count_nonzero(changed & (new == 0)))
    from_bg = int(np.count_nonzero(changed & (old == 0)))
    relabelled = int(np.count_nonzero(changed)) - to_bg - from_bg
    parts = []
    if to_bg:
        parts.append(f"{to_bg} pixel{'s' if to_bg != 1 else ''} set to background")
    if from_bg:
        parts.append(f"{from_bg} background pixel{'s' if from_bg != 1 else ''} labelled")
    if relabelled:
        parts.append(f"{relabelled} pixel{'s' if relabelled != 1 else ''} got another id")
    return ", ".join(parts) or "nothing changed"


@dataclass
class _Preview:
    """Labels under a live threshold preview, to restore before the undoable commit."""

    layer: Any
    index: int | None
    base: np.ndarray


# ----------------------------------------------------------------------------- widget


class CorrectWidget(QWidget):
    """Threshold, clean up, merge and split labels; every action is one undoable step.

    Public API: :meth:`commit_threshold`, :meth:`remove_small`, :meth:`fill_holes`,
    :meth:`keep_largest`, :meth:`relabel`, :meth:`merge`, :meth:`split`,
    :meth:`draw_split_line`; signal ``corrected(str, int)`` (operation, pixels changed).
    """

    corrected = Signal(str, int)

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        tab_with_other_docks(self, "Correct")
        self.viewer = napari_viewer
        self._preview: _Preview | None = None
        self._build()
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(PREVIEW_MS)
        self._preview_timer.timeout.connect(self._run_preview)
        self._commit_timer = QTimer(self)
        self._commit_timer.setSingleShot(True)
        self._commit_timer.setInterval(COMMIT_MS)
        self._commit_timer.timeout.connect(self._on_commit_timer)
        self.viewer.layers.events.inserted.connect(self._match_probability)
        self._match_probability()
        self._update_enabled()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        from napari.layers import Image, Labels

        root = scroll_body(self)
        layers_box = QGroupBox("Layers")
        form = QFormLayout(layers_box)
        self.labels_combo = LayerCombo(self.viewer, Labels)
        self.labels_combo.setToolTip(
            "Labels layer to correct (e.g. '<image> predicted labels' from the Predict "
            "widget).  Paint, "
            "fill and erase with napari's own tools; Ctrl+Z undoes every step, also these."
        )
        self.labels_combo.layer_changed.connect(self._on_labels_changed)
        form.addRow("Labels", self.labels_combo)
        self.prob_combo = LayerCombo(self.viewer, Image, allow_none=True)
        self.prob_combo.setToolTip(
            "Probability map the threshold applies to (e.g. '<image> probability')"
        )
        self.prob_combo.layer_changed.connect(self._update_enabled)
        form.addRow("Probability", self.prob_combo)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        self.scope_combo.setToolTip(
            "Where the operations below apply: the slice shown in the viewer or every slice "
            "(splitting always works on the shown slice)"
        )
        self.scope_combo.currentTextChanged.connect(self._on_scope_changed)
        form.addRow("Apply to", self.scope_combo)
        root.addWidget(layers_box)

        thr_box = QGroupBox("Threshold")
        form = QFormLayout(thr_box)
        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(1, 99)
        self.threshold_slider.setValue(50)
        self.threshold_slider.setToolTip(
            "Foreground where probability > threshold.  Moving it re-derives the labels of "
            "the chosen scope from the probability map live (replacing painted corrections "
            "there); releasing it records one undo step."
        )
        self.threshold_slider.valueChanged.connect(self._on_slider_moved)
        self.threshold_slider.sliderReleased.connect(self._on_slider_released)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.01, 0.99)
        self.threshold_spin.setSingleStep(0.01)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip(self.threshold_slider.toolTip())
        self.threshold_spin.valueChanged.connect(self._on_spin_changed)
        row = QHBoxLayout()
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_spin)
        form.addRow("Threshold", row)
        self.mode_combo = QComboBox()
        for i, mode in enumerate(MODE_HELP):
            self.mode_combo.addItem(mode)
            self.mode_combo.setItemData(i, MODE_HELP[mode], Qt.ToolTipRole)
        self.mode_combo.setToolTip(
            "How thresholded foreground becomes labels: "
            + "; ".join(f"{k}: {v}" for k, v in MODE_HELP.items())
        )
        form.addRow("Labels as", self.mode_combo)
        root.addWidget(thr_box)

        clean_box = QGroupBox("Clean up")
        grid = QGridLayout(clean_box)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(1, 10_000_000)
        self.min_size_spin.setValue(50)
        self.min_size_spin.setSuffix(" px")
        self.min_size_spin.setToolTip(
            "Pieces smaller than this (pixels on a slice, voxels in 3-D for the whole stack) "
            "are removed"
        )
        self.remove_small_button = QPushButton("Remove small objects")
        self.remove_small_button.setToolTip(
            "Erase connected pieces of each label smaller than the minimum size"
        )
        self.remove_small_button.clicked.connect(lambda: self._guard(self.remove_small))
        grid.addWidget(self.remove_small_button, 0, 0)
        grid.addWidget(self.min_size_spin, 0, 1)
        self.fill_button = QPushButton("Fill holes")
        self.fill_button.setToolTip(
            "Fill background enclosed by a label with that label (slice by slice)"
        )
        self.fill_button.clicked.connect(lambda: self._guard(self.fill_holes))
        grid.addWidget(self.fill_button, 1, 0)
        self.largest_button = QPushButton("Keep largest component")
        self.largest_button.setToolTip(
            "Keep only the largest connected foreground component: 3-D for the whole stack "
            "(e.g. one organ), 2-D on the current slice"
        )
        self.largest_button.clicked.connect(lambda: self._guard(self.keep_largest))
        grid.addWidget(self.largest_button, 1, 1)
        self.relabel_button = QPushButton("Relabel as instances")
        self.relabel_button.setToolTip(
            "Give every connected foreground component its own label (per slice; ids stay "
            "unique in the stack)"
        )
        self.relabel_button.clicked.connect(lambda: self._guard(self.relabel))
        grid.addWidget(self.relabel_button, 2, 0, 1, 2)
        root.addWidget(clean_box)

        edit_box = QGroupBox("Merge and split")
        grid = QGridLayout(edit_box)
        self.merge_a_spin = QSpinBox()
        self.merge_a_spin.setRange(1, 2**31 - 1)
        self.merge_a_spin.setValue(1)
        self.merge_a_spin.setToolTip("Label that stays (hover a label to see its id)")
        self.merge_b_spin = QSpinBox()
        self.merge_b_spin.setRange(1, 2**31 - 1)
        self.merge_b_spin.setValue(2)
        self.merge_b_spin.setToolTip("Label that is merged into the first one and disappears")
        self.merge_button = QPushButton("Merge")
        self.merge_button.setToolTip(
            "Label B becomes label A (in the chosen scope), and the background gap between "
            "them becomes A: fine-tuning then learns one object, not only a new id"
        )
        self.merge_button.clicked.connect(lambda: self._guard(self.merge))
        self.merge_gap_spin = QSpinBox()
        self.merge_gap_spin.setRange(0, 100)
        self.merge_gap_spin.setValue(MERGE_GAP)
        self.merge_gap_spin.setSuffix(" px")
        self.merge_gap_spin.setSpecialValueText("keep gap")
        self.merge_gap_spin.setToolTip(
            "Merge fills background (0) between A and B in gaps up to this wide (e.g. the "
            "predicted membrane between two halves of one cell); 0 changes only the ids"
        )
        grid.addWidget(QLabel("A"), 0, 0)
        grid.addWidget(self.merge_a_spin, 0, 1)
        grid.addWidget(QLabel("← B"), 0, 2)
        grid.addWidget(self.merge_b_spin, 0, 3)
        grid.addWidget(self.merge_button, 0, 4)
        grid.addWidget(QLabel("fill gap up to"), 1, 0, 1, 3)
        grid.addWidget(self.merge_gap_spin, 1, 3, 1, 2)
        self.draw_line_button = QPushButton("Draw split line")
        self.draw_line_button.setToolTip(
            f"Add (or select) the '{SPLIT_LAYER_NAME}' shapes layer in path mode: click along "
            "the cut on the shown slice, double-click to finish"
        )
        self.draw_line_button.clicked.connect(lambda: self._guard(self.draw_split_line))
        self.split_label_spin = QSpinBox()
        self.split_label_spin.setRange(0, 2**31 - 1)
        self.split_label_spin.setValue(0)
        self.split_label_spin.setSpecialValueText("auto")
        self.split_label_spin.setToolTip(
            "Label to cut; 'auto' takes the label the line crosses most"
        )
        self.split_button = QPushButton("Split")
        self.split_button.setToolTip(
            "Cut the label along the last line drawn on the shown slice: the line becomes a "
            "background seam (what fine-tuning learns the cut from), the largest piece keeps "
            "the id, the others get new ids; the used line is removed (and the split-line "
            "layer with it when no other line is left)"
        )
        self.split_button.clicked.connect(lambda: self._guard(self.split))
        grid.addWidget(self.draw_line_button, 2, 0, 1, 2)
        grid.addWidget(QLabel("label"), 2, 2)
        grid.addWidget(self.split_label_spin, 2, 3)
        grid.addWidget(self.split_button, 2, 4)
        root.addWidget(edit_box)

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.status_label.setToolTip("What the last operation changed")
        root.addWidget(self.status_label)
        root.addStretch(1)

    # ------------------------------------------------------------------ state
    def _update_enabled(self, *_: Any) -> None:
        labels = self.labels_combo.layer()
        has_labels = labels is not None
        for w in (self.remove_small_button, self.fill_button, self.largest_button,
                  self.relabel_button, self.merge_button, self.merge_gap_spin,
                  self.draw_line_button, self.split_button):
            w.setEnabled(has_labels)
        has_prob = has_labels and self.prob_combo.layer() is not None
        for w in (self.threshold_slider, self.threshold_spin, self.mode_combo):
            w.setEnabled(has_prob)
        self.scope_combo.setEnabled(has_labels and labels.ndim == 3)

    def _on_labels_changed(self, *_: Any) -> None:
        self.commit_threshold()
        self._match_probability()
        layer = self.labels_combo.layer()
        meta = getattr(layer, "metadata", {}).get(METADATA_KEY, {}) if layer is not None else {}
        if meta.get("mode") in MODE_HELP:
            self.mode_combo.setCurrentText(meta["mode"])
        self._update_enabled()

    def _on_scope_changed(self, *_: Any) -> None:
        self.commit_threshold()

    def _match_probability(self, *_: Any) -> None:
        """Choose '<image> probability' for '<image> predicted labels' when both exist."""
        self.labels_combo.refresh()
        self.prob_combo.refresh()
        labels = self.labels_combo.layer()
        name = None
        if labels is not None:
            marker = labels.metadata.get(RESULT_KEY) or {}
            for layer in self.viewer.layers:
                if marker.get("kind") == "labels" and layer.metadata.get(RESULT_KEY) == {
                    "image": marker.get("image"), "kind": "probability"
                }:
                    name = layer.name
            for suffix in (" predicted labels", " labels"):
                if name is None and labels.name.endswith(suffix):
                    name = labels.name[: -len(suffix)] + " probability"
        current = self.prob_combo.layer()
        if name and (current is None or current.name != name) and self.prob_combo.findText(
            name
        ) > 0:
            self.prob_combo.set_layer(name)
        self._update_enabled()

    def _labels_layer(self) -> Any:
        layer = self.labels_combo.layer()
        if layer is None:
            raise InputError("choose a labels layer to correct (predict first)")
        return layer

    def _index(self, layer: Any) -> int | None:
        """Slice index for 'current slice' scope on a stack, else None (everything)."""
        if layer.ndim == 3 and self.scope_combo.currentText() == SCOPES[0]:
            return current_slice(self.viewer, layer)
        return None

    def _guard(self, func: Callable[[], Any]) -> None:
        """Run a button's action; any failure is a message in the status line, not a crash."""
        try:
            func()
        except FcresError as exc:
            report_error(self.status_label, exc, "Correction failed")
        except Exception as exc:  # noqa: BLE001 - e.g. napari refusing an edit: no traceback
            log.exception("correction failed")
            report_error(self.status_label, f"{type(exc).__name__}: {exc}", "Correction failed")

    def _apply(self, name: str, layer: Any, new: np.ndarray, index: int | None) -> int:
        data = layer_data(layer)
        old = data if index is None else data[index]
        what = _change_text(old, new)
        n = apply_labels(layer, new, index)
        where = "the image" if layer.ndim == 2 else (
            "the stack" if index is None else f"slice {index}")
        if n:
            self.status_label.setText(
                f"{name}: {what} in {where} (Ctrl+Z on the labels layer undoes it)"
            )
        else:
            self.status_label.setText(f"{name}: nothing to change in {where}")
        log.info("%s on %s: %d pixels changed", name, where, n)
        self.corrected.emit(name, n)
        return n

    def _operate(self, name: str, func: Callable[[np.ndarray, int | None, np.ndarray], np.ndarray]
                 ) -> int:
        self.commit_threshold()
        layer = self._labels_layer()
        data = layer_data(layer)
        if not np.issubdtype(data.dtype, np.integer):
            raise InputError(f"labels layer {layer.name!r} holds {data.dtype}, not integers")
        index = self._index(layer)
        region = data if index is None else data[index]
        new = func(region, index, data)
        return self._apply(name, layer, new, index)

    # ------------------------------------------------------------------ threshold
    def threshold(self) -> float:
        """The threshold shown by the slider / spin box."""
        return self.threshold_slider.value() / 100.0

    def _on_slider_moved(self, value: int) -> None:
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setValue(value / 100.0)
        self.threshold_spin.blockSignals(False)
        self._threshold_changed()

    def _on_spin_changed(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(int(round(value * 100)))
        self.threshold_slider.blockSignals(False)
        self._threshold_changed()

    def _threshold_changed(self) -> None:
        if self.prob_combo.layer() is None or self.labels_combo.layer() is None:
            return
        self._preview_timer.start()
        if self.threshold_slider.isSliderDown():
            self._commit_timer.stop()
        else:
            self._commit_timer.start()

    def _on_slider_released(self) -> None:
        self._preview_timer.stop()
        self._guard(self.commit_threshold_now)

    def _on_commit_timer(self) -> None:
        if self.threshold_slider.isSliderDown():
            return
        self._guard(self.commit_threshold_now)

    def _threshold_labels(self, prob: np.ndarray, labels: np.ndarray, index: int | None
                          ) -> np.ndarray:
        mode = self.mode_combo.currentText()
        if index is not None:
            prob = prob[index]
        new = labels_from_probabilities(prob, self.threshold(), mode).astype(np.int32)
        if mode == "instances" and index is not None:
            offset = _max_outside(labels, index)
            if offset:
                new[new > 0] += offset
        return new

    def _probability(self, labels_layer: Any) -> np.ndarray:
        prob_layer = self.prob_combo.layer()
        if prob_layer is None:
            raise InputError("choose the probability layer to threshold")
        prob = layer_data(prob_layer)
        if prob.shape != tuple(labels_layer.data.shape):
            raise InputError(
                f"probability {prob_layer.name!r} has shape {prob.shape} but labels "
                f"{labels_layer.name!r} have shape {tuple(labels_layer.data.shape)}"
            )
        return prob

    def _run_preview(self) -> None:
        """Show the threshold on the shown slice at once, outside the undo history."""
        try:
            layer = self._labels_layer()
            prob = self._probability(layer)
            data = layer_data(layer)
            index = current_slice(self.viewer, layer) if layer.ndim == 3 else None
            p = self._preview
            if p is not None and (p.layer is not layer or p.index != index):
                self.commit_threshold_now()
                p = None
            if p is None:
                base = np.array(data if index is None else data[index], copy=True)
                self._preview = _Preview(layer, index, base)
            new = self._threshold_labels(prob, data, index)
            if index is None:
                data[...] = new.astype(data.dtype, copy=False)
            else:
                data[index] = new.astype(data.dtype, copy=False)
            layer.refresh()
        except FcresError as exc:
            self._preview = None
            report_error(self.status_label, exc, "Threshold failed")

    def _restore_preview(self) -> Any | None:
        p, self._preview = self._preview, None
        if p is None:
            return None
        data = p.layer.data
        if p.index is None:
            data[...] = p.base
        else:
            data[p.index] = p.base
        return p.layer

    def commit_threshold(self) -> None:
        """Record a pending threshold change as one undo step (no-op when none is pending)."""
        if self._preview_timer.isActive():
            self._preview_timer.stop()
            self._run_preview()
        self._commit_timer.stop()
        if self._preview is not None:
            self._guard(self.commit_threshold_now)

    def commit_threshold_now(self) -> int:
        """Apply the current threshold to the chosen scope as one undoable step."""
        self._preview_timer.stop()
        self._commit_timer.stop()
        previewed = self._restore_preview()
        layer = previewed if previewed is not None else self._labels_layer()
        try:
            prob = self._probability(layer)
            index = self._index(layer)
            data = layer_data(layer)
            new = self._threshold_labels(prob, data, index)
        except FcresError:
            if previewed is not None:
                previewed.refresh()
            raise
        return self._apply(f"Threshold {self.threshold():.2f}", layer, new, index)

    # ------------------------------------------------------------------ operations
    def remove_small(self) -> int:
        """Remove pieces smaller than the minimum size."""
        size = self.min_size_spin.value()
        return self._operate(f"Remove objects < {size} px",
                             lambda r, i, d: remove_small_labels(r, size))

    def fill_holes(self) -> int:
        """Fill holes inside labels."""
        return self._operate("Fill holes", lambda r, i, d: fill_label_holes(r))

    def keep_largest(self) -> int:
        """Keep the largest connected component."""
        return self._operate("Keep largest component", lambda r, i, d: keep_largest(r))

    def relabel(self) -> int:
        """Relabel connected components as instances."""
        return self._operate("Relabel as instances",
                             lambda r, i, d: relabel_instances(r, _max_outside(d, i)))

    def merge(self) -> int:
        """Merge label B into label A."""
        a, b = self.merge_a_spin.value(), self.merge_b_spin.value()
        gap = self.merge_gap_spin.value()
        return self._operate(f"Merge {b} into {a}",
                             lambda r, i, d: merge_labels(r, a, b, close_gap=gap))

    # ------------------------------------------------------------------ split
    def _split_layer(self) -> Any | None:
        from napari.layers import Shapes

        if SPLIT_LAYER_NAME in self.viewer.layers:
            layer = self.viewer.layers[SPLIT_LAYER_NAME]
            if isinstance(layer, Shapes):
                return layer
        return None

    def draw_split_line(self) -> Any:
        """Add or select the split-line shapes layer, ready to draw a path."""
        labels = self._labels_layer()
        shapes = self._split_layer()
        if shapes is None:
            shapes = self.viewer.add_shapes(
                ndim=labels.ndim, name=SPLIT_LAYER_NAME, edge_color="red", edge_width=1,
                face_color="transparent", scale=np.asarray(labels.scale),
                translate=np.asarray(labels.translate),
            )
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_path"
        self.status_label.setText(
            "Click along the cut on the shown slice, double-click to end, then press Split"
        )
        return shapes

    def _line_on_slice(self, labels: Any, index: int | None) -> tuple[int, np.ndarray]:
        """(shape index, (K, 2) row/col points in labels data coordinates) of the last line."""
        shapes = self._split_layer()
        if shapes is None or len(shapes.data) == 0:
            raise InputError("draw a split line first ('Draw split line')")
        lead = np.asarray(self.viewer.dims.point)[-labels.ndim:]
        for k in range(len(shapes.data) - 1, -1, -1):
            verts = np.asarray(shapes.data[k], dtype=float)
            pts = []
            for v in verts:
                world = np.asarray(shapes.data_to_world(v), dtype=float)
                if world.size < labels.ndim:
                    world = np.concatenate([lead[: labels.ndim - world.size], world])
                pts.append(np.asarray(labels.world_to_data(world[-labels.ndim:]), dtype=float))
            arr = np.asarray(pts)
            if index is None:
                return k, arr[:, -2:]
            z = np.rint(arr[:, 0])
            if np.all(z == index):
                return k, arr[:, 1:]
        raise InputError(f"no split line on slice {index}; draw one on the shown slice")

    def split(self) -> int:
        """Cut a label along the last line drawn on the shown slice."""
        self.commit_threshold()
        layer = self._labels_layer()
        data = layer_data(layer)
        index = current_slice(self.viewer, layer) if layer.ndim == 3 else None
        plane = data if index is None else data[index]
        k, pts = self._line_on_slice(layer, index)
        label = self.split_label_spin.value() or _line_label(plane, pts)
        out = split_label_along_line(plane, label, pts)
        plane_max, total_max = int(plane.max(initial=0)), int(data.max(initial=0))
        if total_max > plane_max:  # new ids must be unique in the whole stack
            out = out.astype(np.promote_types(out.dtype, np.min_scalar_type(
                total_max + int(out.max()) - plane_max)))
            fresh = out > plane_max
            out[fresh] += total_max - plane_max
        n = self._apply(f"Split label {label} (background seam along the cut)", layer, out,
                        index)
        if n:
            shapes = self._split_layer()
            if shapes is not None and k < len(shapes.data):
                shapes.selected_data = {k}
                shapes.remove_selected()
            if shapes is not None and len(shapes.data) == 0:
                # nothing left to cut along: the tool layer goes, the labels are active again
                self.viewer.layers.remove(shapes)
                self.viewer.layers.selection.active = layer
        else:
            self.status_label.setText(
                f"The line does not cut label {label} into pieces; draw it across the label"
            )
        return n
