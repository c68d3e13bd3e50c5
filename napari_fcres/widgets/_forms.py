"""Form building blocks of the napari-fcres dock widgets.

* :func:`scroll_body` - a dock widget's main layout inside a scroll area, so that docking every
  widget never grows the window beyond the screen (:data:`MIN_DOCK_HEIGHT`).
* :class:`LayerCombo` - a combo box of the viewer's layers of one type that follows layer
  insertion, removal and renaming; ``.layer()`` gives the chosen layer.
* :class:`PathEdit` - a line edit plus "Browse..." button for a file or folder.
* :func:`device_choices` - ``(label, key)`` of every compute device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..errors import FcresError

log = logging.getLogger(__name__)

__all__ = ["MIN_DOCK_HEIGHT", "scroll_body", "LayerCombo", "PathEdit", "device_choices"]


# ----------------------------------------------------------------------------- layout

#: A dock widget may be squeezed to this height (its content then scrolls).
MIN_DOCK_HEIGHT = 100


class _ScrollArea(QScrollArea):
    """Scrolls vertically; as wide as its content, as tall as the dock allows."""

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        body = self.widget()
        if body is None:
            return super().minimumSizeHint()
        hint = body.minimumSizeHint()
        return QSize(hint.width() + self._extra_width(), min(hint.height(), MIN_DOCK_HEIGHT))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        body = self.widget()
        if body is None:
            return super().sizeHint()
        hint = body.sizeHint()
        return QSize(hint.width() + self._extra_width(), hint.height() + 2 * self.frameWidth())


def scroll_body(widget: QWidget) -> QVBoxLayout:
    """The main layout of a dock widget, inside a vertical scroll area.

    The dock asks for its full height when there is room but can be squeezed to
    :data:`MIN_DOCK_HEIGHT`: with every napari-fcres widget docked, napari's dock area shares
    the screen height and the widgets scroll instead of pushing the window off the screen.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = _ScrollArea(widget)
    area.setObjectName("fcres_scroll")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    body = QWidget()
    body.setObjectName("fcres_body")
    area.setWidget(body)
    outer.addWidget(area)
    return QVBoxLayout(body)


# ----------------------------------------------------------------------------- layers


class LayerCombo(QComboBox):
    """Combo box of the viewer's layers of ``layer_type``, kept up to date.

    Follows layer insertion, removal, reordering and renaming.  ``allow_none`` adds a first
    entry ``none_text`` meaning "no layer".  ``layer_changed`` is emitted with the new layer
    (or None) whenever the choice changes.
    """

    layer_changed = Signal(object)

    def __init__(
        self,
        viewer: Any,
        layer_type: type | tuple[type, ...],
        *,
        allow_none: bool = False,
        none_text: str = "(none)",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer_type = layer_type
        self._allow_none = allow_none
        self._none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.currentIndexChanged.connect(self._emit_changed)
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self.refresh)
        events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event: Any = None) -> None:
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(self.refresh)
        self.refresh()

    def _matching(self) -> list[Any]:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._layer_type)]

    def refresh(self, event: Any = None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentText()
        names = [layer.name for layer in self._matching()]
        if self._allow_none:
            names = [self._none_text, *names]
        old = [self.itemText(i) for i in range(self.count())]
        if names == old:
            return
        self.blockSignals(True)
        try:
            self.clear()
            self.addItems(names)
            if current in names:
                self.setCurrentIndex(names.index(current))
            elif names:
                # nothing chosen yet, or the choice was removed: the top-most layer
                self.setCurrentIndex(0 if self._allow_none else len(names) - 1)
        finally:
            self.blockSignals(False)
        if self.currentText() != current:
            self._emit_changed()

    def showPopup(self) -> None:  # noqa: N802 - Qt override
        self.refresh()
        super().showPopup()

    def _emit_changed(self, *_: Any) -> None:
        self.layer_changed.emit(self.layer())

    def layer(self) -> Any | None:
        """The chosen layer, or None."""
        name = self.currentText()
        if not name or (self._allow_none and self.currentIndex() == 0):
            return None
        for layer in self._matching():
            if layer.name == name:
                return layer
        return None

    def set_layer(self, layer: Any | str | None) -> None:
        """Choose a layer (object or name); None chooses the "none" entry when allowed."""
        self.refresh()
        if layer is None:
            if self._allow_none:
                self.setCurrentIndex(0)
            return
        name = layer if isinstance(layer, str) else layer.name
        index = self.findText(name)
        if index < 0 or (self._allow_none and index == 0):
            raise FcresError(f"no layer named {name!r} of the right type")
        self.setCurrentIndex(index)


# ----------------------------------------------------------------------------- paths


class PathEdit(QWidget):
    """A line edit with a "Browse..." button for a file (``mode="file"``) or folder."""

    changed = Signal(str)

    def __init__(
        self,
        mode: str = "file",
        *,
        filter: str = "",  # noqa: A002 - Qt's own name
        placeholder: str = "",
        tooltip: str = "",
        save: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if mode not in ("file", "folder"):
            raise ValueError(f"mode must be 'file' or 'folder', got {mode!r}")
        self._mode, self._filter, self._save = mode, filter, save
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(tooltip)
        self.edit.textChanged.connect(self.changed.emit)
        self.button = QPushButton("Browse...")
        self.button.setToolTip(f"Choose the {mode} in a dialog")
        self.button.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)
        self.setToolTip(tooltip)

    def _browse(self) -> None:
        start = self.path() or str(Path.home())
        if self._mode == "folder":
            chosen = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        elif self._save:
            chosen, _ = QFileDialog.getSaveFileName(self, "Save as", start, self._filter)
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self._filter)
        if chosen:
            self.set_path(chosen)

    def path(self) -> str:
        """The text, stripped and with ``~`` expanded ("" when empty)."""
        text = self.edit.text().strip()
        return str(Path(text).expanduser()) if text else ""

    def set_path(self, path: str | Path | None) -> None:
        self.edit.setText("" if path is None else str(path))


# ----------------------------------------------------------------------------- devices


def device_choices() -> list[tuple[str, str]]:
    """``(label, key)`` per compute device: CUDA GPUs by name, Apple MPS, then the CPU."""
    from ..device import available_devices

    return [(d.name, d.key) for d in available_devices()]
