"""A widget's background work: worker start-up, the job controller and its progress bar.

Worker start-up (how a function runs off the GUI thread):

* :func:`start_worker` - run a (generator) function in a napari ``thread_worker``; every
  exception raised inside becomes a :class:`~._notify.WorkerFailed` delivered to ``on_error``.
* :func:`start_job` - the same for a job of :mod:`napari_fcres.jobs`, run in a spawned worker
  process (:mod:`napari_fcres.worker_process`) so no torch import, crash or GIL of the job can
  touch the viewer; :func:`prestart_worker_process` readies one ahead,
  :func:`process_workers_enabled` says whether jobs run in a process at all.
* :class:`StoppableProgress` - a cancelable bar in napari's activity dock.

The job controller: every widget that computes off the GUI thread (Train, Predict, Inspect,
Export model) holds one :class:`WidgetJob`.  It owns the running worker, the stop flag handed to
the job, the optional cancelable progress bar, and the rules the widgets share:

* one job at a time: starting a second raises :class:`~napari_fcres.errors.FcresError`;
* Stop is cooperative: the flag is set and the job ends at its next step;
* closing the dock (napari un-parents the widget) or deleting the widget stops the job;
* a :class:`~napari_fcres.errors.StoppedError` raised by the job reaches ``on_stopped``,
  any other failure ``on_error`` (as a :class:`~._notify.WorkerFailed`);
* when the job ends, however it ends, the progress bar closes, the job forgets its worker,
  then the widget's ``on_finished`` runs; ``on_state_changed`` runs whenever the job starts,
  is asked to stop and ends (widgets enable and disable their controls there).

Threading rule: worker functions receive plain numpy arrays and settings only, never layers or
the viewer; every callback (``on_yield``, ``on_done``, ``on_error``, ``on_finished``) runs on
the GUI thread, where layers may be changed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QWidget

from ..errors import FcresError, StoppedError
from ._notify import WorkerFailed, notify_error

log = logging.getLogger(__name__)

__all__ = [
    "start_worker",
    "start_job",
    "prestart_worker_process",
    "process_workers_enabled",
    "StoppableProgress",
    "WidgetJob",
]


# ----------------------------------------------------------------------------- worker start-up


def _guard(func: Callable[..., Any]) -> Callable[..., Any]:
    """A generator function running ``func`` that raises only :class:`WorkerFailed`."""

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            out = func(*args, **kwargs)
            if inspect.isgenerator(out):
                # ``yield from`` also closes ``out`` in this thread if we are closed
                out = yield from out
            return out
        except Exception as exc:  # noqa: BLE001 - everything must reach the GUI thread
            raise WorkerFailed.from_exception(exc) from None

    return guarded


def start_worker(
    func: Callable[..., Any],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[WorkerFailed], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    progress: bool | dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Start ``func(*args, **kwargs)`` in a napari ``thread_worker``; return the worker.

    ``func`` may be a generator function (each yielded value goes to ``on_yield``) or a plain
    function.  ``on_done`` gets the return value; ``on_error`` a :class:`WorkerFailed` (default:
    :func:`notify_error`); ``on_finished`` runs last in every case (success, error or
    ``worker.quit()``).  All callbacks run on the GUI thread.  ``progress`` is napari's
    ``_progress``: ``True`` for a busy bar in the activity dock or ``{"total": n, "desc": s}``
    to advance one step per yield.  To stop early, let ``func`` poll a ``threading.Event``
    (cooperative: it can still return a result and clean up); ``worker.quit()`` abandons the
    generator at its next yield without a result.
    """
    from napari.qt.threading import create_worker
    from superqt.utils import GeneratorWorker

    def _errored(exc: Exception) -> None:
        failed = exc if isinstance(exc, WorkerFailed) else WorkerFailed.from_exception(exc)
        try:
            (on_error or notify_error)(failed)
        except RuntimeError as err:  # the widget was closed while the worker ran
            if "deleted" not in str(err):
                raise
            log.warning("worker failed after its widget was closed: %s", failed.message)

    connect: dict[str, Callable[..., Any]] = {"errored": _errored}
    if on_yield is not None:
        connect["yielded"] = on_yield
    if on_done is not None:
        connect["returned"] = on_done
    if on_finished is not None:
        connect["finished"] = on_finished
    # superqt's plain GeneratorWorker: napari's subclass would relay the error to a second
    # notification; we show one ourselves (on_error / notify_error).
    worker = create_worker(
        _guard(func), *args, _start_thread=False, _connect=connect, _progress=progress,
        _worker_class=GeneratorWorker, _ignore_errors=True, **kwargs,
    )
    worker.warned.connect(_log_warning)
    worker.start()
    return worker


def process_workers_enabled() -> bool:
    """Whether jobs run in a worker process (default) rather than a thread of napari's.

    ``NAPARI_FCRES_WORKER=thread`` runs them in a thread (for debugging, or tests that patch
    the job in this process).
    """
    return os.environ.get("NAPARI_FCRES_WORKER", "process").strip().lower() != "thread"


def _in_process(
    func: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    threads: int | None,
    stop_event: threading.Event | None,
    jobs: list[Any],
) -> Generator[Any, None, Any]:
    """Worker-thread body: run ``func`` in a worker process and relay what it reports."""
    from ..worker_process import ProcessJob

    job = ProcessJob(func, *args, threads=threads, **kwargs)
    jobs.append(job)
    try:
        result = yield from job.stream(
            should_stop=None if stop_event is None else stop_event.is_set)
    finally:
        prestart_worker_process()  # the next job (e.g. predict after train) starts warm
    return result


def _in_thread(
    func: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    threads: int | None,
    stop_event: threading.Event | None,
    relay: _Relay,
) -> Any:
    """Worker-thread body when process workers are off: the placeholders become local."""
    from ..worker_process import REPORT, STOP

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    stop = stop_event if stop_event is not None else threading.Event()

    def report(*values: Any) -> None:
        relay.reported.emit(values[0] if len(values) == 1 else values)

    def local(value: Any) -> Any:
        return stop if value is STOP else report if value is REPORT else value

    out = func(*[local(a) for a in args], **{k: local(v) for k, v in kwargs.items()})
    if inspect.isgenerator(out):
        out = yield from out
    return out


class _Relay(QObject):
    """Carries REPORT calls from a worker thread to the GUI thread (queued signal)."""

    reported = Signal(object)


def start_job(
    func: Callable[..., Any],
    *args: Any,
    stop_event: threading.Event | None = None,
    threads: int | None = None,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[WorkerFailed], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    progress_bar: bool | dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``func`` (a function of a core module) in a worker *process*; return the worker.

    Like :func:`start_worker`, with the placeholders of :mod:`napari_fcres.worker_process`:
    pass ``STOP`` where the job expects its stop flag (setting ``stop_event`` here stops it)
    and ``REPORT`` where it expects a progress callback (its calls reach ``on_yield``).
    ``progress_bar`` is :func:`start_worker`'s ``progress`` (a bar in napari's activity dock).  A
    crash or kill of the process reaches ``on_error`` as a
    :class:`~napari_fcres.worker_process.WorkerProcessDied`; napari keeps running.
    ``worker.process_jobs`` holds the running :class:`ProcessJob` (for tests and kill).
    """
    callbacks = {"on_yield": on_yield, "on_done": on_done, "on_error": on_error,
                 "on_finished": on_finished, "progress": progress_bar}
    if not process_workers_enabled():
        relay = _Relay()  # REPORT calls from the thread reach on_yield on the GUI thread
        if on_yield is not None:
            relay.reported.connect(on_yield)
        worker = start_worker(_in_thread, func, args, kwargs, threads, stop_event, relay,
                              **callbacks)
        worker.process_jobs = []
        worker.relay = relay
        return worker
    jobs: list[Any] = []
    worker = start_worker(_in_process, func, args, kwargs, threads, stop_event, jobs,
                          **callbacks)
    worker.process_jobs = jobs
    return worker


def prestart_worker_process() -> None:
    """Start a spare worker process now, so the first job does not wait for torch's import."""
    if not process_workers_enabled():
        return
    from ..worker_process import prestart

    try:
        prestart()
    except Exception as exc:  # noqa: BLE001 - only an optimisation
        log.debug("could not prestart a worker process: %s", exc)


# ----------------------------------------------------------------------------- progress bar


PROGRESS_STEPS = 1000


class StoppableProgress:
    """A cancelable napari progress bar (activity dock) whose Cancel stops the run."""

    def __init__(self, desc: str, on_cancel: Callable[[], None]) -> None:
        from napari.utils import cancelable_progress

        outer = self

        class _Bar(cancelable_progress):
            def cancel(self) -> None:
                super().cancel()
                outer._on_cancel()

        self._on_cancel = on_cancel
        self._desc = desc
        self.bar = _Bar(total=PROGRESS_STEPS, desc=desc)

    def set_fraction(self, fraction: float) -> None:
        """Advance to ``fraction`` (0-1) of the run; never moves back."""
        target = int(round(min(max(fraction, 0.0), 1.0) * PROGRESS_STEPS))
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def set_description(self, desc: str) -> None:
        if desc != self._desc:  # every update makes napari's bar call processEvents()
            self._desc = desc
            self.bar.set_description(desc)

    def close(self) -> None:
        self.bar.close()


def _log_warning(args: tuple) -> None:
    message, category = args[0], args[1]
    log.warning("%s: %s", getattr(category, "__name__", category), message)


# ----------------------------------------------------------------------------- job controller


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
        :mod:`napari_fcres.jobs`, see :func:`start_job`) or in a napari thread
        worker (``process=False``, :func:`start_worker`); return the worker.

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
