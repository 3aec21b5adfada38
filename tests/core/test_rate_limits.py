"""The rate limits as pure objects (time passed in): a token bucket, and buckets per key
under a total."""

from __future__ import annotations

from p2psync.rpc import KeyedRateLimit, TokenBucket


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=4, now=0)
    assert bucket.take(0, 3) and not bucket.take(0, 2)
    assert bucket.available(1) == 3  # one left, two refilled
    assert bucket.available(100) == 4


def test_a_request_the_total_refuses_costs_the_key_nothing() -> None:
    """Keys draw on their own buckets and a total; one the total refuses is not charged
    to its key either, so a total kept spent by others cannot drain an honest key's own
    share (a ``store_batch`` costs up to 64 requests' worth at once)."""
    limits = KeyedRateLimit(per_key=100, key_refill_s=1000, total=64, total_refill_s=0.01, now=0)
    assert limits.allow(b"honest", 0)  # a key it knows: 99 of its own left
    assert limits.allow(b"busy", 0, cost=60)  # 3 of the total left
    assert not limits.allow(b"honest", 0, cost=63)
    # A second later the total is full again, and so is the honest key's own share.
    assert limits.allow(b"honest", 1, cost=63)


def test_a_key_past_its_own_share_is_refused_and_the_total_not_charged() -> None:
    limits = KeyedRateLimit(per_key=3, key_refill_s=1000, total=10, total_refill_s=1000, now=0)
    assert limits.allow(b"a", 0, cost=3)
    assert not limits.allow(b"a", 0, cost=1)
    assert limits.allow(b"b", 0, cost=3) and limits.allow(b"c", 0, cost=3)
    assert limits.allow(b"d", 0, cost=1)  # 10 in all: the refusal of "a" took none
    assert not limits.allow(b"e", 0, cost=1)


def test_asking_whether_a_request_would_be_admitted_spends_nothing() -> None:
    """For a request under several limits, each charged only if all admit it."""
    limits = KeyedRateLimit(per_key=2, key_refill_s=1000, total=3, total_refill_s=1000, now=0)
    assert all(limits.admits(b"a", 0) for _ in range(10))
    assert limits.admits(b"a", 0, cost=2) and not limits.admits(b"a", 0, cost=3)
    assert limits.allow(b"a", 0, cost=2)
    assert not limits.admits(b"a", 0) and limits.admits(b"b", 0)
    assert limits.allow(b"b", 0) and not limits.admits(b"c", 0)  # the total is spent


def test_past_the_total_a_key_may_still_spend_its_own_share_alone() -> None:
    """Once the total is spent a caller may still let a key within its own share through
    (to keep its request for later), charging that share: a key, new or known, gets its
    share and no more."""
    limits = KeyedRateLimit(per_key=2, key_refill_s=1000, total=3, total_refill_s=1000, now=0)
    assert limits.allow(b"a", 0, cost=2) and limits.allow(b"b", 0)
    assert not limits.allow(b"c", 0)  # the total is spent
    assert not limits.allow_key(b"a", 0)  # a's share went with its answers
    assert limits.allow_key(b"b", 0) and not limits.allow_key(b"b", 0)
    assert [limits.allow_key(b"c", 0) for _ in range(3)] == [True, True, False]
    assert not limits.allow(b"d", 0)  # and the total took none of it
    assert not limits.allow_key(b"c", 500) and limits.allow_key(b"c", 1000)  # its own rate


def test_keys_let_past_the_total_are_remembered_up_to_a_bound() -> None:
    """Past the total, fresh keys no longer cost the total anything, so what is
    remembered of them is bounded: the least recently used goes first (and gets its whole
    share back, as an unknown key would)."""
    limits = KeyedRateLimit(
        per_key=1, key_refill_s=1000, total=1, total_refill_s=1000, now=0, max_keys=2
    )
    assert limits.allow(b"first", 0)  # the total is spent
    assert limits.allow_key(b"a", 0) and not limits.allow_key(b"a", 0)
    assert limits.allow_key(b"b", 0) and limits.allow_key(b"c", 0)  # "a" is forgotten
    assert limits.allow_key(b"a", 0) and not limits.allow_key(b"c", 0)
