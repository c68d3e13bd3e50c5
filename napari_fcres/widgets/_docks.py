"""Where the napari-fcres dock widgets go, and how one finds another without importing it.

* :func:`tab_with_other_docks` - every napari-fcres dock opens as a tab of one panel (the
  first napari-fcres dock in its dock area): opened from the Plugins menu, napari would stack
  them in one column, each squeezed to a few rows with its own scroll bar.
* :func:`find_dock_widget` / :func:`open_dock_widget` - a widget that needs another one (the
  Export widget hands fine-tuning to the Train widget) names it as the Plugins menu does; the
  class comes from the plugin's manifest (``napari_fcres/napari.yaml``), so widget modules
  never import each other.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

from ..errors import FcresError

log = logging.getLogger(__name__)

__all__ = ["PLUGIN_NAME", "widget_python_name", "is_plugin_widget", "find_dock_widget",
           "open_dock_widget", "tab_with_other_docks", "dock_of"]

#: The npe2 plugin name of napari-fcres.
PLUGIN_NAME = "napari-fcres"
MANIFEST = Path(__file__).resolve().parent.parent / "napari.yaml"


@functools.lru_cache(maxsize=1)
def _python_names() -> dict[str, str]:
    """``{display name: "module:Class"}`` of every widget in the plugin's manifest."""
    from npe2 import PluginManifest

    contributions = PluginManifest.from_file(MANIFEST).contributions
    commands = {c.id: c.python_name for c in contributions.commands or []}
    return {w.display_name: commands[w.command] for w in contributions.widgets or []}


def widget_python_name(display_name: str) -> str:
    """``"module:Class"`` of the widget the Plugins menu shows as ``display_name``."""
    try:
        return _python_names()[display_name]
    except KeyError:
        raise FcresError(f"napari-fcres has no widget named {display_name!r}") from None


def is_plugin_widget(widget: Any, display_name: str) -> bool:
    """Whether ``widget`` is an instance of the widget named ``display_name``."""
    cls = type(widget)
    return f"{cls.__module__}:{cls.__qualname__}" == widget_python_name(display_name)


def find_dock_widget(viewer: Any, display_name: str) -> Any | None:
    """The docked widget named ``display_name`` in the Plugins menu, or None."""
    try:
        for widget in viewer.window.dock_widgets.values():
            if is_plugin_widget(widget, display_name):
                return widget
    except (AttributeError, RuntimeError):
        pass
    return None


def open_dock_widget(viewer: Any, display_name: str) -> Any:
    """The docked widget named ``display_name``; docked now (as a tab) when there is none.

    Opened through napari's plugin manager like the Plugins menu does; when the plugin is not
    registered (e.g. not installed), the class named in the manifest is created directly.
    """
    widget = find_dock_widget(viewer, display_name)
    if widget is not None:
        return widget
    try:  # tabbed with the other docks: docking one more never grows the window
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, display_name, tabify=True)
        return widget
    except Exception as exc:  # noqa: BLE001 - plugin not registered (e.g. not installed)
        log.info("no registered %r widget (%s); creating one", display_name, exc)
    module, _, name = widget_python_name(display_name).partition(":")
    widget = getattr(importlib.import_module(module), name)(viewer)
    viewer.window.add_dock_widget(widget, name=display_name, tabify=True)
    return widget


# ----------------------------------------------------------------------------- one tabbed panel

#: Qt property that marks the napari-fcres dock widgets (what :func:`tab_with_other_docks` joins).
DOCK_PROPERTY = "napari_fcres_dock"


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding ``widget`` (None when it is not docked)."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _fcres_docks(window: QMainWindow, area: Any, but: QDockWidget) -> list[QDockWidget]:
    """The docked (not floating) napari-fcres docks of ``window`` in ``area``, but ``but``."""
    out = []
    for dock in window.findChildren(QDockWidget):
        if dock is but or dock.isFloating() or window.dockWidgetArea(dock) != area:
            continue
        inner = dock.widget()
        if inner is None:
            continue
        if inner.property(DOCK_PROPERTY) or any(
            w.property(DOCK_PROPERTY) for w in inner.findChildren(QWidget)
        ):
            out.append(dock)
    return out


class _TabWithOthers(QObject):
    """Once, after ``widget`` is first shown in a dock: make that dock a tab of the panel of
    the other napari-fcres docks in its area, and bring it to the front."""

    def __init__(self, widget: QWidget, title: str) -> None:
        super().__init__(widget)
        self._widget = widget
        self._title = title
        self._done = False
        widget.setProperty(DOCK_PROPERTY, True)
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if obj is self._widget and not self._done and event.type() == QEvent.Show:
            self._done = True
            # napari shows the dock while adding it: tabify once it is in place
            QTimer.singleShot(0, self.tabify)
        return False

    def tabify(self) -> bool:
        """Tab the widget's dock with the other napari-fcres docks; True when it moved."""
        try:
            dock = dock_of(self._widget)
        except RuntimeError:  # the widget is gone
            return False
        window = dock.parentWidget() if dock is not None else None
        if dock is None or not isinstance(window, QMainWindow):
            return False
        if self._title:
            dock.setWindowTitle(self._title)  # the tab's text (napari's title bar keeps its own)
        if dock.isFloating():
            return False
        others = _fcres_docks(window, window.dockWidgetArea(dock), dock)
        if not others or any(dock in window.tabifiedDockWidgets(o) for o in others):
            return False
        window.tabifyDockWidget(others[0], dock)
        dock.show()
        dock.raise_()
        log.debug("docked %s as a tab of %s", dock.windowTitle(), others[0].windowTitle())
        return True


def tab_with_other_docks(widget: QWidget, title: str = "") -> None:
    """Dock ``widget`` as a tab with the other napari-fcres docks when it is first shown.

    Every dock then has the whole height of the dock area: all six widgets open stay readable
    on a 1366x768 screen.  ``title`` (short: "Train", "Predict", ...) is the tab's text.  A dock
    the user moved, floated or closed later stays where it is.
    """
    _TabWithOthers(widget, title)
