"""What a service node's RPC handlers and its background drivers share: the node's
counters, how long one call to a peer may take, and which errors a peer causes in the
normal run of things (logged, never fatal to a loop)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import trio

from ..errors import ConnectionLost, DecodeError, RpcError
from .peer_calls import PeerCalls
from .ring import NodeInfo
from .rows import StoredMessage

PEER_CALL_TIMEOUT_S = 10.0
#: What a peer that is down, slow or confused causes in the normal run of things.
PEER_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError, trio.TooSlowError)


class Ingested(NamedTuple):
    """What came of keeping a peer's rows."""

    #: Rows that were new here.
    new: int
    #: Owners whose mailboxes had no room for (some of) their rows: those were not kept.
    over_quota: tuple[str, ...]


#: Keeps a peer's rows (those of owners this node serves, within their quota).
Ingest = Callable[[Iterable[StoredMessage]], Ingested]

#: Signed calls to a peer over the node's shared connections.
Dial = Callable[[NodeInfo], Awaitable[PeerCalls]]


@dataclass
class NodeStats:
    stored: int = 0
    duplicates: int = 0
    replicated_in: int = 0
    replication_dropped: int = 0
    repaired_in: int = 0
    repaired_out: int = 0
    handed_over: int = 0
    swept: int = 0
    rows_refused: int = 0
    #: Stores answered ``unavailable`` because too few members committed them in time.
    quorum_missed: int = 0
