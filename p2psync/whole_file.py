"""Files a service keeps its state in, replaced whole: a reader, or the service started
again after a crash, finds the old contents or the new, never a mix of the two. (Plain
file calls: the pure modules that keep a file, like the admission ledger, use it too.)"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path``, flush it to the disk and rename it
    over ``path``, keeping the old file's permissions (a new one gets the owner's alone).
    The new file's name is unique, so no other writer renames or truncates it
    half-written; one a crash left behind is removed by :func:`remove_leftovers`."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(descriptor, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_leftovers(path: Path) -> None:
    """Remove what writes of ``path`` cut short by a crash left beside it (call it before
    this process writes ``path``: a write of another process's would be removed too)."""
    for leftover in path.parent.glob(f"{_prefix(path)}*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _prefix(path: Path) -> str:
    return f".{path.name}."
