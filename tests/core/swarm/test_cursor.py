"""A reader's place in a stream: duplicates dropped by hash, and the rewind on another
node, decided from the lived times the reader passes in."""

from __future__ import annotations

from p2psync.swarm.cursor import DEAD_CURSOR_MS, REWIND_S, SEEN_HASHES, Cursor
from p2psync.swarm.messages import Message


def _message(index: int) -> Message:
    return Message(index.to_bytes(32, "big"), index, index + 1, b"m%d" % index)


def test_a_message_seen_before_is_not_fresh_again_and_the_cursor_moves_past_it() -> None:
    cursor = Cursor()
    first = [_message(i) for i in range(3)]
    assert cursor.fresh(first, lived_s=0.0) == first
    assert cursor.fresh([first[1], _message(3)], lived_s=1.0) == [_message(3)]
    assert cursor.last_hash == _message(3).hash


def _rewound(cursor: Cursor) -> tuple[bytes | None, int | None]:
    cursor.for_new_node()
    return cursor.last_hash, cursor.last_expiry_ms


def test_another_node_is_asked_from_the_newest_hash_read_a_rewind_before_the_latest() -> None:
    cursor = Cursor()
    cursor.fresh([_message(0)], lived_s=0.0)
    cursor.fresh([_message(1)], lived_s=10.0)
    cursor.fresh([_message(2)], lived_s=REWIND_S + 5.0)
    # Read REWIND_S or more before the latest: message 0 (at 0 s), not 1 (at 10 s).
    assert _rewound(cursor) == (_message(0).hash, _message(0).expiry_ms)
    cursor.fresh([_message(3)], lived_s=REWIND_S + 10.0)
    assert _rewound(cursor) == (_message(1).hash, _message(1).expiry_ms)


def test_without_a_read_that_old_the_rewind_goes_to_the_oldest_remembered() -> None:
    assert _rewound(Cursor()) == (None, None)
    # A cursor read back from a device's store, with nothing read since: where it was.
    assert _rewound(Cursor(last_hash=_message(9).hash, last_expiry_ms=10)) == (
        _message(9).hash,
        10,
    )
    cursor = Cursor()
    cursor.fresh([_message(0), _message(1)], lived_s=5.0)
    assert _rewound(cursor) == (_message(0).hash, _message(0).expiry_ms)


def test_a_cursor_whose_message_expired_well_before_is_not_sent() -> None:
    """No member holds a message expired long enough ago: asking after it would only make
    the node ask its peers in vain before it reads from the start. One a node may still
    hold (its sweep not come yet, or the clocks apart) is sent."""
    cursor = Cursor()
    cursor.fresh([_message(5)], lived_s=0.0)  # expires at 6
    assert cursor.at(now_ms=6 + DEAD_CURSOR_MS - 1) == _message(5).hash
    assert cursor.at(now_ms=6 + DEAD_CURSOR_MS) is None
    # One kept before expiries were is sent as it is.
    assert Cursor(last_hash=b"x" * 32).at(now_ms=10**12) == b"x" * 32


def test_the_hashes_remembered_are_capped() -> None:
    cursor = Cursor()
    cursor.fresh([_message(i) for i in range(SEEN_HASHES + 1)], lived_s=0.0)
    # The oldest fell out, so it counts as fresh again; the newest are still known.
    assert cursor.fresh([_message(0), _message(SEEN_HASHES)], lived_s=1.0) == [_message(0)]
