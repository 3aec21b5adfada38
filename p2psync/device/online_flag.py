"""Whether a device is online, for what runs as long as the device is open but is to act
on its own only while it is online: the onion route's re-reads of the listing. Requests
the device is asked to make while offline (``sync_now``, a ``rooms`` call from the
command line) still go, through the paths it has."""

from __future__ import annotations

import trio


class OnlineFlag:
    """Set while the device's online tasks run (:class:`~.running.Runner` keeps it):
    :meth:`wait` returns once they do, :meth:`wait_offline` once they have all ended."""

    def __init__(self) -> None:
        self._online = trio.Event()
        self._offline = trio.Event()
        self._offline.set()

    @property
    def online(self) -> bool:
        return self._online.is_set()

    def set(self, online: bool) -> None:
        if online == self.online:
            return
        if online:
            self._offline = trio.Event()
            self._online.set()
        else:
            self._online = trio.Event()
            self._offline.set()

    async def wait(self) -> None:
        await self._online.wait()

    async def wait_offline(self) -> None:
        await self._offline.wait()
