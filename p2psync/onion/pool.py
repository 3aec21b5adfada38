"""The client side of onion requests: :class:`OnionRpcPool` has the call interface of
:class:`~p2psync.rpc.RpcPool` (``call``, ``get``, ``transport``) on an overlay
:class:`~overlay.endpoint.Endpoint`: each request goes on the endpoint's next path in
turn, and one that gets no answer in time, or a failure from its exit, is sealed afresh
and sent again, on another path if there is one
(:meth:`~overlay.endpoint_core.EndpointCore.exit_path`). It has no ``transport``:
pushes (``subscribe``) do not travel on paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nacl.exceptions
import trio

from overlay.constants import EXIT_TIMEOUT_MS
from overlay.endpoint import Endpoint
from overlay.exits import ExitFailed
from overlay.path import Path

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError
from ..rpc import Params, made, result_of
from ..wire import Request, decode_frame
from .sealing import ONION_REQUEST_ID, seal_request

#: How long a client waits for one attempt's answer before trying another path: past the
#: exit's own timeout, so a slow server gets a request once per attempt that failed, not
#: a copy on every path while the first is still being answered.
ONION_ATTEMPT_TIMEOUT_S = EXIT_TIMEOUT_MS / 1000 + 2.0
#: Attempts per request (each on a path not tried yet for it, when there is one; see
#: :meth:`~overlay.endpoint_core.EndpointCore.exit_path`).
ONION_ATTEMPTS = 3

ServerKey = Callable[[str], Awaitable[bytes]]


class OnionRpcPool:
    """:class:`RpcPool`'s call interface over onion requests on ``endpoint``'s paths.

    It has no ``transport``: what cannot travel on a path (pushes) is not offered.
    """

    transport = None

    def __init__(self, endpoint: Endpoint, server_key: ServerKey, clock: Clock) -> None:
        self.endpoint = endpoint
        self._server_key = server_key
        self._clock = clock
        #: Attempts that got no answer (a timeout, or a failure from the exit); all but a
        #: request's last are followed by another.
        self.failed_attempts = 0

    async def get(self, address: str) -> OnionClient:
        return OnionClient(self, address)

    async def call(self, address: str, method: str, params: Params | None) -> Any:
        """Send one request by onion and return its result, or raise :class:`RpcError`
        (the server's refusal) or :class:`ConnectionLost` (no path got an answer).
        Each attempt makes its own parameters (see :data:`p2psync.rpc.Params`)."""
        key = await self._server_key(address)
        tried: list[Path] = []
        for _ in range(ONION_ATTEMPTS):
            path: Path | None = None
            with trio.move_on_after(ONION_ATTEMPT_TIMEOUT_S):
                path = await self.endpoint.exit_path(tried)
                tried.append(path)
                request = Request(ONION_REQUEST_ID, method, dict(made(params or {})))
                body, reply_box = seal_request(key, request, self._clock.now_ms())
                try:
                    plain = reply_box.decrypt(await self.endpoint.exit_request(path, address, body))
                except nacl.exceptions.CryptoError:
                    # Not the server's answer: the exit made it up or changed it.
                    self.endpoint.exit_unanswered(path)
                    self.failed_attempts += 1
                    continue
                except ExitFailed:
                    self.endpoint.exit_answered(path)  # it could not reach the server
                    self.failed_attempts += 1
                    continue
                self.endpoint.exit_answered(path)
                try:
                    reply = decode_frame(plain)
                except DecodeError:
                    self.failed_attempts += 1
                    continue
                return result_of(reply)
            if path is not None:  # no answer in time: the exit's or the path's doing
                self.endpoint.exit_unanswered(path)
            self.failed_attempts += 1
        raise ConnectionLost(f"no onion path reached {address}")


class OnionClient:
    """One server reached by onion requests, with :class:`RpcClient`'s ``call``."""

    def __init__(self, pool: OnionRpcPool, address: str) -> None:
        self._pool = pool
        self.peer = address

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self._pool.call(self.peer, method, params)
