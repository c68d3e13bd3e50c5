"""Checkpoint pickers shared by the napari-fcres widgets, and the session's registry.

* :func:`recent_checkpoints` / :func:`remember_checkpoints` / :func:`checkpoint_registry` -
  checkpoints trained in this session (newest first), with a ``changed`` Qt signal.

* :class:`CheckpointList` - checkable list of checkpoints (the ensemble) with Add file /
  Add folder / Remove; follows the checkpoints trained in this session.
* :class:`CheckpointCombo` - editable combo of this session's checkpoints plus "Browse...".

Both follow :func:`checkpoint_registry`: a checkpoint the Train
widget remembers appears in every picker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..errors import FcresError
from ..runs import BEST_NAME, LAST_NAME
from ._notify import notify_error

log = logging.getLogger(__name__)

__all__ = ["CheckpointList", "CheckpointCombo", "checkpoint_registry", "recent_checkpoints",
           "remember_checkpoints"]


# ----------------------------------------------------------------------------- registry


class _CheckpointRegistry(QObject):
    """Checkpoints trained in this session; ``changed`` carries the new list."""

    changed = Signal(list)

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[Path] = []


_REGISTRY: _CheckpointRegistry | None = None


def checkpoint_registry() -> _CheckpointRegistry:
    """The session's registry object (connect to its ``changed(list[Path])`` signal)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _CheckpointRegistry()
    return _REGISTRY


def recent_checkpoints() -> list[Path]:
    """Checkpoints trained in this session that still exist, newest first."""
    return [p for p in checkpoint_registry().paths if p.exists()]


def remember_checkpoints(paths: Iterable[str | Path]) -> None:
    """Record freshly trained checkpoints (GUI thread); they go first in the list."""
    reg = checkpoint_registry()
    new = [Path(p) for p in paths]
    reg.paths = new + [p for p in reg.paths if p not in new]
    reg.changed.emit(list(reg.paths))


# ----------------------------------------------------------------------------- pickers


class CheckpointList(QWidget):
    """Checkable list of checkpoints with Add file / Add folder / Remove.

    The ticked checkpoints form the ensemble.  Checkpoints trained in this session are added
    automatically; the newest run's members are ticked and the others unticked.
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.list.setToolTip(
            "Checkpoints to predict with; ticked ones form the ensemble (their probabilities "
            "are averaged and their spread is shown as the disagreement layer)"
        )
        self.list.setMinimumHeight(60)
        self.list.setMaximumHeight(110)
        self.list.itemChanged.connect(lambda *_: self.changed.emit())
        self.add_file_button = QPushButton("Add file...")
        self.add_file_button.setToolTip(f"Add checkpoint files ({BEST_NAME} / {LAST_NAME})")
        self.add_file_button.clicked.connect(self._add_files_dialog)
        self.add_folder_button = QPushButton("Add folder...")
        self.add_folder_button.setToolTip(
            f"Add every {BEST_NAME} below a folder (e.g. a run folder holding an ensemble)"
        )
        self.add_folder_button.clicked.connect(self._add_folder_dialog)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Remove the selected checkpoints from the list")
        self.remove_button.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        for b in (self.add_file_button, self.add_folder_button, self.remove_button):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.list)
        lay.addLayout(buttons)

        registry = checkpoint_registry()
        registry.changed.connect(self._on_registry_changed)
        self.add_recent(recent_checkpoints())

    # ------------------------------------------------------------------ content
    def paths(self) -> list[Path]:
        """Every listed checkpoint."""
        return [Path(self.list.item(i).data(Qt.UserRole)) for i in range(self.list.count())]

    def checked(self) -> list[Path]:
        """The ticked checkpoints (the ensemble)."""
        out = []
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.checkState() == Qt.Checked:
                out.append(Path(item.data(Qt.UserRole)))
        return out

    def add(self, paths: Sequence[str | Path], *, checked: bool = True, top: bool = False) -> None:
        """Add checkpoints (already listed ones only get ticked / unticked)."""
        known = {str(p): i for i, p in enumerate(self.paths())}
        self.list.blockSignals(True)
        try:
            for k, p in enumerate(paths):
                p = Path(p).expanduser()
                state = Qt.Checked if checked else Qt.Unchecked
                if str(p) in known:
                    self.list.item(known[str(p)]).setCheckState(state)
                    continue
                item = QListWidgetItem(_short_name(p))
                item.setData(Qt.UserRole, str(p))
                item.setToolTip(str(p))
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(state)
                if top:
                    self.list.insertItem(k, item)
                else:
                    self.list.addItem(item)
        finally:
            self.list.blockSignals(False)
        self.changed.emit()

    def set_checkpoints(self, paths: Sequence[str | Path]) -> None:
        """Replace the list by ``paths``, all ticked."""
        self.list.clear()
        self.add(paths)

    def add_recent(self, paths: Sequence[Path]) -> None:
        """Add session checkpoints; only the newest run (first path's run folder) is ticked."""
        if not paths:
            return
        newest_run = _run_dir(Path(paths[0]))
        fresh = [p for p in paths if _run_dir(Path(p)) == newest_run]
        old = [p for p in paths if _run_dir(Path(p)) != newest_run]
        if fresh and self.list.count():
            self.list.blockSignals(True)
            for i in range(self.list.count()):
                self.list.item(i).setCheckState(Qt.Unchecked)
            self.list.blockSignals(False)
        self.add(old, checked=False)
        self.add(fresh, checked=True, top=True)

    def remove_selected(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self.changed.emit()

    # ------------------------------------------------------------------ slots
    def _on_registry_changed(self, paths: list) -> None:
        new = [Path(p) for p in paths if str(p) not in {str(q) for q in self.paths()}]
        if new:
            self.add_recent([Path(p) for p in paths if Path(p).exists()])

    def _add_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Add checkpoints", "", "Checkpoints (*.pt);;All files (*)"
        )
        if files:
            self.add(files)

    def _add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"Add every {BEST_NAME} below a folder")
        if folder:
            self.add_folder(folder)

    def add_folder(self, folder: str | Path) -> list[Path]:
        """Add every best checkpoint below ``folder``; notify when there is none."""
        from ..runs import find_checkpoints

        try:
            found = find_checkpoints([folder])
        except FcresError as exc:
            notify_error(exc)
            return []
        self.add(found)
        return found


def _run_dir(path: Path) -> Path:
    """The run folder of a member's checkpoint (else the file's folder)."""
    from ..runs import run_dir_of

    return run_dir_of(path)


def _short_name(path: Path) -> str:
    parts = path.parts[-3:]
    return str(Path(*parts)) if len(path.parts) > 3 else str(path)


class CheckpointCombo(QWidget):
    """Editable combo of this session's checkpoints (newest first) plus "Browse...".

    Follows :func:`recent_checkpoints`: a newly trained checkpoint becomes the choice unless
    the user picked another file.  ``path()`` gives the chosen file ("" when none).
    """

    changed = Signal(str)

    def __init__(self, tooltip: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.NoInsert)
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        self.combo.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.combo.lineEdit().setPlaceholderText(f"{BEST_NAME} of a run (train one first)")
        self.combo.setToolTip(tooltip or f"Checkpoint file ({BEST_NAME}) written by napari-fcres")
        self.combo.currentTextChanged.connect(self.changed.emit)
        self.button = QPushButton("Browse...")
        self.button.setToolTip("Choose a checkpoint file in a dialog")
        self.button.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo, 1)
        lay.addWidget(self.button)
        self.setToolTip(self.combo.toolTip())
        self._newest = ""
        checkpoint_registry().changed.connect(self._on_registry_changed)
        self._on_registry_changed(recent_checkpoints())

    def _on_registry_changed(self, paths: list) -> None:
        current = self.combo.currentText()
        items = [str(p) for p in paths]
        follow = not current or current == self._newest
        self.combo.blockSignals(True)
        try:
            self.combo.clear()
            self.combo.addItems(items)
            self.combo.setEditText(items[0] if follow and items else current)
        finally:
            self.combo.blockSignals(False)
        self._newest = items[0] if items else ""
        if self.combo.currentText() != current:
            self.changed.emit(self.combo.currentText())

    def _browse(self) -> None:
        start = self.path() or str(Path.home())
        chosen, _ = QFileDialog.getOpenFileName(
            self, "Choose a checkpoint", start, "Checkpoints (*.pt);;All files (*)"
        )
        if chosen:
            self.set_path(chosen)

    def path(self) -> str:
        """The chosen checkpoint file, ``~`` expanded ("" when none)."""
        text = self.combo.currentText().strip()
        return str(Path(text).expanduser()) if text else ""

    def set_path(self, path: str | Path | None) -> None:
        """Choose a checkpoint file (None clears the choice)."""
        self.combo.setEditText("" if path is None else str(path))
