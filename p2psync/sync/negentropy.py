"""Negentropy set reconciliation, protocol V1, sans-I/O.

Two devices each hold a set of ``(timestamp, id)`` items and want to learn which ids the other
side lacks, exchanging a few small messages instead of their whole histories. This module is a
pure-Python port of the V1 wire protocol (``docs/negentropy-protocol-v1.md`` in
hoytech/negentropy), byte-compatible with the C++ reference and with nostr-tools' ``nip77``,
so a device can be tested against (and talk to) the reference peers.

The object never touches a socket: ``initiate()`` and ``reconcile()`` turn bytes into bytes.
The caller moves messages between the peers and bounds the number of rounds.

Wire format (all integers are big-endian base-128 varints, minimal length)::

    Message := 0x61 Range*
    Range   := Bound mode payload       mode: 0 Skip, 1 Fingerprint (16 bytes),
                                              2 IdList (count, count x 32-byte ids)
    Bound   := varint(0 for infinity, else 1 + timestamp delta) varint(len) id-prefix[len]

Behaviour taken from the C++ reference where the spec is silent:

* A responder that receives a version byte in ``0x60..0x6F`` other than ``0x61`` replies with
  the single byte ``0x61`` (the highest version it speaks) so that the initiator can
  downgrade; an initiator receiving such a byte raises :class:`NegentropyError`.
* The responder answers an IdList with all of its own ids in that range; only the initiator
  computes have/need ids.
* With a frame size limit, a message stops growing 200 bytes before the limit and ends with a
  fingerprint of everything not yet covered, so the peer picks up from there next round.
* A decoded timestamp that would pass ``2**64 - 1`` saturates to infinity.

One deliberate difference from the references, invisible to a peer: when the range that does
not fit is a fingerprint mismatch, the references drop its split but fingerprint only the items
*after* it, while the peer reads the final range as starting at the last bound sent. That
costs extra rounds and, in a corner case, hides differences for good (the peer's items in the
dropped range when the sender has none there and nothing after it, as when a device lacking
the tail of the history sent its own truncated message). Here the pending Skip is written out
and the final fingerprint starts at the dropped range, so it covers exactly the range the peer
decodes.

Under a frame limit a responder that truncates its reply also forgets the ranges the initiator
had already settled, so the same ids can come back in a later round (with any implementation);
the initiator reports each id at most once per session.

Decoding is stricter than the references (they silently wrap, truncate or stop reading): the
whole message is validated before any of it is used, and non-minimal or over-64-bit varints,
unknown modes, truncated payloads or trailing bytes, id prefixes longer than 32 bytes and
bounds that go backwards all raise :class:`NegentropyError`.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from itertools import accumulate, pairwise
from typing import TypeAlias

from ..errors import DecodeError

__all__ = [
    "FINGERPRINT_SIZE",
    "ID_SIZE",
    "INFINITY_TIMESTAMP",
    "MIN_FRAME_SIZE_LIMIT",
    "PROTOCOL_VERSION",
    "Negentropy",
    "NegentropyError",
    "ReconcileStep",
    "StorageVector",
    "encode_varint",
]

PROTOCOL_VERSION = 0x61
ID_SIZE = 32
FINGERPRINT_SIZE = 16
#: Reserved by the protocol as the "infinity" bound; items may not use it.
INFINITY_TIMESTAMP = 2**64 - 1
MIN_FRAME_SIZE_LIMIT = 4096

_FRAME_MARGIN = 200
_BUCKETS = 16
_MODE_SKIP = 0
_MODE_FINGERPRINT = 1
_MODE_ID_LIST = 2
_MASK_256 = 2**256 - 1
_MAX_U64 = 2**64 - 1
_ZERO_ID = bytes(ID_SIZE)
_SMALL_VARINTS = [bytes((i,)) for i in range(128)]

#: ``(next message or None when done, ids only we have, ids only the peer has)``.
ReconcileStep: TypeAlias = tuple[bytes | None, list[bytes], list[bytes]]


class NegentropyError(DecodeError):
    """The peer sent a message that is not valid Negentropy V1 (or speaks another version).

    Raised for every malformed input and nothing else; local misuse of the API raises
    ``RuntimeError``/``ValueError``/``TypeError`` instead.
    """


def encode_varint(n: int) -> bytes:
    """Minimal big-endian base-128 encoding, high bit set on every byte but the last."""
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray((n & 0x7F,))
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.reverse()
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise NegentropyError("message ends inside a varint")
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    if byte == 0x80:
        raise NegentropyError("non-minimal varint")
    value = byte & 0x7F
    pos += 1
    end = len(buf)
    while True:
        if pos >= end:
            raise NegentropyError("message ends inside a varint")
        byte = buf[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if value > _MAX_U64:
            raise NegentropyError("varint does not fit in 64 bits")
        if byte < 0x80:
            return value, pos


def _fingerprint(id_sum: int, count: int) -> bytes:
    digest = hashlib.sha256((id_sum & _MASK_256).to_bytes(32, "little") + encode_varint(count))
    return digest.digest()[:FINGERPRINT_SIZE]


#: ``(timestamp, id prefix, sort key, mode, payload)``; the payload is ``[fingerprint]``
#: for Fingerprint, the ids for IdList, empty for Skip.
_Range: TypeAlias = tuple[int, bytes, bytes, int, list[bytes]]


def decode_ranges(msg: bytes) -> list[_Range]:
    """Every range of a V1 message after its version byte, all validated before any is used,
    so a bad tail is refused even when a frame limit would stop processing before it."""
    ranges: list[_Range] = []
    end = len(msg)
    pos = 1
    last_ts = 0
    prev_key = bytes(8 + ID_SIZE)
    while pos < end:
        raw, pos = _read_varint(msg, pos)
        ts = INFINITY_TIMESTAMP if raw == 0 else min(last_ts + raw - 1, INFINITY_TIMESTAMP)
        last_ts = ts
        prefix_len, pos = _read_varint(msg, pos)
        if prefix_len > ID_SIZE:
            raise NegentropyError("bound id prefix longer than 32 bytes")
        if pos + prefix_len > end:
            raise NegentropyError("message ends inside a bound")
        prefix = msg[pos : pos + prefix_len]
        pos += prefix_len
        key = ts.to_bytes(8, "big") + prefix + _ZERO_ID[prefix_len:]
        if key < prev_key:
            raise NegentropyError("range bounds out of order")
        prev_key = key
        mode, pos = _read_varint(msg, pos)
        if mode == _MODE_SKIP:
            payload: list[bytes] = []
        elif mode == _MODE_FINGERPRINT:
            if pos + FINGERPRINT_SIZE > end:
                raise NegentropyError("message ends inside a fingerprint")
            payload = [msg[pos : pos + FINGERPRINT_SIZE]]
            pos += FINGERPRINT_SIZE
        elif mode == _MODE_ID_LIST:
            count, pos = _read_varint(msg, pos)
            if count * ID_SIZE > end - pos:
                raise NegentropyError("id list longer than the message")
            stop = pos + count * ID_SIZE
            payload = [msg[p : p + ID_SIZE] for p in range(pos, stop, ID_SIZE)]
            pos = stop
        else:
            raise NegentropyError(f"unknown range mode {mode}")
        ranges.append((ts, prefix, key, mode, payload))
    return ranges


class StorageVector:
    """The items one side holds, sorted once so that every range query is a bisection.

    Insert everything, then ``seal()``. Sealing sorts by ``(timestamp, id)`` and precomputes
    prefix sums of the ids (as little-endian integers), which makes the fingerprint of any
    index range O(1); that is what lets pure Python reconcile 100 000 items in well under a
    second.
    """

    def __init__(self) -> None:
        self._pending: list[bytes] | None = []
        self._keys: list[bytes] = []
        self._timestamps: list[int] = []
        self._ids: list[bytes] = []
        self._id_blob = b""
        self._sums: list[int] = [0]

    def insert(self, timestamp: int, id: bytes) -> None:
        """Add one item; ``id`` must be 32 bytes and ``timestamp`` in ``0 .. 2**64 - 2``."""
        if self._pending is None:
            raise RuntimeError("storage already sealed")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise TypeError("timestamp must be an int")
        if not 0 <= timestamp < INFINITY_TIMESTAMP:
            raise ValueError("timestamp out of range 0 .. 2**64 - 2")
        if not isinstance(id, bytes | bytearray | memoryview):
            raise TypeError("id must be bytes")
        if len(id) != ID_SIZE:
            raise ValueError(f"id must be {ID_SIZE} bytes, got {len(id)}")
        self._pending.append(timestamp.to_bytes(8, "big") + bytes(id))

    def seal(self) -> None:
        """Sort and index the items; duplicates of the same ``(timestamp, id)`` are refused."""
        if self._pending is None:
            raise RuntimeError("storage already sealed")
        keys = self._pending
        keys.sort()
        if any(prev == curr for prev, curr in pairwise(keys)):
            raise ValueError("duplicate item inserted")
        self._pending = None
        self._keys = keys
        self._timestamps = [int.from_bytes(k[:8], "big") for k in keys]
        self._ids = [k[8:] for k in keys]
        self._id_blob = b"".join(self._ids)
        self._sums = [0, *accumulate(int.from_bytes(i, "little") for i in self._ids)]

    @property
    def sealed(self) -> bool:
        return self._pending is None

    def __len__(self) -> int:
        self._check_sealed()
        return len(self._keys)

    def size(self) -> int:
        """Number of items (the reference's name for ``len``)."""
        return len(self)

    def get_item(self, index: int) -> tuple[int, bytes]:
        self._check_sealed()
        return self._timestamps[index], self._ids[index]

    def fingerprint(self, lower: int, upper: int) -> bytes:
        """Fingerprint of the items at indexes ``lower .. upper - 1``."""
        self._check_sealed()
        if not 0 <= lower <= upper <= len(self._keys):
            raise IndexError("bad range")
        return _fingerprint(self._sums[upper] - self._sums[lower], upper - lower)

    def _check_sealed(self) -> None:
        if self._pending is not None:
            raise RuntimeError("storage not sealed")


class Negentropy:
    """One side of one reconciliation.

    The initiator calls ``initiate()`` and then feeds every reply to ``reconcile()``, which
    returns ``(next_message, have_ids, need_ids)``; ``next_message`` is ``None`` once the sets
    are reconciled. ``have_ids``/``need_ids`` are what that one reply revealed (the caller
    accumulates them across rounds; no id is reported twice): ids only the initiator has, and
    ids only the responder has. The responder just calls ``reconcile()`` on each message and
    sends back the bytes. ``reconcile()`` keeps the reference's shape; ``respond()`` and
    ``process_reply()`` are the same two halves with precise return types.

    ``frame_size_limit`` (0 = unlimited, else at least 4096) bounds every message this side
    produces, at the cost of more rounds.
    """

    def __init__(self, storage: StorageVector, frame_size_limit: int = 0) -> None:
        if frame_size_limit != 0 and frame_size_limit < MIN_FRAME_SIZE_LIMIT:
            raise ValueError(f"frame_size_limit must be 0 or at least {MIN_FRAME_SIZE_LIMIT}")
        self.storage = storage
        self.frame_size_limit = frame_size_limit
        self._role: str | None = None
        self._last_timestamp_out = 0
        self._reported: set[bytes] = set()

    @property
    def is_initiator(self) -> bool:
        return self._role == "initiator"

    def initiate(self) -> bytes:
        """The first message: a sketch of the whole set (fingerprints, or ids if it is small)."""
        if self._role is not None:
            raise RuntimeError(f"already acting as {self._role}")
        self.storage._check_sealed()
        self._role = "initiator"
        self._last_timestamp_out = 0
        out = bytearray((PROTOCOL_VERSION,))
        out += self._split_range(0, len(self.storage), INFINITY_TIMESTAMP, b"")
        return bytes(out)

    def reconcile(self, msg: bytes) -> bytes | ReconcileStep:
        """Process a peer message: responder gets reply bytes, initiator a ReconcileStep."""
        if self._role == "initiator":
            return self.process_reply(msg)
        return self.respond(msg)

    def respond(self, query: bytes) -> bytes:
        """Responder side of :meth:`reconcile`, precisely typed."""
        if self._role == "initiator":
            raise RuntimeError("the initiator must use process_reply()")
        self.storage._check_sealed()
        self._role = "responder"
        return self._reconcile(bytes(query), [], [])

    def process_reply(self, reply: bytes) -> ReconcileStep:
        """Initiator side of :meth:`reconcile`, precisely typed."""
        if self._role != "initiator":
            raise RuntimeError("initiate() first")
        have: list[bytes] = []
        need: list[bytes] = []
        out = self._reconcile(bytes(reply), have, need)
        return (None if len(out) == 1 else out), have, need

    def _reconcile(self, query: bytes, have: list[bytes], need: list[bytes]) -> bytes:
        if not query:
            raise NegentropyError("empty message")
        version = query[0]
        if not 0x60 <= version <= 0x6F:
            raise NegentropyError(f"invalid protocol version byte 0x{version:02x}")
        if version != PROTOCOL_VERSION:
            if self._role == "initiator":
                raise NegentropyError(f"peer speaks unsupported protocol version 0x{version:02x}")
            return bytes((PROTOCOL_VERSION,))
        ranges = decode_ranges(query)

        storage = self.storage
        keys = storage._keys
        ids = storage._ids
        initiator = self._role == "initiator"
        storage_size = len(keys)
        encode_bound = self._encode_bound
        self._last_timestamp_out = 0

        full = bytearray((PROTOCOL_VERSION,))
        prev_ts, prev_prefix = 0, b""
        prev_index = 0
        skip = False

        for ts, prefix, key, mode, payload in ranges:
            o = bytearray()
            skip_before = skip
            last_out_before = self._last_timestamp_out
            lower = prev_index
            upper = bisect_left(keys, key, lower, storage_size)

            if mode == _MODE_SKIP:
                skip = True
            elif mode == _MODE_FINGERPRINT:
                if payload[0] != storage.fingerprint(lower, upper):
                    if skip:
                        skip = False
                        o += encode_bound(prev_ts, prev_prefix)
                        o.append(_MODE_SKIP)
                    o += self._split_range(lower, upper, ts, prefix)
                else:
                    skip = True
            elif initiator:
                ours = ids[lower:upper]
                their_set = set(payload)
                our_set = set(ours)
                reported = self._reported
                for i in ours:
                    if i not in their_set and i not in reported:
                        reported.add(i)
                        have.append(i)
                for i in payload:
                    if i not in our_set and i not in reported:
                        reported.add(i)
                        need.append(i)
                skip = True
            else:
                # The responder answers an IdList with all of its own ids in the range, cut
                # short (at a full-id bound) if the frame limit would be passed.
                if skip:
                    skip = False
                    o += encode_bound(prev_ts, prev_prefix)
                    o.append(_MODE_SKIP)
                end_ts, end_prefix = ts, prefix
                if self.frame_size_limit:
                    room = self.frame_size_limit - _FRAME_MARGIN - len(full)
                    fits = 0 if room < 0 else room // ID_SIZE + 1
                    if fits < upper - lower:
                        upper = lower + fits
                        end_ts, end_prefix = storage._timestamps[upper], ids[upper]
                o += encode_bound(end_ts, end_prefix)
                o.append(_MODE_ID_LIST)
                o += encode_varint(upper - lower)
                o += storage._id_blob[lower * ID_SIZE : upper * ID_SIZE]
                full += o
                o.clear()

            if self._exceeded(len(full) + len(o)):
                remaining_from = upper
                if o:
                    # This range's split does not fit: hand the range back inside the final
                    # fingerprint, which must cover exactly what follows the last bound sent
                    # (the references fingerprint from ``upper`` here; see the module doc).
                    self._last_timestamp_out = last_out_before
                    if skip_before:
                        full += encode_bound(prev_ts, prev_prefix)
                        full.append(_MODE_SKIP)
                    remaining_from = lower
                full += encode_bound(INFINITY_TIMESTAMP, b"")
                full.append(_MODE_FINGERPRINT)
                full += storage.fingerprint(remaining_from, storage_size)
                break
            full += o

            prev_index = upper
            prev_ts, prev_prefix = ts, prefix

        return bytes(full)

    def _exceeded(self, size: int) -> bool:
        return bool(self.frame_size_limit) and size > self.frame_size_limit - _FRAME_MARGIN

    def _split_range(self, lower: int, upper: int, upper_ts: int, upper_prefix: bytes) -> bytes:
        """Describe ``lower .. upper - 1``: its ids if few, else 16 bucket fingerprints."""
        storage = self.storage
        count = upper - lower
        if count < 2 * _BUCKETS:
            return b"".join(
                (
                    self._encode_bound(upper_ts, upper_prefix),
                    _SMALL_VARINTS[_MODE_ID_LIST],
                    encode_varint(count),
                    storage._id_blob[lower * ID_SIZE : upper * ID_SIZE],
                )
            )
        per_bucket, with_extra = divmod(count, _BUCKETS)
        timestamps = storage._timestamps
        ids = storage._ids
        parts: list[bytes] = []
        curr = lower
        for i in range(_BUCKETS):
            size = per_bucket + (1 if i < with_extra else 0)
            fingerprint = storage.fingerprint(curr, curr + size)
            curr += size
            if curr == upper:
                bound_ts, bound_prefix = upper_ts, upper_prefix
            else:
                bound_ts = timestamps[curr]
                if bound_ts != timestamps[curr - 1]:
                    bound_prefix = b""
                else:
                    # Shortest prefix of the next id that still sorts above the previous one.
                    diff = int.from_bytes(ids[curr], "big") ^ int.from_bytes(ids[curr - 1], "big")
                    shared = (ID_SIZE * 8 - diff.bit_length()) // 8
                    bound_prefix = ids[curr][: shared + 1]
            parts.append(self._encode_bound(bound_ts, bound_prefix))
            parts.append(_SMALL_VARINTS[_MODE_FINGERPRINT])
            parts.append(fingerprint)
        return b"".join(parts)

    def _encode_bound(self, timestamp: int, prefix: bytes) -> bytes:
        if timestamp == INFINITY_TIMESTAMP:
            self._last_timestamp_out = INFINITY_TIMESTAMP
            encoded_ts = _SMALL_VARINTS[0]
        else:
            delta = (timestamp - self._last_timestamp_out) & INFINITY_TIMESTAMP
            self._last_timestamp_out = timestamp
            encoded_ts = encode_varint(delta + 1)
        return encoded_ts + _SMALL_VARINTS[len(prefix)] + prefix
