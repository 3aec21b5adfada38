"""The network's listing, checked without I/O: the nodes and relays the registry lists,
each by an announcement signed by its own key.

Every reader builds its :class:`Snapshot` from the announcements themselves
(:meth:`Snapshot.from_announcements`): an entry counts only if its signature, its age,
its pinned url (its own key's) and, where the network has a ledger, its registration
check out, so a registry or anyone serving a copy can leave an entry out or list it
late, but cannot make one up or move one to another address. :func:`merge_listings`
joins copies from several nodes; :func:`listing_page` cuts a listing into ``list``
pages; :func:`check_announcement` and :func:`needs_dial_back` are the registry's rules
for taking an announcement (:mod:`.registry` is the server, :mod:`.directory` the
readers' drivers).
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from overlay.addresses import split_host_port, split_pin
from overlay.contact import Contact, ContactError

from ..errors import DecodeError, RpcError
from ..identity import Identity, verify
from ..urls import split_url
from ..wire import Fields, encode_cbor
from .admission import MAX_REGISTRATION_BYTES, Registration
from .constants import CLOCK_SKEW_MS
from .ring import NodeInfo

logger = logging.getLogger(__name__)

ANNOUNCE_DOMAIN = b"p2psync-announce/1:"
#: An announcement stays listed this long; announcers repeat every REGISTRY_REFRESH_S.
ANNOUNCEMENT_TTL_MS = 5 * 60_000
#: How old an announcement may be in a copy served by a node or read back from disk while
#: the registry is down (the registry itself must list only fresh ones). Old entries may
#: name dead nodes; every signature still proves the node announced that address.
CACHED_LISTING_MAX_AGE_MS = 24 * 3_600_000
MAX_LISTED = 10_000
KINDS = ("node", "relay")
#: A relay's contact is about 130 bytes (key, address, expiry, signature).
MAX_CONTACT_BYTES = 512
#: Entries and bytes of announcements in one page of ``list`` (well inside a frame).
LIST_PAGE = 200
LIST_PAGE_BYTES = 96 * 1024


@dataclass(frozen=True, slots=True)
class RelayInfo:
    pubkey: str
    url: str
    contact: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        return {"pubkey": self.pubkey, "url": self.url, "contact": self.contact}


@dataclass(frozen=True)
class Snapshot:
    """What the registry lists at one moment."""

    nodes: tuple[NodeInfo, ...] = ()
    relays: tuple[RelayInfo, ...] = ()
    #: The signed announcements this listing was built from, for serving it on.
    announcements: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def announced_since(self, since_ms: int) -> frozenset[str]:
        """The keys of the nodes and relays listed by an announcement made at ``since_ms``
        or later (in a listing built by :meth:`from_announcements`)."""
        return frozenset(
            entry["record"]["pubkey"]
            for entry in self.announcements
            if entry["record"]["timestamp"] >= since_ms
        )

    def announcements_to_wire(self) -> dict[str, Any]:
        return {"announcements": list(self.announcements)}

    @classmethod
    def from_announcements(
        cls,
        value: object,
        now_ms: int,
        *,
        ledger: bytes | None,
        max_age_ms: int = ANNOUNCEMENT_TTL_MS,
    ) -> Snapshot:
        """A listing of signed announcements, each checked: shape, own-key signature, age
        at most ``max_age_ms`` (so an old announcement of a dead node cannot be replayed
        forever) and, for a node, its registration under ``ledger`` (``None``: a network
        without admission, where positions come from the keys). An entry that fails is
        left out, and the rest stand. For one key the newest announcement counts.
        Re-reading is cheap: an announcement that checked out before is remembered
        (:func:`_checked_entry`)."""
        fields = Fields(value, "listing").only("announcements")
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        positions: dict[tuple[str, str], int | None] = {}
        refused = 0
        for item in fields.items("announcements", max_len=MAX_LISTED):
            try:
                entry, position = _checked_entry(item, ledger)
                raw = entry["record"]
                age = now_ms - raw["timestamp"]
                if not -CLOCK_SKEW_MS <= age <= max_age_ms + CLOCK_SKEW_MS:
                    raise DecodeError(f"the announcement of {raw['pubkey'][:8]} is stale or early")
            except (DecodeError, RpcError) as exc:
                refused += 1
                logger.debug("left out of the listing: %s", exc)
                continue
            key = (raw["kind"], raw["pubkey"])
            if key not in newest or newest[key]["record"]["timestamp"] < raw["timestamp"]:
                newest[key] = entry
                positions[key] = position
        if refused:
            logger.info("left %d announcements that do not check out out of the listing", refused)
        records = [newest[key]["record"] for key in sorted(newest)]
        return cls(
            tuple(
                NodeInfo(r["pubkey"], r["url"], positions[("node", r["pubkey"])])
                for r in records
                if r["kind"] == "node"
            ),
            tuple(
                RelayInfo(r["pubkey"], r["url"], r["contact"])
                for r in records
                if r["kind"] == "relay"
            ),
            tuple(newest[key] for key in sorted(newest)),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_wire() for n in self.nodes],
            "relays": [r.to_wire() for r in self.relays],
        }

    @classmethod
    def from_wire(cls, value: object) -> Snapshot:
        fields = Fields(value, "registry")
        nodes = []
        for item in fields.items("nodes", max_len=MAX_LISTED):
            node = Fields(item, "node")
            nodes.append(NodeInfo(_hex_key(node.text("pubkey", max_len=64)), node.text("url")))
        relays = []
        for item in fields.items("relays", max_len=MAX_LISTED) if fields.has("relays") else []:
            relay = Fields(item, "relay")
            contact = (
                relay.blob("contact", max_len=MAX_CONTACT_BYTES) if relay.has("contact") else b""
            )
            relays.append(
                RelayInfo(_hex_key(relay.text("pubkey", max_len=64)), relay.text("url"), contact)
            )
        return cls(tuple(sorted(nodes)), tuple(sorted(relays, key=lambda r: r.pubkey)))


def merge_listings(
    known: Snapshot,
    answers: Sequence[Snapshot],
    now_ms: int,
    *,
    ledger: bytes | None,
    agree: int,
) -> Snapshot:
    """What a device takes the listing to be after reading it from service nodes: each
    node's copy of the registry's announcements (``answers``, each checked on its own)
    merged with the listing it knew, newest announcement per key.

    * A node that withholds an entry does not remove it: what was known stands until it
      is too old.
    * A relay not known before is taken only when ``agree`` answers name it: relays are
      not admitted, so one node could otherwise fill the listing with relays of its own
      and draw the device's paths through them. A node's entry carries its registration
      under ``ledger``, so one answer will do.
    * "Too old" is measured from the listing's newest entry, not from now: while the
      registry is down the nodes serve their last copy (for up to
      :data:`CACHED_LISTING_MAX_AGE_MS`), and its entries then age together instead of
      all dropping out :data:`ANNOUNCEMENT_TTL_MS` after the outage began.
    * What was known comes first when the merge is cut at :data:`MAX_LISTED`."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}

    def key_of(announcement: dict[str, Any]) -> tuple[str, str]:
        return (announcement["record"]["kind"], announcement["record"]["pubkey"])

    def offer(announcement: dict[str, Any]) -> None:
        key = key_of(announcement)
        if (
            key not in newest
            or newest[key]["record"]["timestamp"] < (announcement["record"]["timestamp"])
        ):
            newest[key] = announcement

    for announcement in known.announcements:
        offer(announcement)
    named: dict[tuple[str, str], int] = {}
    for answer in answers:
        for announcement in answer.announcements:
            named[key_of(announcement)] = named.get(key_of(announcement), 0) + 1
    for answer in answers:
        for announcement in answer.announcements:
            key = key_of(announcement)
            if key in newest or key[0] == "node" or named[key] >= agree:
                offer(announcement)
    entries = list(newest.values())[:MAX_LISTED]
    listing_ms = max((entry["record"]["timestamp"] for entry in entries), default=now_ms)
    return Snapshot.from_announcements(
        {"announcements": entries}, min(now_ms, listing_ms), ledger=ledger
    )


def _hex_key(text: str) -> str:
    try:
        if len(bytes.fromhex(text)) == 32 and text == text.lower():
            return text
    except ValueError:
        pass
    raise DecodeError(f"not a 32-byte lowercase hex key: {text!r}")


def admitted_position(raw: dict[str, Any], ledger: bytes | None) -> int | None:
    """Where a node's announcement puts it on the ring: its registration's position
    under ``ledger``; ``None`` (the key's own) without a ledger, or for a relay. Relays
    are admitted as nodes are (an exit draws on servers' onion shares, and paths are
    drawn among relays, so anyone who could list relays at will could take both):
    :class:`DecodeError` for either kind without a valid registration."""
    if ledger is None:
        return None
    registration = Registration.decode(raw["registration"])
    registration.check(ledger, raw["pubkey"])
    return registration.position if raw["kind"] == "node" else None


#: Announcements whose shape, signature and registration checked out, at most this many
#: (oldest forgotten first): about two full listings (the one read and the one before,
#: as the newest announcements replace the old), some 30 MB at the very most.
CHECKED_CACHE_ENTRIES = 2 * MAX_LISTED + 1_024
_checked: dict[tuple[Any, ...], tuple[dict[str, Any], int | None]] = {}


def _checked_entry(item: object, ledger: bytes | None) -> tuple[dict[str, Any], int | None]:
    """One announcement of a listing checked in all that does not depend on the time (its
    shape, its own-key signature, its registration under ``ledger``): the entry as the
    listing serves it on, and the node's ring position (:func:`admitted_position`).

    Every node, relay and device re-reads the whole listing every refresh, and the same
    announcements come back each time: checking each again was most of an idle network's
    CPU. An announcement that checked out is remembered under its exact content: every
    field's type and value, the signature and the ledger key, so a copy that differs in
    anything is checked in full. Failures are never remembered, and what is returned is
    the entry built from the checked fields, never the caller's object."""
    memo_key = _memo_key(item, ledger)
    if memo_key is not None and memo_key in _checked:
        return _checked[memo_key]
    announcement = Fields(item, "announcement")
    raw = _checked_record(announcement)
    position = admitted_position(raw, ledger)
    checked = ({"record": raw, "signature": announcement.blob("signature", size=64)}, position)
    if memo_key is not None:
        while len(_checked) >= CHECKED_CACHE_ENTRIES:
            del _checked[next(iter(_checked))]
        _checked[memo_key] = checked
    return checked


def _memo_key(item: object, ledger: bytes | None) -> tuple[Any, ...] | None:
    """The exact content of a decoded announcement, hashable; ``None`` if it is not a map
    of a map of scalars (then it is checked every time, and fails its shape check)."""
    if type(item) is not dict or type(item.get("record")) is not dict:
        return None
    fields = tuple((name, type(value), value) for name, value in item.items() if name != "record")
    record = tuple((name, type(value), value) for name, value in item["record"].items())
    key = (ledger, fields, record)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _announcement_text(record: dict[str, Any]) -> bytes:
    return ANNOUNCE_DOMAIN + encode_cbor(record)


def sign_announcement(
    identity: Identity,
    kind: str,
    url: str,
    now_ms: int,
    contact: bytes = b"",
    registration: bytes = b"",
) -> dict[str, Any]:
    record = {
        "kind": kind,
        "pubkey": identity.ed25519_public.hex(),
        "url": url,
        "timestamp": now_ms,
        "contact": contact,
        "registration": registration,
    }
    return {"record": record, "signature": identity.sign(_announcement_text(record))}


#: A registry entry: (listed until, record, its signature).
Entry = tuple[int, dict[str, Any], bytes]


def needs_dial_back(previous: Entry | None, url: str, now_ms: int, *, reached: bool = True) -> bool:
    """Whether an announcement of ``url`` must be reached first: its announcer is new, was
    listed at another url, its entry expired, or this registry has not reached it itself
    (not ``reached``: an entry read back from its state file after a restart)."""
    return previous is None or previous[0] <= now_ms or previous[1]["url"] != url or not reached


#: From the start of a dial back that did not reach its announcer, how long before the
#: registry dials that announcer again (its announcements meanwhile are refused at once):
#: a dial costs the registry a slot for up to its timeout, and its outcome tells the
#: announcer about the address.
DIAL_RETRY_MS = 30_000


def may_dial_again(last_try_ms: int | None, now_ms: int) -> bool:
    """Whether an announcer may be dialled now, whose latest dial that did not reach it
    began at ``last_try_ms`` (None: there is none)."""
    return last_try_ms is None or now_ms - last_try_ms >= DIAL_RETRY_MS


def listing_page(announcements: Sequence[dict[str, Any]], params: Fields) -> dict[str, Any]:
    """One page of a listing sorted by (kind, pubkey), for ``list`` ``{"after"?: [kind,
    pubkey]}``: the entries after that key, at most ``LIST_PAGE`` of them and about
    ``LIST_PAGE_BYTES``, and ``next``, the key to ask after for the next page (``None``
    at the end)."""
    params.only("after")
    start = 0
    if params.has("after"):
        after = params.items("after", max_len=2)
        if len(after) != 2 or not all(isinstance(part, str) for part in after):
            raise DecodeError("params.after is [kind, pubkey]")
        start = bisect.bisect_right(
            announcements,
            (after[0], after[1]),
            key=lambda a: (a["record"]["kind"], a["record"]["pubkey"]),
        )
    page: list[dict[str, Any]] = []
    size = 0
    for announcement in announcements[start : start + LIST_PAGE]:
        size += len(encode_cbor(announcement))
        if page and size > LIST_PAGE_BYTES:
            break
        page.append(announcement)
    more = start + len(page) < len(announcements)
    last = page[-1]["record"] if page else None
    return {
        "announcements": page,
        "next": [last["kind"], last["pubkey"]] if more and last is not None else None,
    }


def check_announcement(params: Fields, now_ms: int) -> dict[str, Any]:
    """The record of a signed announcement (``announce`` params), checked in full:
    :class:`DecodeError` for a malformed one, ``clock_skew`` for a stale one and
    ``unauthorized`` unless its own key signed exactly this record."""
    raw = _checked_record(params)
    check_fresh(raw["timestamp"], now_ms)
    return raw


def check_fresh(timestamp_ms: int, now_ms: int) -> None:
    """``clock_skew`` for an announcement made too far from ``now_ms``: the registry
    takes only fresh ones (a copy of the listing may hold older)."""
    if abs(timestamp_ms - now_ms) > CLOCK_SKEW_MS:
        raise RpcError("clock_skew", "announcement timestamp is too far from the registry's")


#: An address range, as a registry's operator names the ranges it does not dial.
IpRange = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_pinned_url(kind: str, url: str, refused: Sequence[IpRange] = ()) -> None:
    """What a registry of a network whose links are TLS lists: a node at
    ``wss://IP:PORT/<key>``, a relay at ``IP:PORT#<key>``, at an address outside the
    ``refused`` ranges (:func:`check_dial_address`). Its dial back then proves the
    announcer serves there; for an unpinned url it would prove only that something
    answers, and for a host name only where the name pointed at that moment (and a slow
    name lookup holds a thread of the registry's). :class:`DecodeError` otherwise."""
    if kind == "node" and not url.startswith("wss://"):
        raise DecodeError(f"announced url {url[:80]!r}: a node's url is wss://IP:PORT/<key>")
    if kind == "relay" and "://" in url:
        raise DecodeError(f"announced url {url[:80]!r}: a relay's url is IP:PORT#<key>")
    if _authority_and_pin(url)[1] is None:
        raise DecodeError(f"announced url {url[:80]!r} names no key")
    check_dial_address(url, refused)


class RefusedRange(DecodeError):
    """An announced url whose address is in a range the registry's operator refused."""


def check_dial_address(url: str, refused: Sequence[IpRange]) -> None:
    """The address a registry would dial for ``url`` is one host's IP address
    (:class:`DecodeError` otherwise), outside the ``refused`` ranges (an operator's:
    networks no announcer lives on, which no announcer should make the registry connect
    into; :class:`RefusedRange` otherwise)."""
    try:
        address = _dialable_address(_authority_and_pin(url)[0])
    except ValueError as exc:
        raise DecodeError(f"announced url {url[:80]!r}: {exc}") from None
    if any(address in network for network in refused):
        raise RefusedRange(f"announced url {url[:80]!r}: {address} is in a refused range")


def _authority_and_pin(url: str) -> tuple[str, bytes | None]:
    """``host:port`` and the pinned key of a node's url (``ws(s)://``) or a relay's."""
    try:
        return split_url(url) if "://" in url else split_pin(url)
    except ValueError as exc:
        raise DecodeError(f"announced url {url[:80]!r}: {exc}") from None


def _checked_record(params: Fields) -> dict[str, Any]:
    """Shape and signature of one announcement; its age is the caller's business."""
    params.only("record", "signature")
    record = params.map("record").only(
        "kind", "pubkey", "url", "timestamp", "contact", "registration"
    )
    kind = record.text("kind", max_len=8)
    if kind not in KINDS:
        raise DecodeError(f"record.kind must be one of {KINDS}")
    pubkey = _hex_key(record.text("pubkey", max_len=64))
    raw: dict[str, Any] = {
        "kind": kind,
        "pubkey": pubkey,
        "url": record.text("url"),
        "timestamp": record.uint("timestamp"),
        "contact": record.blob("contact", max_len=MAX_CONTACT_BYTES),
        "registration": record.blob("registration", max_len=MAX_REGISTRATION_BYTES),
    }
    signature = params.blob("signature", size=64)
    if not verify(bytes.fromhex(pubkey), _announcement_text(raw), signature):
        raise RpcError("unauthorized", "announcement signature does not verify")
    _check_own_pin(raw["url"], pubkey)
    _check_own_contact(raw)
    return raw


#: IPv6 ranges that carry an IPv4 address inside (mapped, compatible, NAT64, 6to4): an
#: announcer names the IPv4 address itself, and a range check of the IPv6 form would
#: miss the IPv4 host a dial reaches.
EMBEDDED_IPV4 = tuple(
    ipaddress.IPv6Network(net) for net in ("::ffff:0:0/96", "::/96", "64:ff9b::/96", "2002::/16")
)


def _dialable_address(authority: str) -> IpAddress:
    """The address of ``IP:PORT`` (an IPv6 address in brackets), if it is one host's: not
    a name, not the unspecified or a multicast address (a reader dialling those reaches
    itself, or no one in particular), no IPv4 address inside an IPv6 one."""
    host = authority.rpartition(":")[0]
    if not host:
        raise ValueError("no host")
    address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    if host.startswith("[") != (address.version == 6):
        raise ValueError("an IPv6 address goes in brackets, an IPv4 address does not")
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{address} is no one host's address")
    if (
        address.version == 6
        and not address.is_loopback
        and any(address in network for network in EMBEDDED_IPV4)
    ):
        raise ValueError(f"{address} carries an IPv4 address: announce that one")
    split_host_port(authority)  # the port
    return address


def _check_own_contact(raw: dict[str, Any]) -> None:
    """A relay's contact, what devices build their paths from, is of the relay's own key
    at the url it announced: otherwise what the registry dialled back, and what the
    ledger admitted, would not be what devices use."""
    if raw["kind"] != "relay" or not raw["contact"]:
        return
    try:
        contact = Contact.decode(raw["contact"])
    except ContactError as exc:
        raise DecodeError(f"relay contact: {exc}") from None
    if contact.pubkey.hex() != raw["pubkey"] or contact.address != raw["url"]:
        raise DecodeError("a relay's contact is of its own key at its announced url")


def _check_own_pin(url: str, pubkey: str) -> None:
    """A node or relay serves TLS as its own key, so the url it announces, if pinned
    (a node's ``wss://…/<key>``, a relay's ``host:port#<key>``), pins that key. One pinning
    another key is someone else's url: announced by an admitted node it made the real
    owner's url name two nodes (so devices sealed onion requests to neither)."""
    try:
        _, pin = split_url(url) if url.startswith("wss://") else split_pin(url)
    except ValueError as exc:
        raise DecodeError(f"url of {pubkey[:8]}: {exc}") from None
    if pin is not None and pin.hex() != pubkey:
        raise DecodeError(f"the url of {pubkey[:8]} pins another key")
