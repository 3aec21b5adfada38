"""What ``sync_status`` says of how a device syncs with its siblings: ``starting`` while
its overlay endpoint comes up, then directly, or through the swarm when there are too few
relays; the watermark its history is complete up to (``p2psync device status`` shows it
as the last sync)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio.testing

from ..swarm.helpers import wait_until
from .helpers import device, open_world, pair


@pytest.mark.parametrize("relays", [8, 0])
async def test_a_device_says_it_is_starting_until_its_endpoint_is_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, relays: int
) -> None:
    async with open_world(relays=relays) as network:
        async with (
            device(network, tmp_path, "phone", "linked") as phone,
            device(network, tmp_path, "desktop", "linked") as desktop,
        ):
            alone = phone.sync_status()
            assert not alone.starting and alone.complete_until == 0  # no sibling: nothing to start
            await pair(phone, desktop)
        async with (
            device(network, tmp_path, "desktop"),
            device(network, tmp_path, "phone", online=False) as phone,
        ):
            assert not phone.sync_status().starting  # offline
            await phone.set_online(True)
            status = phone.sync_status()
            assert status.starting and not status.syncs_directly
            await wait_until(lambda: not phone.sync_status().starting)
            assert phone.sync_status().syncs_directly is (relays > 0)
            if relays:
                await wait_until(lambda: phone.sync_status().complete_until > 0)
