"""The registry: "a record of active service nodes" (and overlay relays).

Nodes and relays announce themselves with a record signed by their own Ed25519 key; the
registry (:class:`RegistryServer`) keeps each record until it expires (announcers repeat
well before that), so a node that dies drops out on its own. Where the network has a
ledger it takes a node's or relay's announcement only with a registration that ledger
signed, and before it lists an address it has not reached yet it connects to it
(:class:`DialBack`). On a network whose links are TLS the url must be an IP address and
pin the announcer's own key (and a relay's contact must be that key at that url), so the
dial proves the announcer serves there: a staked node or relay cannot list an address
that is not its own, where devices would waste their paths' attempts, or another host's,
whose exit share it would claim. What an announcement must be is decided in
:mod:`.listing`; how readers and announcers reach the registry is :mod:`.directory`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from overlay.link import Transport

from ..clock import Clock
from ..errors import DecodeError, RpcError
from ..rpc import Connection, RpcServer
from ..saved_file import SavedFile
from ..wire import Fields
from .dial_back import DialBack, DialBusy, DialFailed
from .listing import (
    ANNOUNCEMENT_TTL_MS,
    MAX_LISTED,
    Entry,
    IpRange,
    RefusedRange,
    RelayInfo,
    Snapshot,
    admitted_position,
    check_announcement,
    check_dial_address,
    check_fresh,
    check_pinned_url,
    listing_page,
    needs_dial_back,
)
from .ring import NodeInfo

logger = logging.getLogger(__name__)


class RegistryServer:
    """Keeps signed announcements until they expire; optionally persisted to a JSON file
    so a restarted registry answers with the last list at once. With a ``ledger`` key it
    takes a node's announcement only with a registration that ledger signed. It lists
    ``capacity`` entries at most. With a ``dial_back`` transport it lists an address only
    once it has connected to it (:class:`DialBack`), and never one in the ``refused``
    ranges, nor (given such ranges) a host name, on TLS or plaintext links
    (:func:`~.listing.check_dial_address`); None skips the dial, for tests that announce
    addresses nothing serves."""

    def __init__(
        self,
        clock: Clock,
        state_path: Path | None = None,
        *,
        ledger: bytes | None,
        dial_back: Transport | None,
        capacity: int = MAX_LISTED,
        refused: Sequence[IpRange] = (),
    ) -> None:
        self.clock = clock
        self._refused = tuple(refused)
        self.ledger = ledger
        self._capacity = capacity
        self._dial = None if dial_back is None else DialBack(dial_back, clock)
        #: Entries read back from the state file: listed, but dialled again on their
        #: next announcement (the registry that reached them is gone).
        self._unreached: set[tuple[str, str]] = set()
        self._state = None if state_path is None else SavedFile(state_path)
        self._entries: dict[tuple[str, str], Entry] = {}  # by (kind, pubkey)
        if state_path is not None and state_path.exists():
            self._load(state_path)
        self.rpc = RpcServer({"announce": self._announce, "list": self._list})

    async def serve(
        self,
        transport: Transport,
        address: str,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.rpc.serve(transport, address, task_status=task_status)

    def snapshot(self) -> Snapshot:
        """What is listed now (every entry was checked when it was announced)."""
        now = self.clock.now_ms()
        live = sorted(
            (key, record, signature)
            for key, (expiry, record, signature) in self._entries.items()
            if expiry > now
        )
        return Snapshot(
            tuple(NodeInfo(r["pubkey"], r["url"]) for _, r, _ in live if r["kind"] == "node"),
            tuple(
                RelayInfo(r["pubkey"], r["url"], r["contact"])
                for _, r, _ in live
                if r["kind"] == "relay"
            ),
            tuple({"record": r, "signature": sig} for _, r, sig in live),
        )

    async def _announce(self, params: Fields, conn: Connection) -> Any:
        now = self.clock.now_ms()
        raw = check_announcement(params, now)
        try:
            self._check_admissible(raw)
        except RefusedRange:
            assert self._dial is not None  # ranges are checked only where it dials
            await self._dial.refuse(raw["pubkey"])
        key = (raw["kind"], raw["pubkey"])
        signature = params.blob("signature", size=64)
        previous = self._place_for(key, raw["timestamp"], now)
        if previous is not None and previous[2] == signature:
            # The listed announcement again, signature and all (anyone can copy it from
            # the listing): it renews nothing and dials nothing.
            return {"ttl_ms": max(0, previous[0] - now)}
        url = raw["url"]
        reached = key not in self._unreached
        # Listed at this url before a restart, and not dialled since.
        saved = not reached and not needs_dial_back(previous, url, now)
        if self._dial is not None and needs_dial_back(previous, url, now, reached=reached):
            try:
                await self._dial.reach(raw["kind"], raw["pubkey"], url)
            except DialBusy:
                if not saved:
                    raise
                # Listed before the restart at this url: renewed, and dialled on a later
                # announcement that finds a free slot (holding the slots drains nothing).
            except DialFailed:
                if saved:  # its url no longer answers as its key: no longer listed
                    self._forget(key)
                    await self._save()
                raise
            else:
                self._unreached.discard(key)
            # Checked again: the same key may have announced meanwhile, the registry
            # filled, and the announcement aged (a dial takes up to its timeout).
            now = self.clock.now_ms()
            self._place_for(key, raw["timestamp"], now)
            check_fresh(raw["timestamp"], now)
        self._entries[key] = (now + ANNOUNCEMENT_TTL_MS, raw, signature)
        await self._save()
        return {"ttl_ms": ANNOUNCEMENT_TTL_MS}

    def _check_admissible(self, raw: dict[str, Any]) -> None:
        """Admission first, then the url: what the registry refuses to dial is no
        stranger's business (on a registry with a ledger)."""
        try:
            admitted_position(raw, self.ledger)
        except DecodeError as exc:
            raise RpcError("unauthorized", f"not admitted: {exc}") from None
        if self._dial is not None and self._dial.transport.pins_keys:
            check_pinned_url(raw["kind"], raw["url"], self._refused)
        elif self._dial is not None and self._refused:
            check_dial_address(raw["url"], self._refused)

    def _forget(self, key: tuple[str, str]) -> None:
        self._entries.pop(key, None)
        self._unreached.discard(key)

    def _place_for(self, key: tuple[str, str], timestamp: int, now_ms: int) -> Entry | None:
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

    def _list(self, params: Fields, conn: Connection) -> Any:
        return listing_page(self.snapshot().announcements, params)

    async def _save(self) -> None:
        if self._state is not None:
            await self._state.save(self._state_json)

    def _state_json(self) -> bytes:
        entries = [
            {
                "expiry": expiry,
                "signature": signature.hex(),
                **{k: v.hex() if isinstance(v, bytes) else v for k, v in rec.items()},
            }
            for expiry, rec, signature in self._entries.values()
        ]
        return json.dumps(entries).encode()

    def _load(self, path: Path) -> None:
        try:
            for entry in json.loads(path.read_text()):
                rec = {k: entry[k] for k in ("kind", "pubkey", "url", "timestamp")}
                rec["contact"] = bytes.fromhex(entry["contact"])
                rec["registration"] = bytes.fromhex(entry.get("registration", ""))
                signature = bytes.fromhex(entry["signature"])
                try:  # the ledger and the refused ranges may have changed since
                    self._check_admissible(rec)
                except (DecodeError, RpcError) as exc:
                    logger.info("registry state: left out %s: %s", rec["pubkey"][:8], exc)
                    continue
                key = (rec["kind"], rec["pubkey"])
                self._entries[key] = (int(entry["expiry"]), rec, signature)
                self._unreached.add(key)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable registry state %s: %s", path, exc)
            self._entries.clear()
            self._unreached.clear()
