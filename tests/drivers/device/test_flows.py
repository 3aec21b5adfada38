"""The whole multi-device flow in both modes, on an in-process network in virtual time:
pairing with a code check, friend requests, messages both ways with sent-message sync,
open-group attribution, revocation, and state that survives a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from p2psync.device import Device, DeviceError, Room
from p2psync.device.content import NAMESPACE_OF, SyncProfile, Text, encode_content
from p2psync.envelope import seal_envelope
from p2psync.identity import Identity, session_id_key
from p2psync.network import LocalNetwork
from p2psync.swarm.client import open_swarm_client
from p2psync.swarm.constants import NAMESPACE_MESSAGES, NAMESPACE_SYNC
from tests.drivers.swarm.helpers import wait_until

from .helpers import befriend, device, is_friend, open_world, pair, stored_messages, texts


async def test_linked_devices_share_one_identity(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "alice-phone", "linked") as phone,
        device(network, tmp_path, "alice-desktop", "linked") as desktop,
        device(network, tmp_path, "bob", "linked") as bob,
    ):
        await pair(phone, desktop)
        assert desktop.session_id == phone.session_id != desktop.whoami().device_id
        alice = phone.session_id

        # Bob's request lands in the shared swarm: both devices see it, either accepts.
        await bob.friends.request(alice, "hello Alice")
        await wait_until(
            lambda: all(d.friends.contact(bob.session_id) is not None for d in (phone, desktop))
        )
        await desktop.friends.accept(bob.session_id)
        await wait_until(lambda: is_friend(bob, alice))
        await wait_until(lambda: is_friend(phone, bob.session_id))

        # Received once per account; sent messages reach the sibling as sync copies.
        received = await bob.send(alice, "how are you?")
        await trio.sleep(1)
        sent = await phone.send(bob.session_id, "fine, thanks")
        for d in (phone, desktop):
            await wait_until(lambda d=d: len(d.history(bob.session_id)) == 2)  # type: ignore[misc]
            assert {item.id for item in d.history(bob.session_id)} == {received, sent}
        assert texts(desktop, bob.session_id) == [(False, "how are you?"), (True, "fine, thanks")]
        await wait_until(lambda: len(bob.history(alice)) == 2)
        assert texts(bob, alice) == [(True, "how are you?"), (False, "fine, thanks")]
        await phone.flush()
        # One copy for Bob's account; Alice's sent message is one copy there plus one sync copy.
        assert stored_messages(network, alice, NAMESPACE_MESSAGES) == 2  # Bob's request + message
        assert stored_messages(network, alice, NAMESPACE_SYNC) >= 1

        # A public chat sees both devices as one person: the shared key signs.
        await phone.rooms.create("lobby")
        await phone.rooms.post("lobby", "from my phone")
        await desktop.rooms.post("lobby", "from my desktop")
        posts = await bob.rooms.messages("lobby")
        assert [(p.user, p.body) for p in posts] == [
            (alice, b"from my phone"),
            (alice, b"from my desktop"),
        ]
        assert not phone.rejections and not desktop.rejections and not bob.rejections


async def test_mapped_devices_fan_out_and_sync(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "alice-phone", "mapped") as phone,
        device(network, tmp_path, "alice-desktop", "mapped") as desktop,
        device(network, tmp_path, "bob", "mapped") as bob,
    ):
        await pair(phone, desktop)
        alice = phone.session_id
        assert desktop.session_id == alice and desktop.whoami().device_id != alice
        assert not desktop.whoami().is_primary

        # Bob's request is fanned out to both of Alice's devices (mapping on the file server).
        await bob.friends.request(alice, "hello Alice")
        await wait_until(
            lambda: all(d.friends.contact(bob.session_id) is not None for d in (phone, desktop))
        )
        await desktop.friends.accept(bob.session_id)
        await wait_until(lambda: is_friend(bob, alice))
        contact = bob.friends.contact(alice)
        assert contact is not None and set(contact.devices) == {alice, desktop.whoami().device_id}
        await wait_until(lambda: is_friend(phone, bob.session_id))

        await bob.send(alice, "how are you?")
        await trio.sleep(1)
        await desktop.send(bob.session_id, "fine, thanks")
        for d in (phone, desktop):
            await wait_until(lambda d=d: len(d.history(bob.session_id)) == 2)  # type: ignore[misc]
            assert texts(d, bob.session_id) == [
                (False, "how are you?"),
                (True, "fine, thanks"),
            ]
        # Every device files Bob's message under one id: the fan-out copies carry it.
        assert [i.id for i in phone.history(bob.session_id)] == [
            i.id for i in desktop.history(bob.session_id)
        ]
        await wait_until(lambda: len(bob.history(alice)) == 2)
        [reply] = [item for item in bob.history(alice) if not item.outgoing]
        assert reply.sender == alice and reply.device == desktop.whoami().device_id
        await bob.flush()
        # v1.5.0's cost: Bob's message is stored for each of Alice's devices.
        assert stored_messages(network, alice, NAMESPACE_MESSAGES) == 2
        assert stored_messages(network, desktop.whoami().device_id, NAMESPACE_MESSAGES) == 2

        # Open group: the server maps the secondary's key to Alice.
        assert await phone.rooms.create("lobby") == Room("lobby", created=True)
        assert await desktop.rooms.create("lobby") == Room("lobby", created=False)
        await desktop.rooms.post("lobby", "from my desktop")
        await phone.rooms.post("lobby", "from my phone")
        posts = await bob.rooms.messages("lobby")
        assert [(p.user, p.device) for p in posts] == [
            (alice, desktop.whoami().device_id),
            (alice, alice),
        ]

        # Revoked, the desktop stops receiving: senders' device lists drop it. The file
        # server turns malicious at once and re-lists the desktop without its revocation;
        # Bob hears the revocation from Alice's primary itself and keeps applying it.
        await phone.pairing.revoke(desktop.whoami().device_id)
        with sqlite3.connect(network.data_dir / "fileserver.sqlite3") as files:
            files.execute("UPDATE mappings SET active = 1, revoked_at = NULL, revocation = NULL")
        await wait_until(
            lambda: is_friend(bob, alice) and bob.friends.contact(alice).devices == (alice,)  # type: ignore[union-attr]
        )
        await trio.sleep(bob.config.mapping_cache_s + 1)
        await bob.send(alice, "are you there?")
        await wait_until(lambda: len(phone.history(bob.session_id)) == 3)
        await bob.flush()
        await trio.sleep(30)
        assert len(desktop.history(bob.session_id)) == 2
        assert not phone.rejections and not bob.rejections
        # The desktop was told, and refuses to send; nor does Bob take the word of one
        # whose software ignores that (a stolen one) that it is still Alice's.
        await wait_until(lambda: desktop.whoami().revoked_at_ms is not None)
        with pytest.raises(DeviceError, match="unpaired by its primary"):
            await desktop.send(bob.session_id, "from the revoked desktop")
        await inject_text(network, desktop, [bob.session_id])
        await wait_until(lambda: any("is not a device of" in r.reason for r in bob.rejections))
        assert "let me in" not in [item.text for item in bob.history(alice)]


async def test_a_virtual_jump_expires_cached_device_lists(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A sender caches its friends' device lists on the network's clock, so a jump of that
    clock (``Clock.skip_idle``: no Trio time passes) expires them as waiting would, and a
    device paired meanwhile is reached without anyone sleeping for it."""
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "bob", "mapped") as bob,
        device(network, tmp_path, "desktop", "mapped") as desktop,
    ):
        await befriend(bob, phone)
        await pair(phone, desktop)
        await bob.send(phone.session_id, "before the jump")
        await wait_until(lambda: len(phone.history(bob.session_id)) == 1)
        await bob.flush()
        assert desktop.history(bob.session_id) == []  # Bob's list is the cached one
        network.clock.skip_idle(int(bob.config.mapping_cache_s * 1000) + 1000)
        await bob.send(phone.session_id, "after the jump")
        await wait_until(lambda: texts(desktop, bob.session_id) == [(False, "after the jump")])


async def test_opening_a_folder_without_a_device_says_how_to_make_one_and_makes_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A network command pointed at a folder with no device made the folder and a device
    file there, and told the user to "give a mode", an option those commands lack."""
    async with open_world() as network:
        for folder in (tmp_path / "empty", tmp_path / "missing" / "deeper"):
            if folder.name == "empty":
                folder.mkdir()
            with pytest.raises(DeviceError, match="create one with `p2psync device init`"):
                async with device(network, folder.parent, folder.name):
                    pass
            assert not (folder / "device.sqlite3").exists()
        assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_state_survives_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with open_world() as network, device(network, tmp_path, "bob", mode) as bob:
        async with device(network, tmp_path, "alice", mode) as alice:
            await befriend(alice, bob)
            await bob.send(alice.session_id, "one")
            await wait_until(lambda: len(alice.history()) == 1)
            user = alice.session_id
        await bob.send(user, "two")
        await bob.flush()
        async with device(network, tmp_path, "alice") as alice:
            assert alice.whoami().mode == mode and alice.session_id == user
            assert [c.state for c in alice.friends.contacts()] == ["friend"]
            await wait_until(lambda: len(alice.history()) == 2)
            assert texts(alice, bob.session_id) == [(False, "one"), (False, "two")]


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_declined_request_stays_declined_on_every_device(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "alice-phone", mode) as phone,
        device(network, tmp_path, "alice-desktop", mode) as desktop,
        device(network, tmp_path, "carol", mode) as carol,
    ):
        await pair(phone, desktop)
        alice = phone.session_id
        await carol.friends.request(alice, "remember me?")
        await wait_until(
            lambda: all(d.friends.contact(carol.session_id) is not None for d in (phone, desktop))
        )
        await phone.friends.decline(carol.session_id)
        await wait_until(
            lambda: (
                (c := desktop.friends.contact(carol.session_id)) is not None
                and c.state == "declined"
            )
        )
        # The requester is not told; what she sends next is refused, not filed.
        await trio.sleep(60)
        contact = carol.friends.contact(alice)
        assert contact is not None and contact.state == "requested"
        with pytest.raises(DeviceError, match="not a friend"):
            await carol.send(alice, "hello?")
        await inject_text(network, carol, sorted({alice, desktop.whoami().device_id}))
        await wait_until(lambda: len(desktop.rejections) == 1)
        assert "not a friend" in desktop.rejections[0].reason
        assert phone.history() == [] and desktop.history() == []


async def inject_text(network: LocalNetwork, sender: Device, devices: list[str]) -> None:
    """What a modified client could do: write to each device of a user as ``sender``'s
    device, friend or not, revoked or not."""
    async with open_swarm_client(network.transport, network.directory(), network.clock) as swarm:
        kind, body = encode_content(Text(sender.session_id, "let me in"))
        for target in devices:
            key = session_id_key(target)
            data = seal_envelope(
                Identity.from_label(f"device/{sender.whoami().name}"),
                key,
                kind,
                body,
                network.clock.now_ms(),
            )
            await swarm.store(target, NAMESPACE_MESSAGES, data)


async def test_a_linked_user_and_a_mapped_user_with_two_devices_talk_both_ways(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Mixed modes: the mapped user's secondary device asks a linked user to be friends
    (signed with its own key, vouched for by the file server's mapping), and the linked
    user's messages reach both of the mapped user's devices (fanned out like a mapped
    sender's), while the mapped user's messages reach the linked user's one swarm."""
    async with (
        open_world() as network,
        device(network, tmp_path, "alice-phone", "mapped") as phone,
        device(network, tmp_path, "alice-desktop", "mapped") as desktop,
        device(network, tmp_path, "carol", "linked") as carol,
    ):
        await pair(phone, desktop)
        alice = phone.session_id
        await desktop.friends.request(carol.session_id, "Alice here, on my desktop")
        await wait_until(lambda: carol.friends.contact(alice) is not None)
        await carol.friends.accept(alice)
        await wait_until(lambda: is_friend(phone, carol.session_id))
        await wait_until(lambda: is_friend(desktop, carol.session_id))

        await carol.send(alice, "hello, both of your devices")
        for d in (phone, desktop):
            await wait_until(lambda d=d: len(d.history(carol.session_id)) == 1)  # type: ignore[misc]
            assert texts(d, carol.session_id) == [(False, "hello, both of your devices")]
        await desktop.send(carol.session_id, "hello from the desktop")
        await wait_until(lambda: len(carol.history(alice)) == 2)
        [reply] = [item for item in carol.history(alice) if not item.outgoing]
        assert reply.text == "hello from the desktop" and reply.device == desktop.whoami().device_id
        assert not carol.rejections and not phone.rejections and not desktop.rejections


async def test_public_chat_attributes_second_devices_of_both_modes_to_their_users(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Mixed modes in a public chat: a ``mapped`` user's second device (its own key,
    vouched for by the primary's countersigned mapping) and a ``linked`` user's second
    device (the shared account key) each post, and every reader, of either mode, sees
    each post under the user, never the device."""
    async with (
        open_world() as network,
        device(network, tmp_path, "alice-phone", "mapped") as alice_phone,
        device(network, tmp_path, "alice-desktop", "mapped") as alice_desktop,
        device(network, tmp_path, "bob-phone", "linked") as bob_phone,
        device(network, tmp_path, "bob-desktop", "linked") as bob_desktop,
        device(network, tmp_path, "carol", "mapped") as carol,
        device(network, tmp_path, "dave", "linked") as dave,
    ):
        await pair(alice_phone, alice_desktop)
        await pair(bob_phone, bob_desktop)
        alice, bob = alice_phone.session_id, bob_phone.session_id
        assert alice_desktop.whoami().device_id != alice
        assert await carol.rooms.create("lobby") == Room("lobby", created=True)
        await alice_desktop.rooms.post("lobby", "alice, from her second device")
        await bob_desktop.rooms.post("lobby", "bob, from his second device")
        for reader in (alice_phone, bob_phone, carol, dave):
            posts = await reader.rooms.messages("lobby")
            assert [(p.user, p.body) for p in posts] == [
                (alice, b"alice, from her second device"),
                (bob, b"bob, from his second device"),
            ]


async def test_a_revoked_device_is_dropped_by_every_sibling_not_only_the_primary(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The primary revokes the tablet: the desktop, a sibling too, hears it from the
    primary (signed by it), stops listing and syncing with the tablet and keeps the
    revocation, across a restart; what the tablet sends it afterwards is refused. The
    tablet, offline at the time, is told too when it next reads its swarm: it says so,
    drops its siblings, does not send what it queued meanwhile (everyone would refuse
    it) and refuses to send as the user."""
    async with (
        open_world() as network,
        device(network, tmp_path, "phone", "mapped") as phone,
        device(network, tmp_path, "tablet", "mapped") as tablet,
    ):
        phone_id, tablet_id = phone.whoami().device_id, tablet.whoami().device_id
        async with device(network, tmp_path, "desktop", "mapped") as desktop:
            await pair(phone, desktop)
            await pair(phone, tablet)
            await wait_until(lambda: tablet_id in desktop.siblings())
            await tablet.set_online(False)
            await phone.pairing.revoke(tablet_id)
            await phone.flush()
            await wait_until(lambda: tablet_id not in desktop.siblings())
            assert set(desktop.siblings()) == {phone_id}
            assert not desktop.rejections and not phone.rejections
            await tablet.set_display_name("still here")  # queued: not told yet
            await tablet.sync_now()
            assert tablet.whoami().revoked_at_ms is not None
            assert tablet.siblings() == {} and not tablet.rejections
            await tablet.set_online(True)
            await tablet.flush()
            await trio.sleep(30)
            await desktop.sync_now()
            assert not desktop.rejections  # the queued record was dropped, not sent
            with pytest.raises(DeviceError, match="unpaired by its primary on"):
                await tablet.send(phone.session_id, "hello?")
            with pytest.raises(DeviceError, match="unpaired by its primary on"):
                await tablet.set_display_name("still here")
        # (A restart takes time: a request signed in the same millisecond as one before
        # it would be refused as a replay.)
        await trio.sleep(1)
        async with device(network, tmp_path, "desktop") as desktop:
            await desktop.sync_now()
            assert set(desktop.siblings()) == {phone_id}
            # A tablet whose software ignores the revocation (a stolen one) is refused.
            kind, body = encode_content(SyncProfile("still here"))
            data = seal_envelope(
                Identity.from_label("device/tablet"),
                session_id_key(desktop.whoami().device_id),
                kind,
                body,
                network.clock.now_ms(),
            )
            async with open_swarm_client(
                network.transport, network.directory(), network.clock
            ) as swarm:
                await swarm.store(desktop.whoami().device_id, NAMESPACE_OF[kind], data)
            await wait_until(lambda: bool(desktop.rejections))
            assert set(desktop.siblings()) == {phone_id}
            assert desktop.whoami().display_name != "still here"


async def test_a_pairing_request_a_sibling_accepted_waits_no_more(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """In linked mode any device of the account may accept a new one; once the desktop
    did, the phone, which saw the same request, no longer lists it as waiting."""
    async with (
        open_world(relays=4) as network,
        device(network, tmp_path, "phone", "linked") as phone,
        device(network, tmp_path, "desktop", "linked") as desktop,
        device(network, tmp_path, "tablet", "linked") as tablet,
    ):
        await pair(phone, desktop)
        await tablet.pairing.request(phone.session_id)
        await wait_until(lambda: bool(phone.pairing.requests() and desktop.pairing.requests()))
        [offer] = desktop.pairing.requests()
        assert await desktop.pairing.accept(offer.code) == offer.device
        with trio.fail_after(60):
            await tablet.pairing.wait_paired()
        await wait_until(lambda: tablet.whoami().device_id in phone.siblings())
        assert phone.pairing.requests() == []
