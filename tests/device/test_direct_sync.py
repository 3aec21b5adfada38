"""Siblings that are both online sync over the overlay; the swarm holds a sync copy only
for what a sibling did not acknowledge in time, and only until it did."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from p2psync.device import Device
from p2psync.network import LocalNetwork
from p2psync.swarm.constants import NAMESPACE_MESSAGES, NAMESPACE_SYNC

from ..swarm.helpers import wait_until
from .helpers import befriend, device, open_world, pair, stored_kinds, stored_messages, texts

GRACE_S = 10


def sync_copies(network: LocalNetwork, sibling: Device, mode: str) -> int:
    """Sync copies of sent messages waiting in the swarm for ``sibling``."""
    reader = sibling.identity if mode == "linked" else sibling.device_identity
    return stored_kinds(network, reader, NAMESPACE_SYNC).count("sync_sent")


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_online_siblings_sync_directly_and_store_no_sync_copy(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "phone", mode) as phone,
        device(network, tmp_path, "desktop", mode) as desktop,
        device(network, tmp_path, "bob", mode) as bob,
    ):
        await pair(phone, desktop)
        await befriend(phone, bob)
        await wait_until(
            lambda: (c := desktop.contact(bob.session_id)) is not None and c.state == "friend"
        )
        await wait_until(lambda: phone.connected_siblings == {desktop.device_id})

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
        device(network, tmp_path, "phone", "linked") as phone,
        device(network, tmp_path, "desktop", "linked") as desktop,
        device(network, tmp_path, "bob", "linked") as bob,
    ):
        await pair(phone, desktop)
        await befriend(phone, bob)
        await wait_until(lambda: phone.connected_siblings == {desktop.device_id})
        alice = phone.session_id
        before = stored_messages(network, alice, NAMESPACE_MESSAGES)
        await bob.send(alice, "for both of Alice's devices")
        await bob.flush()
        assert stored_messages(network, alice, NAMESPACE_MESSAGES) == before + 1
        await wait_until(lambda: all(len(d.history(bob.session_id)) == 1 for d in (phone, desktop)))
        await wait_until(lambda: stored_messages(network, alice, NAMESPACE_MESSAGES) == before)


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
            # Acknowledged over the session: the sync copy goes (by the phone in linked
            # mode, by the desktop that read it in mapped mode).
            await wait_until(lambda: sync_copies(network, desktop, mode) == 0)
            assert not desktop.rejections
