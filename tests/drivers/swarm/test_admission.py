"""Admission and bounded trust: nobody joins a swarm by saying so, a node's ring position
is the ledger's to give, and admitted nodes read only their own swarm."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from overlay.contact import make_contact
from overlay.keys import KeyPair
from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import RpcError
from p2psync.identity import Identity, message_hash
from p2psync.network import LocalNetwork
from p2psync.rpc import RpcClient, ServerLimits, open_rpc
from p2psync.swarm.admission import MIN_STAKE, Ledger, Registration
from p2psync.swarm.allowance import ROW_CHARGE_BYTES
from p2psync.swarm.auth import sign_node_request
from p2psync.swarm.directory import RegistryDirectory, read_listing
from p2psync.swarm.listing import (
    LIST_PAGE,
    MAX_LISTED,
    Snapshot,
    sign_announcement,
)
from p2psync.swarm.messages import HeldReply, KeysRequest, ReplicateReply, RowBatch
from p2psync.swarm.node import StorageNode
from p2psync.swarm.node_config import NodeConfig
from p2psync.swarm.node_core import batches
from p2psync.swarm.quorum import RowKey, row_key
from p2psync.swarm.registry import RegistryServer
from p2psync.swarm.ring import NodeInfo, SwarmMap
from p2psync.swarm.rows import StoredMessage
from p2psync.swarm.store import MessageStore

from .helpers import holders, open_test_swarm, swarm_of

ALICE = Identity.from_label("alice")
ROGUE = Identity.from_label("rogue")


def test_a_position_is_the_ledgers_to_give_not_the_keys() -> None:
    """The same key registered by two ledgers, or at two heights, lands in unrelated
    places: grinding keys no longer picks a swarm."""
    node = ROGUE.ed25519_public.hex()
    first = Ledger(Identity.from_label("ledger/one")).register(node)
    second = Ledger(Identity.from_label("ledger/two")).register(node)
    assert first.position != second.position
    again = Ledger(Identity.from_label("ledger/one"))
    again.register(Identity.from_label("someone").ed25519_public.hex())
    assert again.register(node).position not in (first.position, second.position)
    nodes = [NodeInfo(node, "mem:a", first.position), NodeInfo("ff" * 32, "mem:b", 0)]
    assert [n.pubkey for n in SwarmMap.build(nodes).all_nodes()] == ["ff" * 32, node]


def test_a_registration_checks_out_only_for_its_node_under_its_ledger() -> None:
    ledger = Ledger(Identity.from_label("ledger/one"))
    registration = ledger.register(ROGUE.ed25519_public.hex())
    decoded = Registration.decode(registration.encode())
    decoded.check(ledger.public_key, ROGUE.ed25519_public.hex())
    with pytest.raises(ValueError, match="another node"):
        decoded.check(ledger.public_key, ALICE.ed25519_public.hex())
    with pytest.raises(ValueError, match="not signed by this network's ledger"):
        decoded.check(Identity.from_label("x").ed25519_public, ROGUE.ed25519_public.hex())
    cheap = ledger.register(ALICE.ed25519_public.hex(), stake=MIN_STAKE - 1)
    with pytest.raises(ValueError, match="at least"):
        cheap.check(ledger.public_key, ALICE.ed25519_public.hex())


async def _run_rogue(
    network: LocalNetwork, registration: bytes, nursery: trio.Nursery
) -> StorageNode:
    assert isinstance(network.transport, MemoryNetwork)
    rogue = StorageNode(
        ROGUE,
        MessageStore(":memory:"),
        network.clock,
        network.transport.host("mem:rogue"),
        network.directory(),
        registration=registration,
    )
    await nursery.start(rogue.serve, "mem:rogue")
    return rogue


@pytest.mark.parametrize("forged", ["none", "another ledger's", "another node's"])
async def test_a_node_the_ledger_did_not_admit_is_not_listed_and_members_refuse_it(
    autojump_clock: trio.testing.MockClock, forged: str
) -> None:
    """A rogue with its own key and no registration (or one signed by a ledger of its
    own, or an honest node's) is refused by the registry, left out by every reader, and
    every member answers its node-to-node calls ``unauthorized``: it can neither read a
    swarm's rows nor take new ones as a member."""
    async with open_test_swarm(6) as (network, swarm), trio.open_nursery() as nursery:
        digest, _ = await swarm.store(ALICE.session_id, 0, b"secret")
        registration = {
            "none": b"",
            "another ledger's": Ledger(ROGUE).register(ROGUE.ed25519_public.hex()).encode(),
            "another node's": network.nodes[0].registration,
        }[forged]
        with pytest.raises(RpcError) as announced:
            await network.directory().announce(
                ROGUE, "node", "mem:rogue", registration=registration
            )
        assert announced.value.code == "unauthorized"
        rogue = await _run_rogue(network, registration, nursery)
        await rogue.refresh()
        listing = await network.directory().fetch()
        assert ROGUE.ed25519_public.hex() not in {n.pubkey for n in listing.nodes}
        assert rogue.swarm_id is None
        member = swarm_of(network, ALICE)[0]
        calls: list[tuple[str, dict[str, Any]]] = [
            ("lookup", {"pubkey": ALICE.session_id, "namespace": 0, "hash": digest}),
            ("repair_digest", {}),
            ("repair_list", {"bucket": 0, "offset": 0}),
            ("replicate", {"rows": []}),
        ]
        async with open_rpc(network.transport, member.url) as client:
            for method, params in calls:
                signed = sign_node_request(ROGUE, method, params, network.clock.now_ms())
                with pytest.raises(RpcError) as refused:
                    await client.call(method, signed)
                assert refused.value.code == "unauthorized"
        assert holders(network, ALICE, digest) == 6
        nursery.cancel_scope.cancel()


async def test_an_admitted_node_reads_only_its_own_swarm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With two swarms, a member of one cannot look up, list or fetch the other's rows:
    node-to-node reads answer only members of the same swarm, about its own owners."""
    async with open_test_swarm(12) as (network, swarm):
        digest, _ = await swarm.store(ALICE.session_id, 0, b"secret")
        home = swarm_of(network, ALICE)
        outsider = next(n for n in network.running_nodes() if n not in home)
        calls: list[tuple[str, dict[str, Any]]] = [
            ("lookup", {"pubkey": ALICE.session_id, "namespace": 0, "hash": digest}),
            ("repair_digest", {}),
            ("repair_list", {"bucket": 0, "offset": 0}),
            ("repair_fetch", {"keys": [[ALICE.session_id, 0, digest]]}),
        ]
        async with open_rpc(network.transport, home[0].url) as client:
            for method, params in calls:
                signed = sign_node_request(
                    outsider.identity, method, params, network.clock.now_ms()
                )
                with pytest.raises(RpcError) as refused:
                    await client.call(method, signed)
                assert refused.value.code == "unauthorized"
            # A member of the swarm is answered, so the refusal is about the asker.
            params = {"pubkey": ALICE.session_id, "namespace": 0, "hash": digest}
            signed = sign_node_request(home[1].identity, "lookup", params, network.clock.now_ms())
            assert (await client.call("lookup", signed))["row"] is not None


async def test_a_listing_of_ten_thousand_entries_reads_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``list`` comes in pages, so the registry holds MAX_LISTED entries as large as an
    announcement can be (a relay's url of the longest text allowed, and its contact for
    that url) and every reader still gets all of them."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    registry = RegistryServer(clock, ledger=None, dial_back=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(registry.serve, network, "mem:registry")
        async with open_rpc(network, url) as client:
            for index in range(MAX_LISTED):
                relay = Identity(index.to_bytes(32, "big"))
                address = f"mem:{index:05d}".ljust(256, "r")
                contact = make_contact(KeyPair.from_seed(relay.seed), address, clock.now_ms())
                announcement = sign_announcement(
                    relay, "relay", address, clock.now_ms(), contact.encode()
                )
                await client.call("announce", announcement)
                await trio.sleep(1 / ServerLimits().requests_per_s)  # within the rate limit
        announcements = await read_listing(network, url)
        pages = -(-len(announcements) // LIST_PAGE)
        assert len(announcements) == MAX_LISTED and pages >= MAX_LISTED // LIST_PAGE
        directory = RegistryDirectory(network, url, clock, None)
        snapshot = await directory.fetch()
        assert len(snapshot.relays) == MAX_LISTED
        nursery.cancel_scope.cancel()


async def test_a_node_announcing_a_url_pinned_to_another_key_is_left_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node serves TLS as its own key, so the ``wss://`` url it announces must pin that
    key. One announcing another node's url made that url name two nodes, so devices
    sealed their onion requests to neither (and exits would connect where it pointed)."""
    clock = Clock(TEST_EPOCH_MS)
    victim, rogue = Identity.from_label("victim"), Identity.from_label("rogue")
    victim_url = f"wss://10.0.0.1:7000/{victim.ed25519_public.hex()}"
    announcements = [
        sign_announcement(node, "node", url, clock.now_ms())
        for node, url in (
            (victim, victim_url),
            (rogue, victim_url),
            (rogue, "wss://10.0.0.2:7000/" + "zz" * 32),
        )
    ]
    snapshot = Snapshot.from_announcements(
        {"announcements": announcements}, clock.now_ms(), ledger=None
    )
    assert [(n.pubkey, n.url) for n in snapshot.nodes] == [
        (victim.ed25519_public.hex(), victim_url)
    ]


async def test_a_relay_the_ledger_has_not_admitted_is_not_listed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay is an onion exit (it draws on servers' onion shares) and a hop of devices'
    paths: on a network with a ledger, one without a registration under it is refused
    by the registry and left out by every reader, as a node would be."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    ledger = Ledger(Identity.from_label("relay-ledger"))
    registry = RegistryServer(clock, ledger=ledger.public_key, dial_back=None)
    honest = Identity.from_label("relay-honest")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(registry.serve, network, "mem:registry")
        directory = RegistryDirectory(network, url, clock, ledger.public_key)
        await directory.announce(
            honest,
            "relay",
            "mem:honest",
            registration=ledger.register(honest.ed25519_public.hex()).encode(),
        )
        for registration in (b"", Ledger(ROGUE).register(ROGUE.ed25519_public.hex()).encode()):
            with pytest.raises(RpcError) as refused:
                await directory.announce(ROGUE, "relay", "mem:rogue", registration=registration)
            assert refused.value.code == "unauthorized"
        listing = await directory.fetch()
        assert [relay.pubkey for relay in listing.relays] == [honest.ed25519_public.hex()]
        # A copy served by anyone else is checked the same way.
        rogue_entry = sign_announcement(ROGUE, "relay", "mem:rogue", clock.now_ms())
        served = Snapshot.from_announcements(
            {"announcements": [*listing.announcements, rogue_entry]},
            clock.now_ms(),
            ledger=ledger.public_key,
        )
        assert served.relays == listing.relays
        nursery.cancel_scope.cancel()


class _RegistryDown:
    """A registry that cannot be reached, and no copy of its listing anywhere."""

    async def fetch(self) -> Snapshot:
        raise OSError("registry down")

    async def announce(self, *args: object, **kwargs: object) -> None:
        raise OSError("registry down")

    @asynccontextmanager
    async def one_connection(self) -> AsyncIterator[_RegistryDown]:
        yield self


async def test_a_node_that_has_not_read_the_registry_says_so_to_its_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Until its first listing a node knows no one: it answers a member's call
    ``unavailable`` (try again soon), not ``unauthorized`` (the caller is no node)."""
    async with open_test_swarm(3) as (network, _), trio.open_nursery() as nursery:
        assert isinstance(network.transport, MemoryNetwork)
        member = network.nodes[0]
        starting = StorageNode(
            Identity.from_label("starting"),
            MessageStore(":memory:"),
            network.clock,
            network.transport.host("mem:starting"),
            _RegistryDown(),
        )
        await nursery.start(starting.serve, "mem:starting")
        signed = sign_node_request(member.identity, "repair_digest", {}, network.clock.now_ms())
        async with open_rpc(network.transport, "mem:starting") as client:
            with pytest.raises(RpcError) as refused:
                await client.call("repair_digest", signed)
        assert (refused.value.code, refused.value.message) == (
            "unavailable",
            "node has not read the registry yet",
        )
        nursery.cancel_scope.cancel()


def _rows_for(owner: Identity, count: int, size: int, now_ms: int) -> list[StoredMessage]:
    datas = [bytes([i % 256]) * size + i.to_bytes(4, "big") for i in range(count)]
    return [
        StoredMessage(owner.session_id, 0, message_hash(d), now_ms, now_ms + 3_600_000, d)
        for d in datas
    ]


async def _push(
    client: RpcClient, node: StorageNode, rows: list[StoredMessage], now_ms: int
) -> tuple[str, ...]:
    """Push ``rows`` with ``replicate`` as ``node``, a batch at a time; the owners refused."""
    refused: set[str] = set()
    for part in batches(rows):
        params = RowBatch(tuple(part)).to_wire()
        signed = sign_node_request(node.identity, "replicate", params, now_ms)
        refused.update(ReplicateReply.from_wire(await client.call("replicate", signed)).refused)
    return tuple(sorted(refused))


async def _held(client: RpcClient, node: StorageNode, keys: list[RowKey], now_ms: int) -> int:
    params = KeysRequest(tuple(keys)).to_wire()
    signed = sign_node_request(node.identity, "held", params, now_ms)
    return HeldReply.from_wire(await client.call("held", signed), asked=len(keys)).held


async def test_a_node_of_another_swarm_puts_no_more_into_a_mailbox_than_a_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An admitted node that never served Alice is a stranger to her mailbox: the rows it
    pushes with ``replicate`` are held to a client connection's byte rate (past it, she
    is named refused and the rest is not kept), and ``held`` tells it only about rows it
    pushed itself, not whether her other messages exist. A member of her swarm pushes as
    much as it likes. (Before, any admitted node pushed without limit and ``held``
    answered it about any message it named.)"""
    config = NodeConfig(store_bytes_per_s=100_000)  # a burst of 800 000 bytes
    async with open_test_swarm(12, config) as (network, swarm):
        digest, _ = await swarm.store(ALICE.session_id, 0, b"secret")
        home = swarm_of(network, ALICE)
        target = home[0]
        stranger = next(
            n for n in network.running_nodes() if not target.core.trusts(n.pubkey, ALICE.session_id)
        )
        now = network.clock.now_ms()
        flood = _rows_for(ALICE, 90, 10_000, now)  # 900 000 bytes, past the burst
        async with open_rpc(network.transport, target.url) as client:
            assert await _push(client, stranger, flood[:60], now) == ()
            assert await _push(client, stranger, flood[60:], now) == (ALICE.session_id,)
            kept = sum(1 for r in flood if target.store.get(*row_key(r)) is not None)
            assert 60 <= kept < 90
            secret = (ALICE.session_id, 0, digest)
            pushed = [row_key(r) for r in flood[:60]]
            assert await _held(client, stranger, [secret, *pushed], now) == 60
            assert await _held(client, home[1], [secret, *pushed], now) == 61
            more = _rows_for(ALICE, 90, 10_001, now)
            assert await _push(client, home[1], more, now) == ()


async def test_rows_a_member_pushes_are_held_to_the_owners_quota(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Replicated, repaired or handed-over rows fill a mailbox no further than stores do:
    past the owner's quota the rest of a peer's batch for her is not kept and she is
    named refused (before, only a client's stores were counted against it); the rows it
    holds already are not refused when a peer sends them again, as repair and hand-over
    do (a review's mailbox near its quota refused a member's second sending)."""
    config = NodeConfig(owner_quota_bytes=100_000)
    async with open_test_swarm(6, config) as (network, _swarm):
        target, member = swarm_of(network, ALICE)[:2]
        now = network.clock.now_ms()
        rows = _rows_for(ALICE, 20, 10_000, now)
        async with open_rpc(network.transport, target.url) as client:
            assert await _push(client, member, rows, now) == (ALICE.session_id,)
            kept = [r for r in rows if target.store.holds(*row_key(r), now)]
            assert 0 < len(kept) < len(rows)
            assert await _push(client, member, kept, now) == ()
        held = target.store.owner_charge(ALICE.session_id, now, ROW_CHARGE_BYTES)
        assert held <= 100_000


async def test_rows_without_data_are_charged_and_a_strangers_hand_over_gets_further_each_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A row of no data costs a stranger its overhead against the byte rate (a review
    kept 10 000 empty rows of a stranger's with a 100 B/s budget); the rows of a
    stranger's batch before the first one past its rate are kept, and rows held already
    cost nothing, so a hand-over that sends everything again on each pass, after a
    while for the rate, gets the whole mailbox across (before, each pass spent the
    budget on the same first rows and the rest never arrived)."""
    config = NodeConfig(store_bytes_per_s=20_000)  # bursts of 160 000 bytes
    async with open_test_swarm(12, config) as (network, _swarm):
        target = swarm_of(network, ALICE)[0]
        stranger = next(
            n for n in network.running_nodes() if not target.core.trusts(n.pubkey, ALICE.session_id)
        )
        now = network.clock.now_ms()
        empty = [  # one per namespace: an empty row's hash is that of no data
            StoredMessage(ALICE.session_id, n, message_hash(b""), now, now + 3_600_000, b"")
            for n in range(1, 1_001)
        ]
        async with open_rpc(network.transport, target.url) as client:
            assert await _push(client, stranger, empty, now) == (ALICE.session_id,)
            kept = sum(1 for r in empty if target.store.holds(*row_key(r), now))
            assert kept <= 160_000 // ROW_CHARGE_BYTES
            await trio.sleep(8)  # the burst back
            rows = _rows_for(ALICE, 30, 10_000, now)  # about two bursts
            passes = 0
            while not all(target.store.holds(*row_key(r), now) for r in rows):
                passes += 1
                assert passes <= 4, "each pass gets further"
                await _push(client, stranger, rows, network.clock.now_ms())
                await trio.sleep(8)
            keys = [row_key(r) for r in rows]
            assert await _held(client, stranger, keys, network.clock.now_ms()) == len(rows)
