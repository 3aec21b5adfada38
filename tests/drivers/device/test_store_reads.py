"""What the device store keeps in memory of what every path check reads (meta values, the
siblings' overlay keys) is always what the file holds: a write replaces it, and a write a
rollback undid leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2psync.device.store import DeviceStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeviceStore]:
    opened = DeviceStore(tmp_path / "device.db")
    yield opened
    opened.close()


def test_a_meta_value_read_again_after_a_write_or_a_delete_is_the_new_one(
    store: DeviceStore,
) -> None:
    assert store.get_meta("k") is None
    store.set_meta("k", b"one")
    assert store.get_meta("k") == b"one"
    store.set_meta("k", b"two")
    assert store.get_meta("k") == b"two"
    store.delete_meta("k")
    assert store.get_meta("k") is None


def test_a_meta_value_written_and_read_in_a_transaction_that_failed_is_gone(
    store: DeviceStore,
) -> None:
    store.set_meta("k", b"kept")
    with pytest.raises(RuntimeError), store.transaction():
        store.set_meta("k", b"undone")
        assert store.get_meta("k") == b"undone"
        raise RuntimeError
    assert store.get_meta("k") == b"kept"


def test_sibling_keys_follow_every_change_and_not_one_a_rollback_undid(
    store: DeviceStore,
) -> None:
    assert store.sibling_overlay_keys() == {}
    store.add_sibling("desktop", "Desktop", b"k1")
    assert store.sibling_overlay_keys() == {"desktop": b"k1"}
    store.remove_sibling("desktop")  # revoked, then paired again (another key: a test's)
    assert store.sibling_overlay_keys() == {}
    store.add_sibling("desktop", "Desktop", b"k2")
    assert store.sibling_overlay_keys() == {"desktop": b"k2"}
    with pytest.raises(RuntimeError), store.transaction():
        store.add_sibling("laptop", "Laptop", b"k3")
        assert store.sibling_overlay_keys() == {"desktop": b"k2", "laptop": b"k3"}
        raise RuntimeError
    assert store.sibling_overlay_keys() == {"desktop": b"k2"}
    store.sibling_overlay_keys()["desktop"] = b"changed by a caller"
    assert store.sibling_overlay_keys() == {"desktop": b"k2"}
    store.remove_sibling("desktop")
    assert store.sibling_overlay_keys() == {}


def test_what_the_store_kept_is_what_the_file_holds_once_reopened(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path / "device.db")
    store.set_meta("k", b"v")
    store.add_sibling("desktop", "Desktop", b"k1")
    store.close()
    reopened = DeviceStore(tmp_path / "device.db")
    try:
        assert reopened.get_meta("k") == b"v"
        assert reopened.sibling_overlay_keys() == {"desktop": b"k1"}
    finally:
        reopened.close()


def test_a_sibling_added_again_is_renamed_and_keeps_the_key_it_was_first_known_by(
    store: DeviceStore,
) -> None:
    """A sibling's overlay key derives from its seed, so a record naming another is not
    the sibling's: taken, it would send the sibling's sessions to whoever holds it."""
    store.add_sibling("05" + "aa" * 32, "tablet", b"\1" * 32)
    store.add_sibling("05" + "aa" * 32, "old tablet", b"\2" * 32)
    assert store.siblings() == {"05" + "aa" * 32: "old tablet"}
    assert store.sibling_overlay_keys() == {"05" + "aa" * 32: b"\1" * 32}
