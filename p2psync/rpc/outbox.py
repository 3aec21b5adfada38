"""One connection of an RPC server as its handlers see it (:class:`Connection`: push,
learn of the close) and the bounded queue its replies and pushes leave through
(:class:`Outbox`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..wire import Notify, encode_frame
from .limits import ReplyMemory


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
    """What a handler may know of and do with the connection its request came on
    (:meth:`notify`, :meth:`on_close`, ``peer``); ``outbox`` and :meth:`ended` are the
    server's."""

    def __init__(
        self,
        peer: str,
        outbox: Outbox,
        on_overflow: Callable[[Connection], None] = lambda connection: None,
    ) -> None:
        self.peer = peer
        #: Its replies and pushes on their way to the socket.
        self.outbox = outbox
        self._on_close: list[Callable[[], None]] = []
        self._on_overflow = on_overflow
        #: The client was found too slow and is being dropped.
        self.overflowed = False

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Queue a push without waiting; a full outbox marks the client too slow."""
        if not self.outbox.offer(encode_frame(Notify(method, params))):
            self.overflow()

    def overflow(self) -> None:
        """Mark the client too slow: the server drops it (once), from whichever task
        found out, without a task per connection waiting for that to happen."""
        if not self.overflowed:
            self.overflowed = True
            self._on_overflow(self)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def ended(self) -> None:
        """The connection is over: tell whoever asked (:meth:`on_close`), once."""
        for callback in self._on_close:
            callback()
        self._on_close.clear()
