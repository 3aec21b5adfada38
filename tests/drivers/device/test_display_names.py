"""Display names end to end, in both modes: set on one device, shared with its siblings,
carried in friend requests and sent to friends when they change; a hostile name never
lands."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from p2psync.device import Contact, ContactState, Device, DeviceError
from p2psync.device.store import DeviceStore
from p2psync.envelope import seal_envelope
from p2psync.identity import Identity, session_id_key
from p2psync.swarm.client import open_swarm_client
from p2psync.swarm.constants import NAMESPACE_MESSAGES
from p2psync.wire import encode_cbor
from tests.drivers.swarm.helpers import wait_until

from .helpers import befriend, device, is_friend, open_world, pair

BOB = Identity.from_label("device/bob").session_id


def name_of(reader: Device, user: str) -> str:
    contact = reader.friends.contact(user)
    return "" if contact is None else contact.name


async def test_names_reach_siblings_and_friends_of_either_mode(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with (
        open_world() as network,
        device(network, tmp_path, "alice-phone", "linked") as alice_phone,
        device(network, tmp_path, "alice-desktop", "linked") as alice_desktop,
        device(network, tmp_path, "bob-phone", "mapped") as bob_phone,
        device(network, tmp_path, "bob-desktop", "mapped") as bob_desktop,
    ):
        await pair(alice_phone, alice_desktop)
        await pair(bob_phone, bob_desktop)
        alice, bob = alice_phone.session_id, bob_phone.session_id

        # Set before the friendship: the request carries it; the sibling learns it.
        await alice_phone.set_display_name("Alice")
        await wait_until(lambda: alice_desktop.whoami().display_name == "Alice")
        await befriend(alice_phone, bob_phone)
        await wait_until(lambda: is_friend(bob_desktop, alice) and is_friend(alice_desktop, bob))
        for reader in (bob_phone, bob_desktop):
            await wait_until(lambda r=reader: name_of(r, alice) == "Alice")  # type: ignore[misc]

        # Changed later, on a mapped secondary: every friend device and the sibling learn it.
        await bob_desktop.set_display_name("Bob 🙂")
        await wait_until(lambda: bob_phone.whoami().display_name == "Bob 🙂")
        for reader in (alice_phone, alice_desktop):
            await wait_until(lambda r=reader: name_of(r, bob) == "Bob 🙂")  # type: ignore[misc]

        # The user's own device refuses what a terminal would interpret.
        for bad in ("\x1b[31mBob", "Bob\u202e", "x" * 65, ""):
            with pytest.raises(DeviceError, match="display name"):
                await bob_phone.set_display_name(bad)
        assert bob_phone.whoami().display_name == "Bob 🙂"
        assert not any(d.rejections for d in (alice_phone, alice_desktop, bob_phone, bob_desktop))


async def test_a_hostile_name_from_a_friend_is_refused_and_the_old_one_kept(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A modified client writes a profile whose name holds an escape sequence: refused at
    decode, noted in ``rejections``, the name shown stays the last good one."""
    async with (
        open_world() as network,
        device(network, tmp_path, "alice", "linked") as alice,
        device(network, tmp_path, "bob", "linked") as bob,
    ):
        await befriend(alice, bob)
        await bob.set_display_name("Bob")
        await wait_until(lambda: name_of(alice, bob.session_id) == "Bob")
        hostile = encode_cbor({"user": bob.session_id, "name": "\x1b]0;owned\x07Alice"})
        data = seal_envelope(
            Identity.from_label("device/bob"),
            session_id_key(alice.session_id),
            "profile",
            hostile,
            network.clock.now_ms(),
        )
        async with open_swarm_client(
            network.transport, network.directory(), network.clock
        ) as swarm:
            await swarm.store(alice.session_id, NAMESPACE_MESSAGES, data)
        await wait_until(lambda: len(alice.rejections) == 1)
        assert "display name" in alice.rejections[0].reason
        assert name_of(alice, bob.session_id) == "Bob"


def test_a_store_from_before_display_names_gains_the_column(tmp_path: Path) -> None:
    """A device file written before display names opens, keeps its contacts, and takes
    a friend's name."""
    path = tmp_path / "device.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE contacts (user TEXT PRIMARY KEY, state TEXT NOT NULL,"
            " devices BLOB NOT NULL, note TEXT NOT NULL DEFAULT '')"
        )
        db.execute(
            "INSERT INTO contacts VALUES (?, 'friend', ?, 'hi')",
            (BOB, encode_cbor([BOB])),
        )
    db.close()
    store = DeviceStore(path)
    try:
        assert store.contact(BOB) == Contact(BOB, ContactState.FRIEND, (BOB,), "hi", "")
        store.put_contact(Contact(BOB, ContactState.FRIEND, (BOB,), "hi", "Bob"))
        assert store.contacts() == [Contact(BOB, ContactState.FRIEND, (BOB,), "hi", "Bob")]
    finally:
        store.close()
