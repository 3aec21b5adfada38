"""One injectable clock, read by every component.

Protocol cores never read time themselves: their drivers pass ``now_ms`` in. Drivers read
it here, from ``trio.current_time()`` mapped to epoch milliseconds, so that a test or a
benchmark under ``trio.testing.MockClock`` moves every timer, TTL and signature timestamp
in the system together, and days of virtual time run in seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import trio


class Clock:
    """Epoch milliseconds derived from Trio's clock.

    ``epoch_ms_at_start`` pins the epoch time that Trio time 0 maps to (tests use a fixed
    value so signatures and expiries are reproducible). Without it, the first reading
    anchors Trio time to the wall clock, and later readings advance with Trio time only.
    """

    def __init__(self, epoch_ms_at_start: int | None = None) -> None:
        self._offset_ms: float | None = (
            None if epoch_ms_at_start is None else float(epoch_ms_at_start)
        )
        #: The timeouts open now (:meth:`move_on_after`): :meth:`skip_idle` brings their
        #: deadlines forward by the time it skips.
        self._timeouts: set[trio.CancelScope] = set()

    def now_ms(self) -> int:
        """Current time in epoch milliseconds. Must be called inside a Trio run."""
        trio_ms = trio.current_time() * 1000.0
        if self._offset_ms is None:
            self._offset_ms = time.time() * 1000.0 - trio_ms
        return int(self._offset_ms + trio_ms)

    def trio_time_for(self, epoch_ms: int) -> float:
        """The ``trio.current_time()`` value at which ``now_ms()`` reaches ``epoch_ms``."""
        self.now_ms()
        assert self._offset_ms is not None
        return (epoch_ms - self._offset_ms) / 1000.0

    def skip_idle(self, ms: int) -> None:
        """Move epoch time forward by ``ms`` at once, without Trio time passing: how a
        simulation lets a long idle stretch (weeks with nothing to do but maintenance)
        go by without running that maintenance. Whatever runs sees it as one late wake-up,
        as after a machine's suspend."""
        if ms < 0:
            raise ValueError("time only moves forward")
        self.now_ms()
        assert self._offset_ms is not None
        self._offset_ms += ms
        for scope in self._timeouts:
            scope.deadline -= ms / 1000.0

    def now_s(self) -> float:
        """Current time in epoch seconds, for rate limits (:class:`p2psync.rpc.TokenBucket`):
        a bucket fed this refills over a skipped stretch like over a lived one."""
        return self.now_ms() / 1000.0

    @contextmanager
    def move_on_after(self, seconds: float) -> Iterator[trio.CancelScope]:
        """``trio.move_on_after`` in this clock's time: a :meth:`skip_idle` past the
        deadline ends the wait at once, so every "every N s" loop that waits with it
        runs at its next checkpoint after a jump, as it would after a lived stretch."""
        with self._move_on_at(trio.current_time() + seconds) as scope:
            yield scope

    async def sleep(self, seconds: float) -> None:
        """``trio.sleep`` in this clock's time (see :meth:`move_on_after`)."""
        with self.move_on_after(seconds):
            await trio.sleep_forever()

    def move_on_at_ms(self, epoch_ms: int | None) -> AbstractContextManager[trio.CancelScope]:
        """``trio.move_on_at`` for a deadline in this clock's epoch milliseconds (None:
        never), moved by :meth:`skip_idle` like every wait of this clock's."""
        return self._move_on_at(math.inf if epoch_ms is None else self.trio_time_for(epoch_ms))

    async def sleep_until_ms(self, epoch_ms: int) -> None:
        """Sleep until the clock reads ``epoch_ms``: one cancellable checkpoint."""
        with self._move_on_at(self.trio_time_for(epoch_ms)):
            await trio.sleep_forever()

    @contextmanager
    def _move_on_at(self, deadline: float) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope(deadline=deadline)
        self._timeouts.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._timeouts.discard(scope)


#: Epoch used by deterministic tests and simulations (2025-11-24T16:00:00Z).
TEST_EPOCH_MS = 1_764_000_000_000
