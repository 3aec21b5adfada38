"""What the network learns from direct sync: nothing that ties two devices together.

In ``linked`` mode the swarm stores one account's sealed envelopes and the relays carry
same-size cells and introsets stored under blinded keys. A tap on every relay (every cell
it is handed, every introset it stores) and a look at everything every service node
stores must find no sibling's overlay key, device id or shared secret, while the siblings
sync directly. (``mapped`` mode publishes its device mappings on the file server: that
linkage is the seed document's design, not something sync adds.)
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from overlay.keys import x25519_of
from p2psync.device.keys import siblings_secret
from p2psync.identity import Identity

from ..swarm.helpers import wait_until
from .helpers import befriend, device, open_world, pair


async def test_relays_and_swarm_never_see_what_ties_siblings_together(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    cells: list[bytes] = []
    async with open_world(relays=8) as network:
        for relay in network.relays:
            relay.observe(lambda seen: cells.append(seen.cell))
        async with (
            device(network, tmp_path, "phone", "linked") as phone,
            device(network, tmp_path, "desktop", "linked") as desktop,
            device(network, tmp_path, "bob", "linked") as bob,
        ):
            await pair(phone, desktop)
            await befriend(phone, bob)
            await wait_until(
                lambda: phone.sync_status().connected_siblings == {desktop.whoami().device_id}
            )
            for n in range(5):
                await phone.send(bob.session_id, f"synced directly {n}")
                await bob.send(phone.session_id, f"to both devices {n}")
            await wait_until(lambda: len(desktop.history(bob.session_id)) == 10)
            await phone.flush()
            await bob.flush()

            secret = siblings_secret(Identity.from_label("device/phone").seed)
            assert secret is not None
            telltales = {b"shared secret": secret}
            for sibling in (phone, desktop):
                keys = {
                    "overlay key": sibling.whoami().overlay_key,
                    "overlay X25519 key": x25519_of(sibling.whoami().overlay_key),
                    "device key": sibling.whoami().device_key,
                }
                for what, key in keys.items():
                    telltales[f"{sibling.whoami().name} {what}".encode()] = key
                    telltales[f"{sibling.whoami().name} {what} (hex)".encode()] = key.hex().encode()
            relay_view = cells + [
                record for relay in network.relays for record in relay.introset_records()
            ]
            node_view = [
                row.data
                for node in network.running_nodes()
                for row in node.store.records(network.clock.now_ms(), None)
                if row.data is not None
            ]
            assert len(cells) > 100 and node_view
            for label, telltale in telltales.items():
                assert not any(telltale in seen for seen in relay_view), label
                assert not any(telltale in stored for stored in node_view), label
