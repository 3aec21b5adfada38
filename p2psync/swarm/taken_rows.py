"""The rows a replication worker took for its peer and the peer has not committed yet,
sans-I/O.

A worker takes what has gathered in its peer's queue (up to :data:`TAKE_ROWS` at a time)
and sends it in batches that fit a frame. When the connection fails, the rows the peer
has not committed go first on the next connection, so that a store waiting for its quorum
need not wait for repair; but only :data:`RESEND_ATTEMPTS` sends in all, so a batch the
peer keeps failing on cannot hold newer rows up for long (repair brings it later). A
peer's refusal of a row (say, of an owner outside its swarm) is not its commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .node_core import batches
from .rows import StoredMessage

#: Rows a worker takes from its peer's queue at a time.
TAKE_ROWS = 256
#: Sends of one taken set of rows before what is left of it goes to repair.
RESEND_ATTEMPTS = 3


class TakenRows:
    """See the module."""

    def __init__(self) -> None:
        self._rows: list[StoredMessage] = []
        self._sends = 0

    def __len__(self) -> int:
        return len(self._rows)

    def took(self, rows: Iterable[StoredMessage]) -> None:
        """Rows fresh from the queue, once none are left from before."""
        if self._rows:
            raise RuntimeError("rows taken before are still to be sent")
        self._rows, self._sends = list(rows), 0

    def parts(self) -> Iterator[list[StoredMessage]]:
        """One send of what is left, in batches; :meth:`done` after each is answered."""
        self._sends += 1
        yield from batches(list(self._rows))

    @staticmethod
    def committed(part: list[StoredMessage], refused: Iterable[str]) -> list[StoredMessage]:
        """Of ``part``, the rows the peer committed: all but those of the owners it
        ``refused``."""
        owners = set(refused)
        return [row for row in part if row.pubkey not in owners]

    def done(self, part: list[StoredMessage]) -> None:
        """``part`` (the first of what is left) was answered: it is not sent again."""
        del self._rows[: len(part)]

    def failed(self) -> None:
        """The connection failed: the rows left go again on the next one, unless they
        have been sent :data:`RESEND_ATTEMPTS` times (then they are repair's, and
        dropped here)."""
        if self._sends >= RESEND_ATTEMPTS:
            self._rows = []
