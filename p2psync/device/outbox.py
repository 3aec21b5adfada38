"""The outbox driver: delivers what a device queued, and looks up whose devices to
deliver to.

Everything a device sends is written to its durable outbox first (:meth:`Local.queue`);
:meth:`Outbox.run` stores each entry's copies in their swarms, oldest first, expanding an
entry into the copies for the recipient's other devices and for our siblings
(:func:`~.fanout.fan_out` decides which) when it first goes out, and backs off while the
swarm cannot be reached. The device lists come from the file server
and are cached on the network's clock, so a virtual jump expires them as it does every
other time.

Copies queued for deletion go out when :class:`~.deletions.DeletionSchedule` says (a
random delay after the acknowledgement, so that a server's log does not carry the rhythm
of sibling sync), several in one request where they fall due together.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from ..backoff import Backoff
from ..errors import ConnectionLost, RpcError
from ..fileserver.client import FileServerClient
from ..rpc import RpcRouter
from ..swarm.client import SwarmClient
from ..swarm.messages import StoreBatchRequest, StoreRequest, store_batches
from .access import NetworkAccess
from .content import copy_ttl_ms, decode_content
from .deletions import DeletionSchedule, delete_batches
from .delivery import Result, one_at_a_time, settle
from .fanout import Sender, Sent, fan_out, last_known_devices
from .inbound import NeedDevicesOf
from .local import Local
from .rows import Copy, OutboxEntry
from .values import TRANSIENT

logger = logging.getLogger(__name__)

#: Users whose device lists a device keeps at most.
CACHED_USERS = 4096
#: How long a device leaves the file server alone after a call to it failed.
FILE_SERVER_QUIET_S = 30.0


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
        #: The file server's device lists: user -> (epoch ms fetched, devices), the
        #: :data:`CACHED_USERS` asked about last (anyone can make a device ask about a user).
        self._cache: OrderedDict[str, tuple[int, tuple[str, ...]]] = OrderedDict()
        self._passed = trio.Event()
        #: Until when (Trio's clock) the file server is not asked, after it failed.
        self._file_server_quiet_until = -math.inf
        #: Why the last pass left something unsent (None: it did not), for the user to
        #: see that a message waits and on what (a recipient's mailbox full, say).
        self.last_failure: str | None = None
        self._deletions = DeletionSchedule(
            local.store.deletions(),
            local.clock.now_ms(),
            local.config.delete_delay_s,
            network.random_for(local.device_identity.seed, b"deletions"),
        )

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
        """Store every pending copy, oldest entry first, and raise the first failure. A
        device its primary unpaired sends nothing more as the user (what its inbound
        work queues, a crossing friend request's acceptance say, would be refused).

        The copies for one owner go in ``store_batch`` requests (:meth:`_store_copies`):
        a device back online with a backlog for a friend pays a request per 64 copies
        (fewer if they are large), not one each. Entries are expanded first, oldest
        first; one that cannot be yet (a transient failure: its recipient's devices
        unknown) holds back the later ones, not the earlier, whose copies are stored
        before that failure is raised. One owner's swarm failing (a mailbox full, its
        members out of reach) holds back neither the other owners' copies nor the
        deletions due: its failure is raised after them."""
        store = self._store
        if self._local.me.revoked_at_ms is not None:
            store.drop_outbox()
        ready: list[OutboxEntry] = []
        unexpanded: Exception | None = None
        for entry in store.outbox():
            if not entry.expanded:
                try:
                    store.expand(entry.seq, await self._expand(entry))
                except TRANSIENT as exc:
                    unexpanded = exc
                    break
            ready.append(entry)
        failure = await self._store_copies(ready) or unexpanded
        identity = self._local.identity
        due = self._deletions.due(store.deletions(), self._local.clock.now_ms())
        for owner, namespace, digests in delete_batches(due):
            if owner == identity.session_id:  # only an owner may delete
                await self._swarm.delete(identity, namespace, digests)
            for digest in digests:
                store.deleted(owner, namespace, digest)
                self._deletions.sent((owner, namespace, digest))
        if failure is not None:
            raise failure

    async def _store_copies(self, entries: list[OutboxEntry]) -> Exception | None:
        """Every copy of ``entries``, an owner's together in entry order, in as few
        ``store_batch`` requests as the limits allow (:func:`store_batches`), and the
        first failure (None: none), each owner's tried whatever another's did. What each
        answer makes of its copy is :mod:`.delivery`'s to say."""
        first: Exception | None = None
        by_owner: dict[str, list[tuple[Copy, int]]] = {}
        config = self._local.config
        for entry in entries:
            for copy in self._store.copies(entry.seq):
                ttl_ms = copy_ttl_ms(
                    entry.kind, copy.namespace, config.ttl_ms, config.sync_copy_ttl_ms
                )
                by_owner.setdefault(copy.owner, []).append((copy, ttl_ms))
        for owner, copies in by_owner.items():
            try:
                await self._store_for(owner, copies)
            except TRANSIENT as exc:
                logger.info("%s: copies for %s wait: %s", self._local.name, owner[:12], exc)
                first = first or exc
        return first

    async def _store_for(self, owner: str, copies: list[tuple[Copy, int]]) -> None:
        """``owner``'s copies (each with its ttl), raising the first failure."""
        # Cut by size first; each request is then dated as it is sent.
        access = self._local.access_for(owner)
        stores = [StoreRequest(owner, c.namespace, ttl, 0, c.data, access) for c, ttl in copies]
        done = 0
        for batch in store_batches(stores):
            now_ms = self._local.clock.now_ms()
            request = StoreBatchRequest(
                tuple(replace(store, timestamp_ms=now_ms) for store in batch.stores)
            )
            try:
                results = await self._swarm.store_batch(request)
            except RpcError as exc:
                if not one_at_a_time(exc):
                    raise
                results = [await self._store_alone(store) for store in request.stores]
            self._settled([copy for copy, _ in copies[done : done + len(results)]], results)
            done += len(results)

    async def _store_alone(self, store: StoreRequest) -> Result:
        """One copy with ``store``; a failure is its result (a transient one to retry), so
        the copies of its batch stored before it are still marked."""
        try:
            return await self._swarm.store(
                store.pubkey, store.namespace, store.data, store.ttl_ms, access=store.access
            )
        except RpcError as exc:
            return exc
        except TRANSIENT as exc:
            return RpcError("unavailable", f"no member answered: {exc}")

    def _settled(self, copies: list[Copy], results: list[Result]) -> None:
        """Carry out what :func:`~.delivery.settle` makes of ``results``, and raise the
        refusal that leaves copies to send again (the outbox retries them)."""
        if len(results) != len(copies):
            raise ValueError(f"{len(results)} answers for {len(copies)} copies")
        settlement = settle(results)
        for index, refusal in settlement.dropped:
            logger.error("dropping a copy for %s: %s", copies[index].owner[:12], refusal)
        for index in settlement.done:
            self._store.copy_stored(copies[index])
        if settlement.retry is not None:
            raise settlement.retry

    async def _expand(self, entry: OutboxEntry) -> list[Copy]:
        """The copies beyond the first, as :func:`~.fanout.fan_out` decides them."""
        local = self._local
        sent = Sent(
            entry.recipient,
            entry.message_id,
            entry.timestamp_ms,
            decode_content(entry.kind, entry.body),
        )
        devices: dict[str, tuple[str, ...]] = {}
        # The sender is read again after each lookup: a sibling paired meanwhile counts.
        while isinstance(plan := fan_out(sent, self._sender(), devices), NeedDevicesOf):
            devices[plan.user] = await self.devices_of(plan.user, fresh=plan.fresh)
        return [local.seal_copy(entry.seq, c.owner, c.content, entry.timestamp_ms) for c in plan]

    def _sender(self) -> Sender:
        local = self._local
        return Sender(
            local.user_id,
            local.device_id,
            local.rules,
            bool(self._store.siblings()),
            local.config.direct_sync,
        )

    async def run(self, retry_deferred: Callable[[], Awaitable[None]]) -> None:
        """Deliver the outbox whenever it changes, and re-check deferred inbound records;
        back off while either keeps failing."""
        backoff = Backoff(self._local.config.retry_s, self._local.config.max_retry_s)
        while True:
            wakeup = self._local.outbox_wakeup = trio.Event()
            try:
                await self._deliver()
            except TRANSIENT as exc:
                logger.info("%s: outbox waits to retry: %s", self._local.name, exc)
                self.last_failure = str(exc)
            else:
                # Said of sending alone: a deferred inbound record is not unsent mail.
                self.last_failure = None
                try:
                    await retry_deferred()
                except TRANSIENT as exc:
                    logger.info("%s: deferred records wait to retry: %s", self._local.name, exc)
            store = self._store
            now = self._local.clock.now_ms()
            failed = store.outbox() or store.deferred() or self._deletions.overdue(now)
            if failed:
                timeout = backoff.failed()
            else:
                backoff.succeeded()
                timeout = math.inf
            self._passed.set()
            self._passed = trio.Event()
            # After a failure, the back-off alone: a deletion that failed is past due.
            wake_at = None if failed else self._deletions.next_ms()
            with trio.move_on_after(timeout), self._local.clock.move_on_at_ms(wake_at):
                await wakeup.wait()

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
            if trio.current_time() < self._file_server_quiet_until:
                raise RpcError("unavailable", "the file server did not answer moments ago")
            client = await self.fileserver()
            answer = await client.get_mappings(user, self._store.revocations())
            self._store.keep_revocations(answer.revocations, own_user=self._local.user_id)
            devices = answer.devices
        except TRANSIENT as exc:
            if isinstance(exc, (trio.TooSlowError, OSError, ConnectionLost)):
                # Not asked again for a while: a pass over many records that each need
                # a lookup would otherwise wait out every call's deadline in turn.
                self._file_server_quiet_until = trio.current_time() + FILE_SERVER_QUIET_S
            if fresh:
                raise
            logger.info("%s: file server lookup of %s failed: %s", self._local.name, user[:12], exc)
            return last_known_devices(
                user,
                user_id=self._local.user_id,
                device_id=self._local.device_id,
                siblings=self._store.siblings(),
                contact=self._store.contact(user),
            )
        self._cache[user] = (now_ms, devices)
        self._cache.move_to_end(user)
        if len(self._cache) > CACHED_USERS:
            self._cache.popitem(last=False)
        return devices

    async def own_devices(self) -> tuple[str, ...]:
        return tuple(sorted(set(await self.devices_of(self._local.user_id))))
