"""What an exit and a server spend on onion requests: an exit holds a bounded number of
connections to servers, and a server gives each exit host a share of its onion capacity
apart from the connection's own bucket (MockClock, in-memory network)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import ConnectionLost, RpcError
from p2psync.identity import Identity
from p2psync.onion_requests import (
    ExitServers,
    OnionService,
    OnionShare,
    open_rpc_exit,
    seal_request,
)
from p2psync.rpc import Connection, RpcClient, RpcServer, ServerLimits, open_rpc
from p2psync.wire import Fields, Request

SERVERS = ["mem:a", "mem:b", "mem:c"]


async def test_an_exit_keeps_at_most_its_cap_of_connections_least_recently_used_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past the cap a new server's connection closes the least recently used idle one;
    with every connection in use the new call fails at once and the calls under way
    finish."""
    network = MemoryNetwork()
    release = trio.Event()

    async def slow(params: Fields, connection: Connection) -> dict[str, bool]:
        await release.wait()
        return {"slow": True}

    server = RpcServer({"quick": lambda params, connection: {}, "slow": slow})
    async with trio.open_nursery() as nursery:
        for address in SERVERS:
            await nursery.start(server.serve, network, address)
        servers = ExitServers(SERVERS)
        async with open_rpc_exit(network.host("exit"), servers, max_connections=2) as exit_to:
            connections = exit_to.connections
            for address in ("mem:a", "mem:b", "mem:a", "mem:c"):
                assert await connections.call(address, "quick", {}) == {}
            assert connections.held == ["mem:a", "mem:c"]
            assert server.stats.connections == 3

            answers: list[object] = []

            async def slow_call(address: str) -> None:
                answers.append(await connections.call(address, "slow", {}))

            for address in ("mem:a", "mem:c"):  # one after the other: c is used last
                nursery.start_soon(slow_call, address)
                await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ConnectionLost, match="in use"):
                await connections.call("mem:b", "quick", {})
            assert server.stats.connections == 3
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert answers == [{"slow": True}] * 2
            assert await connections.call("mem:b", "quick", {}) == {}
            assert sorted(connections.held) == ["mem:b", "mem:c"]
        nursery.cancel_scope.cancel()


async def test_a_server_shares_onion_requests_per_exit_host_apart_from_the_connection_bucket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exit's onion requests draw from its host's share, however many connections it
    opens, and not from a connection's bucket (which an exit carrying many clients would
    exhaust for all of them at once); all exits together draw from a total."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    identity = Identity.from_label("node")
    server = RpcServer(
        {"quick": lambda params, connection: {"ok": True}},
        ServerLimits(requests_per_s=0.001, request_burst=2),
        clock,
    )
    share = OnionShare(per_exit_per_s=0.001, per_exit_burst=3, total_per_s=0.001, total_burst=6)
    service = OnionService(server, identity, clock, share)

    async def onion(client: RpcClient) -> str:
        body, box = seal_request(identity.ed25519_public, Request(1, "quick", {}), clock.now_ms())
        try:
            reply = await client.call("onion", {"body": body})
        except RpcError as error:
            return error.code
        box.decrypt(Fields(reply, "onion").blob("body"))
        return "ok"

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:node")
        a, b, c = (network.host(name) for name in ("exit-a", "exit-b", "exit-c"))
        async with (
            open_rpc(a, "mem:node") as a1,
            open_rpc(a, "mem:node") as a2,
            open_rpc(b, "mem:node") as b1,
            open_rpc(c, "mem:node") as c1,
        ):
            assert [await onion(a1), await onion(a1)] == ["ok", "ok"]
            assert [await onion(a2), await onion(a2)] == ["ok", "rate_limited"]
            assert [await onion(b1) for _ in range(3)] == ["ok"] * 3
            assert await onion(c1) == "rate_limited"  # the total is spent
            # The connection's own bucket is the direct requests' alone.
            assert [await b1.call("quick", {}), await b1.call("quick", {})] == [{"ok": True}] * 2
            with pytest.raises(RpcError, match="slow down"):
                await b1.call("quick", {})
        assert service.stats.refused_rate == 2 and service.stats.answered == 6
        nursery.cancel_scope.cancel()
