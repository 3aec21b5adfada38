"""Endpoints, relays, introsets and sessions together on a MemoryNetwork, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from overlay.cells import CellKind, decode_cell
from overlay.clock import TEST_EPOCH_MS, Clock
from overlay.constants import (
    DEFAULT_PATH_LIFETIME_MS,
    INTROSET_LIFETIME_MS,
    INTROSET_REPLICAS,
    MAX_SESSIONS_PER_PEER,
    SESSION_INIT_FRESHNESS_MS,
)
from overlay.endpoint import Endpoint, open_endpoint
from overlay.introset import Intro
from overlay.keys import KeyPair
from overlay.link import LinkProfile, MemoryNetwork, TcpTransport
from overlay.path import freshest
from overlay.relay import open_relays
from overlay.relay_core import RelayCore
from overlay.session import SessionCore, SessionError
from overlay.session_driver import Session, SessionClosed

SECRET = bytes(range(32))
ALICE = b"\x0a" * 32
BOB = b"\x0b" * 32


async def test_siblings_find_each_other_and_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=1, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 10, clock=clock, seed=1) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(ALICE, network, directory, clock=clock, seed=1) as alice,
            open_endpoint(BOB, network, directory, clock=clock, seed=2) as bob,
        ):
            await alice.wait_ready(2)
            await bob.wait_ready(2)
            assert await bob.publish(SECRET) >= 3
            received: list[bytes] = []

            async def accept() -> None:
                async for session in bob.sessions():
                    assert session.peer == alice.public_key
                    async for message in session:
                        received.append(message)
                        await session.send(b"echo:" + message[:10])
                    await session.aclose()
                    return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    big = bytes(range(256)) * 256
                    await session.send(b"hello")
                    assert await session.receive() == b"echo:hello"
                    await session.send(big)
                    assert await session.receive() == b"echo:" + big[:10]
            assert received == [b"hello", big]


async def exchange(alice_session: Session, count: int) -> None:
    for i in range(count):
        await alice_session.send(b"m%d" % i + bytes(1500 * (i % 3)))
        assert (await alice_session.receive()).startswith(b"echo:m%d" % i)


async def echo_one(bob: Endpoint, accepted: list[Session] | None = None) -> None:
    """Echo the first session ``bob`` accepts (kept in ``accepted``) until it closes."""
    async for session in bob.sessions():
        if accepted is not None:
            accepted.append(session)
        async for message in session:
            await session.send(b"echo:" + message[:10])
        await session.aclose()
        return


async def test_lossy_links_still_deliver(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=3, default_profile=LinkProfile(latency_ms=10, loss=0.03))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 12, clock=clock, seed=3) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(ALICE, network, directory, clock=clock, seed=5) as alice,
            open_endpoint(BOB, network, directory, clock=clock, seed=6) as bob,
        ):
            assert await bob.publish(SECRET) >= 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await exchange(session, 30)


@asynccontextmanager
async def ready_pair(
    network: MemoryNetwork, relays: int, *, seed: int, endpoint_seeds: tuple[int, int]
) -> AsyncIterator[tuple[Endpoint, Endpoint, Clock]]:
    """``relays`` relays on ``network`` and Alice's and Bob's endpoints, both with their
    paths built and Bob's introset published under ``SECRET``."""
    keys = [(ALICE, endpoint_seeds[0]), (BOB, endpoint_seeds[1])]
    async with ready_endpoints(network, relays, seed=seed, keys=keys) as ([alice, bob], clock):
        yield alice, bob, clock


@asynccontextmanager
async def ready_endpoints(
    network: MemoryNetwork, relays: int, *, seed: int, keys: list[tuple[bytes, int]]
) -> AsyncIterator[tuple[list[Endpoint], Clock]]:
    """``relays`` relays on ``network`` and an endpoint per key (with its seed), each with
    its paths built; the second is Bob's, whose introset is published under ``SECRET``."""
    clock = Clock(TEST_EPOCH_MS)
    async with (
        open_relays(network, relays, clock=clock, seed=seed) as infos,
        AsyncExitStack() as stack,
    ):
        directory = [r.contact for r in infos]
        endpoints = [
            await stack.enter_async_context(
                open_endpoint(key, network, directory, clock=clock, seed=endpoint_seed)
            )
            for key, endpoint_seed in keys
        ]
        for endpoint in endpoints:
            await endpoint.wait_ready(2)
        await endpoints[1].publish(SECRET)
        yield endpoints, clock


async def test_dead_relay_is_routed_around(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5))
    async with ready_pair(network, 16, seed=4, endpoint_seeds=(7, 8)) as (alice, bob, _):
        bob_relays = {h.pubkey for p in bob.paths for h in p.hops}
        victim_path, victim = next(
            (p, h) for p in alice.paths for h in p.hops[1:] if h.pubkey not in bob_relays
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_one, bob)
            async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                await exchange(session, 3)
                network.set_down(victim.address)
                await exchange(session, 10)  # carried on while the path fails
                while victim_path in alice.paths or len(alice.paths) < 2:
                    await alice.paths_changed()
                await alice.wait_ready(2)
                assert all(victim not in p.hops for p in alice.paths)
                await exchange(session, 3)


@pytest.mark.parametrize("hops", [1, 8])
async def test_path_length_is_configurable(
    hops: int, autojump_clock: trio.testing.MockClock
) -> None:
    network = MemoryNetwork(seed=5)
    async with open_relays(network, 9, seed=5) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(ALICE, network, directory, hops=hops, seed=1) as alice,
            open_endpoint(BOB, network, directory, hops=hops, seed=2) as bob,
        ):
            await bob.publish(SECRET)
            assert all(len(p.hops) == hops for p in alice.paths)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await exchange(session, 3)


async def test_over_tcp_loopback() -> None:
    transport = TcpTransport()
    with trio.fail_after(20):
        async with open_relays(transport, 5, seed=9) as relays:
            assert all(r.contact.address.startswith("127.0.0.1:") for r in relays)
            directory = [r.contact for r in relays]
            async with (
                open_endpoint(ALICE, transport, directory, seed=1) as alice,
                open_endpoint(BOB, transport, directory, seed=2) as bob,
            ):
                await bob.publish(SECRET)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(echo_one, bob)
                    async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                        await exchange(session, 5)


async def test_session_survives_the_loss_of_the_peers_intro_relays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=6, default_profile=LinkProfile(latency_ms=5))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 16, clock=clock, seed=6) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(ALICE, network, directory, clock=clock, seed=9) as alice,
            open_endpoint(BOB, network, directory, clock=clock, seed=10) as bob,
        ):
            await alice.wait_ready(2)
            await bob.publish(SECRET)
            alice_relays = {h.pubkey for p in alice.paths for h in p.hops}
            bob_terminals = [p.terminal for p in bob.paths]
            assert not alice_relays & {t.pubkey for t in bob_terminals}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await exchange(session, 3)
                    for terminal in bob_terminals:
                        network.set_down(terminal.address)
                    start = trio.current_time()
                    await exchange(session, 5)
                    assert trio.current_time() - start < 30
                    assert all(p.terminal not in bob_terminals for p in bob.paths)


async def test_a_middle_relay_learns_neither_endpoint_nor_sizes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=8)
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 10, clock=clock, seed=8) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(
                ALICE, network, directory, clock=clock, seed=3, local_name="alice-host"
            ) as alice,
            open_endpoint(
                BOB, network, directory, clock=clock, seed=4, local_name="bob-host"
            ) as bob,
        ):
            await alice.wait_ready(2)
            await bob.publish(SECRET)
            middle = next(r for r in relays if r.contact == alice.paths[0].hops[1])
            view: list[tuple[str, bytes]] = []
            receive = middle.core.receive

            def tapped(
                link: str, data: bytes, now_ms: int, *, peer: str = ""
            ) -> list[tuple[str, bytes]]:
                sends = receive(link, data, now_ms, peer=peer)
                view.append((link, data))
                view.extend(sends)
                return sends

            middle.core.receive = tapped  # type: ignore[method-assign]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    for size in (1, 100, 1000, 5000):
                        await session.send(b"s" * size)
                        await session.receive()
    assert len(view) > 20
    assert {len(data) for _, data in view} == {len(view[0][1])}
    secrets = [b"alice-host", b"bob-host", alice.public_key, bob.public_key, b"sssss"]
    secrets += [alice.keys.x25519_public, bob.keys.x25519_public]
    assert not [s for s in secrets for _, data in view if s in data]
    relay_addresses = {f"out:{r.contact.address}" for r in relays}
    assert all(link.startswith("in:") or link in relay_addresses for link, _ in view)


async def test_paths_are_replaced_before_they_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork(seed=9, default_profile=LinkProfile(latency_ms=5))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 8, clock=clock, seed=9) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(ALICE, network, directory, clock=clock, seed=1) as alice,
            open_endpoint(BOB, network, directory, clock=clock, seed=2) as bob,
        ):
            await alice.wait_ready(2)
            await bob.publish(SECRET)
            first = set(map(id, alice.paths + bob.paths))
            # Deterministic: virtual time crosses the 10-minute path lifetime.
            await trio.sleep(DEFAULT_PATH_LIFETIME_MS / 1000 + 1)
            now = clock.now_ms()
            assert not first & set(map(id, alice.paths + bob.paths))
            assert all(p.usable(now) for p in alice.paths)
            assert sum(p.usable(now) for p in bob.paths) >= 2
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await exchange(session, 3)


async def test_closing_after_the_peer_left_does_not_wait_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bob says goodbye and his endpoint goes down; Alice's close returns once her FIN is
    on its way instead of waiting out the retransmissions to a peer that is gone."""
    network = MemoryNetwork(seed=3, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 10, clock=clock, seed=3) as relays:
        directory = [r.contact for r in relays]
        async with open_endpoint(ALICE, network, directory, clock=clock, seed=1) as alice:
            await alice.wait_ready(2)
            bob_gone = trio.Event()

            async def run_bob(*, task_status: trio.TaskStatus[bytes]) -> None:
                async with open_endpoint(BOB, network, directory, clock=clock, seed=2) as bob:
                    await bob.wait_ready(2)
                    await bob.publish(SECRET)
                    task_status.started(bob.public_key)
                    async for session in bob.sessions():
                        await session.send(b"bye")
                        await session.leave()
                        break
                    await trio.sleep(1)  # the FIN gets there before the endpoint goes
                bob_gone.set()

            async with trio.open_nursery() as nursery:
                bob_key = await nursery.start(run_bob)
                async with alice.connect(bob_key, shared_secret=SECRET) as session:
                    assert await session.receive() == b"bye"
                    with pytest.raises(SessionClosed):
                        await session.receive()
                    await bob_gone.wait()
                    await session.send(b"too late")
                    started = trio.current_time()
                assert trio.current_time() - started < 1.0


async def until_no_sessions(endpoint: Endpoint, *, limit_s: float) -> None:
    """Wait in virtual time until every session of ``endpoint`` has ended and its driver
    is gone (the endpoint has no event for that, so poll)."""
    with trio.fail_after(limit_s):
        while endpoint.session_count:  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_a_replayed_init_opens_no_session(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An INIT played again after its session closed (as a relay on the path could) is
    refused: within the freshness window by the replay cache, after it as stale."""
    inits: list[bytes] = []
    respond = SessionCore.respond

    def recording(local: KeyPair, packet: bytes, now_ms: int, **admission: Any) -> SessionCore:
        core = respond(local, packet, now_ms, **admission)
        inits.append(packet)  # only INITs that open a session, not stray packets
        return core

    monkeypatch.setattr(SessionCore, "respond", staticmethod(recording))
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    async with ready_pair(network, 10, seed=4, endpoint_seeds=(1, 2)) as (alice, bob, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_one, bob)
            async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                await exchange(session, 2)
        [init] = inits
        await until_no_sessions(bob, limit_s=60)
        assert bob.stats.sessions_accepted == 1
        bob.deliver_packet(init)
        assert bob.stats.inits_replayed == 1
        assert len(inits) == 1  # refused on its bytes, before any Diffie-Hellman
        await trio.sleep(SESSION_INIT_FRESHNESS_MS / 1000)
        bob.deliver_packet(init)
        assert bob.stats.inits_stale == 1
        assert bob.stats.sessions_accepted == 1 and bob.session_count == 0


async def test_an_endpoint_takes_sessions_only_from_the_peers_it_admits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bob takes sessions from Alice and Carol: Alice connects. Then from Carol alone:
    Alice's INITs open nothing (refused once they show her key, and counted), and her
    connect fails."""
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    carol = KeyPair.from_seed(b"\x0c" * 32).public
    async with ready_pair(network, 10, seed=4, endpoint_seeds=(1, 2)) as (alice, bob, _):
        bob.accept_only(lambda peer: peer in (carol, alice.public_key))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_one, bob)
            async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                await exchange(session, 2)
        assert bob.stats.sessions_accepted == 1 and bob.stats.inits_refused == 0
        await until_no_sessions(bob, limit_s=60)
        bob.accept_only(lambda peer: peer == carol)
        with pytest.raises(SessionError, match="handshake timed out"):
            async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                await session.send(b"let me in")
        assert bob.stats.inits_refused >= 1
        assert bob.stats.sessions_accepted == 1 and bob.session_count == 0


async def test_one_peer_holds_a_few_sessions_open_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Alice, whom Bob admits, opens session after session and never closes one: while
    she holds ``MAX_SESSIONS_PER_PEER`` open her next INIT is refused, so no one key fills
    the queue of sessions Bob has not taken yet (a sibling's burst closed the session the
    queue could not hold), nor his sessions; once hers end she opens one again."""
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    async with (
        ready_pair(network, 10, seed=4, endpoint_seeds=(1, 2)) as (alice, bob, _),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(serve_each, bob)
        async with AsyncExitStack() as held:
            for _ in range(MAX_SESSIONS_PER_PEER):
                await held.enter_async_context(alice.connect(bob.public_key, shared_secret=SECRET))
            with pytest.raises(SessionError, match="handshake timed out"):
                async with alice.connect(bob.public_key, shared_secret=SECRET):
                    pass
            assert bob.stats.inits_refused >= 1
            assert bob.session_count == MAX_SESSIONS_PER_PEER
        await until_no_sessions(bob, limit_s=60)
        async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
            await exchange(session, 2)
        nursery.cancel_scope.cancel()


async def test_an_endpoint_holds_so_many_sessions_open_at_most(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_OPEN_SESSIONS`` (3 here) an INIT is refused, whoever sends it: Carol,
    with no session of her own yet, is refused while Alice holds Bob's three."""
    monkeypatch.setattr("overlay.session_driver.MAX_OPEN_SESSIONS", 3)
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    keys = [(ALICE, 1), (BOB, 2), (b"\x0c" * 32, 3)]
    async with (
        ready_endpoints(network, 10, seed=4, keys=keys) as ([alice, bob, carol], _),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(serve_each, bob)
        async with AsyncExitStack() as held:
            for _ in range(3):
                await held.enter_async_context(alice.connect(bob.public_key, shared_secret=SECRET))
            with pytest.raises(SessionError, match="handshake timed out"):
                async with carol.connect(bob.public_key, shared_secret=SECRET):
                    pass
            assert bob.session_count == 3 and bob.stats.inits_refused >= 1
        await until_no_sessions(bob, limit_s=60)
        async with carol.connect(bob.public_key, shared_secret=SECRET) as session:
            await exchange(session, 2)
        nursery.cancel_scope.cancel()


async def serve_each(bob: Endpoint) -> None:
    """Echo every session ``bob`` accepts, each until it closes."""

    async def echo(session: Session) -> None:
        async for message in session:
            await session.send(b"echo:" + message[:10])
        await session.aclose()

    async with trio.open_nursery() as nursery:
        async for session in bob.sessions():
            nursery.start_soon(echo, session)


async def test_a_handshake_unanswered_at_one_intro_is_tried_at_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bob's freshest intro delivers nowhere (its relay keeps what it should hand on, or
    the intro is gone): Alice's handshake there gets no answer, and she tries his next
    one rather than failing (and dialling the same dead intro again)."""
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    async with ready_pair(network, 10, seed=4, endpoint_seeds=(1, 2)) as (alice, bob, _):
        [real, *_] = await alice.lookup(SECRET, bob.public_key)
        nowhere = Intro(real.relay, bytes(len(real.intro_id)), real.expiry_ms + 60_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_one, bob)
            async with alice.connect(bob.public_key, intros=[real, nowhere]) as session:
                await exchange(session, 2)
        assert alice.stats.sessions_opened == 2 and bob.stats.sessions_accepted == 1


async def test_a_goodbye_answering_the_peers_does_not_wait_for_a_peer_that_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Alice says goodbye and her endpoint goes down; Bob's FIN that answers hers can never
    be acknowledged, so his session must end after a few sends of it instead of
    retransmitting to nobody until ``SESSION_MAX_RETRIES`` gives up (9 minutes)."""
    network = MemoryNetwork(seed=5, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 10, clock=clock, seed=5) as relays:
        directory = [r.contact for r in relays]
        async with open_endpoint(BOB, network, directory, clock=clock, seed=2) as bob:
            await bob.wait_ready(2)
            await bob.publish(SECRET)
            async with open_endpoint(ALICE, network, directory, clock=clock, seed=1) as alice:
                await alice.wait_ready(2)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await session.send(b"hello, and goodbye")
                    await session.leave()
            async for accepted in bob.sessions():
                assert [message async for message in accepted] == [b"hello, and goodbye"]
                await accepted.aclose()
                break
            await until_no_sessions(bob, limit_s=60)


@pytest.mark.parametrize("seed", range(6))
async def test_an_idle_session_survives_both_sides_rebuilding_their_paths_at_once(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Endpoints started together replace their paths together. Each side announces its
    successors while its old paths still work, and must name a successor then (not any
    usable path in turn): otherwise, once the old paths expire, each side's announcement
    goes to the other's dead intro and an idle session stays stuck until a retransmission
    stalls and the introset is looked up again (seconds: a sibling's message missed live
    sync's 10 s grace and fell back to the swarm). With a 2-minute ping interval, as an
    idle phone has, nothing else is said in between."""
    network = MemoryNetwork(seed=seed, default_profile=LinkProfile(latency_ms=30, jitter_ms=50))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 8, clock=clock, seed=seed) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(
                ALICE, network, directory, clock=clock, seed=1, ping_interval_ms=120_000
            ) as alice,
            open_endpoint(
                BOB, network, directory, clock=clock, seed=2, ping_interval_ms=120_000
            ) as bob,
        ):
            await alice.wait_ready(2)
            await bob.publish(SECRET)
            accepted: list[Session] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_one, bob, accepted)
                async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                    await exchange(session, 1)
                    expiry = min(p.expiry_ms for p in alice.paths + bob.paths)
                    await clock.sleep_until_ms(expiry - 1000)
                    (bob_session,) = accepted
                    for owner, peer_view in ((alice, bob_session), (bob, session)):
                        latest = max(p.expiry_ms for p in owner.paths)
                        assert peer_view.peer_intro is not None
                        assert peer_view.peer_intro.expiry_ms == latest
                    await clock.sleep_until_ms(expiry + 2000)
                    start = trio.current_time()
                    await exchange(session, 1)
                    assert trio.current_time() - start < 2


async def test_a_lookup_of_a_sibling_that_published_nothing_asks_each_replica_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A replica's "not found" is an answer: looking up an offline sibling must not cost
    ``DHT_ATTEMPTS`` rounds of every replica of two epochs (the idle cost of a device whose
    sibling is away)."""
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 8, clock=clock, seed=4) as relays:
        directory = [r.contact for r in relays]
        async with open_endpoint(ALICE, network, directory, clock=clock) as alice:
            await alice.wait_ready(1)
            assert await alice.lookup(SECRET, BOB) == []
            assert sum(r.core.stats.dht_requests for r in relays) == 2 * INTROSET_REPLICAS


async def test_a_path_replacement_republishes_once_and_a_new_path_alone_does_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over one path lifetime both paths (built together) are replaced together: new
    paths are added (the published intros still work: no republish) and then the old ones
    dropped (their intros are dead: republish). With the slowest timer that is the first
    publish and one more; republishing on every change of the intro set made it three."""
    network = MemoryNetwork(seed=5, default_profile=LinkProfile(latency_ms=5))
    clock = Clock(TEST_EPOCH_MS)
    async with open_relays(network, 8, clock=clock, seed=5) as relays:
        directory = [r.contact for r in relays]
        async with (
            open_endpoint(
                BOB, network, directory, clock=clock, republish_ms=INTROSET_LIFETIME_MS // 2
            ) as bob,
            open_endpoint(ALICE, network, directory, clock=clock) as alice,
        ):
            await bob.wait_ready(2)
            await bob.publish(SECRET)
            await trio.sleep(DEFAULT_PATH_LIFETIME_MS / 1000 + 1)
            puts = sum(r.core.stats.dht_requests for r in relays)
            assert puts == 2 * INTROSET_REPLICAS
            live = {p.intro_id for p in bob.paths if p.usable(clock.now_ms())}
            found = await alice.lookup(SECRET, bob.public_key)
            assert found and {i.intro_id for i in found} <= live


async def test_a_path_whose_intro_keeps_what_it_should_deliver_is_retired(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay at Bob's freshest intro answers his path's pings and keeps what other
    relays hand it for the intro: every packet a peer sends him there. His probes of his
    own intros find it out: within a minute the path is retired, his introset names the
    relay no more, and Alice reaches him (without the probes he kept the path for its
    whole life, 10 minutes, and every session with him stalled)."""
    keeping: set[bytes] = set()
    receive = RelayCore.receive

    def keeps_transfers(
        core: RelayCore, link: str, data: bytes, now_ms: int, *, peer: str = ""
    ) -> Any:
        if core.keys.public in keeping and decode_cell(data).kind is CellKind.TRANSFER:
            return []
        return receive(core, link, data, now_ms, peer=peer)

    monkeypatch.setattr(RelayCore, "receive", keeps_transfers)
    network = MemoryNetwork(seed=4, default_profile=LinkProfile(latency_ms=5, jitter_ms=2))
    async with ready_pair(network, 10, seed=4, endpoint_seeds=(1, 2)) as (alice, bob, clock):
        intro = freshest(bob.paths, clock.now_ms())
        assert intro is not None
        keeping.add(intro.terminal.pubkey)
        await trio.sleep(60)
        assert not intro.usable(clock.now_ms()) and bob.stats.paths_failed == 1
        found = await alice.lookup(SECRET, bob.public_key)
        assert found and not {i.relay for i in found} & keeping
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_one, bob)
            async with alice.connect(bob.public_key, shared_secret=SECRET) as session:
                await exchange(session, 3)
