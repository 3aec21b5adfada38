"""The timing check of the relay audit (check (b)): requests that follow sibling sync more
often than chance are caught, requests that do not are not, and idle time (a skipped
clock) does not make chance look smaller than it was."""

from __future__ import annotations

import random

from benchmarks.relay_audit import TIMING_WINDOW_MS, host_of, timing_matches

ALPHA = 0.001


def test_requests_that_follow_every_sync_are_matched_far_beyond_chance() -> None:
    rng = random.Random(7)
    sync = sorted(rng.randrange(0, 600_000) for _ in range(60))
    deletes = [t + rng.randrange(5, 50) for t in sync[::6]]  # every sixth sync: a delete
    polls = list(range(0, 600_000, 3_000))  # a poll every 3 s, whatever sync does
    [delete, poll] = sorted(
        timing_matches({("node", "delete"): deletes, ("node", "retrieve"): polls}, sync),
        key=lambda m: m.method,
    )
    assert delete.matched == delete.requests == 10
    assert delete.p_value < ALPHA
    assert poll.p_value > ALPHA
    assert abs(poll.matched - poll.expected) < 3 * poll.expected**0.5 + 1


def test_requests_independent_of_sync_are_not_matched() -> None:
    rng = random.Random(8)
    sync = sorted(rng.randrange(0, 600_000) for _ in range(100))
    requests = {("node", "retrieve"): sorted(rng.randrange(0, 600_000) for _ in range(300))}
    [match] = timing_matches(requests, sync)
    assert match.p_value > ALPHA
    share = match.expected / match.requests
    assert 0.05 < share < 0.15  # ~100 windows of 400 ms in 600 s, a few overlapping


def test_a_long_idle_stretch_is_not_counted_as_time_requests_could_fall_in() -> None:
    """A day skipped between two busy minutes leaves chance as it was within them."""
    rng = random.Random(9)
    day = 86_400_000
    sync = sorted(rng.randrange(0, 60_000) for _ in range(30))
    sync += [day + t for t in sync]
    requests = sorted(rng.randrange(0, 60_000) for _ in range(100))
    requests += [day + t for t in requests]
    [match] = timing_matches({("node", "retrieve"): requests}, sync)
    assert match.expected / match.requests > 0.1  # ~30 windows of 400 ms in 60 s
    assert match.p_value > ALPHA


def test_with_no_sync_nothing_is_matched() -> None:
    [match] = timing_matches({("node", "retrieve"): [1, 2, 3]}, [], TIMING_WINDOW_MS)
    assert (match.matched, match.expected, match.p_value) == (0, 0.0, 1.0)


def test_peers_are_named_by_host() -> None:
    assert host_of("127.0.0.11:53422") == "127.0.0.11"
    assert host_of("127.0.0.1:9000#" + "ab" * 32) == "127.0.0.1"
    assert host_of("[::1]:9000") == "::1"
    assert host_of("mem:relay3") == "relay3"
    assert host_of("alice-phone") == "alice-phone"
