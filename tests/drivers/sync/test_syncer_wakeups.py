"""The live-sync driver wakes its clock and its waiters for records that change what
live sync waits on but ask nothing at once (an offer of a message this device holds, an
acknowledgement that leaves another sibling owed), against stand-in sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import trio
import trio.testing

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.sync.live import DEFAULT_ACK_DELAY_MS, Item
from p2psync.sync.records import Ack, Offer, Record, decode_record, encode_record
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
    """Sends ``records`` a moment apart, then stays open; keeps what is sent to it."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = records
        self.sent: list[tuple[float, Record]] = []

    async def send(self, data: bytes) -> None:
        self.sent.append((trio.current_time(), decode_record(data)))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._records_then_nothing()

    async def _records_then_nothing(self) -> AsyncIterator[bytes]:
        for record in self._records:
            await trio.sleep(0.1)
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
        nursery.start_soon(sync.carry, "A", session, None)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    acks = [at for at, record in session.sent if isinstance(record, Ack)]
    assert acks and acks[0] <= 0.1 + 2 * DEFAULT_ACK_DELAY_MS / 1000
