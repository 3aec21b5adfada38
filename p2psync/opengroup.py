"""Open groups (public chats, DESIGN.md §5): rooms of posts that each device signs with its
own key, shown as coming from one *user* whichever device sent them.

RPC methods (CBOR framing of :mod:`p2psync.rpc`):

* ``create_room`` ``{"room": text, "key": bytes32, "ts": uint, "sig": bytes64}`` →
  ``{"room": text, "created": bool}`` (idempotent), signed by its creator (below)
* ``list_rooms`` ``{}`` → ``{"rooms": [text]}``
* ``post`` ``{"room": text, "post": bytes}`` → ``{"id": uint, "user": text}``
* ``messages`` ``{"room": text, "since": uint, "limit": uint?}`` →
  ``{"messages": [{"id", "user", "device", "timestamp", "body", "post"}], "more": bool}``,
  posts with ids above ``since`` in id order; ``post`` is the signed post itself, so a
  reader need not take the server's word for any of it (:meth:`RoomMessage.check`).

A post (canonical CBOR) is ``{"v": 1, "room": text, "sender": sid, "key": bytes32,
"primary": sid?, "ts": uint, "body": bytes, "sig": bytes64}``: the Ed25519 signature, under
its own domain prefix, covers every other field, the room included, so a post cannot be
moved to another room. ``primary`` is the user the device claims to belong to (absent: no
claim).

Attribution. With a file server (``mapped`` mode) the user is the primary that the sending
device is mapped to, looked up on the file server and checked against the signed mappings
it returns (:class:`~p2psync.fileserver.FileServerClient`). Without one (``linked`` mode)
every device of a user signs with the shared key, so the user is the sender itself. Either
way a device with no mapping is a single-device user, attributed to its own id. Refused as
``unauthorized``: a signature that does not verify, a key that is not the sender's, and a
claimed primary the sender is not mapped to. The attribution is decided once, when the post
arrives, and stored with it: a later revocation does not rewrite history.

Readers check every message against its signed post and drop (with a warning) one that
does not match: a server can withhold posts but not invent or alter them. Attribution to a
user other than the device is the device's own signed claim when it made one
(``RoomMessage.claimed``); an unclaimed ``mapped`` attribution is the server's word, checked
against the file server's signed mappings by anyone who asks it.

Posts are deduplicated by the hash of the signed record, so a retried (or replayed) post
returns its original id instead of appearing twice; its timestamp must be within ±60 s of
the server clock, so nobody back-dates a post.

Room creation. Rooms last for ever and a server holds at most ``max_rooms`` of them, so
creating one is rationed: the request is signed by its creator's Ed25519 key (over
:data:`ROOM_DOMAIN`, the room and a timestamp within ±60 s, so nobody spends another key's
allowance) and each key may create :data:`ROOMS_PER_KEY` rooms at once, then one per
:data:`ROOM_KEY_REFILL_S`; all keys together :data:`ROOMS_BURST`, then one per
:data:`ROOM_REFILL_S`. Beyond that: ``rate_limited``; beyond ``max_rooms``: ``too_large``.
Keys cost nothing to make, so it is the total that keeps a flood from filling the server in
seconds (it now takes days); the per-key allowance keeps one key from spending the total.
Asking for a room that exists is answered ``created: false`` and costs nothing.

Every integer a request carries is range-checked when it is decoded (``bad_request``):
times up to :data:`~p2psync.envelope.MAX_TIMESTAMP_MS`, anything else within SQLite's
signed 64 bits (:meth:`~p2psync.wire.Fields.uint`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from overlay.link import LinkClosed, Transport

from .clock import Clock
from .database import add_column_if_missing, open_database
from .envelope import MAX_TIMESTAMP_MS
from .errors import ConnectionLost, DecodeError, RpcError
from .fileserver import FileServerClient
from .identity import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    ed25519_matches_session_id,
    message_hash,
    session_id_key,
    verify,
)
from .mapping import AuthorisationError
from .rpc import (
    Connection,
    KeyedRateLimit,
    RpcCaller,
    RpcPool,
    RpcServer,
    ServerLimits,
    open_rpc,
    open_rpc_pool,
)
from .swarm.constants import CLOCK_SKEW_MS
from .wire import Fields, decode_cbor, encode_cbor

logger = logging.getLogger(__name__)

POST_VERSION = 1
POST_DOMAIN = b"p2psync-open-group-post/1:"
ROOM_DOMAIN = b"p2psync-open-group-room/1:"
MAX_POST_BODY_BYTES = 16 * 1024
#: A post is its body plus well under 1 KiB of ids, keys and signature.
MAX_POST_BYTES = MAX_POST_BODY_BYTES + 1024
MAX_ROOM_CHARS = 64
MAX_ROOMS = 1000
DEFAULT_MESSAGES_LIMIT = 100
MAX_MESSAGES_LIMIT = 500
#: Bytes of bodies in one ``messages`` reply, so it always fits a frame (at least one post
#: is always returned).
MAX_MESSAGES_REPLY_BYTES = 96 * 1024
#: Rooms one creator key may create at once, and the seconds until it may create one more.
ROOMS_PER_KEY = 3
ROOM_KEY_REFILL_S = 3600.0
#: Rooms all creators together may create at once, and then one per ``ROOM_REFILL_S``.
ROOMS_BURST = 20
ROOM_REFILL_S = 300.0

_ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SESSION_ID_CHARS = 66


def check_room_name(room: str) -> str:
    """Room names are short lowercase slugs, so they are safe in URLs, logs and UIs."""
    if not isinstance(room, str) or not _ROOM_NAME.fullmatch(room):
        raise DecodeError("a room name is 1-64 of a-z, 0-9, '_' and '-', starting alphanumeric")
    return room


def _session_id(fields: Fields, name: str) -> str:
    value = fields.text(name, max_len=_SESSION_ID_CHARS)
    session_id_key(value)
    return value


# --- the signed post --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Post:
    """One device's signed post to a room."""

    room: str
    sender: str
    key: bytes
    primary: str | None
    timestamp_ms: int
    body: bytes
    sig: bytes

    def _signed_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "v": POST_VERSION,
            "room": self.room,
            "sender": self.sender,
            "key": self.key,
            "ts": self.timestamp_ms,
            "body": self.body,
        }
        if self.primary is not None:
            fields["primary"] = self.primary
        return fields

    def signed_bytes(self) -> bytes:
        return POST_DOMAIN + encode_cbor(self._signed_fields())

    def to_bytes(self) -> bytes:
        return encode_cbor({**self._signed_fields(), "sig": self.sig})

    @property
    def hash(self) -> bytes:
        """Identity of the post for deduplication (of the canonical encoding)."""
        return message_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Post:
        """Strict structural decode; call :meth:`verify` before trusting it."""
        fields = Fields(decode_cbor(data, max_bytes=MAX_POST_BYTES), "post")
        fields.only("v", "room", "sender", "key", "primary", "ts", "body", "sig")
        version = fields.uint("v")
        if version != POST_VERSION:
            raise DecodeError(f"unsupported post version {version}")
        return cls(
            room=check_room_name(fields.text("room", max_len=MAX_ROOM_CHARS)),
            sender=_session_id(fields, "sender"),
            key=fields.blob("key", size=KEY_BYTES),
            primary=_session_id(fields, "primary") if fields.has("primary") else None,
            timestamp_ms=fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            body=fields.blob("body", max_len=MAX_POST_BODY_BYTES),
            sig=fields.blob("sig", size=SIGNATURE_BYTES),
        )

    def verify(self) -> None:
        """Raise :class:`AuthorisationError` unless the sender's own key signed this."""
        if not ed25519_matches_session_id(self.key, self.sender):
            raise AuthorisationError("the post's key does not belong to its sender")
        if not verify(self.key, self.signed_bytes(), self.sig):
            raise AuthorisationError("the post's signature does not verify")


def sign_post(
    device: Identity, room: str, body: bytes, timestamp_ms: int, *, primary: str | None = None
) -> Post:
    """A post by ``device``; ``primary`` claims the user it belongs to (``mapped`` mode)."""
    check_room_name(room)
    if len(body) > MAX_POST_BODY_BYTES:
        raise ValueError(f"a post body is at most {MAX_POST_BODY_BYTES} bytes")
    if primary is not None:
        session_id_key(primary)
    unsigned = Post(
        room, device.session_id, device.ed25519_public, primary, timestamp_ms, body, b""
    )
    return replace(unsigned, sig=device.sign(unsigned.signed_bytes()))


@dataclass(frozen=True, slots=True)
class RoomRequest:
    """A creator's signed request for a new room: the key it names is the one whose
    allowance the room is counted against, and only that key can spend it."""

    room: str
    key: bytes
    timestamp_ms: int
    sig: bytes

    def signed_bytes(self) -> bytes:
        return ROOM_DOMAIN + encode_cbor(
            {"room": self.room, "key": self.key, "ts": self.timestamp_ms}
        )

    def to_params(self) -> dict[str, Any]:
        return {"room": self.room, "key": self.key, "ts": self.timestamp_ms, "sig": self.sig}

    @classmethod
    def from_params(cls, params: Fields) -> RoomRequest:
        params.only("room", "key", "ts", "sig")
        return cls(
            room=check_room_name(params.text("room", max_len=MAX_ROOM_CHARS)),
            key=params.blob("key", size=KEY_BYTES),
            timestamp_ms=params.uint("ts", maximum=MAX_TIMESTAMP_MS),
            sig=params.blob("sig", size=SIGNATURE_BYTES),
        )

    def verify(self) -> None:
        if not verify(self.key, self.signed_bytes(), self.sig):
            raise AuthorisationError("the room request's signature does not verify")


def sign_room_request(creator: Identity, room: str, timestamp_ms: int) -> RoomRequest:
    """Ask for ``room``, counted against ``creator``'s allowance."""
    check_room_name(room)
    unsigned = RoomRequest(room, creator.ed25519_public, timestamp_ms, b"")
    return replace(unsigned, sig=creator.sign(unsigned.signed_bytes()))


@dataclass(frozen=True, slots=True)
class RoomMessage:
    """A post as the server shows it: attributed to ``user``, sent by ``device``, with the
    signed ``post`` it came from (None only for posts stored before posts were kept)."""

    id: int
    user: str
    device: str
    timestamp_ms: int
    body: bytes
    post: bytes | None = field(default=None, repr=False)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "user": self.user,
            "device": self.device,
            "timestamp": self.timestamp_ms,
            "body": self.body,
        }
        if self.post is not None:
            wire["post"] = self.post
        return wire

    @classmethod
    def from_wire(cls, value: object) -> RoomMessage:
        fields = Fields(value, "message").only("id", "user", "device", "timestamp", "body", "post")
        return cls(
            id=fields.uint("id"),
            user=_session_id(fields, "user"),
            device=_session_id(fields, "device"),
            timestamp_ms=fields.uint("timestamp", maximum=MAX_TIMESTAMP_MS),
            body=fields.blob("body", max_len=MAX_POST_BODY_BYTES),
            post=fields.blob("post", max_len=MAX_POST_BYTES) if fields.has("post") else None,
        )

    def check(self, room: str) -> None:
        """Raise :class:`AuthorisationError` unless the device signed exactly this post in
        ``room`` (sender, time and body), and any attribution to another user is the one
        the device claimed or the server's file-server attribution of an unclaimed post."""
        if self.post is None:
            raise AuthorisationError("the server did not return the signed post")
        try:
            post = Post.from_bytes(self.post)
        except DecodeError as exc:
            raise AuthorisationError(f"the signed post does not decode: {exc}") from None
        post.verify()
        if (post.room, post.sender, post.timestamp_ms, post.body) != (
            room,
            self.device,
            self.timestamp_ms,
            self.body,
        ):
            raise AuthorisationError("the message differs from the post its device signed")
        if post.primary is not None and self.user != post.primary:
            raise AuthorisationError("the message is attributed against its device's claim")

    @property
    def claimed(self) -> bool:
        """Whether the attribution is the device itself or the primary it claimed, signed
        (False: the server's file-server attribution of an unclaimed post)."""
        if self.user == self.device:
            return True
        return self.post is not None and Post.from_bytes(self.post).primary == self.user


# --- storage ----------------------------------------------------------------------------------

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


# --- server -----------------------------------------------------------------------------------


def _check_fresh(timestamp_ms: int, now_ms: int, what: str) -> None:
    """A signed request must be recent, so nobody stores one up for later."""
    if abs(timestamp_ms - now_ms) > CLOCK_SKEW_MS:
        raise RpcError(
            "clock_skew", f"{what} timestamp is {timestamp_ms - now_ms:+d} ms from the server clock"
        )


class OpenGroupServer:
    """The open group's RPC front. ``fileserver_url`` set: ``mapped`` mode, attribution by
    the file server, reached over ``transport``; ``None``: ``linked`` mode.

    :meth:`serve` owns the database and the file-server connection: both open when it
    starts and close when it is cancelled, so a restart is a new server on the same file.
    The file server connection is re-made on demand: while the file server is down, posts
    are refused with ``unavailable`` and everything else works.
    """

    def __init__(
        self,
        db_path: str | Path,
        clock: Clock,
        fileserver_url: str | None,
        transport: Transport,
        *,
        max_rooms: int = MAX_ROOMS,
        limits: ServerLimits | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.clock = clock
        self.fileserver_url = fileserver_url
        self.transport = transport
        self.max_rooms = max_rooms
        self._store: OpenGroupStore | None = None
        self._pool: RpcPool | None = None
        self._room_limit = KeyedRateLimit(
            ROOMS_PER_KEY, ROOM_KEY_REFILL_S, ROOMS_BURST, ROOM_REFILL_S, clock.now_ms() / 1000
        )
        self.rpc = RpcServer(
            {
                "create_room": self._create_room,
                "list_rooms": self._list_rooms,
                "post": self._post,
                "messages": self._messages,
            },
            limits,
        )

    @property
    def mode(self) -> str:
        return "linked" if self.fileserver_url is None else "mapped"

    @property
    def store(self) -> OpenGroupStore:
        if self._store is None:
            raise RuntimeError("the open group server is not serving")
        return self._store

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` until cancelled; ``task_status.started(bound_url)``."""
        if self._store is not None:
            raise RuntimeError("this open group server is already serving")
        self._store = OpenGroupStore(self.db_path, max_rooms=self.max_rooms)
        try:
            async with open_rpc_pool(self.transport) as pool:
                self._pool = pool
                await self.rpc.serve(transport, address, task_status=task_status)
        finally:
            self._pool = None
            self._store.close()
            self._store = None

    async def _create_room(self, params: Fields, conn: Connection) -> Any:
        request = RoomRequest.from_params(params)
        try:
            request.verify()
        except AuthorisationError as exc:
            raise RpcError("unauthorized", str(exc)) from None
        now_ms = self.clock.now_ms()
        _check_fresh(request.timestamp_ms, now_ms, "room request")
        if self.store.has_room(request.room):
            return {"room": request.room, "created": False}
        if not self._room_limit.allow(request.key, now_ms / 1000):
            raise RpcError("rate_limited", "too many new rooms: try again later")
        return {"room": request.room, "created": self.store.create_room(request.room, now_ms)}

    async def _list_rooms(self, params: Fields, conn: Connection) -> Any:
        params.only()
        return {"rooms": self.store.rooms()}

    def _require_room(self, params: Fields) -> str:
        room = check_room_name(params.text("room", max_len=MAX_ROOM_CHARS))
        if not self.store.has_room(room):
            raise RpcError("not_found", f"no room {room!r}")
        return room

    async def _post(self, params: Fields, conn: Connection) -> Any:
        params.only("room", "post")
        room = self._require_room(params)
        data = params.blob("post")
        if len(data) > MAX_POST_BYTES:
            raise RpcError("too_large", f"a post is at most {MAX_POST_BYTES} bytes")
        post = Post.from_bytes(data)
        if post.room != room:
            raise DecodeError("the post was signed for another room")
        try:
            post.verify()
        except AuthorisationError as exc:
            raise RpcError("unauthorized", str(exc)) from None
        stored = self.store.find(post.hash)
        if stored is None:
            now_ms = self.clock.now_ms()
            _check_fresh(post.timestamp_ms, now_ms, "post")
            user = await self._attribute(post)
            stored = self.store.add(post, user, now_ms)
        post_id, user = stored
        return {"id": post_id, "user": user}

    async def _attribute(self, post: Post) -> str:
        """The user a verified post belongs to, or ``unauthorized`` for a false claim."""
        if self.fileserver_url is None or self._pool is None:
            user = post.sender
        else:
            try:
                client = FileServerClient(await self._pool.get(self.fileserver_url))
                user = (await client.get_mappings(post.sender)).primary
            except (OSError, LinkClosed, ConnectionLost, RpcError, DecodeError) as exc:
                logger.warning("file server lookup for %s failed: %s", post.sender[:12], exc)
                raise RpcError("unavailable", "the file server cannot confirm the sender") from None
        if post.primary is not None and post.primary != user:
            raise RpcError("unauthorized", "the sender is not a device of the claimed primary")
        return user

    async def _messages(self, params: Fields, conn: Connection) -> Any:
        params.only("room", "since", "limit")
        room = self._require_room(params)
        since = params.uint("since")
        limit = (
            params.uint("limit", maximum=MAX_MESSAGES_LIMIT)
            if params.has("limit")
            else DEFAULT_MESSAGES_LIMIT
        )
        found, more = self.store.messages(room, since, max(limit, 1))
        return {"messages": [m.to_wire() for m in found], "more": more}


# --- client -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostReceipt:
    id: int
    user: str


class OpenGroupClient:
    """Typed calls to an open group server over one RPC connection; refusals arrive as
    :class:`RpcError`, malformed answers as :class:`DecodeError`."""

    def __init__(self, rpc: RpcCaller) -> None:
        self.rpc = rpc

    async def create_room(self, request: RoomRequest) -> bool:
        """Create the room if it does not exist (:func:`sign_room_request`); True if it was
        created now."""
        result = Fields(await self.rpc.call("create_room", request.to_params()), "create_room")
        return result.only("room", "created").boolean("created")

    async def list_rooms(self) -> list[str]:
        result = Fields(await self.rpc.call("list_rooms", {}), "list_rooms").only("rooms")
        rooms = result.items("rooms", max_len=MAX_ROOMS)
        if not all(isinstance(room, str) for room in rooms):
            raise DecodeError("list_rooms.rooms must hold text")
        return [check_room_name(str(room)) for room in rooms]

    async def post(self, post: Post) -> PostReceipt:
        """Send a signed post (:func:`sign_post`); the receipt names the attributed user."""
        result = Fields(
            await self.rpc.call("post", {"room": post.room, "post": post.to_bytes()}), "post"
        ).only("id", "user")
        return PostReceipt(result.uint("id"), _session_id(result, "user"))

    async def messages(
        self, room: str, since: int = 0, limit: int = DEFAULT_MESSAGES_LIMIT
    ) -> tuple[list[RoomMessage], bool]:
        """Posts after id ``since``, each checked against its signed post (one that fails
        is dropped with a warning: the server altered or invented it); the flag says
        whether more remain."""
        result = Fields(
            await self.rpc.call("messages", {"room": room, "since": since, "limit": limit}),
            "messages",
        ).only("messages", "more")
        found = []
        for item in result.items("messages", max_len=MAX_MESSAGES_LIMIT):
            message = RoomMessage.from_wire(item)
            try:
                message.check(room)
            except AuthorisationError as exc:
                logger.warning("dropped open-group message %d of %s: %s", message.id, room, exc)
                continue
            found.append(message)
        return found, result.boolean("more")


@asynccontextmanager
async def open_opengroup_client(transport: Transport, url: str) -> AsyncIterator[OpenGroupClient]:
    """Connect to the open group server at ``url``. ``OSError`` if it cannot be reached."""
    async with open_rpc(transport, url) as rpc:
        yield OpenGroupClient(rpc)


__all__ = [
    "OpenGroupClient",
    "OpenGroupServer",
    "OpenGroupStore",
    "Post",
    "PostReceipt",
    "RoomMessage",
    "RoomRequest",
    "open_opengroup_client",
    "sign_post",
    "sign_room_request",
]
