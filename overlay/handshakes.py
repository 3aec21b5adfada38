"""Sockets a server has accepted that are still in their opening handshake (TLS, and for
the RPC server the WebSocket one after it): at most a fixed number at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

#: Server sockets that may be in the opening handshake at once (see PendingHandshakes).
MAX_PENDING_HANDSHAKES = 256


class PendingHandshakes:
    """The server sockets still in their opening handshake, at most ``limit``; one more
    drops the one that has waited longest.

    A server counts its links (``RpcServer``'s ``max_connections``, a relay's links),
    which exist only after the handshake, so without this a flood of connections that
    never finish it held a socket each (and, inside TLS, some 50 KiB) for the handshake
    timeout, up to the process's file limit, and a node out of file descriptors cannot
    open its database or reach its peers. Dropping the oldest rather than refusing the
    newest keeps honest clients in: they finish in a round trip, so a flood has to open
    ``limit`` sockets within that round trip to keep one out."""

    def __init__(self, limit: int = MAX_PENDING_HANDSHAKES) -> None:
        if limit < 1:
            raise ValueError("the pending handshake limit must be at least 1")
        self._limit = limit
        self._scopes: dict[int, trio.CancelScope] = {}
        self._next_key = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._scopes)

    @contextmanager
    def slot(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for one handshake, cancelled if it is crowded out."""
        if len(self._scopes) >= self._limit:
            self._scopes.pop(next(iter(self._scopes))).cancel()
            self.dropped += 1
        key, self._next_key = self._next_key, self._next_key + 1
        scope = self._scopes[key] = trio.CancelScope()
        try:
            with scope:
                yield scope
        finally:
            self._scopes.pop(key, None)
