"""Moving a ``mapped`` account to ``linked``, decided without I/O: the signed statement
(strict decode, bounded, forged ones refused), who may start a move, the plan, and what
friends, secondaries and siblings do with what the move sends."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2psync.device.content import (
    AccountLinked,
    LinkedHandOver,
    SyncSent,
    Text,
    copy_ttl_ms,
    decode_content,
    encode_content,
)
from p2psync.device.friends import ContactState
from p2psync.device.inbound import AdoptAccount, Covered, File, Reject, RevokeDevices, decide
from p2psync.device.migration import (
    MAX_RETIRED,
    MAX_STATEMENT_BYTES,
    BecomeLinked,
    HandOver,
    LinkedStatement,
    RevokeMapping,
    TellFriend,
    migration_refusal,
    plan_migration,
    sign_linked_statement,
)
from p2psync.device.modes import Mode
from p2psync.device.rows import Contact
from p2psync.envelope import MAX_TIMESTAMP_MS
from p2psync.errors import DecodeError
from p2psync.identity import Identity
from p2psync.mapping import PAIRING_WINDOW_MS, AuthorisationError, revoke_pairing
from p2psync.swarm.constants import (
    CLOCK_SKEW_MS,
    MAX_TTL_MS,
    NAMESPACE_CONTROL,
    NAMESPACE_MESSAGES,
    NAMESPACE_SYNC,
)
from p2psync.wire import decode_cbor, encode_cbor

from .test_inbound import NOW, Known, friend, inbound, run

ACCOUNT = Identity.from_label("core/migrating-primary")
SECONDARY = Identity.from_label("core/migrating-secondary")
BOB = Identity.from_label("core/migrating-friend")
MALLORY = Identity.from_label("core/mallory")
A, S = ACCOUNT.session_id, SECONDARY.session_id
MOVED_AT = NOW - 60_000


def statement(signer: Identity = ACCOUNT, retired: tuple[str, ...] = (S,)) -> LinkedStatement:
    return sign_linked_statement(signer, retired, MOVED_AT)


def rewritten(record: LinkedStatement, **changes: object) -> bytes:
    """``record``'s wire form with fields changed (and its signature left as it was)."""
    fields = decode_cbor(record.to_bytes())
    assert isinstance(fields, dict)
    return encode_cbor({**fields, **changes})


# --- the statement ----------------------------------------------------------------------------


def test_a_statement_round_trips_and_verifies() -> None:
    signed = statement()
    decoded = LinkedStatement.from_bytes(signed.to_bytes())
    assert decoded == signed and decoded.retired_devices == (S,)
    decoded.verify()


def test_a_statement_signed_by_another_key_is_refused() -> None:
    """The old secondary (or anyone) cannot speak for the account."""
    forged = replace(statement(SECONDARY, (MALLORY.session_id,)), account=A)
    with pytest.raises(AuthorisationError, match="does not belong"):
        LinkedStatement.from_bytes(forged.to_bytes()).verify()
    lying = replace(forged, account_key=ACCOUNT.ed25519_public)
    with pytest.raises(AuthorisationError, match="signature"):
        LinkedStatement.from_bytes(lying.to_bytes()).verify()


def test_a_statement_changed_after_signing_is_refused() -> None:
    signed = statement()
    other = revoke_pairing(ACCOUNT, MALLORY.session_id, MOVED_AT).to_bytes()
    cases: list[dict[str, object]] = [{"ts": MOVED_AT + 1}, {"retired": []}, {"retired": [other]}]
    for changes in cases:
        with pytest.raises(AuthorisationError, match="signature"):
            LinkedStatement.from_bytes(rewritten(signed, **changes)).verify()


@pytest.mark.parametrize(
    "retired",
    [
        (revoke_pairing(MALLORY, S, MOVED_AT),),  # another primary's revocation
        (revoke_pairing(ACCOUNT, S, MOVED_AT + 1),),  # dated after the statement
        (revoke_pairing(ACCOUNT, S, MOVED_AT), revoke_pairing(ACCOUNT, S, MOVED_AT - 1)),
    ],
    ids=["another primary's", "dated after", "one key twice"],
)
def test_a_retirement_the_account_did_not_make_is_refused(retired: tuple[object, ...]) -> None:
    unsigned = LinkedStatement(A, ACCOUNT.ed25519_public, MOVED_AT, retired, b"")  # type: ignore[arg-type]
    signed = replace(unsigned, sig=ACCOUNT.sign(unsigned.signed_bytes()))
    with pytest.raises(AuthorisationError):
        LinkedStatement.from_bytes(signed.to_bytes()).verify()


def test_a_statement_cannot_retire_the_account_key() -> None:
    with pytest.raises(AuthorisationError, match="own"):
        LinkedStatement.from_bytes(statement(retired=(A,)).to_bytes()).verify()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"v": 2}, "version"),
        ({"ts": MAX_TIMESTAMP_MS + 1}, "ts"),
        ({"ts": -1}, "ts"),
        ({"account": "05" + "zz" * 32}, "hex|session id"),
        ({"account_key": b"\0" * 31}, "account_key"),
        ({"sig": b"\0" * 65}, "sig"),
        ({"retired": [b"x"] * (MAX_RETIRED + 1)}, "at most 16"),
        ({"retired": ["not bytes"]}, "bytes"),
        ({"retired": [b"\xa0"]}, "revocation"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_statement_fields_are_bounded_at_decode(changes: dict[str, object], error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        LinkedStatement.from_bytes(rewritten(statement(), **changes))


def test_an_oversize_statement_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(DecodeError):
        LinkedStatement.from_bytes(rewritten(statement(), pad=b"\0" * MAX_STATEMENT_BYTES))


FIELD_VALUES = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.binary(max_size=80),
    st.text(max_size=80),
    st.lists(st.one_of(st.binary(max_size=300), st.integers()), max_size=MAX_RETIRED + 2),
)


@given(
    st.dictionaries(
        st.sampled_from(["v", "account", "account_key", "ts", "retired", "sig", "x"]),
        FIELD_VALUES,
        max_size=4,
    )
)
# Hostile statements are big on purpose (18 keys of up to 300 bytes): drawing them took
# 1.2 s on a loaded machine and hypothesis called that a failure.
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_hostile_fields_are_a_decode_error_never_a_crash(changes: dict[str, object]) -> None:
    """A friend decodes and checks whatever a hostile peer puts in a statement: the
    answer is a statement or :class:`DecodeError` (an :class:`AuthorisationError` from
    ``verify`` is one), never anything else."""
    with contextlib.suppress(DecodeError):
        LinkedStatement.from_bytes(rewritten(statement(), **changes)).verify()


def test_the_most_retired_keys_fit_in_a_statement_and_an_envelope_body() -> None:
    many = [Identity.from_label(f"core/secondary-{n}").session_id for n in range(MAX_RETIRED)]
    signed = sign_linked_statement(ACCOUNT, many, MOVED_AT)
    assert len(signed.to_bytes()) <= MAX_STATEMENT_BYTES
    kind, body = encode_content(AccountLinked(signed.to_bytes()))
    assert decode_content(kind, body) == AccountLinked(signed.to_bytes())
    with pytest.raises(ValueError, match="at most"):
        sign_linked_statement(ACCOUNT, [*many, MALLORY.session_id], MOVED_AT)


def test_the_hand_over_keeps_the_seed_out_of_its_repr() -> None:
    hand_over = LinkedHandOver(ACCOUNT.seed, statement().to_bytes())
    kind, body = encode_content(hand_over)
    assert (kind, decode_content(kind, body)) == ("sync_linked", hand_over)
    assert ACCOUNT.seed.hex() not in repr(hand_over) and "seed" not in repr(hand_over)


def test_the_moves_records_outlive_the_devices_ttl() -> None:
    """A secondary or a friend away for days must still find them (the swarm's longest
    TTL); other records keep the device's TTL, pairing records the pairing window."""
    day = 86_400_000
    assert copy_ttl_ms("sync_linked", NAMESPACE_SYNC, day) == MAX_TTL_MS
    assert copy_ttl_ms("account_linked", NAMESPACE_MESSAGES, day) == MAX_TTL_MS
    assert copy_ttl_ms("text", NAMESPACE_MESSAGES, day) == day
    assert copy_ttl_ms("pair_grant", NAMESPACE_CONTROL, day) == PAIRING_WINDOW_MS


# --- who may move, and the plan ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "primary", "moved", "refusal"),
    [
        (Mode.MAPPED, True, False, None),
        (Mode.MAPPED, False, False, "only the primary"),
        (Mode.LINKED, True, False, "linked already"),
        (Mode.LINKED, True, True, "moved to linked mode already"),
    ],
)
def test_who_may_move_an_account(mode: Mode, primary: bool, moved: bool, refusal: str) -> None:
    found = migration_refusal(mode, primary, moved)
    assert found == refusal if refusal is None else refusal in (found or "")
    assert found is None or "\n" not in found


def test_the_plan_revokes_first_then_hands_over_tells_and_switches() -> None:
    bob, carol = BOB.session_id, MALLORY.session_id
    effects = plan_migration(ACCOUNT, [S, S], [carol, bob], MOVED_AT)
    [revoke, hand_over, *tell, switch] = effects
    assert isinstance(revoke, RevokeMapping) and revoke.revocation.secondary == S
    data = statement().to_bytes()
    assert hand_over == HandOver(S, data)
    assert tell == [TellFriend(user, data) for user in sorted((bob, carol))]
    assert switch == BecomeLinked(data)


def test_a_single_device_account_moves_with_nothing_to_revoke() -> None:
    assert [type(e) for e in plan_migration(ACCOUNT, [], [], MOVED_AT)] == [BecomeLinked]


# --- what arrives -----------------------------------------------------------------------------


def bob_knows_alice(**state: object) -> Known:
    """Bob, a friend of the migrating account, who knows its two device keys."""
    contacts = {A: Contact(A, ContactState.FRIEND, (A, S))}
    fields: dict[str, object] = {
        "mode": Mode.MAPPED,
        "contacts": contacts,
        "user_id": BOB.session_id,
        "device_id": BOB.session_id,
        "account_key": BOB.ed25519_public,
        **state,
    }
    return Known(**fields)  # type: ignore[arg-type]


def test_a_friend_applies_the_statement_and_drops_the_old_key() -> None:
    signed = statement()
    [effect] = run(bob_knows_alice(), inbound(AccountLinked(signed.to_bytes()), ACCOUNT))
    assert effect == RevokeDevices(
        signed.retired, Contact(A, ContactState.FRIEND, (A,)), signed.to_bytes()
    )


@pytest.mark.parametrize("mode", list(Mode))
def test_a_forged_statement_is_refused(mode: Mode) -> None:
    """Signed by the old secondary (or anyone but the account), or a genuine statement
    sent by another key: refused, and the contact keeps its devices."""
    known = bob_knows_alice(mode=mode)
    forged = replace(statement(SECONDARY), account=A).to_bytes()
    genuine = statement().to_bytes()
    for content, signer in [
        (AccountLinked(forged), ACCOUNT),
        (AccountLinked(forged), SECONDARY),
        (AccountLinked(genuine), SECONDARY),
        (AccountLinked(genuine), MALLORY),
    ]:
        [effect] = run(known, inbound(content, signer))
        assert isinstance(effect, Reject), (content, signer)


def test_a_statement_from_someone_who_is_no_friend_or_dated_ahead_is_refused() -> None:
    data = statement().to_bytes()
    [effect] = run(bob_knows_alice(contacts={}), inbound(AccountLinked(data), ACCOUNT))
    assert isinstance(effect, Reject) and "not a friend" in effect.reason
    ahead = sign_linked_statement(ACCOUNT, [S], NOW + 10 * 3_600_000).to_bytes()
    [effect] = run(bob_knows_alice(), inbound(AccountLinked(ahead), ACCOUNT))
    assert isinstance(effect, Reject) and "ahead" in effect.reason


def secondary(**state: object) -> Known:
    """The mapped secondary S of account A, before the move."""
    fields: dict[str, object] = {
        "mode": Mode.MAPPED,
        "user_id": A,
        "device_id": S,
        "account_key": SECONDARY.ed25519_public,
        "sibling_names": {A: "phone"},
        **state,
    }
    return Known(**fields)  # type: ignore[arg-type]


def test_a_secondary_adopts_the_account_handed_over_by_its_primary() -> None:
    data = statement().to_bytes()
    [effect] = run(secondary(), inbound(LinkedHandOver(ACCOUNT.seed, data), ACCOUNT))
    assert effect == AdoptAccount(ACCOUNT.seed, data)


def test_a_hand_over_that_does_not_check_out_is_refused() -> None:
    data = statement().to_bytes()
    other = Identity.from_label("core/other-secondary").session_id
    cases = {
        "sent by the old key": (LinkedHandOver(ACCOUNT.seed, data), SECONDARY, secondary()),
        "not the account's seed": (LinkedHandOver(MALLORY.seed, data), ACCOUNT, secondary()),
        "retires another device": (
            LinkedHandOver(ACCOUNT.seed, statement(retired=(other,)).to_bytes()),
            ACCOUNT,
            secondary(),
        ),
        "for another account": (
            LinkedHandOver(MALLORY.seed, statement(MALLORY).to_bytes()),
            MALLORY,
            secondary(),
        ),
        "to a linked device": (
            LinkedHandOver(ACCOUNT.seed, data),
            ACCOUNT,
            secondary(mode=Mode.LINKED, account_key=ACCOUNT.ed25519_public),
        ),
    }
    for why, (content, signer, known) in cases.items():
        [effect] = run(known, inbound(content, signer))
        assert isinstance(effect, Reject), why


def moved(device: Identity) -> Known:
    """A device of account A after the move: linked, acting with the account's key."""
    return Known(
        mode=Mode.LINKED,
        user_id=A,
        device_id=device.session_id,
        account_key=ACCOUNT.ed25519_public,
        sibling_names={S: "desktop"} if device is ACCOUNT else {A: "phone"},
        contacts={BOB.session_id: friend(BOB.session_id)},
        migration=statement(),
    )


def test_a_hand_over_read_again_after_the_move_changes_nothing() -> None:
    data = statement().to_bytes()
    assert run(moved(SECONDARY), inbound(LinkedHandOver(ACCOUNT.seed, data), ACCOUNT)) == []


def test_a_retired_siblings_sync_records_count_from_the_move_on() -> None:
    """After the move a sync record signed by a retired key is a sibling that has not
    read its hand-over yet (accepted), unless dated before the move: then it reached
    every sibling's own swarm already, and replaying it could undo later changes."""
    sent = SyncSent(b"\7" * 32, BOB.session_id, MOVED_AT + 1, "sent in between")
    after = inbound(sent, SECONDARY, at=MOVED_AT + 1)
    [filed, covered] = run(moved(ACCOUNT), after)
    assert isinstance(filed, File) and filed.record.device == S
    assert covered == Covered(sent.id)
    assert run(moved(ACCOUNT), inbound(sent, SECONDARY, at=MOVED_AT - 1)) == []
    assert run(moved(SECONDARY), inbound(sent, SECONDARY, at=MOVED_AT - 1)) == []
    [refused] = run(moved(ACCOUNT), inbound(sent, MALLORY, at=MOVED_AT + 1))
    assert isinstance(refused, Reject) and "not signed by this account" in refused.reason


def test_a_retired_siblings_sync_records_stop_counting_once_its_hand_over_expired() -> None:
    """A secondary away past its hand-over's life never switches: whoever holds its key
    later must not write into the account's history for ever."""
    late = MOVED_AT + MAX_TTL_MS
    sent = SyncSent(b"\7" * 32, BOB.session_id, late, "long after the move")
    [refused] = run(moved(ACCOUNT), inbound(sent, SECONDARY, at=late))
    assert isinstance(refused, Reject) and "past its hand-over" in refused.reason


def test_a_friends_message_after_the_move_comes_from_the_account_key() -> None:
    """What the secondary sends after adopting is signed by the account: the user's."""
    known = bob_knows_alice(contacts={A: Contact(A, ContactState.FRIEND, (A,))})
    [effect] = run(known, inbound(Text(A, "from the desktop, moved"), ACCOUNT))
    assert isinstance(effect, File) and effect.record.sender == A


def bob_after_alices_move(*, told: bool = True) -> Known:
    """Bob once he applied Alice's statement (``told``; else a plain revocation of the
    old desktop key): the key is revoked, and retired by her move."""
    return bob_knows_alice(
        contacts={A: Contact(A, ContactState.FRIEND, (A,))},
        revoked={(A, S): MOVED_AT},
        friend_moves={A: statement()} if told else {},
    )


#: What the file server says of Alice once she moved: her account key alone.
ALICE_NOW = {A: (A,)}


def test_a_friend_files_what_a_retired_device_sent_before_reading_its_hand_over() -> None:
    """Between the move and its hand-over the desktop still signs with its own key (a
    ``send`` just after ``migrate``): the friend files it as the account's, as the
    account's siblings file its sync records; dated before the move it was dealt with
    then; once the hand-over would have expired unread, the key is refused."""
    text = Text(A, "sent before reading the hand-over")
    [filed] = run(bob_after_alices_move(), inbound(text, SECONDARY, at=MOVED_AT + 1))
    assert isinstance(filed, File) and (filed.record.sender, filed.record.device) == (A, S)
    assert run(bob_after_alices_move(), inbound(text, SECONDARY, at=MOVED_AT - 1)) == []
    late = MOVED_AT + MAX_TTL_MS
    [refused] = run(bob_after_alices_move(), inbound(text, SECONDARY, at=late), ALICE_NOW)
    assert isinstance(refused, Reject) and "is not a device of" in refused.reason


def test_a_friend_without_the_statement_still_refuses_a_revoked_key() -> None:
    """Only a move's statement opens the window: a device revoked outright gets none."""
    text = Text(A, "after my revocation")
    known = bob_after_alices_move(told=False)
    [refused] = run(known, inbound(text, SECONDARY, at=MOVED_AT + 1), ALICE_NOW)
    assert isinstance(refused, Reject) and "is not a device of" in refused.reason


def test_a_retired_key_found_later_cannot_backdate_its_way_in() -> None:
    """The date is the signer's: a record dated inside the window but read after any
    record of the window could have left the swarms is refused, from friends and
    siblings alike."""
    late_read = MOVED_AT + 2 * MAX_TTL_MS + CLOCK_SKEW_MS
    text = Text(A, "backdated into the window")
    item = inbound(text, SECONDARY, at=MOVED_AT + 1)
    [refused] = decide(bob_after_alices_move(), item, late_read, ALICE_NOW)
    assert isinstance(refused, Reject) and "is not a device of" in refused.reason
    [filed] = decide(bob_after_alices_move(), item, late_read - 1, ALICE_NOW)
    assert isinstance(filed, File)
    sent = SyncSent(b"\7" * 32, BOB.session_id, MOVED_AT + 1, "backdated")
    [refused] = decide(moved(ACCOUNT), inbound(sent, SECONDARY, at=MOVED_AT + 1), late_read, {})
    assert isinstance(refused, Reject) and "past its hand-over" in refused.reason
