"""Resuming a run: one rule for the CLI, the Train widget and :func:`~napari_fcres.training.train`.

The rules live in :mod:`napari_fcres.runs`, the owner of the run-folder layout; this
module re-exports them for older callers.  A resumed run trains with the configuration
stored in its folder; what the caller asks for is laid over it with :func:`resume_request`;
:func:`resume_config` then refuses every difference outside :data:`RESUME_CHANGEABLE`,
naming each key, for example ``train.lr: 0.001 in the run, 0.01 now``.
"""

from __future__ import annotations

from .runs import (
    CONFIG_NAME,
    RESUME_CHANGEABLE,
    config_differences,
    last_checkpoints,
    remove_stale_temp_files,
    resume_config,
    resume_request,
    stored_config,
    write_run_config,
)

__all__ = [
    "CONFIG_NAME",
    "RESUME_CHANGEABLE",
    "config_differences",
    "last_checkpoints",
    "remove_stale_temp_files",
    "resume_config",
    "resume_request",
    "stored_config",
    "write_run_config",
]
