"""What an open group carries, sans-I/O: the signed post (:class:`Post`), the signed room
request (:class:`RoomRequest`), a message as a server lists it and what a reader checks of
it (:class:`RoomMessage`), and the limits every decoder applies (see :mod:`p2psync.opengroup`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..envelope import MAX_TIMESTAMP_MS
from ..errors import DecodeError, RpcError
from ..identity import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    ed25519_matches_session_id,
    message_hash,
    session_id_key,
    verify,
)
from ..mapping import AuthorisationError
from ..swarm.constants import CLOCK_SKEW_MS
from ..wire import Fields, decode_cbor, encode_cbor

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
#: Bytes of messages, as encoded, in one ``messages`` reply, so it always fits a frame
#: with room to spare (at least one post is always returned).
MAX_MESSAGES_REPLY_BYTES = 96 * 1024
#: Rooms one creator key may create at once, and the seconds until it may create one more.
ROOMS_PER_KEY = 3
ROOM_KEY_REFILL_S = 3600.0
#: Rooms all creators together may create at once, and then one per ``ROOM_REFILL_S``.
ROOMS_BURST = 20
ROOM_REFILL_S = 300.0
#: Posts one device key may make at once, then one per POST_KEY_REFILL_S; all keys
#: together POSTS_BURST, then one per POST_REFILL_S; and to one room ROOM_POSTS_BURST,
#: then one per ROOM_POST_REFILL_S (see the package's docstring).
POSTS_PER_KEY = 30
POST_KEY_REFILL_S = 2.0
POSTS_BURST = 6000
POST_REFILL_S = 0.005
ROOM_POSTS_BURST = 600
ROOM_POST_REFILL_S = 0.05
#: Bytes of posts (the signed records) a room keeps; past it its oldest posts go.
ROOM_MAX_BYTES = 16 * 1024 * 1024

_ROOM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SESSION_ID_CHARS = 66


def check_room_name(room: str) -> str:
    """Room names are short lowercase slugs, so they are safe in URLs, logs and UIs."""
    if not isinstance(room, str) or not _ROOM_NAME.fullmatch(room):
        raise DecodeError("a room name is 1-64 of a-z, 0-9, '_' and '-', starting alphanumeric")
    return room


def session_id_field(fields: Fields, name: str) -> str:
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
            sender=session_id_field(fields, "sender"),
            key=fields.blob("key", size=KEY_BYTES),
            primary=session_id_field(fields, "primary") if fields.has("primary") else None,
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
            user=session_id_field(fields, "user"),
            device=session_id_field(fields, "device"),
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


def check_fresh(timestamp_ms: int, now_ms: int, what: str) -> None:
    """A signed request must be recent, so nobody stores one up for later."""
    if abs(timestamp_ms - now_ms) > CLOCK_SKEW_MS:
        raise RpcError(
            "clock_skew", f"{what} timestamp is {timestamp_ms - now_ms:+d} ms from the server clock"
        )
