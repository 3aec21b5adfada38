"""The registry's dial back: before it lists an address it has not reached yet, the
registry connects to it, over TLS pinned to the key the announcer names (see
:mod:`.registry`). Those connections are bounded so that announcers can turn them
neither on the registry (held slots) nor on others (probing addresses through it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import trio

from overlay.link import LinkClosed, Transport

from ..clock import Clock
from ..errors import RpcError
from .listing import MAX_LISTED, may_dial_again

logger = logging.getLogger(__name__)

#: How long the registry gives an announced address to complete a connection (TLS
#: included), and how many such dials it makes at once.
DIAL_BACK_TIMEOUT_S = 5.0
MAX_DIALS = 8


class DialBusy(RpcError):
    """No dial slot came free in time: nothing was tried, nothing is held against anyone."""


class DialFailed(RpcError):
    """The announced url did not answer as the announcer's key within the timeout."""


class DialBack:
    """The registry's connections to announced addresses.

    * At most :data:`MAX_DIALS` at once; an announcement that finds no free slot within
      :data:`DIAL_BACK_TIMEOUT_S` is told the registry is busy, and nothing is held
      against its announcer (it was never dialled).
    * One dial at a time per announcer key (whatever kind it announces as: one stake),
      and after every dial that did not reach the announcer, none for
      :data:`~.listing.DIAL_RETRY_MS`, counted from the dial's start, so an announcer that
      hangs up while its dial is under way is held to it too.
    * A failed dial is answered :data:`DIAL_BACK_TIMEOUT_S` after it began, whatever made
      it fail, with the same words: neither the message nor the time tells what answers
      at an address the registry can reach (refused, silent, or another server).

    So a few announcers can hold the dials for a timeout at most, and nobody can probe
    addresses through the registry faster than one a key per retry interval. It
    remembers the failed dials of ``remembered`` keys at most (the oldest go first)."""

    def __init__(self, transport: Transport, clock: Clock, *, remembered: int = MAX_LISTED) -> None:
        self.transport = transport
        self._remembered = remembered
        self._by_kind = {"node": transport, "relay": transport.for_overlay()}
        self._clock = clock
        self._slots = trio.CapacityLimiter(MAX_DIALS)
        self._dialling: set[str] = set()
        #: When each announcer's latest dial that has not succeeded began (unfinished
        #: ones too: hanging up does not undo it), oldest first, capped.
        self._tried: OrderedDict[str, int] = OrderedDict()

    async def reach(self, kind: str, pubkey: str, url: str) -> None:
        """Connect to ``url`` of the announcer ``pubkey``, over TLS pinned to the key it
        names, or refuse the announcement with ``unavailable``."""
        with self._one_dial(pubkey):
            with trio.move_on_after(DIAL_BACK_TIMEOUT_S) as waiting:
                await self._slots.acquire()
            if waiting.cancelled_caught:
                raise DialBusy("unavailable", "the registry is busy: announce again shortly")
            began = trio.current_time()
            try:
                reached = await self._connect(kind, pubkey, url)
            finally:
                self._slots.release()
            if not reached:
                await self._failed(began)

    async def refuse(self, pubkey: str) -> NoReturn:
        """Answer an announcement at an address the operator refused as a dial that failed
        is answered: after the same checks, with the same words at the same time, and
        with the same wait before this key is dialled again. So an admitted key maps the
        refused ranges no faster than it could probe addresses."""
        with self._one_dial(pubkey):
            began = trio.current_time()
            self._remember_try(pubkey)
            await self._failed(began)

    @contextmanager
    def _one_dial(self, pubkey: str) -> Iterator[None]:
        """One dial of ``pubkey`` at a time, and none within the retry wait of its last
        failed one."""
        if pubkey in self._dialling:
            raise RpcError("unavailable", "the registry is still reaching this announcer")
        if not may_dial_again(self._tried.get(pubkey), self._clock.now_ms()):
            raise RpcError("unavailable", "the registry could not reach the announced url lately")
        self._dialling.add(pubkey)
        try:
            yield
        finally:
            self._dialling.discard(pubkey)

    async def _failed(self, began: float) -> NoReturn:
        """The one answer to a dial that began at ``began`` and did not reach: the same
        words, :data:`DIAL_BACK_TIMEOUT_S` after it began."""
        await trio.sleep_until(began + DIAL_BACK_TIMEOUT_S)
        raise DialFailed("unavailable", "the registry could not reach the announced url")

    async def _connect(self, kind: str, pubkey: str, url: str) -> bool:
        self._remember_try(pubkey)
        with trio.move_on_after(DIAL_BACK_TIMEOUT_S):
            try:
                async with self._by_kind[kind].connect(url):
                    self._tried.pop(pubkey, None)
                    return True
            except (OSError, LinkClosed, ValueError) as exc:
                logger.debug("registry: %s at %s unreachable: %r", pubkey[:8], url, exc)
        return False

    def _remember_try(self, pubkey: str) -> None:
        self._tried[pubkey] = self._clock.now_ms()
        self._tried.move_to_end(pubkey)
        if len(self._tried) > self._remembered:
            self._tried.popitem(last=False)
