"""Helpers shared by every napari-fcres widget.

Public API (kept small on purpose):

* :class:`WorkerFailed` - what every failure inside a worker arrives as.
* :func:`start_worker` - run a (generator) function in a napari ``thread_worker``;
  every exception raised inside becomes a :class:`WorkerFailed` delivered to ``on_error``.
* :func:`start_job` - the same for a job of :mod:`napari_fcres.jobs`, run in a spawned worker
  process (:mod:`napari_fcres.worker_process`) so no torch import, crash or GIL of the job can
  touch the viewer; :func:`prestart_worker_process` readies one ahead.
* :func:`notify_error` / :func:`notify_info` / :func:`notify_warning` - napari notifications
  (plain message for our own errors, traceback button for unexpected ones).
* :func:`report_error` / :func:`error_message` - an error in full in a widget's status line
  (a toast shows only its first few words) and as a notification.
* :func:`scroll_body` - a dock widget's main layout inside a scroll area, so that docking every
  widget never grows the window beyond the screen.
* :class:`LayerCombo` - a combo box of the viewer's layers of one type that follows layer
  insertion, removal and renaming; ``.layer()`` gives the chosen layer.
* :class:`PathEdit` - a line edit plus "Browse..." button for a file or folder.
* :func:`device_choices` - ``(label, key)`` of every compute device.
* :func:`recent_checkpoints` / :func:`remember_checkpoints` / :func:`checkpoint_registry` -
  checkpoints trained in this session (newest first), with a ``changed`` Qt signal.
* :func:`make_canvas` / :func:`style_axes` - a matplotlib figure embedded in Qt, in the
  viewer's theme colours.
* :func:`layer_data` / :func:`current_slice` - a layer's data as numpy and the slice the
  viewer shows.
* :func:`layer_source` / :func:`is_lazy_layer` - a layer's full-resolution data without
  loading it, and whether it is lazy (dask / zarr / multiscale: predict it block by block).

Layer names, metadata keys and undoable label writes shared by several widgets live in
:mod:`._layers`, checkpoint pickers in :mod:`._pickers`, the Train widget's plot in
:mod:`._plot`, each widget's job controller (start, stop, progress, finished, error) in
:mod:`._job`: widget modules never import each other.

Threading rule: worker functions receive plain numpy arrays and settings only, never layers or
the viewer; every callback (``on_yield``, ``on_done``, ``on_error``, ``on_finished``) runs on
the GUI thread, where layers may be changed.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import threading
import traceback
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QSize, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..errors import FcresError

log = logging.getLogger(__name__)

__all__ = [
    "WorkerFailed",
    "start_worker",
    "StoppableProgress",
    "start_job",
    "prestart_worker_process",
    "process_workers_enabled",
    "notify_error",
    "notify_info",
    "notify_warning",
    "report_error",
    "error_message",
    "scroll_body",
    "LayerCombo",
    "PathEdit",
    "device_choices",
    "recent_checkpoints",
    "remember_checkpoints",
    "checkpoint_registry",
    "make_canvas",
    "style_axes",
    "layer_data",
    "layer_source",
    "is_lazy_layer",
    "current_slice",
]


# ----------------------------------------------------------------------------- errors


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


# ----------------------------------------------------------------------------- layout

#: A dock widget may be squeezed to this height (its content then scrolls).
MIN_DOCK_HEIGHT = 100


class _ScrollArea(QScrollArea):
    """Scrolls vertically; as wide as its content, as tall as the dock allows."""

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        body = self.widget()
        if body is None:
            return super().minimumSizeHint()
        hint = body.minimumSizeHint()
        return QSize(hint.width() + self._extra_width(), min(hint.height(), MIN_DOCK_HEIGHT))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        body = self.widget()
        if body is None:
            return super().sizeHint()
        hint = body.sizeHint()
        return QSize(hint.width() + self._extra_width(), hint.height() + 2 * self.frameWidth())


def scroll_body(widget: QWidget) -> QVBoxLayout:
    """The main layout of a dock widget, inside a vertical scroll area.

    The dock asks for its full height when there is room but can be squeezed to
    :data:`MIN_DOCK_HEIGHT`: with every napari-fcres widget docked, napari's dock area shares
    the screen height and the widgets scroll instead of pushing the window off the screen.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = _ScrollArea(widget)
    area.setObjectName("fcres_scroll")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    body = QWidget()
    body.setObjectName("fcres_body")
    area.setWidget(body)
    outer.addWidget(area)
    return QVBoxLayout(body)


# ----------------------------------------------------------------------------- workers


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


#: Steps of a :class:`StoppableProgress` bar (fractions are shown at this resolution).
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


# ----------------------------------------------------------------------------- layers


class LayerCombo(QComboBox):
    """Combo box of the viewer's layers of ``layer_type``, kept up to date.

    Follows layer insertion, removal, reordering and renaming.  ``allow_none`` adds a first
    entry ``none_text`` meaning "no layer".  ``layer_changed`` is emitted with the new layer
    (or None) whenever the choice changes.
    """

    layer_changed = Signal(object)

    def __init__(
        self,
        viewer: Any,
        layer_type: type | tuple[type, ...],
        *,
        allow_none: bool = False,
        none_text: str = "(none)",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer_type = layer_type
        self._allow_none = allow_none
        self._none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.currentIndexChanged.connect(self._emit_changed)
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self.refresh)
        events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event: Any = None) -> None:
        if event is not None and getattr(event, "value", None) is not None:
            event.value.events.name.connect(self.refresh)
        self.refresh()

    def _matching(self) -> list[Any]:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._layer_type)]

    def refresh(self, event: Any = None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentText()
        names = [layer.name for layer in self._matching()]
        if self._allow_none:
            names = [self._none_text, *names]
        old = [self.itemText(i) for i in range(self.count())]
        if names == old:
            return
        self.blockSignals(True)
        try:
            self.clear()
            self.addItems(names)
            if current in names:
                self.setCurrentIndex(names.index(current))
            elif names:
                # nothing chosen yet, or the choice was removed: the top-most layer
                self.setCurrentIndex(0 if self._allow_none else len(names) - 1)
        finally:
            self.blockSignals(False)
        if self.currentText() != current:
            self._emit_changed()

    def showPopup(self) -> None:  # noqa: N802 - Qt override
        self.refresh()
        super().showPopup()

    def _emit_changed(self, *_: Any) -> None:
        self.layer_changed.emit(self.layer())

    def layer(self) -> Any | None:
        """The chosen layer, or None."""
        name = self.currentText()
        if not name or (self._allow_none and self.currentIndex() == 0):
            return None
        for layer in self._matching():
            if layer.name == name:
                return layer
        return None

    def set_layer(self, layer: Any | str | None) -> None:
        """Choose a layer (object or name); None chooses the "none" entry when allowed."""
        self.refresh()
        if layer is None:
            if self._allow_none:
                self.setCurrentIndex(0)
            return
        name = layer if isinstance(layer, str) else layer.name
        index = self.findText(name)
        if index < 0 or (self._allow_none and index == 0):
            raise FcresError(f"no layer named {name!r} of the right type")
        self.setCurrentIndex(index)


def layer_source(layer: Any) -> Any:
    """A layer's full-resolution data as it is (numpy, dask or zarr), nothing loaded."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def is_lazy_layer(layer: Any) -> bool:
    """True for a multiscale layer or data that is not an in-memory numpy array."""
    return bool(getattr(layer, "multiscale", False)) or not isinstance(
        layer_source(layer), np.ndarray
    )


def layer_data(layer: Any) -> np.ndarray:
    """A layer's data as a numpy array (loads lazy data: small layers only)."""
    return np.asarray(layer_source(layer))


def current_slice(viewer: Any, layer: Any, axis: int = 0) -> int:
    """Index along ``axis`` of ``layer``'s data that the viewer shows (0 for 2-D layers)."""
    if layer.ndim < 3:
        return 0
    point = layer.world_to_data(viewer.dims.point[-layer.ndim:])
    n = layer_source(layer).shape[axis]
    return int(np.clip(round(float(point[axis])), 0, n - 1))


# ----------------------------------------------------------------------------- paths


class PathEdit(QWidget):
    """A line edit with a "Browse..." button for a file (``mode="file"``) or folder."""

    changed = Signal(str)

    def __init__(
        self,
        mode: str = "file",
        *,
        filter: str = "",  # noqa: A002 - Qt's own name
        placeholder: str = "",
        tooltip: str = "",
        save: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if mode not in ("file", "folder"):
            raise ValueError(f"mode must be 'file' or 'folder', got {mode!r}")
        self._mode, self._filter, self._save = mode, filter, save
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(tooltip)
        self.edit.textChanged.connect(self.changed.emit)
        self.button = QPushButton("Browse...")
        self.button.setToolTip(f"Choose the {mode} in a dialog")
        self.button.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)
        self.setToolTip(tooltip)

    def _browse(self) -> None:
        start = self.path() or str(Path.home())
        if self._mode == "folder":
            chosen = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        elif self._save:
            chosen, _ = QFileDialog.getSaveFileName(self, "Save as", start, self._filter)
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self._filter)
        if chosen:
            self.set_path(chosen)

    def path(self) -> str:
        """The text, stripped and with ``~`` expanded ("" when empty)."""
        text = self.edit.text().strip()
        return str(Path(text).expanduser()) if text else ""

    def set_path(self, path: str | Path | None) -> None:
        self.edit.setText("" if path is None else str(path))


# ----------------------------------------------------------------------------- devices


def device_choices() -> list[tuple[str, str]]:
    """``(label, key)`` per compute device: CUDA GPUs by name, Apple MPS, then the CPU."""
    from ..device import available_devices

    return [(d.name, d.key) for d in available_devices()]


# ----------------------------------------------------------------------------- checkpoints


class _CheckpointRegistry(QObject):
    """Checkpoints trained in this session; ``changed`` carries the new list."""

    changed = Signal(list)

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[Path] = []


_REGISTRY: _CheckpointRegistry | None = None


def checkpoint_registry() -> _CheckpointRegistry:
    """The session's registry object (connect to its ``changed(list[Path])`` signal)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _CheckpointRegistry()
    return _REGISTRY


def recent_checkpoints() -> list[Path]:
    """Checkpoints trained in this session that still exist, newest first."""
    return [p for p in checkpoint_registry().paths if p.exists()]


def remember_checkpoints(paths: Iterable[str | Path]) -> None:
    """Record freshly trained checkpoints (GUI thread); they go first in the list."""
    reg = checkpoint_registry()
    new = [Path(p) for p in paths]
    reg.paths = new + [p for p in reg.paths if p not in new]
    reg.changed.emit(list(reg.paths))


# ----------------------------------------------------------------------------- plots


def make_canvas(
    figsize: tuple[float, float] = (4.0, 3.0), nrows: int = 1, ncols: int = 1,
    sharex: bool = False, viewer: Any | None = None,
) -> tuple[Any, Any, list[Any]]:
    """``(canvas, figure, axes)``: a matplotlib figure embedded as a Qt widget.

    With ``viewer`` the figure takes the colours of the viewer's napari theme.
    """
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, sharex=sharex, squeeze=False).ravel())
    canvas = FigureCanvasQTAgg(fig)
    canvas.setMinimumHeight(int(figsize[1] * 60))
    canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    if viewer is not None:
        style_axes(fig, axes, viewer)
    return canvas, fig, axes


def style_axes(fig: Any, axes: Sequence[Any], viewer: Any) -> None:
    """Colour a figure and its axes like the viewer's napari theme (re-run after ``cla()``)."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        bg, text = theme.background.as_hex(), theme.text.as_hex()
        grid = theme.secondary.as_hex()
    except Exception:  # noqa: BLE001 - styling is cosmetic
        return
    fig.set_facecolor(bg)
    for ax in axes:
        ax.set_facecolor(bg)
        ax.tick_params(colors=text, which="both")
        for spine in ax.spines.values():
            spine.set_color(grid)
        ax.xaxis.label.set_color(text)
        ax.yaxis.label.set_color(text)
        ax.title.set_color(text)
