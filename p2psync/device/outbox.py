"""The outbox driver: delivers what a device queued, and looks up whose devices to
deliver to.

Everything a device sends is written to its durable outbox first (:meth:`Local.queue`);
:meth:`Outbox.run` stores each entry's copies in their swarms, oldest first, expanding an
entry into the copies for the recipient's other devices and for our siblings (the mode's
rule, :meth:`~p2psync.device.modes.Rules.sibling_owners`) when it first goes out, and
backs off while the swarm cannot be reached. The device lists come from the file server
and are cached on the network's clock, so a virtual jump expires them as it does every
other time.

Copies queued for deletion (a sync copy or an inbound message every sibling has
acknowledged) leave their swarm after a random delay (``DeviceConfig.delete_delay_s``),
those due together in one request: deleted at the acknowledgement, they would reach the
server within milliseconds of the siblings' session traffic, and the server's log would
carry the rhythm of sibling sync (``benchmarks/relay_audit.py``, check b). Those an
earlier process queued go at once (a device coming online: one burst per return, tied to
no acknowledgement).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from ..errors import RpcError
from ..fileserver import FileServerClient
from ..rpc import RpcRouter
from ..swarm.client import SwarmClient
from ..swarm.constants import MAX_HASHES_PER_REQUEST
from .access import NetworkAccess
from .content import SyncSent, Text, copy_ttl_ms, decode_content
from .local import Local
from .store import Copy, OutboxEntry
from .values import TRANSIENT

logger = logging.getLogger(__name__)

#: Refusals that no retry can change: the copy is dropped (and logged).
PERMANENT_CODES = ("bad_request", "too_large", "bad_ttl", "unauthorized")


class Outbox:
    """Delivers the outbox while the device is online (see the module docstring)."""

    def __init__(
        self, local: Local, network: NetworkAccess, pool: RpcRouter, swarm: SwarmClient
    ) -> None:
        self._local = local
        self._store = local.store
        self._network = network
        self._pool = pool
        self._swarm = swarm
        #: The file server's device lists: user -> (epoch ms fetched, devices).
        self._cache: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._passed = trio.Event()
        #: When each queued deletion goes out (epoch ms), drawn when first seen. Those a
        #: process before this one queued are due at once: their acknowledgement is a
        #: process ago, and a short-lived one (``p2psync device send``) never lives
        #: through a delay of its own.
        now = local.clock.now_ms()
        self._delete_at: dict[tuple[str, int, bytes], int] = {
            key: now for key in local.store.deletions()
        }
        self._delays = network.random_for(local.device_identity.seed, b"deletions")

    async def fileserver(self) -> FileServerClient:
        return FileServerClient(await self._pool.get(self._network.fileserver_url))

    def forget(self, user: str) -> None:
        """Drop ``user``'s cached device list (it just changed)."""
        self._cache.pop(user, None)

    async def flush(self) -> None:
        """Wait until the outbox is empty (never, while offline: put a deadline on it)."""
        while self._store.outbox():
            await self._passed.wait()

    async def _deliver(self) -> None:
        """Store every pending copy, oldest entry first; raise on the first failure."""
        store = self._store
        for entry in store.outbox():
            if not entry.expanded:
                store.expand(entry.seq, await self._expand(entry))
            for copy in store.copies(entry.seq):
                ttl_ms = copy_ttl_ms(entry.kind, copy.namespace, self._local.config.ttl_ms)
                try:
                    await self._swarm.store(copy.owner, copy.namespace, copy.data, ttl_ms)
                except RpcError as exc:
                    if exc.code not in PERMANENT_CODES:
                        raise
                    logger.error("dropping a copy for %s: %s", copy.owner[:12], exc)
                store.copy_stored(copy)
        identity = self._local.identity
        batches: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for owner, namespace, digest in self._due_deletions():
            batches[owner, namespace].append(digest)
        for (owner, namespace), digests in batches.items():
            for start in range(0, len(digests), MAX_HASHES_PER_REQUEST):
                batch = digests[start : start + MAX_HASHES_PER_REQUEST]
                if owner == identity.session_id:  # only an owner may delete
                    await self._swarm.delete(identity, namespace, batch)
                for digest in batch:
                    store.deleted(owner, namespace, digest)
                    self._delete_at.pop((owner, namespace, digest), None)

    def _due_deletions(self) -> list[tuple[str, int, bytes]]:
        """The queued deletions whose time has come (each gets its time when first seen)."""
        now = self._local.clock.now_ms()
        low, high = self._local.config.delete_delay_s
        queued = self._store.deletions()
        at = {
            key: self._delete_at[key]
            if key in self._delete_at
            else now + int(self._delays.uniform(low, high) * 1000)
            for key in queued
        }
        self._delete_at = at
        return [key for key in queued if at[key] <= now]

    def _next_deletion_ms(self) -> int | None:
        """When the next queued deletion is due (None: none is queued)."""
        return min(self._delete_at.values(), default=None)

    async def _expand(self, entry: OutboxEntry) -> list[Copy]:
        """The copies beyond the first: the recipient's other devices (a ``mapped``
        recipient, whatever this device's mode: its devices have their own swarms) and
        our siblings' sync copies."""
        local = self._local
        copies = []
        content = decode_content(entry.kind, entry.body)
        if entry.recipient != self._local.user_id:
            fanned = replace(content, id=entry.message_id) if isinstance(content, Text) else content
            for device in await self.devices_of(entry.recipient):
                if device != entry.recipient:
                    copies.append(local.seal_copy(entry.seq, device, fanned, entry.timestamp_ms))
        if isinstance(content, Text):
            if self._local.config.direct_sync:
                return copies  # siblings get it directly, or a sync copy after the grace
            assert entry.message_id is not None
            content = SyncSent(entry.message_id, entry.recipient, entry.timestamp_ms, content.text)
        elif entry.recipient != self._local.user_id:
            return copies
        owners = local.rules.sibling_owners(
            self._local.user_id,
            await self.devices_of(self._local.user_id),
            self._local.device_id,
            bool(self._store.siblings()),
        )
        copies += [local.seal_copy(entry.seq, o, content, entry.timestamp_ms) for o in owners]
        return copies

    async def run(self, retry_deferred: Callable[[], Awaitable[None]]) -> None:
        """Deliver the outbox whenever it changes, and re-check deferred inbound records;
        back off while either keeps failing."""
        delay = self._local.config.retry_s
        while True:
            wakeup = self._local.outbox_wakeup = trio.Event()
            try:
                await self._deliver()
                await retry_deferred()
            except TRANSIENT as exc:
                logger.info("%s: outbox waits to retry: %s", self._local.name, exc)
            store = self._store
            failed = store.outbox() or store.deferred() or self._overdue()
            if failed:
                timeout, delay = delay, min(self._local.config.max_retry_s, delay * 2)
            else:
                timeout, delay = math.inf, self._local.config.retry_s
            self._passed.set()
            self._passed = trio.Event()
            # After a failure, the back-off alone: a deletion that failed is past due.
            wake_at = None if failed else self._next_deletion_ms()
            with trio.move_on_after(timeout), self._local.clock.move_on_at_ms(wake_at):
                await wakeup.wait()

    def _overdue(self) -> bool:
        due = self._next_deletion_ms()
        return due is not None and due <= self._local.clock.now_ms()

    async def devices_of(self, user: str, *, fresh: bool = False) -> tuple[str, ...]:
        """Every device of ``user``, from the file server's verified mappings (cached for
        ``mapping_cache_s`` on the network's clock); the last known list if the file
        server cannot be reached. A ``linked`` user has none there (one key for every
        device); a ``linked`` device still asks about others, who may be ``mapped``."""
        known = self._local.rules.own_devices_without_lookup(user, self._local.user_id)
        if known is not None:
            return known
        now_ms = self._local.clock.now_ms()
        cached = self._cache.get(user)
        fresh_enough = (
            cached is not None and now_ms - cached[0] < self._local.config.mapping_cache_s * 1000
        )
        if cached is not None and not fresh and fresh_enough:
            return cached[1]
        try:
            client = await self.fileserver()
            answer = await client.get_mappings(user, self._store.revocations())
            self._store.keep_revocations(answer.revocations)
            devices = answer.devices
        except TRANSIENT as exc:
            if fresh:
                raise
            logger.info("%s: file server lookup of %s failed: %s", self._local.name, user[:12], exc)
            if user == self._local.user_id:
                return (self._local.user_id, self._local.device_id, *self._store.siblings())
            contact = self._store.contact(user)
            return contact.devices if contact is not None else (user,)
        self._cache[user] = (now_ms, devices)
        return devices

    async def own_devices(self) -> tuple[str, ...]:
        return tuple(sorted(set(await self.devices_of(self._local.user_id))))
