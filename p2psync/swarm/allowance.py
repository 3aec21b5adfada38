"""What an anonymous store may cost a node: bytes per connection per second, and bytes
held per owner, a row counting for its data and :data:`ROW_CHARGE_BYTES`.

``store`` needs no account (DESIGN.md §4: anyone may leave a message for anyone), so
nothing ties a store to who pays for it. Two bounds keep one party from growing a node
without limit (a review grew one by 61 MiB/s from a single process, each row kept up to
14 days on every member):

* **per connection**, a token bucket of bytes: a client stores at most
  ``STORE_BYTES_PER_S`` on average, with bursts of 8 s of it. Connections per
  node are capped too, so this bounds a node's intake; an honest device stores a few KiB
  per message and seldom more than a few per second.
* **per owner**, ``OWNER_QUOTA_BYTES`` of live data: however many connections store for
  one key, that key's mailbox holds at most this much on each member. A full mailbox
  refuses further stores rather than dropping older messages, and as a passing limit
  (``rate_limited``), so senders keep their copies and store them as rows expire: a flood
  can delay an owner's new mail but never erase it, and the last quarter of the quota
  takes only stores that show the owner's access (:mod:`.access`), so a stranger's
  flood delays only other strangers' first messages.

Proof of work was the other choice: it makes every store cost the sender CPU, which
taxes a phone as much as an attacker's server and slows every honest send, while these
bounds cost an honest client nothing.

Counting an owner's bytes exactly needs a query over its rows, so the node keeps an
estimate per owner (bytes stored since it last counted, an upper bound, since deletions
and expiries are not subtracted) and counts exactly only when the estimate says the quota
might be reached. Estimates are kept for the ``TRACKED_OWNERS`` most recent owners; one
forgotten is simply counted again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Protocol

from ..rpc.limits import TokenBucket
from .rows import StoredMessage

STORE_BYTES_PER_S = 1024 * 1024
#: What a row costs besides its data, against both bounds: its key, hash, times and the
#: row itself, so a row with no data is not free.
ROW_CHARGE_BYTES = 256
OWNER_QUOTA_BYTES = 64 * 1024 * 1024
TRACKED_OWNERS = 100_000
#: How long an owner found at its quota is taken to be there before it is counted again.
RECOUNT_S = 1.0


def charge_of(row: StoredMessage) -> int:
    """What a live row counts for (a tombstone, which only its owner's signed delete
    makes, counts for nothing)."""
    return 0 if row.data is None else ROW_CHARGE_BYTES + len(row.data)


def connection_budget(now: float, bytes_per_s: float = STORE_BYTES_PER_S) -> TokenBucket:
    """The byte bucket of a new connection: ``bytes_per_s``, bursts of 8 s of it."""
    return TokenBucket(bytes_per_s, int(8 * bytes_per_s), now)


class Closing(Hashable, Protocol):
    """A connection, as far as its byte bucket needs it."""

    def on_close(self, callback: Callable[[], None]) -> None: ...


class ConnectionBudgets:
    """A byte bucket per connection (:func:`connection_budget`), made on its first charge
    and forgotten when it closes."""

    def __init__(self, bytes_per_s: float = STORE_BYTES_PER_S) -> None:
        self._bytes_per_s = bytes_per_s
        self._budgets: dict[Closing, TokenBucket] = {}

    def charge(self, conn: Closing, now: float, size: int) -> bool:
        """Whether ``conn`` may store ``size`` more bytes now (they are then spent)."""
        budget = self._budgets.get(conn)
        if budget is None:
            budget = connection_budget(now, self._bytes_per_s)
            self._budgets[conn] = budget
            conn.on_close(lambda: self._forget(conn))
        return budget.take(now, size)

    def _forget(self, conn: Closing) -> None:
        self._budgets.pop(conn, None)


class OwnerQuota:
    """Live bytes per owner, bounded by ``quota``; ``count(owner)`` is the exact figure
    (a query over the owner's rows), asked only near the bound, and at most once per
    :data:`RECOUNT_S` of ``now()`` for an owner at it: a mailbox at its quota answered
    a full count for every store and every row a peer sent (85 ms each for a
    quarter-million rows, in the event loop)."""

    def __init__(
        self,
        count: Callable[[str], int],
        quota: int = OWNER_QUOTA_BYTES,
        now: Callable[[], float] = time.monotonic,
        *,
        reserve: int = 0,
    ) -> None:
        """``reserve``: bytes of each quota that rows not vouched for may not use (a node
        keeps :func:`~.access.vouched_reserve` of it)."""
        self._count = count
        self.quota = quota
        self.reserve = reserve
        self._now = now
        #: Owner → (estimate, when it was last counted exactly), least recent first.
        self._estimates: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def admits(self, owner: str, size: int) -> bool:
        """Whether ``owner`` may store ``size`` more bytes now."""
        known = self._estimates.pop(owner, None)
        now = self._now()
        if known is None or (known[0] + size > self.quota and now - known[1] >= RECOUNT_S):
            known = (self._count(owner), now)
        self._remember(owner, known)
        return known[0] + size <= self.quota

    def has_room_for(self, row: StoredMessage, taking: int = 0) -> bool:
        """Whether ``row``'s owner may store it now, besides ``taking`` bytes of rows
        before it: within the quota if the row is vouched for, else within the quota less
        the reserve."""
        reserve = 0 if row.vouched else self.reserve
        return self.admits(row.pubkey, taking + charge_of(row) + reserve)

    def fitting(
        self, rows: Iterable[StoredMessage], held: Callable[[StoredMessage], bool]
    ) -> tuple[list[StoredMessage], set[str]]:
        """Of a peer's batch, the rows whose owners' mailboxes have room for them, counting
        the batch's earlier rows, and the owners refused: from an owner's first row that
        does not fit, none of its rows is kept (so what is kept has no gaps). A row this
        node ``held`` already takes no room (asked only of rows that would not fit), so a
        peer sending again what it sent before, as repair and hand-over do, is not
        refused for a mailbox its own rows filled. The rows vouched for are taken first
        (:meth:`has_room_for`), so that a stranger's rows before them in a batch cannot
        shut them out."""
        kept: list[StoredMessage] = []
        full: set[str] = set()
        at_quota: set[str] = set()  # asked once per batch: past it, only held rows go
        taking: dict[str, int] = {}
        for row in sorted(rows, key=lambda row: not row.vouched):  # stable: order kept
            if row.pubkey in full:
                continue
            size = charge_of(row)
            fits = not size or (
                row.pubkey not in at_quota and self.has_room_for(row, taking.get(row.pubkey, 0))
            )
            if not fits:
                at_quota.add(row.pubkey)
                if held(row):
                    kept.append(row)
                else:
                    full.add(row.pubkey)
                continue
            taking[row.pubkey] = taking.get(row.pubkey, 0) + size
            kept.append(row)
        return kept, full

    def stored(self, owner: str, size: int) -> None:
        """``size`` new bytes were committed for ``owner``."""
        known = self._estimates.pop(owner, None)
        if known is not None:
            self._remember(owner, (known[0] + size, known[1]))

    def _remember(self, owner: str, known: tuple[int, float]) -> None:
        self._estimates[owner] = known
        if len(self._estimates) > TRACKED_OWNERS:
            self._estimates.popitem(last=False)
