"""Onion requests end to end: a swarm client on an overlay endpoint stores and reads back
through exit relays, on the in-memory network under virtual time."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
import trio
import trio.testing

from overlay.constants import EXIT_UNANSWERED_TO_RETIRE
from overlay.endpoint import Endpoint, open_endpoint
from overlay.exits import ExitFailed
from overlay.link import MemoryNetwork
from overlay.relay_core import RelayCore
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import DeviceConfig, DeviceError, open_device
from p2psync.device.access import NetworkAccess, NetworkFileError
from p2psync.errors import ConnectionLost, RpcError
from p2psync.fileserver.client import FileServerClient
from p2psync.fileserver.server import FileServer
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, open_local_network
from p2psync.onion.directory import (
    KEYS_MISS_REREAD_MS,
    LISTING_FRESH_S,
    DirectoryKeys,
    OnionDirectory,
)
from p2psync.onion.pool import ONION_ATTEMPT_TIMEOUT_S, ONION_ATTEMPTS, OnionRpcPool
from p2psync.onion.sealing import ONION_FRESHNESS_MS, ONION_REQUEST_ID, seal_request
from p2psync.onion.service import OnionService, room_for_inner_reply
from p2psync.opengroup.client import OpenGroupClient
from p2psync.opengroup.server import OpenGroupServer
from p2psync.rpc import Connection, RpcClient, RpcPool, RpcServer, open_rpc
from p2psync.services import AnnouncedRelay
from p2psync.swarm.admission import Ledger
from p2psync.swarm.client import SwarmClient
from p2psync.swarm.listing import ANNOUNCEMENT_TTL_MS, Snapshot, sign_announcement
from p2psync.swarm.messages import StoreRequest
from p2psync.wire import MAX_FRAME_BYTES, Fields, Reply, Request, encode_frame

DEVICE_HOST = "alice-phone"
RELAYS = 5


@dataclass
class Onion:
    network: LocalNetwork
    services: list[OnionService]
    endpoint: Endpoint
    pool: OnionRpcPool
    swarm: SwarmClient


@dataclass
class Seen:
    """What the service nodes were handed by onion: who connected, and the sealed bodies
    (exactly what the exit relay had of each request)."""

    peers: list[str] = field(default_factory=list)
    #: (the node's url, the sealed body) of every onion request.
    bodies: list[tuple[str, bytes]] = field(default_factory=list)
    #: (method, peer) of every request a node answered, onion or inner or direct.
    request_peers: list[tuple[str, str]] = field(default_factory=list)

    def client_peers(self) -> set[str]:
        """Who the nodes saw the client calls come from (not their calls to each other)."""
        return {p for method, p in self.request_peers if method in ("onion", "store", "retrieve")}


def _watch(network: LocalNetwork, seen: Seen) -> list[OnionService]:
    """Record what every node is handed; its own ``onion`` service, as it serves it."""
    services = []
    for node in network.running_nodes():
        services.append(node.onion)
        for name, handler in list(node.rpc.methods.items()):
            node.rpc.add_method(name, _recording(name, handler, seen, node.url))
    return services


def _recording(name: str, handler: Any, seen: Seen, url: str) -> Any:
    async def record(params: Fields, connection: Connection) -> Any:
        seen.request_peers.append((name, connection.peer))
        if name == "onion":
            seen.peers.append(connection.peer)
            seen.bodies.append((url, params.blob("body")))
        result = handler(params, connection)
        return await result if inspect.isawaitable(result) else result

    return record


@asynccontextmanager
async def _onion_network(seen: Seen, exit_servers: tuple[str, ...] = ()) -> AsyncIterator[Onion]:
    """Exits that reach the listed nodes and ``exit_servers``."""
    async with open_local_network(3, relays=0, clock=Clock(TEST_EPOCH_MS)) as network:
        services = _watch(network, seen)
        transport = network.transport
        assert isinstance(transport, MemoryNetwork)
        keys = [Identity.from_label(f"relay/{i}") for i in range(RELAYS)]
        relays = [
            AnnouncedRelay(
                transport,
                identity,
                network.clock,
                exit_transport=transport.host(f"relay{i}"),
                exit_servers=exit_servers,
                registration=network.ledger.register(identity.ed25519_public.hex()).encode(),
            )
            for i, identity in enumerate(keys)
        ]
        async with trio.open_nursery() as nursery:
            for i, relay in enumerate(relays):
                await nursery.start(relay.serve, f"mem:relay{i}", network.directory())
            for relay in relays:
                await relay.refresh()
            await network.refresh_all()  # the nodes see the relays listed: their exits
            contacts = await network.access().relay_contacts()
            async with open_endpoint(
                b"d" * 32, transport, contacts, clock=network.clock, seed=7, local_name=DEVICE_HOST
            ) as endpoint:
                await endpoint.wait_ready(2)
                pool = OnionRpcPool(
                    endpoint,
                    DirectoryKeys(network.directory(), network.clock),
                    network.clock,
                )
                swarm = SwarmClient(
                    cast(RpcPool, pool), network.directory(), network.clock, random.Random(1)
                )
                yield Onion(network, services, endpoint, pool, swarm)
            nursery.cancel_scope.cancel()


async def test_store_and_retrieve_through_onion_paths(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A swarm client on an onion pool stores and reads back; every request any node
    answered came from an exit relay's host, never from the device's; and what the exits
    handed over holds neither the account's keys nor the message."""
    seen = Seen()
    owner = Identity.from_label("alice")
    secret = b"a message only the swarm should hold, sealed by its sender in real life"
    async with _onion_network(seen) as onion:
        digest, _ = await onion.swarm.store(owner.session_id, 0, secret)
        messages, _, _ = await onion.swarm.retrieve(owner, 0, None)
        assert [m.hash for m in messages] == [digest]
        assert [m.data for m in messages] == [secret]
    relay_hosts = {f"relay{i}" for i in range(RELAYS)}
    assert len(seen.peers) >= 2
    assert seen.client_peers() <= relay_hosts, seen.client_peers()
    account = [
        owner.session_id.encode(),
        owner.x25519_public,
        owner.ed25519_public,
        owner.x25519_public.hex().encode(),
    ]
    for _, body in seen.bodies:
        assert secret not in body
        assert not any(key in body for key in account)


async def test_replayed_stale_and_garbage_onion_bodies_are_refused_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exit (or anyone who saw a sealed body) cannot have a request run twice, an old
    one run late, or anything but a sealed request run at all."""
    seen = Seen()
    owner = Identity.from_label("bob")
    async with _onion_network(seen) as onion:
        await onion.swarm.store(owner.session_id, 0, b"once")
        url, body = seen.bodies[0]
        nodes = onion.network.running_nodes()
        node = next(n for n in nodes if n.url == url)
        service = onion.services[nodes.index(node)]
        async with open_rpc(onion.network.transport, node.url) as direct:
            with pytest.raises(RpcError, match="replayed"):
                await direct.call("onion", {"body": body})
            request = Request(
                1,
                "store",
                StoreRequest(
                    owner.session_id, 0, 60_000, onion.network.clock.now_ms(), b"late"
                ).to_wire(),
            )
            stale, _ = seal_request(
                node.identity.ed25519_public,
                request,
                onion.network.clock.now_ms() - ONION_FRESHNESS_MS - 1,
            )
            with pytest.raises(RpcError, match="stale"):
                await direct.call("onion", {"body": stale})
            for garbage in (b"", body[:40], body[:-1] + bytes([body[-1] ^ 1])):
                with pytest.raises(RpcError, match="onion request"):
                    await direct.call("onion", {"body": garbage})
            nested, _ = seal_request(
                node.identity.ed25519_public,
                Request(2, "onion", {"body": body}),
                onion.network.clock.now_ms(),
            )
            with pytest.raises(RpcError, match="another method"):
                await direct.call("onion", {"body": nested})
    assert service.stats.refused_replayed == 1
    assert service.stats.refused_stale == 1
    assert service.stats.refused_malformed == 4


async def test_an_exit_reaches_listed_servers_only_and_refuses_the_rest_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An onion request naming anything but a listed node or a server the exit was given
    (here a service beside the network, and the registry) is refused before anything
    connects to it, and at once: the owner need not wait out a timeout to try elsewhere.
    Listed nodes are reached through the same path as before."""
    seen = Seen()
    owner = Identity.from_label("frank")
    async with _onion_network(seen) as onion, trio.open_nursery() as nursery:
        transport = onion.network.transport
        private = RpcServer({"onion": lambda params, connection: {"body": b"secret"}})
        await nursery.start(private.serve, transport, "mem:private")
        path = await onion.endpoint.exit_path()
        for address in ("mem:private", onion.network.registry_url):
            asked = trio.current_time()
            with pytest.raises(ExitFailed):
                await onion.endpoint.exit_request(path, address, b"sealed to nobody")
            assert trio.current_time() - asked < 1.0
        assert private.stats.connections == 0
        digest, _ = await onion.swarm.store(owner.session_id, 0, b"to a listed node")
        messages, _, _ = await onion.swarm.retrieve(owner, 0, None)
        assert [m.hash for m in messages] == [digest]
        nursery.cancel_scope.cancel()


async def test_the_largest_reply_an_onion_request_can_carry_comes_back_and_a_larger_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An inner reply of :func:`room_for_inner_reply` bytes comes back through the exit
    whole; a larger one is answered ``internal`` at once, as a direct reply past a frame
    is (before, one that fitted a frame passed the inner check, its sealed outer reply did
    not fit, and the client tried every path in turn, the server answering each time, for
    nothing)."""
    room = room_for_inner_reply(MAX_FRAME_BYTES)

    def reply_of(size: int) -> dict[str, bytes]:
        padding = size - len(encode_frame(Reply(ONION_REQUEST_ID, {"blob": b""})))
        result = {"blob": bytes(padding)}
        while len(encode_frame(Reply(ONION_REQUEST_ID, result))) > size:  # the length's bytes
            result = {"blob": result["blob"][:-1]}
        assert len(encode_frame(Reply(ONION_REQUEST_ID, result))) == size
        return result

    async with _onion_network(Seen()) as onion:
        node = onion.network.running_nodes()[0]
        node.rpc.add_method("sized", lambda params, conn: reply_of(params.uint("size")))
        fits = await onion.pool.call(node.url, "sized", {"size": room})
        assert fits == reply_of(room)
        for size in (room + 1, MAX_FRAME_BYTES):  # MAX_FRAME_BYTES: a direct reply's largest
            with pytest.raises(RpcError) as refused:
                await onion.pool.call(node.url, "sized", {"size": size})
            assert refused.value.code == "internal"
        assert onion.pool.failed_attempts == 0


async def test_a_request_every_exit_refuses_fails_without_waiting_for_a_new_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request refused by the exit of every path it tried goes again on one of those
    paths (no path is built while they work) and fails within a second, not after an
    attempt's whole timeout, which would hold up every read queued behind it."""
    async with _onion_network(Seen()) as onion:
        assert len(onion.endpoint.paths) < ONION_ATTEMPTS  # the pool runs out of paths
        server = Identity.from_label("nowhere").ed25519_public

        async def key_of(address: str) -> bytes:
            await trio.lowlevel.checkpoint()
            return server

        pool = OnionRpcPool(onion.endpoint, key_of, onion.network.clock)
        asked = trio.current_time()
        with pytest.raises(ConnectionLost, match="no onion path"):
            await pool.call("mem:unlisted", "list", {})
        assert trio.current_time() - asked < 1.0
        assert pool.failed_attempts == ONION_ATTEMPTS


async def test_a_dead_exit_makes_the_pool_retry_on_another_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the exit of one path gone, requests that went that way time out and go again
    on the other path; every store and retrieve still succeeds."""
    seen = Seen()
    owner = Identity.from_label("carol")
    async with _onion_network(seen) as onion:
        transport = onion.network.transport
        assert isinstance(transport, MemoryNetwork)
        dead = onion.endpoint.paths[0].terminal.address
        transport.set_down(dead)
        for n in range(4):
            digest, _ = await onion.swarm.store(owner.session_id, 0, b"m%d" % n)
            messages, _, _ = await onion.swarm.retrieve(owner, 0, None)
            assert digest in {m.hash for m in messages}
        assert onion.pool.failed_attempts >= 1
    assert dead.removeprefix("mem:") not in seen.peers


def _answer_lost_once(handler: Any, lost: list[str]) -> Any:
    """The node's ``onion`` method, except that the first request it runs never gets its
    answer back: the node did the work, the client cannot know."""

    async def serve(params: Fields, connection: Connection) -> Any:
        result = await handler(params, connection)
        if not lost:
            lost.append(connection.peer)
            await trio.sleep_forever()
        return result

    return serve


async def test_a_path_whose_exit_keeps_its_answers_is_given_up(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit of one of the device's paths answers the path's pings and never a request
    (a hostile relay). A device polling every 10 s waits out an attempt's timeout on it
    twice, then builds another path through another exit: of 20 polls 2 are slow (before,
    every one after the first was, for the path's whole life: 39 of 40 in a review)."""
    withholding: set[bytes] = set()
    exit_done = RelayCore.exit_done

    def keeps_its_answers(core: RelayCore, token: bytes, reply: bytes | None) -> Any:
        if core.keys.public in withholding:
            return []  # says nothing
        return exit_done(core, token, reply)

    monkeypatch.setattr(RelayCore, "exit_done", keeps_its_answers)
    owner = Identity.from_label("alice")
    async with _onion_network(Seen()) as onion:
        withholding.add(onion.endpoint.paths[0].terminal.pubkey)
        slow = 0
        for _ in range(20):
            asked = trio.current_time()
            await onion.swarm.retrieve(owner, 0, None)
            slow += trio.current_time() - asked > ONION_ATTEMPT_TIMEOUT_S / 2
            await trio.sleep(10)
        assert slow <= EXIT_UNANSWERED_TO_RETIRE
        assert not any(path.terminal.pubkey in withholding for path in onion.endpoint.paths)


async def test_a_signed_request_whose_answer_was_lost_goes_again_signed_anew(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node that ran a retrieve whose answer was lost on the way back refuses the same
    signature again; the retry on another path carries a fresh one and gets the messages."""
    seen = Seen()
    owner = Identity.from_label("dave")
    async with _onion_network(seen) as onion:
        digest, _ = await onion.swarm.store(owner.session_id, 0, b"kept")
        lost: list[str] = []
        for node in onion.network.running_nodes():
            node.rpc.add_method("onion", _answer_lost_once(node.rpc.methods["onion"], lost))
        attempts_before = onion.pool.failed_attempts
        messages, _, _ = await onion.swarm.retrieve(owner, 0, None)
        assert [m.hash for m in messages] == [digest]
        assert len(lost) == 1
        assert onion.pool.failed_attempts == attempts_before + 1


async def test_network_access_chooses_onion_requests_by_configuration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``rpc_route="onion"`` gives the device a pool on paths of its own; the swarm client
    works on it unchanged, and no node is reached from the device's host."""
    seen = Seen()
    owner = Identity.from_label("dave")
    async with _onion_network(seen) as onion:
        access = replace(onion.network.access(), rpc_route="onion")
        async with access.open_routes(local_name="dave-laptop") as (pool, reading):
            assert isinstance(pool, OnionRpcPool) and pool.endpoint is not onion.endpoint
            swarm = SwarmClient(
                cast(RpcPool, pool), reading.directory, access.clock, random.Random(2)
            )
            digest, _ = await swarm.store(owner.session_id, 0, b"by onion")
            messages, _, _ = await swarm.retrieve(owner, 0, None)
            assert [m.hash for m in messages] == [digest]
        assert seen.client_peers() <= {f"relay{i}" for i in range(RELAYS)}
        # Each node took its exits from its listing: the relays' requests drew on the
        # exits' share, and none came from a caller on no listed relay's host.
        assert sum(service.stats.answered for service in onion.services) > 0
        assert sum(service.stats.unlisted for service in onion.services) == 0
        # Anyone else may call onion, and is counted apart.
        node = onion.network.running_nodes()[0]
        body, _ = seal_request(
            node.identity.ed25519_public, Request(1, "info", {}), onion.network.clock.now_ms()
        )
        transport = onion.network.transport
        assert isinstance(transport, MemoryNetwork)
        async with open_rpc(transport.host("mallory"), node.url) as client:
            await client.call("onion", {"body": body})
        assert node.onion.stats.unlisted == 1
    with pytest.raises(ValueError, match="rpc_route"):
        replace(access, rpc_route="carrier-pigeon")


async def test_no_subscription_leaves_the_onion_route(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A push needs a connection of the device's own, which shows the node its address
    and account: on onion requests the swarm client refuses to subscribe and a device
    configured to subscribe is refused at open, before any connection is made."""
    seen = Seen()
    owner = Identity.from_label("dave")
    async with _onion_network(seen) as onion:
        access = replace(onion.network.access(), rpc_route="onion")
        async with access.open_routes(local_name="dave-laptop") as (pool, reading):
            swarm = SwarmClient(
                cast(RpcPool, pool), reading.directory, access.clock, random.Random(2)
            )

            async def deliver(batch: object) -> None:
                raise AssertionError("nothing may be delivered")

            with pytest.raises(ValueError, match="direct connections"):
                await swarm.subscribe(owner, 0, deliver)
        pushed = DeviceConfig(receive="subscribe")
        with pytest.raises(DeviceError, match="onion requests a device polls"):
            async with open_device(tmp_path / "dave", access, mode="linked", config=pushed):
                raise AssertionError("the device must not open")
        assert seen.client_peers() <= {f"relay{i}" for i in range(RELAYS)}


async def test_file_server_and_open_group_clients_work_unchanged_by_onion(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Any RPC server takes onion requests once it has a key: the typed clients of the
    file server and the open group server run on an onion pool as on a connection."""
    seen = Seen()
    files_key, rooms_key = Identity.from_label("files"), Identity.from_label("rooms")
    servers = ("mem:files", "mem:rooms")
    async with _onion_network(seen, servers) as onion, trio.open_nursery() as nursery:
        clock, transport = onion.network.clock, onion.network.transport
        files = FileServer(tmp_path / "files.sqlite3", clock)
        rooms = OpenGroupServer(tmp_path / "rooms.sqlite3", clock, None, transport)
        OnionService(files.rpc, files_key, clock)
        OnionService(rooms.rpc, rooms_key, clock)
        files_url = await nursery.start(files.serve, transport, "mem:files")
        rooms_url = await nursery.start(rooms.serve, transport, "mem:rooms")
        keys = {files_url: files_key.ed25519_public, rooms_url: rooms_key.ed25519_public}
        pool = OnionRpcPool(
            onion.endpoint, DirectoryKeys(onion.network.directory(), clock, keys), clock
        )
        someone = Identity.from_label("erin").session_id
        devices = await FileServerClient(cast(RpcClient, await pool.get(files_url))).get_mappings(
            someone
        )
        assert devices.primary == someone
        assert await OpenGroupClient(cast(RpcClient, await pool.get(rooms_url))).list_rooms() == []
        nursery.cancel_scope.cancel()


def test_a_network_file_with_relays_and_server_keys_means_onion_requests(tmp_path: Path) -> None:
    """A device joining a ``network up`` reaches servers by onion requests when the
    network can carry them (relays, and the keys of the servers that are not nodes);
    a key that is not 32 bytes of hex is refused in one line."""
    files, rooms = Identity.from_label("files"), Identity.from_label("rooms")
    description: dict[str, object] = {
        "ledger": "00" * 32,
        "registry": "ws://127.0.0.1:1",
        "fileserver": "ws://127.0.0.1:2",
        "opengroup": "ws://127.0.0.1:3",
        "nodes": [],
    }
    path = tmp_path / "network.json"
    path.write_text(json.dumps(description))
    assert NetworkAccess.from_file(path).rpc_route == "direct"
    description |= {
        "fileserver_key": files.ed25519_public.hex(),
        "opengroup_key": rooms.ed25519_public.hex(),
        "relays": [{"pubkey": "ab" * 32, "address": "127.0.0.1:4"}] * 2,
    }
    path.write_text(json.dumps(description))
    assert NetworkAccess.from_file(path).rpc_route == "direct", "two relays make no path"
    description["relays"] = [{"pubkey": "ab" * 32, "address": "127.0.0.1:4"}] * 3
    path.write_text(json.dumps(description))
    access = NetworkAccess.from_file(path)
    assert access.rpc_route == "onion"
    assert access.server_keys == {
        "ws://127.0.0.1:2": files.ed25519_public,
        "ws://127.0.0.1:3": rooms.ed25519_public,
    }
    path.write_text(json.dumps(description | {"opengroup_key": "zz" * 32}))
    with pytest.raises(NetworkFileError, match="'opengroup_key' must be 32 bytes in hex"):
        NetworkAccess.from_file(path)
    # What a device command says before the network is up: where to look next.
    with pytest.raises(NetworkFileError, match=r"no such file \(is `p2psync network up`"):
        NetworkAccess.from_file(path.with_name("missing.json"))


async def test_a_node_announcing_a_servers_url_gets_no_onion_request_sealed_to_it() -> None:
    """Nodes name their own urls: a node announcing the file server's url (or another
    node's) does not replace the key a device was given, and a url that two nodes announce
    is sealed to neither."""
    files, rogue, honest = (Identity.from_label(n) for n in ("files", "rogue", "honest"))

    class Listing:
        nodes: ClassVar[list[SimpleNamespace]] = [
            SimpleNamespace(url="ws://files", pubkey=rogue.ed25519_public.hex()),
            SimpleNamespace(url="ws://node", pubkey=honest.ed25519_public.hex()),
            SimpleNamespace(url="ws://node", pubkey=rogue.ed25519_public.hex()),
            SimpleNamespace(url="ws://alone", pubkey=honest.ed25519_public.hex()),
        ]

        async def fetch(self) -> Listing:
            return self

    known = {"ws://files": files.ed25519_public}
    keys = DirectoryKeys(cast(Any, Listing()), Clock(TEST_EPOCH_MS), known)
    assert await keys("ws://alone") == honest.ed25519_public
    assert await keys("ws://files") == files.ed25519_public
    with pytest.raises(RpcError, match="no announced key"):
        await keys("ws://node")


async def test_server_keys_come_from_a_listing_read_again_only_when_due() -> None:
    """Sealing to a node needs its announced key, but not a registry read per request: a
    read costs a connection (a TLS handshake) and tells the registry, from the device's
    own address, when an onion request is coming."""
    node = Identity.from_label("node")

    class CountingListing:
        reads = 0
        nodes: ClassVar[list[SimpleNamespace]] = [
            SimpleNamespace(url="ws://node", pubkey=node.ed25519_public.hex())
        ]

        async def fetch(self) -> CountingListing:
            CountingListing.reads += 1
            return self

    clock = Clock(TEST_EPOCH_MS)
    keys = DirectoryKeys(cast(Any, CountingListing()), clock)
    for _ in range(50):
        assert await keys("ws://node") == node.ed25519_public
    assert CountingListing.reads == 1
    with pytest.raises(RpcError, match="no announced key"):
        await keys("ws://joined-since")  # a miss right after a read: no second read
    assert CountingListing.reads == 1
    clock.skip_idle(KEYS_MISS_REREAD_MS)
    with pytest.raises(RpcError, match="no announced key"):
        await keys("ws://joined-since")
    assert CountingListing.reads == 2
    await keys("ws://node")
    assert CountingListing.reads == 2
    clock.skip_idle(ANNOUNCEMENT_TTL_MS)
    await keys("ws://node")
    assert CountingListing.reads == 3


async def test_a_device_reads_the_listing_from_two_nodes_and_checks_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Read through paths: each node's answer is checked on its own (an unregistered
    node's entry is left out), a relay one node withholds stays, a relay both name is
    taken, one named by one node only is not (relays are not admitted), a forged entry
    is refused; and the read serves every reader for a while."""
    clock = Clock(TEST_EPOCH_MS)
    now = clock.now_ms()
    ledger = Ledger(Identity.from_label("listing/ledger"))
    nodes = [Identity.from_label(f"listing/node{i}") for i in range(3)]
    relays = [Identity.from_label(f"listing/relay{i}") for i in range(4)]

    def announced(identity: Identity, kind: str, at: int = now) -> dict[str, Any]:
        registration = b""
        if identity is not nodes[2]:  # node 2 is not admitted
            registration = ledger.register(identity.ed25519_public.hex()).encode()
        url = f"mem:{identity.session_id[:8]}"
        return sign_announcement(identity, kind, url, at, registration=registration)

    node_entries = [announced(node, "node") for node in nodes]
    known = Snapshot.from_announcements(
        {"announcements": [*node_entries[:2], *(announced(r, "relay") for r in relays[:2])]},
        now,
        ledger=ledger.public_key,
    )
    forged = announced(Identity.from_label("listing/forger"), "relay")
    forged["record"] = {**forged["record"], "url": "mem:elsewhere"}
    urls = [entry["record"]["url"] for entry in node_entries]
    answers = {
        # Leaves out relay 1; names relays 2 (joined) and 3, the unadmitted node 2, a forgery.
        urls[0]: [
            *node_entries,
            announced(relays[0], "relay", now + 1),
            announced(relays[2], "relay", now + 1),
            announced(relays[3], "relay", now + 1),
            forged,
        ],
        urls[1]: [*node_entries[:2], announced(relays[0], "relay"), announced(relays[2], "relay")],
    }
    asked: list[str] = []

    class Exits:
        async def call(self, url: str, method: str, params: dict[str, Any]) -> Any:
            assert method == "list" and params == {}
            asked.append(url)
            return {"announcements": answers[url], "next": None}

    listing = OnionDirectory(known, ledger.public_key, clock, random.Random(1))
    assert await listing.fetch() == known  # just read: fresh
    await trio.sleep(LISTING_FRESH_S)
    with pytest.raises(RpcError, match="no paths"):
        await listing.fetch()
    listing.read_through(cast(RpcPool, Exits()))
    read = await listing.fetch()
    assert {relay.pubkey for relay in read.relays} == {
        relay.ed25519_public.hex() for relay in relays[:3]
    }
    assert {node.pubkey for node in read.nodes} == {n.ed25519_public.hex() for n in nodes[:2]}
    assert sorted(asked) == sorted(urls[:2]) and listing.known == read
    assert await listing.fetch() == read and len(asked) == 2  # fresh: no second read
