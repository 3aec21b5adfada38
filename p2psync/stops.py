"""Holding Ctrl-C and SIGTERM while the command line loads (standard library ``signal``
alone, so that holding starts before anything slow is imported)."""

from __future__ import annotations

import signal

TYPE_CHECKING = False  # see p2psync/__init__.py: no ``typing`` import before holding
if TYPE_CHECKING:
    from typing import Any


class HeldStops:
    """Stops noted from :meth:`from_now` on, and the handlers they replaced. Once the
    command line has loaded, :meth:`release` puts the handlers back (the command then
    chooses how a stop stops it: Trio's receivers, or ``cli.stop_on_sigterm``) and the
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
        commands, which receive it through Trio, do anyway."""
        for stop, handler in self._handlers.items():
            if stop == signal.SIGINT and handler == signal.SIG_IGN:
                handler = signal.default_int_handler
            signal.signal(stop, handler)
