"""Where a reader is in one (owner, namespace) stream of a swarm, decided without I/O.

A cursor is a ``last_hash``; because nodes resolve it in their own arrival order, a
reader that switches nodes rewinds it a little (:meth:`Cursor.for_new_node`), so a
message that reached the new node earlier than the old one is not skipped; the
duplicates this may bring are dropped by hash (:meth:`Cursor.fresh`).

A cursor whose message expired well before (:data:`DEAD_CURSOR_MS`) is not sent when a
read begins (:meth:`Cursor.at`): no member holds it any more, so the node would ask
each of its peers about it in vain (node-to-node lookups in step with a device coming
back after a day away, which a server could match to the device's siblings meeting) and
then read from the start anyway. The margin covers the clocks' skew and the nodes' sweep
interval: a cursor a node may still hold is sent, so a read does not start over (and
bring back records already read) while it need not.

A read trusts no node to end it (:class:`StreamRead`): its pages are handed on
:data:`PAGES_PER_DRAIN` at a time, so a node that always answers "more" holds no more
than that in the reader's memory nor keeps what came so far from being filed; a page
that does not move the cursor (empty, or ending where the read already was) would be
asked for again forever, and a node serving more of one stream than its owner's quota
lets any member hold is serving what is not there, as is one saying "more" after a page
it did not fill: each is the node failing, and the reader goes to another member.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import DecodeError
from .allowance import OWNER_QUOTA_BYTES, ROW_CHARGE_BYTES
from .constants import MAX_DATA_BYTES, RETRIEVE_LIMIT, RETRIEVE_MAX_BYTES
from .messages import Message

#: A message a node received this long before the newest is safely on every member.
REWIND_S = 30.0
#: How long after its message's expiry a cursor is taken for dead: the clocks' skew a
#: node allows and its sweep interval are well inside it.
DEAD_CURSOR_MS = 3_600_000
SEEN_HASHES = 4096


@dataclass
class Cursor:
    """Where a reader is in one (owner, namespace) stream, plus what it saw recently."""

    last_hash: bytes | None = None
    #: When ``last_hash``'s message expires (None: not known, as for a cursor kept before
    #: expiries were).
    last_expiry_ms: int | None = None
    _recent: deque[tuple[float, bytes, int]] = field(default_factory=lambda: deque(maxlen=256))
    _seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def at(self, now_ms: int) -> bytes | None:
        """The ``last_hash`` to begin a read after at ``now_ms``: None once its message
        expired :data:`DEAD_CURSOR_MS` ago (no node holds it, and one reads from the
        start without it). The later pages of a read go after the last message read,
        which the node has just served."""
        if self.last_expiry_ms is not None and self.last_expiry_ms + DEAD_CURSOR_MS <= now_ms:
            return None
        return self.last_hash

    def fresh(self, messages: Sequence[Message], lived_s: float) -> list[Message]:
        """Advance past ``messages``, read at ``lived_s``; return those not seen before.

        ``lived_s`` is lived time (Trio's), not the network's clock: what ``REWIND_S``
        covers is the replication lag between members, and only lived time lets
        replication happen (a ``Clock.skip_idle`` replicates nothing)."""
        new = []
        for m in messages:
            self.last_hash, self.last_expiry_ms = m.hash, m.expiry_ms
            self._recent.append((lived_s, m.hash, m.expiry_ms))
            if m.hash not in self._seen:
                new.append(m)
                self._seen[m.hash] = None
                if len(self._seen) > SEEN_HASHES:
                    self._seen.popitem(last=False)
        return new

    def for_new_node(self) -> None:
        """Rewind for a node other than the last one: to the newest hash seen at least
        ``REWIND_S`` before the latest, else to the oldest remembered."""
        if not self._recent:
            return
        newest = self._recent[-1][0]
        for seen_at, digest, expiry_ms in reversed(self._recent):
            if seen_at <= newest - REWIND_S:
                self.last_hash, self.last_expiry_ms = digest, expiry_ms
                return
        _, self.last_hash, self.last_expiry_ms = self._recent[0]


#: Pages one drain reads before handing on what it has (at most 64 frames of 128 KiB).
PAGES_PER_DRAIN = 64
#: What one node may serve of one stream before the read catches up: twice what a
#: member keeps for an owner (rows charged as the quota charges them), which leaves room
#: for rows that expired and were replaced while the read went on.
MAX_SERVED_CHARGE = 2 * OWNER_QUOTA_BYTES


@dataclass
class StreamRead:
    """One read of a stream from one node, until it catches up: what the node served."""

    served_charge: int = 0

    def take(self, messages: Sequence[Message], more: bool, after: bytes | None) -> None:
        """Check a page read after the cursor ``after``; :class:`DecodeError` if the node
        fails (a page that says "more" but is not full or does not move the cursor, or
        a node serving past what any member may hold of one stream)."""
        data = sum(len(m.data) for m in messages)
        self.served_charge += data + len(messages) * ROW_CHARGE_BYTES
        if more and len(messages) < RETRIEVE_LIMIT and data <= RETRIEVE_MAX_BYTES - MAX_DATA_BYTES:
            # A node says "more" only when the page is full: by count, or when the next
            # message would take it past its bytes (a loop of short pages goes nowhere).
            raise DecodeError("a node said there was more after a page it did not fill")
        if more and messages[-1].hash == after:
            raise DecodeError("a node said there was more but served nothing past the cursor")
        if self.served_charge > MAX_SERVED_CHARGE:
            raise DecodeError(
                f"a node served more than {MAX_SERVED_CHARGE} bytes of one stream"
                " without catching up: more than any member holds"
            )
