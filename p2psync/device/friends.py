"""The friend machine: a contact's states and every legal move between them, in one table.

Like h11's ``_state.py``: a contact is in one :class:`ContactState` (or unknown, ``None``);
an event, ours (:attr:`FriendEvent.REQUEST`, ``ACCEPT``, ``DECLINE``) or the peer's
(``REQUEST_RECEIVED``, ``ACCEPT_RECEIVED``), moves it by :data:`TRANSITIONS` and says what
the driver must do (:class:`FriendEffect`). Anything the table lacks is refused with
:class:`IllegalTransition`, so "accept a request nobody sent" fails the same way from the
API and from the network. No I/O here: the device driver executes the effects.

The states are stored (contacts table) and shared with siblings (``sync_contact``) by
their values, so they never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol


class ContactState(StrEnum):
    """``requested``: we asked; ``pending``: they asked; ``friend``; ``declined``: we refused."""

    REQUESTED = "requested"
    PENDING = "pending"
    FRIEND = "friend"
    DECLINED = "declined"


class FriendEvent(Enum):
    REQUEST = "request"  # the user asks the contact to be friends
    ACCEPT = "accept"  # the user accepts the contact's request
    DECLINE = "decline"  # the user refuses it (the requester is not told)
    REQUEST_RECEIVED = "request received"
    ACCEPT_RECEIVED = "accept received"


class FriendEffect(Enum):
    SEND_REQUEST = "send a friend_request"
    SEND_ACCEPT = "send a friend_accept with every device of ours"
    TELL_SIBLINGS = "queue the contact for our siblings (sync_contact)"
    NOTIFY = "wake whoever waits for news"


@dataclass(frozen=True, slots=True)
class Transition:
    state: ContactState
    effects: tuple[FriendEffect, ...] = ()


class IllegalTransition(Exception):
    """An event the contact's state does not allow; the message says why, for the user."""


_S = ContactState
_E = FriendEvent
_F = FriendEffect
_ASK = Transition(_S.REQUESTED, (_F.SEND_REQUEST, _F.TELL_SIBLINGS, _F.NOTIFY))
_BEFRIEND = Transition(_S.FRIEND, (_F.SEND_ACCEPT, _F.TELL_SIBLINGS, _F.NOTIFY))

#: (state, event) -> transition. ``None`` is a contact not known yet. A request received
#: from someone we asked is agreement on both sides; one received again, or from someone
#: declined or already a friend, changes nothing (and tells nobody anything).
TRANSITIONS: dict[tuple[ContactState | None, FriendEvent], Transition] = {
    (None, _E.REQUEST): _ASK,
    (_S.REQUESTED, _E.REQUEST): _ASK,
    (_S.DECLINED, _E.REQUEST): _ASK,
    (_S.PENDING, _E.REQUEST): _BEFRIEND,
    (_S.PENDING, _E.ACCEPT): _BEFRIEND,
    (_S.PENDING, _E.DECLINE): Transition(_S.DECLINED, (_F.TELL_SIBLINGS, _F.NOTIFY)),
    (None, _E.REQUEST_RECEIVED): Transition(_S.PENDING, (_F.NOTIFY,)),
    (_S.REQUESTED, _E.REQUEST_RECEIVED): _BEFRIEND,
    (_S.PENDING, _E.REQUEST_RECEIVED): Transition(_S.PENDING),
    (_S.FRIEND, _E.REQUEST_RECEIVED): Transition(_S.FRIEND),
    (_S.DECLINED, _E.REQUEST_RECEIVED): Transition(_S.DECLINED),
    # Every sibling receives the acceptance itself: nothing to tell them.
    (_S.REQUESTED, _E.ACCEPT_RECEIVED): Transition(_S.FRIEND, (_F.NOTIFY,)),
    (_S.FRIEND, _E.ACCEPT_RECEIVED): Transition(_S.FRIEND, (_F.NOTIFY,)),
}

#: Why an event finds no entry, said of the contact (``"<user> is already a friend"``).
_REFUSALS = {
    _E.REQUEST: "is already a friend",
    _E.ACCEPT: "has no friend request waiting",
    _E.DECLINE: "has no friend request waiting",
    _E.ACCEPT_RECEIVED: "was not asked",
}


def transition(state: ContactState | None, event: FriendEvent) -> Transition:
    """Where ``event`` takes a contact in ``state``; :class:`IllegalTransition` (saying
    why, of the contact) if nowhere."""
    found = TRANSITIONS.get((state, event))
    if found is None:
        raise IllegalTransition(_REFUSALS[event])
    return found


def merged(current: ContactState | None, shared: ContactState) -> ContactState:
    """A sibling's contact change (``sync_contact``) against ours: ``friend`` is final,
    otherwise the sibling's newer state wins."""
    return _S.FRIEND if current == _S.FRIEND else shared


def accepts_messages(state: ContactState | None) -> bool:
    """Whether a message from a contact in ``state`` is filed. A pending requester's
    message is kept: a sibling may have accepted already (its sync record can arrive after
    the message), and if not, it reads as part of the request."""
    return state is not None and state != _S.DECLINED


def is_friend(state: ContactState | None) -> bool:
    """Whether a contact in ``state`` is one the user may send to and whose own
    statements (a display name, a revoked device, a move to linked mode) are taken: a
    friend, and nothing short of one."""
    return state == _S.FRIEND


class _Contact(Protocol):
    @property
    def user(self) -> str: ...
    @property
    def state(self) -> ContactState: ...


def friends_among(contacts: Iterable[_Contact]) -> list[str]:
    """The users of ``contacts`` who hear what the user says of itself (its display name,
    a device it revoked, its move to linked mode): its friends (:func:`is_friend`)."""
    return [contact.user for contact in contacts if is_friend(contact.state)]
