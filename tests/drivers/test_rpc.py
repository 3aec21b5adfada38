"""The RPC layer: framing, pipelining, pushes, and refusing garbage without dying."""

from __future__ import annotations

from contextlib import AsyncExitStack, suppress
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, TextMessage
from wsproto.events import Request as WsRequest

from overlay.handshakes import PendingHandshakes
from overlay.link import Link, LinkClosed, MemoryNetwork, Transport
from p2psync.errors import ConnectionLost, RpcError
from p2psync.rpc import Connection, Later, Outbox, RpcServer, ServerLimits, open_rpc
from p2psync.websocket import WebSocketTransport
from p2psync.wire import (
    MAX_FRAME_BYTES,
    ErrorReply,
    Fields,
    Reply,
    Request,
    decode_frame,
    encode_cbor,
    encode_frame,
)


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


async def big(params: Fields, conn: Connection) -> Any:
    return {"data": b"x" * params.uint("size", maximum=1 << 20)}


def big_inline(params: Fields, conn: Connection) -> Any:
    return {"data": b"x" * params.uint("size", maximum=1 << 20)}


METHODS = {"echo": echo, "fail": fail, "push": push, "big": big, "big_inline": big_inline}


@pytest.fixture(params=["memory", "websocket"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return MemoryNetwork() if request.param == "memory" else WebSocketTransport(plain=True)


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


@pytest.mark.parametrize("method", ["big", "big_inline"])
async def test_a_reply_larger_than_a_frame_is_refused_and_the_link_goes_on(
    transport: Transport, method: str
) -> None:
    """A handler's result past the frame limit, a task's or an inline one's, is answered
    ``internal``: sent, it closed the client's link (WebSocket 1009), and every other
    call on it with it."""
    server = RpcServer(METHODS)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, _address(transport))
        async with open_rpc(transport, url) as client:
            assert len((await client.call(method, {"size": 1000}))["data"]) == 1000
            with pytest.raises(RpcError) as info:
                await client.call(method, {"size": ServerLimits().max_frame_bytes})
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


async def test_one_host_holds_no_more_than_its_share_of_connections(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Past ``max_connections_per_host`` a host's next connection is turned away at once
    while another host is served, and a slot it gives back is its own again (a review
    held 508 of a node's 512 slots from one machine and locked most clients out)."""
    network = MemoryNetwork()
    server = RpcServer(METHODS, ServerLimits(max_connections=8, max_connections_per_host=2))
    crowd, other = network.host("crowd"), network.host("other")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with open_rpc(crowd, "mem:server") as first, open_rpc(crowd, "mem:server") as _:
            async with crowd.connect("mem:server") as third:
                with trio.fail_after(5):  # turned away at once, not served
                    refusal = decode_frame(await third.receive())
                assert isinstance(refusal, ErrorReply) and refusal.code == "unavailable"
                assert "your host" in refusal.message
            async with open_rpc(other, "mem:server") as client:
                assert await client.call("echo", {"text": "served"}) == {"echo": "served"}
            await first.call("echo", {"text": "still"})
        async with open_rpc(crowd, "mem:server") as again:
            assert await again.call("echo", {"text": "back"}) == {"echo": "back"}
        nursery.cancel_scope.cancel()


async def test_a_request_costing_several_tokens_takes_them_all(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A method given a cost (a batch doing the work of several requests) takes that many
    tokens from its connection's bucket: the batches a client sends are limited as the
    requests they stand for would be."""
    network = MemoryNetwork()
    server = RpcServer(
        METHODS,
        ServerLimits(requests_per_s=1, request_burst=5),
        costs={"echo": lambda params: len(params["text"])},
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with open_rpc(network, "mem:server") as client:
            await client.call("echo", {"text": "abc"})
            with pytest.raises(RpcError) as info:
                await client.call("echo", {"text": "abc"})  # 3 tokens; 2 are left
            assert info.value.code == "rate_limited"
            await client.call("echo", {"text": "ab"})
            await trio.sleep(3.0)
            await client.call("echo", {"text": "abc"})
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
        async with open_rpc(WebSocketTransport(plain=True), url) as client:
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
        async with open_rpc(WebSocketTransport(plain=True), url) as client:
            assert await client.call("echo", {"text": "served"}) == {"echo": "served"}
        with trio.fail_after(5):
            for stream in hostile:
                while await stream.receive_some(1024):
                    pass  # whatever the server said, it must end with EOF
                await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_flood_of_unfinished_handshakes_holds_a_bounded_number_of_sockets() -> None:
    """Sockets still in the opening handshake are not links yet, so ``max_connections``
    does not count them: past ``max_pending_handshakes`` the oldest is dropped at once
    (not after the handshake timeout), and an honest client still gets in."""
    server = RpcServer(METHODS)
    transport = WebSocketTransport(handshake_timeout_s=60, max_pending_handshakes=8)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, "127.0.0.1:0")
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        hostile = [await trio.open_tcp_stream(host, int(port)) for _ in range(40)]
        with trio.fail_after(5):  # far less than the handshake timeout
            for stream in hostile[:32]:
                assert await stream.receive_some(1024) == b""
            async with open_rpc(WebSocketTransport(plain=True), url) as client:
                assert await client.call("echo", {"text": "served"}) == {"echo": "served"}
        for stream in hostile:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_pending_handshakes_cancel_the_oldest_slot_when_full() -> None:
    pending = PendingHandshakes(limit=2)
    with pending.slot() as first, pending.slot() as second:
        assert len(pending) == 2
        with pending.slot() as third:
            assert first.cancel_called and not second.cancel_called
            assert not third.cancel_called and len(pending) == 2
        assert pending.dropped == 1
    assert len(pending) == 0
    with pytest.raises(ValueError):
        PendingHandshakes(limit=0)


async def test_more_frames_in_one_read_than_in_flight_slots_are_all_answered() -> None:
    """The read loop takes at most ``max_in_flight`` frames per turn; the frame after
    those must wait for the next turn (it was once taken and dropped, so every
    ``max_in_flight + 1``-th pipelined request of a burst never got a reply)."""
    network = MemoryNetwork()
    server = RpcServer(METHODS, ServerLimits(max_in_flight=4))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with network.connect("mem:server") as link:
            assert link.supports_send_nowait
            for rid in range(50):  # all queued before the server reads any
                link.send_nowait(
                    encode_cbor({"id": rid, "method": "echo", "params": {"text": "x"}})
                )
            with trio.fail_after(5):
                ids = {decode_frame(await link.receive()).id for _ in range(50)}  # type: ignore[union-attr]
            assert ids == set(range(50))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("answer", ["task", "later"])
async def test_a_client_that_never_reads_its_replies_stops_being_read(answer: str) -> None:
    """Each request keeps its in-flight slot until its reply is in the bounded outbox, so
    a client that pipelines without reading pins a bounded number of replies and its own
    sends back up. (Releasing the slot before queueing the reply, as this server once
    did, handled all 3000 requests here: one parked task and reply per request.) The same
    whether a handler's task answers or a :class:`Later` does: a Later's reply that finds
    no room waits for it holding its slot."""
    network = MemoryNetwork()
    handled = 0

    async def count(params: Fields, conn: Connection) -> Any:
        nonlocal handled
        handled += 1
        await trio.lowlevel.checkpoint()
        return {"n": handled}

    def settle_at_once(params: Fields, conn: Connection) -> Later:
        nonlocal handled
        handled += 1
        later = Later()
        later.resolve({"n": handled})
        return later

    limits = ServerLimits(
        max_in_flight=4, outbox_frames=8, requests_per_s=1e9, request_burst=1_000_000
    )
    server = RpcServer({"count": count if answer == "task" else settle_at_once}, limits)
    requests = 3000
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with network.connect("mem:server") as link:

            async def pipeline() -> None:
                for rid in range(requests):
                    await link.send(encode_cbor({"id": rid, "method": "count", "params": {}}))

            nursery.start_soon(pipeline)
            await trio.testing.wait_all_tasks_blocked()
            # Unread replies: the link's queue towards us (256), the outbox including its
            # blocked write (8), one waiting reply per in-flight slot (4), and for a Later
            # the request read to find the slots taken (1).
            read_to_find_slots_taken = 0 if answer == "task" else 1
            bound = 256 + limits.outbox_frames + limits.max_in_flight + read_to_find_slots_taken
            assert 0 < handled <= bound
            with trio.fail_after(10):
                ids = {decode_frame(await link.receive()).id for _ in range(requests)}  # type: ignore[union-attr]
            assert ids == set(range(requests)) and handled == requests
        nursery.cancel_scope.cancel()


async def test_a_later_is_answered_when_resolved_and_fails_as_a_raise_would(
    transport: Transport,
) -> None:
    """A plain-function handler may answer with a :class:`Later` that another task settles:
    its result, or the error reply its exception maps to, as if the handler had returned
    or raised it; the same through :meth:`RpcServer.answer` (onion requests)."""
    laters: list[Later] = []

    def defer(params: Fields, conn: Connection) -> Later:
        laters.append(Later())
        return laters[-1]

    server = RpcServer({"defer": defer})
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve, transport, _address(transport))
        async with open_rpc(transport, url) as client:
            outcomes: dict[int, Any] = {}

            async def call(i: int) -> None:
                try:
                    outcomes[i] = await client.call("defer", {})
                except RpcError as exc:
                    outcomes[i] = exc.code

            async with trio.open_nursery() as calls:
                for i in range(3):
                    calls.start_soon(call, i)
                    await trio.testing.wait_all_tasks_blocked()
                assert outcomes == {} and len(laters) == 3
                laters[2].resolve({"n": 2})
                laters[0].fail(RpcError("too_large", "no room"))
                laters[1].fail(RuntimeError("boom"))
                laters[1].resolve({"n": 1})  # the first settling counts
            assert outcomes == {0: "too_large", 1: "internal", 2: {"n": 2}}
        answered = trio.Event()

        async def answer() -> None:
            reply = await server.answer(
                Request(7, "defer", {}), "exit-relay", max_bytes=MAX_FRAME_BYTES
            )
            assert decode_frame(reply) == decode_frame(encode_frame(Reply(7, {"n": 7})))
            answered.set()

        nursery.start_soon(answer)
        await trio.testing.wait_all_tasks_blocked()
        laters[-1].resolve({"n": 7})
        with trio.fail_after(5):
            await answered.wait()
        nursery.cancel_scope.cancel()


async def test_unsettled_laters_hold_their_in_flight_slots() -> None:
    """A request answered with a :class:`Later` keeps its slot until the reply is in the
    outbox: with every slot held, the server reads no more of that connection (one more
    request is read, to find it is one). Without the slot, a client could make a node
    hold a waiting store for every request it sent."""
    network = MemoryNetwork()
    laters: list[Later] = []

    def defer(params: Fields, conn: Connection) -> Later:
        laters.append(Later())
        return laters[-1]

    limits = ServerLimits(max_in_flight=3, requests_per_s=1e9, request_burst=1_000_000)
    server = RpcServer({"defer": defer}, limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with network.connect("mem:server") as link:
            for rid in range(20):
                await link.send(encode_cbor({"id": rid, "method": "defer", "params": {}}))
            await trio.testing.wait_all_tasks_blocked()
            assert len(laters) == limits.max_in_flight + 1
            answered: set[int] = set()
            with trio.fail_after(5):
                while len(answered) < 20:
                    for later in laters:
                        later.resolve({})
                    reply = decode_frame(await link.receive())
                    assert isinstance(reply, Reply)
                    answered.add(reply.id)
            assert answered == set(range(20)) and len(laters) == 20
        nursery.cancel_scope.cancel()


async def test_outbox_bounds_bytes_lets_pushes_overshoot_once_and_frees_room_when_sent() -> None:
    outbox = Outbox(max_frames=100, max_bytes=1000)
    await outbox.put(b"r" * 1500)  # an idle outbox takes any one frame
    queued = trio.Event()

    async def reply() -> None:
        await outbox.put(b"x" * 10)
        queued.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply)
        await trio.testing.wait_all_tasks_blocked()
        assert not queued.is_set() and outbox.pending_bytes == 1500
        assert outbox.offer(b"p" * 400)  # a push may use up to twice the budget
        assert not outbox.offer(b"p" * 200)
        batch = await outbox.take()
        assert batch == [b"r" * 1500, b"p" * 400]
        await trio.testing.wait_all_tasks_blocked()
        assert not queued.is_set(), "bytes in a write still count until it is done"
        outbox.sent(batch)
    assert queued.is_set() and outbox.pending_bytes == 10
    assert await outbox.take() == [b"x" * 10]


async def test_many_clients_that_never_read_cannot_add_up_past_the_reply_memory() -> None:
    """Each non-reading client is bounded by its outbox and in-flight slots; together
    they are bounded by the server's reply memory: past it, the connection holding the
    most is dropped. Once they are gone, nothing is counted any more."""
    network = MemoryNetwork()

    async def page(params: Fields, conn: Connection) -> Any:
        await trio.lowlevel.checkpoint()
        return {"data": bytes(8_000)}

    limits = ServerLimits(
        max_in_flight=4,
        outbox_bytes=10_000,
        reply_memory_bytes=120_000,
        requests_per_s=1e9,
        request_burst=1_000_000,
    )
    server = RpcServer({"page": page}, limits)
    # One connection at most: its outbox and a frame over it, and a reply per slot.
    per_connection = limits.outbox_bytes + 8_100 + limits.max_in_flight * 8_100
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:server")
        async with AsyncExitStack() as stack:
            for _ in range(6):
                link = await stack.enter_async_context(network.connect("mem:server"))

                async def pipeline(link: Link = link) -> None:
                    with suppress(LinkClosed):
                        for rid in range(400):
                            await link.send(
                                encode_cbor({"id": rid, "method": "page", "params": {}})
                            )

                nursery.start_soon(pipeline)
            await trio.testing.wait_all_tasks_blocked()
            assert 0 < server.memory.used <= limits.reply_memory_bytes + per_connection
            assert server.stats.dropped_slow_clients >= 6 - (
                limits.reply_memory_bytes // per_connection + 1
            )
        await trio.testing.wait_all_tasks_blocked()  # the server sees every client go
        assert server.memory.used == 0 and server.open_connections == 0
        nursery.cancel_scope.cancel()
