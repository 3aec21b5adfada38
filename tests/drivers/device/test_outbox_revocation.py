"""A revocation new to a device drops the outbox copies for the revoked device that are
not stored yet (the store, on a file in a test directory)."""

from __future__ import annotations

from pathlib import Path

from p2psync.device.rows import Copy
from p2psync.device.store import DeviceStore
from p2psync.fileserver.rules import MAX_LISTED_REVOCATIONS
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
        store.keep_revocations([revoked], own_user=PRIMARY.session_id)
        assert [entry.seq for entry in store.outbox()] == [both]
        assert store.copies(both) == [Copy(both, DESKTOP.session_id, 1, b"z")]

        # The same revocation again (a device paired again since may have copies queued).
        again = store.add_outbox("sync_sent", PRIMARY.session_id, b"c", NOW + 5, None)
        store.expand(again, [Copy(again, TABLET.session_id, 1, b"w")])
        store.keep_revocations([revoked], own_user=PRIMARY.session_id)
        assert store.copies(again) == [Copy(again, TABLET.session_id, 1, b"w")]
    finally:
        store.close()


BOB = Identity.from_label("outbox/bob")
BOBS_PHONE = Identity.from_label("outbox/bob-phone")
MALLORY = Identity.from_label("outbox/mallory")


def test_a_revocation_drops_only_what_was_sent_to_its_signers_user(tmp_path: Path) -> None:
    """Anyone may sign a revocation naming any device: one Mallory signed naming Bob's
    phone leaves the copy queued for that phone of a message to Bob (a review lost it
    so, unsent and unseen); Bob's own drops it. Removing a sibling, or our own primary
    revoking it, drops the sync copies queued for it, whoever the message went to."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    try:
        to_bob = store.add_outbox("text", BOB.session_id, b"a", NOW, None)
        phone, synced = (
            Copy(to_bob, BOBS_PHONE.session_id, 0, b"x"),
            Copy(to_bob, TABLET.session_id, 1, b"y"),
        )
        store.expand(to_bob, [phone, synced])
        store.keep_revocations(
            [revoke_pairing(MALLORY, BOBS_PHONE.session_id, NOW)], own_user=PRIMARY.session_id
        )
        assert store.copies(to_bob) == [phone, synced]
        store.keep_revocations(
            [revoke_pairing(BOB, BOBS_PHONE.session_id, NOW)], own_user=PRIMARY.session_id
        )
        assert store.copies(to_bob) == [synced]
        store.remove_sibling(TABLET.session_id)
        assert store.outbox() == []

        # Our own primary's revocation of a sibling, learned first from a file server's
        # answer: the sibling's sync copies go, whoever the message went to.
        again = store.add_outbox("text", BOB.session_id, b"b", NOW, None)
        store.expand(again, [Copy(again, TABLET.session_id, 1, b"z")])
        ours = revoke_pairing(PRIMARY, TABLET.session_id, NOW + 1)
        store.keep_revocations([ours], own_user=PRIMARY.session_id)
        assert store.outbox() == []
    finally:
        store.close()


def test_a_user_s_revocations_are_kept_newest_first_up_to_what_a_server_lists(
    tmp_path: Path,
) -> None:
    """Every lookup reads the revocations kept: a user who signs revocations without end
    leaves the newest :data:`MAX_LISTED_REVOCATIONS` of them, not all."""
    store = DeviceStore(tmp_path / "device.sqlite3")
    try:
        signed = [
            revoke_pairing(MALLORY, Identity.from_label(f"outbox/{n}").session_id, NOW + n)
            for n in range(MAX_LISTED_REVOCATIONS + 20)
        ]
        for revocation in signed:
            store.keep_revocations([revocation], own_user=PRIMARY.session_id)
        kept = store.revocations()
        assert sorted(r.timestamp_ms for r in kept) == [r.timestamp_ms for r in signed[20:]]
    finally:
        store.close()
