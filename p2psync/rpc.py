"""CBOR RPC over any :class:`overlay.link.Transport` (DESIGN.md §4 framing).

Server: :meth:`RpcServer.serve` accepts connections and reads frames. A plain-function
handler (one that never waits) is answered inline in the connection's read loop; a
coroutine handler runs as its own task so requests pipeline, and a plain-function
handler whose work other tasks finish answers with a :class:`Later` (no task per
request): at most ``max_in_flight`` such requests per connection at once (tasks and
Laters together; the one read to find them all taken is handled already), after which
the server stops reading that connection (backpressure instead of an unbounded queue).
The read loop takes every frame one read brought and sends their inline replies
together: on a busy node task switches and write syscalls per request, not the work
itself, are what limit throughput. Replies of tasks and pushes leave through one
:class:`Outbox` per connection, bounded in frames and in bytes; a task keeps its
in-flight slot until its reply is in the outbox, so a client that sends without reading
its replies is soon not read either (its own sends back up into its socket). What all
connections hold for their peers together is bounded too (:class:`ReplyMemory`): past
that, the connection holding the most is dropped, so many such clients cannot add up to
more. A frame that does not decode gets ``bad_request`` and the connection goes on; a
handler that fails gets ``internal`` and the server goes on; a client too slow to take
its pushes is disconnected (it resubscribes and catches up by ``last_hash``, so nothing
is lost).

Client: ``async with open_rpc(transport, address) as client`` gives
``await client.call(method, params)`` (pipelined, matched by id) and
``client.notifications`` for pushes.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from inspect import iscoroutinefunction
from typing import Any, Protocol, runtime_checkable

import outcome
import trio

from overlay.link import Link, LinkClosed, Transport
from overlay.tasks import open_task_nursery

from .clock import Clock
from .errors import ConnectionLost, DecodeError, RpcError
from .wire import (
    INT64_MAX,
    MAX_FRAME_BYTES,
    ErrorReply,
    Fields,
    Frame,
    Notify,
    Reply,
    Request,
    decode_cbor,
    decode_frame,
    encode_frame,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What keeps a server alive under abuse; every figure is per server or connection."""

    max_connections: int = 512
    max_in_flight: int = 64
    requests_per_s: float = 2000.0
    request_burst: int = 4000
    outbox_frames: int = 256
    #: Encoded replies a connection may have waiting for (or in) a write; pushes may use
    #: as much again before the client counts as too slow (see :class:`Outbox`).
    outbox_bytes: int = 1024 * 1024
    #: Replies and pushes all connections together may hold for their peers (queued, in
    #: a write, or computed and waiting for room); see :class:`ReplyMemory`.
    reply_memory_bytes: int = 32 * 1024 * 1024
    max_frame_bytes: int = MAX_FRAME_BYTES


class TokenBucket:
    """Rate limit as a pure object: ``take(now)`` says whether a request may go ahead."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def available(self, now: float) -> float:
        """The tokens there are now."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens (one request, or a number of bytes) may be spent now."""
        if self.available(now) >= cost:
            self._tokens -= cost
            return True
        return False


class KeyedRateLimit:
    """Token buckets per key under one total bucket, as a pure object (time passed in).

    :meth:`allow` admits a request when its key's bucket and the total both have a token.
    Keys cost an attacker nothing to make, so the total is what bounds the work done; the
    per-key buckets keep one key from spending all of it. A key gets state only once a
    request of its is admitted, and a bucket idle long enough to be full again is forgotten
    (a new one would be the same), so the memory held is bounded by what the total admits.
    """

    def __init__(
        self, per_key: int, key_refill_s: float, total: int, total_refill_s: float, now: float
    ) -> None:
        self._per_key = per_key
        self._key_rate = 1 / key_refill_s
        #: How long an untouched bucket takes to be full again.
        self._forget_after = per_key * key_refill_s
        self._total = TokenBucket(1 / total_refill_s, total, now)
        #: Key → (its bucket, when it last took), least recently used first.
        self._keys: OrderedDict[bytes, tuple[TokenBucket, float]] = OrderedDict()

    def allow(self, key: bytes, now: float, cost: int = 1) -> bool:
        """Whether ``key`` may spend ``cost`` requests' worth now (both buckets)."""
        while self._keys:
            oldest, (_, last) = next(iter(self._keys.items()))
            if now - last < self._forget_after:
                break
            del self._keys[oldest]
        known = self._keys.pop(key, None)
        bucket = known[0] if known else TokenBucket(self._key_rate, self._per_key, now)
        # Both have the tokens or neither is charged: a refusal by the total must not
        # spend a key's own share (a batch's cost is up to 64 requests' worth).
        admitted = bucket.available(now) >= cost and self._total.available(now) >= cost
        if admitted:
            bucket.take(now, cost)
            self._total.take(now, cost)
        if known or admitted:
            self._keys[key] = (bucket, now)
        return admitted


@dataclass
class ServerStats:
    connections: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: Disconnected for not taking their pushes, or for holding the most reply memory
    #: when the server's was used up.
    dropped_slow_clients: int = 0

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class ReplyMemory:
    """The bytes all of a server's connections hold for their peers. One outbox stays
    within its own budget, but a reply computed while its outbox is full waits for room
    (up to ``max_in_flight`` of them, each up to a frame), and every connection may be a
    client that does not read: this is the bound over all of them. ``shed`` is called
    whenever what they hold grows past ``limit`` (the server then drops the connection
    holding the most)."""

    def __init__(self, limit: int, shed: Callable[[], None]) -> None:
        self.limit = limit
        self.used = 0
        self._shed = shed

    def grow(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            self._shed()

    def shrink(self, size: int) -> None:
        self.used -= size


class Outbox:
    """One connection's encoded replies and pushes on their way to the socket.

    Bounded in frames and in bytes, and a frame's room is freed only once the write that
    carried it is done, so bytes stuck in a write to a peer that does not read still
    count: such a peer pins at most ``max_bytes`` of replies here (plus one frame, since
    an idle outbox takes any frame however large). A reply waits for room
    (:meth:`put`), which stops the read loop through the in-flight slot its task holds.
    A push cannot wait (one store is pushed to many connections at once), so
    :meth:`offer` lets pushes use up to twice the byte budget and says when even that is
    used up: the client is then too slow and is disconnected. Everything held, replies
    waiting for room included, counts in the server's ``memory`` until :meth:`close`.
    """

    def __init__(self, max_frames: int, max_bytes: int, memory: ReplyMemory | None = None):
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._memory = memory or ReplyMemory(2**63, lambda: None)
        self._waiting: deque[bytes] = deque()
        self._frames = 0  # waiting or in the write under way
        self._bytes = 0
        self._parked_bytes = 0  # replies waiting for room
        self._closed = False
        self._room = trio.lowlevel.ParkingLot()
        self._ready = trio.lowlevel.ParkingLot()

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting for or in a write."""
        return self._bytes

    @property
    def held_bytes(self) -> int:
        """Bytes this connection holds for its peer, replies waiting for room included."""
        return self._bytes + self._parked_bytes

    def _fits(self, size: int, max_bytes: int) -> bool:
        if self._frames == 0:
            return True
        return self._frames < self.max_frames and self._bytes + size <= max_bytes

    def _append(self, data: bytes) -> None:
        self._waiting.append(data)
        self._frames += 1
        self._bytes += len(data)
        self._ready.unpark_all()

    def offer(self, data: bytes) -> bool:
        """Queue a push without waiting; ``False`` (and nothing queued) if it is full.
        A push to a closed outbox goes nowhere."""
        return self._queue_if_room(data, 2 * self.max_bytes)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, data: bytes) -> bool:
        """Queue a reply if there is room now and no reply is waiting for room (those go
        first); ``False`` (and nothing queued) if not. A reply to a closed outbox goes
        nowhere."""
        if self._parked_bytes and not self._closed:
            return False
        return self._queue_if_room(data, self.max_bytes)

    def _queue_if_room(self, data: bytes, max_bytes: int) -> bool:
        if self._closed:
            return True
        if not self._fits(len(data), max_bytes):
            return False
        self._append(data)
        self._memory.grow(len(data))
        return True

    async def put(self, data: bytes) -> None:
        """Queue a reply once there is room for it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._fits(len(data), self.max_bytes):
            self._append(data)
            self._memory.grow(len(data))
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._parked_bytes += len(data)
        self._memory.grow(len(data))
        try:
            while not self._fits(len(data), self.max_bytes):
                await self._room.park()
        except BaseException:
            self._memory.shrink(len(data))
            raise
        finally:
            self._parked_bytes -= len(data)
        self._append(data)

    def close(self) -> None:
        """The connection is over: what it still held no longer counts (replies still
        waiting for room stop counting as their tasks are cancelled)."""
        self._closed = True
        self._memory.shrink(self._bytes)
        self._waiting.clear()
        self._frames = self._bytes = 0

    async def take(self) -> list[bytes]:
        """Wait for frames and hand out every waiting one, for one write; call
        :meth:`sent` with them once it is done."""
        if self._waiting:
            await trio.lowlevel.checkpoint()
        while not self._waiting:
            await self._ready.park()
        batch = list(self._waiting)
        self._waiting.clear()
        return batch

    def sent(self, batch: Sequence[bytes]) -> None:
        size = sum(len(data) for data in batch)
        self._frames -= len(batch)
        self._bytes -= size
        self._memory.shrink(size)
        self._room.unpark_all()


class Connection:
    """What a handler may know of and do with the connection its request came on."""

    def __init__(
        self,
        peer: str,
        outbox: Outbox,
        on_overflow: Callable[[Connection], None] = lambda connection: None,
    ) -> None:
        self.peer = peer
        self._outbox = outbox
        self._on_close: list[Callable[[], None]] = []
        self._on_overflow = on_overflow
        #: The client was found too slow and is being dropped.
        self.overflowed = False

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Queue a push without waiting; a full outbox marks the client too slow."""
        if not self._outbox.offer(encode_frame(Notify(method, params))):
            self.overflow()

    def overflow(self) -> None:
        """Mark the client too slow: the server drops it (once), from whichever task
        found out, without a task per connection waiting for that to happen."""
        if not self.overflowed:
            self.overflowed = True
            self._on_overflow(self)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def _closed(self) -> None:
        for callback in self._on_close:
            callback()
        self._on_close.clear()


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


@dataclass(frozen=True, slots=True)
class _Pending:
    """A request whose handler returned a :class:`Later`."""

    request: Request
    later: Later


#: A coroutine function runs as its own task; a plain function is called inline in the
#: read loop and must not block (it may still raise, like any handler, or return a
#: :class:`Later`).
Handler = Callable[[Fields, Connection], Awaitable[Any]] | Callable[[Fields, Connection], Any]
#: Told (method, peer, params) of every request a server answers (:meth:`RpcServer.observe`).
Observer = Callable[[str, str, Mapping[str, Any]], None]
#: A request's params (not yet checked) -> the tokens it takes from its connection's bucket.
Cost = Callable[[Mapping[str, Any]], int]


@runtime_checkable
class BatchLink(Protocol):
    """A link that can write several messages at once (the WebSocket link can)."""

    async def send_batch(self, messages: Sequence[bytes]) -> None: ...


async def _send_frames(link: Link, frames: Sequence[Frame]) -> None:
    await _send_encoded(link, [encode_frame(frame) for frame in frames])


async def _send_encoded(link: Link, encoded: Sequence[bytes]) -> None:
    if isinstance(link, BatchLink):
        await link.send_batch(encoded)
    else:
        for data in encoded:
            await link.send(data)


def _request_id_of(data: bytes) -> int | None:
    """Best effort: the id of a frame that failed validation, so the error can name it."""
    try:
        value = decode_cbor(data)
    except DecodeError:
        return None
    rid = value.get("id") if isinstance(value, dict) else None
    in_range = isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= INT64_MAX
    return rid if in_range else None


class RpcServer:
    """Dispatches requests to ``methods``; one instance serves any number of listeners."""

    def __init__(
        self,
        methods: Mapping[str, Handler],
        limits: ServerLimits | None = None,
        clock: Clock | None = None,
        *,
        costs: Mapping[str, Cost] | None = None,
    ) -> None:
        """``clock``: the network's, so that request rates are measured in the time its
        other components keep (a :meth:`Clock.skip_idle` refills the buckets).
        ``costs``: what a request of a method that does the work of several takes from
        its connection's rate bucket (one token otherwise)."""
        self.methods = dict(methods)
        self._costs = dict(costs or {})
        self.limits = limits or ServerLimits()
        self.clock = clock or Clock()
        self.stats = ServerStats()
        self._active = 0
        self._connections: set[Connection] = set()
        self.memory = ReplyMemory(self.limits.reply_memory_bytes, self._shed)
        self._inline = {
            name for name, handler in self.methods.items() if not iscoroutinefunction(handler)
        }
        #: Methods not charged to the connection's rate bucket (see :meth:`add_method`).
        self._own_rate_limit: set[str] = set()
        self._observers: list[Observer] = []

    @property
    def open_connections(self) -> int:
        """Connections being served now (a closed client's is gone once its handler ends)."""
        return len(self._connections)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(method, peer, params)`` for every request this server answers
        from now on, an onion request's inner one included (its peer is the exit relay):
        an audit of what a server learns about who calls it."""
        self._observers.append(observer)

    def _observed(self, request: Request, connection: Connection) -> None:
        for observer in self._observers:
            observer(request.method, connection.peer, request.params)

    def add_method(self, name: str, handler: Handler, *, own_rate_limit: bool = False) -> None:
        """Serve one more method: for wrappers that apply to every server (the ``onion``
        method of :mod:`p2psync.onion`). With ``own_rate_limit`` its requests
        are not charged to the connection's bucket: the handler limits them itself (an
        exit's one connection carries the requests of many clients)."""
        self.methods[name] = handler
        if own_rate_limit:
            self._own_rate_limit.add(name)
        if iscoroutinefunction(handler):
            self._inline.discard(name)
        else:
            self._inline.add(name)

    def cost_of(self, request: Request) -> int:
        """The rate tokens ``request`` takes (see ``costs``): one, unless its method does
        the work of several. A cost that cannot be read is one (the handler then refuses
        what it cannot read)."""
        cost = self._costs.get(request.method)
        if cost is None:
            return 1
        try:
            return max(1, cost(request.params))
        except Exception:
            logger.exception("the cost of a %s request could not be read", request.method)
            return 1

    async def answer(self, request: Request, peer: str) -> bytes:
        """The encoded reply to ``request`` exactly as this server's dispatch gives it, for
        a request that arrived inside another (an onion request) from ``peer``: same
        handlers, same refusals, same error replies. It has no connection of its own to
        push to: what its handler pushes goes nowhere, and whatever it registered to run
        when its connection closes runs once it is answered."""
        connection = Connection(peer, Outbox(1, 0))
        connection._outbox.close()
        try:
            if request.method in self._inline:
                answered = self._answer_inline(request, connection)
                reply = (
                    await self._settled(answered) if isinstance(answered, _Pending) else answered
                )
            else:
                reply = await self._run_handler(request, connection)
        finally:
            connection._closed()
        return self._encode_reply(request, reply)

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await transport.serve(self.handle_link, address, task_status=task_status)

    async def handle_link(self, link: Link) -> None:
        limits = self.limits
        if self._active >= limits.max_connections:
            self.stats.count_error("unavailable")
            await link.send(
                encode_frame(ErrorReply(None, "unavailable", "too many connections", {}))
            )
            return
        self._active += 1
        self.stats.connections += 1
        outbox = Outbox(limits.outbox_frames, limits.outbox_bytes, self.memory)
        scope = trio.CancelScope()
        connection = Connection(link.peer, outbox, partial(self._drop_slow, scope))
        self._connections.add(connection)
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, link, outbox, scope)
                    await self._read_loop(link, connection, nursery)
                    scope.cancel()
        finally:
            self._active -= 1
            self._connections.discard(connection)
            outbox.close()
            connection._closed()

    def _shed(self) -> None:
        """Over the server's reply memory: drop the connection holding the most (a client
        that reads what it is sent holds little for long). A connection already being
        dropped still counts until its handler has unwound, so what it holds is set
        aside first: only if the others alone are over the limit does another one go,
        else every grow in that moment would drop one more (down to the last client)."""
        live = [c for c in self._connections if not c.overflowed]
        leaving = sum(c._outbox.held_bytes for c in self._connections if c.overflowed)
        if self.memory.used - leaving <= self.memory.limit:
            return
        victim = max(live, key=lambda c: c._outbox.held_bytes, default=None)
        if victim is not None:
            victim.overflow()

    def _drop_slow(self, scope: trio.CancelScope, connection: Connection) -> None:
        if scope.cancel_called:
            return  # the connection is closing anyway: no drop to count
        self.stats.dropped_slow_clients += 1
        logger.info("disconnecting %s: it does not take what it is sent", connection.peer)
        scope.cancel()

    async def _write_loop(self, link: Link, outbox: Outbox, scope: trio.CancelScope) -> None:
        try:
            while True:
                batch = await outbox.take()
                await _send_encoded(link, batch)
                outbox.sent(batch)
        except LinkClosed:
            scope.cancel()  # the client left with replies pending: nothing more to do

    async def _read_loop(self, link: Link, connection: Connection, nursery: trio.Nursery) -> None:
        """Each turn waits for one frame, takes whatever else has already arrived (up to
        ``max_in_flight`` frames, so one client cannot hog the loop), dispatches them all
        and sends the inline replies in one write."""
        limits = self.limits
        in_flight = trio.Semaphore(limits.max_in_flight)
        bucket = TokenBucket(limits.requests_per_s, limits.request_burst, self.clock.now_s())
        while True:
            replies: list[Frame] = []
            closed = False
            try:
                data: bytes | None = await link.receive()
            except LinkClosed:
                return
            except DecodeError as exc:
                data = None
                replies.append(self._refuse(None, exc))
            for turn in range(1, limits.max_in_flight + 1):
                if data is not None:
                    dispatched = self._dispatch(data, bucket, connection)
                    if isinstance(dispatched, Request | _Pending):
                        try:  # a free slot is taken without a trip through the scheduler
                            in_flight.acquire_nowait()
                        except trio.WouldBlock:
                            await in_flight.acquire()
                    if isinstance(dispatched, Request):
                        nursery.start_soon(self._answer, dispatched, connection, in_flight)
                    elif isinstance(dispatched, _Pending):
                        dispatched.later.listen(
                            partial(self._reply_later, dispatched, connection, in_flight, nursery)
                        )
                    else:
                        replies.append(dispatched)
                if turn == limits.max_in_flight:
                    break  # what else arrived is the next turn's (taking it here lost it)
                try:
                    data = link.receive_nowait()
                except trio.WouldBlock:
                    break
                except LinkClosed:
                    closed = True
                    break
                except DecodeError as exc:
                    data = None
                    replies.append(self._refuse(None, exc))
            if replies:
                try:
                    await _send_frames(link, replies)
                except LinkClosed:
                    return
            if closed:
                return

    def _refuse(self, rid: int | None, exc: DecodeError | str) -> ErrorReply:
        self.stats.count_error("bad_request")
        return ErrorReply(rid, "bad_request", str(exc), {})

    def _dispatch(
        self, data: bytes, bucket: TokenBucket, connection: Connection
    ) -> Frame | _Pending:
        """One frame: its reply when it is answered here (inline handlers, refusals), the
        request itself when it needs a task of its own, or the :class:`Later` an inline
        handler answered with."""
        try:
            frame = decode_frame(data, max_bytes=self.limits.max_frame_bytes)
        except DecodeError as exc:
            return self._refuse(_request_id_of(data), exc)
        if not isinstance(frame, Request):
            return self._refuse(None, "expected a request")
        if frame.method not in self._own_rate_limit and not bucket.take(
            self.clock.now_s(), self.cost_of(frame)
        ):
            self.stats.count_error("rate_limited")
            return ErrorReply(frame.id, "rate_limited", "slow down", {})
        self.stats.requests += 1
        if frame.method in self._inline:
            return self._answer_inline(frame, connection)
        return frame

    def _answer_inline(self, request: Request, connection: Connection) -> Frame | _Pending:
        try:
            self._observed(request, connection)
            result = self._handler(request)(Fields(request.params, "params"), connection)
        except Exception as exc:
            return self._failure(request, exc)
        if isinstance(result, Later):
            return _Pending(request, result)
        return Reply(request.id, result)

    def _handler(self, request: Request) -> Handler:
        """The method's handler; one this server does not serve (any more: ``methods`` is
        the server's to change) is refused ``bad_request``, as a server of another
        version would refuse it."""
        handler = self.methods.get(request.method)
        if handler is None:
            raise RpcError("bad_request", f"unknown method {request.method!r}")
        return handler

    def _settle(self, pending: _Pending, result: outcome.Outcome[Any]) -> Frame:
        try:
            return Reply(pending.request.id, result.unwrap())
        except Exception as exc:
            return self._failure(pending.request, exc)

    async def _settled(self, pending: _Pending) -> Frame:
        return self._settle(pending, await outcome.acapture(pending.later.wait))

    def _reply_later(
        self,
        pending: _Pending,
        connection: Connection,
        in_flight: trio.Semaphore,
        nursery: trio.Nursery,
        result: outcome.Outcome[Any],
    ) -> None:
        """Queue a :class:`Later`'s reply and free its slot; if the outbox has no room,
        a task waits for it, holding the slot (so a client that does not read its
        replies is soon not read either, as with a task's reply)."""
        outbox = connection._outbox
        if outbox.closed:  # the client left: nobody to answer
            in_flight.release()
            return
        reply = self._encode_reply(pending.request, self._settle(pending, result))
        if outbox.put_nowait(reply):
            in_flight.release()
            return
        try:
            nursery.start_soon(self._put_reply, connection, reply, in_flight)
        except RuntimeError:  # the connection's nursery has just closed: it is gone
            in_flight.release()

    async def _put_reply(
        self, connection: Connection, reply: bytes, in_flight: trio.Semaphore
    ) -> None:
        try:
            await connection._outbox.put(reply)
        finally:
            in_flight.release()

    def _failure(self, request: Request, exc: Exception) -> ErrorReply:
        """The stable error reply for what a handler raised."""
        error = refusal_of(request.method, exc)
        self.stats.count_error(error.code)
        return ErrorReply(request.id, error.code, error.message, error.data)

    async def _answer(
        self, request: Request, connection: Connection, in_flight: trio.Semaphore
    ) -> None:
        """Run a request's handler and queue its reply. The request keeps its in-flight
        slot until the reply is in the outbox: releasing it earlier let a client that
        never reads pile up one task (and one reply) per request it sent."""
        try:
            reply = self._encode_reply(request, await self._run_handler(request, connection))
            await connection._outbox.put(reply)
        finally:
            in_flight.release()

    async def _run_handler(self, request: Request, connection: Connection) -> Frame:
        try:
            self._observed(request, connection)
            result = await self._handler(request)(Fields(request.params, "params"), connection)
            if isinstance(result, Later):  # a wrapper's: wrapped inline handlers may give one
                result = await result.wait()
            return Reply(request.id, result)
        except Exception as exc:
            return self._failure(request, exc)

    def _encode_reply(self, request: Request, response: Frame) -> bytes:
        """The reply's bytes; a result that cannot be encoded is the handler's failure."""
        try:
            return encode_frame(response)
        except Exception as exc:
            return encode_frame(self._failure(request, exc))


def refusal_of(method: str, exc: Exception) -> RpcError:
    """The stable refusal a client is told for what ``method``'s handler raised: a
    refusal as it is, garbage ``bad_request``, anything else ``internal`` (and logged,
    since it is this server's fault). A handler answering several requests in one
    (``store_batch``) answers each of them so."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, DecodeError):
        return RpcError("bad_request", str(exc))
    logger.error("handler for %s failed", method, exc_info=exc)
    return RpcError("internal", "internal error")


# --- client --------------------------------------------------------------------------------


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
