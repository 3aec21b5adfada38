"""The pairing machine: its table entry by entry, and every missing entry refused."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from p2psync.device.content import ContactRecord, SiblingRecord
from p2psync.device.friends import ContactState
from p2psync.device.pairing import (
    ASKED,
    GRANT_ORDER,
    PAIRING_TRANSITIONS,
    GrantPlan,
    IllegalPairing,
    OfferChoice,
    OfferMatch,
    PairingEffect,
    PairingEvent,
    PairingState,
    choose_offer,
    declined_last,
    grant_contacts,
    latest_per_device,
    pairing_transition,
    plan_grant,
    request_open,
    request_refusal,
    revoke_refusal,
)
from p2psync.mapping import PAIRING_WINDOW_MS

S, E, F = PairingState, PairingEvent, PairingEffect
STATES: list[PairingState | None] = [None, *PairingState]
Moves = dict[tuple[PairingState | None, PairingEvent], tuple[PairingState, set[PairingEffect]]]
SEEN_AGAIN: Moves = {(state, E.REQUEST_RECEIVED): (state, set()) for state in PairingState}

EXPECTED: dict[
    tuple[PairingState | None, PairingEvent], tuple[PairingState, set[PairingEffect]]
] = {
    # the new device
    (None, E.REQUEST_SENT): (S.WAITING, {F.LISTEN}),
    (S.WAITING, E.CHALLENGE_RECEIVED): (S.WAITING, {F.KEEP_NONCE, F.NOTIFY}),
    (S.WAITING, E.GRANT_RECEIVED): (S.PAIRED, {F.ADOPT_GRANT, F.NOTIFY}),
    (S.PAIRED, E.CHALLENGE_RECEIVED): (S.PAIRED, set()),
    (S.PAIRED, E.GRANT_RECEIVED): (S.PAIRED, set()),
    (S.WAITING, E.DECLINE_RECEIVED): (S.REFUSED, {F.NOTIFY}),
    (S.REFUSED, E.DECLINE_RECEIVED): (S.REFUSED, set()),
    (S.REFUSED, E.CHALLENGE_RECEIVED): (S.REFUSED, set()),
    # the primary
    (None, E.REQUEST_RECEIVED): (S.PENDING, {F.SEND_CHALLENGE, F.NOTIFY}),
    **SEEN_AGAIN,
    (S.PENDING, E.ACCEPT): (S.ACCEPTED, {F.SEND_GRANT, F.ADD_SIBLING}),
    (S.PENDING, E.DECLINE): (S.DECLINED, {F.SEND_DECLINE}),
    (S.PENDING, E.CODE_CLASH): (S.DECLINED, set()),
    (S.PENDING, E.SIBLING_ACCEPTED): (S.ACCEPTED, {F.NOTIFY}),
    # past the answer budget: unanswered until the user lists the requests
    (None, E.REQUEST_HELD): (S.HELD, {F.NOTIFY}),
    (S.HELD, E.LISTED): (S.PENDING, {F.SEND_CHALLENGE, F.NOTIFY}),
    (S.HELD, E.SIBLING_ACCEPTED): (S.ACCEPTED, {F.NOTIFY}),
    (S.HELD, E.DECLINE): (S.DECLINED, {F.SEND_DECLINE}),
}


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED, key=str))
def test_every_legal_transition(state: PairingState | None, event: PairingEvent) -> None:
    move = pairing_transition(state, event)
    new_state, effects = EXPECTED[(state, event)]
    assert move.state == new_state and set(move.effects) == effects


def test_the_table_holds_exactly_the_legal_transitions() -> None:
    assert set(PAIRING_TRANSITIONS) == set(EXPECTED)


@pytest.mark.parametrize(
    ("state", "event"),
    [pair for pair in itertools.product(STATES, PairingEvent) if pair not in EXPECTED],
    ids=str,
)
def test_every_other_transition_is_refused(state: PairingState | None, event: PairingEvent) -> None:
    with pytest.raises(IllegalPairing):
        pairing_transition(state, event)


def test_a_device_answers_only_what_it_asked() -> None:
    """A challenge or a grant for a request this device received (not sent) finds no
    entry, and neither does accepting an answered request twice."""
    for state in (S.PENDING, S.ACCEPTED, S.DECLINED):
        for event in (E.CHALLENGE_RECEIVED, E.GRANT_RECEIVED, E.DECLINE_RECEIVED):
            with pytest.raises(IllegalPairing):
                pairing_transition(state, event)
    with pytest.raises(IllegalPairing, match="accepted cannot take the event 'accept'"):
        pairing_transition(S.ACCEPTED, E.ACCEPT)


def test_a_held_request_is_never_accepted_unseen() -> None:
    """A request held past the answer budget has no code to compare yet: only the user's
    listing (which answers it) makes it one the user can accept."""
    for event in (E.ACCEPT, E.CODE_CLASH):
        with pytest.raises(IllegalPairing):
            pairing_transition(S.HELD, event)


def test_states_keep_their_stored_values() -> None:
    assert [s.value for s in PairingState] == [
        "waiting",
        "paired",
        "refused",
        "pending",
        "accepted",
        "declined",
        "held",
    ]


@dataclass(frozen=True)
class _Offer:
    timestamp_ms: int


def test_a_request_stays_open_for_the_pairing_window() -> None:
    now = 10 * PAIRING_WINDOW_MS
    assert request_open(now - PAIRING_WINDOW_MS, now)
    assert not request_open(now - PAIRING_WINDOW_MS - 1, now)


def test_the_user_picks_a_request_by_its_code_with_or_without_the_space() -> None:
    now = 10 * PAIRING_WINDOW_MS
    fresh, other = _Offer(now - 1_000), _Offer(now - 2_000)
    offers = [("123 456", fresh), ("654 321", other)]
    assert choose_offer(offers, "123456", now) == OfferChoice(OfferMatch.FOUND, (fresh,))
    assert choose_offer(offers, "654 321", now) == OfferChoice(OfferMatch.FOUND, (other,))
    assert choose_offer(offers, "000 000", now) == OfferChoice(OfferMatch.MISSING, ())


def test_two_requests_showing_one_code_are_both_named_never_one_guessed() -> None:
    now = 10 * PAIRING_WINDOW_MS
    honest, ground = _Offer(now - 1_000), _Offer(now - 500)
    choice = choose_offer([("123 456", honest), ("123 456", ground)], "123 456", now)
    assert choice == OfferChoice(OfferMatch.CLASH, (honest, ground))
    # One of them past the window changes nothing: both are still refused.
    old = _Offer(now - PAIRING_WINDOW_MS - 1)
    choice = choose_offer([("123 456", old), ("123 456", ground)], "123 456", now)
    assert choice == OfferChoice(OfferMatch.CLASH, (old, ground))


def test_a_request_past_the_window_is_expired_not_found() -> None:
    now = 10 * PAIRING_WINDOW_MS
    old = _Offer(now - PAIRING_WINDOW_MS - 1)
    assert choose_offer([("123 456", old)], "123 456", now) == OfferChoice(
        OfferMatch.EXPIRED, (old,)
    )


def test_only_a_fresh_unpaired_device_may_ask_another_to_pair() -> None:
    me = ("05" + "aa" * 32, "05" + "bb" * 32)
    primary = "05" + "cc" * 32
    assert request_refusal(primary, own_ids=me, joined=False, fresh=True) is None
    assert request_refusal(primary, own_ids=me, joined=True, fresh=True) == (
        "this device is already paired"
    )
    for own in me:
        assert request_refusal(own, own_ids=me, joined=False, fresh=True) == (
            "a device cannot pair with itself"
        )
    refusal = request_refusal(primary, own_ids=me, joined=False, fresh=False)
    assert refusal is not None and "only a new device" in refusal


PRIMARY = SiblingRecord("05" + "11" * 32, b"o" * 32, "phone")
LAPTOP = SiblingRecord("05" + "22" * 32, b"p" * 32, "laptop")
NEW = "05" + "33" * 32
REQUESTER = "05" + "44" * 32


def plan(
    *, hands_over_seed: bool, asked_as_mapped: bool, siblings: list[SiblingRecord]
) -> GrantPlan | None:
    """The plan for a request of device ``NEW``, granted by ``PRIMARY``: asked as a
    mapped device, the request is sealed by the device's own key, else by ``REQUESTER``,
    a key made for it."""
    return plan_grant(
        hands_over_seed=hands_over_seed,
        requester_key=NEW if asked_as_mapped else REQUESTER,
        device=NEW,
        asked_as_mapped=asked_as_mapped,
        me=PRIMARY,
        siblings=siblings,
    )


def test_a_mapped_grant_goes_to_the_new_devices_own_key_and_publishes_a_mapping() -> None:
    mapped = plan(hands_over_seed=False, asked_as_mapped=True, siblings=[LAPTOP])
    assert mapped == GrantPlan(NEW, False, (PRIMARY, LAPTOP), tells_siblings=True)


def test_a_linked_grant_goes_to_the_key_made_for_the_request_and_hands_over_the_seed() -> None:
    linked = plan(hands_over_seed=True, asked_as_mapped=False, siblings=[])
    assert linked == GrantPlan(REQUESTER, True, (PRIMARY,), tells_siblings=False)


def test_the_grant_never_lists_the_new_device_among_its_siblings() -> None:
    again = SiblingRecord(NEW, b"n" * 32, "tablet")  # a device paired once before
    linked = plan(hands_over_seed=True, asked_as_mapped=False, siblings=[again])
    assert linked is not None and linked.devices == (PRIMARY,) and not linked.tells_siblings


def test_a_request_made_as_mapped_to_an_account_now_linked_is_declined() -> None:
    assert plan(hands_over_seed=True, asked_as_mapped=True, siblings=[LAPTOP]) is None


def test_only_the_primary_revokes_another_device_where_the_mode_allows() -> None:
    me, other = PRIMARY.device, LAPTOP.device
    assert revoke_refusal(other, mode_refusal=None, is_primary=True, device_id=me) is None
    assert revoke_refusal(other, mode_refusal="linked", is_primary=True, device_id=me) == "linked"
    assert revoke_refusal(other, mode_refusal=None, is_primary=False, device_id=me) == (
        "only the primary device can revoke a device"
    )
    assert revoke_refusal(me, mode_refusal=None, is_primary=True, device_id=me) == (
        "a device cannot revoke itself"
    )


@dataclass(frozen=True)
class Asked:
    timestamp_ms: int
    state: str


def test_only_the_latest_request_says_whether_the_primary_declined() -> None:
    assert set(ASKED) == {S.WAITING, S.PAIRED, S.REFUSED}  # a new device's own
    assert not declined_last([])
    assert declined_last([Asked(1, S.WAITING), Asked(2, S.REFUSED)])
    assert not declined_last([Asked(1, S.REFUSED), Asked(2, S.WAITING)])  # asked again
    assert not declined_last([Asked(1, S.REFUSED), Asked(2, S.PAIRED)])


def test_a_device_that_asked_again_is_listed_once_by_its_latest_request() -> None:
    """A new device that gave up and asked again shows one code, its latest; another
    device (or one naming the same id with another key) is listed beside it."""
    now = 10 * PAIRING_WINDOW_MS
    first, again, other, same_id = (_Offer(now - t) for t in (9_000, 1_000, 5_000, 500))
    dave, carol = ("05dave", b"dave-key"), ("05carol", b"carol-key")
    offers = [(dave, first), (carol, other), (dave, again), (("05dave", b"another"), same_id)]
    assert latest_per_device(offers) == [other, again, same_id]
    twins = [(dave, _Offer(now)), (dave, _Offer(now))]
    assert len(latest_per_device(twins)) == 1


def test_a_grant_carries_friends_first_and_as_many_contacts_as_fit() -> None:
    """Contacts past what fits a grant follow it as sync records, strangers' requests
    last: however many a stranger left, the friends reach the new device in the grant."""
    contacts = [
        ContactRecord(f"{n:066x}", state, ())
        for n, state in enumerate(
            [ContactState.PENDING] * 5
            + [ContactState.FRIEND] * 3
            + [ContactState.DECLINED, ContactState.REQUESTED]
        )
    ]
    carried, after = grant_contacts(contacts, lambda some: len(some) <= 4)
    assert [c.state for c in carried] == [ContactState.FRIEND] * 3 + [ContactState.REQUESTED]
    assert [c.state for c in after] == [ContactState.DECLINED] + [ContactState.PENDING] * 5
    assert grant_contacts(contacts, lambda some: True) == (
        tuple(sorted(contacts, key=lambda c: (GRANT_ORDER[c.state], c.user))),
        (),
    )
    assert grant_contacts(contacts, lambda some: not some) == ((), tuple(carried + after))
