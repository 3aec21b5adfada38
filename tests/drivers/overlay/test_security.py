"""What a hostile review of the overlay asked for: cells that cannot be matched across links
nor watermarked by drops, relay choice that does not repeat across restarts, range-checked
build records, bounded introset stores, and receive loops that outlive a bad record."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import overlay.keys
from overlay.cells import CellKind, decode_cell, frame_payload, make_cell, unframe_payload
from overlay.clock import Clock
from overlay.constants import (
    CELL_BODY_BYTES,
    CLOCK_SKEW_ALLOWANCE_MS,
    MAX_PATH_LIFETIME_MS,
)
from overlay.contact import make_contact
from overlay.dht import DhtStatus, IntrosetStore, get_request, put_request
from overlay.endpoint import open_endpoint
from overlay.introset import rendezvous_keys, seal_introset
from overlay.keys import KeyPair, verify
from overlay.link import Link, LinkHandler, MemoryNetwork, TcpTransport, Transport
from overlay.onion import BuildRecord, PathBroken, new_path_id, pad_body, seal_build_frames
from overlay.path import Path, PathState, Payload
from overlay.relay import open_relays
from overlay.relay_core import RelayCore
from overlay.session import SessionCore
from tests.core.overlay.test_cores import NOW, SECRET, Net
from tests.drivers.overlay.test_endpoint import ALICE, BOB, echo_one, exchange

# --- per-hop counters ---------------------------------------------------------------------


def observe(net: Net) -> dict[str, list[bytes]]:
    """Every cell each relay of ``net`` is handed, through the relays' observer."""
    seen: dict[str, list[bytes]] = {address: [] for address in net.cores}
    for address, core in net.cores.items():
        core.observer = lambda cell, into=seen[address]: into.append(cell.cell)
    return seen


def test_a_cell_shows_nothing_alike_on_any_two_links_of_its_path() -> None:
    """Colluding relays on one path compare what they see of each cell: no field (above
    all no counter) is equal or moves in step from one link to the next, either way."""
    net = Net(3)
    path = net.path([0, 1, 2])
    seen = observe(net)
    for n in range(8):
        net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + n.to_bytes(8, "big")))
    # Each ping crosses owner→r0→r1→r2; its pong crosses r2→r1→r0→owner.
    forward = [seen["mem:r0"][0::2], seen["mem:r1"][0::2], seen["mem:r2"]]
    backward = [seen["mem:r1"][1::2], seen["mem:r0"][1::2], net.to_owner]
    for links in (forward, backward):
        for a, b in ((0, 1), (1, 2), (0, 2)):
            for cell_a, cell_b in zip(links[a], links[b], strict=True):
                assert decode_cell(cell_a).id != decode_cell(cell_b).id
                assert all(
                    cell_a[k : k + 8] != cell_b[k : k + 8] for k in range(1, len(cell_a) - 7)
                )
            # what a layer shows in place of its counter: neither equal nor related
            tags_a = [int.from_bytes(cell[17:25], "big") for cell in links[a]]
            tags_b = [int.from_bytes(cell[17:25], "big") for cell in links[b]]
            assert len({x ^ y for x, y in zip(tags_a, tags_b, strict=True)}) == len(tags_a)
            assert len({y - x for x, y in zip(tags_a, tags_b, strict=True)}) == len(tags_a)
        for link in links:  # and no link shows a count going up
            tags = [int.from_bytes(cell[17:25], "big") for cell in link]
            assert len({b - a for a, b in itertools.pairwise(tags)}) == len(tags) - 1
    replies = [path.unwrap(decode_cell(cell).body, NOW) for cell in net.to_owner]
    assert [reply[1:9] for reply in replies] == [n.to_bytes(8, "big") for n in range(8)]


def test_a_cell_lost_on_the_way_out_tears_the_path_down_at_the_next_hop() -> None:
    net = Net(3)
    path = net.path([0, 1, 2])
    first = net.cores["mem:r0"]
    path.wrap(bytes((Payload.PING,)) + b"lost")  # every hop counted it; it never arrives
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"after"))
    assert first.stats.dropped_gap == 1 and first.hop_count == 0
    assert net.to_owner == []
    # not resynchronised: the path is gone at that hop, whatever comes next
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"later"))
    assert first.stats.dropped_unknown_path == 1 and net.to_owner == []


def test_a_reply_lost_on_the_way_back_leaves_the_path_dead_at_its_owner() -> None:
    net = Net(3)
    path = net.path([0, 1, 2])
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"one"))
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"two"))
    _lost, second = net.to_owner
    with pytest.raises(PathBroken):
        path.unwrap(decode_cell(second).body, NOW)
    assert path.state is PathState.DEAD
    assert not path.usable(NOW)


# --- relay choice ---------------------------------------------------------------------------


class Unreachable(Transport):
    """Every connection hangs: an endpoint picks its relays and builds nothing."""

    def __init__(self, *, simulated: bool) -> None:
        self.simulated = simulated

    async def serve(
        self,
        handler: LinkHandler,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        raise OSError("nothing is served here")

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[Link]:
        await trio.sleep_forever()
        yield  # never reached


RELAYS = [KeyPair.from_seed(bytes([200, i]) * 16) for i in range(20)]
DIRECTORY = [make_contact(k, f"127.0.0.1:{9000 + i}", NOW) for i, k in enumerate(RELAYS)]


async def first_paths(transport: Transport, seed: int | None) -> list[list[bytes]]:
    """The relays of the first four paths an endpoint with Alice's key picks."""
    async with open_endpoint(
        ALICE, transport, DIRECTORY, paths=4, clock=Clock(NOW), seed=seed
    ) as endpoint:
        await trio.testing.wait_all_tasks_blocked()
        return [[hop.pubkey for hop in path.hops] for path in endpoint.paths]


@pytest.fixture
def frozen_clock() -> trio.testing.MockClock:
    """Virtual time that never moves: nothing times out while the paths are read."""
    return trio.testing.MockClock()


async def test_relay_choice_does_not_repeat_across_restarts_outside_simulations(
    frozen_clock: trio.testing.MockClock,
) -> None:
    """Same key, same seed (as a device derives it from its identity), a real network:
    the relays differ from one start to the next, so they cannot link the device across
    address changes. 20 relays, four 3-hop paths: a repeat has odds of 1 in 2 * 10**15."""
    real = Unreachable(simulated=False)
    assert await first_paths(real, seed=1) != await first_paths(real, seed=1)
    assert await first_paths(real, seed=None) != await first_paths(real, seed=None)
    assert not TcpTransport().simulated


async def test_relay_choice_stays_reproducible_in_simulations(
    frozen_clock: trio.testing.MockClock,
) -> None:
    simulation = Unreachable(simulated=True)
    assert await first_paths(simulation, seed=1) == await first_paths(simulation, seed=1)
    assert await first_paths(simulation, seed=1) != await first_paths(simulation, seed=2)
    assert MemoryNetwork().simulated and MemoryNetwork().host("a").simulated


# --- build records ---------------------------------------------------------------------------


def build_cell(net: Net, expiry_ms: int) -> bytes:
    """A one-hop build through relay 0 whose record says ``expiry_ms``."""
    ids = [new_path_id(), new_path_id()]
    record = BuildRecord(ids[0], ids[1], bytes(32), expiry_ms, 1)
    body, _ = seal_build_frames([record], [net.contacts[0].x25519])
    return make_cell(CellKind.BUILD, ids[0], pad_body(body))


@pytest.mark.parametrize(
    "expiry_ms",
    [2**63 - 1, 2**64 - 1, NOW + MAX_PATH_LIFETIME_MS + CLOCK_SKEW_ALLOWANCE_MS + 1, NOW],
)
def test_a_build_expiring_out_of_range_is_refused_and_the_relay_serves_on(
    expiry_ms: int,
) -> None:
    net = Net(3)
    relay = net.cores["mem:r0"]
    assert relay.receive("in:hostile", build_cell(net, expiry_ms), NOW) == []
    assert relay.stats.dropped_malformed == 1
    assert relay.stats.builds == 0 and relay.hop_count == 0
    path = net.path([0, 1, 2])
    net.inject("mem:r0", path.wrap(bytes((Payload.PING,)) + b"served"))
    assert path.unwrap(decode_cell(net.to_owner.pop()).body, NOW)[1:] == b"served"


def test_the_longest_allowed_expiry_still_builds() -> None:
    net = Net(1)
    latest = NOW + MAX_PATH_LIFETIME_MS + CLOCK_SKEW_ALLOWANCE_MS
    [(_, built)] = net.cores["mem:r0"].receive("in:owner", build_cell(net, latest), NOW)
    assert net.cores["mem:r0"].stats.builds == 1
    with pytest.raises(ValueError, match="lives at most"):
        Path.build(net.contacts, NOW, MAX_PATH_LIFETIME_MS + 1)
    assert built


# --- introset store limits --------------------------------------------------------------------

OWNER = KeyPair.from_seed(b"\x09" * 32)


def introset(n: int, expiry_ms: int = NOW + 60_000) -> bytes:
    """Introset number ``n`` (each at its own location: a different epoch's key)."""
    return seal_introset(rendezvous_keys(SECRET, OWNER.public, n), OWNER, [], expiry_ms)


def status(response: bytes) -> DhtStatus:
    return DhtStatus(response[0])


def dht_put(relay: RelayCore, link: str, record: bytes) -> DhtStatus:
    """One PUT from a neighbour over ``link``, as a DHT_REQUEST cell; the answer's status."""
    body = frame_payload(put_request(record), CELL_BODY_BYTES)
    token = new_path_id()
    [(back, answer)] = relay.receive(link, make_cell(CellKind.DHT_REQUEST, token, body), NOW)
    cell = decode_cell(answer)
    assert back == link and cell.kind is CellKind.DHT_RESPONSE and cell.id == token
    return status(unframe_payload(cell.body))


def test_a_link_past_its_share_is_refused_while_another_is_served() -> None:
    keys = KeyPair.from_seed(b"\x01" * 32)
    store = IntrosetStore(max_items=10, max_per_link=3)
    relay = RelayCore(keys, {}, store=store)
    assert [dht_put(relay, "in:flood", introset(n)) for n in range(4)] == [
        DhtStatus.STORED,
        DhtStatus.STORED,
        DhtStatus.STORED,
        DhtStatus.FULL,
    ]
    assert dht_put(relay, "in:honest", introset(10)) is DhtStatus.STORED
    # a republication replaces its own introset, within the same share
    assert dht_put(relay, "in:flood", introset(0, NOW + 90_000)) is DhtStatus.STORED
    assert len(store) == 4 and store.refused_full == 1
    location = rendezvous_keys(SECRET, OWNER.public, 10).location
    assert status(store.handle("in:flood", get_request(location), NOW)) is DhtStatus.FOUND


def test_the_store_holds_no_more_than_its_total() -> None:
    store = IntrosetStore(max_items=5, max_per_link=2)
    answers = [status(store.handle(f"in:{n}", put_request(introset(n)), NOW)) for n in range(8)]
    assert answers == [DhtStatus.STORED] * 5 + [DhtStatus.FULL] * 3
    assert len(store) == 5


def test_expired_introsets_leave_and_free_their_links_share() -> None:
    store = IntrosetStore(max_items=10, max_per_link=3)
    for n in range(3):
        store.handle("in:1", put_request(introset(n, NOW + 10_000 * (n + 1))), NOW)
    # introset 0 republished with a later expiry: its first expiry must not remove it
    store.handle("in:1", put_request(introset(0, NOW + 40_000)), NOW + 5_000)
    assert status(store.handle("in:1", put_request(introset(3)), NOW + 5_000)) is DhtStatus.FULL
    store.expire(NOW + 25_000)
    assert len(store) == 2  # introset 1 is gone, 0 (republished) and 2 are not
    location = rendezvous_keys(SECRET, OWNER.public, 0).location
    found = store.handle("in:2", get_request(location), NOW + 25_000)
    assert status(found) is DhtStatus.FOUND
    fresh = introset(3, NOW + 60_000)
    assert status(store.handle("in:1", put_request(fresh), NOW + 25_000)) is DhtStatus.STORED
    store.expire(NOW + 40_000)
    assert len(store) == 1  # only introset 3 is left


# --- receive loops outlive a bad record --------------------------------------------------------


async def test_a_packet_that_breaks_its_handler_is_dropped_and_the_endpoint_goes_on(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An INIT whose handling fails in a way nobody foresaw (here: made to) costs that
    packet only; the endpoint keeps its paths and takes the retransmitted INIT."""
    respond = SessionCore.respond
    failures: list[int] = []

    def respond_failing_once(
        local: KeyPair, packet: bytes, now_ms: int, **admission: Any
    ) -> SessionCore:
        if not failures:
            failures.append(now_ms)
            raise RuntimeError("a decoder bug")
        return respond(local, packet, now_ms, **admission)

    monkeypatch.setattr(SessionCore, "respond", staticmethod(respond_failing_once))
    network = MemoryNetwork(seed=9)
    clock = Clock(NOW)
    async with open_relays(network, 8, clock=clock, seed=9) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(ALICE, network, directory, clock=clock, seed=1) as alice,
            open_endpoint(BOB, network, directory, clock=clock, seed=2) as bob,
        ):
            assert await bob.publish(SECRET) >= 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await exchange(session, 2)
    assert failures and bob.stats.cells_dropped >= 1


def test_a_remembered_signature_vouches_for_its_own_bytes_only() -> None:
    """The verification cache must not turn one good signature into a pass for another
    message, another key or another signature."""
    signer, other = KeyPair.from_seed(b"s" * 32), KeyPair.from_seed(b"o" * 32)
    signature = signer.sign(b"announce: node at ws://a")
    assert verify(signer.public, b"announce: node at ws://a", signature)
    assert verify(signer.public, b"announce: node at ws://a", signature)  # now remembered
    assert not verify(signer.public, b"announce: node at ws://b", signature)
    assert not verify(other.public, b"announce: node at ws://a", signature)
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(signer.public, b"announce: node at ws://a", forged)


def test_the_verification_cache_forgets_the_oldest_past_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(overlay.keys, "VERIFIED_CACHE_ENTRIES", 8)
    signer = KeyPair.from_seed(b"c" * 32)
    for i in range(20):
        message = f"m{i}".encode()
        assert verify(signer.public, message, signer.sign(message))
        assert overlay.keys.cached_verifications() <= 8
    assert overlay.keys.cached_verifications() == 8
