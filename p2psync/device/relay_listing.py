"""Keeping the relays an endpoint builds paths through current while a device stays online.

A device reads the listing's relays when it goes online; one that stays up for days (a
desktop running ``p2psync device run``) would otherwise build paths through relays that
have left, never use ones that joined, and hold contacts past their day of life. The
listing is read again every :data:`RELAY_REREAD_S`, and sooner, at most every
:data:`RELAY_REREAD_AFTER_FAILURE_S`, once a path dies young (a relay on it may have left)
or a sibling has read a listing longer than it could pass on (:class:`ReadAgain`).
Rare on purpose: each read is a direct request to the registry from the device's address.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from overlay.constants import CONTACT_LIFETIME_MS
from overlay.contact import Contact
from overlay.endpoint import Endpoint

from .values import TRANSIENT

if TYPE_CHECKING:
    from .access import NetworkAccess

logger = logging.getLogger(__name__)

#: A quarter of a contact's life: contacts never expire under a device that stays online.
RELAY_REREAD_S = CONTACT_LIFETIME_MS / 4 / 1000
RELAY_REREAD_AFTER_FAILURE_S = 60.0


class ReadAgain:
    """Requests to read the listing sooner than :func:`keep_relays_current` would: a
    sibling read one this device has not. A request stands until a read that started
    after it came back."""

    def __init__(self) -> None:
        self._asked = trio.Event()
        self._asks = 0

    def ask(self) -> None:
        self._asks += 1
        self._asked.set()

    async def wait(self) -> None:
        await self._asked.wait()

    def reading(self) -> int:
        """Before a read: the requests it will answer (for :meth:`answered`)."""
        return self._asks

    def answered(self, asks: int) -> None:
        """A read begun when :meth:`reading` said ``asks`` came back: those are
        answered, and any that came during the read still stand."""
        if asks == self._asks:
            self._asked = trio.Event()


async def keep_relays_current(
    endpoint: Endpoint,
    network: NetworkAccess,
    on_read: Callable[[list[Contact]], None] = lambda contacts: None,
    again: ReadAgain | None = None,
    awake: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Until cancelled, hand ``endpoint`` the listing's relays as described above, and
    ``on_read`` every listing it took. A read that falls due waits until ``awake``
    returns (the device is online): made while the device is off, it would be acted on
    only later, and made while the network announces itself again (a whole network back
    after an outage), it may list a few relays only, which the device would then build
    its paths through until the next read."""
    clock = network.clock
    again = again or ReadAgain()
    tried_ms = clock.now_ms()
    while True:
        with clock.move_on_after(RELAY_REREAD_S):
            if await _path_died_or_asked(endpoint, again):  # at once, but not too often
                await clock.sleep_until_ms(tried_ms + int(RELAY_REREAD_AFTER_FAILURE_S * 1000))
            else:  # wait for the paths to be rebuilt through what is known
                await clock.sleep(RELAY_REREAD_AFTER_FAILURE_S)
        if awake is not None:
            await awake()
        tried_ms = clock.now_ms()
        asks = again.reading()
        try:
            contacts = await network.relay_contacts()
        except TRANSIENT as exc:  # an ask stands until a read comes back
            logger.info("relay listing unavailable, keeping the relays known: %s", exc)
            continue
        again.answered(asks)
        if not endpoint.update_directory(contacts):
            logger.info("the relay listing has too few usable relays: keeping the last")
        else:
            on_read(contacts)


async def _path_died_or_asked(endpoint: Endpoint, again: ReadAgain) -> bool:
    """Return once a path of ``endpoint`` dies (False) or a read is asked for (True),
    whichever comes first."""
    failed = endpoint.stats.paths_failed
    was_asked = False
    async with trio.open_nursery() as first:

        async def path_died() -> None:
            while endpoint.stats.paths_failed == failed:
                await endpoint.paths_changed()
            first.cancel_scope.cancel()

        async def asked() -> None:
            nonlocal was_asked
            await again.wait()
            was_asked = True
            first.cancel_scope.cancel()

        first.start_soon(path_died)
        first.start_soon(asked)
    return was_asked
