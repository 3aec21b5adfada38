"""Pairing on the primary: the pairing machine's (:mod:`.pairing`) primary's side, against
the swarm.

It answers a new device's request with a challenge, lists the requests for the user, and
grants or declines (telling the new device) the one whose code the user confirmed; it
also revokes a device. Every state change goes through
:func:`~.pairing.pairing_transition` (:func:`move_pairing`); what the mode changes (a
signed mapping or the account seed) is :class:`~.modes.Rules`'s. What an arriving request
may do is decided by the inbound core (:mod:`.inbound`); this driver executes it. The new
device's side is :mod:`.joiner`'s.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..envelope import MAX_BODY_BYTES, seal_envelope
from ..errors import ConnectionLost, RpcError
from ..identity import session_id_key
from ..mapping import (
    PAIRING_WINDOW_MS,
    PairingRequest,
    grant_pairing,
    revoke_pairing,
)
from ..swarm.client import SwarmClient
from ..swarm.constants import NAMESPACE_CONTROL
from ..wire import encode_cbor
from .content import (
    MAX_CONTACTS,
    Content,
    DeviceRevoked,
    PairChallenge,
    PairDecline,
    PairGrant,
    SiblingRecord,
    SiblingsSecret,
    encode_content,
)
from .friends import friends_among
from .inbound import held_to_answer, pairing_details
from .keys import pairing_nonce
from .local import Local
from .outbox import Outbox
from .pairing import (
    ANSWERS_PER_LISTING,
    FORGET_REQUESTS_MS,
    MAX_HELD_REQUESTS,
    IllegalPairing,
    OfferMatch,
    PairingEffect,
    PairingEvent,
    PairingState,
    choose_offer,
    device_prefix_refusal,
    grant_contacts,
    latest_per_device,
    pairing_code,
    pairing_transition,
    plan_grant,
    request_open,
    revocation_date,
    revoke_refusal,
)
from .rows import Pairing
from .siblings import SiblingHandler
from .store import DeviceStore
from .values import TRANSIENT, DeviceError, PairingError, PairingOffer

logger = logging.getLogger(__name__)


class Pairer:
    """The primary's side of pairing, and revoking (see the module docstring)."""

    def __init__(
        self, local: Local, swarm: SwarmClient, outbox: Outbox, siblings: SiblingHandler
    ) -> None:
        self._local = local
        self._store = local.store
        self._swarm = swarm
        self._outbox = outbox
        self._siblings = siblings

    def address(self) -> str | None:
        """What a new device asks to pair by: the user's id with its current access."""
        return self._local.pairing_address()

    def pairing_requests(self) -> list[PairingOffer]:
        """Requests from new devices waiting for the user to compare codes and accept."""
        return [
            PairingOffer(
                p.request_id, _offer_code(p), pairing_details(p)["device"], p.name, p.timestamp_ms
            )
            for p in self._waiting()
            if request_open(p.timestamp_ms, self._local.clock.now_ms())
        ]

    def _waiting(self) -> list[Pairing]:
        """The requests answered and waiting for the user, a device's latest only
        (:func:`latest_per_device`)."""
        waiting = [
            (p, pairing_details(p))
            for p in self._local.waiting_requests()
            if p.state == PairingState.PENDING
        ]
        return latest_per_device(((d["device"], d["overlay"]), p) for p, d in waiting)

    def _held(self) -> list[Pairing]:
        """The requests held past the answer budget that an answer is for, the last to
        arrive first (:func:`~.inbound.held_to_answer`)."""
        return held_to_answer(
            self._store.held_requests(),
            self._local.waiting_requests(),
            self._local.clock.now_ms(),
        )

    def held_requests(self) -> int:
        """How many requests wait unanswered because too many came at once."""
        return len(self._held())

    async def answer_held(self) -> int:
        """Answer the requests held past the answer budget that arrived last (at most
        :data:`~.pairing.ANSWERS_PER_LISTING`), so that they are listed with their codes
        once their new devices show them; for when the user looks at the requests (see
        :mod:`.pairing`). A request that cannot be answered (its sender's mailbox is full,
        say) costs only itself. Returns how many were answered."""
        answered = 0
        for pairing in self._held():
            if answered == ANSWERS_PER_LISTING:
                break
            try:
                answered += await self._answer_held(pairing)
            except TRANSIENT as exc:
                logger.info(
                    "%s: could not answer a held pairing request: %s", self._local.name, exc
                )
        return answered

    async def answer_device(self, device: str) -> None:
        """Answer the request of the new device whose id starts with ``device`` (as that
        device shows it, :data:`~.pairing.DEVICE_PREFIX_CHARS` characters or more),
        whatever strangers spent of the answer budget or pushed out of the held: the one
        held now, or the next it makes (it asks again every :data:`~.pairing.REASK_S`
        while unanswered). Returns once one is answered (put a deadline on it)."""
        refusal = device_prefix_refusal(device)
        if refusal is not None:
            raise PairingError(refusal)
        self._local.expected_devices.add(device)
        try:
            while not any(o.device.startswith(device) for o in self.pairing_requests()):
                held = [p for p in self._held() if pairing_details(p)["device"].startswith(device)]
                if held:
                    try:
                        await self._answer_held(held[0])
                    except TRANSIENT as exc:  # it asks again: the next is answered
                        logger.info("%s: could not answer %s…: %s", self._local.name, device, exc)
                        await self._local.changed.wait()
                else:
                    await self._local.changed.wait()
        finally:
            self._local.expected_devices.discard(device)

    async def _answer_held(self, pairing: Pairing) -> bool:
        move = pairing_transition(PairingState.HELD, PairingEvent.LISTED)
        assert PairingEffect.SEND_CHALLENGE in move.effects
        nonce = await self._challenge(pairing)
        # While the challenge was stored, a sibling may have accepted the request, or the
        # user declined it by moving to linked: that stands.
        current = self._store.pairing(pairing.request_id)
        if current is not None and current.state != PairingState.HELD:
            return False
        details = {**pairing_details(pairing), "nonce": nonce}
        self._keep(replace(pairing, state=move.state, data=encode_cbor(details)))
        return True

    def _pending_offer(self, code: str) -> Pairing:
        pending = self._waiting()
        choice = choose_offer(
            ((_offer_code(p), p) for p in pending), code, self._local.clock.now_ms()
        )
        match choice.match:
            case OfferMatch.MISSING:
                raise PairingError(f"no pairing request is waiting with code {code}")
            case OfferMatch.CLASH:
                for offer in choice.offers:
                    move_pairing(self._store, offer, PairingEvent.CODE_CLASH)
                raise PairingError(
                    f"{len(choice.offers)} pairing requests show code {code}: all refused,"
                    " pair again"
                )
            case OfferMatch.EXPIRED:
                raise PairingError("that pairing request expired: start pairing again")
        return choice.offers[0]

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
        mapping = None
        if not plan.hands_over_seed:
            mapping = grant_pairing(identity, PairingRequest.from_bytes(joining["request"]))
            client = await self._outbox.fileserver()
            await client.put_mapping(mapping)
            self._outbox.forget(self._local.user_id)
        bare = PairGrant(
            pairing.request_id,
            None if mapping is None else mapping.to_bytes(),
            identity.seed if plan.hands_over_seed else None,
            secret,
            plan.devices,
            (),
            self._local.display_name,
            self._local.own_revocations(),
        )
        contacts, after = grant_contacts(
            (c.record for c in self._store.contacts()),
            lambda some: _fits(replace(bare, contacts=some)),
        )
        await self._answer(plan.recipient, replace(bare, contacts=contacts))
        with self._store.transaction():
            move_pairing(self._store, pairing, PairingEvent.ACCEPT)
            self._store.add_sibling(device, pairing.name, overlay)
            if plan.tells_siblings:
                self._local.queue(SiblingRecord(device, overlay, pairing.name), self._local.user_id)
            for contact in after:
                self._local.queue(contact, self._local.user_id)
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
        move_pairing(self._store, pairing, PairingEvent.DECLINE)

    async def _answer(self, recipient: str, content: Content) -> None:
        """Store ``content`` for a new device, signed by this one and sealed to
        ``recipient`` (the key the request came with), for the pairing window."""
        kind, body = encode_content(content)
        now = self._local.clock.now_ms()
        data = seal_envelope(self._local.identity, session_id_key(recipient), kind, body, now)
        access = self._local.access_for(recipient)  # the request carried the new device's
        await self._swarm.store(
            recipient, NAMESPACE_CONTROL, data, PAIRING_WINDOW_MS, access=access
        )

    async def send_decline(self, recipient: str, request_id: bytes) -> None:
        """Tell a new device that asked in a way this one cannot grant that it need not
        wait (the user never saw its request)."""
        await self._answer(recipient, PairDecline(request_id))

    async def send_challenge(self, pairing: Pairing, joining: dict[str, object]) -> None:
        """Answer a new request with a signed challenge, then keep the request. The
        challenge goes out first: if storing it fails, the request is retried whole."""
        nonce = await self._challenge(pairing)
        self._keep(replace(pairing, data=encode_cbor({**joining, "nonce": nonce})))

    async def _challenge(self, pairing: Pairing) -> bytes:
        """Store the signed challenge answering ``pairing``; its nonce."""
        nonce = pairing_nonce(self._local.identity.seed, pairing.request_id)
        await self._answer(pairing.peer, PairChallenge(pairing.request_id, nonce))
        return nonce

    def hold(self, pairing: Pairing) -> None:
        """Keep a request past the answer budget unanswered, for :meth:`answer_held`."""
        self._keep(pairing)
        logger.debug("%s: too many pairing requests: held one", self._local.name)

    def _keep(self, pairing: Pairing) -> None:
        """Keep a request received (within :data:`~.pairing.MAX_HELD_REQUESTS` held, and
        :data:`~.pairing.FORGET_REQUESTS_MS`), and wake whoever lists them."""
        before_ms = self._local.clock.now_ms() - FORGET_REQUESTS_MS
        self._store.keep_request(pairing, held=MAX_HELD_REQUESTS, before_ms=before_ms)
        self._local.notify()

    async def revoke_device(self, device: str) -> None:
        """On the primary (``mapped``): unpair ``device``; senders stop reaching it once
        their cached device list expires, this device stops syncing to it at once, the
        other siblings once the revocation reaches them, and the device itself, told too,
        stops acting for the user (:attr:`~.values.Whoami.revoked_at_ms`). The siblings
        meet by a new secret from now on (each once it reads it), which the device
        never learns."""
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
        revocation = revoke_pairing(self._local.identity, device, self._revocation_time(device))
        client = await self._outbox.fileserver()
        try:
            await client.revoke_mapping(revocation)
        except RpcError as exc:
            # A sibling the file server has no mapping of is unpaired here and at every
            # sibling all the same: nothing else would ever remove it.
            if exc.code != "not_found" or device not in self._store.siblings():
                raise
        with self._store.transaction():
            self._store.keep_revocations([revocation], own_user=self._local.user_id)
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
            # The siblings meet by a secret the device knows: they meet by a new one.
            secret = self._siblings.make_secret(revocation.timestamp_ms)
            if siblings := list(self._store.siblings()):
                self._local.queue_copies(
                    SiblingsSecret(secret), siblings, revocation.timestamp_ms, None
                )
        self._outbox.forget(self._local.user_id)
        self._siblings.restart()  # the running sync still holds the device's session
        self._local.wake_outbox()

    def _revocation_time(self, device: str) -> int:
        """:func:`~.pairing.revocation_date` of ``device``, by the requests granted here."""
        granted = [
            p.timestamp_ms
            for p in self._store.pairings(incoming=True, states=[PairingState.ACCEPTED])
            if pairing_details(p).get("device") == device
        ]
        return revocation_date(self._local.clock.now_ms(), granted)


def _offer_code(pairing: Pairing) -> str:
    return pairing_code(pairing.request_id, pairing_details(pairing)["nonce"])


def _asked_as_mapped(pairing: Pairing) -> bool:
    """Whether a request this device received came from a mapped device (it carries the
    signed request a mapping is made from)."""
    return "request" in pairing_details(pairing)


def move_pairing(store: DeviceStore, pairing: Pairing, event: PairingEvent) -> Pairing:
    """``pairing`` after ``event``, by the pairing machine's table, stored."""
    try:
        move = pairing_transition(PairingState(pairing.state), event)
    except IllegalPairing as exc:
        raise PairingError(str(exc)) from None
    moved = replace(pairing, state=move.state)
    store.put_pairing(moved)
    return moved


def _fits(grant: PairGrant) -> bool:
    """Whether ``grant`` can be sent and read: its contacts within what a reader decodes,
    its body within an envelope's."""
    return len(grant.contacts) <= MAX_CONTACTS and len(encode_content(grant)[1]) <= MAX_BODY_BYTES
