"""What each answer to the outbox's stores makes of its copy."""

from __future__ import annotations

import pytest

from p2psync.device.delivery import one_at_a_time, settle
from p2psync.errors import RpcError

STORED = (b"\x01" * 32, 1_000)


def test_stored_copies_are_done_and_nothing_waits() -> None:
    settlement = settle([STORED, STORED])
    assert settlement.done == [0, 1] and settlement.dropped == [] and settlement.retry is None


@pytest.mark.parametrize("code", ["bad_request", "too_large", "bad_ttl", "unauthorized"])
def test_a_copy_refused_for_good_is_dropped_and_done(code: str) -> None:
    refusal = RpcError(code, "never")
    settlement = settle([STORED, refusal])
    assert settlement.done == [0, 1]
    assert settlement.dropped == [(1, refusal)]
    assert settlement.retry is None


@pytest.mark.parametrize("code", ["unavailable", "rate_limited", "internal", "clock_skew"])
def test_a_copy_refused_for_now_stays_and_the_first_such_refusal_is_retried(code: str) -> None:
    first, second = RpcError(code, "later"), RpcError("unavailable", "later too")
    settlement = settle([first, STORED, second])
    assert settlement.done == [1]
    assert settlement.dropped == []
    assert settlement.retry is first


def test_a_batch_refused_for_good_whole_goes_again_a_copy_at_a_time() -> None:
    assert one_at_a_time(RpcError("too_large", "the batch"))
    assert not one_at_a_time(RpcError("rate_limited", "the batch"))
