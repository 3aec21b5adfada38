"""Typed calls to an open group server (:class:`OpenGroupClient`); what it lists is
checked against the signed posts (:meth:`~.posts.RoomMessage.check`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from overlay.link import Transport

from ..errors import DecodeError
from ..mapping import AuthorisationError
from ..rpc import RpcCaller, open_rpc
from ..wire import Fields
from .posts import (
    DEFAULT_MESSAGES_LIMIT,
    MAX_MESSAGES_LIMIT,
    MAX_ROOMS,
    Post,
    RoomMessage,
    RoomRequest,
    check_room_name,
    session_id_field,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PostReceipt:
    id: int
    user: str


class OpenGroupClient:
    """Typed calls to an open group server over one RPC connection; refusals arrive as
    :class:`RpcError`, malformed answers as :class:`DecodeError`."""

    def __init__(self, rpc: RpcCaller) -> None:
        self.rpc = rpc

    async def create_room(self, request: RoomRequest) -> bool:
        """Create the room if it does not exist (:func:`sign_room_request`); True if it was
        created now."""
        result = Fields(await self.rpc.call("create_room", request.to_params()), "create_room")
        return result.only("room", "created").boolean("created")

    async def list_rooms(self) -> list[str]:
        result = Fields(await self.rpc.call("list_rooms", {}), "list_rooms").only("rooms")
        rooms = result.items("rooms", max_len=MAX_ROOMS)
        if not all(isinstance(room, str) for room in rooms):
            raise DecodeError("list_rooms.rooms must hold text")
        return [check_room_name(str(room)) for room in rooms]

    async def post(self, post: Post) -> PostReceipt:
        """Send a signed post (:func:`sign_post`); the receipt names the attributed user."""
        result = Fields(
            await self.rpc.call("post", {"room": post.room, "post": post.to_bytes()}), "post"
        ).only("id", "user")
        return PostReceipt(result.uint("id"), session_id_field(result, "user"))

    async def messages(
        self, room: str, since: int = 0, limit: int = DEFAULT_MESSAGES_LIMIT
    ) -> tuple[list[RoomMessage], bool]:
        """Posts after id ``since``, each checked against its signed post (one that fails
        is dropped with a warning: the server altered or invented it); the flag says
        whether more remain."""
        result = Fields(
            await self.rpc.call("messages", {"room": room, "since": since, "limit": limit}),
            "messages",
        ).only("messages", "more")
        found = []
        for item in result.items("messages", max_len=MAX_MESSAGES_LIMIT):
            message = RoomMessage.from_wire(item)
            try:
                message.check(room)
            except AuthorisationError as exc:
                logger.warning("dropped open-group message %d of %s: %s", message.id, room, exc)
                continue
            found.append(message)
        return found, result.boolean("more")


@asynccontextmanager
async def open_opengroup_client(transport: Transport, url: str) -> AsyncIterator[OpenGroupClient]:
    """Connect to the open group server at ``url``. ``OSError`` if it cannot be reached."""
    async with open_rpc(transport, url) as rpc:
        yield OpenGroupClient(rpc)
