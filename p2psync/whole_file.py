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
    over ``path`` (the rename flushed too), keeping the old file's permissions (a new
    one gets the owner's alone). The new file's name is unique, so no other writer
    renames or truncates it half-written; one a crash left behind is removed by
    :func:`remove_leftovers`."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(descriptor, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _sync_folder(folder: Path) -> None:
    """The rename on the disk too: without it a power cut may bring the old file back."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_leftovers(path: Path) -> None:
    """Remove what writes of ``path`` cut short by a crash left beside it (call it before
    this process writes ``path``: a write of another process's would be removed too)."""
    for leftover in path.parent.glob(f"{_prefix(path)}*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _prefix(path: Path) -> str:
    return f".{path.name}."


def read_small_file(path: Path, max_bytes: int) -> bytes | None:
    """The contents of the regular file ``path`` (None: there is none), refused if it is
    larger than ``max_bytes``. Its name is not followed if it is a link, and a pipe or a
    device there is refused unopened: a file a less trusted process could have put there
    (a service's folder, read by the root launcher) cannot make the reader read another
    file, wait on a pipe or read without end."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise OSError(error.errno, f"{path} cannot be read as a file: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{path} is over {max_bytes} bytes")
    return data


def create_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data`` (with ``mode``), where nothing is: never through a
    link someone left at its name (a link there, even to nowhere, is an error)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
