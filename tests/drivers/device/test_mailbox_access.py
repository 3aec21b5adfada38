"""What a device keeps of mailbox access (:mod:`p2psync.swarm.access`): the newest access
of each sender, for the last senders only, and which envelopes carry its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2psync.clock import TEST_EPOCH_MS
from p2psync.device import store as device_store
from p2psync.device.store import DeviceStore
from p2psync.identity import Identity
from p2psync.swarm.access import DAY_MS, sign_access

ALICE = Identity.from_label("kept-access/alice")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeviceStore]:
    opened = DeviceStore(tmp_path / "device.db")
    yield opened
    opened.close()


def test_a_senders_newest_access_is_kept_not_an_older_one(store: DeviceStore) -> None:
    today = sign_access(ALICE, TEST_EPOCH_MS)
    tomorrow = sign_access(ALICE, TEST_EPOCH_MS + DAY_MS)
    assert store.access_to(ALICE.session_id) is None
    store.keep_access(ALICE.session_id, tomorrow)
    store.keep_access(ALICE.session_id, today)  # an older envelope read later
    assert store.access_to(ALICE.session_id) == tomorrow


def test_the_accesses_of_the_last_senders_are_kept(
    store: DeviceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_store, "KEPT_ACCESSES", 3)
    senders = [Identity.from_label(f"kept-access/{n}") for n in range(4)]
    for sender in senders[:3]:
        store.keep_access(sender.session_id, sign_access(sender, TEST_EPOCH_MS))
    store.keep_access(  # renewed: the last to send now, so the next to go is the second
        senders[0].session_id, sign_access(senders[0], TEST_EPOCH_MS + DAY_MS)
    )
    store.keep_access(senders[3].session_id, sign_access(senders[3], TEST_EPOCH_MS))
    kept = [s for s in senders if store.access_to(s.session_id) is not None]
    assert kept == [senders[0], senders[2], senders[3]]


def test_the_first_envelope_to_an_owner_each_day_carries_the_access(store: DeviceStore) -> None:
    today = sign_access(ALICE, TEST_EPOCH_MS).expiry_ms
    tomorrow = sign_access(ALICE, TEST_EPOCH_MS + DAY_MS).expiry_ms
    assert store.carry_access("05bob", today)
    assert not store.carry_access("05bob", today)
    assert store.carry_access("05carol", today)
    assert store.carry_access("05bob", tomorrow)
    assert store.carry_access("05carol", tomorrow)
    with pytest.raises(RuntimeError), store.transaction():  # an envelope never stored
        assert store.carry_access("05dave", tomorrow)
        raise RuntimeError
    assert store.carry_access("05dave", tomorrow)
