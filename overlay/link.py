"""One link abstraction for everything that carries messages: overlay hops and RPC.

A :class:`Link` is an ordered, reliable, message-oriented, bidirectional connection
(``send`` / ``receive`` / ``aclose``). A :class:`Transport` makes links: ``serve`` accepts
them (a Trio server started with ``nursery.start``, which reports the bound address) and
``connect`` opens one as an async context manager.

Two transports, chosen by configuration:

* :class:`TcpTransport` — real loopback sockets, 4-byte length-prefixed frames (TLS 1.3
  pinned to the server's key when the address names it, :mod:`overlay.tls`).
* :class:`MemoryNetwork` — in-process, with emulated per-link latency, jitter, bandwidth
  and loss, plus faults (a host going down, a partition). This is what simulations under
  ``trio.testing.MockClock`` run on; the kernel here has no netem, so the emulation is ours.

Close semantics (both transports): ``aclose`` is idempotent; after the peer closes, the
remaining messages are still delivered and then ``receive`` raises :class:`LinkClosed`;
``send`` on a link whose peer went away raises :class:`LinkClosed`.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from types import TracebackType
from typing import Any

import trio

from . import tls
from .addresses import pinned_address, split_host_port, split_pin
from .constants import LINK_QUEUE_CELLS
from .handshakes import MAX_PENDING_HANDSHAKES, PendingHandshakes
from .keys import KeyPair

logger = logging.getLogger(__name__)

#: Largest message a link carries unless a transport is told otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


class LinkClosed(Exception):
    """The link is closed, locally or by the peer, or it broke."""


class Link(ABC):
    """An ordered, reliable, message-oriented connection to one peer."""

    #: The peer's address as this side knows it (for logs; never trusted for auth).
    peer: str = ""
    #: True when :meth:`send_nowait` works (in-memory links); routers use it to forward
    #: without a writer task, dropping instead of waiting when the peer's queue is full.
    supports_send_nowait: bool = False

    def send_nowait(self, message: bytes) -> None:
        """Send without blocking: ``trio.WouldBlock`` if it cannot, ``LinkClosed`` if gone."""
        raise trio.WouldBlock

    def receive_nowait(self) -> bytes:
        """A message that has already arrived, without blocking: ``trio.WouldBlock`` if
        there is none (or the link cannot tell), ``LinkClosed`` if gone. Lets a router
        drain a burst in one go after an ``await receive()``."""
        raise trio.WouldBlock

    @abstractmethod
    async def send(self, message: bytes) -> None: ...

    @abstractmethod
    async def receive(self) -> bytes: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.receive()
            except LinkClosed:
                return


async def write_whole(stream: trio.abc.Stream, data: bytes) -> None:
    """``stream.send_all(data)`` for a link whose frames must arrive whole. A write that
    broke, or was cancelled part-way (some of ``data`` may be on the wire, and nothing
    written after it would parse), closes the stream, so the link is closed both ways:
    a task waiting to receive on it is woken too, and a pool holding it connects anew,
    instead of keeping a link that reads but can never send again."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await _close_now(stream)
        raise LinkClosed(str(exc) or "connection lost") from None
    except BaseException:
        await _close_now(stream)
        raise


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close ``stream``, gracefully if it can be. Another task may be closing it at the
    same moment (a write cut short closes it while the reader, woken by that, ends too):
    TLS then finds its socket closed under it, which is the outcome both wanted."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.aclose()


async def _close_now(stream: trio.abc.Stream) -> None:
    """Close at once, without a goodbye (the stream is broken or holds half a frame), and
    whether or not this task is being cancelled."""
    with trio.CancelScope(shield=True) as scope:
        scope.cancel()
        await close_stream(stream)


LinkHandler = Callable[[Link], Awaitable[None]]


class Transport(ABC):
    """Makes links. ``serve`` runs until cancelled and reports its bound address."""

    #: True for in-process emulations, where no real host has an address to protect:
    #: only there may choices that would link a host over time be made reproducible.
    simulated: bool = False

    @property
    def pins_keys(self) -> bool:
        """Whether servers on this transport serve TLS as their keys, so that every
        address one reports names its key (and a client reaches only that key there)."""
        return False

    @abstractmethod
    async def serve(
        self,
        handler: LinkHandler,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None: ...

    @abstractmethod
    def connect(self, address: str) -> AbstractAsyncContextManager[Link]: ...

    def listen_address(self, name: str) -> str:
        """Where a server called ``name`` listens unless told otherwise: a real transport
        binds any free port on loopback (the name is for emulations, where it is the
        host's address)."""
        return "127.0.0.1:0"

    def as_host(self, name: str) -> Transport:
        """This transport as host ``name`` uses it. On a real network a host's links
        already carry its own address, so it is this transport itself; an emulation
        names the links, so its faults and per-pair profiles reach that host."""
        return self

    def for_overlay(self) -> Transport:
        """The transport onion-overlay links take beside this one: framed TCP on a real
        network (whatever carries the RPCs); an emulation carries them itself."""
        return TcpTransport()

    def as_server(self, seed: bytes) -> Transport:
        """This transport as a server holding the Ed25519 key of ``seed`` serves with.

        On a real network every server serves TLS 1.3 presenting its announced key, and
        reports its address pinned to it (:mod:`overlay.tls`), unless plain links were
        chosen for this transport; an emulation carries no bytes a stranger could read,
        so it is this transport itself."""
        return self


async def run_handler(handler: LinkHandler, link: Link) -> None:
    """Run one connection's handler so that nothing it raises reaches the server.

    One bad connection must never take a server down (STYLE.md rule 5)."""
    async with link:
        try:
            await handler(link)
        except LinkClosed:
            pass
        except Exception:
            logger.exception("connection handler for %s failed", link.peer)


class LinkPump:
    """One link as a router (a relay, or an endpoint's path) drives it.

    What is sent before the link is up waits in a bounded queue (``LINK_QUEUE_CELLS``), so a
    router can hand cells to a link it is still opening. :meth:`run` then carries the link
    until it closes: every message received goes to a callback, a burst drained without a
    scheduling round per message; what is sent goes out by a writer task, or, on a link that
    sends without blocking, inline (no task, and a full link drops instead of waiting, as a
    router must). A pump runs one link once; once that link is gone sends raise
    :class:`LinkClosed`.
    """

    def __init__(self) -> None:
        self._queue, self._queued = trio.open_memory_channel[bytes](LINK_QUEUE_CELLS)
        self._link: Link | None = None
        #: Messages queued so far, and of them written (or given up with the link), in
        #: order; who waits for the second to reach the first.
        self._queued_count = 0
        self._written_count = 0
        self._written = trio.lowlevel.ParkingLot()

    def send_nowait(self, message: bytes) -> None:
        """Send or queue ``message``: ``trio.WouldBlock`` if the queue or the link is full,
        :class:`LinkClosed` once the link is gone."""
        if self._link is not None:
            self._link.send_nowait(message)
            return
        try:
            self._queue.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise LinkClosed("the link is gone") from None
        self._queued_count += 1

    async def written(self) -> None:
        """Return once everything sent before this call is written to the link (or the
        link is gone), whatever is sent meanwhile: what a router going away waits for, so
        that its last messages (a session's goodbye) leave before it cancels the writer.
        Bound it with a cancel scope: a link that never comes up never writes."""
        sent = self._queued_count
        while self._written_count < sent:
            await self._written.park()

    def _wrote(self, count: int = 1) -> None:
        self._written_count += count
        self._written.unpark_all()

    def close(self) -> None:
        self._queue.close()

    async def run(
        self, link: Link, on_receive: Callable[[bytes], None], on_drop: Callable[[], None]
    ) -> None:
        """Carry ``link`` until it closes; ``on_drop`` counts each queued message the link
        had no room for when it came up."""
        try:
            async with trio.open_nursery() as nursery:
                if link.supports_send_nowait:
                    self._flush(link, on_drop)
                    self._link = link
                else:
                    nursery.start_soon(self._write, link, nursery.cancel_scope)
                try:
                    while True:
                        on_receive(await link.receive())
                        while True:
                            try:
                                message = link.receive_nowait()
                            except trio.WouldBlock:
                                break
                            on_receive(message)
                except LinkClosed:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            self._link = None
            self.close()
            self._wrote(self._queued_count - self._written_count)  # gone: nothing more goes

    def _flush(self, link: Link, on_drop: Callable[[], None]) -> None:
        """Send what was queued before the link existed, synchronously, keeping order."""
        while True:
            try:
                message = self._queued.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            try:
                link.send_nowait(message)
            except trio.WouldBlock:
                on_drop()
            except LinkClosed:
                return
            finally:
                self._wrote()

    async def _write(self, link: Link, scope: trio.CancelScope) -> None:
        try:
            async for message in self._queued:
                try:
                    await link.send(message)
                finally:
                    self._wrote()
        except LinkClosed:
            scope.cancel()


# --- in-memory transport with emulated network conditions ---------------------------------


@dataclass(frozen=True)
class LinkProfile:
    """Emulated conditions of one direction of a link.

    ``loss`` is the chance that a message is lost on the wire. Links are reliable, like
    the TCP they stand in for, so a lost message is not dropped but sent again after a
    retransmission timeout (doubling on each loss in a row), holding up the messages
    behind it: loss shows as delay and jitter, never as a gap. (The overlay relies on
    that: a cell missing from a path breaks the path, see ``overlay.onion.PathBroken``.)
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    bandwidth_bps: float = 0.0  # 0 = unlimited

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.bandwidth_bps < 0:
            raise ValueError("latency, jitter and bandwidth must not be negative")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss is a probability in [0, 1)")


_QUEUE_MESSAGES = 256
#: Delay of a message's first retransmission after a loss: TCP's minimum timeout (Linux).
_RETRANSMISSION_TIMEOUT_MS = 200.0


@dataclass(eq=False)
class _WaitingSend:
    """A send waiting for room: ``put`` puts its message on the wire when its turn comes."""

    task: trio.lowlevel.Task
    put: Callable[[], None]
    sent: bool = False


class _Wire:
    """One direction of an emulated link: the messages on it in arrival order, at most
    ``_QUEUE_MESSAGES`` (a sender waits for room, or gets ``trio.WouldBlock``). A place
    freed goes to the send that has waited longest, its message put on the wire there
    and then, so messages keep the order their sends began in.

    A receiver sleeps until the first message's arrival time and wakes once, then,
    rather than being woken as each is sent and going back to sleep until it arrives:
    a simulation spends most of its time carrying messages, and this halves the
    scheduling rounds each costs."""

    def __init__(self) -> None:
        self.messages: deque[tuple[float, bytes]] = deque()
        self.sending_closed = False  # no more messages: receivers drain, then end
        self.receiving_closed = False  # no one reads: sends fail
        self._parked: set[trio.CancelScope] = set()  # receivers' sleeps
        self._waiting: deque[_WaitingSend] = deque()

    @property
    def closed(self) -> bool:
        return self.sending_closed or self.receiving_closed

    @property
    def ended(self) -> bool:
        """Nothing more will arrive: no one reads, or the sender closed and all arrived."""
        return self.receiving_closed or (self.sending_closed and not self.messages)

    def has_room(self) -> bool:
        """Room for one more, and no send waiting for it before."""
        return len(self.messages) < _QUEUE_MESSAGES and not self._waiting

    def put(self, item: tuple[float, bytes]) -> None:
        if self.closed:
            raise LinkClosed("the link is closed")
        self.messages.append(item)
        if len(self.messages) == 1:
            for sleep in self._parked:
                sleep.deadline = item[0]

    async def wait_to_put(self, put: Callable[[], None]) -> None:
        """Wait behind the sends already waiting until ``put`` has put a message in the
        place freed for it; :class:`LinkClosed` if the link closes first."""
        waiting = _WaitingSend(trio.lowlevel.current_task(), put)
        self._waiting.append(waiting)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiting.remove(waiting)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if not waiting.sent:
            raise LinkClosed("the link is closed")

    def take_due(self, now: float) -> bytes | None:
        """The first message if it has arrived by ``now``."""
        if not self.messages or self.messages[0][0] > now:
            return None
        message = self.messages.popleft()[1]
        if self._waiting:
            waiting = self._waiting.popleft()
            waiting.put()
            waiting.sent = True
            trio.lowlevel.reschedule(waiting.task)
        return message

    async def sleep_until_next(self) -> None:
        """Sleep until the first message arrives (one sent meanwhile sets the alarm) or
        either end closes."""
        deadline = self.messages[0][0] if self.messages else math.inf
        with trio.CancelScope(deadline=deadline) as sleep:
            self._parked.add(sleep)
            try:
                await trio.sleep_forever()
            finally:
                self._parked.discard(sleep)

    def close_sending(self) -> None:
        self.sending_closed = True
        self._wake_everyone()

    def close_receiving(self) -> None:
        self.receiving_closed = True
        self.messages.clear()
        self._wake_everyone()

    def _wake_everyone(self) -> None:
        for sleep in self._parked:
            sleep.cancel()
        while self._waiting:
            trio.lowlevel.reschedule(self._waiting.popleft().task)


class _MemoryLink(Link):
    def __init__(
        self, network: MemoryNetwork, local: str, peer: str, outgoing: _Wire, incoming: _Wire
    ) -> None:
        self._network = network
        self.local = local
        self.peer = peer
        self._outgoing = outgoing
        self._incoming = incoming
        self._last_arrival = 0.0

    supports_send_nowait = True

    def _check(self, message: bytes) -> None:
        if not isinstance(message, bytes | bytearray):
            raise TypeError("links carry bytes")
        if len(message) > self._network.max_message_bytes:
            raise ValueError(f"message of {len(message)} bytes exceeds the link limit")
        if self._network.is_cut(self.local, self.peer):
            self._close()
            raise LinkClosed(f"link {self.local} → {self.peer} is down")
        if self._outgoing.closed:
            raise LinkClosed(f"link to {self.peer} is closed")

    def _put(self, message: bytes) -> None:
        """Put ``message`` on the wire, arriving after the link's delay."""
        profile = self._network.profile(self.local, self.peer)
        now = trio.current_time()
        delay = profile.latency_ms + profile.jitter_ms * self._network.random.random()
        timeout = _RETRANSMISSION_TIMEOUT_MS
        while profile.loss and self._network.random.random() < profile.loss:
            delay += timeout
            timeout *= 2
        if profile.bandwidth_bps:
            delay += len(message) * 8_000.0 / profile.bandwidth_bps
        # Delivery stays in order, like the TCP link it stands in for.
        self._last_arrival = max(self._last_arrival, now + delay / 1000.0)
        self._outgoing.put((self._last_arrival, bytes(message)))

    async def send(self, message: bytes) -> None:
        """Like a Trio channel's: the message is on the wire before this task yields if
        there is room, else once a place is freed for it, in the order sends began."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check(message)
        if self._outgoing.has_room():
            self._put(message)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            await self._outgoing.wait_to_put(partial(self._put, message))
        except LinkClosed:
            raise LinkClosed(f"link to {self.peer} is closed") from None

    def send_nowait(self, message: bytes) -> None:
        self._check(message)
        if not self._outgoing.has_room():
            raise trio.WouldBlock
        self._put(message)

    async def receive(self) -> bytes:
        wire = self._incoming
        await trio.lowlevel.checkpoint_if_cancelled()
        slept = False
        while True:
            if wire.ended:
                raise LinkClosed(f"link to {self.peer} is closed")
            message = wire.take_due(trio.current_time())
            if message is not None:
                break
            await wire.sleep_until_next()
            slept = True
        if not slept:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return self._unless_cut(message)

    def receive_nowait(self) -> bytes:
        wire = self._incoming
        if wire.ended:
            raise LinkClosed(f"link to {self.peer} is closed")
        message = wire.take_due(trio.current_time())
        if message is None:
            raise trio.WouldBlock
        return self._unless_cut(message)

    def _unless_cut(self, message: bytes) -> bytes:
        """``message``, arrived, unless the network was cut meanwhile (then the link is)."""
        if self._network.is_cut(self.local, self.peer):
            self._close()
            raise LinkClosed(f"link {self.peer} → {self.local} is down")
        return message

    def _close(self) -> None:
        self._outgoing.close_sending()
        self._incoming.close_receiving()

    async def aclose(self) -> None:
        self._close()
        await trio.lowlevel.checkpoint()


@dataclass
class _Listener:
    handler: LinkHandler
    nursery: trio.Nursery


@dataclass
class MemoryNetwork(Transport):
    """An in-process network of named hosts. Addresses are ``"mem:NAME"``.

    ``seed`` makes loss and jitter reproducible. ``profile(a, b)`` gives the conditions from
    host ``a`` to host ``b``: :meth:`set_profile` overrides the default per pair. Faults:
    :meth:`set_down` cuts every link of a host, :meth:`partition` cuts between two hosts;
    established links break at their next use and new connections are refused.
    """

    seed: int = 0
    default_profile: LinkProfile = field(default_factory=LinkProfile)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    simulated = True

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self._listeners: dict[str, _Listener] = {}
        self._profiles: dict[tuple[str, str], LinkProfile] = {}
        self._down: set[str] = set()
        self._cuts: set[frozenset[str]] = set()
        self._names = itertools.count(1)

    # configuration and faults
    def set_profile(self, a: str, b: str, profile: LinkProfile, *, both_ways: bool = True) -> None:
        self._profiles[(_host(a), _host(b))] = profile
        if both_ways:
            self._profiles[(_host(b), _host(a))] = profile

    def profile(self, a: str, b: str) -> LinkProfile:
        if not self._profiles:  # the common case, kept cheap: this runs for every message
            return self.default_profile
        return self._profiles.get((_host(a), _host(b)), self.default_profile)

    def host(self, name: str) -> HostView:
        """This network as host ``name`` uses it: the links it opens carry its name, so
        cuts and per-pair profiles between hosts apply to them."""
        return HostView(self, name)

    def listen_address(self, name: str) -> str:
        return f"mem:{name}"

    def as_host(self, name: str) -> Transport:
        return self.host(name)

    def for_overlay(self) -> Transport:
        return self

    def set_down(self, address: str, down: bool = True) -> None:
        (self._down.add if down else self._down.discard)(_host(address))

    def partition(self, a: str, b: str, cut: bool = True) -> None:
        pair = frozenset((_host(a), _host(b)))
        (self._cuts.add if cut else self._cuts.discard)(pair)

    def is_cut(self, a: str, b: str) -> bool:
        if not self._down and not self._cuts:
            return False
        ha, hb = _host(a), _host(b)
        return ha in self._down or hb in self._down or frozenset((ha, hb)) in self._cuts

    # Transport
    async def serve(
        self,
        handler: LinkHandler,
        address: str = "mem:",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        name = _host(address) or f"host{next(self._names)}"
        bound = f"mem:{name}"
        if name in self._listeners:
            raise OSError(f"{bound} is already in use")
        async with trio.open_nursery() as nursery:
            self._listeners[name] = _Listener(handler, nursery)
            try:
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                del self._listeners[name]
                nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def connect(self, address: str, *, local: str | None = None) -> AsyncIterator[Link]:
        """Connect to ``address``; ``local`` names the connecting host for faults and
        per-pair profiles (an anonymous client gets a fresh name)."""
        name = _host(address)
        local_name = _host(local) if local else f"client{next(self._names)}"
        await trio.lowlevel.checkpoint()
        listener = self._listeners.get(name)
        if listener is None or self.is_cut(local_name, name):
            raise OSError(f"connection to mem:{name} refused")
        to_server, to_client = _Wire(), _Wire()
        client = _MemoryLink(self, local_name, name, to_server, to_client)
        server = _MemoryLink(self, name, local_name, to_client, to_server)
        listener.nursery.start_soon(run_handler, listener.handler, server)
        async with client:
            yield client


@dataclass(frozen=True)
class HostView(Transport):
    """A :class:`MemoryNetwork` seen from one host (a plain ``connect`` is an anonymous
    client, which no partition between named hosts can reach)."""

    network: MemoryNetwork
    name: str
    simulated = True

    async def serve(
        self,
        handler: LinkHandler,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.network.serve(handler, address, task_status=task_status)

    def connect(self, address: str) -> AbstractAsyncContextManager[Link]:
        return self.network.connect(address, local=self.name)

    def listen_address(self, name: str) -> str:
        return self.network.listen_address(name)

    def as_host(self, name: str) -> Transport:
        return self.network.host(name)

    def for_overlay(self) -> Transport:
        return self


def _host(address: str) -> str:
    return address.removeprefix("mem:")


# --- TCP transport -------------------------------------------------------------------------

_LENGTH = struct.Struct(">I")


class _TcpLink(Link):
    def __init__(self, stream: trio.abc.Stream, peer: str, max_message_bytes: int) -> None:
        self._stream = stream
        self.peer = peer
        self._max = max_message_bytes
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, message: bytes) -> None:
        if len(message) > self._max:
            raise ValueError(f"message of {len(message)} bytes exceeds the link limit")
        async with self._send_lock:
            await trio.lowlevel.checkpoint_if_cancelled()  # cancelled while waiting: no write
            await write_whole(self._stream, _LENGTH.pack(len(message)) + message)

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            try:
                chunk = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkClosed(str(exc)) from None
            if not chunk:
                raise LinkClosed(f"{self.peer} closed the connection")
            self._buffer += chunk

    async def receive(self) -> bytes:
        await self._fill(_LENGTH.size)
        (size,) = _LENGTH.unpack_from(self._buffer)
        if size > self._max:
            await self.aclose()
            raise LinkClosed(f"{self.peer} sent a {size}-byte frame; the limit is {self._max}")
        await self._fill(_LENGTH.size + size)
        message = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
        del self._buffer[: _LENGTH.size + size]
        return message

    async def aclose(self) -> None:
        await close_stream(self._stream)


def _address_of(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class TcpTransport(Transport):
    """Real sockets with 4-byte big-endian length-prefixed frames.

    With ``keys`` the server speaks TLS 1.3 with a certificate carrying ``keys.public``
    and reports its address pinned (``host:port#<hex key>``, :mod:`overlay.tls`); a client
    connecting to a pinned address speaks TLS and accepts only that key. Servers get
    their keys from :meth:`as_server`, so TLS is what they serve unless ``plain`` says
    otherwise (the explicit choice of benchmarks that compare); only a ``plain`` client
    dials a bare ``host:port`` (plaintext), any other refuses it."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    keys: KeyPair | None = None
    #: Serve plaintext even as a server with a key (:meth:`as_server` keeps no key).
    plain: bool = False
    #: Accepted sockets that may be in their TLS handshake at once; past it the one
    #: waiting longest is dropped (:class:`~overlay.handshakes.PendingHandshakes`).
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES

    def for_overlay(self) -> Transport:
        return self if self.keys is None else replace(self, keys=None)

    @property
    def pins_keys(self) -> bool:
        return not self.plain

    def as_server(self, seed: bytes) -> Transport:
        return self if self.plain else replace(self, keys=KeyPair.from_seed(seed))

    async def serve(
        self,
        handler: LinkHandler,
        address: str = "127.0.0.1:0",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = split_host_port(split_pin(address)[0])  # a restart's old address
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = _address_of(listeners[0].socket.getsockname())
        keys = self.keys
        pending = PendingHandshakes(self.max_pending_handshakes)

        async def accept(stream: trio.SocketStream) -> None:
            peer = _address_of(stream.socket.getpeername())
            carried: trio.abc.Stream = stream
            if keys is not None:
                secured = None
                try:
                    with pending.slot():
                        secured = await tls.accept_tls(stream, keys.seed)
                except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                    logger.debug("TLS handshake with %s failed: %r", peer, exc)
                if secured is None:  # failed, or crowded out by newer sockets
                    await trio.aclose_forcefully(stream)
                    return
                carried = secured
            await run_handler(handler, _TcpLink(carried, peer, self.max_message_bytes))

        task_status.started(bound if keys is None else pinned_address(bound, keys.public))
        await trio.serve_listeners(accept, listeners)

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[Link]:
        bare, pin = split_pin(address)
        if pin is None and self.pins_keys:
            raise LinkClosed(f"refused {bare}: it names no key, and this network's links are TLS")
        host, port = split_host_port(bare)
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if pin is not None:
            try:
                stream = await tls.connect_tls(stream, pin)
            except trio.BrokenResourceError as exc:
                raise LinkClosed(f"TLS handshake with {bare} failed: {exc}") from None
            except tls.PeerKeyMismatch as exc:
                raise LinkClosed(f"refused {bare}: {exc}") from exc
        async with _TcpLink(stream, address, self.max_message_bytes) as link:
            yield link
