"""The pairing driver: runs the pairing machine (:mod:`.pairing`) against the swarm.

On the new device it sends the request and waits for the primary's challenge (the code
both screens show) and grant, or its decline; on the primary it answers requests with a
challenge, lists them for the user, and grants or declines (telling the new device) the
one whose code the user confirmed; it also revokes a device. Every state change goes
through :func:`~.pairing.pairing_transition`; what the mode changes (a signed mapping or
the account seed) is :class:`~.modes.Rules`'s. What an arriving challenge, grant or
decline may do is decided by the inbound core (:mod:`.inbound`); this driver executes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import trio

from ..envelope import seal_envelope
from ..errors import ConnectionLost, DecodeError, RpcError
from ..identity import Identity, message_hash, sealable_key, session_id_key
from ..mapping import (
    PAIRING_WINDOW_MS,
    DeviceMapping,
    PairingRequest,
    grant_pairing,
    revoke_pairing,
    sign_pairing_request,
)
from ..swarm.client import SwarmClient
from ..swarm.constants import NAMESPACE_CONTROL
from ..wire import encode_cbor
from .content import (
    Content,
    DeviceRevoked,
    PairChallenge,
    PairDecline,
    PairGrant,
    PairRequest,
    SiblingRecord,
    encode_content,
)
from .friends import ContactState, friends_among
from .inbound import pairing_details
from .keys import pairing_nonce
from .local import PAIRED_AT_META, Local
from .outbox import Outbox
from .pairing import (
    ASKED,
    IllegalPairing,
    OfferMatch,
    PairingEffect,
    PairingEvent,
    PairingState,
    choose_offer,
    declined_last,
    pairing_code,
    pairing_transition,
    plan_grant,
    request_open,
    request_refusal,
    revoke_refusal,
)
from .rows import Contact, Pairing
from .siblings import SiblingHandler
from .values import DeviceError, PairingError, PairingOffer, PairingTicket

logger = logging.getLogger(__name__)


class Pairer:
    """Pairing and revoking, for one device (see the module docstring)."""

    def __init__(
        self,
        local: Local,
        swarm: SwarmClient,
        outbox: Outbox,
        siblings: SiblingHandler,
        relisten: Callable[[], None],
    ) -> None:
        """``relisten`` restarts the receive loops: the streams to read changed."""
        self._local = local
        self._store = local.store
        self._swarm = swarm
        self._outbox = outbox
        self._siblings = siblings
        self._relisten = relisten
        self._paired = trio.Event()
        if self._store.get_meta("paired"):
            self._paired.set()

    async def request_pairing(self, primary: str, name: str | None = None) -> PairingTicket:
        """On a new device: ask ``primary`` (the user's existing device) to pair, and wait
        for its challenge (it must be online) to return the ticket. Show the ticket's code;
        the user accepts on the primary when it shows the same code, and
        :meth:`wait_paired` returns once the grant arrived and checked out."""
        try:
            sealable_key(primary)
        except DecodeError as exc:
            raise PairingError(f"{primary!r} is not a session id ({exc})") from None
        refusal = request_refusal(
            primary,
            own_ids=(self._local.user_id, self._local.device_id),
            joined=self._paired.is_set() or bool(self._store.siblings()),
            fresh=not (self._store.contacts() or self._store.history()),
        )
        if refusal is not None:
            raise PairingError(refusal)
        now = self._local.clock.now_ms()
        device_name = name or self._local.name
        if self._local.rules.hands_over_seed():
            sender = Identity.generate()  # the grant (with the seed) is sealed to this key
            request, secret = None, sender.seed
        else:
            sender = self._local.device_identity
            request = sign_pairing_request(sender, primary, now).to_bytes()
            secret = request
        kind, body = encode_content(
            PairRequest(
                self._local.rules.mode,
                self._local.device_id,
                self._local.overlay_key,
                device_name,
                now,
                request,
            )
        )
        data = seal_envelope(sender, session_id_key(primary), kind, body, now)
        await self._swarm.store(primary, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS)
        digest = message_hash(data)
        move = pairing_transition(None, PairingEvent.REQUEST_SENT)
        state = encode_cbor({"secret": secret})
        self._store.put_pairing(
            Pairing(digest, False, primary, device_name, now, move.state, state)
        )
        if PairingEffect.LISTEN in move.effects:
            self._relisten()  # listen where the challenge and the grant arrive
        with trio.move_on_after(PAIRING_WINDOW_MS / 1000):
            while self._challenge_nonce(digest) is None and not self._declined():
                await self._local.changed.wait()
        self._raise_if_declined()
        nonce = self._challenge_nonce(digest)
        if nonce is None:
            raise PairingError(f"{primary[:12]}… did not answer in time: is it online? Ask again")
        return PairingTicket(digest, pairing_code(digest, nonce))

    def _challenge_nonce(self, request_id: bytes) -> bytes | None:
        pairing = self._store.pairing(request_id)
        return None if pairing is None else pairing_details(pairing).get("nonce")

    def _declined(self) -> bool:
        """Whether the primary declined this device's latest request (an earlier attempt's
        decline says nothing of a later one)."""
        return declined_last(
            pairing
            for state in ASKED
            for pairing in self._store.pairings(incoming=False, state=state)
        )

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

    def pairing_requests(self) -> list[PairingOffer]:
        """Requests from new devices waiting for the user to compare codes and accept."""
        return [
            PairingOffer(
                p.request_id, _offer_code(p), pairing_details(p)["device"], p.name, p.timestamp_ms
            )
            for p in self._local.waiting_requests()
            if request_open(p.timestamp_ms, self._local.clock.now_ms())
        ]

    def _pending_offer(self, code: str) -> Pairing:
        pending = self._local.waiting_requests()
        choice = choose_offer(
            ((_offer_code(p), p) for p in pending), code, self._local.clock.now_ms()
        )
        match choice.match:
            case OfferMatch.MISSING:
                raise PairingError(f"no pairing request is waiting with code {code}")
            case OfferMatch.CLASH:
                for offer in choice.offers:
                    self._move_pairing(offer, PairingEvent.CODE_CLASH)
                raise PairingError(
                    f"{len(choice.offers)} pairing requests show code {code}: all refused,"
                    " pair again"
                )
            case OfferMatch.EXPIRED:
                raise PairingError("that pairing request expired: start pairing again")
        return choice.offers[0]

    def _move_pairing(self, pairing: Pairing, event: PairingEvent) -> Pairing:
        """``pairing`` after ``event``, by the pairing machine's table, stored."""
        try:
            move = pairing_transition(PairingState(pairing.state), event)
        except IllegalPairing as exc:
            raise PairingError(str(exc)) from None
        moved = replace(pairing, state=move.state)
        self._store.put_pairing(moved)
        return moved

    async def accept_pairing(self, code: str) -> str:
        """On the primary, after the user saw ``code`` on both screens: grant the request
        and return the new device's id."""
        if not self._local.is_primary:
            raise PairingError("only the primary device can pair new devices")
        pairing = self._pending_offer(code)
        joining = pairing_details(pairing)
        device, overlay = str(joining["device"]), bytes(joining["overlay"])
        keys, names = self._store.sibling_overlay_keys(), self._store.siblings()
        plan = plan_grant(
            hands_over_seed=self._local.rules.hands_over_seed(),
            requester_key=pairing.peer,
            device=device,
            asked_as_mapped=_asked_as_mapped(pairing),
            me=SiblingRecord(self._local.device_id, self._local.overlay_key, self._local.name),
            siblings=(SiblingRecord(d, keys[d], names[d]) for d in keys),
        )
        if plan is None:
            await self._decline(pairing)
            raise PairingError(
                "that request came from a mapped device, and this account is linked since"
                " it moved: declined it (make the new device again with --mode linked)"
            )
        identity = self._local.identity
        secret = self._siblings.secret_to_hand_over()
        contacts = tuple(c.record for c in self._store.contacts())
        mapping = None
        if not plan.hands_over_seed:
            mapping = grant_pairing(identity, PairingRequest.from_bytes(joining["request"]))
            client = await self._outbox.fileserver()
            await client.put_mapping(mapping)
            self._outbox.forget(self._local.user_id)
        grant = PairGrant(
            pairing.request_id,
            None if mapping is None else mapping.to_bytes(),
            identity.seed if plan.hands_over_seed else None,
            secret,
            plan.devices,
            contacts,
            self._local.display_name,
        )
        await self._answer(plan.recipient, grant)
        with self._store.transaction():
            self._move_pairing(pairing, PairingEvent.ACCEPT)
            self._store.add_sibling(device, pairing.name, overlay)
            if plan.tells_siblings:
                self._local.queue(SiblingRecord(device, overlay, pairing.name), self._local.user_id)
        self._local.wake_outbox()
        self._siblings.restart()  # sync with the new sibling too
        return device

    async def decline_pairing(self, code: str) -> None:
        """On the primary: refuse the request showing ``code``, telling the new device
        (a signed decline, where its challenge went) so that it stops waiting. The
        decline goes out first: if storing it fails, the request is still pending and
        the user can decline again."""
        await self._decline(self._pending_offer(code))

    async def decline_ungrantable(self) -> None:
        """After a move to ``linked``: decline the requests mapped devices made before it
        (no grant can serve them any more, see :meth:`accept_pairing`), so that they stop
        waiting and are no longer offered."""
        for pairing in self._local.waiting_requests():
            if _asked_as_mapped(pairing):
                try:
                    await self._decline(pairing)
                except (RpcError, ConnectionLost, OSError) as exc:
                    # The move is done either way; accepting it later declines it then.
                    logger.info("could not decline a mapped pairing request: %s", exc)

    async def _decline(self, pairing: Pairing) -> None:
        move = pairing_transition(PairingState(pairing.state), PairingEvent.DECLINE)
        if PairingEffect.SEND_DECLINE in move.effects:
            await self._answer(pairing.peer, PairDecline(pairing.request_id))
        self._move_pairing(pairing, PairingEvent.DECLINE)

    async def _answer(self, recipient: str, content: Content) -> None:
        """Store ``content`` for a new device, signed by this one and sealed to
        ``recipient`` (the key the request came with), for the pairing window."""
        kind, body = encode_content(content)
        now = self._local.clock.now_ms()
        data = seal_envelope(self._local.identity, session_id_key(recipient), kind, body, now)
        await self._swarm.store(recipient, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS)

    async def send_decline(self, recipient: str, request_id: bytes) -> None:
        """Tell a new device that asked in a way this one cannot grant that it need not
        wait (the user never saw its request)."""
        await self._answer(recipient, PairDecline(request_id))

    async def send_challenge(self, pairing: Pairing, joining: dict[str, object]) -> None:
        """Answer a new request with a signed challenge, then keep the request. The
        challenge goes out first: if storing it fails, the request is retried whole."""
        nonce = pairing_nonce(self._local.identity.seed, pairing.request_id)
        await self._answer(pairing.peer, PairChallenge(pairing.request_id, nonce))
        self._store.put_pairing(replace(pairing, data=encode_cbor({**joining, "nonce": nonce})))
        self._local.notify()

    def adopt_grant(self, pairing: Pairing, grant: PairGrant) -> None:
        """The grant checked out: act as the user from now on."""
        store = self._store
        with store.transaction():
            if grant.seed is not None:
                store.set_meta("account_seed", grant.seed)
            store.set_meta("user", pairing.peer.encode())
            store.set_meta("paired", b"1")
            if grant.mapping is not None:
                paired_at_ms = DeviceMapping.from_bytes(grant.mapping).timestamp_ms
                store.set_meta(PAIRED_AT_META, str(paired_at_ms).encode())
            self._move_pairing(pairing, PairingEvent.GRANT_RECEIVED)
            store.set_meta("secret", grant.secret)
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

    async def revoke_device(self, device: str) -> None:
        """On the primary (``mapped``): unpair ``device``; senders stop reaching it once
        their cached device list expires, this device stops syncing to it at once, the
        other siblings once the revocation reaches them, and the device itself, told too,
        stops acting for the user (:attr:`~.values.Whoami.revoked_at_ms`)."""
        refusal = revoke_refusal(
            device,
            mode_refusal=self._local.rules.can_revoke(),
            is_primary=self._local.is_primary,
            device_id=self._local.device_id,
        )
        if refusal is not None:
            raise DeviceError(refusal)
        if device not in self._store.siblings() and device not in await self._outbox.devices_of(
            self._local.user_id, fresh=True
        ):
            # Neither paired here nor vouched for by the file server (a grant that never
            # reached its device still left a mapping there: that one can be revoked).
            raise DeviceError(f"{device[:12]}… is not one of this user's devices (see `devices`)")
        revocation = revoke_pairing(self._local.identity, device, self._local.clock.now_ms())
        client = await self._outbox.fileserver()
        await client.revoke_mapping(revocation)
        with self._store.transaction():
            self._store.keep_revocations([revocation])
            self._store.remove_sibling(device)
            # Friends hear it from us too, so neither a stale cache nor a file server
            # that hides the revocation keeps them trusting the device.
            for friend in friends_among(self._store.contacts()):
                self._local.queue(DeviceRevoked(revocation.to_bytes()), friend)
            # And our other devices: they stop syncing with it and refuse what it sends.
            self._local.queue(DeviceRevoked(revocation.to_bytes()), self._local.user_id)
            # And the device itself, so it says so rather than sending what is refused.
            self._local.queue_copies(
                DeviceRevoked(revocation.to_bytes()), [device], revocation.timestamp_ms, None
            )
        self._outbox.forget(self._local.user_id)
        self._local.wake_outbox()


def _offer_code(pairing: Pairing) -> str:
    return pairing_code(pairing.request_id, pairing_details(pairing)["nonce"])


def _asked_as_mapped(pairing: Pairing) -> bool:
    """Whether a request this device received came from a mapped device (it carries the
    signed request a mapping is made from)."""
    return "request" in pairing_details(pairing)
