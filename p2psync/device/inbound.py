"""The inbound core: what a device does with a record that opened and decoded, decided
without I/O.

:func:`decide` takes the record (:class:`Inbound`), what the device knows (:class:`View`)
and the device lists fetched so far, and returns typed effects for the driver to execute:
file a message, store a contact, add a sibling, send a pairing challenge... or exactly one
of :class:`Reject` (the record must not be acted on), :class:`Defer` (a sibling's record,
not here yet, may make it acceptable) and :class:`NeedDevicesOf` (the driver fetches that
user's devices from the file server, adds them to ``devices`` and calls again). Deciding
never waits in the middle, so every rule of what is accepted is here, in one place, and
is tested directly (``tests/core/device/test_inbound.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import DecodeError
from ..identity import Identity, ed25519_matches_session_id
from ..mapping import DeviceMapping, PairingRequest, Revocation
from ..swarm.constants import CLOCK_SKEW_MS
from ..wire import decode_cbor, encode_cbor
from .content import (
    NAMESPACE_OF,
    AccountLinked,
    ContactRecord,
    Content,
    DeviceRevoked,
    FriendAccept,
    FriendRequest,
    HistoryRecord,
    LinkedHandOver,
    PairChallenge,
    PairDecline,
    PairGrant,
    PairRequest,
    Profile,
    SiblingRecord,
    SiblingsSecret,
    SyncProfile,
    SyncSent,
    Text,
)
from .friends import (
    ContactState,
    FriendEffect,
    FriendEvent,
    IllegalTransition,
    accepts_messages,
    is_friend,
)
from .friends import merged as merged_state
from .friends import transition as friend_transition
from .migration import LinkedStatement, awaiting_hand_over
from .modes import Mode, Rules
from .pairing import (
    WAITING_HERE,
    IllegalPairing,
    PairingBudget,
    PairingEffect,
    PairingEvent,
    PairingState,
    PairingTransition,
    pairing_transition,
    request_open,
)
from .rows import Contact, Pairing

#: How far ahead of this device's clock a message may be dated. Honest devices keep within
#: ``CLOCK_SKEW_MS`` of the storage nodes (their signed requests need it), so an honest
#: date runs ahead by a few of those at most; an hour leaves any honest clock room. A
#: message dated later (year 3000, say) is refused rather than filed at the end of its
#: conversation for ever, and not clamped to now either: each sibling would clamp to its
#: own clock, and siblings whose histories disagree on a message's time never reconcile.
MAX_AHEAD_MS = 3_600_000
#: Messages filed from someone whose friend request waits for the user's answer (they
#: read as part of the request); the rest wait with the records not decided yet, whose
#: bounds a stranger's free keys cannot pass.
PENDING_MESSAGES = 10


@dataclass(frozen=True, slots=True)
class Inbound:
    """A record that opened and decoded: where it was found, who signed it, what it says."""

    digest: bytes
    kind: str
    namespace: int
    sender_key: bytes  # the envelope's Ed25519 signing key
    device: str  # the session id of that key
    timestamp_ms: int
    content: Content


class View(Protocol):
    """What the core reads of the device (the driver answers from its store)."""

    @property
    def user_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def account_key(self) -> bytes: ...  # the Ed25519 key the device acts as
    @property
    def rules(self) -> Rules: ...
    def contact(self, user: str) -> Contact | None: ...
    def siblings(self) -> Mapping[str, str]: ...
    def revoked_at_ms(self, user: str, device: str) -> int | None: ...  # None: not revoked
    @property
    def revoked_here_at_ms(self) -> int | None: ...  # when our primary unpaired this device
    @property
    def paired_at_ms(self) -> int: ...  # the mapping this device was paired by (0: none)
    @property
    def secret_at_ms(self) -> int: ...  # when the siblings' secret held was made (0: granted)
    def pairing(self, request_id: bytes) -> Pairing | None: ...
    def waiting_requests(self) -> list[Pairing]: ...  # pairing requests not answered here
    def requests_made_at(self, timestamp_ms: int) -> list[Pairing]: ...  # received, by time
    def pairing_budget(self, sender_key: bytes) -> PairingBudget: ...  # spends it
    def expects(self, device: str) -> bool: ...  # the user asked to answer this new device
    @property
    def display_name_at_ms(self) -> int: ...  # when the user's own name was last set
    @property
    def migration(self) -> LinkedStatement | None: ...  # the account's move to linked
    def friend_move(self, user: str) -> LinkedStatement | None: ...  # a friend's move
    def received_from(self, user: str) -> int: ...  # messages from ``user`` filed here


# --- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclass(frozen=True, slots=True)
class Defer:
    reason: str


@dataclass(frozen=True, slots=True)
class NeedDevicesOf:
    """Fetch ``user``'s devices and decide again; ``fresh``: not from the cache, and a
    failed lookup defers the record (else the last known list will do)."""

    user: str
    fresh: bool


@dataclass(frozen=True, slots=True)
class File:
    """File ``record`` under ``message_id``; if new and ``share_as`` is set, push it to
    siblings under that id."""

    message_id: bytes
    record: HistoryRecord
    share_as: bytes | None = None


@dataclass(frozen=True, slots=True)
class PutContact:
    contact: Contact


@dataclass(frozen=True, slots=True)
class Befriend:
    """Answer with every device of ours, make ``contact`` a friend and tell siblings;
    keep the ``revocations`` of its devices it sent."""

    contact: Contact
    revocations: tuple[Revocation, ...] = ()


@dataclass(frozen=True, slots=True)
class RevokeDevices:
    """Keep the revocations (applied to every later file server answer) and the contact
    without the revoked devices; the contact's cached device list goes. For a friend's
    move to ``linked``, keep its statement too (``move``: :meth:`View.friend_move`)."""

    revocations: tuple[Revocation, ...]
    contact: Contact
    move: bytes | None = None


@dataclass(frozen=True, slots=True)
class RevokeSibling:
    """Our primary revoked one of our siblings: keep the revocation (what the revoked
    device sends from now on is refused) and stop syncing with it."""

    revocation: Revocation


@dataclass(frozen=True, slots=True)
class RevokedHere:
    """Our primary revoked this device: keep the revocation (the device says so, and
    refuses to send as the user from now on) and stop syncing with every sibling."""

    revocation: Revocation


@dataclass(frozen=True, slots=True)
class AdoptAccount:
    """The primary moved the account to ``linked``: act as the account (``seed``) from
    now on, keeping its ``statement``."""

    seed: bytes = field(repr=False)
    statement: bytes


@dataclass(frozen=True, slots=True)
class DeleteSyncCopy:
    digest: bytes


@dataclass(frozen=True, slots=True)
class Covered:
    message_id: bytes


@dataclass(frozen=True, slots=True)
class AddSibling:
    record: SiblingRecord


@dataclass(frozen=True, slots=True)
class AdoptSecret:
    """Meet siblings by ``secret``, made by the primary at ``at_ms``, from now on."""

    secret: bytes = field(repr=False)
    at_ms: int


@dataclass(frozen=True, slots=True)
class SetDisplayName:
    """A sibling changed the user's own display name at ``at_ms``."""

    name: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class SendDecline:
    """Store a signed decline for ``recipient``'s request ``request_id`` (one the user
    is never shown: this device cannot grant it)."""

    recipient: str
    request_id: bytes


@dataclass(frozen=True, slots=True)
class SendChallenge:
    """Store a signed challenge for ``pairing.peer``, then keep ``pairing`` (its ``data``
    the request's details; the driver adds the nonce it derives)."""

    pairing: Pairing
    joining: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """Keep ``pairing``, a request past the answer budget, unanswered (the last
    :data:`~.pairing.MAX_HELD_REQUESTS` to arrive are kept), for the user to answer."""

    pairing: Pairing


@dataclass(frozen=True, slots=True)
class KeepPairing:
    """Store ``pairing`` as it now is (the challenge's nonce kept, or declined) and wake
    whoever waits on it."""

    pairing: Pairing


@dataclass(frozen=True, slots=True)
class AdoptGrant:
    """Act as the user from now on, as ``grant`` says, keeping the user's
    ``revocations`` of its devices (checked, from the grant)."""

    pairing: Pairing
    grant: PairGrant
    revocations: tuple[Revocation, ...] = ()


Effect = (
    Reject
    | Defer
    | NeedDevicesOf
    | File
    | PutContact
    | Befriend
    | RevokeDevices
    | RevokeSibling
    | RevokedHere
    | AdoptAccount
    | DeleteSyncCopy
    | Covered
    | AddSibling
    | AdoptSecret
    | SetDisplayName
    | SendChallenge
    | SendDecline
    | HoldRequest
    | KeepPairing
    | AdoptGrant
)


def _without(revocations: tuple[Revocation, ...], devices: tuple[str, ...]) -> tuple[str, ...]:
    """``devices`` but those ``revocations`` name (a file server may list them still)."""
    revoked = {revocation.secondary for revocation in revocations}
    return tuple(device for device in devices if device not in revoked)


def _put_contact(contact: Contact, revocations: tuple[Revocation, ...]) -> Effect:
    """Store ``contact``, keeping the revocations of its devices it sent, if any."""
    return RevokeDevices(revocations, contact) if revocations else PutContact(contact)


class _Refused(Exception):
    pass


class _NotYet(Exception):
    pass


class _AppliedAlready(Exception):
    """A record whose effects this device has had by another way: nothing to do."""


class _Need(Exception):
    def __init__(self, user: str, fresh: bool) -> None:
        self.need = NeedDevicesOf(user, fresh)


def date_refusal(timestamp_ms: int, now_ms: int) -> str | None:
    """Why a message dated ``timestamp_ms`` is refused, if it is (see :data:`MAX_AHEAD_MS`)."""
    if timestamp_ms > now_ms + MAX_AHEAD_MS:
        return f"a message dated {timestamp_ms}, ahead of this device's clock"
    return None


def waits_with_friends(view: View, looking_up: str | None) -> bool:
    """Whether a record put aside while the devices of ``looking_up`` could not be
    fetched (None: for any other reason) waits in the share kept for the account's own
    devices and its friends, which strangers' records never push out.

    What the core itself defers is from someone who is not a friend yet, and so waits
    with strangers. A friend's new device, unknown here, waits with friends while the
    file server cannot say it is hers; so, for that long, does a stranger who names a
    friend as its user (the lookup refuses it once the file server answers)."""
    if looking_up is None:
        return False
    if looking_up == view.user_id:
        return True
    contact = view.contact(looking_up)
    return contact is not None and is_friend(contact.state)


def attempt_of(pairing: Pairing) -> tuple[object, object, int]:
    """What one attempt of a new device to pair shares in every request it makes (asking
    again while unanswered): its device id, its overlay key and the attempt's time."""
    details = pairing_details(pairing)
    return details.get("device"), details.get("overlay"), pairing.timestamp_ms


def held_to_answer(
    held: Iterable[Pairing], waiting: Iterable[Pairing], now_ms: int
) -> list[Pairing]:
    """Of the requests ``held`` (the last to arrive first), those an answer is for: still
    open, the last of each attempt (:func:`attempt_of`), none of an attempt answered
    already (pending among ``waiting``)."""
    answered = {attempt_of(p) for p in waiting if p.state == PairingState.PENDING}
    chosen: dict[tuple[object, object, int], Pairing] = {}
    for pairing in held:
        if request_open(pairing.timestamp_ms, now_ms):
            attempt = attempt_of(pairing)
            if attempt not in answered:
                chosen.setdefault(attempt, pairing)
    return list(chosen.values())


def pairing_details(pairing: Pairing) -> dict[str, Any]:
    """What a device keeps about a pairing: the request's details on the primary; the
    secret (a key or the signed request) and, once challenged, the nonce on the new one."""
    state = decode_cbor(pairing.data)
    assert isinstance(state, dict)  # written by this device only
    return state


def decide(
    view: View, item: Inbound, now_ms: int, devices: Mapping[str, tuple[str, ...]]
) -> list[Effect]:
    """The effects of ``item``; ``devices`` holds the device lists fetched for it so far."""
    try:
        if NAMESPACE_OF[item.kind] != item.namespace:
            raise _Refused(f"a {item.kind} record does not belong in namespace {item.namespace}")
        return _Decision(view, item, now_ms, devices).effects()
    except (_Refused, DecodeError) as exc:
        return [Reject(str(exc))]
    except _NotYet as exc:
        return [Defer(str(exc))]
    except _AppliedAlready:
        return []
    except _Need as need:
        return [need.need]


class _Decision:
    """One record's decision; a method per kind."""

    def __init__(
        self, view: View, item: Inbound, now_ms: int, devices: Mapping[str, tuple[str, ...]]
    ) -> None:
        self.view = view
        self.item = item
        self.now_ms = now_ms
        self.devices = devices

    def effects(self) -> list[Effect]:
        match self.item.content:
            case Text() as text:
                return self.text(text)
            case FriendRequest() as request:
                return self.friend_request(request)
            case FriendAccept() as accept:
                return self.friend_accept(accept)
            case Profile() as profile:
                return self.profile(profile)
            case SyncProfile() as profile:
                return self.sync_profile(profile)
            case DeviceRevoked() as revoked:
                return self.device_revoked(revoked)
            case AccountLinked() as linked:
                return self.account_linked(linked)
            case LinkedHandOver() as hand_over:
                return self.linked_hand_over(hand_over)
            case SiblingsSecret() as secret:
                return self.siblings_secret(secret)
            case SyncSent() as sent:
                return self.sync_sent(sent)
            case SiblingRecord() as sibling:
                return self.sibling_record(sibling)
            case ContactRecord() as record:
                return self.contact_record(record)
            case PairRequest() as request:
                return self.pair_request(request)
            case PairChallenge() as challenge:
                return self.pair_challenge(challenge)
            case PairDecline() as decline:
                return self.pair_decline(decline)
            case PairGrant() as grant:
                return self.pair_grant(grant)
        raise AssertionError(f"no rule for {self.item.content!r}")  # pragma: no cover

    # --- who is who --------------------------------------------------------------------------

    def devices_of(self, user: str, *, fresh: bool) -> tuple[str, ...]:
        known = self.view.rules.own_devices_without_lookup(user, self.view.user_id)
        if known is not None:
            return known
        if user not in self.devices:
            raise _Need(user, fresh)
        return self.devices[user]

    def check_device(self, device: str, user: str) -> None:
        """Refuse unless ``device`` is a device of ``user``. Known devices pass at once,
        unless seen revoked; others are looked up on the file server.

        A record a revoked (or, by a move to ``linked``, retired) device signed before
        its revocation is neither acted on nor refused: it was sent while the device
        was the user's, and was dealt with when it came; the swarm still holds it, so a
        friend reads it again (after the account moved, on its next inbox) and would
        otherwise warn of every message it had filed long ago. Nothing from a revoked
        key is filed either way, whatever date it claims."""
        view = self.view
        if device == user:
            return
        if view.rules.own_key_refused(user, view.user_id):
            raise _Refused("the signing key is not this account's")
        revoked_at = view.revoked_at_ms(user, device)
        if revoked_at is not None and self.item.timestamp_ms < revoked_at:
            raise _AppliedAlready
        moved = view.friend_move(user)
        if moved is not None and awaiting_hand_over(
            moved, device, self.item.timestamp_ms, self.now_ms
        ):
            return  # retired by the friend's move, and it has not read its hand-over yet
        known = view.contact(user)
        if known is not None and device in known.devices and revoked_at is None:
            return
        if user == view.user_id and device in view.siblings():
            return
        if device not in self.devices_of(user, fresh=True):
            raise _Refused(f"{device[:12]}… is not a device of {user[:12]}…")

    def check_sibling(self) -> None:
        view, item = self.view, self.item
        if view.rules.sync_signer_is_account():
            if item.sender_key == view.account_key:
                return
            moved = view.migration
            if moved is None or item.device not in moved.retired_devices:
                raise _Refused("a sync record not signed by this account")
            if item.timestamp_ms < moved.timestamp_ms:
                # A sibling's record from before the account moved: it reached every
                # sibling's own swarm then (and replayed now, it would undo later changes).
                raise _AppliedAlready
            if not awaiting_hand_over(moved, item.device, item.timestamp_ms, self.now_ms):
                raise _Refused("a sync record of a retired device, past its hand-over")
            return  # a sibling that has not read the account's hand-over yet
        if item.device == view.device_id:
            raise _Refused("a sync record signed by this very device")
        self.check_device(item.device, view.user_id)

    def check_date(self, record: HistoryRecord) -> None:
        refusal = date_refusal(record.timestamp_ms, self.now_ms)
        if refusal is not None:
            raise _Refused(refusal)

    def known_contact(self, user: str, what: str) -> Contact | None:
        """The contact ``user``; unknown while we have siblings, a sibling's record
        about them may still be on its way."""
        contact = self.view.contact(user)
        if contact is None and self.view.siblings():
            raise _NotYet(f"{what} from {user[:12]}…, unknown here so far")
        return contact

    # --- messages and friends ----------------------------------------------------------------

    def text(self, text: Text) -> list[Effect]:
        item = self.item
        contact = self.known_contact(text.user, "a message")
        if not accepts_messages(None if contact is None else contact.state):
            raise _Refused(f"a message from {text.user[:12]}…, who is not a friend")
        if (
            contact is not None
            and contact.state == ContactState.PENDING
            and self.view.received_from(text.user) >= PENDING_MESSAGES
        ):
            # Kept aside, not filed: within the bounds of what waits to be checked, and
            # filed if the user accepts while it waits.
            raise _NotYet(
                f"more than {PENDING_MESSAGES} messages from {text.user[:12]}…, whose friend"
                " request waits for an answer"
            )
        self.check_device(item.device, text.user)
        record = HistoryRecord(
            item.timestamp_ms, text.user, False, text.user, item.device, text.text
        )
        self.check_date(record)
        if self.view.rules.shares_received():
            # One copy for the whole account: its digest is the message's id on every
            # device, and what the siblings are handed (a sender's id unifies nothing).
            return [File(item.digest, record, item.digest)]
        # The copies for a mapped account's other devices carry the id of the primary's
        # copy, so that every device files the message under one id.
        return [File(text.id or item.digest, record, None)]

    def friend_request(self, request: FriendRequest) -> list[Effect]:
        if request.user == self.view.user_id:
            raise _Refused("a friend request from this user's own device")
        self.check_device(self.item.device, request.user)
        revocations = self.carried_revocations(request.revocations, request.user)
        contact = self.view.contact(request.user)
        devices = _without(revocations, self.devices_of(request.user, fresh=False))
        state = None if contact is None else contact.state
        move = friend_transition(state, FriendEvent.REQUEST_RECEIVED)
        if FriendEffect.SEND_ACCEPT in move.effects:
            assert contact is not None
            name = request.name or contact.name
            return [Befriend(replace(contact, devices=devices, name=name), revocations)]
        if move.state != state:
            contact = Contact(request.user, move.state, devices, request.text, request.name)
            return [_put_contact(contact, revocations)]
        return []

    def friend_accept(self, accept: FriendAccept) -> list[Effect]:
        contact = self.known_contact(accept.user, "an acceptance")
        try:
            if contact is None:
                raise IllegalTransition("unknown")
            move = friend_transition(contact.state, FriendEvent.ACCEPT_RECEIVED)
        except IllegalTransition:
            raise _Refused(f"an acceptance from {accept.user[:12]}…, who was not asked") from None
        self.check_device(self.item.device, accept.user)
        revocations = self.carried_revocations(accept.revocations, accept.user)
        devices = _without(revocations, self.devices_of(accept.user, fresh=False))
        name = accept.name or contact.name
        befriended = replace(contact, state=move.state, devices=devices, name=name)
        return [_put_contact(befriended, revocations)]

    def carried_revocations(self, records: tuple[bytes, ...], user: str) -> tuple[Revocation, ...]:
        """The revocations a friend request, acceptance or pairing grant carries: each
        signed by ``user``'s primary (``user`` itself) and of one of its own devices."""
        revocations = tuple(Revocation.from_bytes(record) for record in records)
        for revocation in revocations:
            revocation.verify()
            if revocation.primary != user:
                raise _Refused(f"a revocation carried for {user[:12]}… that is not theirs")
        return revocations

    def profile(self, profile: Profile) -> list[Effect]:
        """A friend's new display name: kept beside their id (never instead of it)."""
        contact = self.known_contact(profile.user, "a display name")
        if contact is None or not is_friend(contact.state):
            raise _Refused(f"a display name from {profile.user[:12]}…, who is not a friend")
        self.check_device(self.item.device, profile.user)
        return (
            []
            if contact.name == profile.name
            else [PutContact(replace(contact, name=profile.name))]
        )

    def sibling_record(self, sibling: SiblingRecord) -> list[Effect]:
        """A new sibling, unless our primary has revoked it since: a record is read
        again (a restart, a catch-up beside the live stream) after the revocation that
        came later, and a revocation is final for what was paired before it."""
        self.check_sibling()
        if sibling.device == self.view.device_id:
            return []
        if not self.view.rules.is_primary(self.view.user_id, self.item.device):
            # Only the primary pairs a mapped device: a secondary's word would let a
            # stolen one plant a sibling of the thief's that its revocation leaves behind.
            raise _Refused("a new sibling announced by a device that cannot pair one")
        revoked_at = self.view.revoked_at_ms(self.view.user_id, sibling.device)
        if revoked_at is not None and self.item.timestamp_ms <= revoked_at:
            raise _AppliedAlready
        effects: list[Effect] = [AddSibling(sibling)]
        for request in self.view.waiting_requests():
            # A sibling accepted it (any linked device may): it waits here no more.
            if pairing_details(request).get("device") == sibling.device:
                event = PairingEvent.SIBLING_ACCEPTED
                move = pairing_transition(PairingState(request.state), event)
                effects.append(KeepPairing(replace(request, state=move.state)))
        return effects

    def device_revoked(self, content: DeviceRevoked) -> list[Effect]:
        """A friend's primary revoked one of its devices, or ours one of our siblings:
        stop trusting it at once, whatever the file server says later."""
        revocation = Revocation.from_bytes(content.revocation)
        revocation.verify()
        if self.item.device != revocation.primary:
            raise _Refused("a revocation must come from the primary that signed it")
        if revocation.primary == self.view.user_id:
            if revocation.secondary == self.view.device_id:
                return self.this_device_revoked(revocation)
            revoked_at = self.view.revoked_at_ms(revocation.primary, revocation.secondary)
            if revoked_at is not None and revoked_at >= revocation.timestamp_ms:
                # Read again (a catch-up, a restart): it was kept the first time, and the
                # device may have been paired again since.
                raise _AppliedAlready
            return [RevokeSibling(revocation)]
        contact = self.view.contact(revocation.primary)
        if contact is None or not is_friend(contact.state):
            raise _Refused(f"a revocation from {revocation.primary[:12]}…, not a friend")
        # Kept whatever device it names: one paired after this device last heard of the
        # friend's devices is named too, and a file server may list it later. What a
        # revocation cancels is the copies for that device of what went to its signer's
        # user alone (:meth:`~.store.DeviceStore.keep_revocations`).
        devices = tuple(d for d in contact.devices if d != revocation.secondary)
        return [RevokeDevices((revocation,), replace(contact, devices=devices))]

    def this_device_revoked(self, revocation: Revocation) -> list[Effect]:
        """Our primary unpaired this device. Only a ``mapped`` primary revokes (``linked``
        devices all hold the account key that would sign it); read again, it was taken;
        one dated before the mapping this device was paired by ends an earlier pairing
        (a grant that never arrived, revoked, then this device paired again). Decided
        from what this device was told, not from the revocations it keeps: a file
        server's answer may carry the same revocation first."""
        why_not = self.view.rules.can_revoke()
        if why_not is not None:
            raise _Refused(why_not)
        if self.view.revoked_here_at_ms is not None:
            raise _AppliedAlready
        if revocation.timestamp_ms <= self.view.paired_at_ms:
            raise _Refused("a revocation of an earlier pairing of this device")
        return [RevokedHere(revocation)]

    def checked_statement(self, data: bytes, what: str) -> LinkedStatement:
        """The statement in ``data``, verified, dated within this device's clock and sent
        with the account's own key."""
        statement = LinkedStatement.from_bytes(data)
        statement.verify()
        if self.item.device != statement.account:
            raise _Refused(f"{what} must come from the account key that signed it")
        refusal = date_refusal(statement.timestamp_ms, self.now_ms)
        if refusal is not None:
            raise _Refused(refusal)
        return statement

    def account_linked(self, content: AccountLinked) -> list[Effect]:
        """A friend moved to ``linked`` mode: the devices it retired stop counting as
        theirs at once (messages go to the account alone, whatever the file server says
        later; a retired key is refused once its hand-over would have expired unread,
        see :func:`.migration.awaiting_hand_over`)."""
        statement = self.checked_statement(content.statement, "a linked statement")
        contact = self.known_contact(statement.account, "a linked statement")
        if contact is None or not is_friend(contact.state):
            raise _Refused(f"a linked statement from {statement.account[:12]}…, not a friend")
        retired = statement.retired_devices
        devices = tuple(d for d in contact.devices if d not in retired)
        return [
            RevokeDevices(statement.retired, replace(contact, devices=devices), content.statement)
        ]

    def linked_hand_over(self, hand_over: LinkedHandOver) -> list[Effect]:
        """The primary moved the account to ``linked`` mode and hands this secondary the
        account's key: only the account's key can send it, and it must retire this
        device's own key."""
        view = self.view
        if view.migration is not None:
            return []  # read again after the move
        if view.rules.mode is not Mode.MAPPED:
            raise _Refused("a hand-over to a device that is not mapped")
        statement = self.checked_statement(hand_over.statement, "a hand-over")
        if statement.account != view.user_id:
            raise _Refused("a hand-over from another account")
        if view.device_id not in statement.retired_devices:
            raise _Refused("a hand-over whose statement does not retire this device")
        if Identity(hand_over.seed).session_id != view.user_id:
            raise _Refused("the handed-over identity is not the account's")
        return [AdoptAccount(hand_over.seed, hand_over.statement)]

    def siblings_secret(self, secret: SiblingsSecret) -> list[Effect]:
        """The primary revoked a device and made the siblings a new secret. Only the
        primary makes one (a sibling's word would let one sibling cut the others apart);
        the newest wins, and none older than this device's pairing, whose grant carried
        the secret of its day (a device paired again may still find one sent to it
        before its revocation)."""
        view, item = self.view, self.item
        if item.device != view.user_id or view.device_id == view.user_id:
            raise _Refused("a siblings' secret not from this device's primary")
        if view.rules.derives_siblings_secret():
            return []  # sent before the move to linked: the account's seed gives it now
        if item.timestamp_ms <= max(view.secret_at_ms, view.paired_at_ms):
            raise _AppliedAlready
        return [AdoptSecret(secret.secret, item.timestamp_ms)]

    def sync_sent(self, sent: SyncSent) -> list[Effect]:
        self.check_sibling()
        view = self.view
        record = HistoryRecord(
            sent.timestamp_ms, sent.to, True, view.user_id, self.item.device, sent.text
        )
        self.check_date(record)
        done: Effect = (
            DeleteSyncCopy(self.item.digest)
            if view.rules.deletes_filed_sync_copy()
            else Covered(sent.id)
        )
        return [File(sent.id, record), done]

    def sync_profile(self, profile: SyncProfile) -> list[Effect]:
        """A sibling's new name for the user; the latest change wins (a ``linked`` device
        also reads its own, which changes nothing)."""
        self.check_sibling()
        at_ms = self.item.timestamp_ms
        return [SetDisplayName(profile.name, at_ms)] if at_ms > self.view.display_name_at_ms else []

    def contact_record(self, record: ContactRecord) -> list[Effect]:
        """A sibling's contact change."""
        self.check_sibling()
        current = self.view.contact(record.user)
        state = ContactState(record.state)
        if merged_state(None if current is None else current.state, state) != state:
            return []
        note, name = ("", "") if current is None else (current.note, current.name)
        devices = self.vouched_devices(record, current)
        return [PutContact(Contact(record.user, state, devices, note, record.name or name))]

    def vouched_devices(self, record: ContactRecord, current: Contact | None) -> tuple[str, ...]:
        """The devices ``record`` gives its user that this device knows already or the
        file server lists: a sibling's word alone would let a stolen one, before its
        revocation, add a key of the thief's to a friend's devices, and what that key
        signs would pass as the friend's for good."""
        known = set(() if current is None else current.devices) | {record.user}
        if all(device in known for device in record.devices):
            return record.devices
        listed = set(self.devices_of(record.user, fresh=True))
        return tuple(d for d in record.devices if d in known or d in listed)

    # --- pairing -----------------------------------------------------------------------------

    def pair_request(self, request: PairRequest) -> list[Effect]:
        view, item, now = self.view, self.item, self.now_ms
        known = view.pairing(item.digest)
        if known is not None:
            # Seen again: changes nothing, unless it is an answered request stored
            # again after its window (a replay).
            answered = known.incoming and known.state not in WAITING_HERE
            if answered and not request_open(known.timestamp_ms, now):
                raise _Refused("a replayed pairing request (it was already answered)")
            pairing_transition(PairingState(known.state), PairingEvent.REQUEST_RECEIVED)
            return []
        if (
            not request_open(request.timestamp_ms, now)
            or request.timestamp_ms > now + CLOCK_SKEW_MS
        ):
            raise _Refused("an expired (or replayed) pairing request")
        if request.device in view.siblings():
            if view.rules.ignores_known_sibling_request():
                return []
            raise _Refused("a pairing request from a device that is already paired")
        revoked_at = view.revoked_at_ms(view.user_id, request.device)
        if revoked_at is not None and request.timestamp_ms <= revoked_at:
            # Answered, the device paired and then unpaired: read again after the account
            # moved to linked (a secondary reads the account's swarm from then on).
            raise _AppliedAlready
        if request.mode != view.rules.mode:
            # The new device would wait for an answer that cannot come: it is told (a
            # decline is signed, so within the same budget as a challenge).
            if view.pairing_budget(item.sender_key) is not PairingBudget.ANSWER:
                raise _Refused("too many pairing requests: this one is dropped")
            reason = f"a {request.mode} pairing request to a {view.rules.mode} device (declined)"
            return [Reject(reason), SendDecline(item.device, item.digest)]
        attempt = (request.device, request.overlay, request.timestamp_ms)
        if any(
            p.state != PairingState.HELD and attempt_of(p) == attempt
            for p in view.requests_made_at(request.timestamp_ms)
        ):
            return []  # asked again, already answered: that answer stands (see .joiner)
        # Before any work that costs us (checking the signed request, signing a challenge,
        # storing it): anyone can seal requests to us (see :mod:`.pairing`). A request
        # held past the total is checked as one answered now (a signature check, as its
        # envelope's), so that what is held can be answered as it is.
        # A device the user named (it shows its id) is answered whatever strangers spent.
        expected = view.expects(request.device)
        budget = PairingBudget.ANSWER if expected else view.pairing_budget(item.sender_key)
        if budget is PairingBudget.DROP:
            raise _Refused("too many pairing requests from one key: this one is dropped")
        joining: dict[str, Any] = {"device": request.device, "overlay": request.overlay}
        if view.rules.hands_over_seed():
            peer = item.device  # the key made for this request
        else:
            if request.request is None:
                raise _Refused("a mapped pairing request without the signed request")
            signed = PairingRequest.from_bytes(request.request)
            signed.verify()
            if (
                signed.primary != view.user_id
                or signed.secondary != request.device
                or signed.secondary_key != item.sender_key
                or signed.timestamp_ms != request.timestamp_ms
            ):
                raise _Refused("the signed pairing request does not match its envelope")
            peer, joining = request.device, {**joining, "request": request.request}
        if budget is PairingBudget.HOLD:
            move = pairing_transition(None, PairingEvent.REQUEST_HELD)
            held = Pairing(
                item.digest,
                True,
                peer,
                request.name,
                request.timestamp_ms,
                move.state,
                encode_cbor(joining),
            )
            return [HoldRequest(held)]
        move = pairing_transition(None, PairingEvent.REQUEST_RECEIVED)
        assert PairingEffect.SEND_CHALLENGE in move.effects
        pairing = Pairing(
            item.digest, True, peer, request.name, request.timestamp_ms, move.state, b""
        )
        return [SendChallenge(pairing, joining)]

    def answered_pairing(
        self, request_id: bytes, event: PairingEvent
    ) -> tuple[Pairing, PairingTransition]:
        """The request ``request_id`` of this device that a challenge, a grant or a
        decline answers, and where the answer takes it (no effects: seen before). Only
        the device the request went to may answer it."""
        pairing = self.view.pairing(request_id)
        what = {
            PairingEvent.CHALLENGE_RECEIVED: "challenge",
            PairingEvent.GRANT_RECEIVED: "grant",
            PairingEvent.DECLINE_RECEIVED: "decline",
        }[event]
        try:
            if pairing is None:
                raise IllegalPairing("unknown")
            move = pairing_transition(PairingState(pairing.state), event)
        except IllegalPairing:
            raise _Refused(f"a pairing {what} for no request of this device") from None
        if not ed25519_matches_session_id(self.item.sender_key, pairing.peer):
            raise _Refused(f"a pairing {what} not signed by the device pairing was asked of")
        return pairing, move

    def pair_challenge(self, challenge: PairChallenge) -> list[Effect]:
        pairing, move = self.answered_pairing(challenge.request_id, PairingEvent.CHALLENGE_RECEIVED)
        details = pairing_details(pairing)
        if "nonce" in details:
            if details["nonce"] != challenge.nonce:
                raise _Refused("a second, different challenge for one pairing request")
            return []  # seen again
        if not move.effects:
            return []
        kept = replace(pairing, data=encode_cbor({**details, "nonce": challenge.nonce}))
        return [KeepPairing(kept)]

    def pair_decline(self, decline: PairDecline) -> list[Effect]:
        """The primary declined this device's request: whoever waits stops waiting."""
        pairing, move = self.answered_pairing(decline.request_id, PairingEvent.DECLINE_RECEIVED)
        return [KeepPairing(replace(pairing, state=move.state))] if move.effects else []

    def pair_grant(self, grant: PairGrant) -> list[Effect]:
        pairing = self.view.pairing(grant.request_id)
        if pairing is not None and not pairing.incoming and pairing.state == PairingState.PAIRED:
            return []  # seen before a restart: already applied
        pairing, _ = self.answered_pairing(grant.request_id, PairingEvent.GRANT_RECEIVED)
        if self.view.rules.hands_over_seed():
            if grant.seed is None or Identity(grant.seed).session_id != pairing.peer:
                raise _Refused("the handed-over identity is not the primary's")
        else:
            if grant.mapping is None:
                raise _Refused("a mapped pairing grant without the mapping")
            mapping = DeviceMapping.from_bytes(grant.mapping)
            mapping.verify()
            if (
                mapping.primary != pairing.peer
                or mapping.secondary != self.view.device_id
                or mapping.timestamp_ms != pairing.timestamp_ms
            ):
                raise _Refused("the granted mapping is not the one this device asked for")
        return [
            AdoptGrant(pairing, grant, self.carried_revocations(grant.revocations, pairing.peer))
        ]
