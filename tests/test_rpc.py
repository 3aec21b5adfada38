"""The RPC layer: framing, pipelining, pushes, and refusing garbage without dying."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, TextMessage
from wsproto.events import Request as WsRequest

from overlay.link import MemoryNetwork, Transport
from p2psync.errors import ConnectionLost, RpcError
from p2psync.rpc import Connection, RpcServer, ServerLimits, open_rpc
from p2psync.websocket import WebSocketTransport
from p2psync.wire import Fields, decode_frame, encode_cbor


async def echo(params: Fields, conn: Connection) -> Any:
    await trio.sleep(
        params.uint("delay_ms", maximum=10_000) / 1000 if params.has("delay_ms") else 0
    )
    return {"echo": params.text("text")}


async def fail(params: Fields, conn: Connection) -> Any:
    raise RuntimeError("boom")


async def push(params: Fields, conn: Connection) -> Any:
    for i in range(params.uint("count", maximum=10_000)):
        conn.notify("notify", {"i": i})
    return {}


METHODS = {"echo": echo, "fail": fail, "push": push}


@pytest.fixture(params=["memory", "websocket"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return MemoryNetwork() if request.param == "memory" else WebSocketTransport()


def _address(transport: Transport) -> str:
    return "mem:server" if isinstance(transport, MemoryNetwork) else "127.0.0.1:0"


async def test_pipelined_calls_complete_out_of_order(transport: Transport) -> None:
    server = RpcServer(METHODS)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, _address(transport))
        async with open_rpc(transport, url) as client:
            results: dict[int, str] = {}
            order: list[int] = []

            async def call(i: int, delay: int) -> None:
                results[i] = (await client.call("echo", {"text": str(i), "delay_ms": delay}))[
                    "echo"
                ]
                order.append(i)

            async with trio.open_nursery() as calls:
                calls.start_soon(call, 1, 200)
                calls.start_soon(call, 2, 0)
            assert results == {1: "1", 2: "2"}
            assert order == [2, 1]
        nursery.cancel_scope.cancel()


async def test_errors_have_stable_codes_and_server_survives(transport: Transport) -> None:
    server = RpcServer(METHODS)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, _address(transport))
        async with open_rpc(transport, url) as client:
            with pytest.raises(RpcError) as info:
                await client.call("nope", {})
            assert info.value.code == "bad_request"
            with pytest.raises(RpcError) as info:
                await client.call("echo", {"text": 5})
            assert info.value.code == "bad_request" and "params.text" in info.value.message
            with pytest.raises(RpcError) as info:
                await client.call("fail", {})
            assert info.value.code == "internal"
            assert await client.call("echo", {"text": "still here"}) == {"echo": "still here"}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xff\xff",
        encode_cbor([1, 2, 3]),
        encode_cbor({"id": 7, "method": "echo", "params": {}}) + b"\x00",
        bytes.fromhex("c11a514b67b0"),  # tagged datetime
        encode_cbor({"id": 9, "method": 3}),
        encode_cbor({"id": 10, "result": 1}),
    ],
)
async def test_garbage_frames_get_bad_request_and_connection_goes_on(garbage: bytes) -> None:
    network = MemoryNetwork()
    server = RpcServer(METHODS)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with network.connect("mem:server") as link:
            await link.send(garbage)
            error = decode_frame(await link.receive())
            assert error.code == "bad_request"  # type: ignore[union-attr]
            await link.send(encode_cbor({"id": 1, "method": "echo", "params": {"text": "ok"}}))
            assert decode_frame(await link.receive()).result == {"echo": "ok"}  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_pushes_arrive_and_slow_clients_are_dropped(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryNetwork()
    server = RpcServer(METHODS, ServerLimits(outbox_frames=8))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with open_rpc(network, "mem:server") as client:
            await client.call("push", {"count": 3})
            got = [(await client.notifications.receive()).params["i"] for _ in range(3)]
            assert got == [0, 1, 2]
            with pytest.raises(ConnectionLost):
                await client.call("push", {"count": 100})
            assert server.stats.dropped_slow_clients == 1
        nursery.cancel_scope.cancel()


async def test_rate_limit_and_connection_limit(autojump_clock: trio.abc.Clock) -> None:
    network = MemoryNetwork()
    server = RpcServer(METHODS, ServerLimits(requests_per_s=1, request_burst=2, max_connections=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with open_rpc(network, "mem:server") as client:
            await client.call("echo", {"text": "a"})
            await client.call("echo", {"text": "b"})
            with pytest.raises(RpcError) as info:
                await client.call("echo", {"text": "c"})
            assert info.value.code == "rate_limited"
            await trio.sleep(1.0)
            await client.call("echo", {"text": "d"})
            async with network.connect("mem:server") as second:
                assert decode_frame(await second.receive()).code == "unavailable"  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def _raw_websocket(url: str) -> tuple[trio.SocketStream, WSConnection]:
    """A hand-driven client, to send what :class:`WebSocketTransport` never would."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(WsRequest(host=f"{host}:{port}", target="/")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await stream.receive_some(65536))
    return stream, ws


async def _raw_events(stream: trio.SocketStream, ws: WSConnection) -> list[Any]:
    while True:
        events = list(ws.events())
        if events:
            return events
        data = await stream.receive_some(65536)
        ws.receive_data(data or None)


async def test_websocket_refuses_text_and_oversize_frames_but_the_server_goes_on() -> None:
    server = RpcServer(METHODS)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            server.serve, WebSocketTransport(max_message_bytes=1024), "127.0.0.1:0"
        )
        stream, ws = await _raw_websocket(url)
        request = encode_cbor({"id": 1, "method": "echo", "params": {"text": "ok"}})
        # A text frame and a good request in one write: the first is refused, the second
        # answered, both from the same read.
        await stream.send_all(ws.send(TextMessage(data="hello")) + ws.send(BytesMessage(request)))
        replies: list[Any] = []
        while len(replies) < 2:
            replies += [decode_frame(e.data) for e in await _raw_events(stream, ws)]
        assert replies[0].code == "bad_request" and replies[1].result == {"echo": "ok"}
        await stream.send_all(ws.send(BytesMessage(b"\x00" * 2048)))
        closing = await _raw_events(stream, ws)
        assert isinstance(closing[0], CloseConnection) and closing[0].code == 1009
        await stream.aclose()
        async with open_rpc(WebSocketTransport(), url) as client:
            assert await client.call("echo", {"text": "still here"}) == {"echo": "still here"}
        nursery.cancel_scope.cancel()


async def test_slow_loris_and_silent_connections_are_dropped_while_honest_clients_are_served() -> (
    None
):
    """Connections that never finish the opening handshake (silent, or trickling a request
    line) are closed after the handshake timeout; meanwhile an honest client is served."""
    server = RpcServer(METHODS)
    transport = WebSocketTransport(handshake_timeout_s=0.5)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, "127.0.0.1:0")
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        hostile = [await trio.open_tcp_stream(host, int(port)) for _ in range(40)]
        for stream in hostile[::2]:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x")  # and then nothing more
        async with open_rpc(WebSocketTransport(), url) as client:
            assert await client.call("echo", {"text": "served"}) == {"echo": "served"}
        with trio.fail_after(5):
            for stream in hostile:
                while await stream.receive_some(1024):
                    pass  # whatever the server said, it must end with EOF
                await stream.aclose()
        nursery.cancel_scope.cancel()
