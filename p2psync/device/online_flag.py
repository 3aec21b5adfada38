"""Whether a device is online, for what runs for the device's whole life (the onion
route's listing reads) but is to act only while it is: a device that is offline makes
no request, and reads nothing it would act on only later."""

from __future__ import annotations

import trio


class OnlineFlag:
    """Set while the device is online (:class:`~.running.Runner` keeps it);
    :meth:`wait` returns once it is."""

    def __init__(self) -> None:
        self._online = trio.Event()

    def set(self, online: bool) -> None:
        if online:
            self._online.set()
        elif self._online.is_set():
            self._online = trio.Event()

    async def wait(self) -> None:
        await self._online.wait()
