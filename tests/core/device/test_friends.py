"""The friend machine: its table entry by entry, every missing entry refused, and two
users driving it at random against each other over a queue of records in flight."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2psync.device.friends import (
    TRANSITIONS,
    ContactState,
    FriendEffect,
    FriendEvent,
    IllegalTransition,
    Transition,
    accepts_messages,
    friends_among,
    is_friend,
    merged,
    transition,
)

S, E, F = ContactState, FriendEvent, FriendEffect
STATES: list[ContactState | None] = [None, *ContactState]

#: What each legal move must be, written out independently of the table.
EXPECTED: dict[tuple[ContactState | None, FriendEvent], tuple[ContactState, set[FriendEffect]]] = {
    (None, E.REQUEST): (S.REQUESTED, {F.SEND_REQUEST, F.TELL_SIBLINGS, F.NOTIFY}),
    (S.REQUESTED, E.REQUEST): (S.REQUESTED, {F.SEND_REQUEST, F.TELL_SIBLINGS, F.NOTIFY}),
    (S.DECLINED, E.REQUEST): (S.REQUESTED, {F.SEND_REQUEST, F.TELL_SIBLINGS, F.NOTIFY}),
    (S.PENDING, E.REQUEST): (S.FRIEND, {F.SEND_ACCEPT, F.TELL_SIBLINGS, F.NOTIFY}),
    (S.PENDING, E.ACCEPT): (S.FRIEND, {F.SEND_ACCEPT, F.TELL_SIBLINGS, F.NOTIFY}),
    (S.PENDING, E.DECLINE): (S.DECLINED, {F.TELL_SIBLINGS, F.NOTIFY}),
    (None, E.REQUEST_RECEIVED): (S.PENDING, {F.NOTIFY}),
    (S.REQUESTED, E.REQUEST_RECEIVED): (S.FRIEND, {F.SEND_ACCEPT, F.TELL_SIBLINGS, F.NOTIFY}),
    (S.PENDING, E.REQUEST_RECEIVED): (S.PENDING, set()),
    (S.FRIEND, E.REQUEST_RECEIVED): (S.FRIEND, set()),
    (S.DECLINED, E.REQUEST_RECEIVED): (S.DECLINED, set()),
    (S.REQUESTED, E.ACCEPT_RECEIVED): (S.FRIEND, {F.NOTIFY}),
    (S.FRIEND, E.ACCEPT_RECEIVED): (S.FRIEND, {F.NOTIFY}),
}


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED, key=str))
def test_every_legal_transition(state: ContactState | None, event: FriendEvent) -> None:
    move = transition(state, event)
    new_state, effects = EXPECTED[(state, event)]
    assert move.state == new_state and set(move.effects) == effects


def test_the_table_holds_exactly_the_legal_transitions() -> None:
    assert set(TRANSITIONS) == set(EXPECTED)


@pytest.mark.parametrize(
    ("state", "event"),
    [pair for pair in itertools.product(STATES, FriendEvent) if pair not in EXPECTED],
    ids=str,
)
def test_every_other_transition_is_refused(state: ContactState | None, event: FriendEvent) -> None:
    with pytest.raises(IllegalTransition):
        transition(state, event)


def test_refusals_say_why() -> None:
    with pytest.raises(IllegalTransition, match="already a friend"):
        transition(S.FRIEND, E.REQUEST)
    with pytest.raises(IllegalTransition, match="no friend request waiting"):
        transition(None, E.ACCEPT)
    with pytest.raises(IllegalTransition, match="was not asked"):
        transition(S.PENDING, E.ACCEPT_RECEIVED)


def test_states_keep_their_stored_values() -> None:
    assert [s.value for s in ContactState] == ["requested", "pending", "friend", "declined"]
    assert ContactState("friend") == "friend"


@pytest.mark.parametrize("current", STATES)
@pytest.mark.parametrize("shared", list(ContactState))
def test_a_siblings_contact_change_never_undoes_a_friendship(
    current: ContactState | None, shared: ContactState
) -> None:
    assert merged(current, shared) == (S.FRIEND if current == S.FRIEND else shared)


def test_messages_are_filed_from_anyone_known_but_declined() -> None:
    assert [accepts_messages(s) for s in STATES] == [False, True, True, True, False]


class TwoUsers(RuleBasedStateMachine):
    """Alice and Bob each keep the other as a contact; whatever either does, in whatever
    order the records in flight arrive, friendship is final and, once nothing is in
    flight, mutual."""

    def __init__(self) -> None:
        super().__init__()
        self.state: dict[str, ContactState | None] = {"alice": None, "bob": None}
        self.in_flight: deque[tuple[str, FriendEvent]] = deque()
        self.was_friend: set[str] = set()

    def _apply(self, user: str, move: Transition) -> None:
        other = "bob" if user == "alice" else "alice"
        self.state[user] = move.state
        if F.SEND_REQUEST in move.effects:
            self.in_flight.append((other, E.REQUEST_RECEIVED))
        if F.SEND_ACCEPT in move.effects:
            self.in_flight.append((other, E.ACCEPT_RECEIVED))

    @rule(
        user=st.sampled_from(["alice", "bob"]),
        event=st.sampled_from([E.REQUEST, E.ACCEPT, E.DECLINE]),
    )
    def act(self, user: str, event: FriendEvent) -> None:
        state = self.state[user]
        if (state, event) not in TRANSITIONS:
            with pytest.raises(IllegalTransition):
                transition(state, event)
            return
        self._apply(user, transition(state, event))

    @precondition(lambda self: bool(self.in_flight))
    @rule(reorder=st.booleans())
    def deliver(self, reorder: bool) -> None:
        user, event = self.in_flight.pop() if reorder else self.in_flight.popleft()
        state = self.state[user]
        try:
            move = transition(state, event)
        except IllegalTransition:
            # Only an acceptance nobody asked for is refused.
            assert event is E.ACCEPT_RECEIVED and state not in (S.REQUESTED, S.FRIEND)
            return
        self._apply(user, move)

    @invariant()
    def friendship_is_final(self) -> None:
        for user, state in self.state.items():
            if user in self.was_friend:
                assert state == S.FRIEND
            if state == S.FRIEND:
                self.was_friend.add(user)

    @invariant()
    def settled_friendship_is_mutual(self) -> None:
        if not self.in_flight and S.FRIEND in self.state.values():
            assert self.state["alice"] == self.state["bob"] == S.FRIEND


TwoUsers.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_two_users = TwoUsers.TestCase


@dataclass(frozen=True)
class Row:
    user: str
    state: ContactState


def test_only_a_friend_is_sent_to_and_hears_what_the_user_says_of_itself() -> None:
    assert [state for state in STATES if is_friend(state)] == [S.FRIEND]
    rows = [Row(str(state), state) for state in ContactState]
    assert friends_among(rows) == [str(S.FRIEND)]
    assert friends_among([]) == []
