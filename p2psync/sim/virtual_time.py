"""The clock replays run under: virtual time that jumps to the next deadline as soon as
every task waits.

That is what ``trio.testing.MockClock(autojump_threshold=0)`` does too, but MockClock
jumps in a scheduler round of its own: a round finds nothing to run, jumps, and only
the next round wakes the sleepers. A replay is almost all sleepers waking (each message
on an emulated link arrives at a time of its own), so this clock jumps in the round that
would otherwise do nothing, from Trio's question "how long may I sleep?", and answers
"not at all". A timed wake then costs about 19 µs of CPU here rather than 27 µs
(200 000 one-millisecond sleeps, measured side by side).

What it gives up, which replays do not use (they make no thread calls and never wait for
every task to block): ``trio.testing.wait_all_tasks_blocked`` never returns while a timer
is pending (Trio's loop is never idle under this clock), and while one is pending time
jumps even when I/O is ready (a worker thread's result is taken at whatever virtual time
the jumps have reached). Tests keep MockClock, which looks for I/O before each jump and
serves ``wait_all_tasks_blocked`` first."""

from __future__ import annotations

import math

import trio


class VirtualClock(trio.abc.Clock):
    """Starts at 0 and moves only by jumping to the earliest deadline, when Trio has
    nothing to run; with no deadline at all Trio waits for I/O in real time, and the
    clock stays where it is."""

    def __init__(self) -> None:
        self._now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        if deadline == math.inf:
            return math.inf
        self._now = max(self._now, deadline)
        return 0.0
