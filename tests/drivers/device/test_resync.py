"""History re-sync: a device away for 1 h, 25 h, 7 days or 30 days ends with exactly the
history of its sibling, whatever the swarm still held."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from ..swarm.helpers import wait_until
from .helpers import befriend, device, open_world, pair

HOUR_S = 3600
DAY_S = 24 * HOUR_S


def history_of(device: object) -> list[tuple[bytes, int, str, bool, str]]:
    return [
        (i.id, i.timestamp_ms, i.conversation, i.outgoing, i.text)
        for i in device.history()  # type: ignore[attr-defined]
    ]


@pytest.mark.parametrize(
    ("mode", "away_s"), [("linked", HOUR_S), ("linked", 25 * HOUR_S), ("mapped", 25 * HOUR_S)]
)
async def test_a_returning_sibling_ends_with_the_same_history(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str, away_s: int
) -> None:
    async with open_world(relays=8) as network, device(network, tmp_path, "bob", mode) as bob:
        async with (
            device(network, tmp_path, "phone", mode) as phone,
            device(network, tmp_path, "desktop", mode) as desktop,
        ):
            await pair(phone, desktop)
            await befriend(phone, bob)
            await phone.send(bob.session_id, "before")
            await wait_until(lambda: len(desktop.history(bob.session_id)) == 1)
            desktop_id = desktop.whoami().device_id
        # The desktop is away; the phone comes and goes, Bob writes now and then.
        async with device(network, tmp_path, "phone") as phone:
            for hour in range(3):
                await bob.send(phone.session_id, f"from Bob, hour {hour}")
                await phone.send(bob.session_id, f"to Bob, hour {hour}")
                await trio.sleep(HOUR_S / 4)
            await wait_until(lambda: len(phone.history(bob.session_id)) == 7)
            await phone.flush()
        await bob.set_online(False)
        # Beyond an hour, the idle stretch is skipped rather than simulated (the 23 h / 25 h
        # swarm-only tests run their whole day of maintenance).
        idle_s = max(0, away_s - HOUR_S)
        network.clock.skip_idle(idle_s * 1000)
        await trio.sleep(away_s - idle_s)
        async with (
            device(network, tmp_path, "phone") as phone,
            device(network, tmp_path, "desktop") as desktop,
        ):
            await wait_until(
                lambda: desktop_id in phone.sync_status().connected_siblings, limit_s=1200
            )
            await wait_until(
                lambda: phone.whoami().device_id in desktop.sync_status().resynced_siblings,
                limit_s=1200,
            )
            assert history_of(desktop) == history_of(phone)
            assert len(history_of(desktop)) == 7
            assert desktop.sync_status().complete_until > 0


@pytest.mark.parametrize("away_days", [7, 30])
async def test_weeks_away_end_with_the_same_history(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, away_days: int
) -> None:
    async with open_world(relays=8) as network, device(network, tmp_path, "bob", "linked") as bob:
        async with device(network, tmp_path, "phone", "linked") as phone:
            async with device(network, tmp_path, "desktop", "linked") as desktop:
                await pair(phone, desktop)
                desktop_id = desktop.whoami().device_id
            await befriend(phone, bob)
            # The desktop is away for weeks: every day Bob and Alice's phone talk a little.
            for day in range(away_days):
                await bob.send(phone.session_id, f"from Bob, day {day}")
                await phone.send(bob.session_id, f"to Bob, day {day}")
                await wait_until(lambda day=day: len(phone.history(bob.session_id)) == 2 * day + 2)  # type: ignore[misc]
                await phone.flush()
                await bob.flush()
                # The rest of the day nobody does anything but keep the network alive.
                network.clock.skip_idle((DAY_S - 180) * 1000)
        async with (
            device(network, tmp_path, "phone") as phone,
            device(network, tmp_path, "desktop") as desktop,
        ):
            await wait_until(
                lambda: phone.whoami().device_id in desktop.sync_status().resynced_siblings,
                limit_s=1200,
            )
            assert history_of(desktop) == history_of(phone)
            assert len(history_of(desktop)) == 2 * away_days
            assert desktop_id in phone.sync_status().connected_siblings


@pytest.mark.parametrize("mode", ["linked", "mapped"])
async def test_a_new_device_gets_the_whole_history_as_an_archive_at_pairing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, mode: str
) -> None:
    """Weeks of history, most of it gone from the swarm: the new device gets all of it
    from its sibling in one archive, not through reconciliation's id lists."""
    async with (
        open_world(relays=8) as network,
        device(network, tmp_path, "bob", mode) as bob,
        device(network, tmp_path, "phone", mode) as phone,
    ):
        await befriend(phone, bob)
        for day in range(3):
            for n in range(10):
                await phone.send(bob.session_id, f"day {day}, message {n}")
                await bob.send(phone.session_id, f"reply {n} on day {day}")
            filed = 20 * (day + 1)
            await wait_until(partial(lambda n: len(phone.history(bob.session_id)) == n, filed))
            await phone.flush()
            await network.pass_idle(10 * DAY_S * 1000)
        async with device(network, tmp_path, "desktop", mode) as desktop:
            await pair(phone, desktop)
            await wait_until(
                lambda: desktop.sync_status().resynced_siblings == {phone.whoami().device_id},
                limit_s=600,
            )
            assert history_of(desktop) == history_of(phone)
            _, received = desktop.sync_status().archive_counts
            assert received >= len(phone.history()) == 60
            assert phone.sync_status().archive_counts[0] == received
            assert not desktop.rejections and not phone.rejections
