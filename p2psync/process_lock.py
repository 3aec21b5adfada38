"""One process at a time on a directory's state: an advisory lock on a file, held while
the object is open and released by the kernel if the process dies (a ``kill -9`` leaves
nothing to clean up).

The lock is a Linux open-file-description lock (``F_OFD_SETLK``): like ``flock`` it
belongs to the open file, not to the process, so closing another descriptor of the same
file elsewhere in the process does not drop it; and unlike ``flock`` it can be tested
without being taken (``F_OFD_GETLK``), so a ``status`` asking whether a device is in use
never holds the lock for a moment that a ``run`` starting just then would find taken.
Where the platform has no such locks, ``flock`` and a probe that takes it briefly stand
in.

The holder writes its process id and command into the file, so a refusal can say which
process to stop (a ``device inbox`` waiting in another terminal) rather than only that
there is one."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import struct
import sys
from pathlib import Path
from typing import IO, BinaryIO

from .errors import P2PSyncError

#: ``struct flock`` on Linux: type, whence, start, length (0: the whole file), pid (0 for
#: open-file-description locks), padded to its size.
_FLOCK = "hhqqi4x"
_OFD = hasattr(fcntl, "F_OFD_SETLK")


class InUse(P2PSyncError):
    """Another process holds the lock."""


#: What of a holder's record a refusal reads (a pid and a command).
HOLDER_BYTES = 4096


def _whole_file(kind: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)


def _try_lock(file: IO[bytes]) -> bool:
    """Take the lock on ``file`` if no one holds it; whether it was taken."""
    try:
        if _OFD:
            fcntl.fcntl(file, fcntl.F_OFD_SETLK, _whole_file(fcntl.F_WRLCK))
        else:  # pragma: no cover - Linux has OFD locks
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held elsewhere
        return False
    return True


def open_lock_file(path: str | Path) -> BinaryIO:
    """``path`` opened to be locked (made if missing), its owner's alone: anyone who may
    open a lock file may hold a lock on it (a read lock stops a writer's), and may put a
    link at its name for the owner to follow, so neither is allowed."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with contextlib.suppress(OSError):  # another user's file, or a file system without modes
        os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, "a+b")


def _command() -> str:
    """This process's command as a refusal names it: its words before the first option,
    two at most (``device inbox``), never its arguments (a message's text, a code)."""
    words = itertools.takewhile(lambda word: not word.startswith("-"), sys.argv[1:])
    return " ".join(itertools.islice(words, 2))


class ProcessLock:
    """The lock on ``path`` (made if missing), or :class:`InUse` at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open_lock_file(self.path)
        if not _try_lock(self._file):
            self._file.close()
            raise InUse(f"{self.path} is held by {ProcessLock.holder(self.path)}")
        self._file.truncate(0)
        self._file.write(f"{os.getpid()} {_command()}\n".encode()[:HOLDER_BYTES])
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ProcessLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def holder(path: str | Path) -> str:
        """Who holds the lock on ``path``, as its holder wrote it ("process 1234 (device
        inbox)"); "another process" if it wrote nothing readable."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(descriptor, "rb") as file:
                record = file.read(HOLDER_BYTES).decode(errors="replace").strip()
        except OSError:
            record = ""
        record = "".join(c if c.isprintable() else "?" for c in record)  # for a terminal
        pid, _, command = record.partition(" ")
        if not pid.isdigit():
            return "another process"
        return f"process {pid} ({command})" if command else f"process {pid}"

    @staticmethod
    def held(path: str | Path) -> bool:
        """Whether a process holds the lock on ``path`` now (tested, never taken)."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        file = os.fdopen(descriptor, "rb")
        with file:
            if not _OFD:  # pragma: no cover - Linux has OFD locks
                if not _try_lock(file):
                    return True
                fcntl.flock(file, fcntl.LOCK_UN)
                return False
            # Asking needs no write access: the answer is the lock that would stop a
            # write lock now, or F_UNLCK.
            answer = fcntl.fcntl(file, fcntl.F_OFD_GETLK, _whole_file(fcntl.F_WRLCK))
            kind = struct.unpack(_FLOCK, answer)[0]
            return bool(kind != fcntl.F_UNLCK)
