"""How Ctrl-C and SIGTERM stop a command: held while the command line loads, then, for a
command whose main thread waits outside Trio, raised and noted (standard library
``signal`` alone, so that holding starts before anything slow is imported)."""

from __future__ import annotations

import signal
import sys

TYPE_CHECKING = False  # see p2psync/__init__.py: no ``typing`` import before holding
if TYPE_CHECKING:
    from typing import Any


class Terminated(BaseException):
    """SIGTERM, raised where a command waits outside Trio (see :class:`NotedStops`), so
    that it unwinds like Ctrl-C: what it started is ended on the way out."""


#: The SIGTERMs this process received since its command line loaded (:meth:`HeldStops.release`
#: empties it): one raised where Python swallows exceptions, inside a finalizer or a check
#: C code makes of a Python object, still stops the command (:func:`raise_if_terminated`).
_terminations: list[int] = []


def _raise_terminated(signum: int, frame: object) -> None:
    _terminations.append(signum)
    raise Terminated


class _UnlessTerminated:
    """``sys.unraisablehook`` once SIGTERM raises: a :class:`Terminated` Python swallowed
    is on record and acted on (:func:`raise_if_terminated`), so it is not printed as
    "Exception ignored in ..." above the command's last line; anything else goes to
    ``hook``, the hook before."""

    __slots__ = ("hook",)

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def __call__(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Terminated):
            self.hook(unraisable)


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` if a SIGTERM came since the command line loaded."""
    if _terminations:
        raise Terminated


class HeldStops:
    """Stops noted from :meth:`from_now` on, and the handlers they replaced. Once the
    command line has loaded, :meth:`release` puts the handlers back (the command then
    chooses how a stop stops it: Trio's receivers, or :class:`NotedStops`) and the
    command acts on :attr:`signals`."""

    __slots__ = ("_handlers", "signals")

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._handlers: dict[int, Any] = {}

    @classmethod
    def from_now(cls) -> HeldStops:
        held = cls()
        for stop in (signal.SIGINT, signal.SIGTERM):
            held._handlers[stop] = signal.signal(stop, held._note)
        return held

    def _note(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def release(self) -> None:
        """Put the handlers back, except that Ctrl-C is never left ignored: a shell
        without job control starts a background command with SIGINT ignored, and every
        command here promises to stop on it (``kill -INT`` included), as the device
        commands, which receive it through Trio, do anyway. And SIGTERM at its default
        raises :class:`Terminated` from then on, as Ctrl-C raises KeyboardInterrupt: a
        command stops on it at any moment with one line and its clean-up (the default
        ended the process at once, in the parts of a command outside Trio's receivers),
        and one Python swallowed is acted on without being printed."""
        _terminations.clear()
        for stop, handler in self._handlers.items():
            if stop == signal.SIGINT and handler == signal.SIG_IGN:
                handler = signal.default_int_handler
            if stop == signal.SIGTERM and handler == signal.SIG_DFL:
                handler = _raise_terminated
                if not isinstance(sys.unraisablehook, _UnlessTerminated):
                    sys.unraisablehook = _UnlessTerminated(sys.unraisablehook)
            signal.signal(stop, handler)


class NotedStops:
    """Ctrl-C and SIGTERM for a command whose main thread waits outside Trio, within a
    ``with`` block: each raises where the main thread is (KeyboardInterrupt,
    :class:`Terminated`) and is noted too, and :meth:`check` raises a noted stop again.

    Raised inside a finalizer, or inside a check that C code makes of a Python object (an
    ``isinstance`` against an ABC while the model ran), the exception is printed as
    "Exception ignored in ..." and the command goes on; ``bench storage --scale`` then
    waited for its validation run, minutes, with the Ctrl-C spent. So the command calls
    :meth:`check` wherever it waits or reports progress; a stop swallowed so is not
    printed either, as it is noted."""

    __slots__ = ("_deferring", "_handlers", "_unraisable_hook", "noted")

    def __init__(self) -> None:
        self.noted: int | None = None
        self._handlers: dict[int, Any] = {}
        self._unraisable_hook: Any = None
        self._deferring = False

    def __enter__(self) -> NotedStops:
        if _terminations:  # one swallowed before the block is acted on in it
            self.noted = signal.SIGTERM
        for stop in (signal.SIGINT, signal.SIGTERM):
            self._handlers[stop] = signal.signal(stop, self._raise)
        self._unraisable_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.unraisablehook = self._unraisable_hook
        for stop, handler in self._handlers.items():
            signal.signal(stop, handler)

    def _unraisable(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt | Terminated):
            self._unraisable_hook(unraisable)

    def _raise(self, signum: int, frame: object) -> None:
        if self.noted is None:
            self.noted = signum
        if not self._deferring:
            self.check()

    def deferred(self) -> _Deferred:
        """A block within which a stop is only noted, and raised as it ends: for work a
        stop must not cut in two (starting a process: stopped between its start and its
        first instructions, it was left without a pid to end it by and printed a
        traceback of its own)."""
        return _Deferred(self)

    def check(self) -> None:
        """Raise the stop noted, if any (the first: a second Ctrl-C stops as the first)."""
        if self.noted == signal.SIGINT:
            raise KeyboardInterrupt
        if self.noted == signal.SIGTERM:
            raise Terminated


class _Deferred:
    """:meth:`NotedStops.deferred` (not ``contextlib``: this module loads before the
    console script holds stops, with ``signal`` and ``sys`` alone)."""

    __slots__ = ("_stops",)

    def __init__(self, stops: NotedStops) -> None:
        self._stops = stops

    def __enter__(self) -> None:
        self._stops._deferring = True

    def __exit__(self, kind: object, *exc_info: object) -> None:
        self._stops._deferring = False
        if kind is None:
            self._stops.check()


def sigterm_deferred() -> _SigtermMask:
    """A ``with`` block within which SIGTERM waits (blocked in this thread), to be
    received where :func:`sigterm_admitted` lets it in, or as the block ends. Around
    ``trio.run``: raised by the handler inside Trio's own code, before the command's
    receiver was open, it broke Trio (``TrioInternalError``, exit 1)."""
    return _SigtermMask(signal.SIG_BLOCK)


def sigterm_admitted() -> _SigtermMask:
    """A ``with`` block within which SIGTERM comes in (inside a Trio signal receiver's
    block), deferred again after it if it was before."""
    return _SigtermMask(signal.SIG_UNBLOCK)


class _SigtermMask:
    """SIGTERM blocked or let in (``how``) for a ``with`` block, then as it was."""

    __slots__ = ("_how", "_was_blocked")

    def __init__(self, how: int) -> None:
        self._how = how
        self._was_blocked = False

    def __enter__(self) -> None:
        self._was_blocked = signal.SIGTERM in signal.pthread_sigmask(self._how, {signal.SIGTERM})

    def __exit__(self, *exc_info: object) -> None:
        as_it_was = signal.SIG_BLOCK if self._was_blocked else signal.SIG_UNBLOCK
        signal.pthread_sigmask(as_it_was, {signal.SIGTERM})
