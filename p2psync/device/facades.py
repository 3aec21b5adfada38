"""The parts of a device's API that belong together: ``device.friends``,
``device.pairing`` and ``device.rooms`` (DESIGN.md §10).

Each is a thin facade, like :class:`~.device.Device` itself: friend requests run through
the friend machine (:mod:`.friends`) and its effects are executed here; pairing is the
pairing drivers' (:mod:`.joiner` on the new device, :mod:`.pairer` on the primary);
public rooms are the open-group server's. Grouping them keeps the device's own surface
to what every client touches (who it is, history, sending, sync, going online) and makes
each group's calls read as one vocabulary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from ..errors import DecodeError
from ..identity import sealable_key
from ..opengroup.client import OpenGroupClient, PostReceipt
from ..opengroup.posts import RoomMessage, sign_post, sign_room_request
from .content import MAX_TEXT_CHARS, FriendAccept, FriendRequest
from .friends import ContactState, FriendEffect, FriendEvent, IllegalTransition
from .friends import transition as friend_transition
from .joiner import Joiner
from .local import Local
from .outbox import Outbox
from .pairer import Pairer
from .rows import Contact
from .values import DeviceError, PairingOffer, PairingTicket, Room


def check_user_id(user: str) -> None:
    try:
        sealable_key(user)
    except DecodeError as exc:
        raise DeviceError(f"{user!r} is not a session id ({exc})") from None


def check_text(text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise DeviceError(f"a message is at most {MAX_TEXT_CHARS} characters")


async def befriend(local: Local, outbox: Outbox, contact: Contact) -> None:
    """Tell ``contact`` every device of ours, and our siblings the new friend: what
    accepting a request sends, and what the receiver does when a request crosses ours."""
    devices = await outbox.own_devices()
    with local.store.transaction():
        accept = FriendAccept(local.user_id, devices, local.display_name, local.own_revocations())
        local.queue(accept, contact.user)
        local.set_contact(replace(contact, state=ContactState.FRIEND))
    local.wake_outbox()


class Friends:
    """Contacts and friend requests (``device.friends``)."""

    def __init__(self, local: Local, outbox: Outbox) -> None:
        self._local = local
        self._outbox = outbox

    def contacts(self) -> list[Contact]:
        """Every contact: friends, requests either way, declined."""
        return self._local.store.contacts()

    def contact(self, user: str) -> Contact | None:
        """The contact ``user``, if known."""
        return self._local.store.contact(user)

    async def request(self, user: str, text: str = "") -> None:
        """Ask ``user`` to be friends; if they already asked us, this accepts instead."""
        check_user_id(user)
        if user == self._local.user_id:
            raise DeviceError("a user cannot befriend themselves")
        check_text(text)
        await self._run(user, FriendEvent.REQUEST, text)

    async def accept(self, user: str) -> None:
        """Accept ``user``'s waiting request; they learn every device of ours."""
        await self._run(user, FriendEvent.ACCEPT)

    async def decline(self, user: str) -> None:
        """Refuse a request; the requester is not told (that would confirm we exist)."""
        await self._run(user, FriendEvent.DECLINE)

    async def _run(self, user: str, event: FriendEvent, text: str = "") -> None:
        """Run the user's ``event`` through the friend machine and execute its effects."""
        local = self._local
        if event != FriendEvent.DECLINE:  # declining sends nothing
            local.check_belongs()
        existing = local.store.contact(user)
        try:
            move = friend_transition(None if existing is None else existing.state, event)
        except IllegalTransition as exc:
            raise DeviceError(f"{user[:12]}… {exc}") from None
        if FriendEffect.SEND_ACCEPT in move.effects:
            assert existing is not None
            await befriend(local, self._outbox, existing)
            return
        if FriendEffect.SEND_REQUEST in move.effects:
            devices = await self._outbox.own_devices()
            with local.store.transaction():
                request = FriendRequest(
                    local.user_id, devices, text, local.display_name, local.own_revocations()
                )
                local.queue(request, user)
                local.set_contact(Contact(user, move.state, (user,), text))
        else:
            assert existing is not None
            with local.store.transaction():
                local.set_contact(replace(existing, state=move.state))
        local.wake_outbox()


class DevicePairing:
    """Adding the user's devices and taking them away (``device.pairing``)."""

    def __init__(self, joiner: Joiner, pairer: Pairer) -> None:
        self._joiner = joiner
        self._pairer = pairer

    def address(self) -> str | None:
        """What a new device asks this one to pair by (:meth:`request`'s ``primary``):
        the user's id with this week's access to its mailbox, so that the requests get
        through while a stranger floods the mailbox. Show it to the user's new device
        alone: whoever holds it may fill the user's reserve until it stops counting, 28
        to 35 days on, as a friend the user wrote to that week may. None on a device
        that may not pair others (a ``mapped`` secondary, or one its primary unpaired)."""
        return self._pairer.address()

    def refusal(self, primary: str) -> str | None:
        """Why :meth:`request` of ``primary`` would be refused here before anything is
        sent (this device joined a user already, has history, or is ``primary``), or
        None: for a screen that offers pairing only where it can work."""
        return self._joiner.refusal(primary)

    async def request(self, primary: str, name: str | None = None) -> PairingTicket:
        """On a new device: ask ``primary`` (the user's existing device: its pairing
        :meth:`address`, or the user's id) to pair, and wait for its challenge (it must
        be online) to return the ticket. Show the ticket's code; the user accepts on the
        primary when it shows the same code, and :meth:`wait_paired` returns once the
        grant arrived and checked out."""
        return await self._joiner.request_pairing(primary, name)

    async def wait_paired(self) -> None:
        """Wait until the primary's grant arrived and checked out (put a deadline on it)."""
        await self._joiner.wait_paired()

    def requests(self) -> list[PairingOffer]:
        """Requests from new devices waiting for the user to compare codes and accept."""
        return self._pairer.pairing_requests()

    def held(self) -> int:
        """How many requests wait unanswered: past the answer budget (too many came at
        once, strangers' perhaps), they are answered only by :meth:`answer_held`."""
        return self._pairer.held_requests()

    async def answer_held(self) -> int:
        """Answer the held requests that arrived last (a few), so that they are listed by
        :meth:`requests` once answered: call it when the user looks at the requests.
        Returns how many were answered."""
        return await self._pairer.answer_held()

    async def answer_device(self, device: str) -> None:
        """Answer the request of the new device whose id starts with ``device`` (the
        first 10 or more characters, as the new device shows them), whatever strangers'
        requests spent or pushed out: returns once it is answered and listed by
        :meth:`requests` (put a deadline on it: the new device asks again every 30 s)."""
        await self._pairer.answer_device(device)

    async def accept(self, code: str) -> str:
        """On the primary, after the user saw ``code`` on both screens: grant the request
        and return the new device's id."""
        return await self._pairer.accept_pairing(code)

    async def decline(self, code: str) -> None:
        """On the primary: refuse the request showing ``code``."""
        await self._pairer.decline_pairing(code)

    async def revoke(self, device: str) -> None:
        """On the primary (``mapped``): unpair ``device``; senders stop reaching it once
        their cached device list expires, and this device stops syncing to it at once."""
        await self._pairer.revoke_device(device)


class Rooms:
    """Public rooms on the network's open-group server (``device.rooms``)."""

    def __init__(self, local: Local, server: Callable[[], Awaitable[OpenGroupClient]]) -> None:
        self._local = local
        self._server = server

    async def create(self, room: str) -> Room:
        """Create a public room (signed by this user: the server rations rooms per key);
        the room says whether it was ``created`` now or existed already."""
        request = sign_room_request(self._local.identity, room, self._local.clock.now_ms())
        return Room(room, await (await self._server()).create_room(request))

    async def post(self, room: str, text: str) -> PostReceipt:
        """Post to a public room, signed by this device; the server attributes it to the user."""
        local = self._local
        local.check_belongs()
        claim = None if local.is_primary else local.user_id
        post = sign_post(local.identity, room, text.encode(), local.clock.now_ms(), primary=claim)
        return await (await self._server()).post(post)

    async def messages(self, room: str, since: int = 0) -> list[RoomMessage]:
        """A public room's messages after ``since`` (a message id)."""
        messages, _ = await (await self._server()).messages(room, since)
        return messages
