"""Form building blocks of the napari-fcres dock widgets.

* :func:`scroll_body` - a dock widget's main layout inside a scroll area, so that docking every
  widget never grows the window beyond the screen (:data:`MIN_DOCK_HEIGHT`).
* :class:`LayerCombo` - a combo box of the viewer's layers of one type that follows layer
  insertion, removal and renaming; ``.layer()`` gives the chosen layer.
* :class:`PathEdit` - a line edit plus "Browse..." button for a file or folder.
* :class:`DeviceCombo` / :func:`device_choices` - the compute devices.  They are asked once
  per session from a child process (:func:`napari_fcres.jobs.device_job`, polled by a timer):
  importing torch here to list them froze the first dock for seconds.  Until the answer comes
  the CPU alone is listed; then every combo fills in and chooses the first GPU unless a device
  was chosen.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, QSize, Qt, QTimer, Signal
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

__all__ = ["MIN_DOCK_HEIGHT", "scroll_body", "LayerCombo", "PathEdit", "DeviceCombo",
           "device_choices", "device_list"]


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


#: What :func:`device_choices` lists until the worker process has answered.
CPU_ONLY: list[tuple[str, str]] = [("CPU", "cpu")]


#: How often (ms) the device query's child process is looked at.
DEVICE_POLL_MS = 100
#: What the child process runs: the device list as JSON on its stdout.
_DEVICE_CODE = ("import json, sys\nfrom napari_fcres.jobs import device_job\n"
                "json.dump(device_job(), sys.stdout)\n")


class _DeviceList(QObject):
    """The session's compute devices; ``changed`` carries them once they are known.

    A child Python lists them (no thread: a timer of the GUI thread polls it, and closing
    napari while it runs leaves nothing behind but the child, which ends on its own).  With
    ``NAPARI_FCRES_WORKER=thread`` (debugging) they are listed here, importing torch.
    """

    changed = Signal(list)

    def __init__(self) -> None:
        super().__init__()
        self.choices: list[tuple[str, str]] | None = None
        self._proc: subprocess.Popen | None = None
        self._timer: QTimer | None = None

    def request(self) -> None:
        """Start listing the devices (once; the answer fires ``changed``)."""
        if self.choices is not None or self._proc is not None:
            return
        from ._job import process_workers_enabled

        if not process_workers_enabled():
            from ..jobs import device_job

            self._answer(device_job())
            return
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH"))
                                            if p)
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _DEVICE_CODE], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True,
                creationflags=flags,
            )
        except OSError as exc:
            log.warning("could not list the compute devices: %s", exc)
            self._answer([])
            return
        self._timer = QTimer(self)
        self._timer.setInterval(DEVICE_POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is None:
            return
        if self._timer is not None:
            self._timer.stop()
        out, err = proc.communicate()
        self._proc = None
        try:
            if proc.returncode != 0:
                raise ValueError(err.strip().splitlines()[-1] if err.strip() else
                                 f"exit code {proc.returncode}")
            choices = json.loads(out)
        except ValueError as exc:
            log.warning("could not list the compute devices (%s); offering the CPU", exc)
            choices = []
        self._answer(choices)

    def _answer(self, choices: list) -> None:
        self.choices = [(str(label), str(key)) for label, key in choices] or list(CPU_ONLY)
        self.changed.emit(list(self.choices))


_DEVICES: _DeviceList | None = None


def device_list() -> _DeviceList:
    """The session's device list (connect to its ``changed(list)`` signal)."""
    global _DEVICES
    if _DEVICES is None:
        _DEVICES = _DeviceList()
    return _DEVICES


def device_choices() -> list[tuple[str, str]]:
    """``(label, key)`` per compute device: CUDA GPUs by name, Apple MPS, then the CPU.

    The CPU alone until a worker process has listed the devices (asked now if not yet).
    """
    devices = device_list()
    devices.request()
    return list(devices.choices or CPU_ONLY)


class DeviceCombo(QComboBox):
    """Combo of the compute devices (``currentData()`` is the key: "cuda:0", "mps", "cpu").

    Fills in when the device list arrives (:func:`device_list`); the first device (a GPU when
    there is one) is chosen then, unless a device was chosen meanwhile.  ``devices_changed``
    is emitted after every fill.
    """

    devices_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._filling = False
        self._chosen = False
        self.currentIndexChanged.connect(self._on_index_changed)
        device_list().changed.connect(self._fill)
        self._fill(device_choices())

    def _on_index_changed(self, *_: Any) -> None:
        if not self._filling:
            self._chosen = True

    def _fill(self, choices: list) -> None:
        current = self.currentData()
        keys = [key for _, key in choices]
        self._filling = True
        try:
            self.clear()
            for label, key in choices:
                self.addItem(label, key)
            self.setCurrentIndex(keys.index(current) if self._chosen and current in keys else 0)
        finally:
            self._filling = False
        self.devices_changed.emit()

    def has_gpu(self) -> bool:
        """Whether a device other than the CPU is listed."""
        return any(self.itemData(i) != "cpu" for i in range(self.count()))
