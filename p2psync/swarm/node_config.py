"""How a service node is configured: its loops' intervals, what it acknowledges a store
after, and what a client may cost it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..rpc import ServerLimits
from .allowance import OWNER_QUOTA_BYTES, STORE_BYTES_PER_S
from .constants import (
    ANNOUNCE_INTERVAL_S,
    REGISTRY_REFRESH_S,
    REPAIR_INTERVAL_S,
    STORE_QUORUM,
    SWEEP_INTERVAL_S,
)
from .listing import ANNOUNCEMENT_TTL_MS
from .outbound import REPLICATION_QUEUE_BYTES

MAX_SUBSCRIPTIONS_PER_CONNECTION = 64
#: How long a store waits for its quorum before the client is told ``unavailable`` (the
#: row stays here and keeps replicating; a retry, to any member, is the same message).
QUORUM_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NodeConfig:
    sweep_interval_s: float = SWEEP_INTERVAL_S
    repair_interval_s: float = REPAIR_INTERVAL_S
    registry_refresh_s: float = REGISTRY_REFRESH_S
    announce_interval_s: float = ANNOUNCE_INTERVAL_S
    #: Bytes queued for one peer's replication before new rows are left to repair.
    replication_queue_bytes: int = REPLICATION_QUEUE_BYTES
    #: Members that must hold a store before it is acknowledged, this one included; a
    #: smaller swarm needs all its members.
    store_quorum: int = STORE_QUORUM
    quorum_timeout_s: float = QUORUM_TIMEOUT_S
    #: A device subscribes to a few namespaces of one or two identities; a connection
    #: holding thousands is someone making the node fan out pushes for it.
    max_subscriptions_per_connection: int = MAX_SUBSCRIPTIONS_PER_CONNECTION
    #: What an anonymous store may cost (:mod:`.allowance`).
    store_bytes_per_s: float = STORE_BYTES_PER_S
    owner_quota_bytes: int = OWNER_QUOTA_BYTES
    limits: ServerLimits = field(default_factory=ServerLimits)

    def __post_init__(self) -> None:
        # Announcements are repeated from the refresh loop; both must come round well
        # within the registry's listing lifetime or the node drops out of the network.
        lifetime_s = ANNOUNCEMENT_TTL_MS / 1000
        if max(self.announce_interval_s, self.registry_refresh_s) > lifetime_s / 2:
            raise ValueError(
                f"announce and registry refresh intervals must be at most {lifetime_s / 2:.0f} s"
            )
        if self.store_quorum < 1:
            raise ValueError("the store quorum counts this node, so it is at least 1")
