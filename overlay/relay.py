"""A relay's Trio driver: :func:`serve_relay` runs one :class:`~overlay.relay_core.RelayCore`
(the protocol, sans-I/O) over real or emulated links, opening the outbound ones on first
use and carrying its exit calls to servers; :func:`open_relays` runs several in one
process.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import trio

from .clock import Clock
from .constants import (
    EXIT_TIMEOUT_MS,
)
from .contact import Contact, make_contact, verified_directory
from .keys import KeyPair
from .link import Link, LinkClosed, LinkPump, Transport
from .relay_core import ExitCall, RelayCore

logger = logging.getLogger(__name__)


class Exit(Protocol):
    """What a relay that serves as an exit is given: which servers it may reach, and the
    way to reach them. p2psync supplies it; the overlay never looks inside a body, and
    reads an address only through :meth:`route`."""

    def route(self, address: str) -> str | None:
        """The address to hand :meth:`call` for the one a request names (one server, one
        address, however it was spelled), or None: the request is refused
        (:attr:`ExitStatus.REFUSED`) and nothing is connected to."""

    async def call(self, address: str, body: bytes) -> bytes:
        """Hand ``body`` to the server at ``address`` (as :meth:`route` gave it) and
        return its reply."""


class _LinkPool:
    """The driver side of link names: one :class:`LinkPump` per link, each cell received
    handed to the core and what it answers sent on."""

    def __init__(
        self,
        nursery: trio.Nursery,
        transport: Transport,
        core: RelayCore,
        clock: Clock,
        exit: Exit | None = None,
    ) -> None:
        self._nursery = nursery
        self._transport = transport
        self._core = core
        self._clock = clock
        self._exit = exit
        self._pumps: dict[str, LinkPump] = {}
        self._names = itertools.count(1)

    def send(self, link: str, data: bytes) -> None:
        pump = self._pumps.get(link)
        if pump is None:
            if not link.startswith("out:"):
                return  # an inbound link that went away
            pump = self._pumps[link] = LinkPump()
            self._nursery.start_soon(self._run_outbound, link, pump)
        try:
            pump.send_nowait(data)
        except trio.WouldBlock:
            self._count_drop()
        except LinkClosed:
            pass

    async def _run_outbound(self, name: str, pump: LinkPump) -> None:
        try:
            async with self._transport.connect(name.removeprefix("out:")) as link:
                await pump.run(link, partial(self._receive, name, link.peer), self._count_drop)
        except OSError as exc:
            logger.info("relay link %s failed: %s", name, exc)
        except Exception:
            logger.exception("relay link %s failed", name)
        finally:
            self._close(name, pump)

    async def run_inbound(self, link: Link) -> None:
        name = f"in:{next(self._names)}"
        pump = self._pumps[name] = LinkPump()
        try:
            await pump.run(link, partial(self._receive, name, link.peer), self._count_drop)
        finally:
            self._close(name, pump)

    def _receive(self, link: str, peer: str, data: bytes) -> None:
        for target, out in self._core.receive(link, data, self._clock.now_ms(), peer=peer):
            self.send(target, out)
        for call in self._core.take_exit_calls():
            self._nursery.start_soon(self._run_exit, call)

    async def _run_exit(self, call: ExitCall) -> None:
        """Hand one request to its server through the exit and carry the answer back; a
        server that fails or takes longer than ``EXIT_TIMEOUT_MS`` is reported to the
        owner as a failure, so it can try another path at once."""
        assert self._exit is not None  # the core makes calls only when it has an exit route
        reply: bytes | None = None
        with trio.move_on_after(EXIT_TIMEOUT_MS / 1000):
            try:
                reply = await self._exit.call(call.address, call.body)
            except Exception as exc:  # whatever the server or the way to it did
                logger.info("exit to %s failed: %r", call.address, exc)
        for target, out in self._core.exit_done(call.token, reply):
            self.send(target, out)

    def _count_drop(self) -> None:
        self._core.stats.dropped_queue_full += 1

    def _close(self, name: str, pump: LinkPump) -> None:
        pump.close()
        self._pumps.pop(name, None)
        self._core.link_lost(name)


async def serve_relay(
    identity_seed: bytes,
    transport: Transport,
    address: str,
    directory: list[Contact],
    *,
    clock: Clock | None = None,
    exit: Exit | None = None,
    task_status: trio.TaskStatus[tuple[str, RelayCore]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled; ``task_status.started((bound_address, core))`` once
    listening, the :class:`RelayCore` for an embedding process to read its stats and give
    it new directories.

    ``directory`` is the list of relay contacts this relay may forward to (unverifiable
    ones are ignored). With ``exit``, the relay is an exit too: the requests paths
    terminating here ask for are handed through it to the servers it routes to (without,
    they are refused).
    """
    clock = clock or Clock()
    keys = KeyPair.from_seed(identity_seed)
    core = RelayCore(
        keys,
        verified_directory(directory, clock.now_ms()),
        exit_route=None if exit is None else exit.route,
    )
    async with trio.open_nursery() as nursery:
        pool = _LinkPool(nursery, transport, core, clock, exit)
        bound = await nursery.start(transport.serve, pool.run_inbound, address)
        task_status.started((bound, core))
        while True:
            await trio.sleep(60)
            core.expire(clock.now_ms())


@dataclass
class RelayInfo:
    """An embedded relay: its contact (for directories) and its core (for stats)."""

    contact: Contact
    core: RelayCore


@asynccontextmanager
async def open_relays(
    transport: Transport,
    count: int,
    *,
    clock: Clock | None = None,
    seed: int = 0,
    address_prefix: str = "",
    exit: Callable[[str], Exit] | None = None,
) -> AsyncIterator[list[RelayInfo]]:
    """Run ``count`` relays in this process, each knowing all the others.

    On a :class:`MemoryNetwork` relays are named ``mem:relayN``; over TCP they bind
    ``127.0.0.1:0``. Seeds come from ``seed`` so runs are reproducible. ``exit`` makes
    each relay an exit: it is given the relay's address and returns that relay's
    :class:`Exit` (so each can reach servers from its own host).
    """
    clock = clock or Clock()
    seeds = [bytes([seed % 256, i % 256]) * 16 for i in range(count)]
    infos: list[RelayInfo] = []
    directory: list[Contact] = []
    async with trio.open_nursery() as nursery:
        for i, relay_seed in enumerate(seeds):
            keys = KeyPair.from_seed(relay_seed)
            wanted = address_prefix or transport.listen_address("relay")
            address = f"{wanted}{i}" if wanted.startswith("mem:") else wanted
            bound, core = await nursery.start(
                partial(
                    serve_relay,
                    relay_seed,
                    transport.as_server(relay_seed),  # TLS pinned to its key, on sockets
                    address,
                    directory,
                    clock=clock,
                    exit=None if exit is None else exit(address),
                )
            )
            infos.append(RelayInfo(make_contact(keys, bound, clock.now_ms()), core))
        contacts = [info.contact for info in infos]
        directory.extend(contacts)
        for info in infos:
            info.core.update_directory(contacts, clock.now_ms())
        try:
            yield infos
        finally:
            nursery.cancel_scope.cancel()
