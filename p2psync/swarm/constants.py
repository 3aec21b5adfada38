"""The numbers of DESIGN.md §4, in one place, with units in their names."""

SWARM_TARGET_SIZE = 6
SWARM_MAX_SIZE = 8

DEFAULT_TTL_MS = 86_400_000
MIN_TTL_MS = 10_000
MAX_TTL_MS = 14 * 86_400_000
MAX_DATA_BYTES = 76_800
CLOCK_SKEW_MS = 60_000
#: Members, the accepting one included, that must have committed a store before it is
#: acknowledged.
STORE_QUORUM = 2
#: Stores in one ``store_batch`` request at most.
MAX_STORE_BATCH = 64
#: Data in one ``store_batch`` of more than one store, in all, as in the largest store:
#: with its stores' other fields a batch's frame stays under 85 KiB, so it fits every
#: frame (128 KiB) and onion path (136 KiB) a store does.
MAX_STORE_BATCH_BYTES = MAX_DATA_BYTES

NAMESPACE_MESSAGES = 0
NAMESPACE_SYNC = 1
NAMESPACE_CONTROL = 2
MAX_NAMESPACE = 2**15 - 1

#: Most messages one retrieve returns, and the most bytes of message data in one reply
#: (so a reply always fits a frame; at least one message is always returned).
RETRIEVE_LIMIT = 256
RETRIEVE_MAX_BYTES = 96 * 1024
MAX_HASHES_PER_REQUEST = 1000

SWEEP_INTERVAL_S = 10.0
REPAIR_INTERVAL_S = 60.0
REGISTRY_REFRESH_S = 60.0
#: The first registry re-read after a start or a change in the listing (then doubling up
#: to the refresh interval): nodes and relays start in batches.
LISTING_SETTLING_S = 1.0
ANNOUNCE_INTERVAL_S = 120.0
REPLICATION_RETRY_S = 2.0
POLL_INTERVAL_S = 3.0

PROTOCOL_VERSION = "p2psync-storage/1"
