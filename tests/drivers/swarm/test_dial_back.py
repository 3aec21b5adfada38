"""The registry lists an address only once it has reached the announcer there: a staked
node or relay cannot list someone else's address (or one nothing serves), and cannot
turn the registry's dials against others (held slots, probing, a relay's contact
elsewhere than its url)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from overlay.contact import make_contact
from overlay.keys import KeyPair
from overlay.link import Link, MemoryNetwork, TcpTransport, Transport
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import ConnectionLost, RpcError
from p2psync.identity import Identity
from p2psync.rpc import open_rpc
from p2psync.swarm.admission import Ledger
from p2psync.swarm.constants import CLOCK_SKEW_MS
from p2psync.swarm.dial_back import DIAL_BACK_TIMEOUT_S, MAX_DIALS, DialBack
from p2psync.swarm.directory import ANNOUNCE_TIMEOUT_S, RegistryDirectory
from p2psync.swarm.listing import (
    ANNOUNCEMENT_TTL_MS,
    DIAL_RETRY_MS,
    Snapshot,
    may_dial_again,
    needs_dial_back,
    sign_announcement,
)
from p2psync.swarm.registry import RegistryServer
from p2psync.websocket import WebSocketTransport

LEDGER = Ledger(Identity.from_label("dial-back-ledger"))
ROGUE = Identity.from_label("dial-back-rogue")
VICTIM = Identity.from_label("dial-back-victim")


def _registration(identity: Identity) -> bytes:
    return LEDGER.register(identity.ed25519_public.hex()).encode()


def test_an_address_is_reached_again_only_when_new_changed_or_expired() -> None:
    now = TEST_EPOCH_MS
    listed = (now + ANNOUNCEMENT_TTL_MS, {"url": "mem:a"}, b"")
    assert needs_dial_back(None, "mem:a", now)
    assert not needs_dial_back(listed, "mem:a", now)
    assert needs_dial_back(listed, "mem:b", now)
    assert needs_dial_back(listed, "mem:a", now + ANNOUNCEMENT_TTL_MS)
    assert needs_dial_back(listed, "mem:a", now, reached=False)  # read back after a restart


def test_an_announcer_the_registry_failed_to_reach_waits_before_it_is_dialled_again() -> None:
    now = TEST_EPOCH_MS
    assert may_dial_again(None, now)
    assert not may_dial_again(now - DIAL_RETRY_MS + 1, now)
    assert may_dial_again(now - DIAL_RETRY_MS, now)


def test_a_relay_url_pinning_another_key_is_left_out_by_readers() -> None:
    """A relay serves TLS as its own key too, so its ``host:port#<key>`` must pin it."""
    now = TEST_EPOCH_MS
    victim_url = f"10.0.0.1:7000#{VICTIM.ed25519_public.hex()}"
    announcements = [
        sign_announcement(VICTIM, "relay", victim_url, now),
        sign_announcement(ROGUE, "relay", victim_url, now),
        sign_announcement(ROGUE, "relay", "10.0.0.2:7000#" + "zz" * 32, now),
    ]
    snapshot = Snapshot.from_announcements({"announcements": announcements}, now, ledger=None)
    assert [(r.pubkey, r.url) for r in snapshot.relays] == [
        (VICTIM.ed25519_public.hex(), victim_url)
    ]


def test_a_relays_contact_must_be_its_own_key_at_its_own_url() -> None:
    """Devices build paths from the contact, so a contact elsewhere (or of another key)
    would make the dial back, and the admission, check something devices never use."""
    now = TEST_EPOCH_MS
    own = KeyPair.from_seed(ROGUE.seed)
    other = KeyPair.from_seed(Identity.from_label("unadmitted").seed)
    contacts = {
        "own": make_contact(own, "mem:rogue", now),
        "another key": make_contact(other, "mem:rogue", now),
        "another address": make_contact(own, "mem:victim", now),
    }
    listed = {
        name: Snapshot.from_announcements(
            {"announcements": [sign_announcement(ROGUE, "relay", "mem:rogue", now, c.encode())]},
            now,
            ledger=None,
        ).relays
        != ()
        for name, c in contacts.items()
    }
    assert listed == {"own": True, "another key": False, "another address": False}


#: How long a dial to an address under ``mem:slow`` takes to connect.
SLOW_S = 3.0


class _Dials(Transport):
    """The memory network as the registry dials it, counting dials; a dial to an address
    under ``mem:hang`` never completes (a port that takes the connection and then stays
    silent), one under ``mem:slow`` takes ``SLOW_S``, and ``mem:bad`` is malformed."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.dials: list[str] = []

    async def serve(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[Link]:
        self.dials.append(address)
        if address.startswith("mem:hang"):
            await trio.sleep_forever()
        if address.startswith("mem:slow"):
            await trio.sleep(SLOW_S)
        if address.startswith("mem:bad"):
            raise ValueError(f"not an address: {address!r}")
        async with self.network.connect(address) as link:
            yield link

    def for_overlay(self) -> Transport:
        return self


class _PinnedDials(_Dials):
    """:class:`_Dials` as a network whose links are TLS: the registry checks urls."""

    @property
    def pins_keys(self) -> bool:
        return True


async def _hang_up(link: Link) -> None:
    """Serves an address and nothing more."""


@asynccontextmanager
async def _registry(
    clock: Clock,
    capacity: int = 100,
    *,
    network: MemoryNetwork | None = None,
    state_path: Path | None = None,
) -> AsyncIterator[tuple[MemoryNetwork, _Dials, RegistryServer, RegistryDirectory, trio.Nursery]]:
    network = network or MemoryNetwork()
    dials = _Dials(network)
    registry = RegistryServer(
        clock, state_path, ledger=LEDGER.public_key, dial_back=dials, capacity=capacity
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(registry.serve, network, "mem:registry")
        yield (
            network,
            dials,
            registry,
            RegistryDirectory(network, url, clock, LEDGER.public_key),
            nursery,
        )
        nursery.cancel_scope.cancel()


async def _announce(directory: RegistryDirectory, who: Identity, url: str) -> None:
    await directory.announce(who, "relay", url, registration=_registration(who))


async def test_an_address_is_listed_once_reached_and_reached_again_when_it_changes_or_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (network, dials, registry, directory, nursery):
        with pytest.raises(RpcError) as refused:
            await _announce(directory, ROGUE, "mem:nobody")
        # Refused without the cause: that would say what answers at the address.
        assert refused.value.code == "unavailable"
        assert refused.value.message == "the registry could not reach the announced url"
        # Its key waits, whatever kind it announces as (one stake, one budget of dials).
        with pytest.raises(RpcError, match="lately"):
            await directory.announce(ROGUE, "node", "mem:nobody", registration=_registration(ROGUE))
        assert registry.snapshot().announcements == ()
        for address in ("mem:rogue", "mem:moved"):
            await nursery.start(network.serve, _hang_up, address)
        clock.skip_idle(DIAL_RETRY_MS)  # past the wait after a failed dial
        dials.dials.clear()
        await _announce(directory, ROGUE, "mem:rogue")
        await _announce(directory, ROGUE, "mem:rogue")
        assert [r.url for r in registry.snapshot().relays] == ["mem:rogue"]
        assert dials.dials == ["mem:rogue"]  # the repeat at the same address is not dialled
        await _announce(directory, ROGUE, "mem:moved")
        clock.skip_idle(ANNOUNCEMENT_TTL_MS)
        await _announce(directory, ROGUE, "mem:moved")
        assert dials.dials == ["mem:rogue", "mem:moved", "mem:moved"]
        assert [r.url for r in registry.snapshot().relays] == ["mem:moved"]


async def test_an_unreachable_announcer_is_not_dialled_again_for_a_while(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One failed dial, then refusals without a dial until DIAL_RETRY_MS passed: nobody
    probes addresses through the registry faster than that per key."""
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (_, dials, _, directory, _):
        for _ in range(3):
            with pytest.raises(RpcError):
                await _announce(directory, ROGUE, "mem:nobody")
        assert dials.dials == ["mem:nobody"]
        clock.skip_idle(DIAL_RETRY_MS)
        with pytest.raises(RpcError):
            await _announce(directory, ROGUE, "mem:nobody")
        assert dials.dials == ["mem:nobody"] * 2


async def test_held_dials_keep_no_one_waiting_past_the_timeout_and_one_key_dials_once_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Announcers whose addresses take the connection and stay silent hold every dial
    slot: a second announcement of one of them (as any kind) is refused at once, an
    honest newcomer is told the registry is busy within the dial timeout, and, never
    dialled, is listed as soon as a slot is free: nothing is held against it."""
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (network, dials, registry, directory, nursery):
        rogues = [Identity.from_label(f"holder-{i}") for i in range(MAX_DIALS)]
        refused_after = []

        async def hold(rogue: Identity) -> None:
            started = trio.current_time()
            with pytest.raises(RpcError, match="could not reach"):
                await _announce(directory, rogue, f"mem:hang-{rogue.session_id[:8]}")
            refused_after.append(trio.current_time() - started)

        for rogue in rogues:
            nursery.start_soon(hold, rogue)
        await trio.testing.wait_all_tasks_blocked()
        assert len(dials.dials) == MAX_DIALS
        for kind in ("relay", "node"):
            with pytest.raises(RpcError, match="still reaching"):
                await directory.announce(
                    rogues[0], kind, "mem:elsewhere", registration=_registration(rogues[0])
                )
        await nursery.start(network.serve, _hang_up, "mem:honest")
        started = trio.current_time()
        with pytest.raises(RpcError, match="busy"):
            await _announce(directory, VICTIM, "mem:honest")
        assert trio.current_time() - started <= DIAL_BACK_TIMEOUT_S
        await trio.testing.wait_all_tasks_blocked()
        assert refused_after == [DIAL_BACK_TIMEOUT_S] * MAX_DIALS
        await _announce(directory, VICTIM, "mem:honest")  # no wait after a busy refusal
        assert [r.url for r in registry.snapshot().relays] == ["mem:honest"]


async def test_a_failed_dial_is_answered_at_the_same_time_whatever_made_it_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Refused at once, silent, or malformed: the same words after the same time, so the
    answer tells nothing of what is at the address."""
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (_, _, _, directory, _):
        for index, address in enumerate(("mem:nobody", "mem:hang", "mem:bad")):
            who = Identity.from_label(f"prober-{index}")
            started = trio.current_time()
            with pytest.raises(RpcError) as refused:
                await _announce(directory, who, address)
            assert (refused.value.code, refused.value.message) == (
                "unavailable",
                "the registry could not reach the announced url",
            )
            assert trio.current_time() - started == pytest.approx(DIAL_BACK_TIMEOUT_S)


async def test_an_announcer_that_hangs_up_mid_dial_waits_as_one_that_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The wait counts from each dial's start: hanging up before the answer does not
    buy the next dial sooner, so silent addresses cannot be probed faster either."""
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (_, dials, _, directory, _):
        for index in range(3):
            with trio.move_on_after(0.5), contextlib.suppress(RpcError):
                await _announce(directory, ROGUE, f"mem:hang-{index}")
            await trio.testing.wait_all_tasks_blocked()
        assert dials.dials == ["mem:hang-0"]


async def test_an_announcement_that_aged_during_its_dial_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (network, _, registry, directory, nursery):
        await nursery.start(network.serve, _hang_up, "mem:slow")
        made = clock.now_ms() - CLOCK_SKEW_MS + 1_000  # fresh for a second more
        record = sign_announcement(
            ROGUE, "relay", "mem:slow", made, registration=_registration(ROGUE)
        )
        async with open_rpc(network, directory.url) as client:
            with pytest.raises(RpcError) as refused:
                await client.call("announce", record)
        assert refused.value.code == "clock_skew"
        assert registry.snapshot().announcements == ()


async def test_expired_entries_make_room_in_a_full_registry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock, capacity=2) as (network, _, registry, directory, nursery):
        for name in ("mem:one", "mem:two", "mem:three"):
            await nursery.start(network.serve, _hang_up, name)
        await _announce(directory, Identity.from_label("one"), "mem:one")
        await _announce(directory, Identity.from_label("two"), "mem:two")
        with pytest.raises(RpcError, match="full"):
            await _announce(directory, Identity.from_label("three"), "mem:three")
        clock.skip_idle(ANNOUNCEMENT_TTL_MS)
        await _announce(directory, Identity.from_label("three"), "mem:three")
        assert [r.url for r in registry.snapshot().relays] == ["mem:three"]


async def test_a_restarted_registry_reaches_each_saved_entry_again_once(tmp_path: Path) -> None:
    """Entries read back from the state file stay listed, but their next announcement is
    dialled as a new one's would be: the address may serve someone else by now. (Trio's
    real clock: the state is saved on a worker thread, which a MockClock would jump past.)"""
    clock = Clock()
    network = MemoryNetwork()
    state = tmp_path / "registry.json"
    async with trio.open_nursery() as nursery:
        await nursery.start(network.serve, _hang_up, "mem:rogue")
        for _run in ("first", "after the restart"):
            async with _registry(clock, network=network, state_path=state) as listening:
                _, dials, registry, directory, _ = listening
                await _announce(directory, ROGUE, "mem:rogue")
                await _announce(directory, ROGUE, "mem:rogue")
                assert dials.dials == ["mem:rogue"]  # once a run, never for the repeat
                assert [r.url for r in registry.snapshot().relays] == ["mem:rogue"]
        nursery.cancel_scope.cancel()


async def _saved_registry(
    tmp_path: Path, network: MemoryNetwork, urls: dict[str, Identity]
) -> Path:
    """The state file of a registry that listed each announcer at its url (each served
    on ``network`` while it runs): what a restarted registry reads back."""
    state = tmp_path / "registry.json"
    async with trio.open_nursery() as nursery:
        for url in urls:
            await nursery.start(network.serve, _hang_up, url)
        async with _registry(Clock(), network=network, state_path=state) as listening:
            for url, who in urls.items():
                await _announce(listening[3], who, url)
        nursery.cancel_scope.cancel()
    return state


async def test_holding_the_dial_slots_after_a_restart_drains_no_saved_entry(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A saved entry's next announcement at its url needs a dial; one that finds every
    slot held until it gives up waiting renews the entry as before the restart (and is
    dialled later) instead of being told "busy" until the entry lapses. (Trio's clock
    moves only when the test moves it: the state file is saved on a worker thread, which
    a clock that jumps while tasks wait would race.)"""
    network = MemoryNetwork()
    state = await _saved_registry(tmp_path, network, {"mem:victim": VICTIM})
    async with trio.open_nursery() as serving:
        await serving.start(network.serve, _hang_up, "mem:victim")
        async with _registry(Clock(), network=network, state_path=state) as listening:
            _, dials, registry, directory, _ = listening
            holders = [Identity.from_label(f"slot-holder-{i}") for i in range(MAX_DIALS)]

            async def hold(holder: Identity) -> None:
                with pytest.raises(RpcError, match=r"could not reach the announced url$"):
                    await _announce(directory, holder, f"mem:hang-{holder.session_id[:8]}")

            async with trio.open_nursery() as holding:
                for holder in holders:
                    holding.start_soon(hold, holder)
                await trio.testing.wait_all_tasks_blocked()
                assert len(dials.dials) == MAX_DIALS
                holding.start_soon(_announce, directory, VICTIM, "mem:victim")
                await trio.testing.wait_all_tasks_blocked()
                # The victim gives up waiting for a slot as the holders' dials time out.
                mock_clock.jump(DIAL_BACK_TIMEOUT_S)
            assert [r.url for r in registry.snapshot().relays] == ["mem:victim"]  # renewed
            assert "mem:victim" not in dials.dials
            await _announce(directory, VICTIM, "mem:victim")
            assert dials.dials[-1] == "mem:victim"  # dialled once a slot is free
        serving.cancel_scope.cancel()


async def test_a_saved_entry_whose_url_no_longer_answers_is_dropped(tmp_path: Path) -> None:
    network = MemoryNetwork()
    state = await _saved_registry(tmp_path, network, {"mem:gone": ROGUE})
    async with _registry(Clock(), network=network, state_path=state) as listening:
        registry, directory = listening[2], listening[3]
        assert [r.url for r in registry.snapshot().relays] == ["mem:gone"]
        with pytest.raises(RpcError, match=r"could not reach the announced url$"):
            await _announce(directory, ROGUE, "mem:gone")
        assert registry.snapshot().relays == ()


async def test_saved_entries_are_checked_again_against_the_ranges_and_the_ledger(
    tmp_path: Path,
) -> None:
    """Read back from the state file, an entry the registry now refuses (in a range named
    since, or never admitted by the ledger it runs with now) is left out at once, not
    after its TTL."""
    state = tmp_path / "registry.json"
    network = MemoryNetwork()
    open_door = RegistryServer(Clock(), state, ledger=None, dial_back=None)
    urls = {
        ROGUE: f"wss://10.1.2.3:7000/{ROGUE.ed25519_public.hex()}",  # in a range refused later
        VICTIM: f"wss://192.0.2.1:7000/{VICTIM.ed25519_public.hex()}",  # admitted, outside
        Identity.from_label("never-admitted"): "wss://192.0.2.2:7000/"
        + Identity.from_label("never-admitted").ed25519_public.hex(),
    }
    async with trio.open_nursery() as nursery:
        address = await nursery.start(open_door.serve, network, "mem:registry")
        directory = RegistryDirectory(network, address, Clock(), None)
        for who, url in urls.items():
            admitted = who in (ROGUE, VICTIM)
            await directory.announce(
                who, "node", url, registration=_registration(who) if admitted else b""
            )
        nursery.cancel_scope.cancel()
    assert len(open_door.snapshot().nodes) == 3
    restarted = RegistryServer(
        Clock(),
        state,
        ledger=LEDGER.public_key,
        dial_back=_PinnedDials(network),
        refused=[ipaddress.ip_network("10.0.0.0/8")],
    )
    assert [n.url for n in restarted.snapshot().nodes] == [urls[VICTIM]]


async def test_the_registry_remembers_failed_dials_of_a_bounded_number_of_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed dials are remembered for ``remembered`` keys at most, the oldest forgotten
    first: announcers that never reach it cannot grow its memory."""
    clock = Clock(TEST_EPOCH_MS)
    dial_back = DialBack(_Dials(MemoryNetwork()), clock, remembered=2)
    keys = [Identity.from_label(f"unreachable-{i}").ed25519_public.hex() for i in range(3)]
    for key in keys:
        with pytest.raises(RpcError, match=r"could not reach the announced url$"):
            await dial_back.reach("relay", key, "mem:nobody")
    with pytest.raises(RpcError, match=r"lately$"):  # the newest two are remembered
        await dial_back.reach("relay", keys[2], "mem:nobody")
    with pytest.raises(RpcError, match=r"could not reach the announced url$"):  # forgotten
        await dial_back.reach("relay", keys[0], "mem:nobody")


async def test_a_replay_of_the_listed_announcement_renews_and_dials_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The listing shows every entry's signed announcement: sent again by anyone, it
    neither extends the entry's life nor makes the registry dial."""
    clock = Clock(TEST_EPOCH_MS)
    async with _registry(clock) as (network, dials, registry, directory, nursery):
        await nursery.start(network.serve, _hang_up, "mem:honest")
        await _announce(directory, VICTIM, "mem:honest")
        [listed] = registry.snapshot().announcements
        clock.skip_idle(30_000)
        async with open_rpc(network, directory.url) as rpc:
            answer = await rpc.call("announce", listed)
        assert answer == {"ttl_ms": ANNOUNCEMENT_TTL_MS - 30_000}
        assert dials.dials == ["mem:honest"]


async def test_an_announcer_gives_up_on_a_registry_that_does_not_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node or relay announces before it settles; a registry that takes the call and
    never answers must not hold it up for more than ANNOUNCE_TIMEOUT_S."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)

    async def silent(link: Link) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await nursery.start(network.serve, silent, "mem:silent")
        started = trio.current_time()
        with (
            trio.fail_after(2 * ANNOUNCE_TIMEOUT_S),
            pytest.raises(ConnectionLost, match="did not answer"),
        ):
            await _announce(RegistryDirectory(network, url, clock, None), ROGUE, "mem:rogue")
        assert trio.current_time() - started == pytest.approx(ANNOUNCE_TIMEOUT_S)
        nursery.cancel_scope.cancel()


async def test_a_registry_never_dials_into_a_range_its_operator_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``--refuse-dial``: an admitted announcer cannot make the registry connect into the
    operator's own network. Its announcement is answered as a failed dial is (the same
    words, at the same time, and the same wait before its key is dialled again), so the
    ranges cannot be mapped faster than addresses probed. Outside the ranges the same
    announcement is dialled as before (it fails: nothing serves there)."""
    network = MemoryNetwork()
    dials = _PinnedDials(network)
    refused = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    clock = Clock(TEST_EPOCH_MS)
    registry = RegistryServer(clock, ledger=LEDGER.public_key, dial_back=dials, refused=refused)
    key = ROGUE.ed25519_public.hex()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(registry.serve, network, "mem:registry")
        directory = RegistryDirectory(network, address, clock, LEDGER.public_key)

        async def announce(kind: str, url: str) -> None:
            await directory.announce(ROGUE, kind, url, registration=_registration(ROGUE))

        for kind, url in [
            ("node", f"wss://10.1.2.3:7000/{key}"),
            ("relay", f"[fd00::1]:7000#{key}"),
        ]:
            started = trio.current_time()
            with pytest.raises(RpcError, match=r"could not reach the announced url$") as no:
                await announce(kind, url)
            assert no.value.code == "unavailable"
            assert trio.current_time() - started == pytest.approx(DIAL_BACK_TIMEOUT_S)
            with pytest.raises(RpcError, match=r"lately$"):
                await announce(kind, url)
            clock.skip_idle(DIAL_RETRY_MS)
        # The IPv4 host inside an IPv6 address (mapped, compatible, NAT64, 6to4) is what a
        # dial reaches: those forms are refused whatever the ranges.
        for embedded in ["::ffff:10.1.2.3", "::10.1.2.3", "64:ff9b::a01:203", "2002:a01:203::1"]:
            with pytest.raises(RpcError, match="carries an IPv4 address") as no:
                await announce("node", f"wss://[{embedded}]:7000/{key}")
            assert no.value.code == "bad_request"
        assert dials.dials == []
        outside = f"wss://192.0.2.1:7000/{key}"
        with pytest.raises(RpcError, match=r"could not reach the announced url$"):
            await announce("node", outside)
        assert dials.dials == [outside]
        nursery.cancel_scope.cancel()


async def test_a_registry_of_plaintext_links_keeps_its_refused_ranges_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With ``--plain-links`` urls name no key, but the ranges hold as on TLS, and a host
    name (which could point inside one by the time it is dialled) is refused."""
    network = MemoryNetwork()
    dials = _Dials(network)
    refused = [ipaddress.ip_network("10.0.0.0/8")]
    registry = RegistryServer(
        Clock(TEST_EPOCH_MS), ledger=LEDGER.public_key, dial_back=dials, refused=refused
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(registry.serve, network, "mem:registry")
        directory = RegistryDirectory(network, address, Clock(TEST_EPOCH_MS), LEDGER.public_key)
        for url, code in [
            ("ws://10.1.2.3:7000", "unavailable"),
            ("ws://inside.example:7000", "bad_request"),
        ]:
            with pytest.raises(RpcError) as no:
                await directory.announce(ROGUE, "node", url, registration=_registration(ROGUE))
            assert no.value.code == code
        assert dials.dials == []
        nursery.cancel_scope.cancel()


async def test_a_stranger_learns_nothing_of_the_refused_ranges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Admission is checked first: an unadmitted key is refused as such, wherever its
    url points, so it cannot map the ranges without a stake."""
    network = MemoryNetwork()
    refused = [ipaddress.ip_network("10.0.0.0/8")]
    registry = RegistryServer(
        Clock(TEST_EPOCH_MS),
        ledger=LEDGER.public_key,
        dial_back=_PinnedDials(network),
        refused=refused,
    )
    stranger = Identity.from_label("dial-back-stranger")
    key = stranger.ed25519_public.hex()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(registry.serve, network, "mem:registry")
        directory = RegistryDirectory(network, address, Clock(TEST_EPOCH_MS), LEDGER.public_key)
        answers = set()
        for url in [f"wss://10.1.2.3:7000/{key}", f"wss://192.0.2.1:7000/{key}"]:
            with pytest.raises(RpcError) as no:
                await directory.announce(stranger, "node", url)
            answers.add((no.value.code, str(no.value)))
        assert len(answers) == 1 and answers.pop()[0] == "unauthorized"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("node", "ws://127.0.0.1:7000"),  # unpinned
        ("node", f"wss://localhost:7000/{ROGUE.ed25519_public.hex()}"),  # a name
        ("node", f"127.0.0.1:7000#{ROGUE.ed25519_public.hex()}"),  # a relay's form
        ("relay", "127.0.0.1:7000"),  # unpinned
        ("relay", f"wss://127.0.0.1:7000/{ROGUE.ed25519_public.hex()}"),  # a node's form
        ("relay", f"relay.example:7000#{ROGUE.ed25519_public.hex()}"),  # a name
        ("node", f"wss://:7000/{ROGUE.ed25519_public.hex()}"),  # no host
        ("relay", f"0.0.0.0:7000#{ROGUE.ed25519_public.hex()}"),  # no one host
        ("relay", f"[1.2.3.4]:7000#{ROGUE.ed25519_public.hex()}"),  # IPv4 in brackets
    ],
)
async def test_a_registry_of_tls_links_takes_only_pinned_ip_urls_of_the_announcers_kind(
    kind: str, url: str
) -> None:
    """Refused as malformed, before any dial: an unpinned url's dial proves only that
    something answers, a name's only where it pointed then."""
    network = MemoryNetwork()
    registry = RegistryServer(Clock(), ledger=LEDGER.public_key, dial_back=WebSocketTransport())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(registry.serve, network, "mem:registry")
        directory = RegistryDirectory(network, address, Clock(), LEDGER.public_key)
        with pytest.raises(RpcError) as refused:
            await directory.announce(ROGUE, kind, url, registration=_registration(ROGUE))
        assert refused.value.code == "bad_request"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("kind", "transport", "url_of"),
    [
        ("node", WebSocketTransport(), lambda served, key: _wss(served, key)),
        ("relay", TcpTransport(), lambda served, key: f"{served.partition('#')[0]}#{key}"),
    ],
)
async def test_an_admitted_announcer_cannot_list_an_address_another_key_serves(
    kind: str, transport: Transport, url_of: Callable[[str, str], str]
) -> None:
    """On real sockets: the victim serves TLS as its key at an address; the rogue, admitted
    by the ledger, announces that address pinned to its own key (which readers accept).
    The registry's dial is refused by the victim's certificate, so the rogue is not
    listed; the victim itself is."""
    clock = Clock()
    registry = RegistryServer(clock, ledger=LEDGER.public_key, dial_back=WebSocketTransport())
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            registry.serve,
            WebSocketTransport().as_server(Identity.from_label("registry").seed),
            "127.0.0.1:0",
        )
        served = await nursery.start(
            transport.as_server(VICTIM.seed).serve, _hang_up, "127.0.0.1:0"
        )
        directory = RegistryDirectory(WebSocketTransport(), url, clock, LEDGER.public_key)
        rogue_url = url_of(served, ROGUE.ed25519_public.hex())
        with pytest.raises(RpcError) as refused:
            await directory.announce(ROGUE, kind, rogue_url, registration=_registration(ROGUE))
        assert refused.value.code == "unavailable"
        victim_url = url_of(served, VICTIM.ed25519_public.hex())
        await directory.announce(VICTIM, kind, victim_url, registration=_registration(VICTIM))
        listed = registry.snapshot()
        assert [entry["record"]["url"] for entry in listed.announcements] == [victim_url]
        nursery.cancel_scope.cancel()


def _wss(served: str, key: str) -> str:
    """``wss://host:port/<key>`` at the address a server reported."""
    return served.rsplit("/", 1)[0] + "/" + key
