"""WebSocket as a :class:`overlay.link.Transport`, so RPC code runs unchanged over real
sockets (this) or the in-memory network (:class:`overlay.link.MemoryNetwork`).

Addresses are ``wss://host:port/<hex Ed25519 key>``: TLS 1.3 with the server pinned to
the key its signed announcement carries (:mod:`overlay.tls`), what every server serves by
default (:meth:`WebSocketTransport.as_server`), or ``ws://host:port``, plaintext, served
only by a transport made ``plain`` (benchmarks that compare, and tests).
Only binary frames are accepted: a text frame raises
:class:`DecodeError` from ``receive`` and the RPC server answers it with ``bad_request``.
A message over the size limit closes that connection (code 1009); the server itself goes
on.

The protocol is wsproto's (sans-I/O); this module is its thin Trio driver. It has no
reader task of its own: ``receive`` reads the socket when nothing is buffered, so one
read that brings many pipelined frames costs one wake-up, and ``receive_nowait`` hands
out the rest of that read without waiting. ``send_batch`` writes many messages with one
``send_all``, and concurrent ``send`` calls share a write: both matter because on a busy
node the per-syscall and per-task-switch cost, not the bytes, is what limits throughput.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from overlay import tls
from overlay.addresses import split_host_port
from overlay.handshakes import MAX_PENDING_HANDSHAKES, PendingHandshakes
from overlay.link import (
    Link,
    LinkClosed,
    LinkHandler,
    TcpTransport,
    Transport,
    close_stream,
    run_handler,
    write_whole,
)

from .errors import DecodeError
from .identity import Identity
from .urls import bare_address, server_url, split_url
from .wire import MAX_FRAME_BYTES

logger = logging.getLogger(__name__)

#: How long a peer gets to finish the opening or closing handshake.
HANDSHAKE_TIMEOUT_S = 10.0
#: Bytes asked of the socket per read: enough for a burst of pipelined small frames.
RECEIVE_BYTES = 65536
#: Close code for a message over the size limit (RFC 6455 §7.4.1).
TOO_BIG = 1009

_TEXT_REFUSED = DecodeError("text frames are not accepted; send binary CBOR frames")


class WebSocketLink(Link):
    """One open WebSocket. Messages parsed from a read wait in ``_inbox`` (a text message
    as a :class:`DecodeError` to raise in its turn); control replies (pong, close) and
    messages from concurrent senders wait in ``_outgoing`` for the next write."""

    def __init__(
        self, stream: trio.abc.Stream, ws: WSConnection, peer: str, max_message_bytes: int
    ) -> None:
        self._stream = stream
        self._ws = ws
        self.peer = peer
        self._max = max_message_bytes
        self._inbox: deque[bytes | DecodeError] = deque()
        self._parts: list[bytes] = []
        self._size = 0
        self._ended: str | None = None  # why no more messages will arrive
        self._broken: str | None = None  # why no more bytes can be written
        self._outgoing: list[bytes] = []
        self._send_lock = trio.StrictFIFOLock()
        self._take(ws.events())

    # --- receiving ------------------------------------------------------------------------

    def _take(self, events: Iterable[Event]) -> None:
        """Turn protocol events into inbox messages and queued control replies."""
        for event in events:
            if isinstance(event, Message):
                self._size += len(event.data)
                if self._size > self._max:
                    self._end(f"message over {self._max} bytes", TOO_BIG)
                    return
                self._parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        self._inbox.append(_TEXT_REFUSED)
                    else:
                        self._inbox.append(b"".join(self._parts))
                    self._parts, self._size = [], 0
            elif isinstance(event, Ping):
                self._queue(event.response())
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._queue(event.response())
                self._ended = f"peer closed ({event.code} {event.reason or ''})".strip()
                return

    def _end(self, reason: str, code: int) -> None:
        self._ended = reason
        if self._ws.state is ConnectionState.OPEN:
            self._queue(CloseConnection(code=code, reason=reason))

    def _queue(self, event: Event) -> None:
        # Past the state where this event can go out (the close is under way), it is moot.
        with suppress(LocalProtocolError):
            self._outgoing.append(self._ws.send(event))

    async def _read(self) -> None:
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._ended = str(exc) or "connection lost"
            return
        if not data:
            self._ended = f"{self.peer} closed the connection"
            return
        try:
            self._ws.receive_data(bytes(data))  # a TLS stream may hand a bytearray
        except RemoteProtocolError as exc:
            self._ended = f"protocol error: {exc}"
            return
        self._take(self._ws.events())

    def _pop(self) -> bytes:
        message = self._inbox.popleft()
        if isinstance(message, DecodeError):
            raise message
        return message

    async def receive(self) -> bytes:
        if self._inbox:
            await trio.lowlevel.checkpoint()
            return self._pop()
        while not self._inbox:
            if self._ended is not None:
                await self._close_if_done()
                raise LinkClosed(self._ended)
            await self._read()
            if self._outgoing:
                await self._flush()
        return self._pop()

    def receive_nowait(self) -> bytes:
        if self._inbox:
            return self._pop()
        raise trio.WouldBlock

    async def _close_if_done(self) -> None:
        """Once the peer's side has ended, say so (best effort) and drop the socket."""
        if self._outgoing:
            with suppress(LinkClosed):
                await self._flush()
        await close_stream(self._stream)

    # --- sending --------------------------------------------------------------------------

    async def send(self, message: bytes) -> None:
        await self.send_batch((message,))

    async def send_batch(self, messages: Sequence[bytes]) -> None:
        """Send messages in order, in as few writes as possible."""
        if self._ws.state is not ConnectionState.OPEN:
            raise LinkClosed(self._broken or self._ended or "connection is closing")
        for message in messages:
            self._outgoing.append(self._ws.send(BytesMessage(data=bytes(message))))
        await self._flush()

    async def _flush(self) -> None:
        """Write everything queued. A sender that finds its bytes already taken by the
        one before it (they share the write) returns once that write is done."""
        async with self._send_lock:
            if self._broken is not None:
                raise LinkClosed(self._broken)
            if not self._outgoing:
                return
            # A sender whose deadline passed while it waited for the lock writes nothing
            # (its bytes stay queued for the next): only a write cut short ends the link.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            try:
                await write_whole(self._stream, data)
            except BaseException as exc:
                # The stream is closed now (see write_whole): the senders whose bytes
                # this write carried learn it when the lock comes to them.
                self._broken = str(exc) if isinstance(exc, LinkClosed) else "a write was cut short"
                raise

    async def aclose(self) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._queue(CloseConnection(code=1000))
            with trio.CancelScope(shield=True) as scope, suppress(LinkClosed):
                scope.relative_deadline = HANDSHAKE_TIMEOUT_S
                await self._flush()
        await close_stream(self._stream)


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _handshake(
    stream: trio.abc.Stream,
    ws: WSConnection,
    peer: str,
    max_message_bytes: int,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> WebSocketLink:
    """Run the opening handshake (the client has already sent its request): a server
    accepts the first request, a client waits for the answer. ``OSError`` if it fails or
    takes longer than ``timeout_s`` (so a slow-loris client holds a socket that long only)."""
    with trio.move_on_after(timeout_s):
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise OSError(f"{peer} closed the connection during the handshake")
            try:
                ws.receive_data(bytes(data))
            except RemoteProtocolError as exc:
                raise OSError(f"websocket handshake with {peer} failed: {exc}") from None
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()))
                    return WebSocketLink(stream, ws, peer, max_message_bytes)
                if isinstance(event, AcceptConnection):
                    return WebSocketLink(stream, ws, peer, max_message_bytes)
                if isinstance(event, RejectConnection | RejectData):
                    raise OSError(f"{peer} rejected the websocket connection")
    raise OSError(f"websocket handshake with {peer} timed out")


@dataclass
class WebSocketTransport(Transport):
    max_message_bytes: int = MAX_FRAME_BYTES
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES
    #: The address this side's connections come from (a host of its own on loopback,
    #: ``127.0.0.N``, for an audit of what servers see); None lets the system choose.
    local_address: str | None = None
    #: The server's announced identity: with it the server speaks TLS, presenting its key.
    identity: Identity | None = field(default=None, repr=False)
    #: Serve plaintext ``ws://`` even as a server with a key (:meth:`as_server` keeps no
    #: identity), and as a client dial addresses that name no key (a client that is not
    #: ``plain`` refuses them): the explicit choice of benchmarks that compare.
    plain: bool = False

    def for_overlay(self) -> Transport:
        return TcpTransport(plain=self.plain)

    @property
    def pins_keys(self) -> bool:
        return not self.plain

    def as_server(self, seed: bytes) -> Transport:
        return self if self.plain else replace(self, identity=Identity(seed))

    async def serve(
        self,
        handler: LinkHandler,
        address: str = "127.0.0.1:0",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # ``address`` may be a url this server reported before: a restart listens there.
        host, port = split_host_port(bare_address(address))
        pending = PendingHandshakes(self.max_pending_handshakes)
        identity = self.identity

        async def accept(stream: trio.SocketStream) -> None:
            peer = _peer_name(stream)
            link: WebSocketLink | None = None
            carried: trio.abc.Stream = stream
            try:
                with pending.slot():
                    if identity is not None:
                        carried = await tls.accept_tls(stream, identity.seed)
                    link = await _handshake(
                        carried,
                        WSConnection(ConnectionType.SERVER),
                        peer,
                        self.max_message_bytes,
                        self.handshake_timeout_s,
                    )
                if link is None:
                    raise OSError("crowded out by newer sockets in their handshake")
            except (
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio.TooSlowError,
            ) as exc:
                logger.debug("no websocket from %s: %s", peer, exc)
                await trio.aclose_forcefully(carried)
                return
            await run_handler(handler, link)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, accept, port, host=host))
            bound_port = listeners[0].socket.getsockname()[1]
            bound_host = host if ":" not in host else f"[{host}]"
            key = None if identity is None else identity.ed25519_public
            task_status.started(server_url(f"{bound_host}:{bound_port}", key))

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[WebSocketLink]:
        url = address if address.startswith(("ws://", "wss://")) else f"ws://{address}"
        authority, pin = split_url(url)
        if pin is None and self.pins_keys:
            raise OSError(f"refused {url[:80]}: it names no key, and this network's links are TLS")
        host, port = split_host_port(authority)
        stream: trio.abc.Stream = await trio.open_tcp_stream(
            host, port, local_address=self.local_address
        )
        try:
            if pin is not None:
                stream = await tls.connect_tls(stream, pin)
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host=authority, target="/")))
            link = await _handshake(
                stream, ws, url, self.max_message_bytes, self.handshake_timeout_s
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, tls.PeerKeyMismatch) as exc:
            await stream.aclose()
            raise OSError(f"websocket connection to {url} failed: {exc}") from None
        except BaseException:
            await stream.aclose()
            raise
        async with link:
            yield link
