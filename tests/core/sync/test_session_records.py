"""One session's records between two siblings, in lockstep: which piece each record goes
to, and when re-sync from the sibling is over."""

from __future__ import annotations

import hashlib
from collections import deque

from overlay.contact import make_contact
from overlay.keys import KeyPair
from p2psync.sync.live import Deliver, Item, LiveSync, PeerError, Send
from p2psync.sync.records import Msg, Ping, Relays, encode_record
from p2psync.sync.resync import ResyncPeer, archive_parts
from p2psync.sync.session_records import (
    Effect,
    ListingFrom,
    Resynced,
    SessionRecords,
    StreamArchive,
)

#: When the session came up, and when its records arrive (later: re-sync takes time, and
#: the watermark must move up to when it began, not to when it ended).
STARTED = 1_000_000
NOW = STARTED + 7_000


def item(n: int) -> Item:
    body = f"message {n}".encode()
    return Item(hashlib.blake2b(body, digest_size=32).digest(), 1_000 * n, body)


class Side:
    """A device's history and its end of the session with ``sibling``."""

    def __init__(
        self,
        sibling: str,
        items: list[Item],
        complete_until_ms: int,
        *,
        lost: tuple[Item, ...] = (),
    ) -> None:
        """``lost``: items the history lists but can no longer produce."""
        self.history = {i.id: i for i in items}
        self.lost = lost
        self.live = LiveSync([sibling], has=self.has)
        peer = ResyncPeer(self.index, self.history.get, complete_until_ms, self.has)
        self.records = SessionRecords(sibling, self.live, peer, STARTED)
        self.effects: list[Effect] = []

    def has(self, message_id: bytes) -> bool:
        return message_id in self.history

    def index(self, since_ms: int) -> list[tuple[int, bytes]]:
        listed = [*self.history.values(), *self.lost]
        return sorted((i.timestamp_ms, i.id) for i in listed if i.timestamp_ms >= since_ms)


def run(a: Side, b: Side) -> None:
    """Open both ends and carry every record across until neither has more to send."""
    wire: deque[tuple[Side, bytes]] = deque()

    def carry_out(side: Side, effects: list[Effect]) -> None:
        other = b if side is a else a
        side.effects.extend(effects)
        for effect in effects:
            match effect:
                case Send(data=data):
                    wire.append((other, data))
                case Deliver(item=delivered):
                    side.history[delivered.id] = delivered
                case StreamArchive():
                    for part, _ in archive_parts(side.index, side.history.get):
                        wire.append((other, part))

    carry_out(a, a.records.open())
    carry_out(b, b.records.open())
    while wire:
        side, data = wire.popleft()
        carry_out(side, side.records.receive(data, NOW))


def resynced(side: Side) -> list[Effect]:
    return [e for e in side.effects if isinstance(e, Resynced)]


def test_each_side_fetches_what_it_lacks_and_is_resynced_once() -> None:
    shared = [item(n) for n in range(1, 6)]
    a = Side("b", [*shared, item(10), item(11)], complete_until_ms=3_000)
    b = Side("a", [*shared, item(20)], complete_until_ms=3_000)
    run(a, b)
    assert (
        set(a.history) == set(b.history) == {i.id for i in [*shared, item(10), item(11), item(20)]}
    )
    assert resynced(a) == [Resynced("b", STARTED)]
    assert resynced(b) == [Resynced("a", STARTED)]
    # Once a session: what comes after (another item, live) does not say it again.
    later = item(30)
    record = encode_record(Msg(later.id, later.timestamp_ms, later.body))
    assert not [e for e in a.records.receive(record, NOW + 1) if isinstance(e, Resynced)]


def test_a_side_never_complete_gets_the_archive_and_is_resynced_after_it() -> None:
    old = [item(n) for n in range(1, 40)]
    fresh = Side("old", [], complete_until_ms=0)
    holder = Side("new", old, complete_until_ms=5_000)
    run(fresh, holder)
    assert set(fresh.history) == {i.id for i in old}
    assert fresh.records.archive_received == len(old)
    assert holder.effects.count(StreamArchive("new")) == 1
    # Resynced comes after every archive item is filed, not before.
    delivered = [i for i, e in enumerate(fresh.effects) if isinstance(e, Deliver)]
    assert fresh.effects.index(Resynced("old", STARTED)) > max(delivered)


def test_resync_is_not_over_while_an_item_it_asked_for_is_missing() -> None:
    a = Side("b", [item(1)], complete_until_ms=500)
    b = Side("a", [item(1)], complete_until_ms=500, lost=(item(2),))
    run(a, b)  # a asks for item 2 with WANT, and b has nothing to answer with
    assert resynced(a) == []
    assert resynced(b) == [Resynced("a", STARTED)]
    # The item then arrives live: filing it is what ends the re-sync.
    pushed = item(2)
    effects = a.records.receive(
        encode_record(Msg(pushed.id, pushed.timestamp_ms, pushed.body)), NOW
    )
    assert effects[-1] == Resynced("b", STARTED)


def test_pings_ask_nothing_listings_go_to_the_device_and_garbage_is_reported() -> None:
    side = Side("b", [], complete_until_ms=1)
    assert side.records.receive(encode_record(Ping()), NOW) == []
    relay = make_contact(KeyPair.from_seed(b"\x01" * 32), "mem:relay1", 0)
    listing = Relays(NOW, (relay,))
    assert side.records.receive(encode_record(listing), NOW) == [ListingFrom("b", listing)]
    (error,) = side.records.receive(b"\xff not a record", NOW)
    assert isinstance(error, PeerError) and error.sibling == "b"
    # ... and the session goes on.
    assert side.records.receive(encode_record(Ping()), NOW) == []
