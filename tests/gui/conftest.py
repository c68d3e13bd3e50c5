"""Shared fixtures of the GUI tests (run under Xvfb by pytest-xvfb).

Every test runs with napari's thread-affinity check for plugins enabled
(``NAPARI_ENSURE_PLUGIN_MAIN_THREAD=1``: setting an attribute of a viewer or layer from a
non-GUI thread raises), and widgets get the viewer wrapped in napari's ``PublicOnlyProxy``
as napari hands it to plugin widgets (``make_napari_viewer_proxy``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


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
    from napari_fcres.widgets._common import checkpoint_registry

    checkpoint_registry().paths.clear()
    yield
    checkpoint_registry().paths.clear()


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    """A napari viewer as plugin widgets see it (proxy + main-thread check)."""
    return make_napari_viewer_proxy()


@pytest.fixture(scope="session")
def em_small() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic sample cropped to 4 x 64 x 64: image uint8, labels 0/1 uint8."""
    from napari_fcres._sample_data import synthetic_em

    (image, _, _), (labels, _, _) = synthetic_em()
    return (np.ascontiguousarray(image[:4, :64, :64]),
            np.ascontiguousarray(labels[:4, :64, :64]))


@pytest.fixture
def em_layers(viewer, em_small):
    """The small stack added to ``viewer`` as an image and a labels layer."""
    image, labels = em_small
    img = viewer.add_image(image, name="EM (synthetic)")
    lab = viewer.add_labels(labels.copy(), name="EM labels (synthetic)")
    return img, lab


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, em_small) -> Path:
    """A tiny-preset pipeline trained for 2 epochs on the small stack (best.pt)."""
    from napari_fcres.config import preset_config
    from napari_fcres.training import replace_train, run_training

    cfg = replace_train(preset_config("tiny"), epochs=2, crop_size=32, device="cpu")
    result = run_training(cfg, *em_small, tmp_path_factory.mktemp("tiny_run"))
    return result.best_checkpoints[0]


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

