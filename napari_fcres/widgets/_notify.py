"""Errors and notifications of the napari-fcres widgets: one message, shown in full.

* :class:`WorkerFailed` - what every failure inside a worker arrives as on the GUI thread.
* :func:`notify_error` / :func:`notify_info` / :func:`notify_warning` - napari notifications
  (plain message for our own errors, a traceback button for unexpected ones).
* :func:`report_error` / :func:`error_message` - an error in full in a widget's status line
  (napari's toast shows only its first line, about 40 characters) and as a notification.
* :func:`report` - a result in full in the status line and a short toast.
"""

from __future__ import annotations

import html
import logging
import traceback

from qtpy.QtWidgets import QLabel

from ..errors import FcresError

log = logging.getLogger(__name__)

__all__ = [
    "WorkerFailed",
    "notify_error",
    "notify_info",
    "notify_warning",
    "error_message",
    "report_error",
    "report",
]


class WorkerFailed(FcresError):
    """An exception raised inside a worker thread, carried to the GUI thread.

    superqt silently drops a ``RuntimeError`` raised inside a ``thread_worker`` (it takes it
    for a deleted Qt object) and then never emits ``finished``; :func:`start_worker` therefore
    turns every exception into this type.  Attributes: ``message`` (what to show),
    ``original_type`` (name of the original exception class), ``traceback_text`` (the full
    formatted traceback) and ``original`` (the exception itself, without its frames) and
    ``user_error`` (True for :class:`~napari_fcres.errors.FcresError` s, i.e. problems the user
    can fix from the message alone).
    """

    def __init__(
        self,
        message: str,
        *,
        original_type: str = "",
        traceback_text: str = "",
        original: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.original_type = original_type
        self.traceback_text = traceback_text
        self.original = original

    @property
    def user_error(self) -> bool:
        return isinstance(self.original, FcresError)

    @classmethod
    def from_exception(cls, exc: BaseException) -> WorkerFailed:
        """Wrap ``exc`` (an out-of-memory error gets a message saying what to lower)."""
        if isinstance(exc, WorkerFailed):
            return exc
        text = getattr(exc, "worker_traceback", None) or "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        )
        if isinstance(exc, FcresError):
            message = str(exc) or type(exc).__name__
        elif _is_out_of_memory(exc):
            message = (
                f"out of memory ({type(exc).__name__}: {str(exc)[:200]}); lower the batch, "
                "crop or tile size, or pick a smaller preset"
            )
        else:
            message = f"{type(exc).__name__}: {exc}"
        return cls(message, original_type=type(exc).__name__, traceback_text=text,
                   original=exc.with_traceback(None))


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        from ..device import is_out_of_memory
    except Exception:  # noqa: BLE001 - torch missing: cannot be a torch OOM
        return False
    return is_out_of_memory(exc)


def notify_error(exc: BaseException | str, context: str = "") -> None:
    """Show ``exc`` as a napari error notification (GUI thread only).

    Our own errors (:class:`FcresError`, also inside :class:`WorkerFailed`) show their message
    only; unexpected errors keep a "View traceback" button.  ``context`` prefixes the message
    (e.g. ``"Training failed"``).
    """
    from napari.utils.notifications import (
        ErrorNotification,
        notification_manager,
        show_error,
    )

    prefix = f"{context}: " if context else ""
    if isinstance(exc, str):
        log.error("%s%s", prefix, exc)
        show_error(prefix + exc)
        return
    user = exc.user_error if isinstance(exc, WorkerFailed) else isinstance(exc, FcresError)
    message = exc.message if isinstance(exc, WorkerFailed) else str(exc) or type(exc).__name__
    if user:
        log.warning("%s%s", prefix, message)
        show_error(prefix + message)
        return
    tb_text = exc.traceback_text if isinstance(exc, WorkerFailed) else "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )
    log.error("%s%s\n%s", prefix, message, tb_text)

    class _TracebackNotification(ErrorNotification):
        """Shows the worker thread's traceback behind "View Traceback"."""

        def as_text(self) -> str:
            return tb_text

        def as_html(self) -> str:
            return f"<pre>{html.escape(tb_text)}</pre>"

    shown = WorkerFailed(prefix + message, original_type=type(exc).__name__,
                         traceback_text=tb_text)
    notification_manager.dispatch(_TracebackNotification(shown))


def notify_info(message: str) -> None:
    """Show an info notification and log it."""
    from napari.utils.notifications import show_info

    log.info(message)
    show_info(message)


def notify_warning(message: str) -> None:
    """Show a warning notification and log it."""
    from napari.utils.notifications import show_warning

    log.warning(message)
    show_warning(message)


def error_message(exc: BaseException | str) -> str:
    """The text :func:`notify_error` shows for ``exc`` (without a context prefix)."""
    if isinstance(exc, str):
        return exc
    if isinstance(exc, WorkerFailed):
        return exc.message
    if isinstance(exc, FcresError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def report_error(status: QLabel | None, exc: BaseException | str, context: str = "") -> None:
    """Put the whole error message in ``status`` (a widget's status line) and notify it.

    napari's toast cuts a message after a few words; the status line keeps all of it.
    """
    text = error_message(exc)
    if status is not None:
        try:
            status.setText(f"{context}: {text}" if context else text)
        except RuntimeError:  # the widget is gone
            pass
    notify_error(exc, context)


def report(status: QLabel | None, message: str, *, toast: str | None = None,
           level: str = "info") -> None:
    """Show ``message`` in full in ``status`` (a widget's status line) and ``toast`` (default:
    the message) as a napari notification of ``level`` ("info" or "warning").

    A toast shows one line of about 40 characters; keep ``toast`` that short and let the
    status line carry the details.
    """
    if status is not None:
        try:
            status.setText(message)
        except RuntimeError:  # the widget is gone
            pass
    text = toast or message
    if toast:
        log.info(message)
    (notify_warning if level == "warning" else notify_info)(text)
