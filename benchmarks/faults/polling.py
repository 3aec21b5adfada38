"""Waiting for a condition held by other processes.

What a fault check waits for — a node answering again, every member holding a message —
happens in another process and raises no event here, so it is polled: at a fixed
interval, under the caller's deadline (a cancel scope), never with a sleep sized to luck.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

POLL_S = 0.2


async def poll_until(check: Callable[[], Awaitable[bool]], *, poll_s: float = POLL_S) -> None:
    while not await check():  # noqa: ASYNC110 (the condition lives in other processes)
        await trio.sleep(poll_s)
