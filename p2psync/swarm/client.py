"""The swarm client: what a device uses to store into and read from swarms.

``async with open_swarm_client(transport, directory, clock) as swarm`` gives:

* ``store`` — to a random member of the owner's swarm, retrying across members and
  following ``wrong_swarm`` redirects (the registry may be newer than ours);
* ``retrieve`` / ``delete`` / ``expire`` — signed with the owner's identity;
* ``poll`` — a loop (default every 3 s with jitter, exponential back-off on errors)
  that hands each batch of new messages to a callback, and ``subscribe``, the same with
  pushes; both run until cancelled and keep their place in a :class:`Cursor`.

Which member to ask next and what its answer means is
:class:`~.attempts.MemberAttempts`'s to decide; where a reader is in a stream, and how it
rewinds on another node, :class:`~.cursor.Cursor`'s.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from overlay.link import Transport

from ..backoff import Backoff, jittered
from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity
from ..rpc import Params, RpcClient, RpcRouter, open_rpc, open_rpc_pool
from .access import MailboxAccess
from .attempts import (
    GiveUp,
    MemberAttempts,
    Refresh,
    failed_last,
    second_opinion,
    with_second_opinion,
)
from .auth import AuthSigner
from .constants import DEFAULT_TTL_MS, POLL_INTERVAL_S
from .cursor import PAGES_PER_DRAIN, Cursor, StreamRead
from .directory import Directory, Listing
from .listing import Snapshot
from .messages import (
    DeleteReply,
    DeleteRequest,
    ExpireReply,
    ExpireRequest,
    Message,
    Notification,
    RetrieveReply,
    RetrieveRequest,
    StoreBatchReply,
    StoreBatchRequest,
    StoreReply,
    StoreRequest,
    SubscribeRequest,
)
from .ring import NodeInfo, SwarmMap

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
#: Members a subscription remembers as failed lately (a swarm has at most 8).
MAX_REMEMBERED_FAILURES = 16
Deliver = Callable[[list[Message]], Awaitable[None]]


__all__ = ["Deliver", "Message", "SwarmClient", "open_swarm_client"]


def _messages_from(result: object) -> tuple[list[Message], bool]:
    """A ``retrieve`` reply's messages, every hash checked against its data."""
    reply = RetrieveReply.from_wire(result)
    return list(reply.messages), reply.more


class SwarmClient:
    def __init__(
        self, pool: RpcRouter, directory: Listing, clock: Clock, rng: random.Random
    ) -> None:
        self._pool = pool
        self.directory = directory
        self.clock = clock
        self._random = rng
        self.swarms = SwarmMap({})
        self._signers: dict[str, AuthSigner] = {}

    async def refresh(self) -> None:
        snapshot: Snapshot = await self.directory.fetch()
        self.swarms = SwarmMap.build(snapshot.nodes)

    async def swarm_nodes(self, owner: str) -> list[NodeInfo]:
        """The members of ``owner``'s swarm in a random order (the registry read first
        if none is known)."""
        if not any(self.swarms.swarms.values()):
            await self.refresh()
        nodes = self._members(owner)
        if not nodes:
            raise RpcError("unavailable", "the registry lists no service nodes")
        return nodes

    def _members(self, owner: str) -> list[NodeInfo]:
        """The members of ``owner``'s swarm as known now, in a random order."""
        if not any(self.swarms.swarms.values()):
            return []
        nodes = list(self.swarms.members_of_owner(owner))
        self._random.shuffle(nodes)
        return nodes

    def signer(self, identity: Identity) -> AuthSigner:
        signer = self._signers.get(identity.session_id)
        if signer is None or signer.identity is not identity:
            signer = self._signers[identity.session_id] = AuthSigner(identity)
        return signer

    async def _call_swarm(
        self, owner: str, method: str, params: Params, *, besides: NodeInfo | None = None
    ) -> tuple[Any, NodeInfo]:
        """Call ``method`` on members of ``owner``'s swarm (but ``besides``, whose
        refusal for good was had already) until one answers, as
        :class:`~.attempts.MemberAttempts` decides."""
        attempts = MemberAttempts(await self.swarm_nodes(owner), besides=besides)
        while (node := attempts.next()) is not None:
            try:
                return await self._pool.call(node.url, method, params), node
            except (RpcError, OSError, ConnectionLost) as exc:
                step = attempts.failed(node, exc)
            if isinstance(step, GiveUp):
                raise step.error from None
            if isinstance(step, Refresh):
                await self.refresh()
                attempts.restart(await self.swarm_nodes(owner))
        raise attempts.exhausted()

    async def store(
        self,
        owner: str,
        namespace: int,
        data: bytes,
        ttl_ms: int = DEFAULT_TTL_MS,
        node: NodeInfo | None = None,
        access: MailboxAccess | None = None,
    ) -> tuple[bytes, int]:
        """Store and return (hash, expiry). The same data stored twice is one message.
        ``node`` asks that member alone (say, to audit what one member acknowledges);
        ``access``, the owner's, lets the store use the owner's reserve (:mod:`.access`)."""
        now_ms = self.clock.now_ms()
        params = StoreRequest(owner, namespace, ttl_ms, now_ms, data, access).to_wire()
        if node is not None:
            result = await self._pool.call(node.url, "store", params)
        else:
            result, _ = await self._call_swarm(owner, "store", params)
        reply = StoreReply.from_wire(result)
        return reply.hash, reply.expiry_ms

    async def store_batch(self, request: StoreBatchRequest) -> list[tuple[bytes, int] | RpcError]:
        """One ``store_batch`` (its stores for owners of one swarm, within the limits:
        :func:`~.messages.store_batches` cuts a longer list): per store its (hash,
        expiry) as :meth:`store` returns them, or its refusal. A failure of the request
        itself (no member answered, or the batch refused whole) raises, as :meth:`store`
        does. Stores the member refused for good are asked of another member (see
        :meth:`_call_swarm`), whose answer stands: stored, or refused by a second
        member; none answering, they are ``unavailable``."""
        if not request.stores:
            raise ValueError("a store_batch holds at least one store")
        owner = request.stores[0].pubkey
        result, node = await self._call_swarm(owner, "store_batch", request.to_wire())
        results = _batch_results(result, request)
        # The swarm as the call above read it: a swarm of one has confirmed already.
        asked = second_opinion(results, len(self.swarms.members_of_owner(owner)))
        if not asked:
            return results
        again = StoreBatchRequest(tuple(request.stores[i] for i in asked))
        second: list[tuple[bytes, int] | RpcError] | Exception
        try:
            result, _ = await self._call_swarm(owner, "store_batch", again.to_wire(), besides=node)
            second = _batch_results(result, again)
        except (RpcError, OSError, ConnectionLost, DecodeError) as exc:
            second = exc
        return with_second_opinion(results, asked, second)

    async def retrieve(
        self,
        identity: Identity,
        namespace: int,
        last_hash: bytes | None,
        node: NodeInfo | None = None,
    ) -> tuple[list[Message], bool, NodeInfo]:
        signer = self.signer(identity)

        def params() -> dict[str, Any]:
            auth = signer.sign("retrieve", namespace, self.clock.now_ms())
            return RetrieveRequest(identity.session_id, namespace, last_hash, auth).to_wire()

        if node is not None:
            result = await self._pool.call(node.url, "retrieve", params)
        else:
            result, node = await self._call_swarm(identity.session_id, "retrieve", params)
        messages, more = _messages_from(result)
        return messages, more, node

    async def delete(
        self, identity: Identity, namespace: int, hashes: Sequence[bytes]
    ) -> list[bytes]:
        signer = self.signer(identity)

        def params() -> dict[str, Any]:
            auth = signer.sign("delete", namespace, self.clock.now_ms(), hashes)
            return DeleteRequest(identity.session_id, namespace, tuple(hashes), auth).to_wire()

        result, _ = await self._call_swarm(identity.session_id, "delete", params)
        return list(DeleteReply.from_wire(result, asked=len(hashes)).deleted)

    async def expire(
        self, identity: Identity, namespace: int, hashes: Sequence[bytes], expiry_ms: int
    ) -> list[bytes]:
        signer = self.signer(identity)

        def params() -> dict[str, Any]:
            auth = signer.sign("expire", namespace, self.clock.now_ms(), hashes, expiry_ms)
            request = ExpireRequest(identity.session_id, namespace, tuple(hashes), expiry_ms, auth)
            return request.to_wire()

        result, _ = await self._call_swarm(identity.session_id, "expire", params)
        return list(ExpireReply.from_wire(result, asked=len(hashes)).updated)

    async def drain(
        self,
        identity: Identity,
        namespace: int,
        cursor: Cursor,
        node: NodeInfo | None = None,
        read: StreamRead | None = None,
    ) -> tuple[list[Message], NodeInfo, bool]:
        """What is newer than the cursor, deduplicated, up to :data:`PAGES_PER_DRAIN`
        pages; and whether the node has more (:meth:`catch_up` reads on). ``read`` is
        what the node served of the stream so far (:class:`DecodeError` once it fails)."""
        read = read or StreamRead()
        collected: list[Message] = []
        last = cursor.at(self.clock.now_ms())
        more = True
        for _ in range(PAGES_PER_DRAIN):
            messages, more, served_by = await self.retrieve(identity, namespace, last, node)
            if node is not None and served_by is not node:
                break
            if node is None:
                node = served_by
            read.take(messages, more, last)
            collected += cursor.fresh(messages, trio.current_time())
            last = cursor.last_hash
            if not more:
                break
        assert node is not None
        return collected, node, more

    async def catch_up(
        self,
        identity: Identity,
        namespace: int,
        cursor: Cursor,
        deliver: Deliver,
        node: NodeInfo | None = None,
    ) -> NodeInfo:
        """Deliver everything newer than the cursor, a drain at a time (each delivered
        before the next is read), and return the node that served it."""
        read = StreamRead()
        more = True
        while more:
            batch, node, more = await self.drain(identity, namespace, cursor, node, read)
            if batch:
                await deliver(batch)
        assert node is not None
        return node

    async def poll(
        self,
        identity: Identity,
        namespace: int,
        deliver: Deliver,
        *,
        cursor: Cursor | None = None,
        interval_s: float = POLL_INTERVAL_S,
        jitter: float = 0.1,
    ) -> None:
        """Poll until cancelled; each non-empty batch of new messages goes to ``deliver``."""
        cursor = cursor or Cursor()
        node: NodeInfo | None = None
        backoff = Backoff(2 * interval_s, MAX_BACKOFF_S)
        while True:
            try:
                node = await self.catch_up(identity, namespace, cursor, deliver, node)
                backoff.succeeded()
                wait = interval_s
            except (RpcError, OSError, ConnectionLost, DecodeError) as exc:
                logger.info("poll for %s failed: %s", identity.session_id[:10], exc)
                if node is not None:
                    node = None
                    cursor.for_new_node()
                wait = backoff.failed()
            await trio.sleep(jittered(wait, jitter, self._random))

    async def subscribe(
        self,
        identity: Identity,
        namespace: int,
        deliver: Deliver,
        *,
        cursor: Cursor | None = None,
        catch_up_s: float = 60.0,
    ) -> None:
        """Like :meth:`poll` but woken by pushes; still catches up by cursor on every
        (re)connection and every ``catch_up_s``, so a dropped push loses nothing. A pool
        without a ``transport`` (onion requests) has no connection to push on: refused.

        Which member to subscribe at next, and when to read the registry again (a member
        answering ``wrong_swarm``: the swarm has moved), is
        :class:`~.attempts.MemberAttempts`'s to say, as for every other call; a member
        that fails is followed at once by the next, and only failures in a row back off."""
        transport = self._pool.transport
        if transport is None:
            raise ValueError("subscriptions need direct connections; this pool has none")
        cursor = cursor or Cursor()
        owner = identity.session_id
        backoff = Backoff(POLL_INTERVAL_S, MAX_BACKOFF_S, immediate=1)
        attempts: MemberAttempts | None = None
        step: Refresh | GiveUp | None = None  # a Refresh stays due until a read succeeds
        failed: list[str] = []  # members whose subscription failed, the latest last
        while True:
            node: NodeInfo | None = None
            live = False
            try:
                if attempts is None:
                    attempts = MemberAttempts(failed_last(await self.swarm_nodes(owner), failed))
                if isinstance(step, Refresh):
                    await self.refresh()
                    attempts.restart(failed_last(await self.swarm_nodes(owner), failed))
                    step = None
                node = attempts.next()
                if node is None:
                    attempts = None  # every member was asked: a new round, after a wait
                    raise RpcError("unavailable", "no member of the swarm took the subscription")
                async with self._subscription(transport, identity, namespace, node) as pushes:
                    live = True
                    backoff.succeeded()
                    await self._take_pushes(
                        pushes, identity, namespace, deliver, cursor, node, catch_up_s
                    )
            except (RpcError, OSError, ConnectionLost, DecodeError, trio.EndOfChannel) as exc:
                logger.info("subscription for %s interrupted: %s", owner[:10], exc)
                if node is not None:
                    failed = [*(key for key in failed if key != node.pubkey), node.pubkey]
                    del failed[:-MAX_REMEMBERED_FAILURES]
                    if live:  # a new round, from the swarm as known now
                        attempts = MemberAttempts(failed_last(self._members(owner), failed))
                    assert attempts is not None
                    step = attempts.failed(node, exc)
                    if isinstance(step, GiveUp):
                        attempts, step = None, None
                await trio.sleep(backoff.failed())

    @asynccontextmanager
    async def _subscription(
        self, transport: Transport, identity: Identity, namespace: int, node: NodeInfo
    ) -> AsyncIterator[RpcClient]:
        """A subscription at ``node``, on a connection of its own (pushes of other
        subscriptions must not mix in)."""
        async with open_rpc(transport, node.url) as connection:
            auth = self.signer(identity).sign("subscribe", namespace, self.clock.now_ms())
            request = SubscribeRequest(identity.session_id, namespace, auth)
            await connection.call("subscribe", request.to_wire())
            yield connection

    async def _take_pushes(
        self,
        connection: RpcClient,
        identity: Identity,
        namespace: int,
        deliver: Deliver,
        cursor: Cursor,
        node: NodeInfo,
        catch_up_s: float,
    ) -> None:
        """Deliver what ``node`` pushes, until the subscription fails: catch up by
        cursor first (rewound: another node's order), and again after ``catch_up_s``
        without a push."""
        cursor.for_new_node()
        caught_up = False
        while True:
            if not caught_up:
                await self.catch_up(identity, namespace, cursor, deliver, node)
            with trio.move_on_after(catch_up_s) as waiting:
                push = await connection.notifications.receive()
                pushed = Notification.from_wire(push.params).messages
                fresh = cursor.fresh(pushed, trio.current_time())
                if fresh:
                    await deliver(fresh)
            caught_up = not waiting.cancelled_caught


def _batch_results(
    result: object, request: StoreBatchRequest
) -> list[tuple[bytes, int] | RpcError]:
    reply = StoreBatchReply.from_wire(result, stores=len(request.stores))
    return [(r.hash, r.expiry_ms) if isinstance(r, StoreReply) else r for r in reply.results]


@asynccontextmanager
async def open_swarm_client(
    transport: Transport, directory: Directory, clock: Clock, *, seed: int | None = None
) -> AsyncIterator[SwarmClient]:
    """A :class:`SwarmClient` for as long as the block runs: the swarm members it picks
    come from ``directory``'s listing, and its connections, pooled by server, close when
    the block ends. ``seed`` makes its choice of members reproducible (tests)."""
    async with open_rpc_pool(transport) as pool:
        yield SwarmClient(pool, directory, clock, random.Random(seed))
