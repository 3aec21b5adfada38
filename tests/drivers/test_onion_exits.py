"""What an exit and a server spend on onion requests: an exit holds a bounded number of
connections to servers, and a server gives each exit host a share of its onion capacity
apart from the connection's own bucket (MockClock, in-memory network)."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from overlay.exits import peer_host
from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import ConnectionLost, RpcError
from p2psync.identity import Identity
from p2psync.onion.addresses import ExitServers, exit_host
from p2psync.onion.exit import open_rpc_exit
from p2psync.onion.sealing import seal_request
from p2psync.onion.service import ListedExits, OnionService, OnionShare
from p2psync.rpc import Connection, RpcClient, RpcServer, ServerLimits, open_rpc
from p2psync.swarm.listing import RelayInfo, Snapshot
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


async def onion_quick(identity: Identity, clock: Clock, client: RpcClient) -> str:
    """One onion request for ``quick`` to the server of ``identity``: "ok" or the error."""
    body, box = seal_request(identity.ed25519_public, Request(1, "quick", {}), clock.now_ms())
    try:
        reply = await client.call("onion", {"body": body})
    except RpcError as error:
        return error.code
    box.decrypt(Fields(reply, "onion").blob("body"))
    return "ok"


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
    onion = partial(onion_quick, identity, clock)

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


async def test_an_onion_request_doing_the_work_of_several_takes_as_many_of_the_exits_share(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request with a cost (a ``store_batch``) inside an onion request takes that many
    of its exit's share, as it would of a direct connection's bucket: a share of 5 lets
    one of 3 through, then refuses another of 3 (one token each taken before it could be
    read) and lets the last token's request through."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    identity = Identity.from_label("node")
    server = RpcServer(
        {"many": lambda params, connection: {"ok": True}},
        clock=clock,
        costs={"many": lambda params: int(params["count"])},
    )
    share = OnionShare(per_exit_per_s=0.001, per_exit_burst=5, total_per_s=0.001, total_burst=50)
    service = OnionService(server, identity, clock, share)

    async def onion_many(client: RpcClient, count: int) -> str:
        request = Request(1, "many", {"count": count})
        body, _ = seal_request(identity.ed25519_public, request, clock.now_ms())
        try:
            await client.call("onion", {"body": body})
        except RpcError as error:
            return error.code
        return "ok"

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:node")
        async with open_rpc(network.host("exit"), "mem:node") as exit_link:
            assert await onion_many(exit_link, 3) == "ok"
            assert await onion_many(exit_link, 3) == "rate_limited"
            assert await onion_many(exit_link, 1) == "ok"
        assert service.stats.refused_rate == 1 and service.stats.answered == 2
        nursery.cancel_scope.cancel()


async def test_only_the_listed_relays_hosts_draw_on_the_exits_share(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Anyone may call ``onion``, but callers on hosts no listed relay has draw on a
    small share apart: four hosts of an attacker's own spend that, and the listed exit's
    clients are still answered (with one share for every caller, the four took the
    total and the exit was refused)."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    identity = Identity.from_label("node")
    server = RpcServer({"quick": lambda params, connection: {"ok": True}}, clock=clock)
    share = OnionShare(
        per_exit_per_s=0.001,
        per_exit_burst=3,
        total_per_s=0.001,
        total_burst=3,
        unlisted_per_s=0.001,
        unlisted_burst=2,
        unlisted_total_per_s=0.001,
        unlisted_total_burst=3,
    )
    service = OnionService(server, identity, clock, share, exits=lambda: frozenset({"exit"}))
    onion = partial(onion_quick, identity, clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, network, "mem:node")
        async with (
            open_rpc(network.host("exit"), "mem:node") as listed,
            open_rpc(network.host("x1"), "mem:node") as x1,
            open_rpc(network.host("x2"), "mem:node") as x2,
            open_rpc(network.host("x3"), "mem:node") as x3,
        ):
            assert [await onion(x1) for _ in range(3)] == ["ok", "ok", "rate_limited"]
            assert [await onion(x2), await onion(x3)] == ["ok", "rate_limited"]
            assert [await onion(listed) for _ in range(3)] == ["ok"] * 3
        assert service.stats.unlisted == 5 and service.stats.answered == 6
        nursery.cancel_scope.cancel()


def test_a_relay_is_listed_by_the_host_it_calls_from() -> None:
    assert exit_host("mem:relay3") == peer_host("relay3")
    assert exit_host("10.77.0.5:4100#" + "ab" * 32) == peer_host("10.77.0.5:52311")
    assert exit_host("[2001:db8::1]:4100") == peer_host("[2001:db8::2]:40000")


async def test_a_server_reads_the_listed_relays_and_retries_a_failed_read_soon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The file server's view of the listing: a registry not up yet is read again after
    1 s, 2 s, … (not a whole refresh later), and the relays it lists are then the exits."""
    reads: list[float] = []

    class Registry:
        async def fetch(self) -> Snapshot:
            reads.append(trio.current_time())
            if len(reads) < 3:
                raise ConnectionLost("registry not up yet")
            return Snapshot(relays=(RelayInfo("ab" * 32, "10.77.0.5:4100"),))

    exits = ListedExits()
    assert exits() == frozenset()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exits.read, Registry(), Clock(TEST_EPOCH_MS), 60.0)
        await trio.sleep(3.5)
        assert exits() == {"10.77.0.5"}
        assert [round(t - reads[0], 1) for t in reads] == [0.0, 1.0, 3.0]
        nursery.cancel_scope.cancel()
