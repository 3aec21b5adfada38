"""What strangers can make a device keep of contacts (the store, on a file in a test
directory)."""

from __future__ import annotations

from pathlib import Path

from p2psync.device.friends import ContactState
from p2psync.device.rows import Contact
from p2psync.device.store import PENDING_CONTACTS, DeviceStore


def test_friend_requests_waiting_are_kept_newest_first_up_to_a_bound(tmp_path: Path) -> None:
    """Each request costs a stranger one store: past :data:`PENDING_CONTACTS`, the one
    that waited longest goes, and friends, whatever their number, stay."""
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
            store.put_contact(contact)
        kept = store.contacts()
        assert [c for c in kept if c.state == ContactState.FRIEND] == friends
        assert [c for c in kept if c.state == ContactState.PENDING] == waiting[7:]
    finally:
        store.close()
