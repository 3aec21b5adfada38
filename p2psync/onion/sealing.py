"""The sealed onion request, sans-I/O: what a client seals (:func:`seal_request`) and what
a server takes out of it (:class:`SealedRequests`).

Inside the box sealed to the server's X25519 key: a version, the time it was sealed, a
fresh reply key, then the RPC request frame as it would travel on a direct connection.
The server answers with the reply frame under the reply key (secretbox).
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from enum import Enum

import nacl.public
import nacl.secret

from ..errors import DecodeError, RpcError
from ..identity import Identity, ed25519_to_x25519, seal
from ..wire import Request, decode_frame, encode_frame

ONION_METHOD = "onion"
#: version (1) ‖ sealed at, ms (8) ‖ reply key (32), then the request frame.
_HEADER = struct.Struct(">BQ32s")
ONION_VERSION = 1
#: A server refuses an onion request sealed further than this from its own clock (either
#: way): a replay, or a clock off by more than signed requests already tolerate.
ONION_FRESHNESS_MS = 2 * 60 * 1000
#: Sealed requests a server remembers to refuse their replays (they are refused as stale
#: after ONION_FRESHNESS_MS anyway). Past it the oldest are forgotten first: it takes over
#: 500 onion requests a second for one to be forgotten while still fresh.
ONION_REPLAY_ENTRIES = 64 * 1024
#: The id every inner request carries: a per-device counter would let a server tell a
#: device's requests apart from its siblings' (and count them) through any exit.
ONION_REQUEST_ID = 1


def seal_request(
    server_ed25519: bytes, request: Request, now_ms: int
) -> tuple[bytes, nacl.secret.SecretBox]:
    """``request`` sealed to the server with announced key ``server_ed25519``, and the box
    its reply will come in (a fresh key each time)."""
    x25519 = ed25519_to_x25519(server_ed25519)
    if x25519 is None:
        raise RpcError("unavailable", "the server's announced key is not a curve point")
    reply_key = os.urandom(nacl.secret.SecretBox.KEY_SIZE)
    header = _HEADER.pack(ONION_VERSION, now_ms, reply_key)
    return seal(x25519, header + encode_frame(request)), nacl.secret.SecretBox(reply_key)


class Refusal(Enum):
    """Why a sealed body was refused."""

    #: It does not open, or holds anything but one request for another method.
    MALFORMED = "malformed"
    #: Sealed too far from the server's clock, either way.
    STALE = "stale"
    #: Opened before.
    REPLAYED = "replayed"


class OnionRefused(RpcError):
    """A sealed body refused ``bad_request``, and why (:class:`Refusal`)."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__("bad_request", message)
        self.reason = reason


class SealedRequests:
    """What a server with ``identity`` opens: the request inside each sealed body, and
    the box to answer in. It remembers the bodies it opened while they are fresh (at
    most ``capacity``), to refuse their replays."""

    def __init__(
        self, identity: Identity, max_frame_bytes: int, *, capacity: int = ONION_REPLAY_ENTRIES
    ) -> None:
        self._identity = identity
        self._max_frame_bytes = max_frame_bytes
        self._capacity = capacity
        #: The ephemeral keys of the sealed requests answered lately → when sealed.
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    @property
    def remembered(self) -> int:
        """How many opened bodies it remembers now."""
        return len(self._seen)

    def open(self, body: bytes, now_ms: int) -> tuple[Request, nacl.secret.SecretBox]:
        """The request inside ``body`` and the box to answer in, or :class:`OnionRefused`."""
        try:
            plain = self._identity.unseal(body)
            version, sealed_ms, reply_key = _HEADER.unpack_from(plain)
            if version != ONION_VERSION:
                raise DecodeError(f"onion version {version}")
            frame = decode_frame(plain[_HEADER.size :], max_bytes=self._max_frame_bytes)
            if not isinstance(frame, Request) or frame.method == ONION_METHOD:
                raise DecodeError("an onion request holds one request for another method")
        except (DecodeError, struct.error) as exc:
            raise OnionRefused(Refusal.MALFORMED, f"onion request: {exc}") from None
        if abs(now_ms - sealed_ms) > ONION_FRESHNESS_MS:
            raise OnionRefused(Refusal.STALE, "onion request is stale (is the clock right?)")
        self._forget_stale(now_ms)
        ephemeral = body[: nacl.public.PublicKey.SIZE]
        if ephemeral in self._seen:
            raise OnionRefused(Refusal.REPLAYED, "onion request replayed")
        self._seen[ephemeral] = sealed_ms
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return frame, nacl.secret.SecretBox(reply_key)

    def _forget_stale(self, now_ms: int) -> None:
        """Drop the entries that are refused as stale anyway (oldest arrivals first)."""
        while self._seen:
            ephemeral, sealed_ms = next(iter(self._seen.items()))
            if now_ms - sealed_ms <= ONION_FRESHNESS_MS:
                return
            del self._seen[ephemeral]
