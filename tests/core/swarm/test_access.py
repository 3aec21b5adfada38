"""An owner's access to its mailbox (:mod:`p2psync.swarm.access`): what a node takes as
the owner's word that a store comes from someone it wrote to, and what it refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from p2psync.clock import TEST_EPOCH_MS
from p2psync.envelope import MAX_TIMESTAMP_MS, open_envelope, seal_envelope
from p2psync.errors import DecodeError, RpcError
from p2psync.identity import Identity, message_hash, seal
from p2psync.swarm.access import (
    ACCESS_PERIOD_MS,
    ACCESS_VALIDITY_MS,
    DAY_MS,
    MAX_ACCESS_VALIDITY_MS,
    AccessChecks,
    access_expiry,
    is_current,
    is_signed_by_owner,
    sign_access,
)
from p2psync.swarm.allowance import OwnerQuota, charge_of
from p2psync.swarm.messages import StoreRequest
from p2psync.swarm.records import row_from_wire, row_to_wire
from p2psync.swarm.rows import StoredMessage
from p2psync.wire import Fields, decode_cbor, encode_cbor

ALICE = Identity.from_label("access/alice")
BOB = Identity.from_label("access/bob")
NOW = TEST_EPOCH_MS


def test_a_device_signs_one_access_a_week_valid_for_four_weeks_after() -> None:
    """Every contact written to in one week holds the same token: its expiry tells a node
    the week, not the day, the owner last wrote to the sender."""
    access = sign_access(ALICE, NOW)
    week_start = NOW - NOW % ACCESS_PERIOD_MS
    assert access == sign_access(ALICE, week_start) == sign_access(ALICE, week_start + 6 * DAY_MS)
    assert access != sign_access(ALICE, week_start + ACCESS_PERIOD_MS)
    assert ACCESS_VALIDITY_MS < access.expiry_ms - NOW <= ACCESS_VALIDITY_MS + ACCESS_PERIOD_MS
    assert access.expiry_ms == access_expiry(NOW)
    assert is_signed_by_owner(access, ALICE.session_id)


def test_only_the_owners_own_signature_is_its_access() -> None:
    access = sign_access(ALICE, NOW)
    assert not is_signed_by_owner(access, BOB.session_id)  # Alice's, shown for Bob
    assert not is_signed_by_owner(sign_access(BOB, NOW), ALICE.session_id)
    forged = replace(sign_access(BOB, NOW), ed25519=ALICE.ed25519_public)
    assert not is_signed_by_owner(forged, ALICE.session_id)  # Alice's key, Bob's signature
    later = replace(access, expiry_ms=access.expiry_ms + DAY_MS)  # a day more, unsigned
    assert not is_signed_by_owner(later, ALICE.session_id)
    assert not is_signed_by_owner(access, "not a session id")


def test_an_access_counts_from_before_its_expiry_and_not_from_too_far_ahead() -> None:
    access = sign_access(ALICE, NOW)
    assert is_current(access, NOW)
    assert not is_current(access, access.expiry_ms)
    assert not is_current(access, access.expiry_ms - MAX_ACCESS_VALIDITY_MS - 1)


def test_a_node_refuses_a_forged_access_and_takes_an_expired_one_as_none() -> None:
    checks = AccessChecks(remembered=2)
    access = sign_access(ALICE, NOW)
    assert not checks.vouched(ALICE.session_id, None, NOW)
    assert checks.vouched(ALICE.session_id, access, NOW)
    assert checks.vouched(ALICE.session_id, access, NOW)  # remembered: no second check
    assert not checks.vouched(ALICE.session_id, access, access.expiry_ms)
    with pytest.raises(RpcError) as refused:
        checks.vouched(BOB.session_id, access, NOW)
    assert refused.value.code == "unauthorized"
    for day in range(3):  # more than it remembers: the first is checked again, still good
        checks.vouched(ALICE.session_id, sign_access(ALICE, NOW + day * ACCESS_PERIOD_MS), NOW)
    assert checks.vouched(ALICE.session_id, access, NOW)


def test_a_store_carries_an_access_on_the_wire_and_is_refused_a_malformed_one() -> None:
    access = sign_access(ALICE, NOW)
    store = StoreRequest(ALICE.session_id, 0, 60_000, NOW, b"hi", access)
    wire = decode_cbor(encode_cbor(store.to_wire()))
    assert StoreRequest.from_wire(Fields(wire, "params")) == store
    assert "access" not in replace(store, access=None).to_wire()
    for bad in (
        {**access.to_wire(), "expiry": 2**64},
        {**access.to_wire(), "signature": b"short"},
        {**access.to_wire(), "extra": 1},
        "not a map",
    ):
        with pytest.raises(DecodeError):
            StoreRequest.from_wire(Fields({**wire, "access": bad}, "params"))


def test_a_stranger_leaves_the_owners_reserve() -> None:
    row = StoredMessage(ALICE.session_id, 0, message_hash(b"r"), NOW, NOW + 1, bytes(44))
    assert charge_of(row) == 300
    quota = OwnerQuota(lambda owner: 700, quota=1_000)
    assert quota.fitting([row], lambda held: False) == ([row], set())
    reserved = OwnerQuota(lambda owner: 700, quota=1_000, reserve=1)
    assert reserved.fitting([row], lambda held: False) == ([], {ALICE.session_id})


def test_an_envelope_carries_its_senders_access_and_refuses_anyone_elses() -> None:
    access = sign_access(ALICE, NOW)
    sealed = seal_envelope(ALICE, BOB.x25519_public, "text", b"hi", NOW, access)
    assert open_envelope(BOB, sealed).access == access
    assert open_envelope(BOB, seal_envelope(ALICE, BOB.x25519_public, "t", b"", NOW)).access is None
    with pytest.raises(ValueError, match="its sender's own access"):
        seal_envelope(ALICE, BOB.x25519_public, "text", b"hi", NOW, sign_access(BOB, NOW))


def test_an_envelope_with_an_access_its_sender_did_not_sign_does_not_open() -> None:
    """Opened and sealed again by hand, as its recipient could: the envelope's signature
    is still good (the access is outside it, as it signs itself), its access is not."""
    access = sign_access(ALICE, NOW)
    sealed = seal_envelope(ALICE, BOB.x25519_public, "text", b"hi", NOW, access)
    inner = decode_cbor(BOB.unseal(sealed))
    for bad in (
        [access.expiry_ms + ACCESS_VALIDITY_MS, access.signature],
        [access.expiry_ms],
        [MAX_TIMESTAMP_MS + 1, access.signature],
        sign_access(ALICE, NOW).to_wire(),
    ):
        with pytest.raises(DecodeError, match="access"):
            open_envelope(BOB, seal(BOB.x25519_public, encode_cbor({**inner, "access": bad})))
    again = seal(BOB.x25519_public, encode_cbor(inner))
    assert open_envelope(BOB, again).access == access


def test_a_replicated_row_is_vouched_for_only_by_a_ninth_field_of_true() -> None:
    row = StoredMessage(ALICE.session_id, 0, message_hash(b"r"), NOW, NOW + 60_000, b"r")
    wire = row_to_wire(replace(row, vouched=True))
    assert row_from_wire(wire, NOW).vouched
    assert not row_from_wire(row_to_wire(row), NOW).vouched
    for ninth in (1, False, None, "true", [True]):
        with pytest.raises(DecodeError):
            row_from_wire([*wire[:8], ninth], NOW)
