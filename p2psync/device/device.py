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

Where each rule lives: :class:`Device` is a facade. What the rules decide is in pure
cores, tested directly: the friend machine (:mod:`.friends`), the pairing machine
(:mod:`.pairing`), the mode's rules (:mod:`.modes`, so nothing here branches on the mode),
the steps of going online and offline (:mod:`.online_switch`) and the inbound core
(:mod:`.inbound`: an arriving record in, typed effects out). Thin drivers execute their
effects: the runner that starts and stops the device (:mod:`.running`), the receiver
(:mod:`.receiver`), the outbox and its device lists (:mod:`.outbox`), pairing (the new
device's side in :mod:`.joiner`, the primary's in :mod:`.pairer`) and the sibling
handler that live sync calls back (:mod:`.siblings`), all sharing the device's own state
(:mod:`.local`).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import trio

from overlay.contact import Contact as RelayContact
from overlay.tasks import open_task_nursery

from ..errors import DecodeError
from ..identity import Identity
from ..onion.pool import OnionRpcPool
from ..opengroup.client import OpenGroupClient
from ..process_lock import InUse
from ..rpc import RpcRouter
from ..swarm.client import SwarmClient
from .access import NetworkAccess
from .content import (
    HistoryRecord,
    Profile,
    SyncProfile,
    Text,
    check_display_name,
)
from .entry_relays import SiblingEntries
from .facades import DevicePairing, Friends, Rooms, befriend, check_text
from .friends import friends_among, is_friend
from .joiner import Joiner
from .keys import choice_seed
from .local import Local, pairing_address_of, whoami_of
from .migrator import Migrator
from .modes import Mode
from .outbox import Outbox
from .pairer import Pairer
from .receiver import Receiver
from .rows import HistoryItem
from .running import Runner
from .siblings import SiblingHandler
from .store import DeviceStore
from .values import (
    DeviceConfig,
    DeviceError,
    PairingError,
    PairingOffer,
    PairingTicket,
    Rejection,
    Room,
    SyncStatus,
    Whoami,
    check_receive_route,
)


class Device:
    """One device of a user: a facade over its store, its drivers and the pure cores
    (friend and pairing machines, the inbound core, the mode's rules). Create it with
    :func:`open_device`."""

    #: Contacts and friend requests: ``contacts``, ``contact``, ``request``, ``accept``,
    #: ``decline``.
    friends: Friends
    #: The account's devices: ``request``, ``wait_paired``, ``requests``, ``accept``,
    #: ``decline``, ``revoke``.
    pairing: DevicePairing
    #: Public rooms: ``create``, ``post``, ``messages``.
    rooms: Rooms

    def __init__(
        self,
        local: Local,
        network: NetworkAccess,
        pool: RpcRouter,
        swarm: SwarmClient,
        nursery: trio.Nursery,
    ) -> None:
        self._local = local
        self._store = store = local.store
        self._network = network
        self._pool = pool
        self._nursery = nursery
        self._siblings = SiblingHandler(local, network, _pool_directory(pool))
        self._outbox = Outbox(local, network, pool, swarm)
        self._pairer = Pairer(local, swarm, self._outbox, self._siblings)
        self._joiner = Joiner(local, swarm, self._siblings, self._relisten)
        self.friends = Friends(local, self._outbox)
        self.pairing = DevicePairing(self._joiner, self._pairer)
        self.rooms = Rooms(local, self._opengroup)
        self._migrator = Migrator(
            local,
            self._outbox,
            self._siblings,
            self.sync_now,
            self._relisten,
            self._pairer.decline_ungrantable,
        )
        self._receiver = Receiver(
            local,
            swarm,
            self._outbox,
            self._siblings,
            self._pairer,
            self._joiner,
            self._migrator,
            partial(befriend, local, self._outbox),
        )
        self._runner = Runner(
            store, local.online, self._siblings, self._outbox, self._receiver, nursery
        )

    # --- who this is ------------------------------------------------------------------------------

    @property
    def config(self) -> DeviceConfig:
        """How this device was opened (read only)."""
        return self._local.config

    def whoami(self) -> Whoami:
        """Who this device is: the user's and its own ids, mode, names and public keys."""
        return self._local.me

    @property
    def session_id(self) -> str:
        """The user's id: what friends know this user by, whichever device they reach."""
        return self._local.user_id

    @property
    def rejections(self) -> deque[Rejection]:
        """The latest inbound records refused, and why (the clear error for hostile input)."""
        return self._local.rejections

    @property
    def rejected(self) -> int:
        """Every inbound record refused since the device opened."""
        return self._local.rejected

    def __repr__(self) -> str:
        local = self._local
        return f"Device({local.name!r}, {local.rules.mode}, user {local.user_id[:10]}…)"

    # --- history ----------------------------------------------------------------------------------

    def history(self, conversation: str | None = None) -> list[HistoryItem]:
        """Messages in ``(timestamp, id)`` order: one conversation, or all of them."""
        return self._store.history(conversation)

    async def incoming(self, *, after_seq: int | None = None) -> AsyncGenerator[HistoryItem, None]:
        """Every message filed from now on (or after ``after_seq``), sent ones synced from
        siblings included, in arrival order; runs until the caller stops iterating."""
        arrivals = self._store.arrivals(0)
        seq = (arrivals[-1].seq if arrivals else 0) if after_seq is None else after_seq
        while True:
            changed = self._local.changed
            items = self._store.arrivals(seq)
            for item in items:
                seq = item.seq
                yield item
            if not items:
                await changed.wait()

    async def wait_for(self, condition: Callable[[Device], bool]) -> None:
        """Wait until ``condition(device)`` holds, checked again whenever this device files
        something (a message, a contact change, a pairing request); put a deadline on it."""
        while True:
            changed = self._local.changed
            if condition(self):
                return
            await changed.wait()

    def unread(self) -> list[HistoryItem]:
        """Messages filed since :meth:`mark_read` last moved the read marker, in arrival
        order (the marker is kept with the device, so a later process continues it),
        those this device sent included (``item.device``)."""
        return self._store.arrivals(int(self._store.get_meta("read_seq") or b"0"))

    def mark_read(self, item: HistoryItem) -> None:
        """Move the read marker to ``item`` (never backwards)."""
        if item.seq > int(self._store.get_meta("read_seq") or b"0"):
            self._store.set_meta("read_seq", str(item.seq).encode())

    # --- who we know ------------------------------------------------------------------------------

    async def set_display_name(self, name: str) -> None:
        """Set the name this user goes by: siblings and friends learn it (friends see it
        beside the user's id, never instead of it). At most 64 characters, and no
        control, format or separator characters, which a friend's terminal would
        otherwise interpret, no space but U+0020 and not only spaces, and nothing that
        reads as an id (:func:`~.content.check_display_name`)."""
        try:
            check_display_name(name)
        except DecodeError as exc:
            raise DeviceError(str(exc)) from None
        local = self._local
        local.check_belongs()
        with self._store.transaction():
            local.set_display_name(name, local.clock.now_ms())
            local.queue(SyncProfile(name), local.user_id)
            for friend in friends_among(self._store.contacts()):
                local.queue(Profile(local.user_id, name), friend)
        local.wake_outbox()

    # --- sending ----------------------------------------------------------------------------------

    async def send(self, user: str, text: str) -> bytes:
        """Accept a message for ``user`` (a friend) and return its id.

        When this returns the message is in the durable outbox and the history; it is
        delivered in the background, across restarts if need be (:meth:`flush` waits)."""
        self._local.check_belongs()
        contact = self._store.contact(user)
        if not is_friend(None if contact is None else contact.state):
            raise DeviceError(f"{user[:12]}… is not a friend: send a friend request first")
        check_text(text)
        with self._store.transaction():
            digest = self._local.queue(Text(self._local.user_id, text), user)
            assert digest is not None
            now = self._local.clock.now_ms()
            local = self._local
            record = HistoryRecord(now, user, True, local.user_id, local.device_id, text)
            self._local.file_message(digest, record)
            self._siblings.share(digest, record, inbound=False)
        self._local.wake_outbox()
        return digest

    async def flush(self) -> None:
        """Wait until everything in the outbox is stored in its swarms (while offline,
        that is never: put a deadline on it)."""
        await self._outbox.flush()

    async def sync_now(self) -> None:
        """Fetch and file everything waiting in this device's swarms now."""
        await self._receiver.sync_now()

    def _relisten(self) -> None:
        self._receiver.relisten()

    # --- the account's devices -------------------------------------------------------------------

    async def migrate(self, to: str = "linked") -> tuple[str, ...]:
        """On a ``mapped`` primary: move the account to ``linked`` mode, keeping history
        and contacts, and return the device ids it retires (docs/migration.md).

        Every device of the user goes on as the primary's identity: the secondaries get
        its seed, signed by it and sealed to each one's own key, and switch when they
        next read their swarm. Friends get the account's signed statement and from then
        on send to the account alone and refuse the retired keys; the file server's
        mappings are revoked, so strangers see one device too. Histories stay on every
        device and keep merging as before (sync copies, re-sync). :class:`DeviceError`,
        in one line, on a device that is linked already (created so, or moved before)
        or that is not the primary; a file server that cannot be reached changes nothing."""
        return await self._migrator.migrate(to)

    async def _opengroup(self) -> OpenGroupClient:
        return OpenGroupClient(await self._pool.get(self._network.opengroup_url))

    # --- direct sync with siblings ------------------------------------------------------------

    def siblings(self) -> dict[str, str]:
        """The user's other devices this one knows: device id -> name."""
        return self._store.siblings()

    def sync_status(self) -> SyncStatus:
        """Where this device stands with its siblings now (one consistent reading)."""
        sync, online = self._siblings.sync, self._runner.online
        listing = self._local.entry_listing()
        return SyncStatus(
            online=online,
            syncs_directly=sync is not None and sync.endpoint is not None,
            starting=online and sync is None and self._siblings.syncs_directly(),
            connected_siblings=frozenset(self._siblings.connected),
            unacknowledged=len(self._store.pending()),
            resynced_siblings=frozenset(() if sync is None else sync.resynced),
            archive_counts=(0, 0) if sync is None else (sync.archive_sent, sync.archive_received),
            complete_until=self._siblings.complete_until(),
            last_run_left=self._runner.last_run_left,
            entry_listing=None if listing is None else listing.keys,
            unsent=len(self._store.outbox()),
            last_send_error=self._outbox.last_failure,
        )

    # --- online and offline -----------------------------------------------------------------------

    async def set_online(self, online: bool, *, promptly: bool = False) -> None:
        """Go offline (stop receiving and sending; ``send`` still queues) or back online.

        Going offline first gives siblings that are online a few seconds to take what they
        have not acknowledged directly, then stores a sync copy of whatever is still
        unacknowledged (waiting up to :data:`~.running.LEAVING_S` for the outbox), then says
        goodbye: a phone that leaves inside the grace period, or a process that exits
        right after ``send``, leaves no sibling without the message. ``promptly`` (a
        person stopped the program) skips the first step. A leave cut short (cancelled)
        resumes when called again without that first step, so a caller can give a
        stopped leave a last short budget. A device whose last run ended otherwise (a
        crash) queues those copies before anything else when it goes online again. The
        steps are :mod:`.online_switch`'s."""
        await self._runner.set_online(online, promptly=promptly)


def _pool_directory(pool: RpcRouter) -> Callable[[list[RelayContact]], None]:
    """Where a relay listing the siblings deal on goes besides the sibling endpoint: the
    onion pool's endpoint, which deals its entries the same way."""
    endpoint = pool.endpoint if isinstance(pool, OnionRpcPool) else None

    def use(contacts: list[RelayContact]) -> None:
        if endpoint is not None:
            endpoint.update_directory(contacts)

    return use


def _create(store: DeviceStore, mode: str, name: str, seed: bytes | None) -> None:
    if mode not in tuple(Mode):
        raise ValueError(f"mode must be one of {tuple(m.value for m in Mode)}, not {mode!r}")
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
    if mode is None and not (directory / STORE_FILE).exists():
        raise _no_device(directory)  # and nothing made there: no folder, no file
    store = _open_store(directory)
    try:
        existing = store.get_meta("mode")
        if existing is None:
            if mode is None:
                raise _no_device(directory)
            _create(store, mode, name, seed)
        elif mode is not None and mode != existing.decode():
            raise DeviceError(f"the device in {directory} is {existing.decode()}, not {mode}")
        local = Local(store, network.clock, config or DeviceConfig())
        check_receive_route(local.config.receive, network.rpc_route)
        async with (
            network.open_routes(
                entry_filter=SiblingEntries(local, or_any=True),
                rng=network.random_for(local.device_identity.seed, b"onion listing"),
                keeper=local,
                awake=local.online.wait,
            ) as routes,
            open_task_nursery() as nursery,
        ):
            pool, reading = routes  # the network, its listing read the way the pool goes
            swarm = SwarmClient(pool, reading.directory, reading.clock, _random_for(store))
            device = Device(local, reading, pool, swarm, nursery)
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


def describe_device(data_dir: str | Path) -> Whoami:
    """Who the device in ``data_dir`` is, without the network (:class:`DeviceError` if
    there is none)."""
    with _kept_device(Path(data_dir)) as store:
        return whoami_of(store)


def describe_pairing_address(data_dir: str | Path, now_ms: int) -> str | None:
    """What a new device asks the device in ``data_dir`` to pair by, as of ``now_ms``,
    without the network (:meth:`Device.pairing`'s ``address``)."""
    with _kept_device(Path(data_dir)) as store:
        return pairing_address_of(store, now_ms)


@contextmanager
def _kept_device(directory: Path) -> Iterator[DeviceStore]:
    """The store of the device in ``directory``, read only (beside a holder, if any);
    :class:`DeviceError` if there is none."""
    if not (directory / STORE_FILE).exists():
        raise _no_device(directory)
    store = DeviceStore(directory / STORE_FILE, read_only=True)
    try:
        if store.get_meta("mode") is None or store.get_meta("device_seed") is None:
            raise _no_device(directory)
        yield store
    finally:
        store.close()


def device_in_use(data_dir: str | Path) -> bool:
    """Whether a process has the device in ``data_dir`` open now (one at a time may)."""
    return DeviceStore.in_use(Path(data_dir) / STORE_FILE)


#: The device's SQLite state in its directory.
STORE_FILE = "device.sqlite3"


def _no_device(directory: Path) -> DeviceError:
    return DeviceError(
        f"no device in {directory}: create one with `p2psync device init`"
        " (or open_device with a mode)"
    )


def _open_store(directory: Path) -> DeviceStore:
    # Its owner's alone when made here: another local user could otherwise watch when
    # its files change (when messages come) and whether a `run` holds it.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return DeviceStore(directory / STORE_FILE)
    except InUse:
        holder = DeviceStore.holder(directory / STORE_FILE)
        raise DeviceError(
            f"the device in {directory} is in use by {holder}; one at a time"
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
    "Room",
    "SyncStatus",
    "Whoami",
    "create_device",
    "open_device",
]
