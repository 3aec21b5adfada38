"""Joining an account, on the new device: the pairing machine's (:mod:`.pairing`) new
device's side, against the swarm.

It sends the request and waits for the primary's challenge (the code both screens show)
and its grant or decline, then adopts the grant: from then on it acts as the user. What
an arriving challenge, grant or decline may do is decided by the inbound core
(:mod:`.inbound`); the primary's side is :mod:`.pairer`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from ..envelope import seal_envelope
from ..errors import DecodeError, RpcError
from ..identity import Identity, message_hash, session_id_key
from ..mapping import PAIRING_WINDOW_MS, DeviceMapping, Revocation, sign_pairing_request
from ..swarm.access import NEEDS_ACCESS, MailboxAccess, sign_access
from ..swarm.client import SwarmClient
from ..swarm.constants import NAMESPACE_CONTROL
from ..wire import encode_cbor
from .content import PairGrant, PairRequest, encode_content
from .friends import ContactState
from .inbound import pairing_details
from .local import PAIRED_AT_META, SECRET_META, Local
from .pairer import move_pairing
from .pairing import (
    ASKED,
    REASK_S,
    PairingEffect,
    PairingEvent,
    declined_last,
    pairing_code,
    pairing_transition,
    request_refusal,
)
from .pairing_address import read_primary
from .rows import Contact, Pairing
from .siblings import SiblingHandler
from .values import TRANSIENT, PairingError, PairingTicket

logger = logging.getLogger(__name__)


def _read_primary(primary: str) -> tuple[str, MailboxAccess | None]:
    try:
        return read_primary(primary)
    except DecodeError as exc:
        raise PairingError(
            f"{primary[:80]!r} is neither a session id nor a pairing address ({exc})"
        ) from None


def _raise_if_it_needs_access(error: BaseException) -> None:
    """A request the user's mailbox refused as a stranger's store (full to strangers: a
    flood, perhaps) gets through by the primary's pairing address: say so."""
    if isinstance(error, RpcError) and error.data.get(NEEDS_ACCESS):
        raise PairingError(
            f"{error.message}; if a stranger is flooding the user's mailbox, ask by the"
            " primary's current pairing address (`p2psync device whoami --pairing-address`"
            " there), whose requests get through"
        ) from error


class Joiner:
    """The new device's side of pairing (see the module docstring)."""

    def __init__(
        self,
        local: Local,
        swarm: SwarmClient,
        siblings: SiblingHandler,
        relisten: Callable[[], None],
    ) -> None:
        """``relisten`` restarts the receive loops: the streams to read changed."""
        self._local = local
        self._store = local.store
        self._swarm = swarm
        self._siblings = siblings
        self._relisten = relisten
        self._paired = trio.Event()
        if self._store.get_meta("paired"):
            self._paired.set()

    async def request_pairing(self, primary: str, name: str | None = None) -> PairingTicket:
        """On a new device: ask ``primary`` (the user's existing device: its pairing
        address, or the user's id) to pair, and wait for its challenge (it must be
        online) to return the ticket. Show the ticket's code; the user accepts on the
        primary when it shows the same code, and :meth:`wait_paired` returns once the
        grant arrived and checked out."""
        primary, access = _read_primary(primary)
        refusal = self.refusal(primary)
        if refusal is not None:
            raise PairingError(refusal)
        # Every request of this attempt is made by one key and names the time it began:
        # the primary's challenges to them come to one mailbox in the order they were
        # answered, and the primary lists one device's requests of one time as one, the
        # first it answered, whose challenge the ticket is made from.
        asked_at = self._local.clock.now_ms()
        if self._local.rules.hands_over_seed():
            sender = Identity.generate()  # the grant (with the seed) is sealed to this key
            request, secret = None, sender.seed
        else:
            sender = self._local.device_identity
            request = sign_pairing_request(sender, primary, asked_at).to_bytes()
            secret = request
        content = PairRequest(
            self._local.rules.mode,
            self._local.device_id,
            self._local.overlay_key,
            name or self._local.name,
            asked_at,
            request,
        )
        asked: list[bytes] = []
        try:
            return await self._attempt(primary, access, content, sender, secret, asked)
        except BaseException:
            # Nothing of an attempt that ended without a ticket is listened for again.
            self._store.forget_pairings(asked)
            self._relisten()
            raise

    def refusal(self, primary: str) -> str | None:
        """Why this device may not ask ``primary`` (an id or a pairing address) to pair,
        or None: told before anything is sent."""
        user, _ = _read_primary(primary)
        return request_refusal(
            user,
            own_ids=(self._local.user_id, self._local.device_id),
            joined=self._paired.is_set() or bool(self._store.siblings()),
            fresh=not (self._store.contacts() or self._store.history()),
        )

    async def _attempt(
        self,
        primary: str,
        primary_access: MailboxAccess | None,
        content: PairRequest,
        sender: Identity,
        secret: bytes,
        asked: list[bytes],
    ) -> PairingTicket:
        with trio.move_on_after(PAIRING_WINDOW_MS / 1000):
            while not self._answered(asked):
                kind, body = encode_content(content)
                now = self._local.clock.now_ms()  # the envelope's: each request is its own
                access = sign_access(sender, now)  # for the primary's answer
                data = seal_envelope(sender, session_id_key(primary), kind, body, now, access)
                asked.append(self._note(primary, content, message_hash(data), secret))
                try:
                    await self._swarm.store(
                        primary, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS, access=primary_access
                    )
                except TRANSIENT as exc:
                    if len(asked) == 1:  # the first: the caller hears why at once
                        _raise_if_it_needs_access(exc)
                        raise
                    logger.info("%s: could not ask again: %s", self._local.name, exc)
                # Asked again while unanswered: past the primary's answer budget it holds
                # requests for the user, and strangers can push a held one out; the user
                # answering this device by its id there (Pairer.answer_device) waits
                # for the next.
                with trio.move_on_after(REASK_S):
                    while not self._answered(asked):
                        await self._local.changed.wait()
        self._raise_if_declined()
        answered = [  # in the order their challenges came (a challenge rewrites its row);
            # the grant may have come with the challenge, and been taken already
            (p.request_id, nonce)
            for p in self._store.pairings(incoming=False, states=ASKED)
            if p.request_id in asked and (nonce := pairing_details(p).get("nonce")) is not None
        ]
        if not answered:
            raise PairingError(f"{primary[:12]}… did not answer in time: is it online? Ask again")
        digest, nonce = answered[0]
        # The one answered is this attempt's from now on: the primary's decline of it is
        # the one that counts (:meth:`_declined`), and the others are not listened for.
        self._store.forget_pairings([d for d in asked if d != digest])
        return PairingTicket(digest, pairing_code(digest, nonce))

    def _answered(self, asked: list[bytes]) -> bool:
        """Whether the primary challenged one of the requests ``asked`` (this attempt's),
        or declined: false before the first (an earlier attempt's decline says nothing)."""
        if not asked:
            return False
        return any(self._challenge_nonce(d) is not None for d in asked) or self._declined()

    def _note(self, primary: str, content: PairRequest, digest: bytes, secret: bytes) -> bytes:
        """Note a request before it is sent (the primary's challenge may come before the
        store's answer does), and listen where its answers arrive; its id."""
        move = pairing_transition(None, PairingEvent.REQUEST_SENT)
        state = encode_cbor({"secret": secret})
        self._store.put_pairing(
            Pairing(digest, False, primary, content.name, content.timestamp_ms, move.state, state)
        )
        if PairingEffect.LISTEN in move.effects:
            self._relisten()
        return digest

    def _challenge_nonce(self, request_id: bytes) -> bytes | None:
        pairing = self._store.pairing(request_id)
        return None if pairing is None else pairing_details(pairing).get("nonce")

    def _declined(self) -> bool:
        """Whether the primary declined this device's latest request (an earlier attempt's
        decline says nothing of a later one)."""
        return declined_last(self._store.pairings(incoming=False, states=ASKED))

    def _raise_if_declined(self) -> None:
        if self._declined():
            mode = self._local.rules.mode
            raise PairingError(
                "the primary declined this device's pairing request (pair again to retry;"
                f" a primary of the other mode declines at once: this device is {mode})"
            )

    async def wait_paired(self) -> None:
        """Wait until the primary's grant arrived and checked out (put a deadline on it);
        :class:`PairingError` as soon as the primary's decline arrives instead."""
        while not self._paired.is_set():
            self._raise_if_declined()
            await self._local.changed.wait()

    @property
    def paired(self) -> bool:
        """Whether this device joined a user by pairing."""
        return self._paired.is_set()

    def adopt_grant(
        self, pairing: Pairing, grant: PairGrant, revocations: Sequence[Revocation]
    ) -> None:
        """The grant checked out: act as the user from now on, trusting none of the
        devices the user unpaired (``revocations``, from the grant), whatever a file
        server says."""
        store = self._store
        with store.transaction():
            store.keep_revocations(revocations, own_user=pairing.peer)
            if grant.seed is not None:
                store.set_meta("account_seed", grant.seed)
            store.set_meta("user", pairing.peer.encode())
            store.set_meta("paired", b"1")
            if grant.mapping is not None:
                paired_at_ms = DeviceMapping.from_bytes(grant.mapping).timestamp_ms
                store.set_meta(PAIRED_AT_META, str(paired_at_ms).encode())
            move_pairing(self._store, pairing, PairingEvent.GRANT_RECEIVED)
            store.set_meta(SECRET_META, grant.secret)
            for sibling in grant.devices:
                if sibling.device != self._local.device_id:
                    store.add_sibling(sibling.device, sibling.name, sibling.overlay)
            for record in grant.contacts:
                state = ContactState(record.state)
                store.put_contact(Contact(record.user, state, record.devices, name=record.name))
            if grant.name:
                self._local.set_display_name(grant.name, self._local.clock.now_ms())
        self._local.load_identity()
        self._paired.set()
        self._relisten()  # now receive as the user
        self._siblings.restart()
        self._local.notify()
