"""Direct sync with siblings, as the device drives it: the :class:`SiblingHandler`.

:class:`~p2psync.sync.syncer.SiblingSync` runs live sync and re-sync over overlay
sessions and calls back (its ``SyncHandler``) when a sibling pushed a message, stored a
sync copy, acknowledged, or failed to within the grace period. Those callbacks are this
handler's, not the device's public methods: what to file, where a fallback sync copy goes
(the mode's rule) and what may leave the swarm early is the device's business alone.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import nacl.utils
import trio

from overlay.contact import Contact as RelayContact
from overlay.endpoint import Endpoint, open_endpoint
from overlay.endpoint_core import entries_of, paths_possible
from overlay.tasks import open_task_nursery

from ..errors import DecodeError
from ..sync.live import Item, LiveSync
from ..sync.records import Relays
from ..sync.syncer import DELIVER_BEFORE_LEAVING_S, SiblingSync
from .access import NetworkAccess
from .content import SECRET_BYTES, HistoryRecord, SyncSent
from .entry_relays import (
    SiblingEntries,
    learn_from_sibling,
    learn_read,
    siblings_secret_of,
)
from .keys import choice_seed, overlay_seed
from .local import SECRET_AT_META, SECRET_META, Local
from .relay_listing import ReadAgain, keep_relays_current
from .rows import Pending
from .sibling_rules import (
    FallBack,
    complete_until_after_resync,
    deleted_once_acknowledged,
    fall_back_plan,
    publish_terms,
    push_at,
    sibling_timings,
    stands_in,
    syncs_directly,
)
from .values import TRANSIENT, Refused

logger = logging.getLogger(__name__)


class SiblingHandler:
    """The device's side of sibling sync: runs it while online and answers its calls."""

    def __init__(
        self,
        local: Local,
        network: NetworkAccess,
        on_listing: Callable[[list[RelayContact]], None] = lambda contacts: None,
    ) -> None:
        """``on_listing``: a relay listing the siblings now deal on, for the device's
        other endpoint (its onion pool's) to build paths through too."""
        self._local = local
        self._network = network
        self._on_listing = on_listing
        self._scope = trio.CancelScope()
        #: The running sibling sync, while online with siblings.
        self.sync: SiblingSync | None = None
        #: Set (and replaced) each time a sibling sync starts.
        self._sync_started = trio.Event()
        self._delays = network.random_for(local.device_identity.seed, b"inbound pushes")
        self._read_again = ReadAgain()
        self._timings = sibling_timings(local.config.grace_s, local.config.keepalive_s)

    def restart(self) -> None:
        """The siblings changed: sync with the new set."""
        self._scope.cancel()

    def syncs_directly(self) -> bool:
        """Whether sibling sync runs while online (:func:`.sibling_rules.syncs_directly`)."""
        local = self._local
        keys = local.store.sibling_overlay_keys()
        return syncs_directly(local.config.direct_sync, keys, self.secret())

    def secret(self) -> bytes | None:
        """What siblings find each other's introsets by."""
        return siblings_secret_of(self._local)

    def secret_to_hand_over(self) -> bytes:
        """The secret, made now if this is the first sibling."""
        secret = self.secret()
        if secret is None:
            secret = nacl.utils.random(SECRET_BYTES)
            self._local.store.set_meta(SECRET_META, secret)
        return secret

    def make_secret(self, at_ms: int) -> bytes:
        """A new secret, made at ``at_ms`` (inside a transaction; restart afterwards):
        a revoked device knows the old one, by which it could go on finding the
        siblings' introsets and so see when each is online."""
        secret = nacl.utils.random(SECRET_BYTES)
        self.adopt_secret(secret, at_ms)
        return secret

    def adopt_secret(self, secret: bytes, at_ms: int) -> None:
        """Meet siblings by ``secret`` from now on (inside a transaction; restart
        afterwards)."""
        store = self._local.store
        store.set_meta(SECRET_META, secret)
        store.set_meta(SECRET_AT_META, str(at_ms).encode())

    def share(self, digest: bytes, record: HistoryRecord, *, inbound: bool) -> None:
        """Hand a filed message to live sync (inside the transaction that filed it)."""
        local = self._local
        if not local.config.direct_sync or not local.store.siblings():
            return
        delays = local.config.inbound_push_delay_s
        published = push_at(local.clock.now_ms(), inbound, delays, self._delays.uniform)
        body = record.to_bytes()
        local.store.add_pending(digest, published, body, inbound)
        if self.sync is not None:
            self.sync.publish(Item(digest, record.timestamp_ms, body), published)

    def _publish_pending(self, sync: SiblingSync | LiveSync, pending: Pending) -> None:
        record = HistoryRecord.from_bytes(pending.body)
        item = Item(pending.id, record.timestamp_ms, pending.body)
        grace_ms, holders = publish_terms(pending.relayed_from, self._timings)
        if isinstance(sync, LiveSync):
            now = self._local.clock.now_ms()
            sync.publish(
                item, now, published_ms=pending.published_ms, grace_ms=grace_ms, holders=holders
            )
        else:
            sync.publish(item, pending.published_ms, grace_ms=grace_ms, holders=holders)

    async def run(self, drain: Callable[[], Awaitable[None]]) -> None:
        """Run live sync while online; start again when the siblings change. ``drain``
        first takes what the swarm still holds (a returning device)."""
        local = self._local
        if not local.config.direct_sync:
            return
        while True:
            with trio.CancelScope() as self._scope:
                keys = local.store.sibling_overlay_keys()
                secret = self.secret()
                if not syncs_directly(local.config.direct_sync, keys, secret):
                    await trio.sleep_forever()
                assert secret is not None
                with trio.move_on_after(60):
                    try:
                        await drain()
                    except TRANSIENT as exc:
                        logger.info("%s: could not drain the swarm first: %s", local.name, exc)
                try:
                    contacts = await self._network.relay_contacts()
                except TRANSIENT as exc:
                    logger.info("%s: no relay list, syncing through the swarm: %s", local.name, exc)
                    contacts = []
                self.relays_read(contacts)
                async with self._maybe_endpoint(contacts, SiblingEntries(local)) as endpoint:
                    self.sync = SiblingSync(
                        endpoint,
                        secret,
                        keys,
                        local.clock,
                        self,
                        has=local.store.has_message,
                        grace_ms=self._timings.grace_ms,
                        keepalive_s=self._timings.session_keepalive_s,
                    )
                    for pending in local.store.pending():
                        self._publish_pending(self.sync, pending)
                    self._sync_started.set()
                    self._sync_started = trio.Event()
                    try:
                        await self.sync.run()
                    finally:
                        self.sync = None

    @asynccontextmanager
    async def _maybe_endpoint(
        self, contacts: list[RelayContact], entries: SiblingEntries
    ) -> AsyncIterator[Endpoint | None]:
        """The device's overlay endpoint, or None when there are too few relays for a path
        or none to enter by (then live sync still runs its clock and everything falls
        back to the swarm). Its paths enter the overlay only through the relays
        ``entries`` gives this device, so no relay is next to two siblings: one that
        were would see both ends of their session, and both devices' addresses."""
        local = self._local
        config = local.config
        keys = [c.pubkey for c in contacts]
        if not paths_possible(keys, config.hops, entries_of(keys, entries)):
            logger.info(
                "%s: %d relays, too few for paths or none of them this device's to enter "
                "by: syncing through the swarm",
                local.name,
                len(contacts),
            )
            yield None
            return
        async with (
            open_endpoint(
                overlay_seed(local.device_identity.seed),
                self._network.overlay_transport,
                contacts,
                hops=config.hops,
                clock=local.clock,
                seed=choice_seed(local.device_identity.seed, b"relays"),
                local_name=local.name,
                ping_interval_ms=self._timings.path_ping_ms,
                republish_ms=self._timings.republish_ms,
                entry_filter=entries,
            ) as endpoint,
            open_task_nursery() as nursery,
        ):
            nursery.start_soon(
                keep_relays_current, endpoint, self._network, self.relays_read, self._read_again
            )
            yield endpoint
            nursery.cancel_scope.cancel()

    async def deliver_before_leaving(self) -> None:
        """Going offline: first let siblings that are online take what this device owes
        them over the overlay (:meth:`SiblingSync.deliver_before_leaving`), for at most
        :data:`DELIVER_BEFORE_LEAVING_S`; the live sync starts only after the swarm was
        read, so a process that sends and exits waits for it too."""
        local = self._local
        if not (self.syncs_directly() and local.store.pending()):
            return
        with local.clock.move_on_after(DELIVER_BEFORE_LEAVING_S):
            while self.sync is None:
                await self._sync_started.wait()
            await self.sync.deliver_before_leaving()

    async def leave(self) -> None:
        """Say goodbye to connected siblings (going offline)."""
        if self.sync is not None:
            await self.sync.leave()

    def store_owed_copies(self) -> None:
        """Queue a sync copy of every message a sibling has not acknowledged (live sync's
        rule, :meth:`LiveSync.leaving`): through the running live sync, which knows who
        acknowledged what and who is still connected, or, when none runs (not started
        yet, or starting after a crash), through one fed what the store keeps pending."""
        if self.sync is not None:
            self.sync.leaving()
            return
        store = self._local.store
        live = LiveSync(store.siblings(), has=store.has_message)
        for pending in store.pending():
            self._publish_pending(live, pending)
        for due in live.leaving():
            self.fall_back(due.item, due.siblings)

    def covered(self, digest: bytes) -> None:
        """A sync copy of ``digest`` is in the account's swarm: whoever stored it, the
        siblings that lack the message will read it there, so store none here."""
        store = self._local.store
        for pending in store.pending(digest):
            if not pending.fell_back:
                store.fell_back(digest, [])
                if self.sync is not None:
                    self.sync.covered(digest)

    @property
    def connected(self) -> set[str]:
        return set() if self.sync is None else self.sync.connected

    # --- the SyncHandler callbacks ------------------------------------------------------------

    def history_index(self, since_ms: int) -> list[tuple[int, bytes]]:
        return self._local.store.index(since_ms)

    def history_item(self, message_id: bytes) -> Item | None:
        found = self._local.store.message(message_id)
        if found is None:
            return None
        return Item(found.id, found.timestamp_ms, found.record.to_bytes())

    def complete_until(self) -> int:
        """Everything timestamped before this is known to be in this device's history."""
        value = self._local.store.get_meta("complete_until")
        return int.from_bytes(value, "big") if value else 0

    def resynced(self, sibling: str, started_ms: int) -> None:
        """A sibling's whole history is here now: move the watermark up
        (:func:`~.sibling_rules.complete_until_after_resync`)."""
        local = self._local
        grace_ms = self._timings.grace_ms
        until = complete_until_after_resync(self.complete_until(), started_ms, grace_ms)
        local.store.set_meta("complete_until", until.to_bytes(8, "big"))
        logger.info("%s: history complete with %s up to %d", local.name, sibling[:10], until)
        local.notify()

    def file_from_sibling(self, sibling: str, item: Item) -> None:
        """A sibling pushed a message over the overlay."""
        local = self._local
        try:
            record = HistoryRecord.from_bytes(item.body)
            with local.store.transaction():
                if local.file_message(item.id, record) and record.outgoing:
                    self._stand_in(sibling, item, record)
        except (DecodeError, Refused) as exc:
            local.reject("live MSG", f"from sibling {sibling[:12]}…: {exc}")

    def _stand_in(self, origin: str, item: Item, record: HistoryRecord) -> None:
        """A message ``origin`` just sent: if ``origin`` goes away before storing the sync
        copy that our other siblings need, store it in its place. Waiting longer than the
        origin's grace period leaves the copy to the origin while it is there."""
        store, now = self._local.store, self._local.clock.now_ms()
        others = set(store.siblings()) - {origin}
        sync = self.sync  # None: history being re-synced, not live
        takeover_ms = self._timings.takeover_ms
        if sync is None or not stands_in(len(others), now - record.timestamp_ms, takeover_ms):
            return
        store.add_pending(item.id, now, item.body, False, relayed_from=origin)
        for pending in store.pending(item.id):
            self._publish_pending(sync, pending)

    def covered_by_sibling(self, message_id: bytes) -> None:
        """A sibling stored this message's sync copy."""
        self.covered(message_id)

    def fall_back(self, item: Item, siblings: tuple[str, ...]) -> bool:
        """``siblings`` did not acknowledge in time: store sync copies for them. True if
        copies were queued here (siblings that hold the message are then told)."""
        local = self._local
        store = local.store
        found = store.pending(item.id)
        plan = fall_back_plan(found[0] if found else None, self.connected)
        if plan is FallBack.NOTHING:
            return False
        if plan is FallBack.SETTLED:
            store.fell_back(item.id, [])
            return False
        record = HistoryRecord.from_bytes(item.body)
        content = SyncSent(item.id, record.conversation, record.timestamp_ms, record.text)
        owners = local.rules.fallback_owners(local.user_id, siblings)
        with store.transaction():
            copies = local.queue_copies(content, owners, record.timestamp_ms, item.id)
            store.fell_back(item.id, copies)
        local.wake_outbox()
        return True

    def acknowledged(self, message_id: bytes, fell_back: bool) -> None:
        """Every sibling holds the message: its sync copy can go, and in ``linked`` mode
        an inbound message can leave the account's swarm early too."""
        local = self._local
        early = deleted_once_acknowledged(
            local.store.pending(message_id), local.user_id, message_id
        )
        with local.store.transaction():
            local.store.acknowledged(message_id, early)
        local.wake_outbox()

    def reject_from_sibling(self, sibling: str, reason: str) -> None:
        self._local.reject("live record", f"from sibling {sibling[:12]}…: {reason}")

    def entry_listing(self) -> Relays | None:
        return self._local.entry_listing()

    def learn_entry_listing(self, listing: Relays) -> bool:
        """A sibling's listing: if :func:`learn_from_sibling` keeps it, build paths
        through its relays (this device may not have read some of them yet); if it came
        as its read time alone (:meth:`Relays.agreed`), read the registry again, which
        lists more relays than this device knows."""
        if not learn_from_sibling(self._local, listing):
            return False
        self._use_listing(listing)
        if not listing.contacts:
            self._read_again.ask()
        return True

    def relays_read(self, contacts: Sequence[RelayContact]) -> None:
        """This device read the relay listing and its sibling endpoint took it: the
        onion pool's endpoint takes it too, and if :func:`learn_read` keeps it as the
        one the siblings deal on, the siblings connected now hear of it (the others when
        they connect)."""
        self._on_listing(list(contacts))
        listing = learn_read(self._local, contacts)
        if listing is not None and self.sync is not None:
            self.sync.share_listing(listing)

    def _use_listing(self, listing: Relays) -> None:
        contacts = list(listing.contacts)
        if not contacts:  # its read time alone: no relays to add
            return
        if self.sync is not None and self.sync.endpoint is not None:
            self.sync.endpoint.update_directory(contacts)
        self._on_listing(contacts)
