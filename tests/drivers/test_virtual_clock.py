"""The clock replays run under: timers fire in order at their virtual times, no real time
passes, a timer costs one scheduling round where MockClock's autojump takes two, and a
wait with no timer at all (a worker thread) does not move the clock."""

from __future__ import annotations

import time

import trio
import trio.testing

from p2psync.sim.virtual_time import VirtualClock


def test_timers_fire_in_order_at_their_virtual_times_without_real_waiting() -> None:
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await trio.sleep(seconds)
        woken.append((name, trio.current_time()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper, "a day", 86_400.0)
            nursery.start_soon(sleeper, "an hour", 3_600.0)
            nursery.start_soon(sleeper, "a millisecond", 0.001)

    started = time.monotonic()
    trio.run(main, clock=VirtualClock())
    assert time.monotonic() - started < 5  # what real time passed is the scheduler's own
    assert woken == [("a millisecond", 0.001), ("an hour", 3_600.0), ("a day", 86_400.0)]


class _Rounds(trio.abc.Instrument):
    def __init__(self) -> None:
        self.rounds = 0

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1


def test_a_timer_takes_one_scheduling_round_where_mock_clock_takes_two() -> None:
    async def tick(times: int) -> None:
        for _ in range(times):
            await trio.sleep(1)

    def rounds(clock: trio.abc.Clock, times: int) -> int:
        counter = _Rounds()
        trio.run(tick, times, clock=clock, instruments=[counter])
        return counter.rounds

    # 100 more timers, so that the rounds of starting and stopping a run cancel out
    assert rounds(VirtualClock(), 200) - rounds(VirtualClock(), 100) == 100
    mock = trio.testing.MockClock
    assert rounds(mock(autojump_threshold=0), 200) - rounds(mock(autojump_threshold=0), 100) == 200


def test_a_wait_with_no_timer_waits_for_the_thread_and_keeps_the_time() -> None:
    async def main() -> float:
        await trio.sleep(10)
        await trio.to_thread.run_sync(time.sleep, 0.05)
        return trio.current_time()

    assert trio.run(main, clock=VirtualClock()) == 10.0
