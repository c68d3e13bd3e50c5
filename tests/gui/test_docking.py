"""Every napari-fcres widget docked at once still fits a screen (issue 10, item 6)."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QDockWidget, QWidget

from napari_fcres.widgets._forms import MIN_DOCK_HEIGHT

pytestmark = pytest.mark.gui

WIDGETS = ("Train / fine-tune", "Inspect normalization", "Predict", "Correct",
           "Export and retrain", "Export model (bioimage.io)")
#: A full-HD screen less a task bar.
SCREEN_HEIGHT = 1000


def test_all_widgets_docked_fit_the_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    docks = [viewer.window.add_plugin_dock_widget("napari-fcres", name)[0] for name in WIDGETS]
    for dock in docks:
        # the content scrolls: a dock can be squeezed to little more than its title bar
        assert dock.minimumSizeHint().height() <= MIN_DOCK_HEIGHT + 60, dock.name
        # ... while it asks for its full height when there is room
        assert dock.sizeHint().height() > MIN_DOCK_HEIGHT + 60, dock.name
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= SCREEN_HEIGHT
    # the Train widget alone is taller than that (plot included): it scrolls
    train = viewer.window.add_plugin_dock_widget("napari-fcres", WIDGETS[0])[1]
    assert train.findChild(QWidget, "fcres_body").minimumSizeHint().height() > SCREEN_HEIGHT / 2


def test_fine_tune_opens_the_train_widget_tabbed(make_napari_viewer, qtbot):
    """The Export widget docks the Train widget as a tab, not one more dock below."""
    viewer = make_napari_viewer()
    _, export = viewer.window.add_plugin_dock_widget("napari-fcres", WIDGETS[4])
    train = export._find_train_widget()
    window = viewer.window._qt_window
    train_dock = next(d for d in window.findChildren(QDockWidget)
                      if d.isAncestorOf(train))
    export_dock = next(d for d in window.findChildren(QDockWidget)
                       if d.isAncestorOf(export))
    assert train_dock in window.tabifiedDockWidgets(export_dock)
