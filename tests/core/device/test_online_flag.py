"""The flag the Runner stops a device by and the onion route's reads wait on."""

from __future__ import annotations

import trio
import trio.testing

from p2psync.device.online_flag import OnlineFlag


async def test_wait_offline_blocks_while_online_and_wakes_when_the_tasks_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flag = OnlineFlag()
    await flag.wait_offline()  # a new device is offline
    flag.set(True)
    with trio.move_on_after(1) as waited:
        await flag.wait_offline()
    assert waited.cancelled_caught
    async with trio.open_nursery() as nursery:
        woken = trio.Event()

        async def waiter() -> None:
            await flag.wait_offline()
            woken.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        flag.set(False)
        flag.set(True)  # online again before the waiter ran: it was offline, it wakes
        with trio.fail_after(1):
            await woken.wait()


async def test_wait_returns_only_while_online(autojump_clock: trio.testing.MockClock) -> None:
    flag = OnlineFlag()
    returned = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await flag.wait()
            returned.append(flag.online)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        flag.set(True)
        flag.set(False)  # online and offline again before the waiter ran
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []
        flag.set(True)
    assert returned == [True]
