"""What devices say to each other inside envelopes: one record type per envelope ``kind``.

An envelope (:mod:`p2psync.envelope`) proves which key signed a body and that it was meant
for the recipient; this module fixes the body of every kind and decodes it strictly, so
the device driver only ever sees well-typed records. Which namespace each kind travels in
is fixed too (:data:`NAMESPACE_OF`): a record found in another namespace is refused,
which keeps, say, a forged "sync copy" out of the public inbox.

Kinds and bodies (canonical CBOR maps, session ids as text, ``ts`` in epoch ms):

* ``text`` (ns 0): ``{"user": sid, "text": str, "id": bytes32?}`` — a chat message;
  ``user`` is the user the signing device claims to belong to, checked by the receiver;
  ``id`` (on fan-out copies) the message id all of the recipient's devices file it under.
* ``friend_request`` (ns 0): ``{"user": sid, "devices": [sid], "text": str, "name": str?,
  "revocations": [bytes]?}``.
* ``friend_accept`` (ns 0): ``{"user": sid, "devices": [sid], "name": str?,
  "revocations": [bytes]?}`` — tells the requester every device of the accepting user
  (the seed document's "send the other device's key"). ``name``, here and below, is the
  user's display name (:func:`check_display_name`); absent when the user has set none.
  ``revocations``, here and in ``pair_grant``: the user's newest
  :data:`MAX_CARRIED_REVOCATIONS` signed revocations of its own devices, so a new
  friend or device trusts no device unpaired before it came, whatever a file server
  says later (finding 6 covered those that existed at the revocation).
* ``profile`` (ns 0): ``{"user": sid, "name": str}`` — a friend's new display name.
* ``device_revoked`` (ns 0): ``{"revocation": bytes}`` — the primary's signed
  :class:`~p2psync.mapping.Revocation` of one of its devices, pushed to every friend so
  they stop trusting that device without waiting for (or trusting) the file server.
* ``account_linked`` (ns 0): ``{"statement": bytes}`` — the account moved from ``mapped`` to
  ``linked`` mode: its signed :class:`~p2psync.device.migration.LinkedStatement`, which
  retires the old device keys (docs/migration.md).
* ``sync_sent`` (ns 1): ``{"id": bytes32, "to": sid, "ts": uint, "text": str}`` — a sent
  message copied to the sender's siblings, under the id the recipient knows it by.
* ``sync_contact`` (ns 1): ``{"user": sid, "state": str, "devices": [sid], "name": str?}``.
* ``sync_profile`` (ns 1): ``{"name": str}`` — the user's own new display name, for siblings.
* ``sync_sibling`` (ns 1): ``{"device": sid, "overlay": bytes32, "name": str}`` — a device
  that joined, and the overlay key its siblings reach it by.
* ``sync_linked`` (ns 1): ``{"seed": bytes32, "statement": bytes}`` — the account's seed
  and its statement, from the primary to each secondary the statement retires.
* ``sync_secret`` (ns 1): ``{"secret": bytes32}`` — a ``mapped`` primary's new siblings'
  secret, made when it revokes a device and sealed to each device still paired, so the
  revoked one (which knows the old secret) can no longer find its former siblings'
  introsets or see when they are online. The envelope's date orders two of them.
* ``pair_request`` (ns 2): ``{"mode": str, "device": sid, "overlay": bytes32, "name": str,
  "ts": uint, "request": bytes?}`` — ``device`` is the new device's own key, ``request``
  the signed :class:`~p2psync.mapping.PairingRequest` in ``mapped`` mode.
* ``pair_challenge`` (ns 2): ``{"request_id": bytes32, "nonce": bytes32}`` — the
  primary's fresh random contribution to the code both screens show, sent as soon as a
  request arrives (see :mod:`p2psync.device.pairing`).
* ``pair_grant`` (ns 2): ``{"request_id": bytes32, "mapping": bytes?, "seed": bytes32?,
  "secret": bytes32, "devices": [sibling], "contacts": [contact], "name": str?,
  "revocations": [bytes]?}`` —
  ``mapping`` in
  ``mapped`` mode, the account ``seed`` in ``linked`` mode (the envelope is then sealed to
  a key made for this one request); ``secret`` is what siblings find each other's
  introsets by; ``devices`` are the user's other devices as ``sync_sibling`` bodies,
  ``name`` the user's display name.
* ``pair_decline`` (ns 2): ``{"request_id": bytes32}`` — the primary's "no" to a request
  the user declined, signed and sealed like the challenge, to the same key; the new
  device stops waiting at once. Only the device the request went to can sign it, so
  nobody else can cut a pairing short.

Between siblings, over overlay sessions, a history item travels as the body of a live-sync
``MSG`` (:class:`HistoryRecord`): ``{"ts": uint, "with": sid, "out": bool, "sender": sid,
"device": sid, "text": str}``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ..envelope import MAX_TIMESTAMP_MS
from ..errors import DecodeError
from ..identity import KEY_BYTES, SEED_BYTES, sealable_key
from ..mapping import MAX_RECORD_BYTES, PAIRING_WINDOW_MS
from ..swarm.constants import MAX_TTL_MS, NAMESPACE_CONTROL, NAMESPACE_MESSAGES, NAMESPACE_SYNC
from ..wire import Fields, decode_cbor, encode_cbor
from .friends import ContactState
from .migration import MAX_STATEMENT_BYTES
from .modes import Mode

MAX_TEXT_CHARS = 16_000
MAX_NAME_CHARS = 64
MAX_DEVICES = 16
MAX_CONTACTS = 1000
ID_BYTES = 32
SECRET_BYTES = 32
#: Revocations a friend request or acceptance, or a pairing grant, carries at most: the
#: user's newest (a device unpaired longer ago is the likelier to have expired mappings).
MAX_CARRIED_REVOCATIONS = 32
NONCE_BYTES = 32
MODES = tuple(mode.value for mode in Mode)

#: Unicode categories a display name may not hold: control, format (bidi overrides,
#: zero-width and other invisible characters), surrogate, private-use and unassigned
#: code points, and line or paragraph separators. A display name is chosen by whoever
#: sends it and printed on a terminal beside an id, so none of these may reach one.
REFUSED_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

#: The one space separator (Unicode ``Zs``) a display name may hold: the others (no-break,
#: en, em, ideographic spaces...) look like it on a terminal, so two names that differ
#: only in them would read as one.
ALLOWED_SPACE = " "
#: A run of this many hex digits reads as a piece of a session id (the CLI shows ids as
#: ``05`` and 8 hex digits, ``…``, 4 more), so a name holding one could pass for an id.
ID_LIKE_HEX_RUN = 8
#: What a name beside an id could forge: the opening of ``(05…)``, the id in brackets
#: the CLI prints after every name.
_ID_LOOKALIKE = re.compile(rf"\(05|[0-9a-fA-F]{{{ID_LIKE_HEX_RUN},}}")

#: Contact states (:class:`~p2psync.device.friends.ContactState`) by their wire values.
CONTACT_STATES = tuple(state.value for state in ContactState)


def _session_id(fields: Fields, name: str) -> str:
    value = fields.text(name, max_len=66)
    sealable_key(value)
    return value


def _revocations(fields: Fields) -> tuple[bytes, ...]:
    """The signed revocations a record carries (checked by the inbound core, which knows
    whose they must be)."""
    if not fields.has("revocations"):
        return ()
    records: list[bytes] = []
    for value in fields.items("revocations", max_len=MAX_CARRIED_REVOCATIONS):
        if not isinstance(value, bytes) or len(value) > MAX_RECORD_BYTES:
            raise DecodeError(f"revocations must hold records of at most {MAX_RECORD_BYTES} bytes")
        records.append(value)
    return tuple(records)


def _with_revocations(body: dict[str, Any], revocations: tuple[bytes, ...]) -> None:
    if revocations:
        body["revocations"] = list(revocations)


def _session_ids(fields: Fields, name: str) -> tuple[str, ...]:
    values = fields.items(name, max_len=MAX_DEVICES)
    for value in values:
        if not isinstance(value, str):
            raise DecodeError(f"{name} must hold session ids")
        sealable_key(value)
    if len(set(values)) != len(values):
        raise DecodeError(f"{name} lists a device twice")
    return tuple(str(v) for v in values)


def check_display_name(name: str) -> str:
    """``name`` if it is a display name a terminal can show safely and that cannot pass
    for someone else's id (1 to :data:`MAX_NAME_CHARS` characters, none of
    :data:`REFUSED_NAME_CATEGORIES`, no space but :data:`ALLOWED_SPACE` and not only
    spaces, nothing :data:`_ID_LOOKALIKE` finds once compatibility forms are folded),
    else :class:`DecodeError` saying why."""
    if not 0 < len(name) <= MAX_NAME_CHARS:
        raise DecodeError(f"a display name is 1 to {MAX_NAME_CHARS} characters")
    for char in name:
        category = unicodedata.category(char)
        if category in REFUSED_NAME_CATEGORIES or (category == "Zs" and char != ALLOWED_SPACE):
            raise DecodeError(f"a display name may not hold U+{ord(char):04X} ({category})")
    if not name.strip(ALLOWED_SPACE):
        raise DecodeError("a display name may not be spaces only")
    # Compatibility forms (fullwidth digits and brackets) read as the plain ones.
    if _ID_LOOKALIKE.search(unicodedata.normalize("NFKC", name)):
        raise DecodeError(
            "a display name may not look like an id: '(05' or"
            f" {ID_LIKE_HEX_RUN} hex digits in a row"
        )
    return name


def _display_name(fields: Fields) -> str:
    """The optional ``name`` field: a checked display name, or "" when absent."""
    return _required_name(fields) if fields.has("name") else ""


def _required_name(fields: Fields) -> str:
    return check_display_name(fields.text("name", max_len=MAX_NAME_CHARS))


def _with_name(body: dict[str, Any], name: str) -> dict[str, Any]:
    if name:
        body["name"] = name
    return body


@dataclass(frozen=True, slots=True)
class Text:
    user: str
    text: str
    #: On the copies for a user's other devices (``mapped`` fan-out): the id of the copy
    #: sent to the primary, so every device files the message under one id.
    id: bytes | None = None


@dataclass(frozen=True, slots=True)
class FriendRequest:
    user: str
    devices: tuple[str, ...]
    text: str
    name: str = ""
    revocations: tuple[bytes, ...] = ()  # the user's, of its own devices


@dataclass(frozen=True, slots=True)
class FriendAccept:
    user: str
    devices: tuple[str, ...]
    name: str = ""
    revocations: tuple[bytes, ...] = ()  # the user's, of its own devices


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's new display name, sent to each friend when it changes."""

    user: str
    name: str


@dataclass(frozen=True, slots=True)
class SyncProfile:
    """The user's own new display name, sent to the user's other devices."""

    name: str


@dataclass(frozen=True, slots=True)
class SyncSent:
    id: bytes
    to: str
    timestamp_ms: int
    text: str


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A contact as siblings share it (``sync_contact``, and inside a pairing grant)."""

    user: str
    state: ContactState
    devices: tuple[str, ...]
    name: str = ""

    def to_wire(self) -> dict[str, Any]:
        body = {"user": self.user, "state": self.state, "devices": list(self.devices)}
        return _with_name(body, self.name)

    @classmethod
    def from_fields(cls, fields: Fields) -> ContactRecord:
        fields.only("user", "state", "devices", "name")
        state = fields.text("state", max_len=16)
        if state not in CONTACT_STATES:
            raise DecodeError(f"unknown contact state {state!r}")
        return cls(
            _session_id(fields, "user"),
            ContactState(state),
            _session_ids(fields, "devices"),
            _display_name(fields),
        )


@dataclass(frozen=True, slots=True)
class SiblingRecord:
    device: str
    overlay: bytes
    name: str

    def to_wire(self) -> dict[str, Any]:
        return {"device": self.device, "overlay": self.overlay, "name": self.name}

    @classmethod
    def from_fields(cls, fields: Fields) -> SiblingRecord:
        fields.only("device", "overlay", "name")
        return cls(
            _session_id(fields, "device"),
            fields.blob("overlay", size=KEY_BYTES),
            fields.text("name", max_len=MAX_NAME_CHARS),
        )


@dataclass(frozen=True, slots=True)
class PairRequest:
    mode: Mode
    device: str
    overlay: bytes
    name: str
    timestamp_ms: int
    request: bytes | None


@dataclass(frozen=True, slots=True)
class DeviceRevoked:
    revocation: bytes


@dataclass(frozen=True, slots=True)
class AccountLinked:
    """The account's statement that it moved to ``linked`` mode, for a friend."""

    statement: bytes


@dataclass(frozen=True, slots=True)
class LinkedHandOver:
    """The account's seed and statement, for a secondary the move retires."""

    seed: bytes = field(repr=False)  # the account's key: never in a log line
    statement: bytes


@dataclass(frozen=True, slots=True)
class SiblingsSecret:
    """The siblings' new secret, from a ``mapped`` primary that revoked a device."""

    secret: bytes = field(repr=False)  # whoever holds it sees when siblings are online


@dataclass(frozen=True, slots=True)
class PairChallenge:
    request_id: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class PairDecline:
    request_id: bytes


@dataclass(frozen=True, slots=True)
class PairGrant:
    request_id: bytes
    mapping: bytes | None
    seed: bytes | None = field(repr=False)  # the account's key: never in a log line
    secret: bytes = field(repr=False)
    devices: tuple[SiblingRecord, ...]
    contacts: tuple[ContactRecord, ...]
    name: str = ""  # the user's display name
    revocations: tuple[bytes, ...] = ()  # the user's, of its own devices


Content = (
    Text
    | FriendRequest
    | FriendAccept
    | Profile
    | SyncProfile
    | DeviceRevoked
    | AccountLinked
    | LinkedHandOver
    | SiblingsSecret
    | SyncSent
    | ContactRecord
    | SiblingRecord
    | PairRequest
    | PairChallenge
    | PairDecline
    | PairGrant
)

KIND_OF: dict[type, str] = {
    Text: "text",
    FriendRequest: "friend_request",
    FriendAccept: "friend_accept",
    Profile: "profile",
    SyncProfile: "sync_profile",
    DeviceRevoked: "device_revoked",
    AccountLinked: "account_linked",
    LinkedHandOver: "sync_linked",
    SiblingsSecret: "sync_secret",
    SyncSent: "sync_sent",
    ContactRecord: "sync_contact",
    SiblingRecord: "sync_sibling",
    PairRequest: "pair_request",
    PairChallenge: "pair_challenge",
    PairDecline: "pair_decline",
    PairGrant: "pair_grant",
}

NAMESPACE_OF: dict[str, int] = {
    "text": NAMESPACE_MESSAGES,
    "friend_request": NAMESPACE_MESSAGES,
    "friend_accept": NAMESPACE_MESSAGES,
    "profile": NAMESPACE_MESSAGES,
    "sync_profile": NAMESPACE_SYNC,
    "device_revoked": NAMESPACE_MESSAGES,
    "account_linked": NAMESPACE_MESSAGES,
    "sync_linked": NAMESPACE_SYNC,
    "sync_secret": NAMESPACE_SYNC,
    "sync_sent": NAMESPACE_SYNC,
    "sync_contact": NAMESPACE_SYNC,
    "sync_sibling": NAMESPACE_SYNC,
    "pair_request": NAMESPACE_CONTROL,
    "pair_challenge": NAMESPACE_CONTROL,
    "pair_decline": NAMESPACE_CONTROL,
    "pair_grant": NAMESPACE_CONTROL,
}


#: Kinds whose stored copies outlive the device's TTL: a move to ``linked`` mode and a new
#: siblings' secret must reach a secondary or a friend that is away for days (a sibling
#: that missed the secret would never meet the others directly again), so their records
#: live as long as a swarm keeps anything.
LONG_LIVED_KINDS = frozenset({"account_linked", "sync_linked", "sync_secret"})


def copy_ttl_ms(kind: str, namespace: int, default_ms: int, sync_sent_ms: int | None = None) -> int:
    """How long a stored copy of a ``kind`` record lives: pairing records for the pairing
    window, a move's records for :data:`MAX_TTL_MS`, a sent message's sync copy
    ``sync_sent_ms`` if given (``DeviceConfig.sync_copy_ttl_ms``), the rest ``default_ms``
    (the device's TTL)."""
    if namespace == NAMESPACE_CONTROL:
        return PAIRING_WINDOW_MS
    if kind == "sync_sent" and sync_sent_ms is not None:
        return sync_sent_ms
    return MAX_TTL_MS if kind in LONG_LIVED_KINDS else default_ms


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """A history item as siblings push it to each other (its id travels beside it)."""

    timestamp_ms: int
    conversation: str
    outgoing: bool
    sender: str
    device: str
    text: str

    def to_bytes(self) -> bytes:
        return encode_cbor(
            {
                "ts": self.timestamp_ms,
                "with": self.conversation,
                "out": self.outgoing,
                "sender": self.sender,
                "device": self.device,
                "text": self.text,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> HistoryRecord:
        fields = Fields(decode_cbor(data), "history item")
        fields.only("ts", "with", "out", "sender", "device", "text")
        return cls(
            fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            _session_id(fields, "with"),
            fields.boolean("out"),
            _session_id(fields, "sender"),
            _session_id(fields, "device"),
            fields.text("text", max_len=MAX_TEXT_CHARS),
        )


def encode_content(content: Content) -> tuple[str, bytes]:
    """The envelope ``kind`` and body for ``content``."""
    match content:
        case Text(user=user, text=text):
            body: dict[str, Any] = {"user": user, "text": text}
            if content.id is not None:
                body["id"] = content.id
        case FriendRequest(user=user, devices=devices, text=text, name=name):
            body = _with_name({"user": user, "devices": list(devices), "text": text}, name)
            _with_revocations(body, content.revocations)
        case FriendAccept(user=user, devices=devices, name=name):
            body = _with_name({"user": user, "devices": list(devices)}, name)
            _with_revocations(body, content.revocations)
        case Profile(user=user, name=name):
            body = {"user": user, "name": name}
        case SyncProfile(name=name):
            body = {"name": name}
        case SyncSent(id=digest, to=to, timestamp_ms=ts, text=text):
            body = {"id": digest, "to": to, "ts": ts, "text": text}
        case ContactRecord() | SiblingRecord():
            body = content.to_wire()
        case PairRequest(mode=mode, device=device, name=name, timestamp_ms=ts, request=request):
            body = {
                "mode": mode,
                "device": device,
                "overlay": content.overlay,
                "name": name,
                "ts": ts,
            }
            if request is not None:
                body["request"] = request
        case PairChallenge(request_id=request_id, nonce=nonce):
            body = {"request_id": request_id, "nonce": nonce}
        case PairDecline(request_id=request_id):
            body = {"request_id": request_id}
        case DeviceRevoked(revocation=revocation):
            body = {"revocation": revocation}
        case AccountLinked(statement=statement):
            body = {"statement": statement}
        case LinkedHandOver(seed=seed, statement=statement):
            body = {"seed": seed, "statement": statement}
        case SiblingsSecret(secret=secret):
            body = {"secret": secret}
        case PairGrant(request_id=request_id, mapping=mapping, seed=seed, devices=devices):
            body = {
                "request_id": request_id,
                "secret": content.secret,
                "devices": [d.to_wire() for d in devices],
                "contacts": [c.to_wire() for c in content.contacts],
            }
            if mapping is not None:
                body["mapping"] = mapping
            if seed is not None:
                body["seed"] = seed
            _with_name(body, content.name)
            _with_revocations(body, content.revocations)
    return KIND_OF[type(content)], encode_cbor(body)


def decode_content(kind: str, body: bytes) -> Content:
    """Strictly decode the body of an envelope of ``kind``, or raise :class:`DecodeError`."""
    fields = Fields(decode_cbor(body), kind)
    if kind == "text":
        fields.only("user", "text", "id")
        return Text(
            _session_id(fields, "user"),
            fields.text("text", max_len=MAX_TEXT_CHARS),
            fields.optional_blob("id", size=ID_BYTES),
        )
    if kind == "friend_request":
        fields.only("user", "devices", "text", "name", "revocations")
        return FriendRequest(
            _session_id(fields, "user"),
            _session_ids(fields, "devices"),
            fields.text("text", max_len=MAX_TEXT_CHARS),
            _display_name(fields),
            _revocations(fields),
        )
    if kind == "friend_accept":
        fields.only("user", "devices", "name", "revocations")
        return FriendAccept(
            _session_id(fields, "user"),
            _session_ids(fields, "devices"),
            _display_name(fields),
            _revocations(fields),
        )
    if kind == "profile":
        fields.only("user", "name")
        return Profile(_session_id(fields, "user"), _required_name(fields))
    if kind == "sync_profile":
        fields.only("name")
        return SyncProfile(_required_name(fields))
    if kind == "sync_sent":
        fields.only("id", "to", "ts", "text")
        return SyncSent(
            fields.blob("id", size=ID_BYTES),
            _session_id(fields, "to"),
            fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            fields.text("text", max_len=MAX_TEXT_CHARS),
        )
    if kind == "sync_contact":
        return ContactRecord.from_fields(fields)
    if kind == "sync_sibling":
        return SiblingRecord.from_fields(fields)
    if kind == "pair_request":
        fields.only("mode", "device", "overlay", "name", "ts", "request")
        mode = fields.text("mode", max_len=8)
        if mode not in MODES:
            raise DecodeError(f"unknown pairing mode {mode!r}")
        return PairRequest(
            Mode(mode),
            _session_id(fields, "device"),
            fields.blob("overlay", size=KEY_BYTES),
            fields.text("name", max_len=MAX_NAME_CHARS),
            fields.uint("ts", maximum=MAX_TIMESTAMP_MS),
            fields.blob("request", max_len=1024) if fields.has("request") else None,
        )
    if kind == "device_revoked":
        fields.only("revocation")
        return DeviceRevoked(fields.blob("revocation", max_len=MAX_RECORD_BYTES))
    if kind == "account_linked":
        fields.only("statement")
        return AccountLinked(fields.blob("statement", max_len=MAX_STATEMENT_BYTES))
    if kind == "sync_linked":
        fields.only("seed", "statement")
        return LinkedHandOver(
            fields.blob("seed", size=SEED_BYTES),
            fields.blob("statement", max_len=MAX_STATEMENT_BYTES),
        )
    if kind == "sync_secret":
        fields.only("secret")
        return SiblingsSecret(fields.blob("secret", size=SECRET_BYTES))
    if kind == "pair_challenge":
        fields.only("request_id", "nonce")
        return PairChallenge(
            fields.blob("request_id", size=ID_BYTES), fields.blob("nonce", size=NONCE_BYTES)
        )
    if kind == "pair_decline":
        fields.only("request_id")
        return PairDecline(fields.blob("request_id", size=ID_BYTES))
    if kind == "pair_grant":
        fields.only(
            "request_id", "mapping", "seed", "secret", "devices", "contacts", "name", "revocations"
        )
        contacts = fields.items("contacts", max_len=MAX_CONTACTS)
        devices = fields.items("devices", max_len=MAX_DEVICES)
        return PairGrant(
            fields.blob("request_id", size=ID_BYTES),
            fields.blob("mapping", max_len=1024) if fields.has("mapping") else None,
            fields.optional_blob("seed", size=SEED_BYTES),
            fields.blob("secret", size=SECRET_BYTES),
            tuple(SiblingRecord.from_fields(Fields(d, "device")) for d in devices),
            tuple(ContactRecord.from_fields(Fields(c, "contact")) for c in contacts),
            _display_name(fields),
            _revocations(fields),
        )
    raise DecodeError(f"unknown envelope kind {kind!r}")


__all__ = [
    "CONTACT_STATES",
    "NAMESPACE_OF",
    "AccountLinked",
    "ContactRecord",
    "Content",
    "DeviceRevoked",
    "FriendAccept",
    "FriendRequest",
    "HistoryRecord",
    "LinkedHandOver",
    "PairChallenge",
    "PairDecline",
    "PairGrant",
    "PairRequest",
    "Profile",
    "SiblingRecord",
    "SiblingsSecret",
    "SyncProfile",
    "SyncSent",
    "Text",
    "check_display_name",
    "decode_content",
    "encode_content",
]
