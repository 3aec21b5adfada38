"""A messenger device: what client code holds (DESIGN.md §10).

``async with open_device(data_dir, network, mode="linked") as device`` opens (or creates)
the device whose state lives in ``data_dir/device.sqlite3`` and keeps it online: it
receives from its swarm (polling every 3 s, or by subscription), decrypts, verifies and
files what arrives, and delivers its durable outbox. Everything the user does is a method:
friend requests, ``send``, ``history`` and the ``incoming`` stream, pairing, open groups,
and going offline and back.

Two multi-device modes, fixed when the device is created (seed document, DESIGN.md §1):

* ``mapped`` (v1.5.0): every device has its own key. A new device asks the primary to pair
  through the primary's swarm; after the user compares a short code on both screens and
  accepts, the primary countersigns the device mapping and uploads it to the file server.
  Senders look up the mapping and store one copy per recipient device, plus a sync copy
  for each of their own other devices.
* ``linked`` (the document's future plan): the primary hands its identity seed, sealed to
  a key the new device made for this one request, to the new device after the same code
  check; from then on both are the same user with one swarm. A message is stored once
  for the recipient account, plus one sync copy in the sender's own swarm while it has
  siblings; friend requests land in the shared swarm and either device accepts them.

Everything that arrives from outside is hostile until checked: a record that does not
open, verify, decode, or belong where it was found is refused and noted in
:attr:`Device.rejections`, and the device goes on. A record that cannot be checked *yet*
(the file server is unreachable) waits in the store and is retried. Either way the read
position moves past it, so no record is read twice and none can stop the inbox: one that
trips an error nobody foresaw is refused the same way (and counted), not left to end the
receive loop and be met again, and fatally, on every later start.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nacl.utils
import trio

from overlay.constants import INTROSET_LIFETIME_MS, INTROSET_REPUBLISH_MS, PATH_PING_INTERVAL_MS
from overlay.contact import Contact as RelayContact
from overlay.endpoint import Endpoint, open_endpoint
from overlay.tasks import open_task_nursery

from ..envelope import Envelope, open_envelope, seal_envelope
from ..errors import ConnectionLost, DecodeError, P2PSyncError, RpcError
from ..fileserver import FileServerClient
from ..identity import (
    Identity,
    ed25519_matches_session_id,
    ed25519_to_x25519,
    message_hash,
    session_id_key,
)
from ..mapping import (
    PAIRING_WINDOW_MS,
    DeviceMapping,
    PairingRequest,
    Revocation,
    grant_pairing,
    revoke_pairing,
    sign_pairing_request,
)
from ..opengroup import (
    OpenGroupClient,
    PostReceipt,
    RoomMessage,
    sign_post,
    sign_room_request,
)
from ..rpc import KeyedRateLimit, RpcPool, open_rpc_pool
from ..swarm.client import Cursor, Message, SwarmClient
from ..swarm.constants import (
    CLOCK_SKEW_MS,
    DEFAULT_TTL_MS,
    NAMESPACE_CONTROL,
    NAMESPACE_MESSAGES,
    NAMESPACE_SYNC,
    POLL_INTERVAL_S,
)
from ..sync.live import Item, LiveSync
from ..sync.syncer import KEEPALIVE_S, SiblingSync
from ..wire import decode_cbor, encode_cbor
from .access import NetworkAccess
from .content import (
    MAX_TEXT_CHARS,
    MODES,
    NAMESPACE_OF,
    ContactRecord,
    Content,
    DeviceRevoked,
    FriendAccept,
    FriendRequest,
    HistoryRecord,
    PairChallenge,
    PairGrant,
    PairRequest,
    SiblingRecord,
    SyncSent,
    Text,
    decode_content,
    encode_content,
)
from .keys import choice_seed, overlay_public, overlay_seed, pairing_nonce, siblings_secret
from .pairing import (
    REQUEST_KEY_REFILL_S,
    REQUEST_REFILL_S,
    REQUESTS_BURST,
    REQUESTS_PER_KEY,
    pairing_code,
)
from .store import (
    Contact,
    Copy,
    DeviceInUse,
    DeviceStore,
    HistoryItem,
    OutboxEntry,
    Pairing,
    Pending,
)

logger = logging.getLogger(__name__)

NAMESPACES = (NAMESPACE_MESSAGES, NAMESPACE_SYNC, NAMESPACE_CONTROL)
#: Failures after which a store or a check is simply tried again later.
TRANSIENT = (RpcError, OSError, ConnectionLost, DecodeError, trio.TooSlowError)
#: Refusals that no retry can change: the copy is dropped (and logged).
PERMANENT_CODES = ("bad_request", "too_large", "bad_ttl", "unauthorized")
MAX_REJECTIONS = 1000
#: A sibling standing in for a message's origin stores the sync copy after this many
#: grace periods, if the origin has gone away without storing it.
TAKEOVER_GRACES = 3
#: How far ahead of this device's clock a message may be dated. Honest devices keep within
#: ``CLOCK_SKEW_MS`` of the storage nodes (their signed requests need it), so an honest
#: date runs ahead by a few of those at most; an hour leaves any honest clock room. A
#: message dated later (year 3000, say) is refused rather than filed at the end of its
#: conversation for ever, and not clamped to now either: each sibling would clamp to its
#: own clock, and siblings whose histories disagree on a message's time never reconcile.
MAX_AHEAD_MS = 3_600_000
#: How long a device going offline gives its outbox (the sync copies it just queued
#: among it) before it says goodbye; what is not stored by then stays in the outbox and
#: goes first on its next start.
LEAVING_S = 30.0
#: Set while the device is online: found set when it goes online, the last run ended
#: without going offline (a crash, a kill), so it still owes its siblings' sync copies.
ONLINE_META = "online"


class DeviceError(P2PSyncError):
    """A request this device cannot carry out as asked (unknown contact, wrong state…)."""


class PairingError(DeviceError):
    """Pairing cannot go on: no such request, expired, already used, wrong mode."""


class Refused(P2PSyncError):
    """An inbound record that is well formed but must not be acted on."""


class NotYet(P2PSyncError):
    """An inbound record that a sibling's record, not here yet, may make acceptable (the
    namespaces are read independently): it waits with the deferred records."""


@dataclass(frozen=True)
class DeviceConfig:
    """``receive``: ``"poll"`` (every ``poll_interval_s``) or ``"subscribe"`` (pushes).
    ``direct_sync``: push to siblings over the overlay and fall back to a swarm sync copy
    only for what a sibling has not acknowledged within ``grace_s`` (otherwise every sent
    message gets its sync copies at once, as in v1.5.0).
    ``mapping_cache_s``: how long a user's device list from the file server is reused, so
    a revocation reaches senders within that time. ``retry_s`` doubles per failure up to
    ``max_retry_s`` while the outbox cannot be delivered. ``catch_up_s``: with
    ``subscribe``, how often the device drains its swarm anyway in case a push was lost
    (a phone idles longer between such wake-ups than a desktop). ``keepalive_s``: how
    often an idle sibling session and the overlay paths under it are checked, and in
    proportion how often an unchanged introset is republished (longer: less idle work and
    battery, a vanished sibling or a dead path noticed later; None: the overlay's and live
    sync's own intervals, 5 s, 2.5 min and 15 s)."""

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

    def __post_init__(self) -> None:
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
    """A pairing request as the primary shows it, waiting for the user's decision."""

    request_id: bytes
    code: str
    device: str
    name: str
    timestamp_ms: int


def device_id_of(ed25519_public: bytes) -> str:
    """The session id of the device that signed with ``ed25519_public``."""
    converted = ed25519_to_x25519(ed25519_public)
    if converted is None:
        raise DecodeError("the signing key is not a valid Ed25519 public key")
    return "05" + converted.hex()


class Device:
    """One device of a user. Create it with :func:`open_device`."""

    def __init__(
        self,
        store: DeviceStore,
        network: NetworkAccess,
        pool: RpcPool,
        swarm: SwarmClient,
        nursery: trio.Nursery,
        config: DeviceConfig,
    ) -> None:
        self.store = store
        self.network = network
        self.clock = network.clock
        self.config = config
        self._pool = pool
        self.swarm = swarm
        self._nursery = nursery
        mode = store.get_meta("mode")
        device_seed = store.get_meta("device_seed")
        assert mode is not None and device_seed is not None
        self.mode = mode.decode()
        self.name = (store.get_meta("name") or b"").decode()
        #: The device's own key: its identity in ``mapped`` mode, its overlay key in ``linked``.
        self.device_identity = Identity(device_seed)
        #: What siblings reach this device by on the overlay (derived, not its Session id).
        self.overlay_key = overlay_public(device_seed)
        self._sync: SiblingSync | None = None
        self._retrying = False
        self._sync_scope = trio.CancelScope()
        self.rejections: deque[Rejection] = deque(maxlen=MAX_REJECTIONS)
        #: Every inbound record refused since the device opened (``rejections`` keeps the
        #: latest ``MAX_REJECTIONS``).
        self.rejected = 0
        self._pairing_limit = KeyedRateLimit(
            REQUESTS_PER_KEY,
            REQUEST_KEY_REFILL_S,
            REQUESTS_BURST,
            REQUEST_REFILL_S,
            self.clock.now_ms() / 1000,
        )
        self._device_sets: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._changed = trio.Event()
        self._paired = trio.Event()
        self._outbox_wakeup = trio.Event()
        self._outbox_passed = trio.Event()
        self._receive_scope = trio.CancelScope()
        self._online_scope: trio.CancelScope | None = None
        #: One switch at a time: going offline takes a while (the copies it stores first),
        #: and coming back meanwhile must wait for it rather than find the device online.
        self._switching = trio.Lock()
        self._offline = trio.Event()
        self._offline.set()
        self._load_identity()

    def _load_identity(self) -> None:
        #: The identity this device receives as and signs with: its own in ``mapped``
        #: mode, the account's (shared by every sibling) in ``linked`` mode.
        self.identity, self.user_id = _acting_identity(self.store, self.device_identity)
        if self.store.get_meta("paired"):
            self._paired.set()

    # --- who this is ------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.device_identity.session_id

    @property
    def session_id(self) -> str:
        """The user's id: what friends know this user by, whichever device they reach."""
        return self.user_id

    @property
    def is_primary(self) -> bool:
        return self.mode == "linked" or self.user_id == self.device_id

    @property
    def online(self) -> bool:
        return not self._offline.is_set()

    def __repr__(self) -> str:
        return f"Device({self.name!r}, {self.mode}, user {self.user_id[:10]}…)"

    # --- history ----------------------------------------------------------------------------------

    def history(self, conversation: str | None = None) -> list[HistoryItem]:
        """Messages in ``(timestamp, id)`` order: one conversation, or all of them."""
        return self.store.history(conversation)

    async def incoming(self, *, after_seq: int | None = None) -> AsyncGenerator[HistoryItem, None]:
        """Every message filed from now on (or after ``after_seq``), sent ones synced from
        siblings included, in arrival order; runs until the caller stops iterating."""
        arrivals = self.store.arrivals(0)
        seq = (arrivals[-1].seq if arrivals else 0) if after_seq is None else after_seq
        while True:
            changed = self._changed
            items = self.store.arrivals(seq)
            for item in items:
                seq = item.seq
                yield item
            if not items:
                await changed.wait()

    def _file_message(self, digest: bytes, record: HistoryRecord) -> bool:
        """Add to history unless known; True if it was new. :class:`Refused` if dated
        further ahead than ``MAX_AHEAD_MS``."""
        if record.timestamp_ms > self.clock.now_ms() + MAX_AHEAD_MS:
            raise Refused(f"a message dated {record.timestamp_ms}, ahead of this device's clock")
        if self.store.add_message(
            digest,
            record.timestamp_ms,
            record.conversation,
            record.outgoing,
            record.sender,
            record.device,
            record.text,
        ):
            self._notify()
            return True
        return False

    async def wait_for(self, condition: Callable[[Device], bool]) -> None:
        """Wait until ``condition(device)`` holds, checked again whenever this device files
        something (a message, a contact change, a pairing request); put a deadline on it."""
        while True:
            changed = self._changed
            if condition(self):
                return
            await changed.wait()

    def _notify(self) -> None:
        """Wake whoever waits for news (the ``incoming`` stream, pairing offers)."""
        self._changed.set()
        self._changed = trio.Event()

    # --- contacts and friend requests -------------------------------------------------------------

    def contacts(self) -> list[Contact]:
        return self.store.contacts()

    def contact(self, user: str) -> Contact | None:
        return self.store.contact(user)

    async def request_friend(self, user: str, text: str = "") -> None:
        """Ask ``user`` to be friends; if they already asked us, this accepts instead."""
        _check_user_id(user)
        if user == self.user_id:
            raise DeviceError("a user cannot befriend themselves")
        _check_text(text)
        existing = self.store.contact(user)
        if existing is not None and existing.state == "pending":
            await self.accept_friend(user)
            return
        if existing is not None and existing.state == "friend":
            raise DeviceError(f"{user[:12]}… is already a friend")
        devices = await self._own_devices()
        with self.store.transaction():
            self._queue(FriendRequest(self.user_id, devices, text), user)
            self._set_contact(Contact(user, "requested", (user,), text))
        self._wake_outbox()

    async def accept_friend(self, user: str) -> None:
        contact = self.store.contact(user)
        if contact is None or contact.state != "pending":
            raise DeviceError(f"no friend request from {user[:12]}… is waiting")
        await self._befriend(contact)

    async def _befriend(self, contact: Contact) -> None:
        """Tell ``contact`` every device of ours, and our siblings the new friend."""
        devices = await self._own_devices()
        with self.store.transaction():
            self._queue(FriendAccept(self.user_id, devices), contact.user)
            self._set_contact(replace(contact, state="friend"))
        self._wake_outbox()

    async def decline_friend(self, user: str) -> None:
        """Refuse a request; the requester is not told (that would confirm we exist)."""
        contact = self.store.contact(user)
        if contact is None or contact.state != "pending":
            raise DeviceError(f"no friend request from {user[:12]}… is waiting")
        with self.store.transaction():
            self._set_contact(replace(contact, state="declined"))
        self._wake_outbox()

    def _set_contact(self, contact: Contact) -> None:
        """Store a contact change and queue it for the siblings (inside a transaction)."""
        self.store.put_contact(contact)
        self._queue(contact.record, self.user_id)
        self._notify()

    # --- sending ----------------------------------------------------------------------------------

    async def send(self, user: str, text: str) -> bytes:
        """Accept a message for ``user`` (a friend) and return its id.

        When this returns the message is in the durable outbox and the history; it is
        delivered in the background, across restarts if need be (:meth:`flush` waits)."""
        contact = self.store.contact(user)
        if contact is None or contact.state != "friend":
            raise DeviceError(f"{user[:12]}… is not a friend: send a friend request first")
        _check_text(text)
        with self.store.transaction():
            digest = self._queue(Text(self.user_id, text), user)
            assert digest is not None
            now = self.clock.now_ms()
            record = HistoryRecord(now, user, True, self.user_id, self.device_id, text)
            self._file_message(digest, record)
            self._share(digest, record, inbound=False)
        self._wake_outbox()
        return digest

    def _queue(self, content: Content, recipient: str) -> bytes | None:
        """Put ``content`` in the outbox (inside a transaction). A record for another user
        is sealed to them at once, so its id (the hash of that copy) is known and stable;
        the copies for their other devices and for our siblings follow when it is sent."""
        kind, body = encode_content(content)
        now = self.clock.now_ms()
        if recipient == self.user_id:
            self.store.add_outbox(kind, recipient, body, now, None)
            return None
        data = seal_envelope(self.identity, session_id_key(recipient), kind, body, now)
        digest = message_hash(data)
        seq = self.store.add_outbox(kind, recipient, body, now, digest)
        self.store.add_copies([Copy(seq, recipient, NAMESPACE_OF[kind], data)])
        return digest

    def _wake_outbox(self) -> None:
        self._outbox_wakeup.set()

    async def flush(self) -> None:
        """Wait until everything in the outbox is stored in its swarms (while offline,
        that is never: put a deadline on it)."""
        while self.store.outbox():
            await self._outbox_passed.wait()

    async def _deliver_outbox(self) -> None:
        """Store every pending copy, oldest entry first; raise on the first failure."""
        for entry in self.store.outbox():
            if not entry.expanded:
                self.store.expand(entry.seq, await self._expand(entry))
            for copy in self.store.copies(entry.seq):
                ttl_ms = PAIRING_WINDOW_MS if copy.namespace == NAMESPACE_CONTROL else None
                try:
                    await self.swarm.store(
                        copy.owner, copy.namespace, copy.data, ttl_ms or self.config.ttl_ms
                    )
                except RpcError as exc:
                    if exc.code not in PERMANENT_CODES:
                        raise
                    logger.error("dropping a copy for %s: %s", copy.owner[:12], exc)
                self.store.copy_stored(copy)
        for owner, namespace, digest in self.store.deletions():
            if owner == self.identity.session_id:  # only an owner may delete
                await self.swarm.delete(self.identity, namespace, [digest])
            self.store.deleted(owner, namespace, digest)

    async def _expand(self, entry: OutboxEntry) -> list[Copy]:
        """The copies beyond the first: the recipient's other devices (a ``mapped``
        recipient, whatever this device's mode: its devices have their own swarms) and
        our siblings' sync copies."""
        copies = []
        content = decode_content(entry.kind, entry.body)
        if entry.recipient != self.user_id:
            fanned = replace(content, id=entry.message_id) if isinstance(content, Text) else content
            for device in await self._devices_of(entry.recipient):
                if device != entry.recipient:
                    copies.append(self._seal_copy(entry.seq, device, fanned, entry.timestamp_ms))
        if isinstance(content, Text):
            if self.config.direct_sync:
                return copies  # siblings get it directly, or a sync copy after the grace
            assert entry.message_id is not None
            content = SyncSent(entry.message_id, entry.recipient, entry.timestamp_ms, content.text)
        elif entry.recipient != self.user_id:
            return copies
        for sibling in await self._sibling_owners():
            copies.append(self._seal_copy(entry.seq, sibling, content, entry.timestamp_ms))
        return copies

    def _seal_copy(self, seq: int, owner: str, content: Content, timestamp_ms: int) -> Copy:
        kind, body = encode_content(content)
        data = seal_envelope(self.identity, session_id_key(owner), kind, body, timestamp_ms)
        return Copy(seq, owner, NAMESPACE_OF[kind], data)

    async def _pump_outbox(self) -> None:
        """Deliver the outbox whenever it changes, and re-check deferred inbound records;
        back off while either keeps failing."""
        delay = self.config.retry_s
        while True:
            wakeup = self._outbox_wakeup = trio.Event()
            try:
                await self._deliver_outbox()
                await self._retry_deferred()
            except TRANSIENT as exc:
                logger.info("%s: outbox waits to retry: %s", self.name, exc)
            if self.store.outbox() or self.store.deferred() or self.store.deletions():
                timeout, delay = delay, min(self.config.max_retry_s, delay * 2)
            else:
                timeout, delay = math.inf, self.config.retry_s
            self._outbox_passed.set()
            self._outbox_passed = trio.Event()
            with trio.move_on_after(timeout):
                await wakeup.wait()

    # --- who is who -------------------------------------------------------------------------------

    async def _devices_of(self, user: str, *, fresh: bool = False) -> tuple[str, ...]:
        """Every device of ``user``, from the file server's verified mappings (cached for
        ``mapping_cache_s``); the last known list if the file server cannot be reached.
        A ``linked`` user has none there (one key for every device); a ``linked`` device
        still asks about others, who may be ``mapped``."""
        if self.mode == "linked" and user == self.user_id:
            return (user,)
        now = trio.current_time()
        cached = self._device_sets.get(user)
        if cached is not None and not fresh and now - cached[0] < self.config.mapping_cache_s:
            return cached[1]
        try:
            client = FileServerClient(await self._pool.get(self.network.fileserver_url))
            answer = await client.get_mappings(user, self.store.revocations())
            self.store.keep_revocations(answer.revocations)
            devices = answer.devices
        except TRANSIENT as exc:
            if fresh:
                raise
            logger.info("%s: file server lookup of %s failed: %s", self.name, user[:12], exc)
            if user == self.user_id:
                return (self.user_id, self.device_id, *self.store.siblings())
            known = self.store.contact(user)
            return known.devices if known is not None else (user,)
        self._device_sets[user] = (now, devices)
        return devices

    async def _own_devices(self) -> tuple[str, ...]:
        if self.mode == "linked":
            return (self.user_id,)
        return tuple(sorted(set(await self._devices_of(self.user_id))))

    async def _sibling_owners(self) -> list[str]:
        """Where sync copies go: each other device (``mapped``: as the file server lists
        them, so a revoked device gets none), or the account's own swarm while it has
        siblings (``linked``: one copy that every sibling reads)."""
        if self.mode == "linked":
            return [self.user_id] if self.store.siblings() else []
        return sorted(set(await self._devices_of(self.user_id)) - {self.device_id})

    async def _check_device(self, device: str, user: str) -> None:
        """Refuse unless ``device`` is a device of ``user`` (same key in ``linked`` mode).
        Known devices pass at once, unless we have seen them revoked; others are looked up
        on the file server."""
        if device == user:
            return
        if self.mode == "linked" and user == self.user_id:
            raise Refused("the signing key is not this account's")
        known = self.store.contact(user)
        if (
            known is not None
            and device in known.devices
            and not self.store.is_revoked(user, device)
        ):
            return
        if user == self.user_id and device in self.store.siblings():
            return
        if device not in await self._devices_of(user, fresh=True):
            raise Refused(f"{device[:12]}… is not a device of {user[:12]}…")

    async def _check_sibling(self, envelope: Envelope, device: str) -> None:
        if self.mode == "linked":
            if envelope.sender != self.identity.ed25519_public:
                raise Refused("a sync record not signed by this account")
            return
        if device == self.device_id:
            raise Refused("a sync record signed by this very device")
        await self._check_device(device, self.user_id)

    # --- receiving --------------------------------------------------------------------------------

    def _streams(self) -> list[tuple[Identity, int]]:
        streams = [(self.identity, namespace) for namespace in NAMESPACES]
        for pairing in self.store.pairings(incoming=False, state="waiting"):
            if self.mode == "linked":
                streams.append((Identity(_pairing_state(pairing)["secret"]), NAMESPACE_CONTROL))
        return streams

    async def _receive(self, identity: Identity, namespace: int) -> None:
        owner = identity.session_id
        cursor = Cursor(last_hash=self.store.cursor(owner, namespace))

        async def file_batch(batch: list[Message]) -> None:
            for message in batch:
                await self._process(identity, namespace, message.hash, message.data)
                # Per message: a restart (or a stream change) resumes right after it.
                self.store.set_cursor(owner, namespace, message.hash)

        if self.config.receive == "subscribe":
            await self.swarm.subscribe(
                identity, namespace, file_batch, cursor=cursor, catch_up_s=self.config.catch_up_s
            )
        else:
            await self.swarm.poll(
                identity,
                namespace,
                file_batch,
                cursor=cursor,
                interval_s=self.config.poll_interval_s,
            )

    async def sync_now(self) -> None:
        """Fetch and file everything waiting in this device's swarms now."""
        for identity, namespace in self._streams():
            owner = identity.session_id
            cursor = Cursor(last_hash=self.store.cursor(owner, namespace))
            batch, _ = await self.swarm.drain(identity, namespace, cursor)
            for message in batch:
                await self._process(identity, namespace, message.hash, message.data)
                self.store.set_cursor(owner, namespace, message.hash)

    async def _process(
        self, identity: Identity, namespace: int, digest: bytes, data: bytes
    ) -> None:
        kind = "envelope"
        try:
            envelope = open_envelope(identity, data)
            kind = envelope.kind
            content = decode_content(envelope.kind, envelope.body)
            if NAMESPACE_OF[kind] != namespace:
                raise Refused(f"a {kind} record does not belong in namespace {namespace}")
            await self._apply(digest, envelope, device_id_of(envelope.sender), content)
        except (DecodeError, Refused) as exc:
            self._reject(kind, str(exc))
        except (*TRANSIENT, NotYet) as exc:
            logger.info("%s: %s waits to be checked: %s", self.name, kind, exc)
            self.store.defer(digest, identity.session_id, namespace, data)
            if not self._retrying:
                self._wake_outbox()  # the pump retries deferred records, with back-off
        except Exception as exc:  # see the module docstring: one record never stops the inbox
            self._reject(kind, f"unexpected {type(exc).__name__}: {exc}")

    async def _retry_deferred(self) -> None:
        identities = {identity.session_id: identity for identity, _ in self._streams()}
        self._retrying = True
        try:
            for digest, owner, namespace, data in self.store.deferred():
                self.store.undefer(digest)
                if owner in identities:
                    await self._process(identities[owner], namespace, digest, data)
        finally:
            self._retrying = False

    def _reject(self, kind: str, reason: str) -> None:
        logger.warning("%s: refused a %s: %s", self.name, kind, reason)
        self.rejected += 1
        self.rejections.append(Rejection(self.clock.now_ms(), kind, reason))

    async def _apply(
        self, digest: bytes, envelope: Envelope, device: str, content: Content
    ) -> None:
        match content:
            case Text():
                await self._on_text(digest, envelope, device, content)
            case FriendRequest():
                await self._on_friend_request(device, content)
            case FriendAccept():
                await self._on_friend_accept(device, content)
            case DeviceRevoked():
                self._on_device_revoked(device, content)
            case SyncSent():
                await self._check_sibling(envelope, device)
                self._file_message(
                    content.id,
                    HistoryRecord(
                        content.timestamp_ms, content.to, True, self.user_id, device, content.text
                    ),
                )
                if self.mode == "mapped":
                    # Only this device reads its own swarm: the copy has done its job.
                    self.store.queue_deletions([(self.device_id, NAMESPACE_SYNC, digest)])
                    self._wake_outbox()
                else:
                    self._covered(content.id)
            case SiblingRecord():
                await self._check_sibling(envelope, device)
                if content.device != self.device_id:
                    self.store.add_sibling(content.device, content.name, content.overlay)
                    self._sync_scope.cancel()  # sync with the new sibling too
            case ContactRecord():
                await self._check_sibling(envelope, device)
                self._merge_contact(content)
            case PairRequest():
                await self._on_pair_request(digest, envelope, device, content)
            case PairChallenge():
                self._on_pair_challenge(envelope, content)
            case PairGrant():
                self._on_pair_grant(envelope, content)

    async def _on_text(self, digest: bytes, envelope: Envelope, device: str, text: Text) -> None:
        contact = self.store.contact(text.user)
        # A pending requester's message is kept: a sibling may have accepted already (its
        # sync record can arrive after the message), and if not, it reads as a request.
        if contact is None and self.store.siblings():
            raise NotYet(f"a message from {text.user[:12]}…, unknown here so far")
        if contact is None or contact.state == "declined":
            raise Refused(f"a message from {text.user[:12]}…, who is not a friend")
        await self._check_device(device, text.user)
        record = HistoryRecord(
            envelope.timestamp_ms, text.user, False, text.user, device, text.text
        )
        message_id = text.id or digest  # one id on every device of ours (``mapped``)
        with self.store.transaction():
            if self._file_message(message_id, record) and self.mode == "linked":
                # Siblings read the same swarm; sharing it directly lets it go early.
                self._share(digest, record, inbound=True)

    async def _on_friend_request(self, device: str, request: FriendRequest) -> None:
        if request.user == self.user_id:
            raise Refused("a friend request from this user's own device")
        await self._check_device(device, request.user)
        contact = self.store.contact(request.user)
        devices = await self._devices_of(request.user)
        if contact is None:
            self.store.put_contact(Contact(request.user, "pending", devices, request.text))
            self._notify()
        elif contact.state == "requested":
            # Both asked: that is agreement on both sides.
            await self._befriend(replace(contact, devices=devices))

    async def _on_friend_accept(self, device: str, accept: FriendAccept) -> None:
        contact = self.store.contact(accept.user)
        if contact is None and self.store.siblings():
            raise NotYet(f"an acceptance from {accept.user[:12]}…, unknown here so far")
        if contact is None or contact.state not in ("requested", "friend"):
            raise Refused(f"an acceptance from {accept.user[:12]}…, who was not asked")
        await self._check_device(device, accept.user)
        devices = await self._devices_of(accept.user)
        # Every sibling receives the acceptance itself: nothing to tell them.
        self.store.put_contact(replace(contact, state="friend", devices=devices))
        self._notify()

    def _on_device_revoked(self, device: str, content: DeviceRevoked) -> None:
        """A friend's primary revoked one of its devices: stop trusting it at once (its
        messages are refused and nothing is fanned out to it), whatever the file server
        says later."""
        revocation = Revocation.from_bytes(content.revocation)
        revocation.verify()
        if device != revocation.primary:
            raise Refused("a revocation must come from the primary that signed it")
        contact = self.store.contact(revocation.primary)
        if contact is None or contact.state != "friend":
            raise Refused(f"a revocation from {revocation.primary[:12]}…, not a friend")
        devices = tuple(d for d in contact.devices if d != revocation.secondary)
        with self.store.transaction():
            self.store.keep_revocations([revocation])
            self.store.put_contact(replace(contact, devices=devices))
        self._device_sets.pop(revocation.primary, None)
        self._notify()

    def _merge_contact(self, record: ContactRecord) -> None:
        """A sibling's contact change. ``friend`` is final; otherwise the newer state wins."""
        current = self.store.contact(record.user)
        if current is not None and current.state == "friend" and record.state != "friend":
            return
        note = current.note if current is not None else ""
        self.store.put_contact(Contact(record.user, record.state, record.devices, note))
        self._notify()

    # --- pairing ----------------------------------------------------------------------------------

    async def request_pairing(self, primary: str, name: str | None = None) -> PairingTicket:
        """On a new device: ask ``primary`` (the user's existing device) to pair, and wait
        for its challenge (it must be online) to return the ticket. Show the ticket's code;
        the user accepts on the primary when it shows the same code, and
        :meth:`wait_paired` returns once the grant arrived and checked out."""
        try:
            session_id_key(primary)
        except DecodeError:
            raise PairingError(f"{primary!r} is not a session id") from None
        if self._paired.is_set() or self.store.siblings():
            raise PairingError("this device is already paired")
        if primary in (self.user_id, self.device_id):
            raise PairingError("a device cannot pair with itself")
        if self.store.contacts() or self.store.history():
            raise PairingError("only a new device (no contacts, no history) can join a user")
        now = self.clock.now_ms()
        device_name = name or self.name
        if self.mode == "mapped":
            sender = self.device_identity
            request = sign_pairing_request(sender, primary, now).to_bytes()
            secret = request
        else:
            sender = Identity.generate()  # the grant (with the seed) is sealed to this key
            request, secret = None, sender.seed
        kind, body = encode_content(
            PairRequest(self.mode, self.device_id, self.overlay_key, device_name, now, request)
        )
        data = seal_envelope(sender, session_id_key(primary), kind, body, now)
        await self.swarm.store(primary, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS)
        digest = message_hash(data)
        state = encode_cbor({"secret": secret})
        self.store.put_pairing(Pairing(digest, False, primary, device_name, now, "waiting", state))
        self._receive_scope.cancel()  # listen where the challenge and the grant will arrive
        with trio.move_on_after(PAIRING_WINDOW_MS / 1000):
            await self.wait_for(lambda device: device._challenge_nonce(digest) is not None)
        nonce = self._challenge_nonce(digest)
        if nonce is None:
            raise PairingError(f"{primary[:12]}… did not answer in time: is it online? Ask again")
        return PairingTicket(digest, pairing_code(digest, nonce))

    def _challenge_nonce(self, request_id: bytes) -> bytes | None:
        pairing = self.store.pairing(request_id)
        return None if pairing is None else _pairing_state(pairing).get("nonce")

    async def wait_paired(self) -> None:
        await self._paired.wait()

    @property
    def paired(self) -> bool:
        return self._paired.is_set()

    def pairing_requests(self) -> list[PairingOffer]:
        """Requests from new devices waiting for the user to compare codes and accept."""
        now = self.clock.now_ms()
        return [
            PairingOffer(p.request_id, _offer_code(p), p.peer, p.name, p.timestamp_ms)
            for p in self.store.pairings(incoming=True, state="pending")
            if p.timestamp_ms >= now - PAIRING_WINDOW_MS
        ]

    def _pending_offer(self, code: str) -> Pairing:
        wanted = code.replace(" ", "")
        matches = [
            p
            for p in self.store.pairings(incoming=True, state="pending")
            if _offer_code(p).replace(" ", "") == wanted
        ]
        if not matches:
            raise PairingError(f"no pairing request is waiting with code {code}")
        if len(matches) > 1:
            # Someone ground out a request showing the same code: never guess which.
            for match in matches:
                self.store.put_pairing(replace(match, state="declined"))
            raise PairingError(
                f"{len(matches)} pairing requests show code {code}: all refused, pair again"
            )
        pairing = matches[0]
        if pairing.timestamp_ms < self.clock.now_ms() - PAIRING_WINDOW_MS:
            raise PairingError("that pairing request expired: start pairing again")
        return pairing

    async def accept_pairing(self, code: str) -> str:
        """On the primary, after the user saw ``code`` on both screens: grant the request
        and return the new device's id."""
        pairing = self._pending_offer(code)
        joining = decode_cbor(pairing.data)  # our own record of the request
        assert isinstance(joining, dict)
        device, overlay = str(joining["device"]), bytes(joining["overlay"])
        contacts = tuple(c.record for c in self.store.contacts())
        secret = self._siblings_secret() or self._make_siblings_secret()
        keys = self.store.sibling_overlay_keys()
        names = self.store.siblings()
        devices = (
            SiblingRecord(self.device_id, self.overlay_key, self.name),
            *(SiblingRecord(d, keys[d], names[d]) for d in keys if d != device),
        )
        if self.mode == "mapped":
            if not self.is_primary:
                raise PairingError("only the primary device can pair new devices")
            # The grant goes to the new device's own key, which is also its id.
            recipient = device
            mapping = grant_pairing(self.identity, PairingRequest.from_bytes(joining["request"]))
            client = FileServerClient(await self._pool.get(self.network.fileserver_url))
            await client.put_mapping(mapping)
            self._device_sets.pop(self.user_id, None)
            grant = PairGrant(
                pairing.request_id, mapping.to_bytes(), None, secret, devices, contacts
            )
        else:
            # The grant goes to the key made for this request, not to the device's own.
            recipient = pairing.peer
            grant = PairGrant(
                pairing.request_id, None, self.identity.seed, secret, devices, contacts
            )
        kind, body = encode_content(grant)
        data = seal_envelope(
            self.identity, session_id_key(recipient), kind, body, self.clock.now_ms()
        )
        await self.swarm.store(recipient, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS)
        with self.store.transaction():
            self.store.put_pairing(replace(pairing, state="accepted"))
            self.store.add_sibling(device, pairing.name, overlay)
            if keys:  # the other siblings learn of the new one
                self._queue(SiblingRecord(device, overlay, pairing.name), self.user_id)
        self._wake_outbox()
        self._sync_scope.cancel()  # sync with the new sibling too
        return device

    async def decline_pairing(self, code: str) -> None:
        pairing = self._pending_offer(code)
        self.store.put_pairing(replace(pairing, state="declined"))

    async def _on_pair_request(
        self, digest: bytes, envelope: Envelope, sender: str, request: PairRequest
    ) -> None:
        known = self.store.pairing(digest)
        if known is not None:
            # Seen again: our own request in the swarm we now share (``linked``), or a
            # re-delivery (a read from another node repeats the last 30 s) is news to
            # nobody; an answered request stored again after its window is a replay.
            now = self.clock.now_ms()
            answered = known.incoming and known.state != "pending"
            if answered and known.timestamp_ms < now - PAIRING_WINDOW_MS:
                raise Refused("a replayed pairing request (it was already answered)")
            return
        if request.mode != self.mode:
            raise Refused(f"a {request.mode} pairing request to a {self.mode} device")
        now = self.clock.now_ms()
        if not now - PAIRING_WINDOW_MS <= request.timestamp_ms <= now + CLOCK_SKEW_MS:
            raise Refused("an expired (or replayed) pairing request")
        if request.device in self.store.siblings():
            if self.mode == "linked":
                return  # a sibling's own request, still in the swarm the account shares
            raise Refused("a pairing request from a device that is already paired")
        # Before any work that costs us (checking the signed request, signing a challenge,
        # storing it): anyone can seal requests to us (see :mod:`.pairing`).
        if not self._pairing_limit.allow(envelope.sender, now / 1000):
            raise Refused("too many pairing requests: this one is dropped")
        joining = {"device": request.device, "overlay": request.overlay}
        if self.mode == "mapped":
            if request.request is None:
                raise Refused("a mapped pairing request without the signed request")
            signed = PairingRequest.from_bytes(request.request)
            signed.verify()
            if (
                signed.primary != self.user_id
                or signed.secondary != request.device
                or signed.secondary_key != envelope.sender
                or signed.timestamp_ms != request.timestamp_ms
            ):
                raise Refused("the signed pairing request does not match its envelope")
            peer, joining = request.device, {**joining, "request": request.request}
        else:
            peer = sender
        # The challenge goes out before the request is filed: if storing it fails, the
        # request is retried whole.
        nonce = pairing_nonce(self.identity.seed, digest)
        kind, body = encode_content(PairChallenge(digest, nonce))
        data = seal_envelope(self.identity, session_id_key(peer), kind, body, now)
        await self.swarm.store(peer, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS)
        self.store.put_pairing(
            Pairing(
                digest,
                True,
                peer,
                request.name,
                request.timestamp_ms,
                "pending",
                encode_cbor({**joining, "nonce": nonce}),
            )
        )
        self._notify()

    def _on_pair_challenge(self, envelope: Envelope, challenge: PairChallenge) -> None:
        pairing = self.store.pairing(challenge.request_id)
        if pairing is None or pairing.incoming:
            raise Refused("a pairing challenge for no request of this device")
        if not ed25519_matches_session_id(envelope.sender, pairing.peer):
            raise Refused("a pairing challenge not signed by the device pairing was asked of")
        state = _pairing_state(pairing)
        if "nonce" in state:
            if state["nonce"] != challenge.nonce:
                raise Refused("a second, different challenge for one pairing request")
            return  # seen again
        state["nonce"] = challenge.nonce
        self.store.put_pairing(replace(pairing, data=encode_cbor(state)))
        self._notify()

    def _on_pair_grant(self, envelope: Envelope, grant: PairGrant) -> None:
        pairing = self.store.pairing(grant.request_id)
        if pairing is not None and not pairing.incoming and pairing.state == "paired":
            return  # seen before a restart: already applied
        if pairing is None or pairing.incoming or pairing.state != "waiting":
            raise Refused("a pairing grant for no request of this device")
        if not ed25519_matches_session_id(envelope.sender, pairing.peer):
            raise Refused("a pairing grant not signed by the device pairing was asked of")
        if self.mode == "mapped":
            if grant.mapping is None:
                raise Refused("a mapped pairing grant without the mapping")
            mapping = DeviceMapping.from_bytes(grant.mapping)
            mapping.verify()
            if (
                mapping.primary != pairing.peer
                or mapping.secondary != self.device_id
                or mapping.timestamp_ms != pairing.timestamp_ms
            ):
                raise Refused("the granted mapping is not the one this device asked for")
        elif grant.seed is None or Identity(grant.seed).session_id != pairing.peer:
            raise Refused("the handed-over identity is not the primary's")
        with self.store.transaction():
            if grant.seed is not None:
                self.store.set_meta("account_seed", grant.seed)
            self.store.set_meta("user", pairing.peer.encode())
            self.store.set_meta("paired", b"1")
            self.store.put_pairing(replace(pairing, state="paired"))
            self.store.set_meta("secret", grant.secret)
            for sibling in grant.devices:
                if sibling.device != self.device_id:
                    self.store.add_sibling(sibling.device, sibling.name, sibling.overlay)
            for record in grant.contacts:
                self.store.put_contact(Contact(record.user, record.state, record.devices))
        self._load_identity()
        self._paired.set()
        self._receive_scope.cancel()  # now receive as the user
        self._sync_scope.cancel()
        self._notify()

    async def revoke_device(self, device: str) -> None:
        """On the primary (``mapped``): unpair ``device``; senders stop reaching it once
        their cached device list expires, and this device stops syncing to it at once."""
        if self.mode == "linked":
            raise DeviceError(
                "linked devices share one identity: revoking one needs a new identity"
            )
        if not self.is_primary:
            raise DeviceError("only the primary device can revoke a device")
        revocation = revoke_pairing(self.identity, device, self.clock.now_ms())
        client = FileServerClient(await self._pool.get(self.network.fileserver_url))
        await client.revoke_mapping(revocation)
        with self.store.transaction():
            self.store.keep_revocations([revocation])
            self.store.remove_sibling(device)
            # Friends hear it from us too, so neither a stale cache nor a file server
            # that hides the revocation keeps them trusting the device.
            for contact in self.store.contacts():
                if contact.state == "friend":
                    self._queue(DeviceRevoked(revocation.to_bytes()), contact.user)
        self._device_sets.pop(self.user_id, None)
        self._wake_outbox()

    # --- open groups ------------------------------------------------------------------------------

    async def _opengroup(self) -> OpenGroupClient:
        return OpenGroupClient(await self._pool.get(self.network.opengroup_url))

    async def create_room(self, room: str) -> bool:
        """Create a public room (signed by this user: the server rations rooms per key);
        False if it exists already."""
        request = sign_room_request(self.identity, room, self.clock.now_ms())
        return await (await self._opengroup()).create_room(request)

    async def post(self, room: str, text: str) -> PostReceipt:
        """Post to a public room, signed by this device; the server attributes it to the user."""
        claim = None if self.is_primary else self.user_id
        post = sign_post(self.identity, room, text.encode(), self.clock.now_ms(), primary=claim)
        return await (await self._opengroup()).post(post)

    async def room_messages(self, room: str, since: int = 0) -> list[RoomMessage]:
        messages, _ = await (await self._opengroup()).messages(room, since)
        return messages

    # --- direct sync with siblings ------------------------------------------------------------

    def _siblings_secret(self) -> bytes | None:
        if self.mode == "linked":
            return siblings_secret(self.identity.seed)
        return self.store.get_meta("secret")

    def _make_siblings_secret(self) -> bytes:
        secret = nacl.utils.random(32)
        self.store.set_meta("secret", secret)
        return secret

    def _share(self, digest: bytes, record: HistoryRecord, *, inbound: bool) -> None:
        """Hand a filed message to live sync (inside the transaction that filed it)."""
        if not self.config.direct_sync or not self.store.siblings():
            return
        now = self.clock.now_ms()
        body = record.to_bytes()
        self.store.add_pending(digest, now, body, inbound)
        if self._sync is not None:
            self._sync.publish(Item(digest, record.timestamp_ms, body), now)

    async def _sync_with_siblings(self) -> None:
        """Run live sync while online; start again when the siblings change."""
        if not self.config.direct_sync:
            return
        while True:
            with trio.CancelScope() as self._sync_scope:
                keys = self.store.sibling_overlay_keys()
                secret = self._siblings_secret()
                if not keys or secret is None:
                    await trio.sleep_forever()
                assert secret is not None
                # A returning device first takes what the swarm still holds.
                with trio.move_on_after(60):
                    try:
                        await self.sync_now()
                    except TRANSIENT as exc:
                        logger.info("%s: could not drain the swarm first: %s", self.name, exc)
                try:
                    contacts = await self.network.relay_contacts()
                except TRANSIENT as exc:
                    logger.info("%s: no relay list, syncing through the swarm: %s", self.name, exc)
                    contacts = []
                async with _maybe_endpoint(self, contacts) as endpoint:
                    self._sync = SiblingSync(
                        endpoint,
                        secret,
                        keys,
                        self.clock,
                        self,
                        has=self.store.has_message,
                        grace_ms=int(self.config.grace_s * 1000),
                        keepalive_s=self.config.keepalive_s or KEEPALIVE_S,
                    )
                    for pending in self.store.pending():
                        self._publish_pending(self._sync, pending)
                    try:
                        await self._sync.run()
                    finally:
                        self._sync = None

    @property
    def unacknowledged(self) -> int:
        """Messages some sibling has not acknowledged yet."""
        return len(self.store.pending())

    @property
    def connected_siblings(self) -> set[str]:
        """Siblings this device has an overlay session with right now."""
        return set() if self._sync is None else self._sync.connected

    def siblings(self) -> dict[str, str]:
        """The user's other devices this one knows: device id -> name."""
        return self.store.siblings()

    @property
    def syncs_directly(self) -> bool:
        """Whether sibling sync runs over the overlay now (online, direct sync on, and
        enough relays for paths); otherwise every sent message gets its swarm sync copy."""
        return self._sync is not None and self._sync.endpoint is not None

    def unread(self) -> list[HistoryItem]:
        """Messages filed since :meth:`mark_read` last moved the read marker, in arrival
        order (the marker is kept with the device, so a later process continues it)."""
        return self.store.arrivals(int(self.store.get_meta("read_seq") or b"0"))

    def mark_read(self, item: HistoryItem) -> None:
        """Move the read marker to ``item`` (never backwards)."""
        if item.seq > int(self.store.get_meta("read_seq") or b"0"):
            self.store.set_meta("read_seq", str(item.seq).encode())

    def history_index(self, since_ms: int) -> list[tuple[int, bytes]]:
        return self.store.index(since_ms)

    def history_item(self, message_id: bytes) -> Item | None:
        found = self.store.message(message_id)
        if found is None:
            return None
        return Item(found.id, found.timestamp_ms, found.record.to_bytes())

    def complete_until(self) -> int:
        """Everything timestamped before this is known to be in this device's history."""
        value = self.store.get_meta("complete_until")
        return int.from_bytes(value, "big") if value else 0

    def resynced(self, sibling: str, started_ms: int) -> None:
        """A sibling's whole history is here now: move the watermark up to when the re-sync
        began, less the grace period (what was in flight then may still arrive live)."""
        until = max(self.complete_until(), started_ms - int(self.config.grace_s * 1000))
        self.store.set_meta("complete_until", until.to_bytes(8, "big"))
        logger.info("%s: history complete with %s up to %d", self.name, sibling[:10], until)
        self._notify()

    @property
    def archive_counts(self) -> tuple[int, int]:
        """History items sent to and received from siblings as pairing-time archives
        since this device went online."""
        sync = self._sync
        return (0, 0) if sync is None else (sync.archive_sent, sync.archive_received)

    @property
    def resynced_siblings(self) -> set[str]:
        """Siblings whose whole history this device has fetched since it went online."""
        return set() if self._sync is None else set(self._sync.resynced)

    @property
    def _takeover_ms(self) -> int:
        return int(TAKEOVER_GRACES * self.config.grace_s * 1000)

    def _publish_pending(self, sync: SiblingSync | LiveSync, pending: Pending) -> None:
        record = HistoryRecord.from_bytes(pending.body)
        origin = pending.relayed_from
        sync.publish(
            Item(pending.id, record.timestamp_ms, pending.body),
            pending.published_ms,
            grace_ms=None if origin is None else self._takeover_ms,
            holders=() if origin is None else (origin,),
        )

    def file_from_sibling(self, sibling: str, item: Item) -> None:
        """A sibling pushed a message over the overlay."""
        try:
            record = HistoryRecord.from_bytes(item.body)
            with self.store.transaction():
                if self._file_message(item.id, record) and record.outgoing:
                    self._stand_in(sibling, item, record)
        except (DecodeError, Refused) as exc:
            self._reject("live MSG", f"from sibling {sibling[:12]}…: {exc}")

    def _stand_in(self, origin: str, item: Item, record: HistoryRecord) -> None:
        """A message ``origin`` just sent: if ``origin`` goes away before storing the sync
        copy that our other siblings need, store it in its place. Waiting longer than the
        origin's grace period leaves the copy to the origin while it is there."""
        now = self.clock.now_ms()
        others = set(self.store.siblings()) - {origin}
        if not others or now - record.timestamp_ms > self._takeover_ms or self._sync is None:
            return  # nobody else to serve, or history being re-synced rather than news
        self.store.add_pending(item.id, now, item.body, False, relayed_from=origin)
        for pending in self.store.pending(item.id):
            self._publish_pending(self._sync, pending)

    def _covered(self, digest: bytes) -> None:
        """A sync copy of ``digest`` is in the account's swarm: whoever stored it, the
        siblings that lack the message will read it there, so store none here."""
        for pending in self.store.pending(digest):
            if not pending.fell_back:
                self.store.fell_back(digest, [])
                if self._sync is not None:
                    self._sync.covered(digest)

    def covered_by_sibling(self, message_id: bytes) -> None:
        """A sibling stored this message's sync copy."""
        self._covered(message_id)

    def fall_back(self, item: Item, siblings: tuple[str, ...]) -> bool:
        """``siblings`` did not acknowledge in time: store sync copies for them. True if
        copies were queued here (siblings that hold the message are then told)."""
        found = self.store.pending(item.id)
        if not found or found[0].fell_back:
            return False  # already acknowledged, or already fallen back before a restart
        pending = found[0]
        record = HistoryRecord.from_bytes(item.body)
        if pending.inbound or pending.relayed_from in self.connected_siblings:
            # An inbound message is in the account's swarm already, and a sibling that
            # sent a message and is still here stores its sync copy itself.
            self.store.fell_back(item.id, [])
            return False
        content = SyncSent(item.id, record.conversation, record.timestamp_ms, record.text)
        kind, body = encode_content(content)
        owners = [self.user_id] if self.mode == "linked" else list(siblings)
        with self.store.transaction():
            seq = self.store.add_outbox(kind, self.user_id, body, record.timestamp_ms, item.id)
            copies = [self._seal_copy(seq, o, content, record.timestamp_ms) for o in owners]
            self.store.expand(seq, copies)
            self.store.fell_back(item.id, copies)
        self._wake_outbox()
        return True

    def acknowledged(self, message_id: bytes, fell_back: bool) -> None:
        """Every sibling holds the message: its sync copy can go, and in ``linked`` mode
        an inbound message can leave the account's swarm early too."""
        inbound = any(pending.inbound for pending in self.store.pending(message_id))
        early = [(self.user_id, NAMESPACE_MESSAGES, message_id)] if inbound else []
        with self.store.transaction():
            self.store.acknowledged(message_id, early)
        self._wake_outbox()

    def reject_from_sibling(self, sibling: str, reason: str) -> None:
        self._reject("live record", f"from sibling {sibling[:12]}…: {reason}")

    # --- online and offline -----------------------------------------------------------------------

    async def set_online(self, online: bool) -> None:
        """Go offline (stop receiving and sending; ``send`` still queues) or back online.

        Going offline first stores a sync copy of whatever a sibling has not acknowledged
        (waiting up to :data:`LEAVING_S` for the outbox), then says goodbye: a phone that
        leaves inside the grace period, or a process that exits right after ``send``,
        leaves no sibling without the message. A device whose last run ended otherwise
        (a crash) queues those copies before anything else when it goes online again."""
        async with self._switching:
            if online and not self.online:
                if self.store.get_meta(ONLINE_META) == b"1":
                    self._store_owed_copies()
                self.store.set_meta(ONLINE_META, b"1")
                self._online_scope = await self._nursery.start(self._run_online)
            elif not online and self.online:
                assert self._online_scope is not None
                self._store_owed_copies()
                with trio.move_on_after(LEAVING_S):
                    await self.flush()
                if self._sync is not None:
                    await self._sync.leave()
                self._online_scope.cancel()
                await self._offline.wait()
                self.store.set_meta(ONLINE_META, b"0")

    def _store_owed_copies(self) -> None:
        """Queue a sync copy of every message a sibling has not acknowledged (live sync's
        rule, :meth:`LiveSync.leaving`): through the running live sync, which knows who
        acknowledged what and who is still connected, or, when none runs (not started
        yet, or starting after a crash), through one fed what the store keeps pending."""
        if self._sync is not None:
            self._sync.leaving()
            return
        live = LiveSync(self.store.siblings(), has=self.store.has_message)
        for pending in self.store.pending():
            self._publish_pending(live, pending)
        for due in live.leaving():
            self.fall_back(due.item, due.siblings)

    async def _run_online(self, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            self._offline = trio.Event()
            task_status.started(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_outbox)
                    nursery.start_soon(self._receive_all)
                    nursery.start_soon(self._sync_with_siblings)
            finally:
                self._offline.set()

    async def _receive_all(self) -> None:
        """Run one receive loop per stream; start again when the streams change (pairing)."""
        while True:
            with trio.CancelScope() as self._receive_scope:
                async with trio.open_nursery() as nursery:
                    for identity, namespace in self._streams():
                        nursery.start_soon(self._receive, identity, namespace)


@asynccontextmanager
async def _maybe_endpoint(
    device: Device, contacts: list[RelayContact]
) -> AsyncIterator[Endpoint | None]:
    """The device's overlay endpoint, or None when there are too few relays for a path
    (then live sync still runs its clock and everything falls back to the swarm)."""
    if len(contacts) < device.config.hops:
        logger.info(
            "%s: %d relays, too few for paths: syncing through the swarm",
            device.name,
            len(contacts),
        )
        yield None
        return
    keepalive = device.config.keepalive_s
    async with open_endpoint(
        overlay_seed(device.device_identity.seed),
        device.network.overlay_transport,
        contacts,
        hops=device.config.hops,
        clock=device.clock,
        seed=choice_seed(device.device_identity.seed, b"relays"),
        local_name=device.name,
        ping_interval_ms=(PATH_PING_INTERVAL_MS if keepalive is None else int(keepalive * 1000)),
        republish_ms=_republish_ms(keepalive),
    ) as endpoint:
        yield endpoint


def _republish_ms(keepalive_s: float | None) -> int:
    """How often the endpoint republishes an unchanged introset: stretched with the
    keep-alive in the overlay's own proportion (2.5 min per 5 s of pings), up to half an
    introset's life, so that a sibling can always find one that has not expired."""
    if keepalive_s is None:
        return INTROSET_REPUBLISH_MS
    stretched = keepalive_s * 1000 * INTROSET_REPUBLISH_MS / PATH_PING_INTERVAL_MS
    return int(min(INTROSET_LIFETIME_MS // 2, max(INTROSET_REPUBLISH_MS, stretched)))


def _pairing_state(pairing: Pairing) -> dict[str, Any]:
    """What a device keeps about a pairing: the request's details on the primary; the
    secret (a key or the signed request) and, once challenged, the nonce on the new one."""
    state = decode_cbor(pairing.data)
    assert isinstance(state, dict)  # written by this device only
    return state


def _offer_code(pairing: Pairing) -> str:
    return pairing_code(pairing.request_id, _pairing_state(pairing)["nonce"])


def _check_user_id(user: str) -> None:
    try:
        session_id_key(user)
    except DecodeError:
        raise DeviceError(f"{user!r} is not a session id") from None


def _check_text(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise DeviceError(f"a message is at most {MAX_TEXT_CHARS} characters")


def _create(store: DeviceStore, mode: str, name: str, seed: bytes | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    identity = Identity(seed) if seed is not None else Identity.generate()
    with store.transaction():
        store.set_meta("mode", mode.encode())
        store.set_meta("name", name.encode())
        store.set_meta("device_seed", identity.seed)


@asynccontextmanager
async def open_device(
    data_dir: str | Path,
    network: NetworkAccess,
    *,
    mode: str | None = None,
    name: str = "device",
    seed: bytes | None = None,
    config: DeviceConfig | None = None,
    online: bool = True,
) -> AsyncIterator[Device]:
    """Open the device in ``data_dir``, creating it (``mode`` required, ``seed`` for a
    deterministic key in tests and demos) if there is none; online unless told otherwise.
    Leaving the block stops it; its state stays for the next open."""
    directory = Path(data_dir)
    store = _open_store(directory)
    try:
        existing = store.get_meta("mode")
        if existing is None:
            if mode is None:
                raise DeviceError(f"no device in {directory}: give a mode to create one")
            _create(store, mode, name, seed)
        elif mode is not None and mode != existing.decode():
            raise DeviceError(f"the device in {directory} is {existing.decode()}, not {mode}")
        async with open_rpc_pool(network.transport) as pool, open_task_nursery() as nursery:
            swarm = SwarmClient(pool, network.directory, network.clock, _random_for(store))
            device = Device(store, network, pool, swarm, nursery, config or DeviceConfig())
            if online:
                await device.set_online(True)
            yield device
            await device.set_online(False)  # siblings hear goodbye
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def create_device(
    data_dir: str | Path, mode: str, name: str = "device", seed: bytes | None = None
) -> tuple[str, str]:
    """Create a device in ``data_dir`` without going online; returns (user id, device id).
    A directory that already holds a device is left alone (:class:`DeviceError`)."""
    store = _open_store(Path(data_dir))
    try:
        if store.get_meta("mode") is not None:
            raise DeviceError(f"{data_dir} already holds a device")
        _create(store, mode, name, seed)
        device_id = Identity(store.get_meta("device_seed") or b"").session_id
    finally:
        store.close()
    return device_id, device_id


def describe_device(data_dir: str | Path) -> tuple[str, str, str, str]:
    """(user id, device id, mode, name) of the device in ``data_dir``, without the network
    (:class:`DeviceError` if there is none)."""
    directory = Path(data_dir)
    if not (directory / "device.sqlite3").exists():
        raise DeviceError(f"no device in {directory}: create one with `p2psync device init`")
    store = _open_store(directory)
    try:
        mode, seed = store.get_meta("mode"), store.get_meta("device_seed")
        if mode is None or seed is None:
            raise DeviceError(f"no device in {directory}: create one with `p2psync device init`")
        device = Identity(seed)
        _, user_id = _acting_identity(store, device)
        return user_id, device.session_id, mode.decode(), (store.get_meta("name") or b"").decode()
    finally:
        store.close()


def _acting_identity(store: DeviceStore, device: Identity) -> tuple[Identity, str]:
    """The identity a device signs and receives as (the account's once a ``linked`` device
    holds its seed, else its own) and the user id it acts for (a ``mapped`` secondary's
    primary, once paired)."""
    account_seed = store.get_meta("account_seed")
    identity = Identity(account_seed) if account_seed else device
    user = store.get_meta("user")
    return identity, user.decode() if user else identity.session_id


def _open_store(directory: Path) -> DeviceStore:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return DeviceStore(directory / "device.sqlite3")
    except DeviceInUse:
        raise DeviceError(
            f"the device in {directory} is in use by another process; one at a time"
        ) from None


def _random_for(store: DeviceStore) -> random.Random:
    """Swarm member choice and jitter: reproducible simulations, unpredictable to others."""
    seed = store.get_meta("device_seed")
    assert seed is not None
    return random.Random(choice_seed(seed, b"swarm"))


__all__ = [
    "Device",
    "DeviceConfig",
    "DeviceError",
    "PairingError",
    "PairingOffer",
    "PairingTicket",
    "Rejection",
    "create_device",
    "open_device",
]
