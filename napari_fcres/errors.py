"""Error types raised by napari-fcres.

Every problem a user can cause (bad input, a foreign checkpoint, a missing
device) is raised as a subclass of :class:`FcresError` with a message that
names the problem and what to change.  Widgets and the CLI catch
``FcresError`` and show its message instead of a traceback.
"""

from __future__ import annotations


class FcresError(Exception):
    """Base class of every error napari-fcres raises on purpose."""


class InputError(FcresError, ValueError):
    """An image, label or argument the user supplied cannot be used as given."""


class CheckpointError(FcresError):
    """A checkpoint file is missing, corrupt, foreign or of another preset."""


class DeviceError(FcresError):
    """The requested compute device is not available."""


class OutOfMemoryError(FcresError):
    """The device ran out of memory; the message says which setting to lower."""


class TrainingError(FcresError):
    """Training failed (e.g. the loss became NaN); the message says why."""


class StoppedError(FcresError):
    """Work was stopped on request before it finished."""
