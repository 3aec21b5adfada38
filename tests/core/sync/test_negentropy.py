"""Negentropy V1 in pure Python: both roles against each other, exact differences found,
frame limits honoured, and hostile bytes refused with NegentropyError only."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2psync.sync.negentropy import (
    INFINITY_TIMESTAMP,
    Negentropy,
    NegentropyError,
    StorageVector,
    encode_varint,
)

Item = tuple[int, bytes]

HYPOTHESIS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def make_storage(items: Iterable[Item]) -> StorageVector:
    storage = StorageVector()
    for timestamp, id in items:
        storage.insert(timestamp, id)
    storage.seal()
    return storage


@dataclass
class SyncResult:
    have: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        return len(self.messages) // 2

    @property
    def total_bytes(self) -> int:
        return sum(map(len, self.messages))


def run_sync(
    ours: Sequence[Item], theirs: Sequence[Item], frame_size_limit: int = 0, max_rounds: int = 5000
) -> SyncResult:
    initiator = Negentropy(make_storage(ours), frame_size_limit)
    responder = Negentropy(make_storage(theirs), frame_size_limit)
    result = SyncResult()
    msg: bytes | None = initiator.initiate()
    while msg is not None:
        assert len(result.messages) < 2 * max_rounds, "reconciliation does not terminate"
        result.messages.append(msg)
        reply = responder.respond(msg)
        result.messages.append(reply)
        msg, have, need = initiator.process_reply(reply)
        result.have += have
        result.need += need
    return result


def check_sync(
    ours: Sequence[Item], theirs: Sequence[Item], frame_size_limit: int = 0
) -> SyncResult:
    """Run both directions and assert the exact set differences come out, once each."""
    for a, b in ((ours, theirs), (theirs, ours)):
        result = run_sync(a, b, frame_size_limit)
        a_ids = {id for _, id in a}
        b_ids = {id for _, id in b}
        assert sorted(result.have) == sorted(a_ids - b_ids)
        assert sorted(result.need) == sorted(b_ids - a_ids)
        if frame_size_limit:
            assert max(map(len, result.messages)) <= frame_size_limit
    return run_sync(ours, theirs, frame_size_limit)


def random_items(rng: random.Random, n: int, start: int = 1_700_000_000_000) -> list[Item]:
    items = []
    timestamp = start
    for _ in range(n):
        timestamp += rng.randint(0, 3)  # equal timestamps exercise id-prefix bounds
        items.append((timestamp, rng.randbytes(32)))
    return items


def drop(items: Sequence[Item], indexes: Iterable[int]) -> list[Item]:
    dropped = set(indexes)
    return [item for i, item in enumerate(items) if i not in dropped]


# --- encoding details -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8100"),
        (16383, "ff7f"),
        (16384, "818000"),
        (2**64 - 1, "81ffffffffffffffff7f"),
    ],
)
def test_varint_encoding(n: int, encoded: str) -> None:
    assert encode_varint(n).hex() == encoded


def test_fingerprint_is_truncated_sha256_of_sum_and_count() -> None:
    ids = [bytes([255] * 32), bytes([1] + [0] * 31), bytes(range(32))]
    storage = make_storage((i, id) for i, id in enumerate(ids))
    total = sum(int.from_bytes(id, "little") for id in ids) % 2**256
    expected = hashlib.sha256(total.to_bytes(32, "little") + b"\x03").digest()[:16]
    assert storage.fingerprint(0, 3) == expected
    empty = hashlib.sha256(bytes(32) + b"\x00").digest()[:16]
    assert storage.fingerprint(1, 1) == empty


def test_initiate_empty_set() -> None:
    # version, bound (infinity, empty prefix), IdList mode, zero ids
    assert Negentropy(make_storage([])).initiate() == bytes.fromhex("6100000200")


def test_initiate_small_set_is_an_id_list() -> None:
    items = [(5, bytes([2]) * 32), (3, bytes([1]) * 32)]
    msg = Negentropy(make_storage(items)).initiate()
    assert msg == bytes.fromhex("6100000202") + bytes([1]) * 32 + bytes([2]) * 32


def test_initiate_large_set_has_sixteen_fingerprints_with_minimal_bounds() -> None:
    # 32 items, all at timestamp 7; ids differ from the 3rd byte on, so bounds carry 3 bytes
    items = [(7, bytes([0, 0, i]) + bytes(29)) for i in range(32)]
    msg = Negentropy(make_storage(items)).initiate()
    first = bytes.fromhex("61080300000201")  # delta 7+1, 3-byte prefix, mode 1
    assert msg.startswith(first)
    second = len(first) + 16
    assert msg[second : second + 5] == bytes.fromhex("0103000004")  # delta 0 (+1)
    assert msg[-19:-16] == bytes.fromhex("000001")  # the last bound is infinity
    assert len(msg) == 1 + 15 * (1 + 1 + 3 + 1 + 16) + (1 + 1 + 1 + 16)


# --- local usage errors (not NegentropyError) -------------------------------------------------


def test_storage_usage_errors() -> None:
    storage = StorageVector()
    with pytest.raises(ValueError, match="32 bytes"):
        storage.insert(1, b"short")
    with pytest.raises(ValueError, match="range"):
        storage.insert(INFINITY_TIMESTAMP, bytes(32))
    with pytest.raises(ValueError, match="range"):
        storage.insert(-1, bytes(32))
    with pytest.raises(RuntimeError, match="not sealed"):
        len(storage)
    storage.insert(1, bytes(32))
    storage.seal()
    with pytest.raises(RuntimeError, match="sealed"):
        storage.insert(2, bytes(32))
    with pytest.raises(RuntimeError, match="sealed"):
        storage.seal()

    duplicated = StorageVector()
    duplicated.insert(1, bytes(32))
    duplicated.insert(1, bytes(32))
    with pytest.raises(ValueError, match="duplicate") as info:
        duplicated.seal()
    assert not isinstance(info.value, NegentropyError)


def test_negentropy_usage_errors() -> None:
    with pytest.raises(ValueError, match="frame_size_limit"):
        Negentropy(make_storage([]), frame_size_limit=4095)
    Negentropy(make_storage([]), frame_size_limit=4096)

    unsealed = Negentropy(StorageVector())
    with pytest.raises(RuntimeError, match="not sealed"):
        unsealed.initiate()

    initiator = Negentropy(make_storage([]))
    initiator.initiate()
    with pytest.raises(RuntimeError):
        initiator.initiate()
    with pytest.raises(RuntimeError):
        initiator.respond(b"\x61")

    responder = Negentropy(make_storage([]))
    responder.respond(b"\x61")
    with pytest.raises(RuntimeError):
        responder.initiate()
    with pytest.raises(RuntimeError):
        responder.process_reply(b"\x61")


def test_reconcile_dispatches_on_role() -> None:
    items = random_items(random.Random(3), 100)
    initiator = Negentropy(make_storage(items[:60]))
    responder = Negentropy(make_storage(items[40:]))
    reply = responder.reconcile(initiator.initiate())
    assert isinstance(reply, bytes)
    step = initiator.reconcile(reply)
    assert isinstance(step, tuple) and len(step) == 3


# --- Python <-> Python --------------------------------------------------------------------------

SCENARIOS = ["identical", "disjoint", "gap", "scattered", "ours-empty", "theirs-empty", "mixed"]


def scenario(name: str, n: int, seed: int) -> tuple[list[Item], list[Item]]:
    rng = random.Random(seed)
    items = random_items(rng, n)
    if name == "identical":
        return items, list(items)
    if name == "disjoint":
        return items, random_items(rng, n)
    if name == "gap":
        start = rng.randrange(max(n, 1))
        return items, drop(items, range(start, start + max(n // 10, 1)))
    if name == "scattered":
        return items, drop(items, rng.sample(range(n), n // 20))
    if name == "ours-empty":
        return [], items
    if name == "theirs-empty":
        return items, []
    ours = drop(items, rng.sample(range(n), n // 10))
    theirs = drop(items, rng.sample(range(n), n // 10)) + random_items(rng, n // 10)
    return ours, theirs


@pytest.mark.parametrize("frame_size_limit", [0, 4096])
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 500, 5000])
@pytest.mark.parametrize("name", SCENARIOS)
def test_fixed_seed_scenarios(name: str, n: int, frame_size_limit: int) -> None:
    ours, theirs = scenario(name, n, seed=n * 7 + len(name))
    check_sync(ours, theirs, frame_size_limit)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 1000, 20_000])
def test_identical_sets_take_one_round_trip(n: int) -> None:
    items = random_items(random.Random(n), n)
    result = check_sync(items, items, frame_size_limit=4096)
    assert result.round_trips == 1
    assert result.have == result.need == []


def test_full_64_bit_timestamps() -> None:
    rng = random.Random(64)
    timestamps = [0, 1, 2**32 - 1, 2**32, 2**63, INFINITY_TIMESTAMP - 2, INFINITY_TIMESTAMP - 1]
    timestamps += [rng.randrange(INFINITY_TIMESTAMP) for _ in range(3000)]
    items = [(t, rng.randbytes(32)) for t in timestamps]
    items += [(INFINITY_TIMESTAMP - 1, rng.randbytes(32)) for _ in range(40)]
    for limit in (0, 4096):
        check_sync(items, drop(items, range(0, len(items), 7)), limit)
        check_sync(items, drop(items, range(len(items) - 50, len(items))), limit)


def test_equal_timestamps_and_shared_prefixes() -> None:
    rng = random.Random(5)
    items = [(42, bytes(20) + rng.randbytes(12)) for _ in range(3000)]
    items += [(42, bytes(31) + bytes([i])) for i in range(1, 200)]
    items = list(dict.fromkeys(items))
    for limit in (0, 4096):
        check_sync(items, drop(items, rng.sample(range(len(items)), 100)), limit)


@st.composite
def item_sets(draw: st.DrawFn) -> tuple[list[Item], list[Item]]:
    """Two overlapping sets; timestamps and id prefixes collide often to stress the bounds."""
    wide = draw(st.booleans())
    timestamps = st.integers(0, INFINITY_TIMESTAMP - 1) if wide else st.integers(0, 6)
    prefix = draw(st.binary(min_size=0, max_size=31))
    ids = st.binary(min_size=32 - len(prefix), max_size=32 - len(prefix)).map(
        lambda tail: prefix + tail
    )
    items = draw(st.lists(st.tuples(timestamps, ids), max_size=300, unique_by=lambda i: i[1]))
    where = st.sampled_from(["ours", "theirs", "both", "both"])
    placement = draw(st.lists(where, min_size=len(items), max_size=len(items)))
    ours = [item for item, at in zip(items, placement, strict=True) if at != "theirs"]
    theirs = [item for item, at in zip(items, placement, strict=True) if at != "ours"]
    return ours, theirs


@HYPOTHESIS
@given(sets=item_sets(), limited=st.booleans())
def test_hypothesis_sets(sets: tuple[list[Item], list[Item]], limited: bool) -> None:
    ours, theirs = sets
    check_sync(ours, theirs, 4096 if limited else 0)


@HYPOTHESIS
@given(
    n=st.integers(0, 3000),
    seed=st.integers(0, 2**32),
    gap_start=st.floats(0, 1),
    gap=st.integers(0, 400),
    scattered=st.integers(0, 50),
    limited=st.booleans(),
)
def test_hypothesis_gaps(
    n: int, seed: int, gap_start: float, gap: int, scattered: int, limited: bool
) -> None:
    rng = random.Random(seed)
    items = random_items(rng, n)
    start = int(gap_start * n)
    missing = set(range(start, start + gap)) | set(rng.sample(range(n), min(scattered, n)))
    check_sync(items, drop(items, missing), 4096 if limited else 0)


@pytest.mark.slow
@pytest.mark.parametrize("frame_size_limit", [0, 4096])
def test_100k_items(frame_size_limit: int) -> None:
    rng = random.Random(100_000)
    items = random_items(rng, 100_000)
    in_sync = run_sync(items, items, frame_size_limit)
    assert in_sync.round_trips == 1 and in_sync.have == in_sync.need == []
    assert in_sync.total_bytes <= 400

    ours = drop(items, rng.sample(range(len(items)), 300))
    theirs = drop(items, range(50_000, 50_500)) + random_items(rng, 200)
    result = run_sync(ours, theirs, frame_size_limit)
    our_ids = {id for _, id in ours}
    their_ids = {id for _, id in theirs}
    assert sorted(result.have) == sorted(our_ids - their_ids)
    assert sorted(result.need) == sorted(their_ids - our_ids)
    if frame_size_limit:
        assert max(map(len, result.messages)) <= frame_size_limit


@pytest.mark.slow
def test_100k_against_empty_with_frame_limit() -> None:
    items = random_items(random.Random(7), 100_000)
    for ours, theirs in (([], items), (items, [])):
        result = run_sync(ours, theirs, 4096)
        assert len(result.have) == len(ours) and len(result.need) == len(theirs)
        assert max(map(len, result.messages)) <= 4096


# --- protocol version ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0x60, 0x62, 0x6F])
def test_responder_answers_other_versions_with_its_own(version: int) -> None:
    responder = Negentropy(make_storage(random_items(random.Random(1), 50)))
    assert responder.respond(bytes([version]) + b"garbage") == b"\x61"


@pytest.mark.parametrize("version", [0x60, 0x62, 0x6F])
def test_initiator_refuses_other_versions(version: int) -> None:
    initiator = Negentropy(make_storage([]))
    initiator.initiate()
    with pytest.raises(NegentropyError, match="version"):
        initiator.process_reply(bytes([version]))


@pytest.mark.parametrize("version", [0x00, 0x5F, 0x70, 0xFF])
def test_invalid_version_bytes_are_refused_by_both_roles(version: int) -> None:
    for peer in peers():
        with pytest.raises(NegentropyError, match="version"):
            peer.reconcile(bytes([version]))


# --- hostile input ------------------------------------------------------------------------------


def peers() -> list[Negentropy]:
    """Fresh responders (with and without a frame limit) and a fresh, already initiated
    initiator, over the same 200 items."""
    storage = make_storage(random_items(random.Random(99), 200))
    initiator = Negentropy(storage, frame_size_limit=4096)
    initiator.initiate()
    return [Negentropy(storage), Negentropy(storage, frame_size_limit=4096), initiator]


INFINITY_ID_LIST = "000002"


@pytest.mark.parametrize(
    ("hex_msg", "match"),
    [
        ("", "empty"),
        ("6180", "varint"),
        ("6180000000", "non-minimal"),
        ("61ffffffffffffffffff7f0000", "64 bits"),
        ("61000003", "mode"),
        ("61000001" + "00" * 15, "fingerprint"),
        ("61" + INFINITY_ID_LIST + "02" + "00" * 63, "id list"),
        ("61" + INFINITY_ID_LIST + "ffffffff0f", "id list"),
        ("610021" + "00" * 33 + "00", "prefix"),
        ("6100050000", "bound"),
        ("610501ff00010000", "out of order"),
        ("610502ffff000101fe00", "out of order"),
        ("6105000000", "varint"),
        ("61" + INFINITY_ID_LIST + "00" + "ab", "varint"),
    ],
)
def test_malformed_messages(hex_msg: str, match: str) -> None:
    for peer in peers():
        with pytest.raises(NegentropyError, match=match):
            peer.reconcile(bytes.fromhex(hex_msg))


def reconcile_or_refuse(peer: Negentropy, msg: bytes) -> None:
    with contextlib.suppress(NegentropyError):
        peer.reconcile(msg)


@HYPOTHESIS
@given(msg=st.binary(max_size=400))
def test_random_bytes(msg: bytes) -> None:
    for peer in peers():
        reconcile_or_refuse(peer, msg)


@HYPOTHESIS
@given(msg=st.binary(max_size=200).map(lambda tail: b"\x61" + tail))
def test_random_bytes_after_valid_version(msg: bytes) -> None:
    for peer in peers():
        reconcile_or_refuse(peer, msg)


def valid_messages() -> list[bytes]:
    rng = random.Random(2024)
    items = random_items(rng, 2000)
    result = run_sync(items, drop(items, rng.sample(range(2000), 40)), frame_size_limit=4096)
    small = run_sync(items[:20], items[10:30])
    return result.messages[:6] + small.messages


VALID_MESSAGES = valid_messages()


@HYPOTHESIS
@given(
    index=st.integers(0, len(VALID_MESSAGES) - 1),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "delete"]),
            st.floats(0, 1),
            st.binary(max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_valid_messages(index: int, edits: list[tuple[str, float, bytes]]) -> None:
    msg = bytearray(VALID_MESSAGES[index])
    for kind, where, data in edits:
        at = int(where * len(msg))
        if kind == "flip" and at < len(msg):
            msg[at] ^= data[0] if data else 0xFF
        elif kind == "cut":
            del msg[at:]
        elif kind == "insert":
            msg[at:at] = data
        elif kind == "delete":
            del msg[at : at + len(data) + 1]
    for peer in peers():
        reconcile_or_refuse(peer, bytes(msg))


def test_frame_limit_break_fingerprints_exactly_what_follows_the_last_bound() -> None:
    """A responder that runs out of room on a fingerprint mismatch must hand that whole range
    back; the references fingerprint only what lies after it, and here (the initiator has no
    items past its last bound) that would match and hide the responder's 1880 items."""
    rng = random.Random(11)
    theirs = [(t, rng.randbytes(32)) for t in range(1, 2001)]
    ours = theirs[:120]
    msg = bytearray(b"\x61")
    for delta in (31, 30, 30, 30):  # four empty IdLists at ts 31, 61, 91, 121: 30 items each
        msg += encode_varint(delta + 1) + b"\x00" + b"\x02" + b"\x00"
    msg += b"\x00\x00\x01" + make_storage([]).fingerprint(0, 0)  # "I have nothing after"
    responder = Negentropy(make_storage(theirs), frame_size_limit=4096)
    reply = responder.respond(bytes(msg))
    assert reply.endswith(b"\x00\x00\x01" + responder.storage.fingerprint(120, 2000))
    assert len(reply) <= 4096

    initiator = Negentropy(make_storage(ours), frame_size_limit=4096)
    initiator.initiate()
    need: list[bytes] = []
    next_msg, have, step_need = initiator.process_reply(reply)
    need += step_need
    while next_msg is not None:
        next_msg, step_have, step_need = initiator.process_reply(responder.respond(next_msg))
        have += step_have
        need += step_need
    assert have == [] and sorted(need) == sorted(id for _, id in theirs[120:])
