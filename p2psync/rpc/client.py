"""The RPC client side: one connection's pipelined calls (:class:`RpcClient`), a pool of
long-lived connections (:class:`RpcPool`), and the protocols the typed clients need of
either."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from overlay.link import Link, LinkClosed, Transport
from overlay.tasks import open_task_nursery

from ..errors import ConnectionLost, DecodeError, RpcError
from ..wire import ErrorReply, Frame, Notify, Reply, Request, decode_frame, encode_frame

logger = logging.getLogger(__name__)


def result_of(frame: Frame) -> Any:
    """What a call returns for its reply ``frame``: the result, or :class:`RpcError`."""
    if isinstance(frame, ErrorReply):
        raise RpcError.received(frame.code, frame.message, frame.data)
    if not isinstance(frame, Reply):
        raise DecodeError("expected a reply")
    return frame.result


class RpcCaller(Protocol):
    """What the typed clients (``FileServerClient``, ``OpenGroupClient``) need of a
    connection: an :class:`RpcClient`, or a server reached by onion requests
    (:class:`p2psync.onion.pool.OnionClient`)."""

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any: ...


#: A request's parameters, or what makes them for each attempt: a request signed with the
#: time must be signed anew when it goes again, since a node takes a signature only once
#: and the first attempt may have reached it even though its answer was lost.
Params = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def made(params: Params) -> Mapping[str, Any]:
    """One attempt's parameters."""
    return params() if callable(params) else params


class RpcRouter(Protocol):
    """What the swarm client and a device need of a pool: an :class:`RpcPool` (direct
    connections) or an :class:`p2psync.onion.pool.OnionRpcPool` (onion requests).
    ``transport`` is for what needs a connection of its own (subscriptions); ``None`` on
    onion requests, where a connection of the device's own would show the server its
    address. ``call`` makes its parameters once per attempt it sends."""

    @property
    def transport(self) -> Transport | None: ...

    async def get(self, address: str) -> RpcCaller: ...

    async def call(self, address: str, method: str, params: Params) -> Any: ...


class RpcClient:
    """One connection's calls. Calls pipeline; each waits for its own reply."""

    def __init__(self, link: Link, max_notifications: int) -> None:
        self._link = link
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[Frame]] = {}
        self._notify_send, self.notifications = trio.open_memory_channel[Notify](max_notifications)
        self.dropped_notifications = 0
        self.closed = trio.Event()
        self.peer = link.peer

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result, or raise :class:`RpcError` /
        :class:`ConnectionLost`. Wrap in a cancel scope for a deadline."""
        if self.closed.is_set():
            raise ConnectionLost(f"connection to {self.peer} is closed")
        rid = next(self._ids)
        send, receive = trio.open_memory_channel[Frame](1)
        self._pending[rid] = send
        try:
            await self._link.send(encode_frame(Request(rid, method, dict(params or {}))))
            try:
                frame = await receive.receive()
            except trio.EndOfChannel:
                raise ConnectionLost(f"connection to {self.peer} closed") from None
        except LinkClosed:
            raise ConnectionLost(f"connection to {self.peer} closed") from None
        finally:
            self._pending.pop(rid, None)
        return result_of(frame)

    async def _read_loop(self) -> None:
        try:
            async for data in self._link:
                frame = decode_frame(data)
                if isinstance(frame, Notify):
                    try:
                        self._notify_send.send_nowait(frame)
                    except trio.WouldBlock:
                        self.dropped_notifications += 1
                elif isinstance(frame, Reply | ErrorReply) and frame.id in self._pending:
                    self._pending[frame.id].send_nowait(frame)
                elif isinstance(frame, ErrorReply):
                    logger.warning("%s: %s: %s", self.peer, frame.code, frame.message)
        except DecodeError as exc:
            logger.warning("closing connection to %s: %s", self.peer, exc)
        finally:
            self.closed.set()
            self._notify_send.close()
            for send in self._pending.values():
                send.close()


@asynccontextmanager
async def open_rpc(
    transport: Transport, address: str, *, max_notifications: int = 1024
) -> AsyncIterator[RpcClient]:
    """Connect to an RPC server. ``OSError`` if it cannot be reached."""
    async with transport.connect(address) as link, open_task_nursery() as nursery:
        client = RpcClient(link, max_notifications)
        nursery.start_soon(client._read_loop)
        yield client


class RpcPool:
    """Long-lived connections by address, each held open by a task in the pool's nursery.

    ``get`` returns a live client, connecting (once, even under concurrent callers) when
    there is none; a connection that closed is replaced on the next ``get``. Everything
    closes with the ``async with open_rpc_pool(...)`` that owns the pool.
    """

    def __init__(self, transport: Transport, nursery: trio.Nursery) -> None:
        self.transport = transport
        self._nursery = nursery
        self._clients: dict[str, RpcClient] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def get(self, address: str) -> RpcClient:
        lock = self._locks.setdefault(address, trio.Lock())
        async with lock:
            client = self._clients.get(address)
            if client is None or client.closed.is_set():
                client = await self._nursery.start(self._hold, address)
            return client

    async def call(self, address: str, method: str, params: Params) -> Any:
        return await (await self.get(address)).call(method, made(params))

    async def _hold(
        self, address: str, *, task_status: trio.TaskStatus[RpcClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        try:
            async with open_rpc(self.transport, address) as client:
                self._clients[address] = client
                task_status.started(client)
                started = True
                await client.closed.wait()
        except (OSError, LinkClosed):
            if not started:
                raise


@asynccontextmanager
async def open_rpc_pool(transport: Transport) -> AsyncIterator[RpcPool]:
    async with open_task_nursery() as nursery:
        yield RpcPool(transport, nursery)
