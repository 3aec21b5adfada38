"""What strangers can make a device keep of contacts and pairing requests (the store, on
a file in a test directory)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from p2psync.device.friends import ContactState
from p2psync.device.pairing import FORGET_REQUESTS_MS, MAX_HELD_REQUESTS, PairingState
from p2psync.device.rows import Contact, Pairing
from p2psync.device.store import (
    DEFERRED_BYTES,
    DEFERRED_FOR_MS,
    DEFERRED_RECORDS,
    PENDING_CONTACTS,
    DeviceStore,
)
from p2psync.identity import Identity
from p2psync.mapping import revoke_pairing


def test_friend_requests_waiting_are_kept_newest_first_up_to_a_bound(tmp_path: Path) -> None:
    """Each request costs a stranger one store: past :data:`PENDING_CONTACTS`, the one
    that waited longest goes, with the messages it came with; friends, whatever their
    number, stay."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    try:
        friends = [Contact(f"{n:066x}", ContactState.FRIEND, ()) for n in range(3)]
        for friend in friends:
            store.put_contact(friend)
        waiting = [
            Contact(f"{n + 1000:066x}", ContactState.PENDING, ())
            for n in range(PENDING_CONTACTS + 7)
        ]
        for contact in waiting:
            user = contact.user
            store.add_message(bytes.fromhex(user)[-32:], 1, user, False, user, user, "hi")
            store.put_contact(contact)
        kept = store.contacts()
        assert [store.received_from(c.user) for c in waiting] == [0] * 7 + [1] * PENDING_CONTACTS
        assert [c for c in kept if c.state == ContactState.FRIEND] == friends
        assert [c for c in kept if c.state == ContactState.PENDING] == waiting[7:]
    finally:
        store.close()


def test_records_waiting_to_be_checked_are_bounded_in_number_bytes_and_age(
    tmp_path: Path,
) -> None:
    """A stranger's message to a device with siblings waits for a sibling's record that
    never comes: past :data:`DEFERRED_RECORDS` (or :data:`DEFERRED_BYTES`) the oldest go,
    and any that waited :data:`DEFERRED_FOR_MS`; one deferred again keeps its first time."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    owner, now = "05" + "ab" * 32, 1_700_000_000_000
    try:
        went = [
            store.defer(n.to_bytes(32, "big"), owner, 0, b"x", now + n, friends=False)
            for n in range(DEFERRED_RECORDS + 5)
        ]
        assert sum(went) == 5
        assert [row[0] for row in store.deferred()][:1] == [(5).to_bytes(32, "big")]
        big = DEFERRED_BYTES // 3 + 1
        went = [
            store.defer(bytes([n]) * 32, owner, 0, bytes(big), now + 5_000, friends=False)
            for n in range(3)
        ]
        assert went[-1] > 0 and len(store.deferred()) < DEFERRED_RECORDS
        assert sum(len(row[3]) for row in store.deferred()) <= DEFERRED_BYTES
        # Deferred again later: it keeps its first time, and goes when that is too old.
        kept = store.deferred()[-1][0]
        assert store.defer(kept, owner, 0, bytes(big), now + DEFERRED_FOR_MS, friends=False) == 0
        waiting = len(store.deferred())
        assert store.forget_deferred(now + 5_000 + DEFERRED_FOR_MS + 1) == waiting
        assert store.deferred() == []
    finally:
        store.close()


def test_records_waiting_with_friends_have_bounds_strangers_cannot_spend(tmp_path: Path) -> None:
    """Strangers' records past :data:`DEFERRED_RECORDS` push out the oldest strangers'
    record, never one that waits with friends; those have the same bounds of their own."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    owner, now = "05" + "ab" * 32, 1_700_000_000_000

    def waiting(n: int, *, friends: bool) -> int:
        return store.defer(n.to_bytes(32, "big"), owner, 0, b"x", now + n, friends=friends)

    try:
        assert waiting(0, friends=True) == 0
        assert sum(waiting(n, friends=False) for n in range(1, DEFERRED_RECORDS + 6)) == 5
        kept = [int.from_bytes(row[0], "big") for row in store.deferred()]
        assert kept == [0, *range(6, DEFERRED_RECORDS + 6)]
        first = DEFERRED_RECORDS + 6
        friends = range(first, first + DEFERRED_RECORDS + 1)
        assert sum(waiting(n, friends=True) for n in friends) == 2  # 0 and the first of these
        assert len(store.deferred()) == 2 * DEFERRED_RECORDS
    finally:
        store.close()


OWNER, NOW = "05" + "ab" * 32, 1_700_000_000_000


@contextmanager
def deferred_by_an_earlier_version(path: Path, change: str) -> Iterator[DeviceStore]:
    """A store that deferred one record (with friends, at :data:`NOW`), opened again
    after ``change`` made its file as an earlier version left it."""
    store = DeviceStore(path)
    try:
        store.defer(b"\1" * 32, OWNER, 0, b"x", NOW, friends=True)
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(change)
    store = DeviceStore(path)
    try:
        yield store
    finally:
        store.close()


def test_records_deferred_by_a_version_that_noted_no_time_age_from_now(tmp_path: Path) -> None:
    change = "UPDATE deferred SET deferred_ms = NULL"
    with deferred_by_an_earlier_version(tmp_path / "device.sqlite3", change) as store:
        assert store.forget_deferred(NOW + 10 * DEFERRED_FOR_MS) == 0  # dated now, then
        assert store.forget_deferred(NOW + 11 * DEFERRED_FOR_MS + 1) == 1


def test_records_deferred_by_a_version_with_one_share_wait_with_strangers(tmp_path: Path) -> None:
    change = "ALTER TABLE deferred DROP COLUMN friends"
    with deferred_by_an_earlier_version(tmp_path / "device.sqlite3", change) as store:
        went = [
            store.defer(n.to_bytes(32, "big"), OWNER, 0, b"x", NOW, friends=False)
            for n in range(2, DEFERRED_RECORDS + 2)
        ]
        assert sum(went) == 1 and b"\1" * 32 not in [row[0] for row in store.deferred()]


def test_pairing_requests_kept_are_bounded_in_number_held_and_in_age(tmp_path: Path) -> None:
    """Strangers make pairing requests without end: of those held unanswered the newest
    :data:`MAX_HELD_REQUESTS` stay, and any the user never answered go after
    :data:`FORGET_REQUESTS_MS`; the user's answers stay."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    now = 1_700_000_000_000

    def request(n: int, state: PairingState, at: int) -> Pairing:
        return Pairing(n.to_bytes(32, "big"), True, f"{n:066x}", "tablet", at, state, b"")

    def kept(state: PairingState) -> list[int]:
        rows = store.pairings(incoming=True, states=(state,))
        return [int.from_bytes(p.request_id, "big") for p in rows]

    try:
        before = now - FORGET_REQUESTS_MS
        store.put_pairing(request(1, PairingState.PENDING, before - 1))  # a day unanswered
        store.put_pairing(request(2, PairingState.ACCEPTED, before - 1))
        store.put_pairing(request(3, PairingState.PENDING, before))
        for n in range(10, 10 + MAX_HELD_REQUESTS + 5):
            store.keep_request(
                request(n, PairingState.HELD, now + n), held=MAX_HELD_REQUESTS, before_ms=before
            )
        assert kept(PairingState.HELD) == list(range(15, 10 + MAX_HELD_REQUESTS + 5))
        assert kept(PairingState.PENDING) == [3]
        assert kept(PairingState.ACCEPTED) == [2]
    finally:
        store.close()


def test_held_requests_go_by_arrival_not_by_the_date_their_sender_chose(tmp_path: Path) -> None:
    """Strangers dating their requests ahead (within the clock skew allowed) neither push
    out a request that arrived after theirs nor come before it when the user's listing
    answers the last to arrive."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    now = 1_700_000_000_000

    def held(n: int, at: int) -> Pairing:
        return Pairing(n.to_bytes(32, "big"), True, f"{n:066x}", "x", at, PairingState.HELD, b"")

    try:
        for n in range(MAX_HELD_REQUESTS):
            store.keep_request(held(n, now + 59_000), held=MAX_HELD_REQUESTS, before_ms=0)
        honest = held(1000, now)
        store.keep_request(honest, held=MAX_HELD_REQUESTS, before_ms=0)
        kept = store.held_requests()
        assert len(kept) == MAX_HELD_REQUESTS and kept[0] == honest
        assert held(0, now + 59_000) not in kept  # the first stranger's went
    finally:
        store.close()


def test_revocations_a_request_carried_go_with_the_request_declined_or_forgotten(
    tmp_path: Path,
) -> None:
    """A stranger's friend request carries up to 32 revocations of its own devices, kept
    while it waits: declined, or forgotten past :data:`PENDING_CONTACTS`, it takes them
    with it (20 declined requests left 640 rows for good); a friend's stay."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    users = [Identity.from_label(f"stranger {n}") for n in range(PENDING_CONTACTS + 2)]
    try:
        for user in users:
            device = Identity.from_label(f"{user.session_id} device").session_id
            store.keep_revocations([revoke_pairing(user, device, 1)], own_user="05" + "00" * 32)
            store.put_contact(Contact(user.session_id, ContactState.PENDING, ()))
        assert [len(store.revocations_by(u.session_id, 32)) for u in users[:3]] == [0, 0, 1]
        store.put_contact(Contact(users[2].session_id, ContactState.DECLINED, ()))
        store.put_contact(Contact(users[3].session_id, ContactState.FRIEND, ()))
        assert len(store.revocations_by(users[2].session_id, 32)) == 0
        assert len(store.revocations_by(users[3].session_id, 32)) == 1
        assert len(store.revocations()) == PENDING_CONTACTS - 1
    finally:
        store.close()
