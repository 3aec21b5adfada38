"""The live-sync driver wakes its clock and its waiters for records that change what
live sync waits on but ask nothing at once (an offer of a message this device holds, an
acknowledgement that leaves another sibling owed), and sends keep-alives when the rule
says, against stand-in sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import trio
import trio.testing

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.sync.live import DEFAULT_ACK_DELAY_MS, Item
from p2psync.sync.presence import LISTENER_SLACK
from p2psync.sync.records import Ack, Offer, Ping, Record, decode_record, encode_record
from p2psync.sync.syncer import SiblingSync

MESSAGE = b"\x01" * 32


class _Handler:
    """A device with no history."""

    def history_index(self, since_ms: int) -> list[tuple[int, bytes]]:
        return []

    def history_item(self, message_id: bytes) -> Item | None:
        return None

    def complete_until(self) -> int:
        return 1

    def resynced(self, sibling: str, started_ms: int) -> None:
        pass

    def file_from_sibling(self, sibling: str, item: Item) -> None:
        pass

    def fall_back(self, item: Item, siblings: tuple[str, ...]) -> bool:
        return True

    def covered_by_sibling(self, message_id: bytes) -> None:
        pass

    def acknowledged(self, message_id: bytes, fell_back: bool) -> None:
        pass

    def reject_from_sibling(self, sibling: str, reason: str) -> None:
        pass

    def entry_listing(self) -> None:
        return None

    def learn_entry_listing(self, listing: object) -> bool:
        return False


class _Session:
    """Sends ``records`` ``gap_s`` apart, then stays open; keeps what is sent to it."""

    def __init__(self, records: Sequence[Record], gap_s: float = 0.1) -> None:
        self._records = records
        self._gap_s = gap_s
        self.sent: list[tuple[float, Record]] = []

    async def send(self, data: bytes) -> None:
        self.sent.append((trio.current_time(), decode_record(data)))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._records_then_nothing()

    async def _records_then_nothing(self) -> AsyncIterator[bytes]:
        for record in self._records:
            await trio.sleep(self._gap_s)
            yield encode_record(record)
        await trio.sleep_forever()


async def test_an_offer_of_a_message_held_here_is_acknowledged_within_the_ack_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sync = SiblingSync(
        None, b"s" * 32, {"A": b"k" * 32}, Clock(TEST_EPOCH_MS), _Handler(), has=lambda i: True
    )
    session = _Session([Offer(MESSAGE, 0, 10_000)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        nursery.start_soon(sync.carry, "A", session, None, True)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    acks = [at for at, record in session.sent if isinstance(record, Ack)]
    assert acks and acks[0] <= 0.1 + 2 * DEFAULT_ACK_DELAY_MS / 1000


KEEPALIVE_S = 120.0


async def _keepalives_sent(session: _Session, *, keeper: bool, for_s: float) -> list[float]:
    """When a sibling sync carrying ``session`` sent keep-alives, in ``for_s`` seconds."""
    sync = SiblingSync(
        None,
        b"s" * 32,
        {"A": b"k" * 32},
        Clock(TEST_EPOCH_MS),
        _Handler(),
        has=lambda i: True,
        keepalive_s=KEEPALIVE_S,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sync.run)
        nursery.start_soon(sync.carry, "A", session, None, keeper)
        await trio.sleep(for_s)
        nursery.cancel_scope.cancel()
    return [at for at, record in session.sent if isinstance(record, Ping)]


async def test_the_keeper_sends_a_keepalive_every_interval_of_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await _keepalives_sent(_Session([]), keeper=True, for_s=500) == [120, 240, 360, 480]
    # the sibling's records show it is there: none needed while they come
    busy = _Session([Ack(MESSAGE)] * 8, gap_s=KEEPALIVE_S / 2)
    assert await _keepalives_sent(busy, keeper=True, for_s=500) == []


async def test_the_listener_sends_none_while_keepalives_come_and_one_once_they_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keepers = _Session([Ping()] * 5, gap_s=KEEPALIVE_S)  # the last heard at 600 s
    sent = await _keepalives_sent(keepers, keeper=False, for_s=850)
    assert sent == [5 * KEEPALIVE_S + LISTENER_SLACK * KEEPALIVE_S]
