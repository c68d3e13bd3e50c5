"""One writer per run folder: the lock a training holds while it writes there.

:func:`acquire_run_lock` creates the folder's lock file (:func:`napari_fcres.runs.lock_path`)
with the writer's pid, host and start time, and locks it with the operating system
(``flock`` on POSIX, ``msvcrt.locking`` on Windows); the operating system frees that lock
when the process ends in any way, also when it is killed.  The rules:

* locked by a live process (on this host, or on another host where the file system shares
  locks): :class:`~napari_fcres.errors.InputError` at once, naming the folder and the holder;
* left behind by a process on this host that no longer runs (killed, crashed): the lock is
  provably free, so it is taken over, with a warning naming the old holder (a killed run
  stays resumable without any clean-up);
* left behind by a process on another host: whether it still runs cannot be told from
  here, so the error names the holder and says to delete the file once nothing trains
  there.

Readers (prediction, export) never need the lock: checkpoints are replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import InputError
from .runs import lock_path

log = logging.getLogger(__name__)

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Byte locked on Windows: far past the holder's description, so others can still read it.
_WINDOWS_LOCK_OFFSET = 1 << 20


class RunLock:
    """The lock of one run folder, held until :meth:`release` (or the ``with`` block ends)."""

    def __init__(self, path: Path, fd: int, created_folder: bool = False) -> None:
        self.path, self._fd, self._created_folder = path, fd, created_folder

    def release(self) -> None:
        """Delete the lock file and free the lock (a second call does nothing).

        A folder the lock created is removed again when nothing else was written into it.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None and _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)  # before unlocking: no one locks a stale file
        finally:
            _unlock(fd)
            os.close(fd)
        if fcntl is None:  # pragma: no cover - Windows removes it only once closed
            self.path.unlink(missing_ok=True)
        if self._created_folder:
            try:
                self.path.parent.rmdir()  # only if empty: a start that failed on its inputs
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def acquire_run_lock(run: str | Path) -> RunLock:
    """Lock ``run`` (created if missing) for this process; :class:`InputError` if it is taken."""
    run = Path(run)
    path = lock_path(run)
    created = not run.exists()
    for _ in range(20):
        try:
            run.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write into {run}: {exc.strerror or exc}") from None
        try:
            locked = _try_lock(fd)
            if locked is None:  # a file system without locks: trust a live pid on this host
                holder = _read(fd)
                locked = not (holder and holder.get("host") == socket.gethostname()
                              and _pid_alive(holder.get("pid")))
            if not locked:
                raise InputError(
                    f"{run} is in use: another training writes there ({_describe(_read(fd))}); "
                    "wait for it to end or stop it, or train into another folder"
                )
            if fcntl is not None and not _same_file(fd, path):
                os.close(fd)  # its owner released (deleted) it meanwhile: lock the new one
                continue
            _take_over(run, path, _read(fd))
            _write(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        except BaseException:
            _unlock(fd)
            os.close(fd)
            raise
        return RunLock(path, fd, created)
    raise InputError(f"could not lock {run}: other trainings keep starting there; try again")


def read_holder(run: str | Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of ``run``: ``{"pid", "host", "started"}``, or None."""
    path = lock_path(run)
    try:
        text = path.read_text()
    except OSError:
        return None
    return _parse(text)


def _take_over(run: Path, path: Path, holder: dict[str, Any] | None) -> None:
    """Accept a lock file left by a process that ended, or refuse one from another host."""
    if holder is None:  # a new file (or one emptied by a crash between create and write)
        return
    if holder.get("host") != socket.gethostname():
        raise InputError(
            f"{run} holds the lock of a training on another computer ({_describe(holder)}); "
            f"if it no longer runs there, delete {path} and start again"
        )
    log.warning("%s: taking over the lock of a training that no longer runs (%s)",
                run, _describe(holder))


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _parse(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"host": "?", "note": text.strip()[:80]}


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
        if sum(map(len, chunks)) > 65536:
            break
    return _parse(b"".join(chunks).decode("utf-8", "replace"))


def _write(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not deleted or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _try_lock(fd: int) -> bool | None:
    """Take the operating-system lock of ``fd`` without waiting.

    False if someone holds it; None where the file system offers no locks.
    """
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:  # e.g. ENOLCK on a network file system without locking
            log.warning("the file system offers no file locks (%s); going by the pid alone", exc)
            return None
        return True
    import msvcrt  # pragma: no cover - Windows

    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host runs (POSIX; unknown counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError):
        return True  # not ours to signal, or no usable pid: assume it runs
    return True


def _unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass
