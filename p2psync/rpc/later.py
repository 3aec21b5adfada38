"""A reply that comes later (:class:`Later`): how a handler whose work other tasks finish
answers without a task of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import outcome
import trio

logger = logging.getLogger(__name__)


class Later:
    """A reply that comes later. A plain-function handler whose work other tasks finish
    (a store waits for its group commit and its quorum) returns a ``Later`` at once, and
    whoever finishes the work calls :meth:`resolve` or :meth:`fail` (the first call
    counts). The request then costs no task of its own, which under load is a good part
    of what a store costs, and it still holds its in-flight slot until its reply is in
    the outbox (or its connection is gone), as a task's request does; a reply that finds
    no room waits for it in a task. The work goes on after its client leaves (a store
    stays committed and replicating)."""

    __slots__ = ("_listener", "_result")

    def __init__(self) -> None:
        self._result: outcome.Outcome[Any] | None = None
        self._listener: Callable[[outcome.Outcome[Any]], None] | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def resolve(self, result: Any) -> None:
        self._finish(outcome.Value(result))

    def fail(self, exc: Exception) -> None:
        """Answer with what ``exc`` maps to (an :class:`RpcError` its code; anything
        else ``internal``), as if the handler had raised it."""
        self._finish(outcome.Error(exc))

    def _finish(self, result: outcome.Outcome[Any]) -> None:
        if self._result is not None:
            return
        self._result = result
        listener, self._listener = self._listener, None  # what it holds (the request) goes
        if listener is not None:
            try:
                listener(result)
            except Exception:  # the server's own: whoever settles goes on with the rest
                logger.exception("answering a settled request failed")

    def listen(self, listener: Callable[[outcome.Outcome[Any]], None]) -> None:
        """Call ``listener`` with the outcome once there is one (now, if there is). One
        listener: the server that answers the request (or :meth:`wait`)."""
        assert self._listener is None, "a Later has one listener"
        if self._result is not None:
            listener(self._result)
        else:
            self._listener = listener

    async def wait(self) -> Any:
        """The result, or raise what :meth:`fail` was given."""
        settled = trio.Event()
        self.listen(lambda _: settled.set())
        await settled.wait()
        assert self._result is not None
        return self._result.unwrap()
