"""The receive driver: reads the device's swarms, and runs each record through the
inbound core (:mod:`.inbound`), executing what it decides.

A record that does not open or decode, or that the core rejects, is refused and noted;
one the core defers, or whose check fails for now (the file server is unreachable),
waits in the store and is retried by the outbox pump. Either way the read position moves
past it, so no record is read twice and none can stop the inbox (the module docstring of
:mod:`.device` says why).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ..envelope import open_envelope
from ..errors import DecodeError
from ..identity import Identity, session_id_of
from ..swarm.client import Deliver, Message, SwarmClient
from ..swarm.constants import NAMESPACE_CONTROL, NAMESPACE_MESSAGES, NAMESPACE_SYNC
from .content import decode_content
from .inbound import (
    AddSibling,
    AdoptAccount,
    AdoptGrant,
    AdoptSecret,
    Befriend,
    Covered,
    Defer,
    DeleteSyncCopy,
    Effect,
    File,
    HoldRequest,
    Inbound,
    KeepPairing,
    NeedDevicesOf,
    PutContact,
    Reject,
    RevokeDevices,
    RevokedHere,
    RevokeSibling,
    SendChallenge,
    SendDecline,
    SetDisplayName,
    decide,
    pairing_details,
    waits_with_friends,
)
from .joiner import Joiner
from .local import REVOKED_HERE_META, Local
from .migrator import Migrator
from .outbox import Outbox
from .pairer import Pairer
from .pairing import PairingState
from .rows import Contact
from .siblings import SiblingHandler
from .values import TRANSIENT, Refused

logger = logging.getLogger(__name__)

NAMESPACES = (NAMESPACE_MESSAGES, NAMESPACE_SYNC, NAMESPACE_CONTROL)


def device_id_of(ed25519_public: bytes) -> str:
    """The session id of the device that signed with ``ed25519_public``."""
    device = session_id_of(ed25519_public)
    if device is None:
        raise DecodeError("the signing key is not a valid Ed25519 public key")
    return device


class Receiver:
    """Receives while the device is online (see the module docstring)."""

    def __init__(
        self,
        local: Local,
        swarm: SwarmClient,
        outbox: Outbox,
        siblings: SiblingHandler,
        pairer: Pairer,
        joiner: Joiner,
        migrator: Migrator,
        befriend: Callable[[Contact], Awaitable[None]],
    ) -> None:
        self._local = local
        self._store = local.store
        self._swarm = swarm
        self._outbox = outbox
        self._siblings = siblings
        self._pairer = pairer
        self._joiner = joiner
        self._migrator = migrator
        self._befriend = befriend
        self._retrying = False
        self._scope = trio.CancelScope()

    def relisten(self) -> None:
        """The streams to read changed (pairing): start the receive loops again."""
        self._scope.cancel()

    async def run(self) -> None:
        """Run one receive loop per stream; start again when the streams change (pairing)."""
        while True:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    for identity, namespace in self._streams():
                        nursery.start_soon(self._receive, identity, namespace)

    def _streams(self) -> list[tuple[Identity, int]]:
        streams = [(self._local.identity, namespace) for namespace in NAMESPACES]
        if self._local.rules.hands_over_seed():  # the answer comes to the request's key
            waiting = self._store.pairings(incoming=False, states=(PairingState.WAITING,))
            # One key per attempt, however often it asked (dict: once each, in order).
            secrets = dict.fromkeys(pairing_details(p)["secret"] for p in waiting)
            streams += [(Identity(secret), NAMESPACE_CONTROL) for secret in secrets]
        return streams

    def _filer(self, identity: Identity, namespace: int) -> Deliver:
        """What files a batch read from ``identity``'s ``namespace``."""
        owner = identity.session_id

        async def file_batch(batch: list[Message]) -> None:
            for message in batch:
                await self._process(identity, namespace, message.hash, message.data)
                # Per message: a restart (or a stream change) resumes right after it.
                self._store.set_cursor(owner, namespace, message)

        return file_batch

    async def _receive(self, identity: Identity, namespace: int) -> None:
        cursor = self._store.cursor(identity.session_id, namespace)
        file_batch = self._filer(identity, namespace)
        if self._local.config.receive == "subscribe":
            await self._swarm.subscribe(
                identity,
                namespace,
                file_batch,
                cursor=cursor,
                catch_up_s=self._local.config.catch_up_s,
            )
        else:
            await self._swarm.poll(
                identity,
                namespace,
                file_batch,
                cursor=cursor,
                interval_s=self._local.config.poll_interval_s,
            )

    async def sync_now(self) -> None:
        """Fetch and file everything waiting in this device's swarms now."""
        for identity, namespace in self._streams():
            cursor = self._store.cursor(identity.session_id, namespace)
            await self._swarm.catch_up(
                identity, namespace, cursor, self._filer(identity, namespace)
            )

    async def _process(
        self, identity: Identity, namespace: int, digest: bytes, data: bytes
    ) -> bool:
        """Open and decode one record, then run the inbound core until it has decided
        (fetching the device lists it asks for) and execute its effects; whether it
        could not decide yet (the record is deferred)."""
        kind = "envelope"
        looking_up: str | None = None  # whose devices are being fetched
        try:
            envelope = open_envelope(identity, data)
            kind = envelope.kind
            if envelope.access is not None:  # for storing what goes to the sender's mailbox
                self._local.keep_access(device_id_of(envelope.sender), envelope.access)
            content = decode_content(envelope.kind, envelope.body)
            item = Inbound(
                digest,
                kind,
                namespace,
                envelope.sender,
                device_id_of(envelope.sender),
                envelope.timestamp_ms,
                content,
            )
            devices: dict[str, tuple[str, ...]] = {}
            while True:
                effects = decide(self._local, item, self._local.clock.now_ms(), devices)
                match effects:
                    case [NeedDevicesOf(user=user, fresh=fresh)]:
                        looking_up = user
                        devices[user] = await self._outbox.devices_of(user, fresh=fresh)
                        looking_up = None
                    case [Defer(reason=reason)]:
                        raise _Deferred(reason)
                    case _:
                        break
            await self._execute(kind, effects)
        except (DecodeError, Refused) as exc:
            self._local.reject(kind, str(exc))
        except (*TRANSIENT, _Deferred) as exc:
            logger.info("%s: %s waits to be checked: %s", self._local.name, kind, exc)
            now_ms = self._local.clock.now_ms()
            friends = waits_with_friends(self._local, looking_up)
            self._gave_up(
                self._store.defer(
                    digest, identity.session_id, namespace, data, now_ms, friends=friends
                )
            )
            if not self._retrying:
                self._local.wake_outbox()  # the pump retries deferred records, with back-off
            return True
        except Exception as exc:  # see the module docstring: one record never stops the inbox
            self._local.reject(kind, f"unexpected {type(exc).__name__}: {exc}")
        return False

    def _gave_up(self, records: int) -> None:
        if records:
            reason = f"{records} waited too long to be checked, or past the bounds of waiting"
            self._local.reject("deferred records", reason)

    async def retry_deferred(self) -> None:
        """Decide again on every deferred record (the outbox pump calls this, with its
        back-off): the sibling record or the file server it waited for may be there now."""
        identities = {identity.session_id: identity for identity, _ in self._streams()}
        self._gave_up(self._store.forget_deferred(self._local.clock.now_ms()))
        self._retrying = True
        try:
            for digest, owner, namespace, data in self._store.deferred():
                # Deferred again, it keeps its place and its first time.
                if owner not in identities or not await self._process(
                    identities[owner], namespace, digest, data
                ):
                    self._store.undefer(digest)
        finally:
            self._retrying = False

    async def _execute(self, kind: str, effects: list[Effect]) -> None:
        """Carry out what the inbound core decided, one short step per effect."""
        local, store = self._local, self._store
        for effect in effects:
            match effect:
                case Reject(reason=reason):
                    local.reject(kind, reason)
                case File(message_id=message_id, record=record, share_as=share_as):
                    with store.transaction():
                        if local.file_message(message_id, record) and share_as is not None:
                            self._siblings.share(share_as, record, inbound=True)
                case PutContact(contact=contact):
                    store.put_contact(contact)
                    local.notify()
                case Befriend(contact=contact, revocations=revocations):
                    store.keep_revocations(revocations, own_user=local.user_id)
                    await self._befriend(contact)
                case RevokeDevices(revocations=revocations, contact=contact, move=move):
                    with store.transaction():
                        store.keep_revocations(revocations, own_user=local.user_id)
                        store.put_contact(contact)
                        if move is not None:
                            local.keep_friend_move(contact.user, move)
                    self._outbox.forget(contact.user)
                    local.notify()
                case RevokeSibling(revocation=revocation):
                    with store.transaction():
                        store.keep_revocations([revocation], own_user=local.user_id)
                        store.remove_sibling(revocation.secondary)
                    self._outbox.forget(local.user_id)
                    self._siblings.restart()
                    local.notify()
                case RevokedHere(revocation=revocation):
                    with store.transaction():
                        store.keep_revocations([revocation], own_user=local.user_id)
                        store.set_meta(REVOKED_HERE_META, revocation.to_bytes())
                        for sibling in store.siblings():
                            store.remove_sibling(sibling)
                        store.drop_outbox()  # everyone would refuse it now
                    local.load_identity()  # whoami() says so from now on
                    self._outbox.forget(local.user_id)
                    self._siblings.restart()
                    local.notify()
                case DeleteSyncCopy(digest=digest):
                    # Only this device reads its own swarm: the copy has done its job.
                    store.queue_deletions([(local.device_id, NAMESPACE_SYNC, digest)])
                    local.wake_outbox()
                case Covered(message_id=message_id):
                    self._siblings.covered(message_id)
                case AdoptSecret(secret=secret, at_ms=at_ms):
                    with store.transaction():
                        self._siblings.adopt_secret(secret, at_ms)
                    self._siblings.restart()  # meet them by it
                case AddSibling(record=sibling):
                    store.add_sibling(sibling.device, sibling.name, sibling.overlay)
                    self._siblings.restart()  # sync with the new sibling too
                case SetDisplayName(name=name, at_ms=at_ms):
                    local.set_display_name(name, at_ms)
                case SendChallenge(pairing=pairing, joining=joining):
                    await self._pairer.send_challenge(pairing, joining)
                case SendDecline(recipient=recipient, request_id=request_id):
                    await self._pairer.send_decline(recipient, request_id)
                case HoldRequest(pairing=pairing):
                    self._pairer.hold(pairing)
                case KeepPairing(pairing=pairing):
                    store.put_pairing(pairing)
                    local.notify()
                case AdoptGrant(pairing=pairing, grant=grant, revocations=revocations):
                    self._joiner.adopt_grant(pairing, grant, revocations)
                case AdoptAccount(seed=seed, statement=statement):
                    self._migrator.adopt_account(seed, statement)
                case _:  # pragma: no cover - decide() hands these out alone
                    raise AssertionError(f"unexpected effect {effect!r}")


class _Deferred(Exception):
    """The inbound core deferred a record: a sibling's record may make it acceptable."""
