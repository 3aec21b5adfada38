"""Siblings that are both online sync over the overlay; the swarm holds a sync copy only
for what a sibling did not acknowledge in time, and only until it did."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import overlay.session
from overlay.keys import KeyPair
from overlay.session import SessionCore
from p2psync.device import Device
from p2psync.device.running import LEAVING_S
from p2psync.device.sibling_rules import TAKEOVER_GRACES
from p2psync.device.values import DELETE_DELAY_S, INBOUND_PUSH_DELAY_S
from p2psync.identity import Identity
from p2psync.network import LocalNetwork
from p2psync.swarm.client import SwarmClient
from p2psync.swarm.constants import NAMESPACE_MESSAGES, NAMESPACE_SYNC
from p2psync.sync.syncer import DELIVER_BEFORE_LEAVING_S

from ..swarm.helpers import wait_until
from .conftest import SyncEndpoints
from .helpers import (
    befriend,
    device,
    open_world,
    pair,
    siblings_and_friend,
    stored_kinds,
    stored_messages,
    texts,
)

GRACE_S = 10


def sync_copies(network: LocalNetwork, sibling: Device, mode: str) -> int:
    """Sync copies of sent messages waiting in the swarm for ``sibling``."""
    # The key that swarm is read with: the account's (the phone's) when linked.
    reader = Identity.from_label(f"device/{'phone' if mode == 'linked' else sibling.whoami().name}")
    return stored_kinds(network, reader, NAMESPACE_SYNC).count("sync_sent")


async def filed_on_both(network: LocalNetwork, phone: Device, desktop: Device, bob: Device) -> int:
    """Bob's message, once Alice's siblings are connected, stored in her account's swarm
    and filed on both; the messages the swarm held for her before it."""
    await wait_until(lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id})
    alice = phone.session_id
    before = stored_messages(network, alice, NAMESPACE_MESSAGES)
    await bob.send(alice, "for both of Alice's devices")
    await bob.flush()
    assert stored_messages(network, alice, NAMESPACE_MESSAGES) == before + 1
    await wait_until(lambda: all(len(d.history(bob.session_id)) == 1 for d in (phone, desktop)))
    return before


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_online_siblings_sync_directly_and_store_no_sync_copy(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, mode) as (phone, desktop, bob),
    ):
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )

        started = trio.current_time()
        sent = await phone.send(bob.session_id, "sent from the phone")
        await wait_until(lambda: len(desktop.history(bob.session_id)) == 1)
        assert trio.current_time() - started < 1  # pushed, not polled
        assert [item.id for item in desktop.history(bob.session_id)] == [sent]
        await trio.sleep(3 * GRACE_S)
        await phone.flush()
        assert sync_copies(network, desktop, mode) == 0
        assert texts(desktop, bob.session_id) == [(True, "sent from the phone")]
        assert not phone.rejections and not desktop.rejections


async def test_inbound_messages_leave_the_account_swarm_once_every_sibling_has_them(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, "linked") as (phone, desktop, bob),
    ):
        alice = phone.session_id
        before = await filed_on_both(network, phone, desktop, bob)
        both_have_it = trio.current_time()
        await wait_until(lambda: stored_messages(network, alice, NAMESPACE_MESSAGES) == before)
        # Not at once: the offer to the sibling and the delete each wait a random delay,
        # so that the node's log does not carry the rhythm of sibling sync.
        assert trio.current_time() - both_have_it >= DELETE_DELAY_S[0]


async def test_deletions_an_earlier_run_queued_go_out_as_soon_as_the_device_is_back(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A short-lived process (``p2psync device inbox``) never lives through a delete
    delay of its own: what one run queued, the next sends at once, not after a delay
    drawn again from its start (a run shorter than 30 s never sent it at all)."""
    async with open_world(relays=8) as network:
        async with siblings_and_friend(network, tmp_path, "linked") as (phone, desktop, bob):
            alice = phone.session_id
            before = await filed_on_both(network, phone, desktop, bob)
            # Offered and acknowledged (within the offer delay), not yet deleted.
            await trio.sleep(INBOUND_PUSH_DELAY_S[1] + 1)
            assert stored_messages(network, alice, NAMESPACE_MESSAGES) == before + 1
        async with device(network, tmp_path, "phone"):
            back = trio.current_time()
            await wait_until(lambda: stored_messages(network, alice, NAMESPACE_MESSAGES) == before)
            assert trio.current_time() - back < DELETE_DELAY_S[0]


async def test_a_deletion_that_keeps_failing_is_retried_with_back_off(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account's swarm goes away with an early delete queued: the outbox tries it
    again with its doubling back-off, not at once over and over (a deletion that failed
    stays past due, and the wait for the next one used to end at once)."""
    attempts: list[float] = []
    delete = SwarmClient.delete

    async def counting(self: SwarmClient, *args: Any, **kwargs: Any) -> Any:
        attempts.append(trio.current_time())
        if len(attempts) > 1_000:
            raise AssertionError("the outbox retries a failed deletion without backing off")
        return await delete(self, *args, **kwargs)

    monkeypatch.setattr(SwarmClient, "delete", counting)
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, "linked") as (phone, desktop, bob),
    ):
        await filed_on_both(network, phone, desktop, bob)
        await trio.sleep(INBOUND_PUSH_DELAY_S[1] + 1)  # acknowledged: the delete is queued
        assert attempts == []
        for node in list(network.nodes):
            await network.stop_node(node)
        window = DELETE_DELAY_S[1] + 600
        await trio.sleep(window)
        config = phone.config
        # Once due, one try per back-off step, the step doubling from retry_s up to
        # max_retry_s: at most window / max_retry_s + log2(max / min) + 2 tries a device.
        steps = math.log2(config.max_retry_s / config.retry_s)
        bound = window / config.max_retry_s + steps + 2
        assert 0 < len(attempts) <= 2 * bound  # both siblings may hold the deletion


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_an_offline_sibling_gets_one_sync_copy_deleted_once_acknowledged(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "bob", mode) as bob,
    ):
        async with device(network, tmp_path, "desktop", mode) as desktop:
            await pair(phone, desktop)
        await befriend(phone, bob)
        await phone.send(bob.session_id, "while the desktop is off")
        await trio.sleep(GRACE_S / 2)
        assert sync_copies(network, desktop, mode) == 0
        await trio.sleep(GRACE_S)
        await phone.flush()
        assert sync_copies(network, desktop, mode) == 1

        async with device(network, tmp_path, "desktop") as desktop:
            await wait_until(lambda: len(desktop.history(bob.session_id)) == 1)
            assert texts(desktop, bob.session_id) == [(True, "while the desktop is off")]
            # Filed as the phone's, as over the session, not as the account's.
            assert [(i.id, i.device) for i in desktop.history(bob.session_id)] == [
                (i.id, i.device) for i in phone.history(bob.session_id)
            ]
            # Acknowledged over the session: the sync copy goes (by the phone in linked
            # mode, by the desktop that read it in mapped mode).
            await wait_until(lambda: sync_copies(network, desktop, mode) == 0)
            assert not desktop.rejections


@pytest.mark.parametrize(
    ("mode", "origin_leaves"), [("linked", True), ("linked", False), ("mapped", True)]
)
async def test_a_sibling_stands_in_for_an_origin_that_leaves_before_its_grace_period(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str, origin_leaves: bool
) -> None:
    """The phone sends while the tablet is away and the desktop gets it directly. If the
    phone goes away within the grace period, the desktop stores the tablet's sync copy; if
    the phone stays, the phone does. Either way there is one copy, never two."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "desktop", mode) as desktop,
        device(network, tmp_path, "bob", mode) as bob,
    ):
        await pair(phone, desktop)
        async with device(network, tmp_path, "tablet", mode) as tablet:
            await pair(phone, tablet)
        await befriend(phone, bob)
        await wait_until(lambda: len(desktop.siblings()) == 2)
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )

        await phone.send(bob.session_id, "while the tablet is away")
        await wait_until(lambda: len(desktop.history(bob.session_id)) == 1)
        if origin_leaves:
            await phone.set_online(False)
        await trio.sleep(TAKEOVER_GRACES * GRACE_S + GRACE_S)
        await desktop.flush()
        assert sync_copies(network, tablet, mode) == 1

        await desktop.set_online(False)
        async with device(network, tmp_path, "tablet") as tablet:
            await wait_until(lambda: len(tablet.history(bob.session_id)) == 1)
            await phone.set_online(True)
            await wait_until(
                lambda: tablet.whoami().device_id in phone.sync_status().connected_siblings
            )
            await trio.sleep(GRACE_S + DELETE_DELAY_S[1])
            await phone.flush()
            # A phone that stayed deleted its copy once the tablet acknowledged; one that
            # was away found the desktop's copy in place and stored no second one (in
            # ``mapped`` mode the tablet deleted the copy it read).
            expected = 1 if mode == "linked" and origin_leaves else 0
            assert sync_copies(network, tablet, mode) == expected
            await desktop.set_online(True)
            await wait_until(lambda: sync_copies(network, tablet, mode) == 0)
            assert texts(tablet, bob.session_id) == [(True, "while the tablet is away")]
            assert not (phone.rejections or desktop.rejections or tablet.rejections)


@pytest.mark.parametrize("leaving", ["desktop", "phone"])
async def test_siblings_of_a_device_that_leaves_on_purpose_know_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, leaving: str
) -> None:
    """Going offline says goodbye on every session: the sibling left behind no longer
    counts it connected within a few seconds, not after a session's timeout."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", "linked") as phone,
        device(network, tmp_path, "desktop", "linked") as desktop,
    ):
        await pair(phone, desktop)
        await wait_until(
            lambda: (
                phone.sync_status().connected_siblings == {desktop.whoami().device_id}
                and desktop.sync_status().connected_siblings == {phone.whoami().device_id}
            )
        )
        await wait_until(lambda: phone.sync_status().unacknowledged == 0)
        gone, left = (desktop, phone) if leaving == "desktop" else (phone, desktop)
        await gone.set_online(False)
        started = trio.current_time()
        await wait_until(lambda: not left.sync_status().connected_siblings, limit_s=600)
        assert trio.current_time() - started < 3


async def test_a_sibling_that_vanishes_without_goodbye_is_noticed_on_an_idle_session(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    crash = trio.CancelScope()

    async def run_desktop(*, task_status: trio.TaskStatus[Device]) -> None:
        with crash:
            async with device(network, tmp_path, "desktop", "linked") as desktop:
                task_status.started(desktop)
                await trio.sleep_forever()

    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", "linked") as phone,
        trio.open_nursery() as nursery,
    ):
        desktop = await nursery.start(run_desktop)
        await pair(phone, desktop)
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )
        await wait_until(lambda: phone.sync_status().unacknowledged == 0)
        # A crash: everything of the desktop's stops at once, no goodbye on any session
        # (a cancelled ``open_device`` block does not go offline first).
        crash.cancel()
        started = trio.current_time()
        await wait_until(lambda: not phone.sync_status().connected_siblings, limit_s=600)
        assert trio.current_time() - started < 300


async def test_a_replayed_init_does_not_displace_the_live_session(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sync_endpoints: SyncEndpoints,
) -> None:
    """A relay that kept an old INIT and plays it again: the overlay refuses it as stale,
    and one that gets past the overlay (a longer freshness window, so its replay cache has
    let the INIT go while it is still taken) opens a session that can never carry a
    record; it must not take the place of the siblings' live session."""
    inits: list[tuple[bytes, bytes]] = []
    respond = SessionCore.respond

    def recording(local: KeyPair, packet: bytes, now_ms: int, **admission: Any) -> SessionCore:
        core = respond(local, packet, now_ms, **admission)
        inits.append((local.public, packet))  # only INITs that open a session
        return core

    monkeypatch.setattr(SessionCore, "respond", staticmethod(recording))
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", "linked") as phone,
        device(network, tmp_path, "desktop", "linked") as desktop,
    ):
        await pair(phone, desktop)
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )
        # Whichever side accepted the session: the other one leaves and comes back.
        responder_key, old_init = inits[-1]
        acceptor, dialer = (
            (phone, desktop) if phone.whoami().overlay_key == responder_key else (desktop, phone)
        )
        await dialer.set_online(False)
        await dialer.set_online(True)
        await wait_until(
            lambda: acceptor.sync_status().connected_siblings == {dialer.whoami().device_id}
        )
        endpoint = sync_endpoints[acceptor.whoami().overlay_key]
        dialer_key = dialer.whoami().overlay_key
        await wait_until(lambda: len(endpoint.sessions_with(dialer_key)) == 1)  # old ones closed
        [live] = endpoint.sessions_with(dialer_key)
        await trio.sleep(600)  # the old session is long gone
        accepted, stale = endpoint.stats.sessions_accepted, endpoint.stats.inits_stale
        endpoint.deliver_packet(old_init)
        assert endpoint.stats.sessions_accepted == accepted
        assert endpoint.stats.inits_stale == stale + 1
        monkeypatch.setattr(overlay.session, "SESSION_INIT_FRESHNESS_MS", 86_400_000)
        endpoint.deliver_packet(old_init)
        assert endpoint.stats.sessions_accepted == accepted + 1
        await trio.sleep(60)
        assert live in endpoint.sessions_with(dialer_key)
        assert acceptor.sync_status().connected_siblings == {dialer.whoami().device_id}


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_sync_copy_is_filed_as_the_device_that_sent_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """Read from a sync copy while its origin is away, a sent message is filed under the
    device that sent it, as over the session (not under the shared account key)."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "bob", mode) as bob,
    ):
        async with device(network, tmp_path, "phone", mode) as phone:
            async with device(network, tmp_path, "desktop", mode) as desktop:
                await pair(phone, desktop)
            await befriend(phone, bob)
            await phone.send(bob.session_id, "sent from the phone")
            await trio.sleep(2 * GRACE_S)
            await phone.flush()
            assert sync_copies(network, desktop, mode) == 1
            sent = [(i.id, i.device) for i in phone.history(bob.session_id)]
        async with device(network, tmp_path, "desktop", mode) as desktop:
            await wait_until(lambda: len(desktop.history(bob.session_id)) == 1)
            assert [(i.id, i.device) for i in desktop.history(bob.session_id)] == sent
            assert sent[0][1] == phone.whoami().device_id


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_phone_leaving_inside_the_grace_period_stores_what_was_not_acknowledged(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """Two devices, no third to stand in: the phone sends while the desktop is away and
    goes offline before the grace period ends. It stores the sync copy on its way out
    (only for what the desktop had not acknowledged), so the desktop, back while the
    phone stays away, gets the message from the swarm."""
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, mode) as (phone, desktop, bob),
    ):
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )
        await phone.send(bob.session_id, "while both are here")
        await wait_until(lambda: phone.sync_status().unacknowledged == 0)
        await desktop.set_online(False)
        await phone.send(bob.session_id, "while the desktop is away")
        await trio.sleep(GRACE_S / 2)
        await phone.set_online(False)
        assert sync_copies(network, desktop, mode) == 1

        await desktop.set_online(True)
        await wait_until(lambda: len(desktop.history(bob.session_id)) == 2)
        assert texts(desktop, bob.session_id) == texts(phone, bob.session_id)
        assert not phone.rejections and not desktop.rejections


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_device_back_online_after_a_leave_cut_short_still_leaves_its_sibling_all(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """A leave cut short (its swarm out of reach, so the outbox could not store) and
    taken back: the phone runs on, and when it leaves again it stores the sync copy of
    what it sent since, as any leave does."""
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, mode) as (phone, desktop, bob),
    ):
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )
        await desktop.set_online(False)
        for node in network.nodes:
            await network.stop_node(node)
        await phone.send(bob.session_id, "while the swarm is away")
        with trio.move_on_after(LEAVING_S / 2):
            await phone.set_online(False)
        assert phone.sync_status().online, "cut short while storing"
        for node in network.nodes:
            await network.start_node(node)
        await phone.set_online(True)
        await phone.flush()
        assert sync_copies(network, desktop, mode) == 1

        await phone.send(bob.session_id, "after the phone came back")
        await trio.sleep(GRACE_S / 2)
        await phone.set_online(False)
        assert sync_copies(network, desktop, mode) == 2
        await desktop.set_online(True)
        await wait_until(lambda: len(desktop.history(bob.session_id)) == 2)
        assert texts(desktop, bob.session_id) == texts(phone, bob.session_id)


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_short_lived_sender_hands_the_message_to_a_running_sibling_directly(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """``p2psync device send`` with the desktop running (``device run``): the process
    opens, sends and exits within a second, before any session to the desktop was up.
    Leaving, it waits for the session and the desktop's acknowledgement instead of
    storing a sync copy for the desktop to fetch from the swarm."""
    async with (
        open_world(relays=8) as network,
        siblings_and_friend(network, tmp_path, mode) as (phone, desktop, bob),
    ):
        await wait_until(
            lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
        )
        await phone.set_online(False)
        await phone.set_online(True)
        started = trio.current_time()
        await phone.send(bob.session_id, "from a short-lived process")
        await phone.set_online(False)
        assert trio.current_time() - started < DELIVER_BEFORE_LEAVING_S + 2
        assert texts(desktop, bob.session_id) == [(True, "from a short-lived process")]
        assert sync_copies(network, desktop, mode) == 0
        assert phone.sync_status().unacknowledged == 0


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_device_closed_right_after_send_leaves_the_sync_copy(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """What ``p2psync device send`` does: open, send, wait until stored, exit. The exit
    stores the sync copy of what the absent sibling has not acknowledged; a device that
    exits with everything acknowledged stores none."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "bob", mode) as bob,
    ):
        async with (
            device(network, tmp_path, "phone", mode) as phone,
            device(network, tmp_path, "desktop", mode) as desktop,
        ):
            await pair(phone, desktop)
            await befriend(phone, bob)
            await wait_until(
                lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
            )
            await phone.send(bob.session_id, "with the desktop here")
            await wait_until(lambda: phone.sync_status().unacknowledged == 0)
        assert sync_copies(network, desktop, mode) == 0

        async with device(network, tmp_path, "phone") as phone:
            await phone.send(bob.session_id, "from a short-lived process")
            await phone.flush()
        assert sync_copies(network, desktop, mode) == 1
        async with device(network, tmp_path, "desktop") as desktop:
            await wait_until(lambda: len(desktop.history(bob.session_id)) == 2)
            assert texts(desktop, bob.session_id) == [
                (True, "with the desktop here"),
                (True, "from a short-lived process"),
            ]


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_phone_killed_inside_the_grace_period_stores_the_copy_first_thing_next_start(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """Killed (no goodbye, nothing cleaned up) before the grace period ended, the phone
    queues the sync copy it still owes before anything else when it starts again: even a
    start cut short once the outbox is stored leaves the desktop its message."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "bob", mode) as bob,
    ):
        with trio.CancelScope() as kill:
            async with device(network, tmp_path, "phone", mode) as phone:
                async with device(network, tmp_path, "desktop", mode) as desktop:
                    await pair(phone, desktop)
                await befriend(phone, bob)
                await phone.send(bob.session_id, "then the phone was killed")
                await phone.flush()
                await trio.sleep(GRACE_S / 2)
                assert phone.sync_status().unacknowledged == 1
                kill.cancel()
                await trio.sleep_forever()
        assert sync_copies(network, desktop, mode) == 0

        with trio.CancelScope() as kill:
            async with device(network, tmp_path, "phone") as phone:
                await phone.flush()
                assert sync_copies(network, desktop, mode) == 1
                kill.cancel()
                await trio.sleep_forever()

        async with device(network, tmp_path, "desktop") as desktop:
            await wait_until(lambda: len(desktop.history(bob.session_id)) == 1)
            assert texts(desktop, bob.session_id) == [(True, "then the phone was killed")]
