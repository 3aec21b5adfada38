"""What a device holds locally, shared by its drivers: the store, who it acts as, the
mode's rules, and the bookkeeping every driver does the same way (filing a message,
queueing a record, noting a refusal, waking whoever waits).

The :class:`~p2psync.device.device.Device` facade, its inbound driver and the sibling
handler (:mod:`.siblings`) each hold the one :class:`Local`; nothing outside the package
sees it, so the store and the signing key stay private to the device.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, cast

import trio

from overlay.contact import Contact as RelayContact
from overlay.contact import ContactError

from ..clock import Clock
from ..envelope import seal_envelope
from ..errors import DecodeError
from ..identity import Identity, message_hash, session_id_key
from ..mapping import Revocation
from ..rpc import KeyedRateLimit
from ..swarm.access import MailboxAccess, access_expiry, is_current, sign_access
from ..swarm.listing import Snapshot
from ..sync.records import Relays
from ..wire import decode_cbor, encode_cbor
from .content import (
    MAX_CARRIED_REVOCATIONS,
    NAMESPACE_OF,
    Content,
    HistoryRecord,
    encode_content,
)
from .inbound import date_refusal
from .keys import overlay_public
from .migration import LinkedStatement
from .modes import RULES, Mode, Rules
from .online_flag import OnlineFlag
from .pairing import (
    REQUEST_KEY_REFILL_S,
    REQUEST_REFILL_S,
    REQUESTS_BURST,
    REQUESTS_PER_KEY,
    WAITING_HERE,
    PairingBudget,
)
from .pairing_address import pairing_address
from .rows import Contact, Copy, Pairing
from .store import DeviceStore
from .values import MAX_REJECTIONS, DeviceConfig, DeviceError, Refused, Rejection, Whoami

logger = logging.getLogger(__name__)

#: Where a device keeps the account's statement of its move to ``linked`` mode.
LINKED_STATEMENT_META = "linked_statement"
#: Followed by a friend's id: the statement of that friend's move to ``linked``.
FRIEND_MOVE_META = "friend_move/"
#: This device's own revocation by its primary, once told (:class:`~.inbound.RevokedHere`).
REVOKED_HERE_META = "revoked_here"
#: When the primary signed the mapping this device was paired by (``mapped`` mode): a
#: revocation dated before it is of an earlier pairing.
PAIRED_AT_META = "paired_at_ms"
#: What siblings find each other's introsets by (``mapped`` mode; ``linked`` derives it),
#: and when the primary made the one held (absent: the one the pairing grant carried).
SECRET_META = "secret"
SECRET_AT_META = "secret_at_ms"
#: Where the registry's listing is kept between starts (its signed announcements).
REGISTRY_LISTING_META = "registry_listing"
#: Where the user's own display name is kept.
DISPLAY_NAME_META = "display_name"
DISPLAY_NAME_AT_META = "display_name_at_ms"
#: The relay listing siblings deal their entry relays out on (:class:`~..sync.records.Relays`).
ENTRY_LISTING_META = "entry_listing"


class Local:
    """A device's own state and the bookkeeping on it (see the module docstring). It is
    also the :class:`~p2psync.device.inbound.View` the inbound core decides from."""

    def __init__(self, store: DeviceStore, clock: Clock, config: DeviceConfig) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        device_seed = store.get_meta("device_seed")
        assert device_seed is not None
        self.name = (store.get_meta("name") or b"").decode()
        #: The device's own key: its identity in ``mapped`` mode, its overlay key in ``linked``.
        self.device_identity = Identity(device_seed)
        #: What siblings reach this device by on the overlay (derived, not its Session id).
        self.overlay_key = overlay_public(device_seed)
        self.rejections: deque[Rejection] = deque(maxlen=MAX_REJECTIONS)
        self.rejected = 0
        self.changed = trio.Event()
        self.outbox_wakeup = trio.Event()
        #: Set while the device's online tasks run (the Runner's to set; what runs for
        #: the device's whole life but acts only online waits on it).
        self.online = OnlineFlag()
        self.pairing_limit = KeyedRateLimit(
            REQUESTS_PER_KEY,
            REQUEST_KEY_REFILL_S,
            REQUESTS_BURST,
            REQUEST_REFILL_S,
            clock.now_ms() / 1000,
        )
        #: Ids (or their first :data:`~.pairing.DEVICE_PREFIX_CHARS` or more characters)
        #: of new devices the user asked to answer (:meth:`Pairer.answer_device`).
        self.expected_devices: set[str] = set()
        self._listing_read: tuple[bytes | None, Relays | None] = (None, None)
        self._own_access: MailboxAccess | None = None
        self.load_identity()

    def entry_listing(self) -> Relays | None:
        """The newest relay listing this device or a sibling read, as the siblings agree
        on it (kept across restarts); None before the first read, or if what is kept
        cannot be read or is dated ahead of this clock (the next read replaces it)."""
        stored = self.store.get_meta(ENTRY_LISTING_META)
        if stored is None:
            return None
        if self._listing_read[0] != stored:  # the entry filter asks at every path check
            self._listing_read = (stored, _read_listing(stored, self.name))
        listing = self._listing_read[1]
        if listing is None or listing.from_the_future(self.clock.now_ms()):
            return None
        return listing

    def learn_entry_listing(self, listing: Relays) -> bool:
        """Keep ``listing`` (as siblings agree on it, :meth:`Relays.agreed`) if it replaces
        the one known (:meth:`Relays.replaces`): True, and siblings should hear of it. The
        same relays read later are kept too, for their fresher contacts, but change
        nothing for the siblings."""
        known = self.entry_listing()
        now = self.clock.now_ms()
        changed = listing.replaces(known, now)
        if changed or listing.refreshes(known, now):
            contacts = [contact.encode() for contact in listing.contacts]
            self.store.set_meta(ENTRY_LISTING_META, encode_cbor([listing.read_ms, contacts]))
        return changed

    def kept_listing(self) -> object | None:
        """The registry's listing as last read (see :meth:`keep_listing`), or None."""
        kept = self.store.get_meta(REGISTRY_LISTING_META)
        if kept is None:
            return None
        try:
            return decode_cbor(kept)
        except DecodeError:
            return None  # checked again as it is used, as a read listing is

    def keep_listing(self, listing: Snapshot) -> None:
        """Keep ``listing``'s signed announcements for the next start: it builds its
        first paths from them (:meth:`NetworkAccess.open_routes`)."""
        if listing.announcements:
            self.store.set_meta(REGISTRY_LISTING_META, encode_cbor(listing.announcements_to_wire()))

    def load_identity(self) -> None:
        """The mode's rules and the identity this device receives as and signs with: its
        own in ``mapped`` mode, the account's (shared by every sibling) in ``linked``
        mode. Read again when pairing or a move to ``linked`` changed them."""
        mode = self.store.get_meta("mode")
        assert mode is not None
        self.rules: Rules = RULES[Mode(mode.decode())]
        statement = self.store.get_meta(LINKED_STATEMENT_META)
        #: The account's move from ``mapped`` to ``linked``, if it made one.
        self.migration = None if statement is None else LinkedStatement.from_bytes(statement)
        self.identity, self.user_id = acting_identity(self.store, self.device_identity)
        #: Who the device is, kept in memory so it still answers once the store closed.
        self.me = whoami_of(self.store)

    @property
    def display_name(self) -> str:
        """The name the user gave themselves ("" if none): shared by every sibling, told
        to friends in friend requests and acceptances and whenever it changes."""
        return self.me.display_name

    @property
    def display_name_at_ms(self) -> int:
        return int(self.store.get_meta(DISPLAY_NAME_AT_META) or b"0")

    def check_belongs(self) -> None:
        """:class:`DeviceError` if the user's primary unpaired this device: what it would
        send as the user, friends and siblings refuse, so it is not sent at all."""
        revoked_at_ms = self.me.revoked_at_ms
        if revoked_at_ms is not None:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(revoked_at_ms / 1000))
            raise DeviceError(
                f"this device was unpaired by its primary on {when}: its history stays"
                " readable; to use the account here again, pair a new device folder"
            )

    def set_display_name(self, name: str, at_ms: int) -> None:
        with self.store.transaction():
            self.store.set_meta(DISPLAY_NAME_META, name.encode())
            self.store.set_meta(DISPLAY_NAME_AT_META, str(at_ms).encode())
        self.me = whoami_of(self.store)
        self.notify()

    def become_linked(self, statement: bytes, account_seed: bytes | None) -> None:
        """Act under the ``linked`` rules from now on (inside a transaction): the account
        moved, by ``statement``; a secondary receives as the account from now on
        (``account_seed``), a primary's own key is the account's already."""
        self.store.set_meta("mode", Mode.LINKED.value.encode())
        self.store.set_meta(LINKED_STATEMENT_META, statement)
        # The account handed this device its key: whatever revoked it before is undone.
        self.store.delete_meta(REVOKED_HERE_META)
        if account_seed is not None:
            self.store.set_meta("account_seed", account_seed)
        self.load_identity()

    @property
    def is_primary(self) -> bool:
        return self.rules.is_primary(self.user_id, self.device_id)

    # --- the inbound View -------------------------------------------------------------------

    @property
    def revoked_here_at_ms(self) -> int | None:
        return self.me.revoked_at_ms

    @property
    def paired_at_ms(self) -> int:
        return int(self.store.get_meta(PAIRED_AT_META) or b"0")

    @property
    def secret_at_ms(self) -> int:
        return int(self.store.get_meta(SECRET_AT_META) or b"0")

    @property
    def device_id(self) -> str:
        return self.device_identity.session_id

    @property
    def account_key(self) -> bytes:
        return self.identity.ed25519_public

    def contact(self, user: str) -> Contact | None:
        return self.store.contact(user)

    def siblings(self) -> Mapping[str, str]:
        return self.store.siblings()

    def revoked_at_ms(self, user: str, device: str) -> int | None:
        return self.store.revoked_at_ms(user, device)

    def friend_move(self, user: str) -> LinkedStatement | None:
        statement = self.store.get_meta(FRIEND_MOVE_META + user)
        return None if statement is None else LinkedStatement.from_bytes(statement)

    def received_from(self, user: str) -> int:
        return self.store.received_from(user)

    def keep_friend_move(self, user: str, statement: bytes) -> None:
        """Keep a friend's checked statement of its move (inside a transaction)."""
        self.store.set_meta(FRIEND_MOVE_META + user, statement)

    def pairing(self, request_id: bytes) -> Pairing | None:
        return self.store.pairing(request_id)

    def waiting_requests(self) -> list[Pairing]:
        return self.store.pairings(incoming=True, states=WAITING_HERE)

    def requests_made_at(self, timestamp_ms: int) -> list[Pairing]:
        return self.store.requests_made_at(timestamp_ms)

    def expects(self, device: str) -> bool:
        return any(device.startswith(prefix) for prefix in self.expected_devices)

    def pairing_budget(self, sender_key: bytes) -> PairingBudget:
        now = self.clock.now_ms() / 1000
        if self.pairing_limit.allow(sender_key, now):
            return PairingBudget.ANSWER
        if self.pairing_limit.allow_key(sender_key, now):
            return PairingBudget.HOLD
        return PairingBudget.DROP

    # --- bookkeeping ------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake whoever waits for news (the ``incoming`` stream, pairing offers)."""
        self.changed.set()
        self.changed = trio.Event()

    def wake_outbox(self) -> None:
        self.outbox_wakeup.set()

    def reject(self, kind: str, reason: str) -> None:
        logger.warning("%s: refused a %s: %s", self.name, kind, reason)
        self.rejected += 1
        self.rejections.append(Rejection(self.clock.now_ms(), kind, reason))

    def file_message(self, digest: bytes, record: HistoryRecord) -> bool:
        """Add to history unless known; True if it was new. :class:`Refused` if dated
        too far ahead (:func:`~p2psync.device.inbound.date_refusal`)."""
        refusal = date_refusal(record.timestamp_ms, self.clock.now_ms())
        if refusal is not None:
            raise Refused(refusal)
        row = (digest, record.timestamp_ms, record.conversation, record.outgoing)
        new = self.store.add_message(*row, record.sender, record.device, record.text)
        if not new and record.outgoing and self.store.filed_as_received(digest):
            # A message this user sent is named by the hash of its copy, which its
            # recipient read: a friend who sent a text under that id (a mapped device
            # files a text under the id its sender gives) came first. Ours is the one
            # that hashes to it.
            with self.store.transaction():  # in its place, as a new item (read anew)
                self.store.forget_message(digest)
                self.store.add_message(*row, record.sender, record.device, record.text)
            self.reject("text", "a friend's message under the id of one this user sent")
            new = True
        if new:
            self.notify()
        return new

    def queue(self, content: Content, recipient: str) -> bytes | None:
        """Put ``content`` in the outbox (inside a transaction). A record for another user
        is sealed to them at once, so its id (the hash of that copy) is known and stable;
        the copies for their other devices and for our siblings follow when it is sent."""
        kind, body = encode_content(content)
        now = self.clock.now_ms()
        if recipient == self.user_id:
            self.store.add_outbox(kind, recipient, body, now, None)
            return None
        data = seal_envelope(
            self.identity,
            session_id_key(recipient),
            kind,
            body,
            now,
            self._access_to_carry(recipient),
        )
        digest = message_hash(data)
        seq = self.store.add_outbox(kind, recipient, body, now, digest)
        self.store.add_copies([Copy(seq, recipient, NAMESPACE_OF[kind], data)])
        return digest

    def queue_copies(
        self, content: Content, owners: Iterable[str], timestamp_ms: int, message_id: bytes | None
    ) -> list[Copy]:
        """Put ``content`` in the outbox with exactly one copy per owner's swarm, made
        now rather than by the mode's rules when it goes out (inside a transaction)."""
        kind, body = encode_content(content)
        seq = self.store.add_outbox(kind, self.user_id, body, timestamp_ms, message_id)
        copies = [self.seal_copy(seq, owner, content, timestamp_ms) for owner in owners]
        self.store.expand(seq, copies)
        return copies

    def seal_copy(self, seq: int, owner: str, content: Content, timestamp_ms: int) -> Copy:
        kind, body = encode_content(content)
        data = seal_envelope(
            self.identity,
            session_id_key(owner),
            kind,
            body,
            timestamp_ms,
            self._access_to_carry(owner),
        )
        return Copy(seq, owner, NAMESPACE_OF[kind], data)

    def own_access(self) -> MailboxAccess:
        """This device's access to the mailbox it receives in, signed anew each week (and
        when that mailbox changes: pairing or a move to ``linked`` changes the identity)."""
        now_ms = self.clock.now_ms()
        kept = self._own_access
        if (
            kept is None
            or kept.expiry_ms != access_expiry(now_ms)
            or kept.ed25519 != self.identity.ed25519_public
        ):
            kept = self._own_access = sign_access(self.identity, now_ms)
        return kept

    def pairing_address(self) -> str | None:
        """What a new device of the user's asks this one to pair by (its access with
        its id: :mod:`.pairing_address`); None on one that may not pair devices."""
        return pairing_address(self.own_access()) if pairs_devices(self.me) else None

    def _access_to_carry(self, owner: str) -> MailboxAccess | None:
        """Our access, for the first envelope sealed to ``owner`` since we signed it (a
        week), inside the caller's transaction: in every envelope it would cost each 83
        bytes, 7 % of what the storage benchmark's swarms hold."""
        access = self.own_access()
        return access if self.store.carry_access(owner, access) else None

    def keep_access(self, owner: str, access: MailboxAccess) -> None:
        """Keep the access to ``owner``'s mailbox an envelope of its carried (checked as
        its own when the envelope opened), if it counts now: one dated further ahead than
        a device signs would stand, as the newest, in place of the owner's current ones."""
        if is_current(access, self.clock.now_ms()):
            self.store.keep_access(owner, access)

    def access_for(self, owner: str) -> MailboxAccess | None:
        """What a store for ``owner`` shows: our own access for our mailbox, else the
        owner's, from an envelope it sealed, while it counts (:mod:`~..swarm.access`)."""
        if owner == self.identity.session_id:
            return self.own_access()
        access = self.store.access_to(owner)
        return access if access is not None and is_current(access, self.clock.now_ms()) else None

    def own_revocations(self) -> tuple[bytes, ...]:
        """The user's newest revocations of its own devices, for a new friend or device
        to carry (:data:`~.content.MAX_CARRIED_REVOCATIONS`)."""
        kept = self.store.revocations_by(self.user_id, MAX_CARRIED_REVOCATIONS)
        return tuple(revocation.to_bytes() for revocation in kept)

    def set_contact(self, contact: Contact) -> None:
        """Store a contact change and queue it for the siblings (inside a transaction)."""
        self.store.put_contact(contact)
        self.queue(contact.record, self.user_id)
        self.notify()


def whoami_of(store: DeviceStore) -> Whoami:
    """Who the device kept in ``store`` is, read from the store alone (so ``whoami``
    answers the same with or without the network)."""
    mode, device_seed = store.get_meta("mode"), store.get_meta("device_seed")
    assert mode is not None and device_seed is not None
    device = Identity(device_seed)
    identity, user_id = acting_identity(store, device)
    rules = RULES[Mode(mode.decode())]
    return Whoami(
        session_id=user_id,
        device_id=device.session_id,
        mode=rules.mode,
        name=(store.get_meta("name") or b"").decode(),
        display_name=(store.get_meta(DISPLAY_NAME_META) or b"").decode(),
        is_primary=rules.is_primary(user_id, device.session_id),
        paired=store.get_meta("paired") is not None,
        receives_as=identity.session_id,
        device_key=device.ed25519_public,
        overlay_key=overlay_public(device_seed),
        revoked_at_ms=revoked_here_at_ms(store),
    )


def pairs_devices(me: Whoami) -> bool:
    """Whether the device ``me`` describes may be asked to pair a new one: a ``mapped``
    primary or a ``linked`` device, while it belongs to the user."""
    return me.is_primary and me.revoked_at_ms is None and me.receives_as == me.session_id


def pairing_address_of(store: DeviceStore, now_ms: int) -> str | None:
    """:meth:`Local.pairing_address` of the device kept in ``store``, read from the store
    alone."""
    if not pairs_devices(whoami_of(store)):
        return None
    device_seed = store.get_meta("device_seed")
    assert device_seed is not None
    identity, _ = acting_identity(store, Identity(device_seed))
    return pairing_address(sign_access(identity, now_ms))


def revoked_here_at_ms(store: DeviceStore) -> int | None:
    """When the primary unpaired this device, as it was told (None: it belongs). Only the
    record it was told by counts, not a revocation of its key seen anywhere else (a file
    server's answer, the account's own move to ``linked``)."""
    kept = store.get_meta(REVOKED_HERE_META)
    return None if kept is None else Revocation.from_bytes(kept).timestamp_ms


def acting_identity(store: DeviceStore, device: Identity) -> tuple[Identity, str]:
    """The identity a device signs and receives as (the account's once a ``linked`` device
    holds its seed, else its own) and the user id it acts for (a ``mapped`` secondary's
    primary, once paired)."""
    account_seed = store.get_meta("account_seed")
    identity = Identity(account_seed) if account_seed else device
    user = store.get_meta("user")
    return identity, user.decode() if user else identity.session_id


def _read_listing(stored: bytes, name: str) -> Relays | None:
    """The listing :meth:`Local.learn_entry_listing` wrote (by this device; a damaged
    value must not stop the device: it reads as none, and the next read replaces it)."""
    try:
        read_ms, contacts = cast(list[Any], decode_cbor(stored, max_bytes=len(stored)))
        return Relays.read(read_ms, [RelayContact.decode(c) for c in contacts])
    except (DecodeError, ContactError, TypeError, ValueError) as exc:
        logger.warning("%s: the kept relay listing cannot be read: %s", name, exc)
        return None
