"""Whether a device's online tasks run. The :class:`~.running.Runner` is the only one to
set it: it sets it as those tasks start and clears it once they have all ended, and
waits on that to finish going offline. What runs as long as the device is open but is to
act on its own only while the device is online (the onion route's re-reads of the
listing) waits for it to be set. Requests the device is asked to make while offline
(``sync_now``, a ``rooms`` call from the command line) still go, through the paths it has."""

from __future__ import annotations

import trio


class OnlineFlag:
    """Set while the device's online tasks run: :meth:`wait` returns while they do,
    :meth:`wait_offline` once they have all ended."""

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
        """Return while the device is online: not after it went online and offline again
        before this task ran."""
        while not self.online:
            await self._online.wait()

    async def wait_offline(self) -> None:
        await self._offline.wait()
