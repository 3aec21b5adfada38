"""Onion requests: a device reaches a server through one of its own overlay paths, so no
server sees the device's address (DESIGN.md §6, issue 17).

The path's exit relay hands the request to the server and carries the answer back; it
sees the server's address but not the request, which is sealed end-to-end to the server's
X25519 key (converted from the Ed25519 key the server announces) with a fresh ephemeral
key per request (libsodium's sealed box). Inside: the time it was sealed, a fresh reply
key, and the RPC request frame as it would travel on a direct connection; the server
answers with the reply frame under the reply key (secretbox). Relays on the path see only
cells, as for any payload.

* Server side: :class:`OnionService` adds the ``onion`` method to any :class:`RpcServer`
  (storage node, file server, open group server). The inner request goes through the
  server's own dispatch (:meth:`RpcServer.answer`), so it keeps its own signatures and
  authorisation is unchanged. Sealed bodies that do not open, are stale or were seen
  before are refused and counted (:class:`OnionStats`).
* Relay side: :func:`rpc_exit` is the exit callable an overlay relay is given: it calls
  ``onion`` on the server over an ordinary :class:`RpcPool` from the relay's own host.
* Client side: :class:`OnionRpcPool` has the call interface of :class:`RpcPool` (``call``,
  ``get``, ``transport``), on an overlay :class:`~overlay.endpoint.Endpoint`: each request
  goes on the endpoint's next path in turn, and one that gets no answer in time, or a
  failure from its exit, is sealed afresh and sent on another path.

Pushes (``subscribe``) need a connection of their own and do not travel on paths: the
swarm client's subscriptions stay direct connections.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.secret
import trio

from overlay.constants import EXIT_TIMEOUT_MS
from overlay.endpoint import Endpoint
from overlay.exits import ExitFailed
from overlay.link import Transport
from overlay.path import Path
from overlay.relay import ExitCallable

from .clock import Clock
from .errors import ConnectionLost, DecodeError, RpcError
from .identity import Identity, ed25519_to_x25519, seal
from .rpc import Connection, RpcPool, RpcServer, result_of
from .swarm.registry import Directory
from .wire import Fields, Request, decode_frame, encode_frame

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
#: How long a client waits for one attempt's answer before trying another path: past the
#: exit's own timeout, so a slow server gets a request once per attempt that failed, not
#: a copy on every path while the first is still being answered.
ONION_ATTEMPT_TIMEOUT_S = EXIT_TIMEOUT_MS / 1000 + 2.0
#: The id every inner request carries: a per-device counter would let a server tell a
#: device's requests apart from its siblings' (and count them) through any exit.
ONION_REQUEST_ID = 1
#: Attempts per request (each on a path not tried yet for it, when there is one).
ONION_ATTEMPTS = 3


@dataclass
class OnionStats:
    """What a server's ``onion`` method answered and what it refused, by reason."""

    answered: int = 0
    refused_malformed: int = 0
    refused_stale: int = 0
    refused_replayed: int = 0


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


class OnionService:
    """The ``onion`` method of one RPC server, which it adds to ``server``."""

    def __init__(self, server: RpcServer, identity: Identity, clock: Clock) -> None:
        self._server = server
        self._identity = identity
        self._clock = clock
        self.stats = OnionStats()
        #: The ephemeral keys of the sealed requests answered lately → when sealed.
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        server.add_method(ONION_METHOD, self.handle)

    async def handle(self, params: Fields, connection: Connection) -> dict[str, bytes]:
        request, reply_box = self.open(params.only("body").blob("body"))
        reply = await self._server.answer(request, connection.peer)
        self.stats.answered += 1
        return {"body": reply_box.encrypt(reply)}

    def open(self, body: bytes) -> tuple[Request, nacl.secret.SecretBox]:
        """The request inside a sealed ``body`` and the box to answer in, or
        :class:`RpcError` ``bad_request`` (counted) if it does not open, is stale, was
        seen before or holds anything but one request for another method."""
        try:
            plain = self._identity.unseal(body)
            version, sealed_ms, reply_key = _HEADER.unpack_from(plain)
            if version != ONION_VERSION:
                raise DecodeError(f"onion version {version}")
            frame = decode_frame(
                plain[_HEADER.size :], max_bytes=self._server.limits.max_frame_bytes
            )
            if not isinstance(frame, Request) or frame.method == ONION_METHOD:
                raise DecodeError("an onion request holds one request for another method")
        except (DecodeError, struct.error) as exc:
            self.stats.refused_malformed += 1
            raise RpcError("bad_request", f"onion request: {exc}") from None
        now_ms = self._clock.now_ms()
        if abs(now_ms - sealed_ms) > ONION_FRESHNESS_MS:
            self.stats.refused_stale += 1
            raise RpcError("bad_request", "onion request is stale (is the clock right?)")
        self._forget_stale(now_ms)
        ephemeral = body[: nacl.public.PublicKey.SIZE]
        if ephemeral in self._seen:
            self.stats.refused_replayed += 1
            raise RpcError("bad_request", "onion request replayed")
        self._seen[ephemeral] = sealed_ms
        if len(self._seen) > ONION_REPLAY_ENTRIES:
            self._seen.popitem(last=False)
        return frame, nacl.secret.SecretBox(reply_key)

    def _forget_stale(self, now_ms: int) -> None:
        """Drop the entries that are refused as stale anyway (oldest arrivals first)."""
        while self._seen:
            ephemeral, sealed_ms = next(iter(self._seen.items()))
            if now_ms - sealed_ms <= ONION_FRESHNESS_MS:
                return
            del self._seen[ephemeral]


def rpc_exit(pool: RpcPool) -> ExitCallable:
    """The exit callable of a relay that reaches servers through ``pool``: the overlay
    hands it (server address, sealed body) and carries back the sealed reply."""

    async def exit_to(address: str, body: bytes) -> bytes:
        result = await pool.call(address, ONION_METHOD, {"body": body})
        return Fields(result, "onion").only("body").blob("body")

    return exit_to


ServerKey = Callable[[str], Awaitable[bytes]]


class DirectoryKeys:
    """The announced Ed25519 key of the server at an address: ``known`` ones (the file
    server's, the open group server's), else the service node the directory lists there."""

    def __init__(self, directory: Directory, known: Mapping[str, bytes] | None = None) -> None:
        self._directory = directory
        self._known = dict(known or {})

    async def __call__(self, address: str) -> bytes:
        key = self._known.get(address)
        if key is None:
            # A node's announcement names its own url: it never replaces a key given
            # here, and a url that two nodes announce names neither.
            snapshot = await self._directory.fetch()
            by_url: dict[str, set[str]] = {}
            for node in snapshot.nodes:
                by_url.setdefault(node.url, set()).add(node.pubkey)
            announced = by_url.get(address, set())
            if len(announced) == 1:
                key = bytes.fromhex(next(iter(announced)))
        if key is None:
            raise RpcError("unavailable", f"no announced key for {address}")
        return key


class OnionRpcPool:
    """:class:`RpcPool`'s call interface over onion requests on ``endpoint``'s paths.

    ``transport`` is for what cannot travel on a path (the swarm client's subscriptions).
    """

    def __init__(
        self, endpoint: Endpoint, server_key: ServerKey, clock: Clock, transport: Transport
    ) -> None:
        self.endpoint = endpoint
        self.transport = transport
        self._server_key = server_key
        self._clock = clock
        #: Attempts that got no answer (a timeout, or a failure from the exit); all but a
        #: request's last are followed by one on another path.
        self.failed_attempts = 0

    async def get(self, address: str) -> OnionClient:
        return OnionClient(self, address)

    async def call(self, address: str, method: str, params: Mapping[str, Any] | None) -> Any:
        """Send one request by onion and return its result, or raise :class:`RpcError`
        (the server's refusal) or :class:`ConnectionLost` (no path got an answer)."""
        key = await self._server_key(address)
        request = Request(ONION_REQUEST_ID, method, dict(params or {}))
        tried: list[Path] = []
        for _ in range(ONION_ATTEMPTS):
            with trio.move_on_after(ONION_ATTEMPT_TIMEOUT_S):
                path = await self.endpoint.exit_path(tried)
                tried.append(path)
                body, reply_box = seal_request(key, request, self._clock.now_ms())
                try:
                    sealed = await self.endpoint.exit_request(path, address, body)
                    reply = decode_frame(reply_box.decrypt(sealed))
                except (ExitFailed, DecodeError, nacl.exceptions.CryptoError):
                    self.failed_attempts += 1
                    continue  # that exit could not, or would not, get the answer
                return result_of(reply)
            self.failed_attempts += 1
        raise ConnectionLost(f"no onion path reached {address}")


class OnionClient:
    """One server reached by onion requests, with :class:`RpcClient`'s ``call``."""

    def __init__(self, pool: OnionRpcPool, address: str) -> None:
        self._pool = pool
        self.peer = address

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self._pool.call(self.peer, method, params)
