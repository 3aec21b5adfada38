"""The values a device's API hands out and takes, and its errors."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..errors import ConnectionLost, DecodeError, P2PSyncError, RpcError
from ..swarm.constants import DEFAULT_TTL_MS, MAX_TTL_MS, MIN_TTL_MS, POLL_INTERVAL_S
from .modes import Mode

MAX_REJECTIONS = 1000
#: Failures after which a store or a check is simply tried again later.
TRANSIENT = (RpcError, OSError, ConnectionLost, DecodeError, trio.TooSlowError)


class DeviceError(P2PSyncError):
    """A request this device cannot carry out as asked (unknown contact, wrong state…)."""


class PairingError(DeviceError):
    """Pairing cannot go on: no such request, expired, already used, wrong mode."""


class Refused(P2PSyncError):
    """An inbound record that is well formed but must not be acted on."""


#: How long after it is queued a deletion goes out (a sync copy, or an inbound message
#: every sibling has acknowledged), drawn uniformly: deleted at the acknowledgement, it
#: reached the server within milliseconds of the siblings' session traffic, and the
#: server's log carried the rhythm of sibling sync. The copy stays minutes longer, against
#: a TTL of days.
DELETE_DELAY_S = (30.0, 300.0)
#: How long after filing a message read from the swarm a device offers it to its siblings,
#: drawn uniformly: pushed at once, it followed the device's read of the account's swarm
#: within milliseconds. Siblings read the same swarm in ``linked`` mode and have their own
#: copies in ``mapped`` mode, so this delays only the acknowledgement that lets the copy go
#: early.
INBOUND_PUSH_DELAY_S = (2.0, 20.0)


def check_copy_ttls(ttl_ms: int, sync_copy_ttl_ms: int | None) -> None:
    """Refuse copy lives a swarm would refuse (``bad_ttl``, or ``bad_request`` for a
    number that is not an integer: either drops every copy for good), and a sync copy
    outliving the TTL."""
    if type(ttl_ms) is not int or not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"ttl_ms must be an int in [{MIN_TTL_MS}, {MAX_TTL_MS}]")
    if sync_copy_ttl_ms is not None and (
        type(sync_copy_ttl_ms) is not int or not MIN_TTL_MS <= sync_copy_ttl_ms <= ttl_ms
    ):
        raise ValueError(f"sync_copy_ttl_ms must be an int in [{MIN_TTL_MS}, ttl_ms]")


def check_receive_route(receive: str, rpc_route: str) -> None:
    """:class:`DeviceError` for a way of receiving the route to the swarm cannot carry:
    ``subscribe`` needs a direct connection to a service node, which shows it the
    device's address; on onion requests a device polls."""
    if rpc_route == "onion" and receive == "subscribe":
        raise DeviceError(
            "receive='subscribe' needs a direct connection to a service node, which "
            "shows it this device's address; on onion requests a device polls"
        )


@dataclass(frozen=True)
class DeviceConfig:
    """``receive``: ``"poll"`` (every ``poll_interval_s``) or ``"subscribe"`` (pushes, on
    a connection of the device's own: direct routes only, see :mod:`p2psync.onion`).
    ``direct_sync``: push to siblings over the overlay and fall back to a swarm sync copy
    only for what a sibling has not acknowledged within ``grace_s`` (otherwise every sent
    message gets its sync copies at once, as in v1.5.0).
    ``mapping_cache_s``: how long a user's device list from the file server is reused, so
    a revocation reaches senders within that time. ``retry_s`` doubles per failure up to
    ``max_retry_s`` while the outbox cannot be delivered. ``catch_up_s``: with
    ``subscribe``, how often the device drains its swarm anyway in case a push was lost
    (a phone idles longer between such wake-ups than a desktop). ``keepalive_s``: after
    how long without a word an idle sibling session (from one side) and each overlay path
    under it are checked, and in proportion how often an unchanged introset is
    republished (longer: less idle work and battery, a vanished sibling or a dead path
    noticed later; None: the overlay's and live sync's own intervals, 5 s, 2.5 min and
    15 s). ``delete_delay_s`` and
    ``inbound_push_delay_s``: the ranges of :data:`DELETE_DELAY_S` and
    :data:`INBOUND_PUSH_DELAY_S` (shorter ones show a demo's deletions sooner, at the
    cost of that timing). ``sync_copy_ttl_ms``: with ``direct_sync``, how long a sync copy
    of a sent message lives in the swarm (None: ``ttl_ms``). Shorter holds less storage
    (DESIGN.md §9: with 6 h the benchmark's traces store under 20 % of fanout's
    byte·hours); the cost is that a sibling away longer than that gets those messages
    only from a sibling directly, once they have a session (which needs both online and
    relays to reach each other), and never if that sibling is lost first."""

    receive: str = "poll"
    direct_sync: bool = True
    grace_s: float = 10.0
    hops: int = 3
    poll_interval_s: float = POLL_INTERVAL_S
    mapping_cache_s: float = 60.0
    ttl_ms: int = DEFAULT_TTL_MS
    retry_s: float = 2.0
    max_retry_s: float = 60.0
    catch_up_s: float = 60.0
    keepalive_s: float | None = None
    delete_delay_s: tuple[float, float] = DELETE_DELAY_S
    inbound_push_delay_s: tuple[float, float] = INBOUND_PUSH_DELAY_S
    sync_copy_ttl_ms: int | None = None

    def __post_init__(self) -> None:
        check_copy_ttls(self.ttl_ms, self.sync_copy_ttl_ms)
        if self.sync_copy_ttl_ms is not None and not self.direct_sync:
            raise ValueError("sync_copy_ttl_ms needs direct_sync (siblings re-sync what expired)")
        for low, high in (self.delete_delay_s, self.inbound_push_delay_s):
            if not 0 <= low <= high:
                raise ValueError("a delay range must be (low, high) with 0 <= low <= high")
        if self.receive not in ("poll", "subscribe"):
            raise ValueError("receive must be 'poll' or 'subscribe'")
        if (
            not 0 < self.retry_s <= self.max_retry_s
            or min(self.poll_interval_s, self.catch_up_s) <= 0
            or (self.keepalive_s is not None and self.keepalive_s <= 0)
        ):
            raise ValueError("intervals must be positive, retry_s <= max_retry_s")


@dataclass(frozen=True, slots=True)
class Rejection:
    """An inbound record this device refused, and why (the "clear error" for hostile input)."""

    at_ms: int
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class PairingTicket:
    """What the new device shows: the code the user compares with the primary's screen."""

    request_id: bytes
    code: str


@dataclass(frozen=True, slots=True)
class PairingOffer:
    """A pairing request as the primary shows it, waiting for the user's decision.
    ``device`` is the id the new device says it has (what it will sync as once
    accepted); only the code the user compares on both screens binds the request to
    that device."""

    request_id: bytes
    code: str
    device: str
    name: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Room:
    """A public room as :meth:`~p2psync.device.facades.Rooms.create` leaves it:
    ``created`` is False when it existed already (rooms are shared, so that is no error)."""

    name: str
    created: bool


@dataclass(frozen=True, slots=True)
class Whoami:
    """Who a device is, in one value (:meth:`~p2psync.device.device.Device.whoami`), so
    the facade keeps its verbs and a caller reads identity without a dozen properties.

    ``session_id`` is the user's id (what friends know the user by, whichever device they
    reach), ``device_id`` this device's own key (the user's too on a primary);
    ``receives_as`` the id whose swarm it reads (the account's in ``linked`` mode, its own
    in ``mapped`` mode); ``is_primary``: it may pair and revoke devices (every ``linked``
    device may); ``paired``: it joined the user by pairing; ``device_key`` its Ed25519
    public key and ``overlay_key`` what siblings reach it by on the overlay (derived, not
    its session id). ``name`` is this device's name (what siblings and the pairing screen
    show), ``display_name`` the user's (what friends see beside the user's id; "" if
    none). ``revoked_at_ms``: when the user's primary unpaired this device (it then keeps
    its history but no longer acts for the user), None while it belongs. Its store and
    signing key stay inside the device."""

    session_id: str
    device_id: str
    mode: Mode
    name: str
    display_name: str
    is_primary: bool
    paired: bool
    receives_as: str
    device_key: bytes
    overlay_key: bytes
    revoked_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """Where a device stands with its siblings, read at one moment
    (:meth:`~p2psync.device.device.Device.sync_status`).

    ``syncs_directly``: sibling sync runs over the overlay now (online, direct sync on,
    enough relays); otherwise every sent message gets its swarm sync copy.
    ``starting``: sibling sync is to run (direct sync on, a sibling's key and the
    siblings' secret known), but the overlay endpoint is still coming up (just online:
    draining the swarm, reading the relay list, building paths), so not syncing directly
    yet says nothing about relays.
    ``connected_siblings``: those with an overlay session now. ``unacknowledged``:
    messages some sibling has not acknowledged. ``resynced_siblings`` and
    ``archive_counts`` (sent, received): whole-history re-syncs and pairing-time archive
    items since it went online. ``complete_until``: everything timestamped before it is
    in this device's history. ``last_run_left``: whether the run before this one
    finished leaving (owed sync copies queued, goodbye said, stopped) rather than ending
    by a crash, a kill or a leave cut short; None for a device that never went online
    before. ``unsent``: messages (and other records) not yet stored in every swarm they
    go to; ``last_send_error``: why the last try left some unsent (None: it did not), so
    a message waiting on a recipient's full mailbox, or on swarms out of reach, says so."""

    online: bool
    syncs_directly: bool
    starting: bool
    connected_siblings: frozenset[str]
    unacknowledged: int
    resynced_siblings: frozenset[str]
    archive_counts: tuple[int, int]
    complete_until: int
    last_run_left: bool | None
    #: The relays the siblings deal their entry relays on; empty for a listing too long
    #: to pass on, which they deal by hash alone (:meth:`~p2psync.sync.records.Relays.agreed`).
    entry_listing: frozenset[bytes] | None
    unsent: int
    last_send_error: str | None
