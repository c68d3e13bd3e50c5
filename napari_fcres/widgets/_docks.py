"""Find or open another napari-fcres dock widget by its menu name, without importing it.

A widget that needs another one (the Export widget hands fine-tuning to the Train widget)
names it as the Plugins menu does; the class comes from the plugin's manifest
(``napari_fcres/napari.yaml``), so widget modules never import each other.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Any

from ..errors import FcresError

log = logging.getLogger(__name__)

__all__ = ["PLUGIN_NAME", "widget_python_name", "is_plugin_widget", "find_dock_widget",
           "open_dock_widget"]

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
