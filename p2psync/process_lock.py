"""One process at a time on a directory's state: an advisory lock on a file, held while
the object is open and released by the kernel if the process dies (a ``kill -9`` leaves
nothing to clean up)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from .errors import P2PSyncError


class InUse(P2PSyncError):
    """Another process holds the lock."""


class ProcessLock:
    """The lock on ``path`` (made if missing), or :class:`InUse` at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a+b")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise InUse(f"{self.path} is held by another process") from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ProcessLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def held(path: str | Path) -> bool:
        """Whether a process holds the lock on ``path`` now."""
        try:
            file = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return False
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(file, fcntl.LOCK_UN)
            return False
