"""Sibling presence: exactly one sibling dials, back-off while away, one session each,
and when a leaving device may stop waiting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overlay.introset import Intro
from p2psync.sync.presence import (
    HELLO_TRIES,
    LISTENER_SLACK,
    REDIAL_MAX_S,
    REDIAL_MIN_S,
    SessionChoice,
    dials,
    hello_again,
    keep_session,
    keepalive_due_ms,
    may_leave,
    moved,
    redials,
)

KEYS = st.binary(min_size=32, max_size=32)


@given(KEYS, KEYS)
def test_exactly_one_of_two_siblings_dials(one: bytes, other: bytes) -> None:
    if one != other:
        assert dials(one, other) != dials(other, one)


def test_the_sibling_with_the_lower_overlay_key_dials() -> None:
    assert dials(bytes(32), bytes([1]) * 32)
    assert not dials(bytes([1]) * 32, bytes(32))


def test_redials_back_off_to_the_cap_and_start_over_once_the_sibling_shows_up() -> None:
    waits = redials()
    seen = [waits.failed() for _ in range(12)]
    assert seen[:3] == [REDIAL_MIN_S, 2 * REDIAL_MIN_S, 4 * REDIAL_MIN_S]
    assert seen[-1] == REDIAL_MAX_S
    waits.succeeded()
    assert waits.failed() == REDIAL_MIN_S


def test_a_sibling_has_moved_once_its_introset_names_other_intros() -> None:
    """Other intros than those a dial failed at (one retired and another added, or one
    more): dial again at once. The same ones, republished: no. None: it is away."""
    first, second, third = (Intro(bytes([n]) * 32, bytes([n]) * 16, n) for n in range(3))
    assert not moved([first, second], [second, first])
    assert not moved([first, second], [])
    assert moved([first, second], [second, third])
    assert moved([first], [first, second])
    assert moved([], [first])


def test_hellos_go_on_only_to_a_dialer_that_published() -> None:
    assert not hello_again(1, published=False)  # away: it dials us when back
    assert all(hello_again(tries, published=True) for tries in range(1, HELLO_TRIES))
    assert not hello_again(HELLO_TRIES, published=True)


def test_a_session_the_sibling_opened_replaces_ours_and_a_second_of_ours_is_dropped() -> None:
    assert keep_session(has_current=False, opened_by_sibling=False) is SessionChoice.SERVE
    assert keep_session(has_current=False, opened_by_sibling=True) is SessionChoice.SERVE
    assert keep_session(has_current=True, opened_by_sibling=True) is SessionChoice.REPLACE
    assert keep_session(has_current=True, opened_by_sibling=False) is SessionChoice.DROP


def test_a_leaving_device_waits_for_siblings_in_session_or_not_tried_yet() -> None:
    assert may_leave([], in_session={"a"}, tried=set())
    assert not may_leave(["a"], in_session={"a"}, tried={"a"})  # may acknowledge yet
    assert not may_leave(["b"], in_session=set(), tried={"a"})  # may be online
    assert may_leave(["a", "b"], in_session={"c"}, tried={"a", "b"})


INTERVAL = 120_000


def test_the_keeper_sends_an_interval_after_the_last_record_either_way() -> None:
    assert keepalive_due_ms(1_000, 0, INTERVAL, keeper=True) == 1_000 + INTERVAL
    assert keepalive_due_ms(0, 5_000, INTERVAL, keeper=True) == 5_000 + INTERVAL


def test_the_listener_sends_only_once_the_keepers_records_stop() -> None:
    # heard a moment ago: not before LISTENER_SLACK intervals from then
    heard = 50_000
    due = keepalive_due_ms(0, heard, INTERVAL, keeper=False)
    assert due == heard + int(LISTENER_SLACK * INTERVAL)
    # never sooner than an interval after what it sent itself
    assert keepalive_due_ms(200_000, 0, INTERVAL, keeper=False) == 200_000 + INTERVAL


@given(st.lists(st.integers(min_value=30, max_value=2_000), min_size=40, max_size=40))
def test_over_jittery_links_one_side_sends_keepalives_until_it_goes(delays: list[int]) -> None:
    """Two idle sides by the rule, each keep-alive heard one of ``delays`` later: the
    listener sends none while the keeper lives, and one within LISTENER_SLACK intervals
    of the keeper's last once it is gone."""
    sent = {True: 0, False: 0}
    heard = {True: 0, False: 0}
    sends = {True: 0, False: 0}
    in_flight: list[tuple[int, bool]] = []  # (when it arrives, the side it reaches)
    keeper_gone_ms = 30 * INTERVAL + 1
    delay = iter(delays)
    while True:
        dues = {
            side: keepalive_due_ms(sent[side], heard[side], INTERVAL, keeper=side)
            for side in (True, False)
        }
        if dues[True] >= keeper_gone_ms:
            del dues[True]
        side, now = min(dues.items(), key=lambda kv: kv[1])
        if in_flight and in_flight[0][0] <= now:
            now, reached = in_flight.pop(0)
            heard[reached] = now
            continue
        sent[side] = now
        sends[side] += 1
        if not side:
            break  # the listener noticed: its keep-alive goes unacknowledged
        in_flight.append((now + next(delay), not side))
    assert sends == {True: 30, False: 1}
    last_heard = 30 * INTERVAL + delays[29]
    assert now == last_heard + int(LISTENER_SLACK * INTERVAL)
