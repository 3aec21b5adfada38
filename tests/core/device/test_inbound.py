"""The inbound core, called directly: a record and what the device knows in, effects out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pytest

from p2psync.device.content import (
    MAX_CARRIED_REVOCATIONS,
    NAMESPACE_OF,
    ContactRecord,
    Content,
    DeviceRevoked,
    FriendAccept,
    FriendRequest,
    HistoryRecord,
    PairChallenge,
    PairDecline,
    PairGrant,
    PairRequest,
    SiblingRecord,
    SiblingsSecret,
    SyncSent,
    Text,
    decode_content,
    encode_content,
)
from p2psync.device.friends import ContactState
from p2psync.device.inbound import (
    MAX_AHEAD_MS,
    PENDING_MESSAGES,
    AddSibling,
    AdoptGrant,
    AdoptSecret,
    Befriend,
    Covered,
    Defer,
    DeleteSyncCopy,
    Effect,
    File,
    HoldRequest,
    Inbound,
    KeepPairing,
    NeedDevicesOf,
    PutContact,
    Reject,
    RevokeDevices,
    RevokedHere,
    RevokeSibling,
    SendChallenge,
    SendDecline,
    decide,
    held_to_answer,
    waits_with_friends,
)
from p2psync.device.migration import LinkedStatement
from p2psync.device.modes import RULES, Mode, Rules
from p2psync.device.pairing import WAITING_HERE, PairingBudget, PairingState
from p2psync.device.rows import Contact, Pairing
from p2psync.errors import DecodeError
from p2psync.identity import Identity
from p2psync.mapping import MAX_RECORD_BYTES, PAIRING_WINDOW_MS, revoke_pairing
from p2psync.swarm.constants import NAMESPACE_SYNC
from p2psync.wire import decode_cbor, encode_cbor

NOW = 1_700_000_000_000
ME = Identity.from_label("core/me")
SIBLING = Identity.from_label("core/sibling")
BOB = Identity.from_label("core/bob")
BOBS_PHONE = Identity.from_label("core/bob-phone")
DIGEST = bytes(range(32))


@dataclass
class Known:
    """A device's knowledge, as the core reads it."""

    mode: Mode = Mode.LINKED
    contacts: dict[str, Contact] = field(default_factory=dict)
    sibling_names: dict[str, str] = field(default_factory=dict)
    pairings: dict[bytes, Pairing] = field(default_factory=dict)
    pairing_budget_left: PairingBudget = PairingBudget.ANSWER
    expected_devices: tuple[str, ...] = ()
    user_id: str = ME.session_id
    device_id: str = ME.session_id
    account_key: bytes = ME.ed25519_public
    display_name_at_ms: int = 0
    migration: LinkedStatement | None = None
    revoked: dict[tuple[str, str], int] = field(default_factory=dict)
    revoked_here_at_ms: int | None = None
    paired_at_ms: int = 0
    secret_at_ms: int = 0
    friend_moves: dict[str, LinkedStatement] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    @property
    def rules(self) -> Rules:
        return RULES[self.mode]

    def contact(self, user: str) -> Contact | None:
        return self.contacts.get(user)

    def siblings(self) -> Mapping[str, str]:
        return self.sibling_names

    def revoked_at_ms(self, user: str, device: str) -> int | None:
        return self.revoked.get((user, device))

    def friend_move(self, user: str) -> LinkedStatement | None:
        return self.friend_moves.get(user)

    def received_from(self, user: str) -> int:
        return self.received.get(user, 0)

    def pairing(self, request_id: bytes) -> Pairing | None:
        return self.pairings.get(request_id)

    def waiting_requests(self) -> list[Pairing]:
        waiting = [p for p in self.pairings.values() if p.incoming]
        return [p for p in waiting if p.state in WAITING_HERE]

    def requests_made_at(self, timestamp_ms: int) -> list[Pairing]:
        made = [p for p in self.pairings.values() if p.incoming]
        return [p for p in made if p.timestamp_ms == timestamp_ms]

    def pairing_budget(self, sender_key: bytes) -> PairingBudget:
        return self.pairing_budget_left

    def expects(self, device: str) -> bool:
        return any(device.startswith(prefix) for prefix in self.expected_devices)


def inbound(
    content: Content, signer: Identity, *, namespace: int | None = None, at: int = NOW
) -> Inbound:
    kind, _ = encode_content(content)
    return Inbound(
        DIGEST,
        kind,
        NAMESPACE_OF[kind] if namespace is None else namespace,
        signer.ed25519_public,
        signer.session_id,
        at,
        content,
    )


def run(known: Known, item: Inbound, devices: Mapping[str, tuple[str, ...]] = {}) -> list[Effect]:
    return decide(known, item, NOW, devices)


def friend(user: str, *devices: str) -> Contact:
    return Contact(user, ContactState.FRIEND, (user, *devices))


def test_a_friends_message_is_filed() -> None:
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    [effect] = run(known, inbound(Text(BOB.session_id, "hi"), BOB))
    assert effect == File(
        DIGEST,
        HistoryRecord(NOW, BOB.session_id, False, BOB.session_id, BOB.session_id, "hi"),
        DIGEST,  # linked: pushed to siblings directly
    )


def test_a_linked_device_files_under_the_copys_digest_whatever_id_it_names() -> None:
    """One copy reaches a linked account, filed and handed to the siblings under its
    digest: an id its sender names unifies nothing (and filed under it, the message was
    filed twice, the siblings getting it under the digest)."""
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    [effect] = run(known, inbound(Text(BOB.session_id, "hi", id=b"\1" * 32), BOB))
    assert isinstance(effect, File) and effect.message_id == effect.share_as == DIGEST


def test_a_mapped_device_files_without_sharing_and_under_the_fan_out_id() -> None:
    known = Known(mode=Mode.MAPPED, contacts={BOB.session_id: friend(BOB.session_id)})
    [effect] = run(known, inbound(Text(BOB.session_id, "hi", id=b"\1" * 32), BOB))
    assert isinstance(effect, File) and effect.message_id == b"\1" * 32
    assert effect.share_as is None


def test_a_record_in_the_wrong_namespace_is_refused() -> None:
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    item = inbound(Text(BOB.session_id, "hi"), BOB, namespace=NAMESPACE_SYNC)
    [effect] = run(known, item)
    assert isinstance(effect, Reject) and "does not belong in namespace" in effect.reason


def test_a_stranger_is_refused_unless_a_sibling_may_know_them() -> None:
    item = inbound(Text(BOB.session_id, "hi"), BOB)
    [refused] = run(Known(), item)
    assert isinstance(refused, Reject) and "not a friend" in refused.reason
    [deferred] = run(Known(sibling_names={SIBLING.session_id: "tablet"}), item)
    assert isinstance(deferred, Defer)


def test_what_waits_with_friends_is_what_waits_on_the_devices_of_the_user_or_a_friend() -> None:
    """A record put aside waits in the share strangers cannot push out only while the
    devices of this user or of a friend could not be looked up; what the core defers
    (someone not a friend yet) and a failure anywhere else wait with strangers."""
    pending = Contact(BOB.session_id, ContactState.PENDING, (BOB.session_id,))
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    assert waits_with_friends(known, BOB.session_id)
    assert waits_with_friends(known, ME.session_id)
    assert not waits_with_friends(known, None)
    assert not waits_with_friends(known, BOBS_PHONE.session_id)
    assert not waits_with_friends(Known(contacts={BOB.session_id: pending}), BOB.session_id)


def test_a_declined_contact_is_refused() -> None:
    declined = Contact(BOB.session_id, ContactState.DECLINED, (BOB.session_id,))
    [effect] = run(
        Known(contacts={BOB.session_id: declined}), inbound(Text(BOB.session_id, "x"), BOB)
    )
    assert isinstance(effect, Reject) and "not a friend" in effect.reason


def test_an_unknown_device_is_looked_up_fresh_then_decided() -> None:
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    item = inbound(Text(BOB.session_id, "from the phone"), BOBS_PHONE)
    assert run(known, item) == [NeedDevicesOf(BOB.session_id, fresh=True)]
    [refused] = run(known, item, {BOB.session_id: (BOB.session_id,)})
    assert isinstance(refused, Reject) and "is not a device of" in refused.reason
    [filed] = run(known, item, {BOB.session_id: (BOB.session_id, BOBS_PHONE.session_id)})
    assert isinstance(filed, File) and filed.record.device == BOBS_PHONE.session_id


def test_a_known_device_passes_without_a_lookup() -> None:
    known = Known(contacts={BOB.session_id: friend(BOB.session_id, BOBS_PHONE.session_id)})
    [filed] = run(known, inbound(Text(BOB.session_id, "hi"), BOBS_PHONE))
    assert isinstance(filed, File)


def test_a_message_dated_too_far_ahead_is_refused() -> None:
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    late = inbound(Text(BOB.session_id, "from 3000"), BOB, at=NOW + MAX_AHEAD_MS + 1)
    [effect] = run(known, late)
    assert isinstance(effect, Reject) and "ahead of this device's clock" in effect.reason
    [filed] = run(known, inbound(Text(BOB.session_id, "soon"), BOB, at=NOW + MAX_AHEAD_MS))
    assert isinstance(filed, File)


def test_a_friend_request_becomes_pending_with_the_requesters_devices() -> None:
    item = inbound(FriendRequest(BOB.session_id, (BOB.session_id,), "hi"), BOB)
    assert run(Known(), item) == [NeedDevicesOf(BOB.session_id, fresh=False)]
    devices = {BOB.session_id: (BOB.session_id, BOBS_PHONE.session_id)}
    assert run(Known(), item, devices) == [
        PutContact(Contact(BOB.session_id, ContactState.PENDING, devices[BOB.session_id], "hi"))
    ]


def test_a_new_friend_keeps_the_revocations_it_is_told_of_and_trusts_none_it_names() -> None:
    """Bob's request (or acceptance) carries his revocations of his own devices: his
    phone, unpaired before we met, is left out of his devices whatever the file server
    lists, and the revocation kept for its later answers. One Bob did not sign is
    refused with the record."""
    phone = revoke_pairing(BOB, BOBS_PHONE.session_id, NOW - 10)
    listed = {BOB.session_id: (BOB.session_id, BOBS_PHONE.session_id)}
    told = FriendRequest(BOB.session_id, (BOB.session_id,), "hi", "", (phone.to_bytes(),))
    pending = Contact(BOB.session_id, ContactState.PENDING, (BOB.session_id,), "hi")
    assert run(Known(), inbound(told, BOB), listed) == [RevokeDevices((phone,), pending)]
    asked = Known(contacts={BOB.session_id: replace(pending, state=ContactState.REQUESTED)})
    accept = FriendAccept(BOB.session_id, (BOB.session_id,), "", (phone.to_bytes(),))
    [kept] = run(asked, inbound(accept, BOB), listed)
    assert kept == RevokeDevices((phone,), replace(pending, state=ContactState.FRIEND))
    foreign = revoke_pairing(SIBLING, BOBS_PHONE.session_id, NOW - 10)
    forged = replace(told, revocations=(foreign.to_bytes(),))
    [refused] = run(Known(), inbound(forged, BOB), listed)
    assert isinstance(refused, Reject) and "not theirs" in refused.reason


def test_a_request_from_someone_we_asked_befriends_them() -> None:
    asked = Contact(BOB.session_id, ContactState.REQUESTED, (BOB.session_id,))
    item = inbound(FriendRequest(BOB.session_id, (BOB.session_id,), ""), BOB)
    [effect] = run(
        Known(contacts={BOB.session_id: asked}), item, {BOB.session_id: (BOB.session_id,)}
    )
    assert effect == Befriend(asked)


def test_a_friend_request_from_our_own_user_is_refused() -> None:
    [effect] = run(Known(), inbound(FriendRequest(ME.session_id, (), ""), ME))
    assert isinstance(effect, Reject) and "own device" in effect.reason


def test_a_requester_waiting_for_an_answer_has_a_few_messages_kept_not_more() -> None:
    """A pending requester's messages read as part of the request; past
    :data:`PENDING_MESSAGES` they wait with the records not decided yet, within those
    bounds (a stranger's key costs nothing, and a review filled a device's disk so, 7.7
    MiB and growing), to be filed if the user accepts; a friend's are not counted."""
    pending = Contact(BOB.session_id, ContactState.PENDING, (BOB.session_id,))
    item = inbound(Text(BOB.session_id, "hi"), BOB)
    below = Known(
        contacts={BOB.session_id: pending}, received={BOB.session_id: PENDING_MESSAGES - 1}
    )
    assert [type(e) for e in run(below, item)] == [File]
    at = replace(below, received={BOB.session_id: PENDING_MESSAGES})
    [waits] = run(at, item)
    assert isinstance(waits, Defer) and "waits for an answer" in waits.reason
    befriended = replace(at, contacts={BOB.session_id: friend(BOB.session_id)})
    assert [type(e) for e in run(befriended, item)] == [File]


def test_an_acceptance_nobody_asked_for_is_refused() -> None:
    pending = Contact(BOB.session_id, ContactState.PENDING, (BOB.session_id,))
    item = inbound(FriendAccept(BOB.session_id, (BOB.session_id,)), BOB)
    for known in (Known(), Known(contacts={BOB.session_id: pending})):
        [effect] = run(known, item)
        assert isinstance(effect, Reject) and "was not asked" in effect.reason


def test_an_acceptance_makes_a_friend() -> None:
    asked = Contact(BOB.session_id, ContactState.REQUESTED, (BOB.session_id,))
    item = inbound(FriendAccept(BOB.session_id, (BOB.session_id,)), BOB)
    [effect] = run(
        Known(contacts={BOB.session_id: asked}), item, {BOB.session_id: (BOB.session_id,)}
    )
    assert effect == PutContact(friend(BOB.session_id))


def test_a_linked_sync_copy_must_be_signed_by_the_account() -> None:
    sent = SyncSent(b"\2" * 32, BOB.session_id, NOW, "sent elsewhere")
    [refused] = run(Known(), inbound(sent, BOB))
    assert isinstance(refused, Reject) and "not signed by this account" in refused.reason
    file, covered = run(Known(), inbound(sent, ME))
    assert isinstance(file, File) and file.message_id == sent.id and file.record.outgoing
    assert covered == Covered(sent.id)


def test_a_mapped_sync_copy_from_a_sibling_is_filed_then_deleted() -> None:
    known = Known(mode=Mode.MAPPED, sibling_names={SIBLING.session_id: "tablet"})
    sent = SyncSent(b"\2" * 32, BOB.session_id, NOW, "sent on the tablet")
    file, delete = run(known, inbound(sent, SIBLING))
    assert isinstance(file, File) and file.record.device == SIBLING.session_id
    assert delete == DeleteSyncCopy(DIGEST)
    [refused] = run(known, inbound(sent, ME))
    assert isinstance(refused, Reject) and "this very device" in refused.reason


def test_a_siblings_contact_change_never_undoes_a_friendship() -> None:
    known = Known(contacts={BOB.session_id: friend(BOB.session_id)})
    record = ContactRecord(BOB.session_id, ContactState.DECLINED, (BOB.session_id,))
    assert run(known, inbound(record, ME)) == []
    [effect] = run(Known(), inbound(record, ME))
    assert effect == PutContact(Contact(BOB.session_id, ContactState.DECLINED, (BOB.session_id,)))


def test_a_siblings_contact_names_only_the_devices_known_here_or_listed() -> None:
    """A sibling's contact record naming a device of Bob's not known here is checked with
    the file server (fresh), and a key it does not list is left out: a stolen secondary
    could otherwise add a key of the thief's to Bob's devices before its revocation."""
    thiefs = Identity.from_label("core/thief").session_id
    known = mapped_secondary(contacts={BOB.session_id: friend(BOB.session_id)})
    bobs = (BOB.session_id, BOBS_PHONE.session_id, thiefs)
    record = ContactRecord(BOB.session_id, ContactState.FRIEND, bobs)
    assert run(known, inbound(record, SIBLING)) == [NeedDevicesOf(BOB.session_id, fresh=True)]
    listed = {BOB.session_id: (BOB.session_id, BOBS_PHONE.session_id)}
    assert run(known, inbound(record, SIBLING), listed) == [
        PutContact(friend(BOB.session_id, BOBS_PHONE.session_id))
    ]
    told = replace(record, devices=(BOB.session_id,))  # nothing new: no lookup
    assert run(known, inbound(told, SIBLING)) == [PutContact(friend(BOB.session_id))]


def test_a_new_sibling_is_added_but_not_this_device() -> None:
    record = SiblingRecord(SIBLING.session_id, bytes(32), "tablet")
    assert run(Known(), inbound(record, ME)) == [AddSibling(record)]
    assert run(Known(), inbound(SiblingRecord(ME.session_id, bytes(32), "me"), ME)) == []


PRIMARY = Identity.from_label("core/primary")


def mapped_secondary(**known: object) -> Known:
    """This device as the second device of ``PRIMARY``'s mapped account, ``SIBLING`` a third."""
    return Known(
        mode=Mode.MAPPED,
        user_id=PRIMARY.session_id,
        sibling_names={PRIMARY.session_id: "phone", SIBLING.session_id: "tablet"},
        **known,  # type: ignore[arg-type]
    )


def test_our_primarys_revocation_of_a_sibling_is_kept() -> None:
    revoked = revoke_pairing(PRIMARY, SIBLING.session_id, NOW - 10)
    assert run(mapped_secondary(), inbound(DeviceRevoked(revoked.to_bytes()), PRIMARY)) == [
        RevokeSibling(revoked)
    ]
    [forged] = run(mapped_secondary(), inbound(DeviceRevoked(revoked.to_bytes()), SIBLING))
    assert isinstance(forged, Reject) and "from the primary that signed it" in forged.reason


def test_our_primarys_revocation_of_this_device_is_taken_once_and_only_in_mapped_mode() -> None:
    """The unpaired device learns it (and stops acting for the user), even if a file
    server's answer carried the same revocation first; a copy read again once it was
    told changes nothing; one dated before the mapping this device was paired by is of
    an earlier pairing; a sibling cannot revoke it, nor can a linked sibling (every
    linked device holds the account key a revocation would be signed with)."""
    mine = revoke_pairing(PRIMARY, ME.session_id, NOW - 10)
    seen = mapped_secondary(revoked={(PRIMARY.session_id, ME.session_id): NOW - 10})
    for known in (mapped_secondary(), seen):
        assert run(known, inbound(DeviceRevoked(mine.to_bytes()), PRIMARY)) == [RevokedHere(mine)]
    told = mapped_secondary(revoked_here_at_ms=NOW - 10)
    assert run(told, inbound(DeviceRevoked(mine.to_bytes()), PRIMARY)) == []
    [earlier] = run(
        mapped_secondary(paired_at_ms=NOW - 10), inbound(DeviceRevoked(mine.to_bytes()), PRIMARY)
    )
    assert isinstance(earlier, Reject) and "earlier pairing" in earlier.reason
    [forged] = run(mapped_secondary(), inbound(DeviceRevoked(mine.to_bytes()), SIBLING))
    assert isinstance(forged, Reject) and "from the primary that signed it" in forged.reason
    linked = Known(mode=Mode.LINKED, user_id=PRIMARY.session_id)
    [refused] = run(linked, inbound(DeviceRevoked(mine.to_bytes()), PRIMARY))
    assert isinstance(refused, Reject) and "new identity" in refused.reason


def test_a_new_siblings_secret_is_taken_from_the_primary_alone_and_the_newest_wins() -> None:
    """After a revocation the primary makes the siblings a secret the revoked device
    does not know. A sibling cannot (it would cut the others apart); an older one than
    held, or than this device's pairing (whose grant carried the secret of its day),
    changes nothing; a primary reads none; after a move to ``linked`` the account's
    seed gives the secret, and a late one is let be."""
    new = SiblingsSecret(bytes(range(1, 33)))
    assert run(mapped_secondary(), inbound(new, PRIMARY, at=NOW - 5)) == [
        AdoptSecret(new.secret, NOW - 5)
    ]
    [forged] = run(mapped_secondary(), inbound(new, SIBLING))
    assert isinstance(forged, Reject) and "not from this device's primary" in forged.reason
    [own] = run(mapped_secondary(device_id=PRIMARY.session_id), inbound(new, PRIMARY))
    assert isinstance(own, Reject)
    for older in (mapped_secondary(secret_at_ms=NOW - 5), mapped_secondary(paired_at_ms=NOW - 5)):
        assert run(older, inbound(new, PRIMARY, at=NOW - 5)) == []
        assert run(older, inbound(new, PRIMARY, at=NOW - 4)) == [AdoptSecret(new.secret, NOW - 4)]
    moved = Known(mode=Mode.LINKED, user_id=PRIMARY.session_id)
    assert run(moved, inbound(new, PRIMARY)) == []


def test_a_siblings_secret_decodes_to_itself_and_nothing_else() -> None:
    new = SiblingsSecret(bytes(range(1, 33)))
    kind, body = encode_content(new)
    assert (kind, decode_content(kind, body)) == ("sync_secret", new)
    assert repr(new) == "SiblingsSecret()"
    for bad in ({"secret": bytes(31)}, {"secret": bytes(32), "more": 1}, {}):
        with pytest.raises(DecodeError):
            decode_content(kind, encode_cbor(bad))


def test_carried_revocations_are_bounded_at_decode() -> None:
    record = revoke_pairing(BOB, BOBS_PHONE.session_id, NOW).to_bytes()
    request = FriendRequest(BOB.session_id, (BOB.session_id,), "hi", "", (record,))
    kind, body = encode_content(request)
    assert decode_content(kind, body) == request
    fields = decode_cbor(body)
    assert isinstance(fields, dict)
    for bad in ([record] * (MAX_CARRIED_REVOCATIONS + 1), ["text"], [bytes(MAX_RECORD_BYTES + 1)]):
        with pytest.raises(DecodeError):
            decode_content(kind, encode_cbor({**fields, "revocations": bad}))


def test_a_friends_revocation_is_kept_whatever_device_it_names() -> None:
    """Bob's primary revoking his phone drops it from his devices; one naming a device
    not known here (paired after we last heard) is kept too, so a file server that lists
    that device later does not get it messages."""
    known = Known(
        mode=Mode.MAPPED, contacts={BOB.session_id: friend(BOB.session_id, BOBS_PHONE.session_id)}
    )
    phone = revoke_pairing(BOB, BOBS_PHONE.session_id, NOW - 10)
    assert run(known, inbound(DeviceRevoked(phone.to_bytes()), BOB)) == [
        RevokeDevices((phone,), friend(BOB.session_id))
    ]
    later = revoke_pairing(BOB, SIBLING.session_id, NOW - 10)
    assert run(known, inbound(DeviceRevoked(later.to_bytes()), BOB)) == [
        RevokeDevices((later,), friend(BOB.session_id, BOBS_PHONE.session_id))
    ]


def test_a_revocation_read_again_changes_nothing() -> None:
    """Kept the first time; read again after the tablet was paired again, it would
    undo that pairing (and restart live sync) if acted on."""
    revoked = revoke_pairing(PRIMARY, SIBLING.session_id, NOW - 10)
    known = mapped_secondary(revoked={(PRIMARY.session_id, SIBLING.session_id): NOW - 10})
    assert run(known, inbound(DeviceRevoked(revoked.to_bytes()), PRIMARY)) == []
    later = revoke_pairing(PRIMARY, SIBLING.session_id, NOW - 5)
    assert run(known, inbound(DeviceRevoked(later.to_bytes()), PRIMARY)) == [RevokeSibling(later)]


def test_a_sibling_record_read_again_after_its_revocation_adds_nothing() -> None:
    """The record announcing the tablet is read again (a catch-up beside the live
    stream) after the primary revoked it: the revocation stands. A record dated after
    the revocation (the tablet paired again) adds it."""
    record = SiblingRecord(SIBLING.session_id, bytes(32), "tablet")
    known = mapped_secondary(revoked={(PRIMARY.session_id, SIBLING.session_id): NOW - 10})
    known.sibling_names.pop(SIBLING.session_id)
    assert run(known, inbound(record, PRIMARY, at=NOW - 20)) == []
    assert run(known, inbound(record, PRIMARY, at=NOW - 10)) == []
    assert run(known, inbound(record, PRIMARY, at=NOW - 9)) == [AddSibling(record)]


def test_only_the_primary_announces_a_mapped_sibling() -> None:
    """Only the primary pairs a mapped device, so a sibling announced by a secondary
    (stolen, before its revocation) is refused: it would stay a sibling of the thief's,
    with the sync copies, the siblings' secret and, at a move to linked, the account's
    key, once the secondary was revoked."""
    planted = SiblingRecord(Identity.from_label("core/thief").session_id, bytes(32), "desktop")
    known = mapped_secondary()
    [refused] = run(known, inbound(planted, SIBLING))
    assert isinstance(refused, Reject) and "cannot pair one" in refused.reason
    assert run(known, inbound(planted, PRIMARY)) == [AddSibling(planted)]


def test_a_sibling_record_answers_the_request_its_device_made_here() -> None:
    """A sibling accepted the tablet (any linked device may): the request this device
    holds from the tablet is accepted too, so it is no longer offered; others wait on."""
    record = SiblingRecord(SIBLING.session_id, bytes(32), "tablet")
    tablets = Pairing(
        DIGEST,
        True,
        SIBLING.session_id,
        "tablet",
        NOW,
        "pending",
        encode_cbor({"device": SIBLING.session_id}),
    )
    another = replace(tablets, request_id=bytes(32), data=encode_cbor({"device": "05" + "00" * 32}))
    known = Known(
        user_id=PRIMARY.session_id,
        account_key=PRIMARY.ed25519_public,
        pairings={DIGEST: tablets, bytes(32): another},
    )
    assert run(known, inbound(record, PRIMARY)) == [
        AddSibling(record),
        KeepPairing(replace(tablets, state=PairingState.ACCEPTED)),
    ]


def pair_request(mode: Mode = Mode.LINKED, at: int = NOW) -> PairRequest:
    return PairRequest(mode, SIBLING.session_id, bytes(32), "tablet", at, None)


def test_a_linked_pairing_request_is_challenged() -> None:
    requester = Identity.from_label("core/request-key")
    [effect] = run(Known(), inbound(pair_request(), requester))
    assert isinstance(effect, SendChallenge)
    assert effect.pairing.peer == requester.session_id and effect.pairing.state == "pending"
    assert effect.joining == {"device": SIBLING.session_id, "overlay": bytes(32)}


def test_pairing_requests_refused_before_any_work() -> None:
    requester = Identity.from_label("core/request-key")
    cases = {
        "expired": (Known(), pair_request(at=NOW - PAIRING_WINDOW_MS - 1)),
        "too many pairing requests from one key": (
            Known(pairing_budget_left=PairingBudget.DROP),
            pair_request(),
        ),
        "already paired": (
            Known(mode=Mode.MAPPED, sibling_names={SIBLING.session_id: "tablet"}),
            pair_request(Mode.MAPPED),
        ),
    }
    for reason, (known, request) in cases.items():
        [effect] = run(known, inbound(request, requester))
        assert isinstance(effect, Reject) and reason in effect.reason, reason


def test_a_request_of_the_other_mode_is_declined_so_the_new_device_stops_waiting() -> None:
    """A mapped device asking a linked one (or the reverse) can never be granted: it is
    refused, and told at once (a signed decline), within the same budget as challenges."""
    requester = Identity.from_label("core/request-key")
    [refused, decline] = run(Known(), inbound(pair_request(Mode.MAPPED), requester))
    assert isinstance(refused, Reject)
    assert "a mapped pairing request to a linked device" in refused.reason
    assert decline == SendDecline(requester.session_id, DIGEST)
    for budget in (PairingBudget.HOLD, PairingBudget.DROP):
        over_budget = Known(pairing_budget_left=budget)
        [dropped] = run(over_budget, inbound(pair_request(Mode.MAPPED), requester))
        assert isinstance(dropped, Reject) and "too many pairing requests" in dropped.reason


def test_a_request_of_a_device_paired_and_unpaired_since_is_let_be() -> None:
    """After the move to linked a secondary reads the account's swarm, which still holds
    a mapped request the primary answered: its device was paired and revoked since, so
    it is neither declined nor warned of."""
    request = pair_request(Mode.MAPPED, at=NOW - 10)
    revoked = Known(revoked={(ME.session_id, request.device): NOW - 5})
    assert run(revoked, inbound(request, Identity.from_label("core/request-key"))) == []


def test_a_request_past_the_total_budget_is_held_unanswered_with_what_answering_takes() -> None:
    """Past the answer budget's total (strangers' fresh keys spent it) a request is kept
    unanswered, not dropped: the user's listing answers it later, from what is kept."""
    requester = Identity.from_label("core/request-key")
    [effect] = run(
        Known(pairing_budget_left=PairingBudget.HOLD), inbound(pair_request(), requester)
    )
    assert isinstance(effect, HoldRequest)
    assert effect.pairing.state == PairingState.HELD and effect.pairing.peer == requester.session_id
    assert decode_cbor(effect.pairing.data) == {"device": SIBLING.session_id, "overlay": bytes(32)}
    # Unless the user named the device: it is answered whatever the budget.
    for budget in (PairingBudget.HOLD, PairingBudget.DROP):
        named = Known(pairing_budget_left=budget, expected_devices=(SIBLING.session_id[:10],))
        [answered] = run(named, inbound(pair_request(), requester))
        assert isinstance(answered, SendChallenge)
    # Seen again while held, it is neither a replay nor a new request.
    held = Known(pairings={DIGEST: effect.pairing})
    assert run(held, inbound(pair_request(), requester)) == []


def test_a_request_seen_again_changes_nothing_unless_replayed_after_its_window() -> None:
    requester = Identity.from_label("core/request-key")
    answered = Pairing(DIGEST, True, requester.session_id, "tablet", NOW, "accepted", b"")
    assert run(Known(pairings={DIGEST: answered}), inbound(pair_request(), requester)) == []
    old = Pairing(
        DIGEST, True, requester.session_id, "tablet", NOW - PAIRING_WINDOW_MS - 1, "accepted", b""
    )
    [effect] = run(Known(pairings={DIGEST: old}), inbound(pair_request(), requester))
    assert isinstance(effect, Reject) and "replayed" in effect.reason


def test_answers_for_no_request_of_ours_are_refused() -> None:
    primary = Identity.from_label("core/primary")
    theirs = Pairing(DIGEST, True, primary.session_id, "tablet", NOW, "pending", encode_cbor({}))
    grant = PairGrant(DIGEST, None, primary.seed, bytes(32), (), ())
    for answer in (PairChallenge(DIGEST, bytes(32)), grant, PairDecline(DIGEST)):
        for known in (Known(), Known(pairings={DIGEST: theirs})):
            [effect] = run(known, inbound(answer, primary))
            assert isinstance(effect, Reject) and "for no request of this device" in effect.reason


def test_a_challenge_is_kept_once_and_only_from_the_device_asked() -> None:
    primary = Identity.from_label("core/primary")
    ours = Pairing(DIGEST, False, primary.session_id, "tablet", NOW, "waiting", encode_cbor({}))
    known = Known(pairings={DIGEST: ours})
    [kept] = run(known, inbound(PairChallenge(DIGEST, b"\3" * 32), primary))
    [forged] = run(known, inbound(PairChallenge(DIGEST, b"\3" * 32), BOB))
    assert isinstance(forged, Reject) and "not signed by the device" in forged.reason
    assert isinstance(kept, KeepPairing)
    challenged = Known(pairings={DIGEST: kept.pairing})
    assert run(challenged, inbound(PairChallenge(DIGEST, b"\3" * 32), primary)) == []
    [second] = run(challenged, inbound(PairChallenge(DIGEST, b"\4" * 32), primary))
    assert isinstance(second, Reject) and "second, different challenge" in second.reason


def test_a_decline_stops_the_wait_only_from_the_device_asked() -> None:
    """The primary's decline makes our request ``refused`` (whoever waits is woken); a
    decline signed by anyone else is refused, and one read again, or a challenge read
    after it, changes nothing; a grant after it is refused."""
    primary = Identity.from_label("core/primary")
    ours = Pairing(DIGEST, False, primary.session_id, "tablet", NOW, "waiting", encode_cbor({}))
    known = Known(pairings={DIGEST: ours})
    [forged] = run(known, inbound(PairDecline(DIGEST), BOB))
    assert isinstance(forged, Reject) and "not signed by the device" in forged.reason
    [declined] = run(known, inbound(PairDecline(DIGEST), primary))
    assert declined == KeepPairing(replace(ours, state="refused"))
    refused = Known(pairings={DIGEST: declined.pairing})
    assert run(refused, inbound(PairDecline(DIGEST), primary)) == []
    assert run(refused, inbound(PairChallenge(DIGEST, b"\3" * 32), primary)) == []
    grant = PairGrant(DIGEST, None, primary.seed, bytes(32), (), ())
    [late] = run(refused, inbound(grant, primary))
    assert isinstance(late, Reject)


def test_a_grant_must_hand_over_the_primarys_own_identity() -> None:
    primary = Identity.from_label("core/primary")
    ours = Pairing(DIGEST, False, primary.session_id, "tablet", NOW, "waiting", encode_cbor({}))
    known = Known(pairings={DIGEST: ours})
    wrong = PairGrant(DIGEST, None, BOB.seed, bytes(32), (), ())
    [refused] = run(known, inbound(wrong, primary))
    assert isinstance(refused, Reject) and "not the primary's" in refused.reason
    right = PairGrant(DIGEST, None, primary.seed, bytes(32), (), ())
    [adopt] = run(known, inbound(right, primary))
    assert adopt == AdoptGrant(ours, right)
    revoked = revoke_pairing(primary, SIBLING.session_id, NOW - 10)
    telling = replace(right, revocations=(revoked.to_bytes(),))
    assert run(known, inbound(telling, primary)) == [AdoptGrant(ours, telling, (revoked,))]
    foreign = replace(right, revocations=(revoke_pairing(BOB, SIBLING.session_id, NOW).to_bytes(),))
    [refused] = run(known, inbound(foreign, primary))
    assert isinstance(refused, Reject) and "not theirs" in refused.reason
    paired = Pairing(DIGEST, False, primary.session_id, "tablet", NOW, "paired", encode_cbor({}))
    assert run(Known(pairings={DIGEST: paired}), inbound(right, primary)) == []


def test_what_a_retired_device_sent_before_the_move_is_neither_acted_on_nor_refused() -> None:
    """After Bob moved to ``linked`` (his phone's key retired at ``moved``), the swarm
    still holds what the phone sent before: read again, it changes nothing and warns of
    nothing. What the retired key signs after the move is refused as before."""
    moved = NOW - 1000
    known = Known(
        contacts={BOB.session_id: friend(BOB.session_id)},
        revoked={(BOB.session_id, BOBS_PHONE.session_id): moved},
    )
    lookup = {BOB.session_id: (BOB.session_id,)}
    before: list[Content] = [
        Text(BOB.session_id, "from before the move"),
        FriendAccept(BOB.session_id, (BOB.session_id, BOBS_PHONE.session_id)),
    ]
    for content in before:
        assert run(known, inbound(content, BOBS_PHONE, at=moved - 1), lookup) == []
    [after] = run(known, inbound(before[0], BOBS_PHONE, at=moved), lookup)
    assert isinstance(after, Reject) and "is not a device of" in after.reason


def test_a_request_asked_again_after_its_attempt_was_answered_changes_nothing() -> None:
    """A new device asks again, with the time its attempt began, while the answer to its
    first request is on the way: no second challenge (nor a second listing). Held only,
    the attempt is held again (the latest to arrive is the one the user's listing finds);
    another device (or another overlay key) with the same time is its own request."""
    requester = Identity.from_label("core/request-key")
    joining = encode_cbor({"device": SIBLING.session_id, "overlay": bytes(32)})
    first = Pairing(
        bytes(31) + b"\1", True, requester.session_id, "tablet", NOW, "pending", joining
    )
    answered = Known(pairings={first.request_id: first})
    assert run(answered, inbound(pair_request(), requester)) == []
    held = Known(
        pairings={first.request_id: replace(first, state=PairingState.HELD)},
        pairing_budget_left=PairingBudget.HOLD,
    )
    [again] = run(held, inbound(pair_request(), requester))
    assert isinstance(again, HoldRequest)
    other = replace(pair_request(), overlay=bytes(31) + b"\1")
    [challenge] = run(answered, inbound(other, requester))
    assert isinstance(challenge, SendChallenge)


def test_held_requests_are_answered_once_per_attempt_while_open() -> None:
    """Of the held (the last to arrive first): the last of each attempt, none of an
    attempt already answered, none past the pairing window."""

    def request(n: int, device: str, at: int, state: PairingState) -> Pairing:
        joining = encode_cbor({"device": device, "overlay": bytes(32)})
        return Pairing(bytes([n]) * 32, True, "05" + "ab" * 32, "tablet", at, state, joining)

    again = request(1, "tablet", NOW, PairingState.HELD)
    first = request(2, "tablet", NOW, PairingState.HELD)
    answered = request(3, "phone", NOW, PairingState.HELD)
    stale = request(4, "laptop", NOW - PAIRING_WINDOW_MS - 1, PairingState.HELD)
    waiting = [request(5, "phone", NOW, PairingState.PENDING)]
    held = [again, first, answered, stale]
    assert held_to_answer(held, waiting, NOW) == [again]
