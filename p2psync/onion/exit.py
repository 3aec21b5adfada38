"""The relay side of onion requests: :class:`RpcExit` is the :class:`overlay.relay.Exit`
an overlay relay is given. It calls ``onion`` from the relay's own host, only on the
servers :class:`~.addresses.ExitServers` names, over at most
:data:`EXIT_MAX_CONNECTIONS` connections (:class:`ExitConnections`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, cast

import trio

from overlay.link import LinkClosed, Transport
from overlay.tasks import open_task_nursery

from ..errors import ConnectionLost
from ..rpc import RpcClient, open_rpc
from ..wire import Fields
from .addresses import ExitServers
from .sealing import ONION_METHOD

#: Connections an exit keeps to servers at once; past it, the one used least recently
#: (and not in use) is closed to make room.
EXIT_MAX_CONNECTIONS = 128


class _Held(NamedTuple):
    client: RpcClient
    scope: trio.CancelScope


class ExitConnections:
    """An exit's connections to servers, one per server and at most ``limit``: a new
    one closes the least recently used one that no call is using; with every one in use,
    the call fails at once (the exit reports a failure and the client tries another
    path) rather than cutting another client's call short."""

    def __init__(self, transport: Transport, nursery: trio.Nursery, limit: int) -> None:
        if limit < 1:
            raise ValueError("an exit needs room for at least one connection")
        self._transport = transport
        self._nursery = nursery
        self._limit = limit
        #: Least recently used first.
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._connecting = 0
        #: Calls under way per address (an address with none may be closed).
        self._calls: dict[str, int] = {}
        #: One connection attempt per address at a time (dropped once nobody holds it).
        self._locks: dict[str, trio.Lock] = {}

    @property
    def held(self) -> list[str]:
        """The addresses connected to now, least recently used first."""
        return list(self._held)

    async def call(self, address: str, method: str, params: Mapping[str, Any]) -> Any:
        client = await self._client(address)
        self._calls[address] = self._calls.get(address, 0) + 1
        try:
            return await client.call(method, params)
        finally:
            self._calls[address] -= 1
            if not self._calls[address]:
                del self._calls[address]

    async def _client(self, address: str) -> RpcClient:
        lock = self._locks.setdefault(address, trio.Lock())
        try:
            async with lock:
                held = self._held.get(address)
                if held is not None and not held.client.closed.is_set():
                    self._held.move_to_end(address)
                    return held.client
                self._held.pop(address, None)
                self._make_room()
                self._connecting += 1
                try:
                    held = cast(_Held, await self._nursery.start(self._hold, address))
                finally:
                    self._connecting -= 1
                self._held[address] = held
                return held.client
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(address, None)

    def _make_room(self) -> None:
        """Close idle connections, least recently used first, until one more fits."""
        while len(self._held) + self._connecting >= self._limit:
            idle = next((a for a in self._held if a not in self._calls), None)
            if idle is None:
                raise ConnectionLost(f"all {self._limit} connections to servers are in use")
            self._held.pop(idle).scope.cancel()

    async def _hold(
        self, address: str, *, task_status: trio.TaskStatus[_Held] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        with trio.CancelScope() as scope:
            try:
                async with open_rpc(self._transport, address) as client:
                    task_status.started(_Held(client, scope))
                    started = True
                    await client.closed.wait()
            except (OSError, LinkClosed):
                if not started:
                    raise
        held = self._held.get(address)
        if held is not None and held.scope is scope:  # it closed on its own
            del self._held[address]


class RpcExit:
    """The :class:`overlay.relay.Exit` of a relay that reaches RPC servers: it routes a
    request only to a server of ``servers`` and calls ``onion`` there."""

    def __init__(self, servers: ExitServers, connections: ExitConnections) -> None:
        self.servers = servers
        self.connections = connections

    def route(self, address: str) -> str | None:
        return self.servers.route(address)

    async def call(self, address: str, body: bytes) -> bytes:
        result = await self.connections.call(address, ONION_METHOD, {"body": body})
        return Fields(result, "onion").only("body").blob("body")


@asynccontextmanager
async def open_rpc_exit(
    transport: Transport, servers: ExitServers, *, max_connections: int = EXIT_MAX_CONNECTIONS
) -> AsyncIterator[RpcExit]:
    """An exit to ``servers`` over ``transport``; its connections close on the way out."""
    async with open_task_nursery() as nursery:
        yield RpcExit(servers, ExitConnections(transport, nursery, max_connections))
