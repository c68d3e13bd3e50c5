"""The background-job controller every widget holds (``widgets._job.WidgetJob``)."""

from __future__ import annotations

import threading

import pytest
from qtpy.QtWidgets import QWidget

from napari_fcres.errors import FcresError, StoppedError
from napari_fcres.widgets._job import WidgetJob


def _until_stopped(stop: threading.Event) -> str:
    """A job that runs until asked to stop, then ends as the library's jobs do."""
    if not stop.wait(timeout=30):
        return "never stopped"
    raise StoppedError("stopped")


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.errors: list[object] = []

    def state(self) -> None:
        self.calls.append("state")

    def stop_requested(self) -> None:
        self.calls.append("stop requested")

    def stopped(self) -> None:
        self.calls.append("stopped")

    def finished(self) -> None:
        self.calls.append("finished")

    def error(self, exc: object) -> None:
        self.errors.append(exc)


@pytest.fixture
def widget(qtbot):
    w = QWidget()
    qtbot.addWidget(w)
    return w


def test_one_job_at_a_time_stop_is_cooperative_and_reaches_on_stopped(qtbot, widget):
    rec = _Recorder()
    job = WidgetJob(widget, "computation", on_state_changed=rec.state,
                    on_stop_requested=rec.stop_requested)
    job.start(_until_stopped, job.stop_event, process=False, progress_desc="Computing",
              on_error=rec.error, on_stopped=rec.stopped, on_finished=rec.finished)
    assert job.running and not job.stopping
    assert job.progress is not None  # the cancelable bar in the activity dock
    with pytest.raises(FcresError, match="a computation is already active"):
        job.start(_until_stopped, job.stop_event, process=False)

    assert job.stop() is True
    assert job.stop() is False  # asked once; the second press does nothing
    assert job.stopping
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)

    assert rec.errors == []  # a StoppedError is a stop, not a failure
    assert rec.calls == ["state", "stop requested", "state", "stopped", "finished", "state"]
    assert job.progress is None
    assert job.stop() is False  # nothing runs


def test_failure_reaches_on_error_and_the_job_can_start_again(qtbot, widget):
    rec = _Recorder()
    job = WidgetJob(widget, "export", on_state_changed=rec.state)

    def broken() -> None:
        raise ValueError("bad input x")

    job.start(broken, process=False, on_error=rec.error, on_finished=rec.finished)
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert [e.message for e in rec.errors] == ["ValueError: bad input x"]
    assert rec.calls == ["state", "finished", "state"]

    done: list[int] = []
    job.start(lambda: 7, process=False, on_done=done.append)
    qtbot.waitUntil(lambda: done == [7], timeout=10_000)
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)


def test_a_start_that_fails_leaves_no_progress_bar_and_no_job(widget, monkeypatch):
    import napari_fcres.widgets._job as job_module

    def refuse(*args, **kwargs):
        raise RuntimeError("no thread for you")

    monkeypatch.setattr(job_module, "start_worker", refuse)
    job = WidgetJob(widget, "computation")
    with pytest.raises(RuntimeError, match="no thread"):
        job.start(_until_stopped, job.stop_event, process=False, progress_desc="x")
    assert not job.running and job.progress is None


def test_closing_the_dock_stops_the_job(qtbot, widget):
    parent = QWidget()
    qtbot.addWidget(parent)
    child = QWidget(parent)
    rec = _Recorder()
    job = WidgetJob(child, "training", on_stop_requested=rec.stop_requested)
    job.start(_until_stopped, job.stop_event, process=False, on_stopped=rec.stopped)
    child.setParent(None)  # what napari does when the dock is closed
    assert job.stopping
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert rec.calls == ["stop requested", "stopped"]
    child.deleteLater()
