"""Run one job in a spawned worker process and stream its reports back (no Qt here).

The napari widgets train, predict and inspect through this module so that nothing heavy runs
in the viewer's process: torch's lazy imports (``torch._dynamo`` and, with a CUDA build,
``triton``, whose bundled LLVM crashes against the LLVM of Mesa's software OpenGL) happen in
the child; a crash, an out-of-memory kill or a SIGKILL of the child ends the job with a
:class:`WorkerProcessDied` instead of taking the viewer down; the GIL of the child cannot
freeze the GUI; and GPU memory is returned when the child exits.

A job is a module-level function of a core module (importable without Qt).  It may be a
generator function (each yielded value is sent back) or a plain one; its return value, or
its exception, ends the stream.  Two placeholders are replaced in the child:

* :data:`STOP` - an object with ``is_set()`` that turns true when :meth:`ProcessJob.stop` is
  called (cooperative stop: the job can still save and return).
* :data:`REPORT` - a callable that sends its argument back as if it were yielded, or the
  tuple of its arguments when it gets several (e.g. ``progress(done, total)``).

Processes are *spawned*, never forked (a fork of a Qt/OpenGL process is unsafe), and
:func:`prestart` keeps one spare child with torch already imported, so a job starts without
paying the ~2 s import.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Generator, Iterator
from typing import Any

from .errors import FcresError

log = logging.getLogger(__name__)

__all__ = [
    "REPORT",
    "STOP",
    "ProcessJob",
    "WorkerProcessDied",
    "WorkerProcessError",
    "prestart",
    "shutdown_spare",
]

#: Seconds between checks of the child's liveness while waiting for a message.
POLL_SECONDS = 0.1
#: Modules the child imports while it waits for its job.
WARM_MODULES = ("torch", "napari_fcres.training", "napari_fcres.inference")


class _Placeholder:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str:  # pickles as the module-level singleton
        return self.name


STOP = _Placeholder("STOP")
REPORT = _Placeholder("REPORT")


class WorkerProcessError(FcresError):
    """An exception in the worker process that could not be sent back as itself."""


class WorkerProcessDied(FcresError):
    """The worker process ended without a result (killed, crashed or out of memory)."""

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


# ----------------------------------------------------------------------------- child side


def _child_main(jobs: Any, messages: Any, stop: Any, warm: tuple[str, ...]) -> None:
    """Body of the worker process: import ``warm``, wait for one job, run it, exit."""
    _forward_logs(messages)
    for name in warm:
        with contextlib.suppress(Exception):
            __import__(name)
    try:
        job = jobs.recv()
    except (EOFError, OSError):
        return  # the parent went away or the spare was shut down
    if job is None:
        return
    func, args, kwargs, threads = job
    if threads:
        import torch

        torch.set_num_threads(int(threads))

    def report(*values: Any) -> None:
        messages.put(("yield", values[0] if len(values) == 1 else values))

    args = [_substitute(a, stop, report) for a in args]
    kwargs = {k: _substitute(v, stop, report) for k, v in kwargs.items()}
    try:
        out = func(*args, **kwargs)
        if inspect.isgenerator(out):
            while True:
                try:
                    item = next(out)
                except StopIteration as end:
                    out = end.value
                    break
                report(item)
        messages.put(("done", out))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        messages.put(("error", _portable(exc)))
    finally:
        messages.close()
        messages.join_thread()


def _substitute(value: Any, stop: Any, report: Callable[[Any], None]) -> Any:
    if value is STOP:
        return stop
    if value is REPORT:
        return report
    return value


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """``exc`` (or a stand-in that pickles) and its formatted traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    bare = exc.with_traceback(None)
    try:
        pickle.loads(pickle.dumps(bare))
    except Exception:  # noqa: BLE001 - anything that does not round-trip is replaced
        bare = WorkerProcessError(f"{type(exc).__name__}: {exc}")
    return bare, text


class _QueueLogHandler(logging.Handler):
    """Sends the child's log records to the parent, which re-emits them."""

    def __init__(self, messages: Any) -> None:
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            record.exc_info = None
            self.messages.put(("log", record))
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)


def _forward_logs(messages: Any) -> None:
    logger = logging.getLogger("napari_fcres")
    logger.setLevel(logging.INFO)
    logger.addHandler(_QueueLogHandler(messages))
    logger.propagate = False


# ----------------------------------------------------------------------------- parent side


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Hide ``__main__`` while a child is spawned.

    ``spawn`` re-imports the parent's main script in the child unless it is a module run
    with ``-m``; a napari start-up script without an ``if __name__ == "__main__"`` guard would
    then open a second viewer in the worker.  Our jobs live in importable modules, so the
    child needs nothing from ``__main__``.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class _Child:
    """A spawned process waiting for one job."""

    def __init__(self, warm: tuple[str, ...] = WARM_MODULES) -> None:
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.messages = ctx.Queue()
        receive, self.jobs = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_child_main, args=(receive, self.messages, self.stop_event, warm),
            name="napari-fcres-worker", daemon=True,
        )
        with _without_main_module():
            self.process.start()
        receive.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.jobs.send(None)
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)


_SPARE: _Child | None = None
_SPARE_LOCK = threading.Lock()


def prestart() -> None:
    """Start a spare worker process (torch imported) if none is waiting."""
    global _SPARE
    with _SPARE_LOCK:
        if _SPARE is None or not _SPARE.alive():
            _SPARE = _Child()


def shutdown_spare() -> None:
    """End the spare worker process, if any (e.g. when the viewer closes)."""
    global _SPARE
    with _SPARE_LOCK:
        spare, _SPARE = _SPARE, None
    if spare is not None:
        spare.close()


def _take_child() -> _Child:
    global _SPARE
    with _SPARE_LOCK:
        child, _SPARE = _SPARE, None
    if child is not None and child.alive():
        return child
    if child is not None:
        child.close()
    return _Child()


class ProcessJob:
    """``func(*args, **kwargs)`` in a worker process; iterate :meth:`stream` for its reports.

    ``threads`` sets ``torch.set_num_threads`` in the child.  :meth:`stop` asks the job to
    stop (the :data:`STOP` placeholder), :meth:`kill` ends the process at once.
    """

    def __init__(
        self, func: Callable[..., Any], *args: Any, threads: int | None = None, **kwargs: Any
    ) -> None:
        if getattr(func, "__module__", "__main__") == "__main__" or "<locals>" in getattr(
            func, "__qualname__", ""
        ):
            raise ValueError(f"{func!r} must be a module-level function of an importable module")
        self.func = func
        self._child = _take_child()
        self._child.jobs.send((func, list(args), kwargs, threads))
        self._child.jobs.close()

    @property
    def pid(self) -> int | None:
        return self._child.process.pid

    def stop(self) -> None:
        """Ask the job to stop at its next check of :data:`STOP`."""
        self._child.stop_event.set()

    def stopping(self) -> bool:
        return self._child.stop_event.is_set()

    def kill(self) -> None:
        """End the worker process now (SIGKILL); :meth:`stream` then raises."""
        if self._child.process.is_alive():
            self._child.process.kill()

    def stream(
        self, should_stop: Callable[[], bool] | None = None
    ) -> Generator[Any, None, Any]:
        """Yield what the job reports; return its result or raise its exception.

        ``should_stop`` is polled between messages and forwards a stop request made in the
        parent (e.g. a widget's ``threading.Event``).  Raises :class:`WorkerProcessDied` when
        the process ends without a result.
        """
        messages = self._child.messages
        process = self._child.process
        try:
            while True:
                if should_stop is not None and not self.stopping() and should_stop():
                    self.stop()
                try:
                    kind, payload = messages.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if process.is_alive():
                        continue
                    try:  # a last message may still be in the pipe
                        kind, payload = messages.get(timeout=POLL_SECONDS)
                    except queue.Empty:
                        process.join(timeout=1)
                        raise WorkerProcessDied(_death_message(process.exitcode),
                                                process.exitcode) from None
                if kind == "yield":
                    yield payload
                elif kind == "log":
                    _reemit(payload)
                elif kind == "done":
                    return payload
                elif kind == "error":
                    exc, text = payload
                    exc.worker_traceback = text  # type: ignore[attr-defined]
                    log.debug("worker process traceback:\n%s", text)
                    raise exc
        finally:
            process.join(timeout=5)
            if process.is_alive():  # abandoned (generator closed) or stuck: do not leak it
                self.stop()
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=2)

    def run(self) -> Any:
        """Run to the end, discarding reports; return the result."""
        gen = self.stream()
        while True:
            try:
                next(gen)
            except StopIteration as end:
                return end.value


def _reemit(record: logging.LogRecord) -> None:
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def _death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = f"was ended by {name}"
        if -exitcode == signal.SIGKILL:
            why += " (killed, often by the system when memory runs out)"
        elif -exitcode == signal.SIGSEGV:
            why += " (a crash inside a native library)"
    else:
        why = f"exited with code {exitcode} without a result"
    return f"the worker process {why}; napari itself is unaffected"


def cpu_threads_for_worker() -> int | None:
    """Torch threads for a worker: leave one core to the viewer on small machines."""
    env = os.environ.get("NAPARI_FCRES_TRAIN_THREADS")
    if env:
        return max(1, int(env))
    n = os.cpu_count() or 1
    return max(1, n - 1) if n > 1 else None
