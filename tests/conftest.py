"""Fixtures shared by every test: one torch thread, a tiny config, a tiny trained model.

GUI-only fixtures (viewer, layers, notifications) live in ``tests/gui/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

# Tests train in this process (fixtures, core tests); building an optimizer imports
# torch._dynamo and, with a CUDA build of torch, triton, whose LLVM segfaults the process if
# it loads after napari's software-OpenGL viewer.  Loaded first, it is harmless.  (The plugin
# itself never imports it into napari's process: its jobs run in a worker process.)
try:
    import torch._dynamo  # noqa: F401
except Exception:  # noqa: BLE001 - only an ordering precaution
    pass

if TYPE_CHECKING:
    from napari_fcres.config import Config

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """``load_benchmark("speed")`` imports ``benchmarks/speed.py`` (not a package).

    The module is registered under its file stem, the name under which the scripts import
    each other (they put their folder on ``sys.path``), so pickled functions resolve to it.
    """
    def load(stem: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(stem, BENCHMARKS_DIR / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[stem] = module
        spec.loader.exec_module(module)
        return module

    return load


#: training settings of :func:`tiny_config`: a few small CPU steps
TINY_TRAIN: dict[str, Any] = {"epochs": 2, "crop_size": 32, "device": "cpu", "val_split": "slices",
                              "val_every_steps": 3, "loss": "dice"}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny tensors run faster than on a busy multi-core pool."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole module (with ``pytestmark = usefixtures(...)``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """Factory: the ``tiny`` preset with :data:`TINY_TRAIN`, training settings overridable.

    ``tiny_config()``, ``tiny_config(epochs=1, steps_per_epoch=3)``, ``tiny_config(arch="unet")``.
    """
    from napari_fcres.config import preset_config
    from napari_fcres.training import replace_train

    def make(*, arch: str = "pipeline", **train: Any) -> Config:
        return replace_train(preset_config("tiny", arch), **{**TINY_TRAIN, **train})

    return make


@pytest.fixture(scope="session")
def em_small() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic sample cropped to 4 x 64 x 64: image uint8, labels 0/1 uint8."""
    from napari_fcres._sample_data import synthetic_em

    (image, _, _), (labels, _, _) = synthetic_em()
    return (np.ascontiguousarray(image[:4, :64, :64]),
            np.ascontiguousarray(labels[:4, :64, :64]))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, em_small, tiny_config) -> Path:
    """A tiny-preset pipeline trained for 2 epochs on the small stack (best.pt)."""
    from napari_fcres.training import run_training

    with torch_threads(1):
        result = run_training(tiny_config(), *em_small, tmp_path_factory.mktemp("tiny_run"))
    return result.best_checkpoints[0]


@pytest.fixture(scope="session")
def train_tiny(em_small, tiny_config) -> Callable[..., Path]:
    """Factory: ``train_tiny(folder, epochs=8, seed=7)`` trains a tiny pipeline on the small
    stack (one thread, lr 3e-3) and returns its best checkpoint."""
    from napari_fcres.training import run_training

    def make(folder: Path, **train: Any) -> Path:
        with torch_threads(1):
            result = run_training(tiny_config(**{"lr": 3e-3, **train}), *em_small, folder)
        return result.best_checkpoints[0]

    return make


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, train_tiny) -> Path:
    """A tiny model trained long enough (20 epochs, ~1 s) to find the cells of the small stack."""
    return train_tiny(tmp_path_factory.mktemp("trained_run"), epochs=20, seed=0)
