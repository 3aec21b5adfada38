"""The ``p2psync`` console script and ``python -m p2psync``.

:func:`main` holds Ctrl-C and SIGTERM before anything else loads: the command line's own
modules take tens of milliseconds to import, and a KeyboardInterrupt raised inside an
import comes out as a traceback (or as another error, a ``ModuleNotFoundError`` for the
module it interrupted). A held stop is acted on once the command line has loaded, with
one line and exit 130 or 143, as while a command runs.

Holding starts when ``main`` runs, not when this module is imported: a benchmark's
worker process (``multiprocessing``'s spawn) re-runs the console script as
``__mp_main__`` without calling ``main``, and a hold taken there was never released, so
the worker only noted the SIGTERM that was to end it and ran on. Only the entry points
import this module, so a library user's signal handlers are never touched.
"""

from __future__ import annotations

from .stops import HeldStops


def main() -> int:
    """Run the command in ``sys.argv``; its exit status."""
    held = HeldStops.from_now()
    from .cli import main as run_command

    return run_command(held=held)
