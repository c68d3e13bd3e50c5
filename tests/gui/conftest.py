"""Shared fixtures of the GUI tests (run under Xvfb by pytest-xvfb).

Every test runs with napari's thread-affinity check for plugins enabled
(``NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1``: setting an attribute of a viewer or layer from a
non-GUI thread raises), and widgets get the viewer wrapped in napari's ``PublicOnlyProxy``
as napari hands it to plugin widgets (``make_napari_viewer_proxy``).

``em_small``, ``tiny_checkpoint``, ``tiny_config`` and ``one_thread`` come from
``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from napari_fcres.widgets.train import TrainWidget


@pytest.fixture(autouse=True)
def _plugin_main_thread_check(monkeypatch):
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Default run folders (``~/.napari-fcres/runs``) go to a temporary home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NAPARI_FCRES_TRAIN_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_checkpoint_registry():
    from napari_fcres.widgets._pickers import checkpoint_registry

    checkpoint_registry().paths.clear()
    yield
    checkpoint_registry().paths.clear()


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    """A napari viewer as plugin widgets see it (proxy + main-thread check)."""
    return make_napari_viewer_proxy()


@pytest.fixture
def em_layers(viewer, em_small):
    """The small stack added to ``viewer`` as an image and a labels layer."""
    image, labels = em_small
    img = viewer.add_image(image, name="EM (synthetic)")
    lab = viewer.add_labels(labels.copy(), name="EM labels (synthetic)")
    return img, lab


@pytest.fixture
def notifications():
    """Notifications dispatched during the test (napari's notification manager)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    class _View:
        def all(self) -> list:
            return list(notification_manager.records[start:])

        def errors(self) -> list:
            return [n for n in self.all() if str(n.severity).lower() == "error"]

        def messages(self) -> list[str]:
            return [str(n.message) for n in self.all()]

    return _View()


@pytest.fixture
def make_train_widget(viewer) -> Callable[..., TrainWidget]:
    """Factory: a Train widget docked in ``viewer``: tiny preset, CPU, crop 32, no time limit.

    ``make_train_widget(folder, epochs=2)`` writes its run to ``folder / "run"``.
    """
    from napari_fcres.widgets.train import TrainWidget

    def make(folder: Path, *, epochs: int = 2) -> TrainWidget:
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Train")
        widget.preset_combo.setCurrentText("tiny")
        widget.epochs_spin.setValue(epochs)
        widget.minutes_spin.setValue(0)
        widget.crop_spin.setValue(32)
        widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
        widget.output_edit.set_path(folder / "run")
        return widget

    return make


@pytest.fixture
def click(qtbot) -> Callable[[Any], None]:
    """``click(button)``: a left click on an enabled button (fails naming a disabled one)."""
    from qtpy.QtCore import Qt

    def press(button: Any) -> None:
        assert button.isEnabled(), f"{button.text()} is disabled"
        qtbot.mouseClick(button, Qt.LeftButton)

    return press
