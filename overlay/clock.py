"""One injectable clock, read by every component.

Protocol cores never read time themselves: their drivers pass ``now_ms`` in. Drivers read
it here, from ``trio.current_time()`` mapped to epoch milliseconds, so that a test or a
benchmark under ``trio.testing.MockClock`` moves every timer, TTL and signature timestamp
in the system together, and days of virtual time run in seconds.
"""

from __future__ import annotations

import time

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

    async def sleep_until_ms(self, epoch_ms: int) -> None:
        """Sleep until the clock reads ``epoch_ms``: one cancellable checkpoint."""
        await trio.sleep_until(self.trio_time_for(epoch_ms))


#: Epoch used by deterministic tests and simulations (2025-11-24T16:00:00Z).
TEST_EPOCH_MS = 1_764_000_000_000
