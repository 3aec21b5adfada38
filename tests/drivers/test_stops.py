"""A stop outside Trio (:class:`p2psync.stops.NotedStops`) stops the command even where
Python swallows the exception it raised."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest
import trio

from p2psync.cli import unless_terminated
from p2psync.stops import (
    HeldStops,
    NotedStops,
    Terminated,
    raise_if_terminated,
    sigterm_deferred,
)


class StoppedWhileFinalized:
    """Receives ``stop`` inside ``__del__``, where Python prints an exception and goes on,
    as when a stop lands inside C code's check of a Python object."""

    def __init__(self, stop: signal.Signals) -> None:
        self.stop = stop

    def __del__(self) -> None:
        signal.raise_signal(self.stop)


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """What Python reports as raised where it cannot raise (the default prints it)."""
    unraisables: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisables.append(u.exc_value))
    return unraisables


@pytest.mark.parametrize(
    ("stop", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_a_stop_swallowed_where_python_ignores_exceptions_is_raised_at_the_next_check(
    stop: signal.Signals, raised: type[BaseException], reported: list[BaseException | None]
) -> None:
    with NotedStops() as stops:
        stops.check()  # nothing noted yet
        StoppedWhileFinalized(stop)  # dropped at once: its __del__ receives the stop
        with pytest.raises(raised):
            stops.check()
    assert reported == []  # noted, so not printed as an error too


def test_other_exceptions_python_swallows_are_still_reported(
    reported: list[BaseException | None],
) -> None:
    class FailsWhileFinalized:
        def __del__(self) -> None:
            raise ValueError("not a stop")

    with NotedStops():
        FailsWhileFinalized()
    assert [type(exc) for exc in reported] == [ValueError]


def test_a_stop_raises_where_the_main_thread_is_and_stops_as_the_first_one() -> None:
    with NotedStops() as stops:
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(Terminated):  # Ctrl-C after SIGTERM: still exit 143
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(Terminated):
            stops.check()


def test_the_handlers_before_the_block_are_back_after_it() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with NotedStops():
        assert signal.getsignal(signal.SIGTERM) is not before[1]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_stop_within_a_deferred_block_is_raised_as_the_block_ends() -> None:
    with NotedStops() as stops:
        ended = False
        with pytest.raises(Terminated), stops.deferred():
            signal.raise_signal(signal.SIGTERM)
            ended = True
        assert ended


@pytest.fixture
def loaded() -> Iterator[None]:
    """The handlers a command runs with once its command line has loaded (SIGTERM at its
    default before); after the test, the handlers before it, and no SIGTERM on record."""
    before, hook = signal.signal(signal.SIGTERM, signal.SIG_DFL), sys.unraisablehook
    HeldStops.from_now().release()
    yield
    HeldStops.from_now().release()  # a new command line: the record starts empty
    signal.signal(signal.SIGTERM, before)
    sys.unraisablehook = hook


def test_once_the_command_line_has_loaded_sigterm_raises_as_ctrl_c_does(loaded: None) -> None:
    """SIGTERM at its default would end the process at once, with no line and none of
    the command's clean-up, wherever a command runs outside Trio's receivers."""
    raise_if_terminated()  # none yet
    with pytest.raises(Terminated):
        signal.raise_signal(signal.SIGTERM)
    with pytest.raises(Terminated):
        raise_if_terminated()


def test_a_sigterm_swallowed_before_a_block_of_noted_stops_is_raised_in_it(
    loaded: None, reported: list[BaseException | None]
) -> None:
    """``bench storage`` received it while it built its trace, inside a check C code made
    of a Python object, and ran on: the block its workers run in raises it at once, and
    the command line checks for one as the command returns."""
    StoppedWhileFinalized(signal.SIGTERM)
    assert [type(exc) for exc in reported] == [Terminated]
    with pytest.raises(Terminated), NotedStops() as stops:
        stops.check()
    with pytest.raises(Terminated):
        raise_if_terminated()


class BrokenWhileFinalized:
    def __del__(self) -> None:
        raise ValueError("a finalizer's own failure")


def test_a_sigterm_python_swallowed_is_not_printed_once_on_record(
    reported: list[BaseException | None], loaded: None
) -> None:
    """``bench storage`` stopped by SIGTERM before its workers started printed Python's
    "Exception ignored in ..." lines above its ``terminated`` line: the SIGTERM is on
    record and acted on, so it is not reported; a finalizer's own failure still is."""
    StoppedWhileFinalized(signal.SIGTERM)
    BrokenWhileFinalized()
    assert [type(exc) for exc in reported] == [ValueError]
    with pytest.raises(Terminated):
        raise_if_terminated()


def test_a_sigterm_as_trio_starts_waits_for_the_commands_receiver(loaded: None) -> None:
    """Before the command's receiver was open, the handler raised inside Trio's own code
    and broke it (``TrioInternalError``, exit 1): now the SIGTERM waits, and the receiver
    unwinds the command as it does for any other."""
    started: list[str] = []

    async def serve() -> None:
        started.append("serving")
        await trio.sleep_forever()

    stopped = False
    with sigterm_deferred():
        signal.raise_signal(signal.SIGTERM)  # as if it came just as trio.run began
        try:
            trio.run(unless_terminated, serve)
        except* Terminated:
            stopped = True
    assert stopped and started == ["serving"]  # the command ran, and was unwound
    with pytest.raises(Terminated):  # and SIGTERM is let in again after the block
        signal.raise_signal(signal.SIGTERM)
