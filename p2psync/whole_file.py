"""Files a service keeps its state in, replaced whole: a reader, or the service started
again after a crash, finds the old contents or the new, never a mix of the two. (Plain
file calls: the pure modules that keep a file, like the admission ledger, use it too.)"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file beside ``path``, flush it to the disk and rename it
    over ``path``. The new file's name is unique, so no other writer renames or
    truncates it half-written."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
