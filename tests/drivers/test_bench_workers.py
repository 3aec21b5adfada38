"""The worker processes a benchmark owns (:func:`benchmarks.workers.owned_workers`)."""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import Connection

import pytest

from benchmarks.workers import owned_workers


def _say_how_ctrl_c_is_handled(said: Connection) -> None:
    said.send(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_worker_ignores_ctrl_c_and_the_bench_handles_it_again_after_the_start() -> None:
    """A terminal sends Ctrl-C to every process of the group: the bench's workers ignore
    it (each printed a traceback of its own), and the bench stops on it as before."""
    context = multiprocessing.get_context("spawn")
    hearing, said = context.Pipe(duplex=False)
    worker = context.Process(target=_say_how_ctrl_c_is_handled, args=(said,))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), owned_workers([worker]):
        assert hearing.poll(60)
        assert hearing.recv() is True
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert not worker.is_alive()


class StoppedWhileStarting:
    """A process whose start meets a Ctrl-C, and that never starts."""

    pid = None

    def start(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_while_the_workers_start_is_acted_on_once_they_are() -> None:
    """Ctrl-C is blocked, not ignored, while the workers start: it stops the bench."""
    entered = False
    with pytest.raises(KeyboardInterrupt), owned_workers([StoppedWhileStarting()]):  # type: ignore[list-item]
        entered = True
    assert not entered
