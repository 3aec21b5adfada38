"""The one back-off rule every retry loop uses."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync.backoff import Backoff, jittered


def test_waits_double_from_the_first_up_to_the_cap_and_start_again_after_a_success() -> None:
    backoff = Backoff(2.0, 20.0)
    assert [backoff.failed() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert backoff.failures == 6
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.failed() == 2.0


def test_immediate_retries_wait_nothing_then_the_waits_begin() -> None:
    backoff = Backoff(3.0, 60.0, immediate=1)
    assert [backoff.failed() for _ in range(4)] == [0.0, 3.0, 6.0, 12.0]
    backoff.succeeded()
    assert backoff.failed() == 0.0


def test_a_first_wait_above_the_cap_waits_the_cap() -> None:
    assert Backoff(120.0, 60.0).failed() == 60.0


@pytest.mark.parametrize(
    ("first_s", "max_s", "immediate"), [(0.0, 1.0, 0), (1.0, 0.0, 0), (1.0, 1.0, -1)]
)
def test_nonsense_is_refused(first_s: float, max_s: float, immediate: int) -> None:
    with pytest.raises(ValueError):
        Backoff(first_s, max_s, immediate=immediate)


@given(
    st.floats(0.001, 1000.0),
    st.floats(0.001, 1000.0),
    st.integers(0, 3),
    st.integers(1, 10_000),
)
def test_every_wait_is_within_bounds_and_never_shrinks_while_failing(
    first_s: float, max_s: float, immediate: int, failures: int
) -> None:
    backoff = Backoff(first_s, max_s, immediate=immediate)
    waits = [backoff.failed() for _ in range(failures)]
    assert waits == sorted(waits)
    assert all(0.0 <= wait <= max_s for wait in waits)
    assert waits[immediate:] == [] or waits[immediate] == min(first_s, max_s)


@given(st.floats(0.001, 3_600), st.floats(0, 0.5), st.integers(0, 2**32))
def test_a_jittered_wait_stays_within_its_spread_either_way(
    wait_s: float, spread: float, seed: int
) -> None:
    waits = [jittered(wait_s, spread, random.Random(seed + i)) for i in range(20)]
    assert all(wait_s * (1 - spread) <= w <= wait_s * (1 + spread) for w in waits)


def test_jittered_waits_spread_over_the_whole_range() -> None:
    rng = random.Random(7)
    waits = [jittered(10.0, 0.1, rng) for _ in range(1_000)]
    assert min(waits) < 9.05 and max(waits) > 10.95
