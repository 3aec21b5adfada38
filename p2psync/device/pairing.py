"""The short code a user compares on both screens while pairing.

A code taken from the new device's request alone could be ground out: whoever sees the
request (a storage node of the primary's swarm) re-seals requests of its own until one
shows the same six digits, about a million tries. So the primary adds a nonce the
requester cannot know in advance: a keyed hash of the request id under the primary's
seed (:func:`p2psync.device.keys.pairing_nonce`: the same on every device of a ``linked``
account), sent back signed as soon as the request arrives (``pair_challenge``); both
screens then show a code from the request id *and* that nonce. A request stored by
anyone else gets its own nonce and so, with odds of one in a million, another code, and
no amount of work beforehand changes that. The new device believes only a challenge
signed by the device it asked.

Six digits, grouped in threes to read aloud.

The pairing machine (:data:`PAIRING_TRANSITIONS`) is the one table of which pairing
state each event may move to, and what the driver then does (:class:`PairingEffect`).

Answering a request costs the primary a signature and a stored message (the challenge),
and anyone can seal requests to it, so it answers a requester key at most
:data:`REQUESTS_PER_KEY` times at once and then once per :data:`REQUEST_KEY_REFILL_S`,
and all requesters together at most :data:`REQUESTS_BURST` times, then once per
:data:`REQUEST_REFILL_S` (:class:`PairingBudget`). A key past its own share is dropped:
an honest new device asks once, and again only while unanswered, so it passes while
another key floods.
Past the total, a request is *held*: kept unanswered (the last
:data:`MAX_HELD_REQUESTS` to arrive), and answered when the user lists the requests
(:data:`ANSWERS_PER_LISTING`, the last to arrive first). A ``linked`` request is sealed by
a key made for it alone, so a flood of fresh keys spends the total; then the user's
presence, not a stranger's rate, spends the answers. Strangers sending fast enough can
still push a held request out, or come after it in numbers; so the user can name the new
device by the start of its id (:data:`DEVICE_PREFIX_CHARS` characters, shown on its
screen, which strangers cannot read), and the primary answers the next request of that
device whatever the budget, while a new device left unanswered asks again every
:data:`REASK_S`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Generic, Protocol, TypeVar

from ..identity import SESSION_ID_CHARS
from ..mapping import PAIRING_WINDOW_MS
from .content import ContactRecord, SiblingRecord
from .friends import ContactState

CODE_DIGITS = 6
REQUESTS_PER_KEY = 3
REQUEST_KEY_REFILL_S = 600.0
REQUESTS_BURST = 10
REQUEST_REFILL_S = 60.0
#: Requests past the total kept unanswered at most, the last to arrive.
MAX_HELD_REQUESTS = 64
#: How long a request the user never answered is kept (shown as expired once past the
#: pairing window), then forgotten: strangers' requests answered within the budget would
#: otherwise pile up, one a minute, for good.
FORGET_REQUESTS_MS = 24 * 3600 * 1000
#: How long a new device waits for a challenge before it asks again: a request held
#: past the budget can be pushed out by strangers' (:meth:`Pairer.answer_device` answers
#: the next one that comes).
REASK_S = 30.0
#: The shortest start of a new device's id the user may name it by to answer it
#: (``05`` and 8 hex digits): a stranger who cannot read the new device's screen cannot
#: make requests that match it.
DEVICE_PREFIX_CHARS = 10
#: Held requests the user's listing answers at once, the last to arrive: a new device
#: that asked a minute before the user looks is among them while strangers store one
#: every 20 s.
ANSWERS_PER_LISTING = 5
_PERSON = b"p2psync-paircode"


def pairing_code(request_id: bytes, nonce: bytes) -> str:
    digest = hashlib.blake2b(request_id + nonce, digest_size=8, person=_PERSON).digest()
    number = int.from_bytes(digest, "big") % 10**CODE_DIGITS
    text = f"{number:0{CODE_DIGITS}d}"
    return f"{text[:3]} {text[3:]}"


def request_open(timestamp_ms: int, now_ms: int) -> bool:
    """Whether a pairing request made at ``timestamp_ms`` may still be answered (and
    offered to the user): within :data:`~p2psync.mapping.PAIRING_WINDOW_MS` of now."""
    return timestamp_ms >= now_ms - PAIRING_WINDOW_MS


class Offered(Protocol):
    @property
    def timestamp_ms(self) -> int: ...


OfferT = TypeVar("OfferT", bound=Offered)


class OfferMatch(Enum):
    FOUND = "found"
    #: No waiting request shows the code.
    MISSING = "missing"
    #: More than one does (someone ground out a request showing it): refuse them all,
    #: never guess which.
    CLASH = "clash"
    #: The one that shows it is past the pairing window.
    EXPIRED = "expired"


@dataclass(frozen=True)
class OfferChoice(Generic[OfferT]):
    match: OfferMatch
    #: The request found, or every request that showed the code.
    offers: tuple[OfferT, ...]


def latest_per_device(offers: Iterable[tuple[Hashable, OfferT]]) -> list[OfferT]:
    """Of the waiting requests (each with the device that asks: its id and its overlay
    key, which a stranger hoping to hide its request would have to know both of), the
    newest of each device, in their order: a new device that gave up waiting and asked
    again is one request to the user, not two that look alike, the first of which nobody
    waits for any more. Of one device's requests of one time (one attempt, asked again
    while unanswered) the first in ``offers`` is kept: given in the order they were
    answered, the one whose challenge the new device took."""
    listed = list(offers)
    newest: dict[Hashable, int] = {}
    for device, offer in listed:
        newest[device] = max(newest.get(device, offer.timestamp_ms), offer.timestamp_ms)
    kept: list[OfferT] = []
    for device, offer in listed:
        if offer.timestamp_ms == newest[device]:
            newest[device] += 1  # one per device, should two share a time
            kept.append(offer)
    return kept


def is_code(shown: str, typed: str) -> bool:
    """Whether the user typed the code ``shown``, with or without its space."""
    return shown.replace(" ", "") == typed.replace(" ", "")


def choose_offer(
    offers: Iterable[tuple[str, OfferT]], code: str, now_ms: int
) -> OfferChoice[OfferT]:
    """Which waiting request (``offers``: each with the code it shows) the user means by
    ``code`` (:func:`is_code`)."""
    matches = tuple(offer for shown, offer in offers if is_code(shown, code))
    if not matches:
        return OfferChoice(OfferMatch.MISSING, ())
    if len(matches) > 1:
        return OfferChoice(OfferMatch.CLASH, matches)
    if not request_open(matches[0].timestamp_ms, now_ms):
        return OfferChoice(OfferMatch.EXPIRED, matches)
    return OfferChoice(OfferMatch.FOUND, matches)


class PairingBudget(Enum):
    """What the answer budget lets a device do with a new pairing request."""

    ANSWER = "answer"  #: within both the key's share and the total: challenge it now
    HOLD = "hold"  #: within the key's share only: keep it for the user's listing
    DROP = "drop"  #: the key's share is spent: refuse it


def device_prefix_refusal(prefix: str) -> str | None:
    """Why ``prefix`` cannot name a new device to answer, or None."""
    if not DEVICE_PREFIX_CHARS <= len(prefix) <= SESSION_ID_CHARS:
        return (
            f"name the new device by the first {DEVICE_PREFIX_CHARS} or more characters of its id"
        )
    if not prefix.startswith("05") or any(c not in "0123456789abcdef" for c in prefix):
        return f"{prefix!r} is not the start of a device id (05 and hex digits)"
    return None


def request_refusal(
    primary: str, *, own_ids: Iterable[str], joined: bool, fresh: bool
) -> str | None:
    """Why a device may not ask ``primary`` to pair, or None. A device joins one user,
    once (``joined``: it paired, or has siblings), never itself (``own_ids``: its user
    and device ids), and only while ``fresh`` (no contacts, no history): the grant
    replaces who it is, and what it had as someone else would be misfiled."""
    if joined:
        return "this device is already paired"
    if primary in own_ids:
        return "a device cannot pair with itself"
    if not fresh:
        return "only a new device (no contacts, no history) can join a user"
    return None


@dataclass(frozen=True, slots=True)
class GrantPlan:
    """What granting a request takes, decided before any of it is done."""

    #: The key the grant is sealed to: the one made for the request where the grant
    #: carries the account seed, else the new device's own key (which is also its id).
    recipient: str
    #: Whether the grant hands over the account seed; if not, the primary countersigns
    #: the device's mapping request and publishes the mapping before it grants.
    hands_over_seed: bool
    #: The user's devices as the grant lists them: the granting one first, then every
    #: other sibling it knows (the new device itself left out).
    devices: tuple[SiblingRecord, ...]
    #: Whether the siblings already there are told of the new one.
    tells_siblings: bool


def plan_grant(
    *,
    hands_over_seed: bool,
    requester_key: str,
    device: str,
    asked_as_mapped: bool,
    me: SiblingRecord,
    siblings: Iterable[SiblingRecord],
) -> GrantPlan | None:
    """How to grant the request of ``device`` (sealed by ``requester_key``), or None
    when it must be declined: a request made as a ``mapped`` device, to an account that
    hands over its seed since it moved to ``linked``, would add a sibling the new device
    refuses."""
    if hands_over_seed and asked_as_mapped:
        return None
    others = tuple(sibling for sibling in siblings if sibling.device != device)
    return GrantPlan(
        recipient=requester_key if hands_over_seed else device,
        hands_over_seed=hands_over_seed,
        devices=(me, *others),
        tells_siblings=bool(others),
    )


#: The order a grant carries contacts in: a new device needs its friends first, and the
#: requests strangers left waiting last.
GRANT_ORDER = {
    ContactState.FRIEND: 0,
    ContactState.REQUESTED: 1,
    ContactState.DECLINED: 2,
    ContactState.PENDING: 3,
}


def grant_contacts(
    contacts: Iterable[ContactRecord], fits: Callable[[tuple[ContactRecord, ...]], bool]
) -> tuple[tuple[ContactRecord, ...], tuple[ContactRecord, ...]]:
    """The contacts a grant carries (in :data:`GRANT_ORDER`, as many as ``fits`` a
    grant) and those that follow it to the new device as sync records: a grant holding
    every contact outgrew a message body at about 400 (a review paired nothing after
    strangers' requests made 500)."""
    ordered = sorted(contacts, key=lambda contact: (GRANT_ORDER[contact.state], contact.user))
    fitting, too_many = 0, len(ordered) + 1  # ordered[:fitting] fits; ordered[:too_many] not
    while too_many - fitting > 1:
        middle = (fitting + too_many) // 2
        if fits(tuple(ordered[:middle])):
            fitting = middle
        else:
            too_many = middle
    return tuple(ordered[:fitting]), tuple(ordered[fitting:])


def revoke_refusal(
    device: str, *, mode_refusal: str | None, is_primary: bool, device_id: str
) -> str | None:
    """Why this device may not revoke ``device``, or None: the mode must allow it
    (``mode_refusal``, :meth:`~.modes.Rules.can_revoke`), only the primary revokes, and
    never itself. Whether ``device`` is the user's at all needs the file server's list,
    and is the driver's to ask."""
    if mode_refusal is not None:
        return mode_refusal
    if not is_primary:
        return "only the primary device can revoke a device"
    if device == device_id:
        return "a device cannot revoke itself"
    return None


def revocation_date(now_ms: int, granted_ms: Iterable[int]) -> int:
    """When to date a revocation of a device granted by mappings dated ``granted_ms``:
    now, or just after the newest of them if that is ahead (a new device may date its
    request up to the clock skew allowed ahead, and a revocation dated before the mapping
    is refused as of an earlier pairing)."""
    return max([now_ms, *(ms + 1 for ms in granted_ms)])


class PairingState(StrEnum):
    """A pairing as one device keeps it (stored by value). The new device's own request
    is ``waiting`` until the grant makes it ``paired`` or the primary's decline makes it
    ``refused``; a request on the primary is ``pending`` until the user ``accepted`` or
    ``declined`` it, or ``held`` (past the answer budget, unanswered) until the user's
    listing answers it."""

    WAITING = "waiting"
    PAIRED = "paired"
    REFUSED = "refused"
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    HELD = "held"


class PairingEvent(Enum):
    REQUEST_SENT = "request sent"  # on the new device
    CHALLENGE_RECEIVED = "challenge received"
    GRANT_RECEIVED = "grant received"
    DECLINE_RECEIVED = "decline received"
    REQUEST_RECEIVED = "request received"  # on the primary
    REQUEST_HELD = "request received past the answer budget"
    LISTED = "the user listed the requests"
    ACCEPT = "accept"
    DECLINE = "decline"
    CODE_CLASH = "two requests show one code"
    SIBLING_ACCEPTED = "a sibling accepted it"  # linked: any device of the account may


class PairingEffect(Enum):
    LISTEN = "receive where the challenge and the grant will arrive"
    KEEP_NONCE = "keep the challenge's nonce: both screens can show the code"
    SEND_CHALLENGE = "store a signed challenge for the requester"
    SEND_GRANT = "store the grant for the new device"
    SEND_DECLINE = "store a signed decline for the requester: it stops waiting"
    ADD_SIBLING = "add the new device as a sibling, and tell the others"
    ADOPT_GRANT = "act as the user from now on: identity, siblings, contacts"
    NOTIFY = "wake whoever waits for news"


@dataclass(frozen=True, slots=True)
class PairingTransition:
    state: PairingState
    effects: tuple[PairingEffect, ...] = ()


class IllegalPairing(Exception):
    """An event the pairing's state does not allow; the message says why."""


_S = PairingState
_E = PairingEvent
_F = PairingEffect

#: (state, event) -> transition; ``None`` is a request this device does not know. The
#: new device's states (``waiting``, ``paired``, ``refused``) and the primary's
#: (``pending``, ``accepted``, ``declined``) never meet, so a challenge, a grant or a
#: decline for a request this device received, not sent, finds no entry. A request seen
#: again (a re-delivery, or in ``linked`` mode our own request in the swarm we now share)
#: changes nothing; so does a challenge, grant or decline seen again after the answer (a
#: restart reads them once more; a challenge and the decline after it may be read in
#: either order). A grant after a decline, or a decline after a grant, finds no entry: an
#: honest primary sends one answer.
PAIRING_TRANSITIONS: dict[tuple[PairingState | None, PairingEvent], PairingTransition] = {
    (None, _E.REQUEST_SENT): PairingTransition(_S.WAITING, (_F.LISTEN,)),
    (_S.WAITING, _E.CHALLENGE_RECEIVED): PairingTransition(_S.WAITING, (_F.KEEP_NONCE, _F.NOTIFY)),
    (_S.WAITING, _E.GRANT_RECEIVED): PairingTransition(_S.PAIRED, (_F.ADOPT_GRANT, _F.NOTIFY)),
    (_S.PAIRED, _E.CHALLENGE_RECEIVED): PairingTransition(_S.PAIRED),
    (_S.PAIRED, _E.GRANT_RECEIVED): PairingTransition(_S.PAIRED),
    (_S.WAITING, _E.DECLINE_RECEIVED): PairingTransition(_S.REFUSED, (_F.NOTIFY,)),
    (_S.REFUSED, _E.DECLINE_RECEIVED): PairingTransition(_S.REFUSED),
    (_S.REFUSED, _E.CHALLENGE_RECEIVED): PairingTransition(_S.REFUSED),
    (None, _E.REQUEST_RECEIVED): PairingTransition(_S.PENDING, (_F.SEND_CHALLENGE, _F.NOTIFY)),
    **{(state, _E.REQUEST_RECEIVED): PairingTransition(state) for state in _S},
    (_S.PENDING, _E.ACCEPT): PairingTransition(_S.ACCEPTED, (_F.SEND_GRANT, _F.ADD_SIBLING)),
    (_S.PENDING, _E.DECLINE): PairingTransition(_S.DECLINED, (_F.SEND_DECLINE,)),
    (_S.PENDING, _E.CODE_CLASH): PairingTransition(_S.DECLINED),
    (_S.PENDING, _E.SIBLING_ACCEPTED): PairingTransition(_S.ACCEPTED, (_F.NOTIFY,)),
    (None, _E.REQUEST_HELD): PairingTransition(_S.HELD, (_F.NOTIFY,)),
    (_S.HELD, _E.LISTED): PairingTransition(_S.PENDING, (_F.SEND_CHALLENGE, _F.NOTIFY)),
    (_S.HELD, _E.SIBLING_ACCEPTED): PairingTransition(_S.ACCEPTED, (_F.NOTIFY,)),
    # Only a move to ``linked`` declines what the user never saw; the new device is told
    # why (once, at the user's move, for the few held).
    (_S.HELD, _E.DECLINE): PairingTransition(_S.DECLINED, (_F.SEND_DECLINE,)),
}


def pairing_transition(state: PairingState | None, event: PairingEvent) -> PairingTransition:
    """Where ``event`` takes a pairing in ``state``; :class:`IllegalPairing` if nowhere."""
    found = PAIRING_TRANSITIONS.get((state, event))
    if found is None:
        raise IllegalPairing(
            f"a pairing {state or 'unknown here'} cannot take the event {event.value!r}"
        )
    return found


#: Requests a primary received that its user has not answered (listed or held).
WAITING_HERE = (PairingState.PENDING, PairingState.HELD)

#: A new device's own requests that were answered or still may be.
ASKED = (PairingState.WAITING, PairingState.PAIRED, PairingState.REFUSED)


class Asked(Offered, Protocol):
    @property
    def state(self) -> str: ...


def declined_last(asked: Iterable[Asked]) -> bool:
    """Whether the primary declined the latest of a new device's own requests (those in
    :data:`ASKED` states): an earlier attempt's decline says nothing of a later one."""
    latest = max(asked, key=lambda pairing: pairing.timestamp_ms, default=None)
    return latest is not None and latest.state == PairingState.REFUSED
