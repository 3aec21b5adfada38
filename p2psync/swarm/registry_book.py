"""What the registry lists, and what each announcement does to it, sans-I/O.

An announcement (already checked: signed, admitted, an address the registry may list)
meets the entry of its key (:meth:`RegistryBook.announce`):

* the listed announcement again, signature and all (anyone can copy it from the listing):
  it renews nothing and dials nothing (:class:`Repeated`);
* one older than the listed one is refused, and so is a new key in a full registry (once
  the expired entries have made what room they can);
* one whose address the registry has not reached (a new key, a new url, an expired entry,
  or an entry read back from the state file after a restart) is dialled first
  (:class:`Dial`), where the registry dials at all;
* anything else is listed for :data:`~.listing.ANNOUNCEMENT_TTL_MS` (:class:`Listed`).

After a dial (:meth:`RegistryBook.reached`), the announcement is placed again (the same
key may have announced meanwhile, the registry filled, and the announcement aged: a dial
takes up to its timeout). An entry read back from the state file whose dial found no
free slot is renewed, and dialled on a later announcement; one whose url no longer
answers as its key is no longer listed (:meth:`RegistryBook.unreachable`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, RpcError
from .listing import (
    ANNOUNCEMENT_TTL_MS,
    MAX_LISTED,
    Entry,
    RelayInfo,
    Snapshot,
    check_fresh,
    needs_dial_back,
)
from .ring import NodeInfo

Key = tuple[str, str]  # (kind, pubkey)


@dataclass(frozen=True, slots=True)
class Repeated:
    """The listed announcement again: answer with what is left of its time."""

    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Dial:
    """Reach the announced url first. ``saved``: the key is listed at that url from
    before a restart, and stays listed if the registry is too busy to dial now."""

    saved: bool


@dataclass(frozen=True, slots=True)
class Listed:
    """Listed for ``ttl_ms``: the state changed (save it)."""

    ttl_ms: int


def _key(record: dict[str, Any]) -> Key:
    return (record["kind"], record["pubkey"])


class RegistryBook:
    """The registry's entries, at most ``capacity`` of them (see the module)."""

    def __init__(self, capacity: int = MAX_LISTED) -> None:
        self._capacity = capacity
        self._entries: dict[Key, Entry] = {}
        #: Entries read back from the state file: listed, but dialled again on their
        #: next announcement (the registry that reached them is gone).
        self._unreached: set[Key] = set()
        #: The last snapshot, and until when it holds (the next expiry in it) unless
        #: the entries change first: every page of a ``list`` reads it, and building it
        #: anew sorts every entry (a reader of 10 000 entries asks for 50 pages).
        self._snapshot: tuple[Snapshot, int] | None = None

    def announce(
        self, record: dict[str, Any], signature: bytes, now_ms: int, *, dials: bool
    ) -> Repeated | Dial | Listed:
        key = _key(record)
        previous = self._place_for(key, record["timestamp"], now_ms)
        if previous is not None and previous[2] == signature:
            return Repeated(max(0, previous[0] - now_ms))
        url = record["url"]
        reached = key not in self._unreached
        if dials and needs_dial_back(previous, url, now_ms, reached=reached):
            return Dial(saved=not reached and not needs_dial_back(previous, url, now_ms))
        return self._list(key, record, signature, now_ms)

    def reached(
        self, record: dict[str, Any], signature: bytes, now_ms: int, *, dialled: bool = True
    ) -> Listed:
        """After a :class:`Dial` that reached the url (``dialled``), or found no slot
        free for a ``saved`` entry (not ``dialled``: it is dialled on a later
        announcement), at ``now_ms``."""
        key = _key(record)
        self._place_for(key, record["timestamp"], now_ms)
        check_fresh(record["timestamp"], now_ms)
        if dialled:
            self._unreached.discard(key)
        return self._list(key, record, signature, now_ms)

    def unreachable(self, record: dict[str, Any], *, saved: bool) -> bool:
        """After a :class:`Dial` that did not reach the url: a ``saved`` entry is listed
        no more. True if that changed the state."""
        if saved:
            self._forget(_key(record))
        return saved

    def _list(self, key: Key, record: dict[str, Any], signature: bytes, now_ms: int) -> Listed:
        self._entries[key] = (now_ms + ANNOUNCEMENT_TTL_MS, record, signature)
        self._snapshot = None
        return Listed(ANNOUNCEMENT_TTL_MS)

    def _forget(self, key: Key) -> None:
        if self._entries.pop(key, None) is not None:
            self._snapshot = None
        self._unreached.discard(key)

    def _place_for(self, key: Key, timestamp: int, now_ms: int) -> Entry | None:
        """The entry an announcement made at ``timestamp`` replaces, or refuse it: an
        older one than listed, or a new entry in a full registry (once the expired
        entries are gone)."""
        previous = self._entries.get(key)
        if previous is not None and previous[1]["timestamp"] > timestamp:
            raise RpcError("unauthorized", "announcement is older than the one listed")
        if previous is None and len(self._entries) >= self._capacity:
            for gone in [k for k, (expiry, _, _) in self._entries.items() if expiry <= now_ms]:
                self._forget(gone)
            if len(self._entries) >= self._capacity:
                raise RpcError("unavailable", "registry is full")
        return previous

    def snapshot(self, now_ms: int) -> Snapshot:
        """What is listed at ``now_ms``, in (kind, pubkey) order."""
        if self._snapshot is not None and now_ms < self._snapshot[1]:
            return self._snapshot[0]
        live = sorted(
            (key, record, signature)
            for key, (expiry, record, signature) in self._entries.items()
            if expiry > now_ms
        )
        holds_until = min(
            (expiry for expiry, _, _ in self._entries.values() if expiry > now_ms),
            default=now_ms + ANNOUNCEMENT_TTL_MS,
        )
        snapshot = Snapshot(
            tuple(NodeInfo(r["pubkey"], r["url"]) for _, r, _ in live if r["kind"] == "node"),
            tuple(
                RelayInfo(r["pubkey"], r["url"], r["contact"])
                for _, r, _ in live
                if r["kind"] == "relay"
            ),
            tuple({"record": r, "signature": sig} for _, r, sig in live),
        )
        self._snapshot = (snapshot, holds_until)
        return snapshot

    # --- the state file -------------------------------------------------------------------

    def to_json(self) -> bytes:
        entries = [
            {
                "expiry": expiry,
                "signature": signature.hex(),
                **{k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()},
            }
            for expiry, record, signature in self._entries.values()
        ]
        return json.dumps(entries).encode()

    def load(
        self, data: bytes, admissible: Callable[[dict[str, Any]], None]
    ) -> list[tuple[str, Exception]]:
        """Entries from :meth:`to_json`'s bytes, each listed as unreached if
        ``admissible`` (which raises for one the registry would no longer take: the
        ledger and the refused ranges may have changed since, or a field is not what
        it must be), and no more than ``capacity`` of them (those that last longest);
        returns the keys left out by the check, with why. Raises ``ValueError``,
        ``KeyError`` or ``TypeError`` for bytes that are not such a state, having taken
        none of it."""
        loaded: dict[Key, Entry] = {}
        left_out: list[tuple[str, Exception]] = []
        for entry in json.loads(data):
            record = {k: entry[k] for k in ("kind", "pubkey", "url", "timestamp")}
            record["contact"] = bytes.fromhex(entry["contact"])
            record["registration"] = bytes.fromhex(entry.get("registration", ""))
            signature = bytes.fromhex(entry["signature"])
            try:
                admissible(record)
            except (DecodeError, RpcError, KeyError, TypeError, ValueError) as exc:
                left_out.append((record["pubkey"], exc))
                continue
            loaded[_key(record)] = (int(entry["expiry"]), record, signature)
        if len(loaded) > self._capacity:  # a state from a registry with more room
            kept = sorted(loaded, key=lambda key: loaded[key][0], reverse=True)
            loaded = {key: loaded[key] for key in kept[: self._capacity]}
        self._entries.update(loaded)
        self._unreached.update(loaded)
        self._snapshot = None
        return left_out
