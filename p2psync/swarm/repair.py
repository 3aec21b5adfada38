"""Anti-entropy between swarm members, as pure functions over row summaries.

Each unexpired row (tombstones included) gets a 16-byte id over everything that can
differ between replicas (owner, namespace, hash, expiry, deleted, and for live rows
whether the owner proved its expiry). Owners fall into 256
buckets; a bucket's digest is the XOR of its ids. Two nodes first compare 256 digests
(4 KiB), then list only the buckets that differ, then move exactly the rows one side
lacks. Because rows merge like a CRDT (:meth:`MessageStore.put_many`), pulling the
other side's differing rows and pushing ours converges both in one round.
:class:`RepairSchedule` says with whom and when.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..backoff import Backoff, jittered
from .constants import REPLICATION_RETRY_S
from .ring import NodeInfo
from .rows import RowSummary

BUCKETS = 256
ITEM_ID_BYTES = 16
ZERO_DIGEST = bytes(ITEM_ID_BYTES)


def bucket_of(owner: str) -> int:
    return hashlib.blake2b(owner.encode(), digest_size=1, person=b"p2psync-bucket").digest()[0]


def item_id(row: RowSummary) -> bytes:
    key = b"|".join(
        (
            row.pubkey.encode(),
            str(row.namespace).encode(),
            row.hash,
            str(row.expiry_ms).encode(),
            b"dead" if row.deleted else b"proven" if row.proven else b"live",
        )
    )
    return hashlib.blake2b(key, digest_size=ITEM_ID_BYTES, person=b"p2psync-repair").digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(ITEM_ID_BYTES, "big")


def by_bucket(rows: Iterable[RowSummary]) -> dict[int, list[RowSummary]]:
    """``rows`` grouped by their owner's bucket (a round compares bucket by bucket)."""
    buckets: dict[int, list[RowSummary]] = {}
    for row in rows:
        buckets.setdefault(bucket_of(row.pubkey), []).append(row)
    return buckets


def bucket_digests(buckets: Mapping[int, Iterable[RowSummary]]) -> list[bytes]:
    result = [ZERO_DIGEST] * BUCKETS
    for bucket, rows in buckets.items():
        for row in rows:
            result[bucket] = _xor(result[bucket], item_id(row))
    return result


def digests(rows: Iterable[RowSummary]) -> list[bytes]:
    return bucket_digests(by_bucket(rows))


def differing_buckets(ours: Sequence[bytes], theirs: Sequence[bytes]) -> list[int]:
    return [b for b in range(BUCKETS) if ours[b] != theirs[b]]


RowKey = tuple[str, int, bytes]


@dataclass(frozen=True)
class BucketDiff:
    """The keys of rows to pull (theirs differ from ours) and to push (ours differ)."""

    pull: list[RowKey]
    push: list[RowKey]


def diff_bucket(ours: Iterable[RowSummary], theirs: Iterable[RowSummary]) -> BucketDiff:
    our_rows = {item_id(r): r for r in ours}
    their_rows = {item_id(r): r for r in theirs}
    return BucketDiff(
        pull=[(r.pubkey, r.namespace, r.hash) for i, r in their_rows.items() if i not in our_rows],
        push=[(r.pubkey, r.namespace, r.hash) for i, r in our_rows.items() if i not in their_rows],
    )


class RepairSchedule:
    """Whom a node repairs with each round, and how long it waits before the next.

    Every peer at start-up and when asked (:meth:`repair_everyone`: replication lost
    rows, or the members changed); otherwise the peers whose last round failed, or else
    one random peer, which is enough for a swarm to converge in a few intervals at a
    fraction of the traffic. Rounds come every ``interval_s`` ± 20 % (so members do not
    fall into step), sooner while a peer fails: after ``REPLICATION_RETRY_S``, doubling
    up to the interval, so a member that was down is caught up within seconds of its
    return, not when the gossip next happens to pick it."""

    def __init__(self, interval_s: float, rng: random.Random) -> None:
        self._interval_s = interval_s
        self._random = rng
        self._everyone = True
        self._failed: set[str] = set()
        self._retry = Backoff(REPLICATION_RETRY_S, interval_s)

    def repair_everyone(self) -> None:
        self._everyone = True

    def peers(self, members: Sequence[NodeInfo]) -> list[NodeInfo]:
        """This round's peers, of the swarm's other ``members``."""
        if self._everyone or not members:
            self._everyone = False
            return list(members)
        retried = [peer for peer in members if peer.pubkey in self._failed]
        return retried or [self._random.choice(members)]

    def round_over(self, failed: set[str]) -> float:
        """The round is over and the peers of ``failed`` (keys) failed: the seconds until
        the next."""
        self._failed = set(failed)
        interval = jittered(self._interval_s, 0.2, self._random)
        if failed:
            return min(interval, self._retry.failed())
        self._retry.succeeded()
        return interval
