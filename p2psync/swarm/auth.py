"""Signed requests, as pure functions: no clock read here, ``now_ms`` is passed in.

Client ``auth`` (DESIGN.md §4): an Ed25519 signature over
``method + pubkey + str(namespace) + str(timestamp)`` followed, for ``delete`` and
``expire``, by ``str(expiry)`` (expire only) and the lowercase hex of each hash. The key
must convert to the X25519 key inside ``pubkey``; the timestamp must be within ±60 s; and a
signature is accepted once: :class:`ReplayGuard` remembers what it saw inside the window,
so a captured request cannot be replayed at all. Clients therefore never reuse a timestamp
(:class:`AuthSigner` makes them strictly increasing).

Node-to-node requests carry ``node_auth``: the sending node's key, a timestamp and a
signature over the method, the timestamp and a hash of the canonical CBOR params, under a
separate domain prefix so a client signature can never pass for a node's.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RpcError
from ..identity import Identity, ed25519_matches_session_id, verify
from ..wire import Fields, encode_cbor
from .constants import CLOCK_SKEW_MS

NODE_AUTH_DOMAIN = b"p2psync-node-auth/1:"
REPLAY_CACHE_ENTRIES = 200_000


def auth_text(
    method: str,
    pubkey: str,
    namespace: int,
    timestamp_ms: int,
    hashes: Iterable[bytes] = (),
    expiry_ms: int | None = None,
) -> bytes:
    text = method + pubkey + str(namespace) + str(timestamp_ms)
    if expiry_ms is not None:
        text += str(expiry_ms)
    return (text + "".join(h.hex() for h in hashes)).encode()


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """A client request's ``auth`` field, decoded (its signature is checked by
    :func:`verify_client_auth`, which needs the rest of the request)."""

    ed25519: bytes
    timestamp_ms: int
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "ed25519": self.ed25519,
            "timestamp": self.timestamp_ms,
            "signature": self.signature,
        }

    @classmethod
    def from_wire(cls, auth: Fields) -> ClientAuth:
        auth.only("ed25519", "timestamp", "signature")
        return cls(
            auth.blob("ed25519", size=32), auth.uint("timestamp"), auth.blob("signature", size=64)
        )


class AuthSigner:
    """Signs client requests for one identity with strictly increasing timestamps."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._last_ms = 0

    def auth(
        self,
        method: str,
        namespace: int,
        now_ms: int,
        hashes: Iterable[bytes] = (),
        expiry_ms: int | None = None,
    ) -> dict[str, Any]:
        """The ``auth`` field of a request, as sent."""
        return self.sign(method, namespace, now_ms, hashes, expiry_ms).to_wire()

    def sign(
        self,
        method: str,
        namespace: int,
        now_ms: int,
        hashes: Iterable[bytes] = (),
        expiry_ms: int | None = None,
    ) -> ClientAuth:
        timestamp = max(now_ms, self._last_ms + 1)
        self._last_ms = timestamp
        text = auth_text(method, self.identity.session_id, namespace, timestamp, hashes, expiry_ms)
        return ClientAuth(self.identity.ed25519_public, timestamp, self.identity.sign(text))


class ReplayGuard:
    """Remembers accepted signatures for the skew window (bounded: oldest evicted)."""

    def __init__(self, window_ms: int = CLOCK_SKEW_MS, capacity: int = REPLAY_CACHE_ENTRIES):
        self._window_ms = window_ms
        self._capacity = capacity
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def check_fresh(self, timestamp_ms: int, now_ms: int) -> None:
        if abs(timestamp_ms - now_ms) > self._window_ms:
            raise RpcError(
                "clock_skew",
                f"request timestamp is {timestamp_ms - now_ms:+d} ms from the node's clock",
            )

    def accept_once(self, signature: bytes, timestamp_ms: int, now_ms: int) -> None:
        while self._seen and (
            len(self._seen) >= self._capacity
            or next(iter(self._seen.values())) < now_ms - 2 * self._window_ms
        ):
            self._seen.popitem(last=False)
        if signature in self._seen:
            raise RpcError("unauthorized", "this signature was already used")
        self._seen[signature] = max(timestamp_ms, now_ms)


def check_client_auth(
    auth: ClientAuth | Fields,
    guard: ReplayGuard,
    *,
    method: str,
    pubkey: str,
    namespace: int,
    now_ms: int,
    hashes: Iterable[bytes] = (),
    expiry_ms: int | None = None,
) -> None:
    """Raise ``unauthorized`` or ``clock_skew`` unless ``auth`` (decoded, or the params
    of a request, whose ``auth`` field is decoded here) proves the caller holds the key of
    ``pubkey`` and signed exactly this request just now."""
    if isinstance(auth, Fields):
        auth = ClientAuth.from_wire(auth.map("auth"))
    guard.check_fresh(auth.timestamp_ms, now_ms)
    if not ed25519_matches_session_id(auth.ed25519, pubkey):
        raise RpcError("unauthorized", "auth key does not belong to pubkey")
    text = auth_text(method, pubkey, namespace, auth.timestamp_ms, hashes, expiry_ms)
    if not verify(auth.ed25519, text, auth.signature):
        raise RpcError("unauthorized", "auth signature does not verify")
    guard.accept_once(auth.signature, auth.timestamp_ms, now_ms)


def _node_auth_text(method: str, timestamp_ms: int, params: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in params.items() if k != "node_auth"}
    digest = hashlib.blake2b(encode_cbor(body), digest_size=32).digest()
    return NODE_AUTH_DOMAIN + method.encode() + b":" + str(timestamp_ms).encode() + b":" + digest


def sign_node_request(
    node: Identity, method: str, params: dict[str, Any], now_ms: int
) -> dict[str, Any]:
    """``params`` with a ``node_auth`` field added."""
    return {
        **params,
        "node_auth": {
            "node": node.ed25519_public.hex(),
            "timestamp": now_ms,
            "signature": node.sign(_node_auth_text(method, now_ms, params)),
        },
    }


def check_node_auth(
    params: Fields, raw_params: Mapping[str, Any], guard: ReplayGuard, *, method: str, now_ms: int
) -> str:
    """The hex key of the node that signed this request, or ``unauthorized``."""
    auth = params.map("node_auth").only("node", "timestamp", "signature")
    node = auth.text("node", max_len=64)
    timestamp = auth.uint("timestamp")
    signature = auth.blob("signature", size=64)
    guard.check_fresh(timestamp, now_ms)
    try:
        key = bytes.fromhex(node)
    except ValueError:
        raise RpcError("unauthorized", "node_auth.node is not a hex key") from None
    if not verify(key, _node_auth_text(method, timestamp, raw_params), signature):
        raise RpcError("unauthorized", "node signature does not verify")
    guard.accept_once(signature, timestamp, now_ms)
    return node
