"""A file a service saves its state to often, from Trio: each save a whole replacement
(:mod:`.whole_file`), written in a worker thread of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from .whole_file import remove_leftovers, replace_file


class SavedFile:
    """One file's saves, made in turn, each in a worker thread. Handlers save while others
    are under way; a write takes the state as it is when its turn comes, so the file ends
    with the latest whatever order the threads finish in, and saves asked for while one
    write was under way are all covered by the next (one write, not one each: a burst of
    announcements costs two writes of the listing, not as many as there were)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._turn = trio.Lock()
        #: Its own worker thread, so other work's threads (a slow name lookup) cannot
        #: hold the saves up.
        self._thread = trio.CapacityLimiter(1)
        self._asked = 0  # saves asked for so far
        self._written = 0  # of those, the ones the file holds
        remove_leftovers(path)

    async def save(self, contents: Callable[[], bytes]) -> None:
        """Return once the file holds what ``contents()`` would return now."""
        self._asked += 1
        mine = self._asked
        async with self._turn:
            if self._written >= mine:
                return  # a write that began after this save was asked for covered it
            covering = self._asked
            await trio.to_thread.run_sync(replace_file, self.path, contents(), limiter=self._thread)
            self._written = covering
