"""What the benchmark scripts share: data, one-core workers, configs and slice ranges.

The scripts import this module as ``_common`` (the folder of a script run as
``python benchmarks/x.py`` is on ``sys.path``; scripts loaded by file path put it
there first).  Only the standard library and numpy are imported at the top, so a
worker running under another interpreter (the torch-em venv of ``isbi_accuracy``)
can import it too; napari_fcres, torch and yaml are imported where needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_fcres.config import Config

__all__ = [
    "ISBI_FOREGROUND",
    "THREAD_ENV",
    "dotted_overrides",
    "init_one_core_worker",
    "load_config",
    "load_isbi",
    "load_sample",
    "local_isbi_dir",
    "parse_slices",
    "set_torch_threads",
    "shared_isbi_dir",
    "thread_env",
    "yaml_mapping",
]

#: ISBI 2012 labels: 255 = cell interior (foreground), 0 = membrane
ISBI_FOREGROUND = 255
#: environment variables that size the OpenMP / BLAS thread pools of a new process
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


# ----------------------------------------------------------------------------- slices


def parse_slices(text: str) -> list[int]:
    """``"0-3,7"`` -> ``[0, 1, 2, 3, 7]``: the slice selection of ``fcres --slices``.

    Comma-separated indices, inclusive ranges ``a-b`` and half-open ranges ``a:b``
    (:func:`napari_fcres.cli.parse_slices`); an empty selection is an error.
    """
    from napari_fcres.cli import parse_slices as parse_selection
    from napari_fcres.errors import InputError

    slices = parse_selection(text)
    if not slices:
        raise InputError(f"no slices selected by {text!r}; use e.g. 0-19 or 0,3,5")
    return slices


# ----------------------------------------------------------------------------- data


def shared_isbi_dir() -> Path:
    """The ISBI 2012 copy beside a development checkout (``<repo>/../shared/data/isbi2012``)."""
    from napari_fcres.sample_data import SHARED_ISBI_DIR

    return SHARED_ISBI_DIR


def local_isbi_dir() -> Path | None:
    """Where ISBI 2012 is on disk, or None when :func:`load_isbi` would download it.

    ``$NAPARI_FCRES_ISBI_DIR`` when set (a folder without the files fails on loading, as in
    napari_fcres), else :func:`shared_isbi_dir` when it holds all three files.
    """
    from napari_fcres.errors import InputError
    from napari_fcres.sample_data import ISBI_DIR_ENV, fetch_isbi2012

    env_dir = os.environ.get(ISBI_DIR_ENV)
    if env_dir:
        return Path(env_dir)
    shared = shared_isbi_dir()
    try:
        fetch_isbi2012(local_dir=shared)  # a local folder: only checks that the files are there
    except InputError:
        return None
    return shared


def load_isbi(local_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 train volume and labels (255 = cell interior), 30 x 512 x 512 uint8.

    From ``local_dir`` when given, else where napari_fcres finds it (``$NAPARI_FCRES_ISBI_DIR``,
    the shared copy) or downloads it once.
    """
    from napari_fcres.sample_data import load_isbi2012

    data = load_isbi2012(local_dir=local_dir)
    return data["train_image"], data["train_labels"]


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """The shipped synthetic EM stack and its labels (16 x 256 x 256 uint8; offline)."""
    from napari_fcres.sample_data import load_sample_stack

    return load_sample_stack()


# ----------------------------------------------------------------------------- threads


def thread_env(threads: int = 1, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with every :data:`THREAD_ENV` at ``threads``."""
    env = dict(os.environ if base is None else base)
    env.update(dict.fromkeys(THREAD_ENV, str(threads)))
    return env


def set_torch_threads(threads: int | None, *, interop: bool = False) -> None:
    """``torch.set_num_threads(threads)``, and the inter-op pool too with ``interop``.

    ``None`` or 0 leaves torch's default.  The inter-op pool can be sized only before the
    process first uses it; later calls keep it as it is.
    """
    if not threads:
        return
    import torch

    torch.set_num_threads(threads)
    if interop:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set, or parallel work already started
            pass


def init_one_core_worker(level: int, threads: int = 1) -> None:
    """Set-up of a benchmark worker process: ``threads`` CPU thread(s) everywhere, logging.

    Use as the ``initializer`` of a process pool (``initargs=(level,)``); the pool's parent
    should also put :func:`thread_env` into ``os.environ`` so OpenMP starts with one thread.
    """
    os.environ.update(dict.fromkeys(THREAD_ENV, str(threads)))
    set_torch_threads(threads, interop=True)
    logging.basicConfig(level=level, format=f"%(asctime)s [worker {os.getpid()}] %(message)s",
                        datefmt="%H:%M:%S", force=True)


# ----------------------------------------------------------------------------- configs


def yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A training YAML (``training/*.yaml``) as a mapping, without its ``run:`` data section."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.pop("run", None)
    return raw


def dotted_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "augment.rotation=0"]`` -> a nested mapping with YAML values."""
    import yaml

    raw: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return raw


def load_config(
    path: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    architecture: str | None = None,
) -> Config:
    """The run's :class:`~napari_fcres.config.Config` from a YAML file and/or overrides.

    Without ``path`` and ``overrides``: ``preset_config(preset or "cpu", architecture)``.
    Otherwise :func:`yaml_mapping` of ``path`` with ``overrides`` laid over it, ``preset``
    filling a missing ``model.preset`` and ``architecture`` replacing ``model.architecture``,
    built like ``fcres train`` builds it (``config_from_mapping``).
    """
    from napari_fcres.config import config_from_mapping, merge_nested, preset_config

    if path is None and not overrides:
        return preset_config(preset or "cpu", architecture=architecture or "pipeline")
    raw = merge_nested(yaml_mapping(path) if path is not None else {}, overrides or {})
    if preset is not None:
        raw.setdefault("model", {}).setdefault("preset", preset)
    if architecture is not None:
        raw.setdefault("model", {})["architecture"] = architecture
    return config_from_mapping(raw)
