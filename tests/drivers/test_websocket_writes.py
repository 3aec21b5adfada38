"""Writes that share one WebSocket: a frame another sender's write carried is only sent
when that write finished, so a sender learns of a write cut short that took its frame."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from overlay.link import LinkClosed
from p2psync.websocket import WebSocketTransport

#: Larger than what the loopback socket buffers hold, so a write of it waits part-way.
BIG = 32 * 1024 * 1024


async def test_a_sender_whose_frame_rode_on_a_write_cut_short_is_told() -> None:
    """A's write is under way, B and C queue behind it; A finishes, B's write takes B's
    frame and C's and is cancelled part-way. C must not hear that its frame went out."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []
    async with trio.open_nursery() as setup:
        setup.start_soon(lambda: _accept_one(listeners[0], accepted))
        async with WebSocketTransport(plain=True).connect(f"ws://127.0.0.1:{port}") as link:
            await trio.testing.wait_all_tasks_blocked()  # the server side has appended it
            [server] = accepted
            a_done = trio.Event()
            results: dict[str, str] = {}

            async def send(name: str, data: bytes, scope: trio.CancelScope) -> None:
                with scope:
                    try:
                        await link.send(data)
                        results[name] = "sent"
                    except LinkClosed:
                        results[name] = "closed"
                if scope.cancelled_caught:
                    results[name] = "cancelled"
                if name == "a":
                    a_done.set()

            b_scope = trio.CancelScope()
            async with trio.open_nursery() as senders:
                senders.start_soon(send, "a", bytes(BIG), trio.CancelScope())
                await trio.testing.wait_all_tasks_blocked()
                senders.start_soon(send, "b", bytes(BIG), b_scope)
                await trio.testing.wait_all_tasks_blocked()
                senders.start_soon(send, "c", b"small", trio.CancelScope())
                await trio.testing.wait_all_tasks_blocked()
                while not a_done.is_set():  # read until A's write is through, then stop
                    await server.receive_some(1024 * 1024)
                await trio.testing.wait_all_tasks_blocked()  # B writes, and waits part-way
                b_scope.cancel()
            assert results == {"a": "sent", "b": "cancelled", "c": "closed"}
            with pytest.raises(LinkClosed):
                await link.send(b"after")
    await server.aclose()


async def _accept_one(listener: trio.SocketListener, accepted: list[trio.SocketStream]) -> None:
    """The server's side of the opening handshake, then nothing: the test reads."""
    stream = await listener.accept()
    await listener.aclose()
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        ws.receive_data(await stream.receive_some(4096))
        if any(isinstance(event, Request) for event in ws.events()):
            break
    await stream.send_all(ws.send(AcceptConnection()))
    accepted.append(stream)
