"""A revocation new to a device drops the outbox copies for the revoked device that are
not stored yet (the store, on a file in a test directory)."""

from __future__ import annotations

from pathlib import Path

from p2psync.device.rows import Copy
from p2psync.device.store import DeviceStore
from p2psync.identity import Identity
from p2psync.mapping import revoke_pairing

PRIMARY = Identity.from_label("outbox/primary")
TABLET = Identity.from_label("outbox/tablet")
DESKTOP = Identity.from_label("outbox/desktop")
NOW = 1_700_000_000_000


def test_copies_queued_for_a_revoked_device_are_dropped_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    store = DeviceStore(tmp_path / "device.sqlite3")
    try:
        only_tablet = store.add_outbox("sync_sent", PRIMARY.session_id, b"a", NOW, None)
        both = store.add_outbox("sync_sent", PRIMARY.session_id, b"b", NOW, None)
        store.expand(only_tablet, [Copy(only_tablet, TABLET.session_id, 1, b"x")])
        store.expand(
            both,
            [Copy(both, TABLET.session_id, 1, b"y"), Copy(both, DESKTOP.session_id, 1, b"z")],
        )
        revoked = revoke_pairing(PRIMARY, TABLET.session_id, NOW)
        store.keep_revocations([revoked])
        assert [entry.seq for entry in store.outbox()] == [both]
        assert store.copies(both) == [Copy(both, DESKTOP.session_id, 1, b"z")]

        # The same revocation again (a device paired again since may have copies queued).
        again = store.add_outbox("sync_sent", PRIMARY.session_id, b"c", NOW + 5, None)
        store.expand(again, [Copy(again, TABLET.session_id, 1, b"w")])
        store.keep_revocations([revoked])
        assert store.copies(again) == [Copy(again, TABLET.session_id, 1, b"w")]
    finally:
        store.close()
