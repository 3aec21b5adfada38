"""SQLite as every store here uses it: autocommit connections in WAL mode, and explicit
``BEGIN IMMEDIATE`` transactions where several writes must land together.

Queries run inline in the Trio thread: they are short, and one thread gives each
request's checks and writes one consistent view without locks.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_database(
    path: str | Path, schema: str, *, synchronous: str = "NORMAL"
) -> sqlite3.Connection:
    """Open (creating if needed) ``path`` with ``schema``. ``synchronous="NORMAL"`` keeps
    every commit across a process crash; ``"FULL"`` across a power loss too.

    The file is readable by its owner only (a device's file holds its seeds), one left
    readable by others (by an earlier version) too; SQLite gives the ``-wal`` and
    ``-shm`` files the same mode. It is never made through a link someone left at its
    name."""
    if str(path) != ":memory:":
        flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK  # no pipe waited on
        descriptor = os.open(path, flags, 0o600)
        try:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(f"{path} is not a file")
            if mode & 0o077:
                with contextlib.suppress(PermissionError):  # another user's file
                    os.fchmod(descriptor, 0o600)
        finally:
            os.close(descriptor)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db


def open_read_only(path: str | Path) -> sqlite3.Connection:
    """``path`` opened to read alone, beside the process that writes it (WAL lets a
    reader in while a writer works); any write through it fails."""
    uri = f"file:{urllib.parse.quote(str(Path(path).absolute()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def add_column_if_missing(db: sqlite3.Connection, table: str, column: str, decl: str) -> bool:
    """Bring a file written by an earlier version up to the current schema (``table`` and
    ``column`` are our own constants, never input); whether the column was added."""
    if column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        return False
    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    return True


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """All the writes inside, or none of them. Inside another transaction it simply
    joins it, so a store method that needs atomicity can be called from a bigger one."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
