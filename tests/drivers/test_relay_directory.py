"""Relays announced to the registry learn of each other as the listing grows."""

from __future__ import annotations

import trio
import trio.testing

from p2psync.identity import Identity
from p2psync.network import open_local_network, wait_until
from p2psync.services import AnnouncedRelay


async def test_relays_started_one_after_another_learn_of_each_other_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first relay of a batch read a listing holding only itself; it does not wait for
    its minute-long refresh to hear of the ones started after it."""
    async with open_local_network(1, relays=0) as network, trio.open_nursery() as nursery:
        keys = [Identity.from_label(f"relay/{n}") for n in range(4)]
        relays = [
            AnnouncedRelay(
                network.transport,
                identity,
                network.clock,
                registration=network.ledger.register(identity.ed25519_public.hex()).encode(),
            )
            for identity in keys
        ]
        for index, relay in enumerate(relays):
            await nursery.start(relay.serve, f"mem:relay{index}", network.directory())
            await trio.sleep(0.5)
        assert len(relays[0].known_relays) < len(relays)
        everyone = {relay.identity.ed25519_public for relay in relays}
        with trio.fail_after(5):
            await wait_until(lambda: all(r.known_relays == everyone for r in relays))
        nursery.cancel_scope.cancel()
