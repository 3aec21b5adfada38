"""WebSocket as a :class:`overlay.link.Transport`, so RPC code runs unchanged over real
sockets (this) or the in-memory network (:class:`overlay.link.MemoryNetwork`).

Addresses are ``ws://host:port``. Only binary frames are accepted: a text frame raises
:class:`DecodeError` from ``receive`` and the RPC server answers it with ``bad_request``.
A frame over the size limit makes trio-websocket close that connection (code 1009); the
server itself goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio_websocket

from overlay.link import Link, LinkClosed, LinkHandler, Transport, run_handler, split_host_port

from .errors import DecodeError
from .wire import MAX_FRAME_BYTES

logger = logging.getLogger(__name__)

#: How long a peer gets to finish the opening or closing handshake.
HANDSHAKE_TIMEOUT_S = 10.0


class _WebSocketLink(Link):
    def __init__(self, connection: trio_websocket.WebSocketConnection, peer: str) -> None:
        self._connection = connection
        self.peer = peer

    async def send(self, message: bytes) -> None:
        try:
            await self._connection.send_message(bytes(message))
        except trio_websocket.ConnectionClosed as exc:
            raise LinkClosed(str(exc.reason)) from None

    async def receive(self) -> bytes:
        try:
            message = await self._connection.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise LinkClosed(str(exc.reason)) from None
        if isinstance(message, str):
            raise DecodeError("text frames are not accepted; send binary CBOR frames")
        return message

    async def aclose(self) -> None:
        await self._connection.aclose()


def _url_address(url: str) -> str:
    if not url.startswith("ws://"):
        raise ValueError(f"not a ws:// url: {url!r}")
    return url.removeprefix("ws://").split("/", 1)[0]


@dataclass
class WebSocketTransport(Transport):
    max_message_bytes: int = MAX_FRAME_BYTES

    async def serve(
        self,
        handler: LinkHandler,
        address: str = "127.0.0.1:0",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = split_host_port(address.removeprefix("ws://"))

        async def accept(request: trio_websocket.WebSocketRequest) -> None:
            connection = await request.accept()
            try:
                remote = connection.remote
            except OSError:
                return  # the client went away during the handshake: nothing to serve
            peer = f"{getattr(remote, 'address', remote)}:{getattr(remote, 'port', '')}"
            await run_handler(handler, _WebSocketLink(connection, peer))

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    accept,
                    host,
                    port,
                    None,
                    max_message_size=self.max_message_bytes,
                    message_queue_size=4,
                    connect_timeout=HANDSHAKE_TIMEOUT_S,
                    disconnect_timeout=HANDSHAKE_TIMEOUT_S,
                    task_status=task_status,
                )
            )
            bound_host = host if ":" not in host else f"[{host}]"
            task_status.started(f"ws://{bound_host}:{server.port}")

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[Link]:
        url = address if address.startswith("ws://") else f"ws://{address}"
        _url_address(url)
        try:
            async with trio_websocket.open_websocket_url(
                url,
                max_message_size=self.max_message_bytes,
                message_queue_size=4,
                connect_timeout=HANDSHAKE_TIMEOUT_S,
                disconnect_timeout=HANDSHAKE_TIMEOUT_S,
            ) as connection:
                yield _WebSocketLink(connection, url)
        except (trio_websocket.HandshakeError, trio_websocket.ConnectionRejected) as exc:
            raise OSError(f"websocket connection to {url} failed: {exc}") from None
