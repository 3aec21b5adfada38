"""What a device keeps of mailbox access (:mod:`p2psync.swarm.access`): the newest access
of each sender, for the last senders only, and which envelopes carry its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2psync.clock import TEST_EPOCH_MS
from p2psync.device import store as device_store
from p2psync.device.friends import ContactState
from p2psync.device.rows import Contact
from p2psync.device.store import DeviceStore
from p2psync.identity import Identity
from p2psync.swarm.access import ACCESS_PERIOD_MS, sign_access

ALICE = Identity.from_label("kept-access/alice")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeviceStore]:
    opened = DeviceStore(tmp_path / "device.db")
    yield opened
    opened.close()


def test_a_senders_newest_access_is_kept_not_an_older_one(store: DeviceStore) -> None:
    today = sign_access(ALICE, TEST_EPOCH_MS)
    next_week = sign_access(ALICE, TEST_EPOCH_MS + ACCESS_PERIOD_MS)
    assert store.access_to(ALICE.session_id) is None
    store.keep_access(ALICE.session_id, next_week)
    store.keep_access(ALICE.session_id, today)  # an older envelope read later
    assert store.access_to(ALICE.session_id) == next_week


def test_the_accesses_of_the_last_senders_are_kept(
    store: DeviceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_store, "KEPT_ACCESSES", 3)
    senders = [Identity.from_label(f"kept-access/{n}") for n in range(4)]
    for sender in senders[:3]:
        store.keep_access(sender.session_id, sign_access(sender, TEST_EPOCH_MS))
    store.keep_access(  # renewed: the last to send now, so the next to go is the second
        senders[0].session_id, sign_access(senders[0], TEST_EPOCH_MS + ACCESS_PERIOD_MS)
    )
    store.keep_access(senders[3].session_id, sign_access(senders[3], TEST_EPOCH_MS))
    kept = [s for s in senders if store.access_to(s.session_id) is not None]
    assert kept == [senders[0], senders[2], senders[3]]


def test_strangers_push_out_a_friends_access_last(
    store: DeviceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any envelope that opens brings its sender's access, so a stranger sending from
    fresh keys made a device forget its friends' (a review's 4 096 envelopes, 2.2 MiB,
    and the friend's mail to a flooded owner waited 30 minutes and more)."""
    monkeypatch.setattr(device_store, "KEPT_ACCESSES", 3)
    store.put_contact(Contact(ALICE.session_id, ContactState.FRIEND, (ALICE.session_id,)))
    store.keep_access(ALICE.session_id, sign_access(ALICE, TEST_EPOCH_MS))
    strangers = [Identity.from_label(f"kept-access/stranger-{n}") for n in range(5)]
    for stranger in strangers:
        store.keep_access(stranger.session_id, sign_access(stranger, TEST_EPOCH_MS))
    assert store.access_to(ALICE.session_id) is not None
    kept = [s for s in strangers if store.access_to(s.session_id) is not None]
    assert kept == strangers[-2:]


def test_the_first_envelope_to_an_owner_each_week_carries_the_access(store: DeviceStore) -> None:
    this_week = sign_access(ALICE, TEST_EPOCH_MS)
    next_week = sign_access(ALICE, TEST_EPOCH_MS + ACCESS_PERIOD_MS)
    assert store.carry_access("05bob", this_week)
    assert not store.carry_access("05bob", this_week)
    assert store.carry_access("05carol", this_week)
    assert store.carry_access("05bob", next_week)
    assert store.carry_access("05carol", next_week)
    with pytest.raises(RuntimeError), store.transaction():  # an envelope never stored
        assert store.carry_access("05dave", next_week)
        raise RuntimeError
    assert store.carry_access("05dave", next_week)
    # The device moved to another mailbox within the week (to ``linked``): its next
    # envelope carries the new one's access.
    account = sign_access(
        Identity.from_label("kept-access/account"), TEST_EPOCH_MS + ACCESS_PERIOD_MS
    )
    assert account.expiry_ms == next_week.expiry_ms
    assert store.carry_access("05dave", account)
