"""A relay dies under the siblings' open session while messages flow both ways.

Two paired siblings (phone, desktop; ``linked`` and ``mapped``) and a contact (bob) run on
the embedded network over the in-memory transport, with seeded latency and jitter, under
virtual time. With the siblings' direct session open, a relay that carries it is stopped
as a crash would stop it (links cut mid-stream, still listed in the registry) while all
three devices keep sending: one on the path by which each sibling is reached, when there
is one, so that both directions of the session break at once. Nobody then does anything
but wait, and:

* every message a device's ``send`` acknowledged (returned an id for) ends up in both
  siblings' histories and in bob's, and the siblings' histories are the same, within a
  bounded virtual time;
* the siblings hold a direct session again, on paths that leave the dead relay out (once
  a sibling has seen a path die, it builds none through that relay), and a message sent
  then is pushed over it, not left to the swarm fallback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay.contact import Contact
from overlay.endpoint import Endpoint
from overlay.endpoint_core import EndpointCore
from overlay.link import LinkProfile, MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import Device
from p2psync.network import LocalNetwork, open_local_network
from p2psync.services import AnnouncedRelay

from ..swarm.helpers import wait_until
from .conftest import SyncEndpoints
from .helpers import QUIET, siblings_and_friend

SEED = 7
#: Messages each device sends, one every ``GAP_S``; the relay dies after ``KILL_AFTER`` rounds.
ROUNDS = 8
GAP_S = 0.5
KILL_AFTER = 3
#: Virtual time, from the kill, within which everything must have converged again.
RECOVERY_S = 60
#: A message that arrives this soon was pushed over the session: a sync copy is stored
#: only once the 10 s grace period has passed. (Pushed, it takes tens of milliseconds, or
#: a few seconds while the session still resends what went into a path that just died.)
PUSHED_S = 9


@asynccontextmanager
async def open_seeded_world() -> AsyncIterator[LocalNetwork]:
    """Six nodes and eight relays on a memory network with seeded latency and jitter."""
    links = MemoryNetwork(seed=SEED, default_profile=LinkProfile(latency_ms=3, jitter_ms=4))
    async with open_local_network(
        6,
        relays=8,
        transport=links,
        clock=Clock(TEST_EPOCH_MS),
        node_config=QUIET,
        seed=SEED,
    ) as network:
        yield network


async def relay_carrying_session(
    network: LocalNetwork, endpoints: SyncEndpoints, phone: Device, desktop: Device
) -> AnnouncedRelay:
    """A relay on the path by which each sibling's session reaches the other (its peer's
    intro is that path's terminal hop), so that both directions break at once; if the two
    paths share no relay, the intro relay the phone's session delivers to."""
    reached_by: list[list[bytes]] = []
    for sender, receiver in ((phone, desktop), (desktop, phone)):
        sending, receiving = (endpoints[d.whoami().overlay_key] for d in (sender, receiver))
        # While a session replaces another there are two, the new one's intro still unknown.
        peer = receiving.public_key
        await wait_until(lambda e=sending, k=peer: len(e.sessions_with(k)) == 1)  # type: ignore[misc]
        [session] = sending.sessions_with(peer)
        intro = session.peer_intro
        assert intro is not None
        [path] = [p for p in receiving.paths if p.intro_id == intro.intro_id]
        reached_by.append([hop.pubkey for hop in path.hops])
    to_desktop, to_phone = reached_by
    shared = [key for key in to_desktop if key in to_phone]
    victim_key = shared[0] if shared else to_desktop[-1]
    [victim] = [r for r in network.relays if r.public_key == victim_key]
    return victim


def record_hop_choices(
    monkeypatch: pytest.MonkeyPatch, endpoints: SyncEndpoints, devices: Sequence[Device]
) -> dict[str, list[tuple[int, set[bytes]]]]:
    """From now on, for every path one of ``devices``' endpoints builds: how many of its
    paths had died young by then, and the relays it chose (by device name)."""
    by_stats = {id(endpoints[d.whoami().overlay_key].stats): d.whoami().name for d in devices}
    choices: dict[str, list[tuple[int, set[bytes]]]] = {name: [] for name in by_stats.values()}
    choose = EndpointCore.choose_hops

    def recording(core: EndpointCore) -> list[Contact]:
        hops = choose(core)
        name = by_stats.get(id(core.stats))
        if name is not None:
            choices[name].append((core.stats.paths_failed, {hop.pubkey for hop in hops}))
        return hops

    monkeypatch.setattr(EndpointCore, "choose_hops", recording)
    return choices


def routes_through(endpoint: Endpoint, relay: bytes) -> bool:
    return any(relay in {hop.pubkey for hop in path.hops} for path in endpoint.paths)


def view(sibling: Device) -> list[tuple[int, bytes, str, bool, str, str]]:
    """A device's whole history, as both siblings must come to hold it. (Which of the
    account's devices sent a message is left out: a sync copy does not say, so one filed
    from a ``linked`` sync copy is put down to the account.)"""
    return [
        (i.timestamp_ms, i.id, i.conversation, i.outgoing, i.sender, i.text)
        for i in sibling.history()
    ]


def ids(sibling: Device, conversation: str) -> set[bytes]:
    return {item.id for item in sibling.history(conversation)}


def holding(message: bytes, conversation: str) -> Callable[[Device], bool]:
    return lambda sibling: message in ids(sibling, conversation)


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_relay_killed_under_an_open_session_loses_nothing_and_heals(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    sync_endpoints: SyncEndpoints,
) -> None:
    def endpoint_of(sibling: Device) -> Endpoint:
        return sync_endpoints[sibling.whoami().overlay_key]

    async with (
        open_seeded_world() as network,
        siblings_and_friend(network, tmp_path, mode) as (phone, desktop, bob),
    ):
        await wait_until(
            lambda: (
                phone.sync_status().connected_siblings == {desktop.whoami().device_id}
                and desktop.sync_status().connected_siblings == {phone.whoami().device_id}
            )
        )
        alice, bob_id = phone.session_id, bob.session_id

        sent: list[bytes] = []  # every id a ``send`` acknowledged

        async def talk(sender: Device, to: str, label: str) -> None:
            for n in range(ROUNDS):
                sent.append(await sender.send(to, f"{label} {n}"))
                await trio.sleep(GAP_S)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk, phone, bob_id, "phone")
            nursery.start_soon(talk, desktop, bob_id, "desktop")
            nursery.start_soon(talk, bob, alice, "bob")
            await trio.sleep(KILL_AFTER * GAP_S + GAP_S / 3)  # mid-stream
            assert 0 < len(sent) < 3 * ROUNDS
            assert phone.sync_status().connected_siblings == {desktop.whoami().device_id}
            victim = await relay_carrying_session(network, sync_endpoints, phone, desktop)
            victim_key = victim.public_key
            failed_before = {
                d.whoami().name: endpoint_of(d).stats.paths_failed for d in (phone, desktop)
            }
            choices = record_hop_choices(monkeypatch, sync_endpoints, (phone, desktop))
            await network.stop_relay(victim)
            killed_at = trio.current_time()
        assert len(sent) == len(set(sent)) == 3 * ROUNDS

        # Nobody steps in: every acknowledged message reaches all three devices.
        await wait_until(
            lambda: ids(phone, bob_id) == ids(desktop, bob_id) == ids(bob, alice) == set(sent),
            limit_s=RECOVERY_S,
        )
        assert trio.current_time() - killed_at < RECOVERY_S
        assert view(phone) == view(desktop)

        # The siblings sync directly again, on paths that leave the dead relay out.
        await wait_until(
            lambda: (
                phone.sync_status().connected_siblings == {desktop.whoami().device_id}
                and desktop.sync_status().connected_siblings == {phone.whoami().device_id}
                and not routes_through(endpoint_of(phone), victim_key)
                and not routes_through(endpoint_of(desktop), victim_key)
            ),
            limit_s=RECOVERY_S,
        )
        assert trio.current_time() - killed_at < RECOVERY_S
        # Once a sibling has seen a path die, it builds no more through the dead relay.
        assert endpoint_of(desktop).stats.paths_failed > failed_before["desktop"]
        for name, made in choices.items():
            after = [hops for failed, hops in made if failed > failed_before[name]]
            assert all(victim_key not in hops for hops in after), name

        for sender, receiver in ((phone, desktop), (desktop, phone)):
            message = await sender.send(bob_id, f"after the crash, from {sender.whoami().name}")
            with trio.fail_after(PUSHED_S):
                await receiver.wait_for(holding(message, bob_id))
        assert not (phone.rejections or desktop.rejections or bob.rejections)
