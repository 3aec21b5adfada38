"""An open group server's rooms and attributed posts in SQLite (WAL); synchronous, no
Trio, ``now_ms`` in.
"""

from __future__ import annotations

from pathlib import Path

from ..database import add_column_if_missing, open_database, transaction
from ..errors import RpcError
from ..wire import encode_cbor
from .posts import (
    MAX_MESSAGES_REPLY_BYTES,
    MAX_ROOMS,
    ROOM_MAX_BYTES,
    Post,
    RoomMessage,
)

#: What a post's row takes on disk besides its body, its signed record and its room's name
#: (twice: in the row and in the room's index): ids, hash, times, the unique hash index,
#: B-tree slack. Counted as bodies and records alone, a room of 4 MiB of tiny posts took
#: 2.35 to 2.57 times that on disk (room names of 5 and 64 characters); with this, 0.99
#: to 1.02.
POST_ROW_BYTES = 300
#: What a post counts against its room's bytes: what its row takes on disk.
_POST_SIZE = f"LENGTH(body) + COALESCE(LENGTH(post), 0) + {POST_ROW_BYTES} + 2 * LENGTH(room)"
#: ``PRAGMA user_version`` of a file whose rooms' bytes are counted as :data:`_POST_SIZE`
#: says (0: a file from before, counted as bodies and records alone).
_COUNTED_AS_ROWS = 1


def post_size(post: Post, record: bytes) -> int:
    """What ``post`` (its signed ``record``) counts against its room: :data:`_POST_SIZE`."""
    return len(post.body) + len(record) + POST_ROW_BYTES + 2 * len(post.room.encode())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0
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

    def __init__(
        self, path: str | Path, *, max_rooms: int = MAX_ROOMS, room_bytes: int = ROOM_MAX_BYTES
    ) -> None:
        """``room_bytes``: what a room keeps of its posts, newest first (see :meth:`add`)."""
        self.max_rooms = max_rooms
        self.room_bytes = room_bytes
        self._db = open_database(path, _SCHEMA)
        add_column_if_missing(self._db, "posts", "post", "BLOB")  # from before signed reads
        with transaction(self._db):
            added = add_column_if_missing(self._db, "rooms", "bytes", "INTEGER NOT NULL DEFAULT 0")
            (counted_as,) = self._db.execute("PRAGMA user_version").fetchone()
            if added or counted_as < _COUNTED_AS_ROWS:
                # A file from before rooms were bounded, or counted otherwise: count again.
                self._db.execute(
                    f"UPDATE rooms SET bytes = (SELECT COALESCE(SUM({_POST_SIZE}), 0)"
                    " FROM posts WHERE posts.room = rooms.name)"
                )
                self._db.execute(f"PRAGMA user_version = {_COUNTED_AS_ROWS}")

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

    def remove_room(self, room: str) -> int | None:
        """Forget ``room`` and its posts (rooms last until their operator removes them);
        how many posts went, None if there is no such room."""
        with transaction(self._db):
            if not self.has_room(room):
                return None
            went = self._db.execute("DELETE FROM posts WHERE room = ?", (room,)).rowcount
            self._db.execute("DELETE FROM rooms WHERE name = ?", (room,))
        return went

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
        """Store an attributed post; a duplicate returns the stored (id, user). A room
        keeps ``room_bytes`` of posts: past it, its oldest go, so a room's disk use is
        bounded however much is posted to it, and the newest posts are always read."""
        with transaction(self._db):
            record = post.to_bytes()
            inserted = self._db.execute(
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
                    record,
                ),
            ).rowcount
            if inserted:
                self._db.execute(
                    "UPDATE rooms SET bytes = bytes + ? WHERE name = ?",
                    (post_size(post, record), post.room),
                )
                self._trim(post.room)
            found = self.find(post.hash)
        assert found is not None
        return found

    def _trim(self, room: str) -> None:
        """Drop the room's oldest posts until it holds at most ``room_bytes``."""
        (held,) = self._db.execute("SELECT bytes FROM rooms WHERE name = ?", (room,)).fetchone()
        if held <= self.room_bytes:
            return
        freed = 0
        oldest = self._db.execute(
            f"SELECT id, {_POST_SIZE} FROM posts WHERE room = ? ORDER BY id", (room,)
        )
        last = None
        for post_id, size in oldest:
            if held - freed <= self.room_bytes:
                break
            freed += size
            last = post_id
        oldest.close()
        self._db.execute("DELETE FROM posts WHERE room = ? AND id <= ?", (room, last))
        self._db.execute("UPDATE rooms SET bytes = bytes - ? WHERE name = ?", (freed, room))

    def room_bytes_held(self, room: str) -> int:
        """The bytes of posts ``room`` holds (0 for no such room)."""
        row = self._db.execute("SELECT bytes FROM rooms WHERE name = ?", (room,)).fetchone()
        return 0 if row is None else int(row[0])

    def messages(
        self, room: str, since: int, limit: int, *, max_bytes: int = MAX_MESSAGES_REPLY_BYTES
    ) -> tuple[list[RoomMessage], bool]:
        """Posts after id ``since`` in id order, at most ``limit`` of them and ``max_bytes``
        as they go on the wire (always at least one); the flag says whether more remain.
        Rows are read one at a time and no further than the reply takes: a reader asking
        for 500 rows of 33 KiB each cost the server 29 times a small read, for a reply
        that held two of them."""
        rows = self._db.execute(
            "SELECT id, user, device, timestamp, body, post FROM posts WHERE room = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (room, since, limit + 1),
        )
        found: list[RoomMessage] = []
        total = 0
        try:
            for row in rows:
                if len(found) == limit:
                    return found, True
                post = None if row[5] is None else bytes(row[5])
                message = RoomMessage(row[0], row[1], row[2], row[3], bytes(row[4]), post)
                size = len(encode_cbor(message.to_wire()))
                if found and total + size > max_bytes:
                    return found, True
                found.append(message)
                total += size
            return found, False
        finally:
            rows.close()
