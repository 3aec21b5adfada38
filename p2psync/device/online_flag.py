"""Whether a device is online, for what runs as long as the device is open but is to act
on its own only while it is online: the onion route's re-reads of the listing. Requests
the device is asked to make while offline (``sync_now``, a ``rooms`` call from the
command line) still go, through the paths it has."""

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
