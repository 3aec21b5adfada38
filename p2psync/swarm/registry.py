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
:mod:`.listing`, what it does to the listing in :mod:`.registry_book`; how readers and
announcers reach the registry is :mod:`.directory`.
"""

from __future__ import annotations

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
    MAX_LISTED,
    IpRange,
    RefusedRange,
    Snapshot,
    admitted_position,
    check_announcement,
    check_dial_address,
    check_pinned_url,
    listing_page,
)
from .registry_book import Dial, Listed, RegistryBook

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
        self._dial = None if dial_back is None else DialBack(dial_back, clock)
        self._book = RegistryBook(capacity)
        self._state = None if state_path is None else SavedFile(state_path)
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
        return self._book.snapshot(self.clock.now_ms())

    async def _announce(self, params: Fields, conn: Connection) -> Any:
        raw = check_announcement(params, self.clock.now_ms())
        try:
            self._check_admissible(raw)
        except RefusedRange:
            assert self._dial is not None  # ranges are checked only where it dials
            await self._dial.refuse(raw["pubkey"])
        signature = params.blob("signature", size=64)
        book = self._book
        step = book.announce(raw, signature, self.clock.now_ms(), dials=self._dial is not None)
        if isinstance(step, Dial):
            assert self._dial is not None
            try:
                await self._dial.reach(raw["kind"], raw["pubkey"], raw["url"])
            except DialBusy:
                if not step.saved:
                    raise
                step = book.reached(raw, signature, self.clock.now_ms(), dialled=False)
            except DialFailed:
                if book.unreachable(raw, saved=step.saved):
                    await self._save()
                raise
            else:
                step = book.reached(raw, signature, self.clock.now_ms())
        if isinstance(step, Listed):
            await self._save()
        return {"ttl_ms": step.ttl_ms}

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

    def _list(self, params: Fields, conn: Connection) -> Any:
        return listing_page(self.snapshot().announcements, params)

    async def _save(self) -> None:
        if self._state is not None:
            await self._state.save(self._book.to_json)

    def _load(self, path: Path) -> None:
        try:
            left_out = self._book.load(path.read_bytes(), self._check_admissible)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable registry state %s: %s", path, exc)
            return
        for pubkey, why in left_out:
            logger.warning("registry state: left out %s: %s", pubkey[:8], why)
