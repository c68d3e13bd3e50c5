"""Jobs in a spawned worker process: reports, stop, errors and a killed process."""

from __future__ import annotations

import os
import sys
import time

import pytest

from napari_fcres.errors import InputError
from napari_fcres.worker_process import (
    REPORT,
    STOP,
    ProcessJob,
    WorkerProcessDied,
    prestart,
    shutdown_spare,
)

NO_WARM: tuple[str, ...] = ()


def counting_job(n: int, stop):
    """Yields 0..n-1 unless stopped; returns how many it yielded and its pid."""
    done = 0
    for i in range(n):
        if stop.is_set():
            break
        yield i
        done += 1
        time.sleep(0.01)
    return done, os.getpid()


def reporting_job(n: int, progress) -> str:
    for i in range(n):
        progress(i + 1, n)
    progress("one value")
    return "ok"


def failing_job(message: str) -> None:
    raise InputError(message)


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def unpicklable_failure() -> None:
    raise _Unpicklable(1, 2)


def sleeping_job(seconds: float, stop) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.is_set():
        time.sleep(0.02)
    return os.getpid()


def timed_sleep_job(seconds: float, stop) -> float:
    """Sleeps until ``seconds`` pass or it is stopped; returns how long it slept."""
    start = time.monotonic()
    while time.monotonic() - start < seconds and not stop.is_set():
        time.sleep(0.02)
    return time.monotonic() - start


def modules_job() -> tuple[str | None, list[str]]:
    """The main script the child ran (if any) and which GUI modules it holds."""
    main = sys.modules.get("__mp_main__", sys.modules["__main__"])
    return getattr(main, "__file__", None), sorted(
        m for m in sys.modules if m.split(".")[0] in ("napari", "qtpy", "PyQt5"))


def _drain(job: ProcessJob):
    items = []
    gen = job.stream()
    while True:
        try:
            items.append(next(gen))
        except StopIteration as end:
            return items, end.value


def test_generator_job_streams_and_returns_in_another_process():
    items, (done, pid) = _drain(ProcessJob(counting_job, 5, STOP))
    assert items == [0, 1, 2, 3, 4]
    assert done == 5
    assert pid != os.getpid()


def test_report_placeholder_becomes_progress_calls():
    items, result = _drain(ProcessJob(reporting_job, 3, progress=REPORT))
    assert items == [(1, 3), (2, 3), (3, 3), "one value"]
    assert result == "ok"


def test_stop_reaches_the_job_and_it_returns_normally():
    job = ProcessJob(counting_job, 10_000, STOP)
    gen = job.stream()
    assert next(gen) == 0
    job.stop()
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as end:
            done, _ = end.value
            break
    assert done < 10_000


def test_stop_requested_in_the_parent_is_forwarded():
    flag = {"set": False}
    job = ProcessJob(timed_sleep_job, 60.0, STOP)
    gen = job.stream(should_stop=lambda: flag["set"])
    flag["set"] = True
    with pytest.raises(StopIteration) as end:
        next(gen)
    assert end.value.value < 5.0


def test_errors_arrive_as_their_own_type_with_the_child_traceback():
    with pytest.raises(InputError, match="labels need a background") as info:
        ProcessJob(failing_job, "labels need a background").run()
    assert "failing_job" in info.value.worker_traceback


def test_unpicklable_errors_arrive_as_a_message():
    with pytest.raises(Exception, match="_Unpicklable: 1/2"):
        ProcessJob(unpicklable_failure).run()


def test_killed_process_raises_worker_process_died():
    job = ProcessJob(sleeping_job, 60.0, STOP)
    gen = job.stream()
    time.sleep(0.5)
    job.kill()
    with pytest.raises(WorkerProcessDied, match="SIGKILL") as info:
        next(gen)
    assert info.value.exitcode == -9
    assert "napari itself is unaffected" in str(info.value)


def test_child_imports_neither_the_main_script_nor_qt():
    assert ProcessJob(modules_job).run() == (None, [])


def test_prestarted_spare_is_used_and_replaced_only_on_demand():
    shutdown_spare()
    prestart()
    from napari_fcres import worker_process

    spare = worker_process._SPARE
    assert spare is not None and spare.alive()
    job = ProcessJob(sleeping_job, 0.0, STOP)
    assert job.pid == spare.process.pid
    assert job.run() == spare.process.pid
    assert worker_process._SPARE is None


def test_local_functions_are_refused():
    def local() -> None:  # pragma: no cover - never runs
        pass

    with pytest.raises(ValueError, match="module-level"):
        ProcessJob(local)
