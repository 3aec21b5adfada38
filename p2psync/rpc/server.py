"""The RPC server: reads a connection's frames, dispatches them to handlers and writes
the replies, under the limits of :mod:`.limits` (see the package's docstring for how
requests pipeline and where it pushes back)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from inspect import iscoroutinefunction
from typing import Any, Protocol, runtime_checkable

import outcome
import trio

from overlay.exits import peer_host
from overlay.link import Link, LinkClosed, Transport

from ..clock import Clock
from ..errors import DecodeError, RpcError
from ..wire import (
    INT64_MAX,
    ErrorReply,
    Fields,
    Frame,
    Reply,
    Request,
    decode_cbor,
    decode_frame,
    encode_frame,
)
from .later import Later
from .limits import ReplyMemory, ServerLimits, ServerStats, TokenBucket
from .outbox import Connection, Outbox

logger = logging.getLogger(__name__)


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
        #: Connections being served, per host.
        self._per_host: Counter[str] = Counter()
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

    async def answer(self, request: Request, peer: str, *, max_bytes: int) -> bytes:
        """The encoded reply to ``request`` exactly as this server's dispatch gives it, for
        a request that arrived inside another (an onion request) from ``peer``: same
        handlers, same refusals, same error replies. It has no connection of its own to
        push to: what its handler pushes goes nowhere, and whatever it registered to run
        when its connection closes runs once it is answered. A reply larger than
        ``max_bytes`` (what the outer reply has room for, once wrapped) is refused as one
        larger than a frame is."""
        connection = Connection(peer, Outbox(1, 0))
        connection.outbox.close()
        try:
            if request.method in self._inline:
                answered = self._answer_inline(request, connection, max_bytes)
                if not isinstance(answered, _Pending):
                    return answered
                reply = await self._settled(answered)
            else:
                reply = await self._run_handler(request, connection)
        finally:
            connection.ended()
        return self._encode_reply(request, reply, max_bytes)

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await transport.serve(self.handle_link, address, task_status=task_status)

    async def handle_link(self, link: Link) -> None:
        """Serve one connection until it closes; refused ``unavailable`` at once when the
        server, or the connection's host, has as many as it may (a host is its address,
        a loopback peer each its own: on one machine every process is 127.0.0.1, and
        those are the operator's own)."""
        limits = self.limits
        host = peer_host(link.peer, loopback_apart=True)
        if self._active >= limits.max_connections:
            await self._turn_away(link, "too many connections")
            return
        if self._per_host[host] >= limits.max_connections_per_host:
            await self._turn_away(link, "too many connections from your host")
            return
        self._active += 1
        self._per_host[host] += 1
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
            self._per_host[host] -= 1
            if not self._per_host[host]:
                del self._per_host[host]
            self._connections.discard(connection)
            outbox.close()
            connection.ended()

    async def _turn_away(self, link: Link, why: str) -> None:
        self.stats.count_error("unavailable")
        await link.send(encode_frame(ErrorReply(None, "unavailable", why, {})))

    def _shed(self) -> None:
        """Over the server's reply memory: drop the connection holding the most (a client
        that reads what it is sent holds little for long). A connection already being
        dropped still counts until its handler has unwound, so what it holds is set
        aside first: only if the others alone are over the limit does another one go,
        else every grow in that moment would drop one more (down to the last client)."""
        live = [c for c in self._connections if not c.overflowed]
        leaving = sum(c.outbox.held_bytes for c in self._connections if c.overflowed)
        if self.memory.used - leaving <= self.memory.limit:
            return
        victim = max(live, key=lambda c: c.outbox.held_bytes, default=None)
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
            replies: list[bytes] = []
            closed = False
            try:
                data: bytes | None = await link.receive()
            except LinkClosed:
                return
            except DecodeError as exc:
                data = None
                replies.append(encode_frame(self._refuse(None, exc)))
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
                    replies.append(encode_frame(self._refuse(None, exc)))
            if replies:
                try:
                    await _send_encoded(link, replies)
                except LinkClosed:
                    return
            if closed:
                return

    def _refuse(self, rid: int | None, exc: DecodeError | str) -> ErrorReply:
        self.stats.count_error("bad_request")
        return ErrorReply(rid, "bad_request", str(exc), {})

    def _dispatch(
        self, data: bytes, bucket: TokenBucket, connection: Connection
    ) -> Request | _Pending | bytes:
        """One frame: its encoded reply when it is answered here (inline handlers,
        refusals), the request itself when it needs a task of its own, or the
        :class:`Later` an inline handler answered with."""
        try:
            frame = decode_frame(data, max_bytes=self.limits.max_frame_bytes)
        except DecodeError as exc:
            return encode_frame(self._refuse(_request_id_of(data), exc))
        if not isinstance(frame, Request):
            return encode_frame(self._refuse(None, "expected a request"))
        if frame.method not in self._own_rate_limit and not bucket.take(
            self.clock.now_s(), self.cost_of(frame)
        ):
            self.stats.count_error("rate_limited")
            return encode_frame(ErrorReply(frame.id, "rate_limited", "slow down", {}))
        self.stats.requests += 1
        if frame.method in self._inline:
            return self._answer_inline(frame, connection, self.limits.max_frame_bytes)
        return frame

    def _answer_inline(
        self, request: Request, connection: Connection, max_bytes: int
    ) -> bytes | _Pending:
        """The encoded reply of an inline handler (checked as every reply is, by
        :meth:`_encode_reply`), or the :class:`Later` it answered with."""
        try:
            self._observed(request, connection)
            result = self._handler(request)(Fields(request.params, "params"), connection)
        except Exception as exc:
            return encode_frame(self._failure(request, exc))
        if isinstance(result, Later):
            return _Pending(request, result)
        return self._encode_reply(request, Reply(request.id, result), max_bytes)

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
        outbox = connection.outbox
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
            await connection.outbox.put(reply)
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
            await connection.outbox.put(reply)
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

    def _encode_reply(
        self, request: Request, response: Frame, max_bytes: int | None = None
    ) -> bytes:
        """The reply's bytes; a result that cannot be encoded, or that is larger than a
        frame may be (or ``max_bytes``), is the handler's failure: the client's side of
        the link closes on a frame past its limit, and with it every other call that
        shares the link (an exit relay's one connection carries many devices' requests)."""
        limit = self.limits.max_frame_bytes if max_bytes is None else max_bytes
        try:
            data = encode_frame(response)
            if len(data) > limit:
                raise RuntimeError(f"a reply of {len(data)} bytes is larger than a frame")
            return data
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
