"""The open group server: the RPC methods of :mod:`p2psync.opengroup`, attributing each
post once, when it arrives, and rationing room creation and posting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from overlay.link import LinkClosed, Transport

from ..clock import Clock
from ..errors import ConnectionLost, DecodeError, RpcError
from ..fileserver.client import FileServerClient
from ..identity import ed25519_to_x25519, session_id_key
from ..mapping import check_authorised
from ..rpc import Connection, KeyedRateLimit, RpcPool, RpcServer, ServerLimits, open_rpc_pool
from ..wire import Fields
from .posts import (
    DEFAULT_MESSAGES_LIMIT,
    MAX_MESSAGES_LIMIT,
    MAX_POST_BYTES,
    MAX_ROOM_CHARS,
    MAX_ROOMS,
    POST_KEY_REFILL_S,
    POST_REFILL_S,
    POSTS_BURST,
    POSTS_PER_KEY,
    ROOM_KEY_REFILL_S,
    ROOM_POST_REFILL_S,
    ROOM_POSTS_BURST,
    ROOM_REFILL_S,
    ROOMS_BURST,
    ROOMS_PER_KEY,
    Post,
    RoomRequest,
    check_fresh,
    check_room_name,
)
from .store import OpenGroupStore

logger = logging.getLogger(__name__)


class OpenGroupServer:
    """The open group's RPC front. ``fileserver_url`` set: ``mapped`` mode, attribution by
    the file server, reached over ``transport``; ``None``: ``linked`` mode.

    :meth:`serve` owns the database and the file-server connection: both open when it
    starts and close when it is cancelled, so a restart is a new server on the same file.
    The file server connection is re-made on demand: while the file server is down, posts
    are refused with ``unavailable`` and everything else works.
    """

    def __init__(
        self,
        db_path: str | Path,
        clock: Clock,
        fileserver_url: str | None,
        transport: Transport,
        *,
        max_rooms: int = MAX_ROOMS,
        limits: ServerLimits | None = None,
        room_creators: Iterable[str] | None = None,
    ) -> None:
        """``room_creators``: the session ids whose keys alone may create rooms (None:
        any key, rationed; see :mod:`p2psync.opengroup`)."""
        self.db_path = Path(db_path)
        self._room_creators = (
            None if room_creators is None else frozenset(map(session_id_key, room_creators))
        )
        self.clock = clock
        self.fileserver_url = fileserver_url
        self.transport = transport
        self.max_rooms = max_rooms
        self._store: OpenGroupStore | None = None
        self._pool: RpcPool | None = None
        self._room_limit = KeyedRateLimit(
            ROOMS_PER_KEY, ROOM_KEY_REFILL_S, ROOMS_BURST, ROOM_REFILL_S, clock.now_ms() / 1000
        )
        self._post_limit = KeyedRateLimit(
            POSTS_PER_KEY, POST_KEY_REFILL_S, POSTS_BURST, POST_REFILL_S, clock.now_ms() / 1000
        )
        # Per room; its total (every room at once) never binds before the rooms' own.
        self._room_posts = KeyedRateLimit(
            ROOM_POSTS_BURST,
            ROOM_POST_REFILL_S,
            max_rooms * ROOM_POSTS_BURST,
            ROOM_POST_REFILL_S / max_rooms,
            clock.now_ms() / 1000,
        )
        self.rpc = RpcServer(
            {
                "create_room": self._create_room,
                "list_rooms": self._list_rooms,
                "post": self._post,
                "messages": self._messages,
            },
            limits,
        )

    @property
    def mode(self) -> str:
        return "linked" if self.fileserver_url is None else "mapped"

    @property
    def store(self) -> OpenGroupStore:
        if self._store is None:
            raise RuntimeError("the open group server is not serving")
        return self._store

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` until cancelled; ``task_status.started(bound_url)``."""
        if self._store is not None:
            raise RuntimeError("this open group server is already serving")
        self._store = OpenGroupStore(self.db_path, max_rooms=self.max_rooms)
        try:
            async with open_rpc_pool(self.transport) as pool:
                self._pool = pool
                await self.rpc.serve(transport, address, task_status=task_status)
        finally:
            self._pool = None
            self._store.close()
            self._store = None

    async def _create_room(self, params: Fields, conn: Connection) -> Any:
        request = RoomRequest.from_params(params)
        check_authorised(request)
        now_ms = self.clock.now_ms()
        check_fresh(request.timestamp_ms, now_ms, "room request")
        if self.store.has_room(request.room):
            return {"room": request.room, "created": False}
        if (
            self._room_creators is not None
            and ed25519_to_x25519(request.key) not in self._room_creators
        ):
            raise RpcError("unauthorized", "rooms on this server are made by its operator's keys")
        if not self._room_limit.allow(request.key, now_ms / 1000):
            raise RpcError("rate_limited", "too many new rooms: try again later")
        return {"room": request.room, "created": self.store.create_room(request.room, now_ms)}

    async def _list_rooms(self, params: Fields, conn: Connection) -> Any:
        params.only()
        return {"rooms": self.store.rooms()}

    def _require_room(self, params: Fields) -> str:
        room = check_room_name(params.text("room", max_len=MAX_ROOM_CHARS))
        if not self.store.has_room(room):
            raise RpcError("not_found", f"no room {room!r}")
        return room

    async def _post(self, params: Fields, conn: Connection) -> Any:
        params.only("room", "post")
        room = self._require_room(params)
        data = params.blob("post")
        if len(data) > MAX_POST_BYTES:
            raise RpcError("too_large", f"a post is at most {MAX_POST_BYTES} bytes")
        post = Post.from_bytes(data)
        if post.room != room:
            raise DecodeError("the post was signed for another room")
        check_authorised(post)
        stored = self.store.find(post.hash)
        if stored is None:
            now_ms = self.clock.now_ms()
            check_fresh(post.timestamp_ms, now_ms, "post")
            # Charged to the key, the server and the room only if all three admit it: a
            # post one refuses costs the others nothing (else posts a flooded room
            # refused spent every other room's share of the server's allowance).
            now_s = now_ms / 1000
            if not self._post_limit.admits(post.key, now_s):
                raise RpcError("rate_limited", "too many posts: try again later")
            if not self._room_posts.admits(room.encode(), now_s):
                raise RpcError("rate_limited", f"too many posts to {room!r}: try again later")
            self._post_limit.allow(post.key, now_s)
            self._room_posts.allow(room.encode(), now_s)
            user = await self._attribute(post)
            stored = self.store.add(post, user, now_ms)
        post_id, user = stored
        return {"id": post_id, "user": user}

    async def _attribute(self, post: Post) -> str:
        """The user a verified post belongs to, or ``unauthorized`` for a false claim."""
        if self.fileserver_url is None or self._pool is None:
            user = post.sender
        else:
            try:
                client = FileServerClient(await self._pool.get(self.fileserver_url))
                user = (await client.get_mappings(post.sender)).primary
            except (
                OSError,
                LinkClosed,
                ConnectionLost,
                RpcError,
                DecodeError,
                trio.TooSlowError,
            ) as exc:
                logger.warning("file server lookup for %s failed: %r", post.sender[:12], exc)
                raise RpcError("unavailable", "the file server cannot confirm the sender") from None
        if post.primary is not None and post.primary != user:
            raise RpcError("unauthorized", "the sender is not a device of the claimed primary")
        return user

    async def _messages(self, params: Fields, conn: Connection) -> Any:
        params.only("room", "since", "limit")
        room = self._require_room(params)
        since = params.uint("since")
        limit = (
            params.uint("limit", maximum=MAX_MESSAGES_LIMIT)
            if params.has("limit")
            else DEFAULT_MESSAGES_LIMIT
        )
        found, more = self.store.messages(room, since, max(limit, 1))
        return {"messages": [m.to_wire() for m in found], "more": more}
