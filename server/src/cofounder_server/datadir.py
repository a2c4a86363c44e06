"""The data directory, used by one server process at a time.

Two servers on one directory would share the runner id, the embedded Redis socket and the
SQLite file, and both would run the same jobs. The first server holds an exclusive
``flock`` on ``DATA_DIR/server.lock`` for its whole life; the kernel drops it when the
process exits in any way, ``kill -9`` included, so a lock file left by a dead process
never blocks a restart. The file holds the holder's pid, for the refusal message.

A directory the server created and left holding nothing but its lock file (a start-up that
failed before anything was written) is removed again when the lock is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "server.lock"

# The holder writes its pid just after taking the lock; a refused process that reads the
# file in between waits this long for it.
_PID_WAIT_SECONDS = 1.0


class DataDirError(Exception):
    """The data directory cannot be used; the message is one line for the operator."""


class DataDirLock:
    """An exclusive hold on a data directory. Create with :meth:`acquire`."""

    def __init__(self, directory: Path, fd: int, created: tuple[Path, ...] = ()) -> None:
        self.directory = directory
        self._fd: int | None = fd
        self._created = created
        """The directories :meth:`acquire` made, outermost first."""

    @classmethod
    def acquire(cls, directory: Path) -> DataDirLock:
        """Create ``directory`` if needed and lock it for this process.

        Blocking (file system calls): run it in a thread from async code. Raises
        :class:`DataDirError` when the path is not a usable directory or another process
        holds it.
        """
        if directory.exists() and not directory.is_dir():
            raise DataDirError(f"cannot use data directory {directory}: it exists and is not a directory")
        created = tuple(reversed([path for path in (directory, *directory.parents) if not path.exists()]))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Not O_TRUNC: the file may hold the pid of a running holder.
            fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise DataDirError(f"cannot use data directory {directory}: {error.strerror}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise DataDirError(
                f"data directory {directory.absolute()} is in use by {who} (another cofounder-server); "
                "stop it or choose another --data-dir"
            ) from None
        except OSError as error:
            os.close(fd)
            raise DataDirError(f"cannot lock data directory {directory}: {error.strerror}") from error
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            os.close(fd)
            raise DataDirError(f"cannot write to data directory {directory}: {error.strerror}") from error
        return cls(directory, fd, created)

    def release(self) -> None:
        """Give the directory up (idempotent). The lock file stays (removing it could let two
        processes lock two different files of the same name), except in a directory this
        process created that holds nothing else: that directory goes, while still locked."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self._remove_if_unused()
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _remove_if_unused(self) -> None:
        if not self._created or [entry.name for entry in self.directory.iterdir()] != [LOCK_NAME]:
            return
        (self.directory / LOCK_NAME).unlink()
        # Innermost first; a directory something else was put in meanwhile stays.
        for path in reversed(self._created):
            path.rmdir()


def _holder_pid(fd: int) -> int | None:
    deadline = time.monotonic() + _PID_WAIT_SECONDS
    while True:
        try:
            return int(os.pread(fd, 32, 0).decode("ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
