"""RPC over ``wss://``: TLS 1.3 with the server pinned to its announced key.

Real loopback sockets on Trio's real clock (a MockClock's autojump would jump past the
handshake deadline while the kernel moves the bytes)."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from benchmarks.link_tap import LinkTap, plaintext_keys
from overlay.addresses import split_host_port
from p2psync.errors import ConnectionLost
from p2psync.identity import Identity
from p2psync.rpc import Connection, RpcServer, ServerLimits, open_rpc, open_rpc_pool
from p2psync.websocket import WebSocketTransport
from p2psync.wire import Fields

NODE = Identity.from_label("tls/node")
IMPOSTOR = Identity.from_label("tls/impostor")
ACCOUNT = Identity.from_label("tls/account")


async def store(params: Fields, conn: Connection) -> Any:
    return {"stored": params.text("pubkey", max_len=66)}


METHODS = {"store": store}


def store_params() -> dict[str, Any]:
    """What a store carries that a link observer must not read: the account's id and
    public key, and a signature by it."""
    return {
        "pubkey": ACCOUNT.session_id,
        "key": ACCOUNT.ed25519_public,
        "signature": ACCOUNT.sign(b"store"),
    }


async def test_client_pinning_the_announced_key_talks(nursery: trio.Nursery) -> None:
    url = await nursery.start(
        RpcServer(METHODS).serve, WebSocketTransport(identity=NODE), "127.0.0.1:0"
    )
    assert url.endswith("/" + NODE.ed25519_public.hex())
    async with open_rpc(WebSocketTransport(), url) as client:
        assert await client.call("store", store_params()) == {"stored": ACCOUNT.session_id}


async def test_server_presenting_another_key_is_refused(nursery: trio.Nursery) -> None:
    url = await nursery.start(
        RpcServer(METHODS).serve, WebSocketTransport(identity=IMPOSTOR), "127.0.0.1:0"
    )
    pinned = url.rsplit("/", 1)[0] + "/" + NODE.ed25519_public.hex()
    with pytest.raises(OSError, match="expected " + NODE.ed25519_public.hex()):
        async with open_rpc(WebSocketTransport(), pinned):
            pytest.fail("connected to a server holding another key")


@pytest.mark.parametrize("key", ["", "ab" * 31, "zz" * 32])
async def test_wss_urls_without_a_whole_key_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="pinned"):
        async with open_rpc(WebSocketTransport(), f"wss://127.0.0.1:1/{key}"):
            pytest.fail("connected without a pin")


async def test_a_tls_client_refuses_a_url_that_names_no_key(nursery: trio.Nursery) -> None:
    """A ``ws://`` url on a network whose links are TLS (from a listing entry or a
    setting) would be a plaintext link: refused before any socket opens. Only the
    explicit choice of plaintext (``plain``) dials it."""
    url = await nursery.start(
        RpcServer(METHODS).serve, WebSocketTransport(plain=True), "127.0.0.1:0"
    )
    assert url.startswith("ws://")
    with pytest.raises(OSError, match="names no key"):
        async with open_rpc(WebSocketTransport(), url):
            pytest.fail("a TLS client spoke plaintext")
    async with open_rpc(WebSocketTransport(plain=True), url) as client:
        assert await client.call("store", store_params()) == {"stored": ACCOUNT.session_id}


async def tapped_store(nursery: trio.Nursery, *, encrypted: bool) -> bytes:
    transport = WebSocketTransport(identity=NODE if encrypted else None)
    url = await nursery.start(RpcServer(METHODS).serve, transport, "127.0.0.1:0")
    scheme, rest = url.split("://", 1)
    authority, _, key = rest.partition("/")
    tap = LinkTap(*split_host_port(authority))
    port = await nursery.start(tap.serve)
    via = f"{scheme}://127.0.0.1:{port}" + (f"/{key}" if key else "")
    async with open_rpc(WebSocketTransport(plain=not encrypted), via) as client:
        await client.call("store", store_params())
    return tap.readable


async def test_tap_reads_no_account_keys_on_a_tls_store(nursery: trio.Nursery) -> None:
    captured = await tapped_store(nursery, encrypted=True)
    assert (
        plaintext_keys(captured, [ACCOUNT.ed25519_public, bytes.fromhex(ACCOUNT.session_id)]) == 0
    )
    assert ACCOUNT.session_id.encode() not in captured
    assert ACCOUNT.sign(b"store") not in captured


async def test_tap_reads_account_keys_on_a_plaintext_store(nursery: trio.Nursery) -> None:
    """The control: without TLS the same tap reads them, so the check above can fail."""
    captured = await tapped_store(nursery, encrypted=False)
    assert (
        plaintext_keys(captured, [ACCOUNT.ed25519_public, bytes.fromhex(ACCOUNT.session_id)]) == 2
    )
    assert ACCOUNT.sign(b"store") in captured


#: Enough frames that the socket buffers between client and server (several MiB on
#: loopback) fill and a write waits part-way.
STUCK_WRITERS = 400
STUCK_PAD = 100_000
#: A bound on a loopback call, not a wait for luck: without the fix this call went on
#: the stuck connection and never came back.
ANSWER_WITHIN_S = 10


@pytest.mark.parametrize("encrypted", [True, False], ids=["wss", "ws"])
async def test_a_call_cancelled_part_way_through_its_write_costs_only_that_connection(
    nursery: trio.Nursery, encrypted: bool
) -> None:
    """Calls cancelled while their frames are half written (the server has stopped
    reading) leave bytes on that connection no peer can parse after, so the pool's next
    call must go on a new one. It went on the old one: on TLS every later call failed
    with ``ConnectionLost`` for as long as the pool lived."""
    release = trio.Event()

    async def hold(params: Fields, conn: Connection) -> Any:
        await release.wait()
        return {}

    async def echo(params: Fields, conn: Connection) -> Any:
        return {}

    server = RpcServer({"hold": hold, "echo": echo}, limits=ServerLimits(max_in_flight=1))
    serving = WebSocketTransport(identity=NODE if encrypted else None)
    url = await nursery.start(server.serve, serving, "127.0.0.1:0")
    async with open_rpc_pool(WebSocketTransport(plain=not encrypted)) as pool:

        async def held() -> None:
            with suppress(ConnectionLost):
                await pool.call(url, "hold", {})

        nursery.start_soon(held)
        await wait_all_tasks_blocked()  # the server's one slot is taken: it reads no more
        async with trio.open_nursery() as writers:
            for _ in range(STUCK_WRITERS):
                writers.start_soon(pool.call, url, "echo", {"pad": bytes(STUCK_PAD)})
            await wait_all_tasks_blocked()  # what fits is written; the rest waits
            writers.cancel_scope.cancel()
        await wait_all_tasks_blocked()
        # The old connection is still stuck (its server reads nothing until ``hold`` ends),
        # and nothing arrives on it that would show the pool it broke.
        with trio.fail_after(ANSWER_WITHIN_S):
            assert await pool.call(url, "echo", {}) == {}
        release.set()
