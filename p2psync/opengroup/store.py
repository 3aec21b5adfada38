"""An open group server's rooms and attributed posts in SQLite (WAL); synchronous, no
Trio, ``now_ms`` in.
"""

from __future__ import annotations

from pathlib import Path

from ..database import add_column_if_missing, open_database
from ..errors import RpcError
from .posts import (
    MAX_MESSAGES_REPLY_BYTES,
    MAX_ROOMS,
    Post,
    RoomMessage,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL REFERENCES rooms (name),
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    body BLOB NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    received INTEGER NOT NULL,
    post BLOB
);
CREATE INDEX IF NOT EXISTS posts_by_room ON posts (room, id);
"""


class OpenGroupStore:
    """Rooms and attributed posts in SQLite (WAL); synchronous, no Trio, ``now_ms`` in."""

    def __init__(self, path: str | Path, *, max_rooms: int = MAX_ROOMS) -> None:
        self.max_rooms = max_rooms
        self._db = open_database(path, _SCHEMA)
        add_column_if_missing(self._db, "posts", "post", "BLOB")  # from before signed reads

    def close(self) -> None:
        self._db.close()

    def create_room(self, room: str, now_ms: int) -> bool:
        """True if the room is new; ``too_large`` once the server holds ``max_rooms``."""
        if self.has_room(room):
            return False
        (count,) = self._db.execute("SELECT COUNT(*) FROM rooms").fetchone()
        if count >= self.max_rooms:
            raise RpcError("too_large", f"this server holds its limit of {self.max_rooms} rooms")
        self._db.execute("INSERT INTO rooms (name, created) VALUES (?, ?)", (room, now_ms))
        return True

    def has_room(self, room: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM rooms WHERE name = ?", (room,)).fetchone() is not None
        )

    def rooms(self) -> list[str]:
        return [str(r[0]) for r in self._db.execute("SELECT name FROM rooms ORDER BY name")]

    def find(self, post_hash: bytes) -> tuple[int, str] | None:
        """The (id, user) of an already stored post."""
        row = self._db.execute("SELECT id, user FROM posts WHERE hash = ?", (post_hash,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def add(self, post: Post, user: str, now_ms: int) -> tuple[int, str]:
        """Store an attributed post; a duplicate returns the stored (id, user)."""
        self._db.execute(
            "INSERT OR IGNORE INTO posts"
            " (room, user, device, timestamp, body, hash, received, post)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                post.room,
                user,
                post.sender,
                post.timestamp_ms,
                post.body,
                post.hash,
                now_ms,
                post.to_bytes(),
            ),
        )
        found = self.find(post.hash)
        assert found is not None
        return found

    def messages(
        self, room: str, since: int, limit: int, *, max_bytes: int = MAX_MESSAGES_REPLY_BYTES
    ) -> tuple[list[RoomMessage], bool]:
        """Posts after id ``since`` in id order, at most ``limit`` of them and ``max_bytes``
        of bodies (always at least one); the flag says whether more remain."""
        rows = self._db.execute(
            "SELECT id, user, device, timestamp, body, post FROM posts WHERE room = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (room, since, limit + 1),
        ).fetchall()
        found: list[RoomMessage] = []
        total = 0
        for row in rows[:limit]:
            size = len(row[4]) + len(row[5] or b"")
            if found and total + size > max_bytes:
                return found, True
            post = None if row[5] is None else bytes(row[5])
            found.append(RoomMessage(row[0], row[1], row[2], row[3], bytes(row[4]), post))
            total += size
        return found, len(rows) > limit
