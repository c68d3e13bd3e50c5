"""One widget's background job: start, stop, progress bar, finished and error, in one place.

Every widget that computes off the GUI thread (Train, Predict, Inspect, Export model) holds one
:class:`WidgetJob`.  It owns the running worker, the stop flag handed to the job, the optional
cancelable progress bar in napari's activity dock, and the rules the widgets share:

* one job at a time: starting a second raises :class:`~napari_fcres.errors.FcresError`;
* Stop is cooperative: the flag is set and the job ends at its next step;
* closing the dock (napari un-parents the widget) or deleting the widget stops the job;
* a :class:`~napari_fcres.errors.StoppedError` raised by the job reaches ``on_stopped``,
  any other failure ``on_error`` (as a :class:`~._common.WorkerFailed`);
* when the job ends, however it ends, the progress bar closes, the job forgets its worker,
  then the widget's ``on_finished`` runs; ``on_state_changed`` runs whenever the job starts,
  is asked to stop and ends (widgets enable and disable their controls there).

All callbacks run on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget

from ..errors import FcresError, StoppedError
from ._common import StoppableProgress, WorkerFailed, notify_error, start_job, start_worker

log = logging.getLogger(__name__)

__all__ = ["WidgetJob"]


class WidgetJob(QObject):
    """The background job of ``widget`` (at most one at a time); see the module docstring.

    ``name`` ("training", "prediction", ...) words the log and the "already running" error.
    ``on_stop_requested`` runs (GUI thread) when a stop is asked for while the job runs, e.g.
    to show "Stopping ...".
    """

    def __init__(
        self,
        widget: QWidget,
        name: str,
        *,
        on_state_changed: Callable[[], None] | None = None,
        on_stop_requested: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(widget)
        self._widget = widget
        self.name = name
        self.stop_event = threading.Event()
        self.worker: Any = None
        self.progress: StoppableProgress | None = None
        self._on_state_changed = on_state_changed
        self._on_stop_requested = on_stop_requested
        widget.installEventFilter(self)
        widget.destroyed.connect(self.stop_event.set)

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """True from :meth:`start` until the worker has finished."""
        return self.worker is not None

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for (until the next start)."""
        return self.stop_event.is_set()

    def _state_changed(self) -> None:
        if self._on_state_changed is not None:
            self._on_state_changed()

    # ------------------------------------------------------------------ start / stop
    def start(
        self,
        func: Callable[..., Any],
        *args: Any,
        process: bool = True,
        progress_desc: str | None = None,
        progress_bar: bool | dict[str, Any] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[WorkerFailed], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``func`` in a worker process (``process=True``, a job of
        :mod:`napari_fcres.jobs`, see :func:`~._common.start_job`) or in a napari thread
        worker (``process=False``, :func:`~._common.start_worker`); return the worker.

        ``progress_desc`` opens a cancelable bar in the activity dock with that description (its
        Cancel stops the job; advance it with :meth:`set_progress`); ``progress_bar`` is
        instead napari's own bar (``True`` or ``{"total": n, "desc": s}``).  A process job gets
        this job's stop flag as ``stop_event``; a thread job reads :attr:`stop_event` itself.
        """
        self.check_idle()
        self.stop_event.clear()
        if progress_desc is not None:
            self.progress = StoppableProgress(progress_desc, self.stop)
        callbacks: dict[str, Any] = {
            "on_yield": on_yield, "on_done": on_done,
            "on_error": self._errored(on_error, on_stopped),
            "on_finished": self._finished(on_finished),
        }
        try:
            if process:
                self.worker = start_job(func, *args, stop_event=self.stop_event,
                                        progress_bar=progress_bar, **callbacks, **kwargs)
            else:
                self.worker = start_worker(func, *args, progress=progress_bar, **callbacks,
                                           **kwargs)
        except BaseException:
            self._close_progress()
            raise
        self._state_changed()
        return self.worker

    def check_idle(self) -> None:
        """Raise :class:`FcresError` while a job runs (widgets call it before touching state)."""
        if self.running:
            raise FcresError(f"a {self.name} is already active; stop it first")

    def stop(self) -> bool:
        """Ask the running job to stop at its next step; False when nothing is running or a
        stop was already asked for."""
        if not self.running or self.stopping:
            return False
        self.stop_event.set()
        log.info("stopping the %s", self.name)
        if self._on_stop_requested is not None:
            self._on_stop_requested()
        self._state_changed()
        return True

    def set_progress(self, fraction: float, desc: str | None = None) -> None:
        """Advance the activity-dock bar to ``fraction`` (0-1), optionally re-described."""
        if self.progress is None:
            return
        self.progress.set_fraction(fraction)
        if desc is not None:
            self.progress.set_description(desc)

    # ------------------------------------------------------------------ callbacks
    def _errored(
        self,
        on_error: Callable[[WorkerFailed], None] | None,
        on_stopped: Callable[[], None] | None,
    ) -> Callable[[WorkerFailed], None]:
        def errored(exc: WorkerFailed) -> None:
            if isinstance(exc.original, StoppedError) and on_stopped is not None:
                on_stopped()
            else:
                (on_error or notify_error)(exc)

        return errored

    def _finished(self, on_finished: Callable[[], None] | None) -> Callable[[], None]:
        def finished() -> None:
            self.worker = None
            self._close_progress()
            if on_finished is not None:
                on_finished()
            self._state_changed()

        return finished

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """Closing the dock (napari un-parents the widget) stops a running job."""
        if (
            obj is self._widget and event.type() == QEvent.ParentChange
            and self._widget.parent() is None and self.running
        ):
            log.info("%s closed: stopping the %s", type(self._widget).__name__, self.name)
            self.stop()
        return False
