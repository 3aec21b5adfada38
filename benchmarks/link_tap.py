"""A link observer: a TCP proxy that forwards both ways and keeps every byte it carried.

What a passive observer on the wire (an ISP, a shared Wi-Fi) reads of a link is what this
records; :func:`plaintext_keys` counts how many of the given account or node keys it can
read there, raw or hex-encoded (the two ways our formats carry a key). The demo's
``privacy.link_plaintext_keys`` is that count; tests use the same tap to prove TLS hides
the keys (and that without TLS it finds them, so the check can fail).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request
from wsproto.utilities import RemoteProtocolError


class LinkTap:
    """Forwards each accepted connection to ``target`` and records the bytes both ways."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._captured = bytearray()
        self._from_clients = bytearray()

    @property
    def captured(self) -> bytes:
        """Every byte carried, both ways, as the wire showed it."""
        return bytes(self._captured)

    @property
    def readable(self) -> bytes:
        """What an observer reads: the bytes as carried, plus a plaintext WebSocket
        client's frames unmasked (RFC 6455 masks them with a key sent beside them, which
        hides nothing from an observer but would hide them from a byte search)."""
        return self.captured + _unmasked(bytes(self._from_clients))

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port (reported by ``nursery.start``) until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self._target)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope, True)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope, False)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        scope: trio.CancelScope,
        from_client: bool,
    ) -> None:
        """One direction; when either side ends, the whole connection ends."""
        try:
            while chunk := await source.receive_some(65536):
                self._captured += chunk
                if from_client:
                    self._from_clients += chunk
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def plaintext_keys(captured: bytes, keys: Iterable[bytes]) -> int:
    """How many of ``keys`` appear in ``captured``, as raw bytes or as hex (either case)."""
    lowered = captured.lower()
    return sum(1 for key in keys if key in captured or key.hex().encode() in lowered)


def _unmasked(client_bytes: bytes) -> bytes:
    """The payloads of a plaintext WebSocket client's messages; nothing from other bytes
    (TLS records, our framed TCP links, several connections run together past the first)."""
    ws = WSConnection(ConnectionType.SERVER)
    payloads = bytearray()
    request, end, frames = client_bytes.partition(b"\r\n\r\n")
    try:
        ws.receive_data(request + end)
        if not any(isinstance(event, Request) for event in ws.events()):
            return b""
        ws.send(AcceptConnection())  # wsproto's server parses frames only once it accepted
        ws.receive_data(frames)
        for event in ws.events():
            if isinstance(event, BytesMessage):
                payloads += event.data
    except RemoteProtocolError:
        pass
    return bytes(payloads)
