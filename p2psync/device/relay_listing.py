"""Keeping the relays an endpoint builds paths through current while a device stays up.

A device reads the listing's relays when it goes online; one that stays up for days (a
desktop running ``p2psync device run``) would otherwise build paths through relays that
have left, never use ones that joined, and hold contacts past their day of life. The
listing is read again every :data:`RELAY_REREAD_S`, and sooner, at most every
:data:`RELAY_REREAD_AFTER_FAILURE_S`, once a path dies young (a relay on it may have left).
Rare on purpose: each read is a direct request to the registry from the device's address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from overlay.constants import CONTACT_LIFETIME_MS
from overlay.contact import Contact
from overlay.endpoint import Endpoint

from .values import TRANSIENT

if TYPE_CHECKING:
    from .access import NetworkAccess

logger = logging.getLogger(__name__)

#: A quarter of a contact's life: contacts never expire under a device that stays up.
RELAY_REREAD_S = CONTACT_LIFETIME_MS / 4 / 1000
RELAY_REREAD_AFTER_FAILURE_S = 60.0


async def keep_relays_current(
    endpoint: Endpoint,
    network: NetworkAccess,
    on_read: Callable[[list[Contact]], None] = lambda contacts: None,
) -> None:
    """Until cancelled, hand ``endpoint`` the listing's relays as described above, and
    ``on_read`` every listing it took."""
    clock = network.clock
    while True:
        failed = endpoint.stats.paths_failed
        with clock.move_on_after(RELAY_REREAD_S):
            while endpoint.stats.paths_failed == failed:
                await endpoint.paths_changed()
            await clock.sleep(RELAY_REREAD_AFTER_FAILURE_S)
        try:
            contacts = await network.relay_contacts()
        except TRANSIENT as exc:
            logger.info("relay listing unavailable, keeping the relays known: %s", exc)
            continue
        if not endpoint.update_directory(contacts):
            logger.info("the relay listing has too few usable relays: keeping the last")
        else:
            on_read(contacts)
