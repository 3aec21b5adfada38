"""Worker processes a benchmark owns: started for a block, stopped with it however it ends.

The workers ignore Ctrl-C: a terminal sends it to the whole process group, and a worker
interrupted while it imports or simulates printed a traceback of its own beside the
bench's one line. The bench ends them (SIGTERM) as it stops.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.process import BaseProcess

from p2psync.stops import NotedStops


@contextmanager
def owned_workers(processes: Sequence[BaseProcess]) -> Iterator[NotedStops]:
    """Start ``processes`` as workers this process owns for the block. Ctrl-C and SIGTERM
    stop the block (the stops it is given: it calls ``check()`` wherever it waits), and
    however the block ends (done, failed, stopped) every worker still running is
    terminated and joined, so none runs on at full CPU after the bench (nor keeps a
    stopped bench waiting for it)."""
    with NotedStops() as stops:
        try:
            with stops.deferred():
                _start_deaf_to_ctrl_c(processes)
            yield stops
            stops.check()  # one swallowed at the very end stops the command all the same
        finally:
            # A stop can come while the workers are still being started: only those that
            # were (they have a pid) can be terminated and joined.
            started = [process for process in processes if process.pid is not None]
            for process in started:
                if process.is_alive():
                    process.terminate()
            for process in started:
                process.join()


def _start_deaf_to_ctrl_c(processes: Sequence[BaseProcess]) -> None:
    """Start ``processes`` with Ctrl-C ignored, a disposition that a new program keeps
    (and Python with it). Meanwhile this process blocks Ctrl-C rather than ignore it: one
    that comes waits, and is acted on once they are started. (Started before any other
    thread of this process, which would otherwise receive it, ignored, and drop it.)"""
    if not processes:
        return
    from multiprocessing import resource_tracker

    # Spawning a process starts the tracker first, and starting it unblocks Ctrl-C.
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
