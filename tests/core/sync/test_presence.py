"""Sibling presence: exactly one sibling dials, back-off while away, one session each,
and when a leaving device may stop waiting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2psync.sync.presence import (
    REDIAL_MAX_S,
    REDIAL_MIN_S,
    SessionChoice,
    dials,
    keep_session,
    may_leave,
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
