"""Hostile input against every decoder of bytes from outside (STYLE.md rule 8).

Each decoder gets generated CBOR values (tags, floats, bignums and simple values
included), random bytes, and mutations of one of its own valid encodings: bit flips,
truncation, appended or inserted bytes, and, deep inside the decoded structure, a field of
the wrong type, a field removed, a field added, a value nudged by one. The property is
always the same: the decoder returns a valid object or raises the project's own error
(:class:`~p2psync.errors.DecodeError` and its subclasses; the overlay's ``CellError``,
``ContactError``, ``IntrosetError``, ``LayerError``, ``SessionError``), never anything else,
and a mutated signed record never verifies unless it decodes to the very record that was
signed. The last two tests show the harness would catch a decoder that breaks either rule.

Everything is deterministic (``derandomize=True``) and the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from typing import Any, TypeVar
from unittest import mock

import cbor2
import nacl.bindings as sodium
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

import overlay.relay_core as relay_module
from overlay.cells import CELL_BYTES, Cell, CellError, CellKind, decode_cell, unframe_payload
from overlay.constants import (
    CELL_BODY_BYTES,
    CLOCK_SKEW_ALLOWANCE_MS,
    MAX_HOPS,
    MAX_PATH_LIFETIME_MS,
    PATH_ID_BYTES,
)
from overlay.contact import Contact, ContactError, make_contact
from overlay.dht import DhtStatus, IntrosetStore, get_request, put_request
from overlay.introset import (
    Intro,
    IntrosetError,
    open_introset,
    rendezvous_keys,
    seal_introset,
    verify_introset,
)
from overlay.keys import KeyPair
from overlay.onion import BuildRecord, HopKeys, LayerError, open_build_frame, seal_build_frames
from overlay.path import Path, Payload
from overlay.relay_core import RelayCore
from overlay.session import SessionCore, SessionError, SessionState, packet_session_id
from p2psync.clock import TEST_EPOCH_MS
from p2psync.envelope import MAX_BODY_BYTES, open_envelope, padded_size, seal_envelope
from p2psync.errors import DecodeError, RpcError
from p2psync.identity import (
    Identity,
    ed25519_to_x25519,
    message_hash,
    seal,
    session_id_key,
    verify,
)
from p2psync.mapping import (
    AuthorisationError,
    DeviceMapping,
    PairingRequest,
    Revocation,
    create_mapping,
    device_set,
    grant_pairing,
    revoke_pairing,
    sign_pairing_request,
)
from p2psync.opengroup.posts import Post, RoomMessage, sign_post
from p2psync.swarm.admission import Ledger
from p2psync.swarm.auth import (
    AuthSigner,
    ReplayGuard,
    check_client_auth,
    check_node_auth,
    sign_node_request,
)
from p2psync.swarm.constants import MAX_NAMESPACE, MAX_TTL_MS
from p2psync.swarm.listing import (
    CACHED_LISTING_MAX_AGE_MS,
    Snapshot,
    check_announcement,
    sign_announcement,
)
from p2psync.swarm.messages import RetrieveReply, message_to_wire
from p2psync.swarm.proof import OwnerProof
from p2psync.swarm.records import PEER_SKEW_MS, row_from_wire, row_to_wire
from p2psync.swarm.rows import StoredMessage
from p2psync.sync.negentropy import Negentropy, NegentropyError, StorageVector, decode_ranges
from p2psync.sync.records import Ack, Msg, Offer, Relays, Req, decode_record, encode_record
from p2psync.wire import (
    INT64_MIN,
    UINT64_MAX,
    ErrorReply,
    Fields,
    Notify,
    Reply,
    Request,
    decode_cbor,
    decode_frame,
    encode_cbor,
    encode_frame,
)

T = TypeVar("T")
NOW = TEST_EPOCH_MS

#: Deterministic, no example database, no per-example deadline (first calls warm caches).
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def refused_or_decoded(decode: Callable[[], T], *refusals: type[Exception]) -> T | None:
    """The decoded value, or None if the decoder refused with one of ``refusals`` (by
    default :class:`DecodeError`). Any other exception escapes and fails the test."""
    caught = refusals or (DecodeError,)
    try:
        result = decode()
    except caught as exc:
        event(f"refused: {type(exc).__name__}")
        return None
    event("decoded")
    return result


# --- strategies -------------------------------------------------------------------------------

#: What :func:`decode_cbor` may return: the only shapes a typed reader ever sees.
_PLAIN_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.text(max_size=24)
    | st.binary(max_size=70)
)
PLAIN = st.recursive(
    _PLAIN_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)

#: Anything CBOR can say, including what no schema of ours allows.
_HOSTILE_LEAVES = (
    _PLAIN_LEAVES
    | st.integers()
    | st.floats()
    | st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(0), cbor2.CBORSimpleValue(255)])
)
HOSTILE_CBOR = st.recursive(
    _HOSTILE_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.integers(-3, 3) | st.binary(max_size=3), inner, max_size=4
        )
        | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 24, 258, 55799, 2**64 - 1]), inner)
    ),
    max_leaves=10,
).map(cbor2.dumps)

#: Values of the wrong type (or the right type and a wrong size) for a field swap.
ODD_VALUES = (
    st.sampled_from(
        [
            None,
            True,
            0,
            1,
            -1,
            2**63,
            UINT64_MAX,
            INT64_MIN,
            "",
            "x" * 300,
            "05" + "0" * 64,
            b"",
            bytes(32),
            bytes(64),
            b"\xff" * 33,
            [],
            {},
            [bytes(32)],
            {"v": 1},
        ]
    )
    | PLAIN
)


@st.composite
def byte_mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    """One to three of: bit flip, truncation, appended, inserted, deleted or replaced bytes."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "append", "insert", "delete", "set"]))
        if op == "append" or not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def _containers(value: object) -> Iterator[dict[str, Any] | list[Any]]:
    if isinstance(value, dict | list):
        yield value
        for child in value.values() if isinstance(value, dict) else value:
            yield from _containers(child)


def _tweak(value: object, draw: st.DrawFn) -> object:
    """The same type, one step away: a flipped bit, a number ±1, a changed character."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + draw(st.sampled_from([-1, 1]))
    if isinstance(value, bytes) and value:
        at = draw(st.integers(0, len(value) - 1))
        return value[:at] + bytes((value[at] ^ (1 << draw(st.integers(0, 7))),)) + value[at + 1 :]
    if isinstance(value, str) and value:
        at = draw(st.integers(0, len(value) - 1))
        return value[:at] + ("0" if value[at] != "0" else "1") + value[at + 1 :]
    return draw(ODD_VALUES)


@st.composite
def tree_mutations(draw: st.DrawFn, shape: object) -> object:
    """``shape`` with one map or array somewhere inside it changed: a value swapped for
    one of another type or nudged, a field or item removed, or one added."""
    mutated = copy.deepcopy(shape)
    target = draw(st.sampled_from(list(_containers(mutated))))
    keys: list[Any] = list(target) if isinstance(target, dict) else list(range(len(target)))
    op = draw(st.sampled_from(["swap", "tweak", "drop", "add"]))
    if op in ("swap", "tweak", "drop") and keys:
        key = draw(st.sampled_from(keys))
        if op == "swap":
            target[key] = draw(ODD_VALUES)
        elif op == "tweak":
            target[key] = _tweak(target[key], draw)
        else:
            del target[key]
    elif isinstance(target, dict):
        target[draw(st.sampled_from([*keys, "x", "", "V"]))] = draw(ODD_VALUES)
    else:
        target.insert(draw(st.integers(0, len(target))), draw(ODD_VALUES))
    return mutated


@cache
def attacks(valid: bytes) -> st.SearchStrategy[bytes]:
    """Everything hostile a CBOR decoder gets here, around one valid encoding."""
    shape = cbor2.loads(valid)
    return st.one_of(
        st.binary(max_size=200),
        HOSTILE_CBOR,
        byte_mutations(valid),
        tree_mutations(shape).map(encode_cbor),
        tree_mutations(shape).map(cbor2.dumps),  # not canonical: key order as it comes
    )


def values_around(valid: object) -> st.SearchStrategy[object]:
    """Everything hostile a reader of already-decoded CBOR gets, around one valid value."""
    return st.one_of(PLAIN, tree_mutations(valid))


def is_plain(value: object) -> bool:
    """Only the CBOR types our schemas use: what :func:`decode_cbor` promises."""
    if value is None or isinstance(value, bool | str | bytes):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= UINT64_MAX
    if isinstance(value, list):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


# --- signed records -----------------------------------------------------------------------------


def check_signed(
    decode: Callable[[bytes], Any],
    verify_record: Callable[[Any], None],
    original: object,
    data: bytes,
    refusal: type[Exception] = AuthorisationError,
) -> None:
    """``decode`` returns a record or refuses; a record that is not ``original`` itself
    (a non-canonical re-encoding of it is) must fail ``verify_record`` with ``refusal``."""
    record = refused_or_decoded(lambda: decode(data), DecodeError, refusal)
    if record is None or record == original:
        return
    try:
        verify_record(record)
    except refusal:
        return
    raise AssertionError(f"a mutated record verifies: {record!r}")


# --- wire: CBOR, frames, typed fields --------------------------------------------------------

ALICE = Identity.from_label("fuzz-alice")
BOB = Identity.from_label("fuzz-bob")
CAROL = Identity.from_label("fuzz-carol")

_FRAMES = [
    encode_frame(Request(7, "store", {"pubkey": ALICE.session_id, "namespace": 0, "data": b"x"})),
    encode_frame(Reply(7, {"hash": bytes(32), "expiry": NOW})),
    encode_frame(ErrorReply(7, "wrong_swarm", "go there", {"nodes": [{"pubkey": "ab"}]})),
    encode_frame(ErrorReply(None, "bad_request", "what", {})),
    encode_frame(Notify("notify", {"messages": []})),
]
FRAME_ATTACKS = st.one_of(*(attacks(frame) for frame in _FRAMES))


@settings(FUZZ, max_examples=150)
@given(FRAME_ATTACKS)
def test_decode_cbor_returns_plain_values_or_refuses(data: bytes) -> None:
    try:
        value = decode_cbor(data)
    except DecodeError:
        return
    assert is_plain(value), value
    assert decode_cbor(encode_cbor(value)) == value
    with pytest.raises(DecodeError):
        decode_cbor(data + b"\x00")


@settings(FUZZ, max_examples=80)
@given(
    tag=st.integers(0, 2**64 - 1)
    | st.sampled_from([0, 1, 2, 3, 4, 5, 24, 25, 28, 29, 30, 35, 37, 256, 258, 260, 55799]),
    value=PLAIN,
)
@example(tag=2, value=b"\x01")  # a bignum holding 1: cbor2 decoded it past tag_hook
@example(tag=55799, value={})  # the self-describe tag: cbor2 dropped it silently
def test_decode_cbor_refuses_every_tag(tag: int, value: object) -> None:
    with pytest.raises(DecodeError, match="CBOR tag"):
        decode_cbor(cbor2.dumps({"a": [cbor2.CBORTag(tag, value)]}))


@settings(FUZZ, max_examples=150)
@given(FRAME_ATTACKS)
def test_decode_frame_returns_a_typed_frame_or_refuses(data: bytes) -> None:
    frame = refused_or_decoded(lambda: decode_frame(data))
    if frame is None:
        return
    match frame:
        case Request(id=rid, method=method, params=params):
            assert 0 <= rid <= UINT64_MAX
            assert isinstance(method, str) and len(method) <= 32 and isinstance(params, dict)
        case Notify(method=method, params=params):
            assert isinstance(method, str) and len(method) <= 32 and isinstance(params, dict)
        case ErrorReply(id=rid, code=code, message=message, data=extra):
            assert rid is None or 0 <= rid <= UINT64_MAX
            assert isinstance(code, str) and isinstance(message, str)
            assert "code" not in extra and "message" not in extra
        case Reply(id=rid):
            assert 0 <= rid <= UINT64_MAX
    assert decode_frame(encode_frame(frame)) == frame


def _readers() -> list[tuple[str, Callable[[Fields], object], Callable[[Any], bool]]]:
    def sized(size: int) -> Callable[[Any], bool]:
        return lambda r: isinstance(r, bytes) and len(r) == size

    return [
        ("uint", lambda f: f.uint("a", maximum=1000), lambda r: type(r) is int and 0 <= r <= 1000),
        (
            "integer",
            lambda f: f.integer("a", minimum=-5, maximum=5),
            lambda r: type(r) is int and -5 <= r <= 5,
        ),
        ("text", lambda f: f.text("a", max_len=3), lambda r: isinstance(r, str) and len(r) <= 3),
        ("blob", lambda f: f.blob("a", size=2), sized(2)),
        (
            "blob max",
            lambda f: f.blob("a", max_len=3),
            lambda r: isinstance(r, bytes) and len(r) <= 3,
        ),
        (
            "optional_blob",
            lambda f: f.optional_blob("a", size=2),
            lambda r: r is None or sized(2)(r),
        ),
        ("boolean", lambda f: f.boolean("a"), lambda r: isinstance(r, bool)),
        ("map", lambda f: f.map("a"), lambda r: isinstance(r, Fields)),
        ("items", lambda f: f.items("a", max_len=2), lambda r: isinstance(r, list) and len(r) <= 2),
        (
            "blob_list",
            lambda f: f.blob_list("a", size=1, max_len=2),
            lambda r: isinstance(r, list) and len(r) <= 2 and all(sized(1)(b) for b in r),
        ),
        ("only", lambda f: f.only("a"), lambda r: isinstance(r, Fields)),
        ("has", lambda f: f.has("a"), lambda r: isinstance(r, bool)),
        ("rest", lambda f: f.rest("a"), lambda r: isinstance(r, dict) and "a" not in r),
        ("raw", lambda f: f.raw("a"), is_plain),
    ]


@settings(FUZZ, max_examples=110)
@given(
    value=PLAIN | st.dictionaries(st.sampled_from(["a", "b"]), PLAIN, max_size=2),
    reader=st.sampled_from(_readers()),
)
def test_fields_readers_return_their_type_or_refuse(
    value: object, reader: tuple[str, Callable[[Fields], object], Callable[[Any], bool]]
) -> None:
    name, read, valid = reader
    fields = refused_or_decoded(lambda: Fields(value, "params"))
    if fields is None:
        assert not isinstance(value, dict)
        return
    result = refused_or_decoded(lambda: read(fields))
    assert result is None or valid(result), (name, result)


# --- identity and envelopes --------------------------------------------------------------------


@settings(FUZZ, max_examples=80)
@given(
    text=st.one_of(
        st.text(max_size=70),
        st.text("0123456789abcdefABCDEF \n", min_size=64, max_size=64).map(lambda t: "05" + t),
    ),
    key=st.binary(max_size=40),
    signature=st.binary(max_size=70),
)
def test_identity_helpers_never_raise_on_garbage(text: str, key: bytes, signature: bytes) -> None:
    parsed = refused_or_decoded(lambda: session_id_key(text))
    assert parsed is None or ("05" + parsed.hex() == text)
    converted = ed25519_to_x25519(key)
    assert converted is None or len(converted) == 32
    assert verify(key, b"message", signature) is False


_SEALED = seal_envelope(ALICE, BOB.x25519_public, "text", b"hello bob", NOW)
_INNER = BOB.unseal(_SEALED)
_ENVELOPE = open_envelope(BOB, _SEALED)


@settings(FUZZ, max_examples=110)
@given(
    st.one_of(
        attacks(_INNER).map(lambda inner: seal(BOB.x25519_public, inner)),
        byte_mutations(_SEALED),
        st.binary(max_size=200),
    )
)
def test_open_envelope_refuses_all_but_the_signed_envelope(data: bytes) -> None:
    envelope = refused_or_decoded(lambda: open_envelope(BOB, data))
    assert envelope is None or envelope == _ENVELOPE


def test_an_envelope_resealed_to_someone_else_does_not_open() -> None:
    with pytest.raises(DecodeError):
        open_envelope(CAROL, seal(CAROL.x25519_public, _INNER))


@given(st.integers(min_value=0, max_value=MAX_BODY_BYTES))
@settings(FUZZ, max_examples=60)
def test_envelopes_are_padded_to_a_bucket_whatever_the_body(size: int) -> None:
    """What a storage node sees is the bucket, not the length."""
    sealed = seal_envelope(ALICE, BOB.x25519_public, "text", bytes(size), NOW)
    inner = len(BOB.unseal(sealed))
    assert inner == padded_size(inner)
    assert (inner <= 2048 and inner % 256 == 0) or inner in (4096, 8192, 16384, 32768, 65536, 76752)
    assert open_envelope(BOB, sealed).body == bytes(size)


def test_a_signature_made_for_anything_else_does_not_pass_for_an_envelopes() -> None:
    """The envelope's signed text carries its own domain prefix."""
    fields = decode_cbor(_INNER)
    unprefixed = {k: v for k, v in fields.items() if k not in ("sig", "pad")}
    forged = {**fields, "sig": ALICE.sign(encode_cbor({**unprefixed, "to": BOB.x25519_public}))}
    with pytest.raises(DecodeError, match="signature"):
        open_envelope(BOB, seal(BOB.x25519_public, encode_cbor(forged)))


# --- signed records: mappings, posts, announcements ------------------------------------------

_REQUEST = sign_pairing_request(BOB, ALICE.session_id, NOW)
_MAPPING = grant_pairing(ALICE, _REQUEST)
_REVOCATION = revoke_pairing(ALICE, BOB.session_id, NOW)
_POST = sign_post(BOB, "lobby", b"hi all", NOW)
_MAPPED_POST = sign_post(BOB, "lobby", b"hi all", NOW, primary=ALICE.session_id)

_SIGNED_RECORDS = [
    pytest.param(PairingRequest.from_bytes, _REQUEST, id="pairing-request"),
    pytest.param(DeviceMapping.from_bytes, _MAPPING, id="device-mapping"),
    pytest.param(Revocation.from_bytes, _REVOCATION, id="revocation"),
    pytest.param(Post.from_bytes, _POST, id="post"),
    pytest.param(Post.from_bytes, _MAPPED_POST, id="post-with-primary"),
]


@pytest.mark.parametrize(("decode", "original"), _SIGNED_RECORDS)
@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_signed_records_decode_strictly_and_mutations_never_verify(
    decode: Callable[[bytes], Any], original: Any, data: st.DataObject
) -> None:
    original.verify()
    raw = data.draw(attacks(original.to_bytes()), label="bytes")
    check_signed(decode, lambda record: record.verify(), original, raw)


@settings(FUZZ, max_examples=50)
@given(
    queried=st.sampled_from([ALICE.session_id, BOB.session_id, CAROL.session_id, "05zz"]),
    primary=st.sampled_from([ALICE.session_id, BOB.session_id, "not an id"]),
    secondaries=st.lists(st.sampled_from([BOB.session_id, CAROL.session_id, ""]), max_size=3),
    mappings=st.lists(
        st.sampled_from(
            [_MAPPING, create_mapping(CAROL, BOB, NOW), create_mapping(ALICE, CAROL, NOW)]
        ),
        max_size=3,
    ),
    revocations=st.lists(
        st.sampled_from(
            [
                revoke_pairing(ALICE, BOB.session_id, NOW + 1),
                revoke_pairing(ALICE, BOB.session_id, NOW - 1),
                revoke_pairing(CAROL, BOB.session_id, NOW + 1),
                replace(revoke_pairing(ALICE, CAROL.session_id, NOW + 1), timestamp_ms=NOW + 2),
            ]
        ),
        max_size=3,
    ),
)
def test_device_set_trusts_no_server_answer(
    queried: str,
    primary: str,
    secondaries: list[str],
    mappings: list[DeviceMapping],
    revocations: list[Revocation],
) -> None:
    devices = refused_or_decoded(
        lambda: device_set(queried, primary, secondaries, mappings, revocations)
    )
    if devices is None:
        return
    assert all(m.primary == primary for m in devices.mappings)
    for revocation in devices.revocations:
        revocation.verify()
        assert revocation.primary == primary
    revoked = {r.secondary: r.timestamp_ms for r in devices.revocations}
    assert all(m.timestamp_ms > revoked.get(m.secondary, -1) for m in devices.mappings)
    assert queried in devices or queried in revoked


_ROOM_MESSAGE = RoomMessage(3, ALICE.session_id, BOB.session_id, NOW, b"body").to_wire()


@settings(FUZZ, max_examples=80)
@given(values_around(_ROOM_MESSAGE))
def test_room_message_from_wire(value: object) -> None:
    message = refused_or_decoded(lambda: RoomMessage.from_wire(value))
    assert message is None or RoomMessage.from_wire(message.to_wire()) == message


_ANNOUNCEMENT = sign_announcement(ALICE, "relay", "ws://127.0.0.1:9/", NOW, b"contact")


@settings(FUZZ, max_examples=90)
@given(values_around(_ANNOUNCEMENT))
def test_announcements_verify_only_as_signed(params: object) -> None:
    record = refused_or_decoded(
        lambda: check_announcement(Fields(params, "params"), NOW), DecodeError, RpcError
    )
    assert record is None or params == _ANNOUNCEMENT


_SNAPSHOT = Snapshot.from_wire(
    {
        "nodes": [{"pubkey": ALICE.ed25519_public.hex(), "url": "ws://127.0.0.1:1/"}],
        "relays": [{"pubkey": BOB.ed25519_public.hex(), "url": "tcp://h:2", "contact": b"c"}],
    }
)


@settings(FUZZ, max_examples=80)
@given(values_around(_SNAPSHOT.to_wire()))
def test_registry_snapshot_from_wire(value: object) -> None:
    snapshot = refused_or_decoded(lambda: Snapshot.from_wire(value))
    assert snapshot is None or Snapshot.from_wire(snapshot.to_wire()) == snapshot


_LEDGER = Ledger(Identity.from_label("fuzz/ledger"))
_ALICE_REGISTRATION = _LEDGER.register(ALICE.ed25519_public.hex())
_LISTING = {
    "announcements": [
        sign_announcement(
            ALICE,
            "node",
            "ws://127.0.0.1:1/",
            NOW - 1_000,
            registration=_ALICE_REGISTRATION.encode(),
        ),
        sign_announcement(CAROL, "node", "ws://127.0.0.1:3/", NOW - 1_000),  # not admitted
        sign_announcement(
            BOB,
            "relay",
            "tcp://h:2",
            NOW - 2_000,
            make_contact(KeyPair.from_seed(BOB.seed), "tcp://h:2", NOW).encode(),
            registration=_LEDGER.register(BOB.ed25519_public.hex()).encode(),
        ),
        sign_announcement(  # not admitted
            CAROL,
            "relay",
            "tcp://h:4",
            NOW - 2_000,
            make_contact(KeyPair.from_seed(CAROL.seed), "tcp://h:4", NOW).encode(),
        ),
    ]
}


@settings(FUZZ, max_examples=90)
@given(values_around(_LISTING))
def test_a_signed_listing_lists_only_what_its_announcers_signed(value: object) -> None:
    """Whatever a registry (or a node serving its copy) sends, a reader lists a node or a
    relay only at the address its own key signed and with the ledger's registration, a
    node at the position that gives, and never one announced too long ago."""
    snapshot = refused_or_decoded(
        lambda: Snapshot.from_announcements(value, NOW, ledger=_LEDGER.public_key), DecodeError
    )
    if snapshot is None:
        return
    signed = {
        (a["record"]["kind"], a["record"]["pubkey"], a["record"]["url"])
        for a in _LISTING["announcements"]
    }
    listed = {("node", n.pubkey, n.url) for n in snapshot.nodes} | {
        ("relay", r.pubkey, r.url) for r in snapshot.relays
    }
    assert listed <= signed
    assert all(
        n.pubkey == ALICE.ed25519_public.hex() and n.position == _ALICE_REGISTRATION.position
        for n in snapshot.nodes
    )
    assert all(r.pubkey == BOB.ed25519_public.hex() for r in snapshot.relays)


def test_a_listing_leaves_out_what_does_not_check_out_and_keeps_the_rest() -> None:
    snapshot = Snapshot.from_announcements(_LISTING, NOW, ledger=_LEDGER.public_key)
    assert [n.pubkey for n in snapshot.nodes] == [ALICE.ed25519_public.hex()]
    assert [r.pubkey for r in snapshot.relays] == [BOB.ed25519_public.hex()]
    other_ledger = Identity.from_label("fuzz/another-ledger").ed25519_public
    assert Snapshot.from_announcements(_LISTING, NOW, ledger=other_ledger).nodes == ()


def test_a_copy_that_differs_from_an_announcement_read_before_is_checked_again() -> None:
    """A reader remembers the announcements that checked out; a copy served later with the
    same signature and anything else changed, down to a field's type, is not one of them."""
    genuine = _LISTING["announcements"][0]
    listing = Snapshot.from_announcements(_LISTING, NOW, ledger=_LEDGER.public_key)
    assert [n.url for n in listing.nodes] == ["ws://127.0.0.1:1/"]
    changes = {
        "url": "ws://127.0.0.1:9/",
        "timestamp": float(genuine["record"]["timestamp"]),
        "kind": "relay",
        "registration": _LEDGER.register(CAROL.ed25519_public.hex()).encode(),
    }
    for name, value in changes.items():
        changed = {**genuine, "record": {**genuine["record"], name: value}}
        copy = Snapshot.from_announcements(
            {"announcements": [changed]}, NOW, ledger=_LEDGER.public_key
        )
        assert (copy.nodes, copy.relays) == ((), ()), name
    with_extra = {"announcements": [{**genuine, "note": 1}]}
    assert Snapshot.from_announcements(with_extra, NOW, ledger=_LEDGER.public_key).nodes == ()
    other_ledger = Identity.from_label("fuzz/another-ledger").ed25519_public
    assert Snapshot.from_announcements(_LISTING, NOW, ledger=other_ledger).nodes == ()
    assert Snapshot.from_announcements(_LISTING, NOW, ledger=_LEDGER.public_key) == listing


def test_a_stale_announcement_is_left_out_unless_read_from_a_cached_copy() -> None:
    old = {"announcements": [sign_announcement(ALICE, "node", "ws://127.0.0.1:1/", NOW)]}
    later = NOW + 10 * 60_000
    assert Snapshot.from_announcements(old, later, ledger=None).nodes == ()
    cached = Snapshot.from_announcements(
        old, later, ledger=None, max_age_ms=CACHED_LISTING_MAX_AGE_MS
    )
    assert [n.url for n in cached.nodes] == ["ws://127.0.0.1:1/"]


# --- swarm: auth, rows, retrieve results -------------------------------------------------------

_HASHES = (message_hash(b"one"), message_hash(b"two"))
_CLIENT_AUTH = {"auth": AuthSigner(ALICE).auth("expire", 0, NOW, _HASHES, NOW + 60_000)}
_CLIENT_CONTEXT: dict[str, Any] = {
    "method": "expire",
    "pubkey": ALICE.session_id,
    "namespace": 0,
    "hashes": _HASHES,
    "expiry_ms": NOW + 60_000,
}


@settings(FUZZ, max_examples=110)
@given(
    params=values_around(_CLIENT_AUTH),
    context=st.fixed_dictionaries(
        {},
        optional={
            "method": st.sampled_from(["delete", "retrieve", "expire "]),
            "pubkey": st.just(BOB.session_id),
            "namespace": st.integers(1, MAX_NAMESPACE),
            "hashes": st.sampled_from([_HASHES[::-1], _HASHES[:1], ()]),
            "expiry_ms": st.sampled_from([None, NOW + 60_001]),
        },
    ),
)
@example(params=_CLIENT_AUTH, context={})
def test_client_auth_passes_only_for_the_signed_request(
    params: object, context: dict[str, Any]
) -> None:
    request = {**_CLIENT_CONTEXT, **context}
    passed = refused_or_decoded(
        lambda: (
            check_client_auth(Fields(params, "params"), ReplayGuard(), now_ms=NOW, **request)
            or True
        ),
        DecodeError,
        RpcError,
    )
    if passed is not None:  # the rest of ``params`` is the handler's to check, not auth's
        assert isinstance(params, dict) and params["auth"] == _CLIENT_AUTH["auth"]
        assert request == _CLIENT_CONTEXT


_ROW = StoredMessage(ALICE.session_id, 1, message_hash(b"data"), NOW, NOW + 60_000, b"data", NOW)
_NODE_PARAMS = sign_node_request(CAROL, "replicate", {"rows": [row_to_wire(_ROW)]}, NOW)


@settings(FUZZ, max_examples=90)
@given(
    params=values_around(_NODE_PARAMS),
    method=st.sampled_from(["replicate", "replicate", "lookup"]),
)
@example(params=_NODE_PARAMS, method="replicate")
def test_node_auth_passes_only_for_the_signed_request(params: object, method: str) -> None:
    def check() -> str:
        fields = Fields(params, "params")
        return check_node_auth(fields, fields.rest(), ReplayGuard(), method=method, now_ms=NOW)

    node = refused_or_decoded(check, DecodeError, RpcError)
    if node is not None:
        assert params == _NODE_PARAMS and method == "replicate"
        assert node == CAROL.ed25519_public.hex()


_DELETE_AUTH = AuthSigner(BOB).auth("delete", 0, NOW, [bytes(32)])
_TOMBSTONE = StoredMessage(
    BOB.session_id,
    0,
    bytes(32),
    NOW,
    NOW + 1,
    None,
    NOW,
    OwnerProof(
        "delete",
        0,
        _DELETE_AUTH["timestamp"],
        (bytes(32),),
        None,
        _DELETE_AUTH["ed25519"],
        _DELETE_AUTH["signature"],
    ).encode(),
)


@settings(FUZZ, max_examples=90)
@given(st.one_of(values_around(row_to_wire(_ROW)), values_around(row_to_wire(_TOMBSTONE))))
def test_row_from_wire_checks_every_field(value: object) -> None:
    now = _ROW.timestamp_ms
    row = refused_or_decoded(lambda: row_from_wire(value, now))
    if row is None:
        return
    session_id_key(row.pubkey)
    assert 0 <= row.namespace <= MAX_NAMESPACE
    assert row.timestamp_ms <= now + PEER_SKEW_MS
    assert row.expiry_ms <= row.timestamp_ms + MAX_TTL_MS
    assert row.data is None or message_hash(row.data) == row.hash
    if row.data is None or row.proof is not None:  # destructive only on the owner's word
        assert row.proof is not None and OwnerProof.decode(row.proof).proves(row)


@settings(FUZZ, max_examples=80)
@given(
    byte_mutations(_TOMBSTONE.proof or b"")
    | values_around(decode_cbor(_TOMBSTONE.proof or b"")).map(encode_cbor)
)
def test_owner_proofs_are_decoded_strictly_and_prove_only_what_was_signed(blob: bytes) -> None:
    proof = refused_or_decoded(lambda: OwnerProof.decode(blob))
    if proof is not None and proof.proves(_TOMBSTONE):
        assert blob == _TOMBSTONE.proof


_RETRIEVED = {"messages": [message_to_wire(_ROW)], "more": True}


@settings(FUZZ, max_examples=80)
@given(values_around(_RETRIEVED))
def test_retrieve_results_from_a_node_are_checked(value: object) -> None:
    reply = refused_or_decoded(lambda: RetrieveReply.from_wire(value))
    if reply is not None:
        messages, more = list(reply.messages), reply.more
        assert isinstance(more, bool)
        assert all(message_hash(m.data) == m.hash for m in messages)


# --- sync: live records and Negentropy -------------------------------------------------------

_SYNC_RECORDS = [
    encode_record(Msg(message_hash(b"m"), NOW, b"body")),
    encode_record(Ack((message_hash(b"a"), message_hash(b"b")))),
    encode_record(Offer(message_hash(b"o"), NOW, 5000)),
    encode_record(Req((message_hash(b"r"),))),
    encode_record(Relays.read(NOW, [make_contact(KeyPair.from_seed(b"\x05" * 32), "mem:r", NOW)])),
]


@settings(FUZZ, max_examples=110)
@given(st.one_of(*(attacks(record) for record in _SYNC_RECORDS)))
def test_sync_records_decode_strictly(data: bytes) -> None:
    record = refused_or_decoded(lambda: decode_record(data))
    assert record is None or decode_record(encode_record(record)) == record


def _storage(items: range, salt: bytes) -> StorageVector:
    storage = StorageVector()
    for i in items:
        storage.insert(1_000 + 7 * i, hashlib.blake2b(salt + i.to_bytes(4, "big")).digest()[:32])
    storage.seal()
    return storage


_OURS = _storage(range(300), b"")
_THEIRS = _storage(range(40, 340), b"")
_QUERY = Negentropy(_THEIRS).initiate()
_ANSWER = Negentropy(_OURS).respond(_QUERY)
_NEGENTROPY_INPUTS = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda tail: b"\x61" + tail),
    byte_mutations(_QUERY),
    byte_mutations(_ANSWER),
)


@settings(FUZZ, max_examples=110)
@given(message=_NEGENTROPY_INPUTS, limit=st.sampled_from([0, 4096]))
def test_negentropy_responder_refuses_garbage_and_answers_in_v1(message: bytes, limit: int) -> None:
    reply = refused_or_decoded(lambda: Negentropy(_OURS, limit).reconcile(message), NegentropyError)
    if reply is not None:
        assert isinstance(reply, bytes) and reply[:1] == b"\x61"
        decode_ranges(reply)
        assert not limit or len(reply) <= limit


@settings(FUZZ, max_examples=110)
@given(message=_NEGENTROPY_INPUTS, limit=st.sampled_from([0, 4096]))
def test_negentropy_initiator_refuses_garbage(message: bytes, limit: int) -> None:
    negentropy = Negentropy(_THEIRS, limit)
    negentropy.initiate()
    step = refused_or_decoded(lambda: negentropy.reconcile(message), NegentropyError)
    if step is not None:
        assert isinstance(step, tuple)
        follow_up, have, need = step
        if follow_up is not None:
            decode_ranges(follow_up)
        assert len(set(have)) == len(have) and len(set(need)) == len(need)


# --- overlay: cells, contacts, introsets, onion layers, relays, sessions -----------------------

RELAY = KeyPair.from_seed(hashlib.blake2b(b"fuzz-relay", digest_size=32).digest())
OWNER = KeyPair.from_seed(hashlib.blake2b(b"fuzz-owner", digest_size=32).digest())
SIBLING = KeyPair.from_seed(hashlib.blake2b(b"fuzz-sibling", digest_size=32).digest())
_RELAY_CONTACT = make_contact(RELAY, "memory://relay", NOW)
_CELL = Cell(CellKind.DATA, bytes(range(16)), bytes(CELL_BODY_BYTES)).encode()


@settings(FUZZ, max_examples=90)
@given(
    st.one_of(
        st.binary(max_size=CELL_BYTES + 10),
        st.binary(min_size=CELL_BYTES, max_size=CELL_BYTES),
        byte_mutations(_CELL),
    )
)
def test_cells_decode_or_raise_cell_error(data: bytes) -> None:
    cell = refused_or_decoded(lambda: decode_cell(data), CellError)
    if cell is not None:
        assert len(cell.id) == PATH_ID_BYTES and len(cell.body) == CELL_BODY_BYTES
        assert cell.encode() == data
    payload = refused_or_decoded(lambda: unframe_payload(data), CellError)
    assert payload is None or len(payload) <= len(data) - 2


@settings(FUZZ, max_examples=90)
@given(st.one_of(st.binary(max_size=200), byte_mutations(_RELAY_CONTACT.encode())))
def test_contacts_decode_strictly_and_mutations_never_verify(data: bytes) -> None:
    check_signed(
        Contact.decode,
        lambda contact: contact.verify(NOW),
        _RELAY_CONTACT,
        data,
        refusal=ContactError,
    )


_SECRET = bytes(range(32))
_RENDEZVOUS = rendezvous_keys(_SECRET, OWNER.public, 0)
_INTROS = [Intro(RELAY.public, bytes(16), NOW + 60_000)]
_INTROSET = seal_introset(_RENDEZVOUS, OWNER, _INTROS, NOW + 60_000)


@settings(FUZZ, max_examples=90)
@given(st.one_of(st.binary(max_size=600), byte_mutations(_INTROSET)))
def test_introsets_open_only_as_published(data: bytes) -> None:
    checked = refused_or_decoded(lambda: verify_introset(data, NOW), IntrosetError)
    intros = refused_or_decoded(
        lambda: open_introset(data, _RENDEZVOUS, OWNER.public, NOW), IntrosetError
    )
    if checked is not None or intros is not None:
        assert data == _INTROSET
    assert intros is None or intros == _INTROS


def _sibling_introset(body: bytes) -> bytes:
    """What a sibling holding the shared secret (not the owner's key) can publish."""
    nonce = bytes(24)
    ciphertext = bytes(
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            body, _RENDEZVOUS.location, nonce, _RENDEZVOUS.encryption_key
        )
    )
    head = struct.pack(">32sQ24sH", _RENDEZVOUS.location, NOW + 60_000, nonce, len(ciphertext))
    return head + ciphertext + _RENDEZVOUS.signing.sign(head + ciphertext)


def _owner_signed(body: bytes) -> bytes:
    return body + OWNER.sign(_RENDEZVOUS.location + body)


@settings(FUZZ, max_examples=90)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda rest: OWNER.public + rest),
        st.tuples(st.integers(0, 255), st.binary(max_size=200)).map(
            lambda t: _owner_signed(OWNER.public + bytes((t[0],)) + t[1])
        ),
        st.tuples(st.integers(0, 255), st.binary(max_size=200)).map(
            lambda t: _owner_signed(SIBLING.public + bytes((t[0],)) + t[1])
        ),
        st.lists(st.binary(min_size=44, max_size=44), max_size=4).map(
            lambda intros: _owner_signed(OWNER.public + bytes((len(intros),)) + b"".join(intros))
        ),
    )
)
def test_introset_bodies_from_a_hostile_sibling(body: bytes) -> None:
    intros = refused_or_decoded(
        lambda: open_introset(_sibling_introset(body), _RENDEZVOUS, OWNER.public, NOW),
        IntrosetError,
    )
    assert intros is None or all(isinstance(i, Intro) for i in intros)


@settings(FUZZ, max_examples=60)
@given(
    st.one_of(
        st.binary(max_size=40).map(put_request),
        byte_mutations(_INTROSET).map(put_request),
        st.binary(max_size=40).map(get_request),
        st.binary(max_size=1100),
    )
)
def test_introset_store_answers_every_request_with_a_status(request: bytes) -> None:
    store = IntrosetStore()
    store.handle("in:1", put_request(_INTROSET), NOW)
    response = store.handle("in:1", request, NOW)
    assert response[0] in set(DhtStatus)


_LAYER_KEYS = HopKeys.derive(bytes(32))
_LAYER = _LAYER_KEYS.owner_side()[0].seal(b"layer payload")


@settings(FUZZ, max_examples=80)
@given(st.one_of(st.binary(max_size=100), byte_mutations(_LAYER)))
def test_onion_layers_open_only_unchanged(data: bytes) -> None:
    """Only the layer as sealed opens; anything else is refused without moving the hop's
    counter, so the genuine layer still opens after it."""
    opener, _ = _LAYER_KEYS.relay_side()
    opened = refused_or_decoded(lambda: opener.open(data), LayerError)
    assert opened is None or (data == _LAYER and opened == b"layer payload")
    if opened is None:
        assert opener.open(_LAYER) == b"layer payload"


_BUILD_RECORD = BuildRecord(bytes(16), bytes(range(16)), bytes(32), NOW + 60_000, 1)
_BUILD_BODY, _ = seal_build_frames([_BUILD_RECORD], [RELAY.x25519_public])
#: The latest expiry a relay takes at NOW: anything later would pin its state too long.
_LATEST_BUILD_EXPIRY = NOW + MAX_PATH_LIFETIME_MS + CLOCK_SKEW_ALLOWANCE_MS


@settings(FUZZ, max_examples=90)
@given(
    record=st.one_of(st.binary(max_size=120), byte_mutations(_BUILD_RECORD.encode())),
    body=st.one_of(st.binary(max_size=CELL_BODY_BYTES), byte_mutations(_BUILD_BODY)),
)
@example(record=b"\x00" * 10, body=_BUILD_BODY)  # struct.error before the fix
@example(record=b"", body=_BUILD_BODY[:200])  # OverflowError before the fix
@example(record=replace(_BUILD_RECORD, expiry_ms=2**64 - 1).encode(), body=_BUILD_BODY)
def test_build_records_and_frames_decode_or_raise_layer_error(record: bytes, body: bytes) -> None:
    decoded = refused_or_decoded(lambda: BuildRecord.decode(record, NOW), LayerError)
    assert decoded is None or 1 <= decoded.hop_index <= MAX_HOPS
    assert decoded is None or NOW < decoded.expiry_ms <= _LATEST_BUILD_EXPIRY
    opened = refused_or_decoded(lambda: open_build_frame(body, RELAY.dh, NOW), LayerError)
    if opened is not None:
        assert body[:144] == _BUILD_BODY[:144] and opened[1] == _BUILD_RECORD
        assert len(opened[3]) == CELL_BODY_BYTES


def _built_path() -> tuple[RelayCore, Path, bytes]:
    """A relay, a one-hop path through it, and the BUILT cell it sent back."""
    relay = RelayCore(RELAY, {RELAY.public: _RELAY_CONTACT})
    path, build = Path.build([_RELAY_CONTACT], NOW)
    [(link, built)] = relay.receive("in:1", build, NOW)
    assert link == "in:1"
    return relay, path, built


_RELAY, _PATH, _BUILT = _built_path()


@settings(FUZZ, max_examples=80)
@given(byte_mutations(_BUILT))
def test_cells_back_along_a_path_unwrap_only_unchanged(data: bytes) -> None:
    path = copy.deepcopy(_PATH)

    def unwrap() -> bytes:  # as Endpoint._on_cell does
        cell = decode_cell(data)
        if cell.kind is not CellKind.DATA or cell.id != path.first_id:
            raise CellError("not a cell of this path")
        return path.unwrap(cell.body, NOW)

    payload = refused_or_decoded(unwrap, CellError, LayerError)
    assert payload is None or (data == _BUILT and payload == bytes((Payload.BUILT,)))


@settings(FUZZ, max_examples=90)
@given(
    cell=st.one_of(
        st.binary(min_size=1, max_size=1).map(lambda k: k + bytes(CELL_BYTES - 1)),
        st.tuples(st.sampled_from(list(CellKind)), st.binary(max_size=CELL_BODY_BYTES)).map(
            lambda t: bytes((t[0],)) + bytes(16) + t[1].ljust(CELL_BODY_BYTES, b"\0")
        ),
        byte_mutations(_BUILT),
        st.none(),
    ),
    payload=st.one_of(
        st.binary(max_size=100),
        st.tuples(st.sampled_from(list(Payload)), st.binary(max_size=120)).map(
            lambda t: bytes((t[0],)) + t[1]
        ),
        st.binary(max_size=60).map(
            lambda r: bytes((Payload.DHT_REQUEST,)) + bytes(8) + RELAY.public + r
        ),
        st.binary(max_size=60).map(lambda r: bytes((Payload.TRANSFER,)) + RELAY.public + r),
    ),
)
def test_relays_drop_hostile_cells_without_the_catch_all(
    cell: bytes | None, payload: bytes
) -> None:
    """Whatever a neighbour or a path owner sends, the relay answers with cells or drops it
    for a named reason; its last-resort ``except Exception`` is never needed."""
    relay, path, _ = _built_path()
    with mock.patch.object(
        relay_module.logger, "exception", side_effect=AssertionError("relay catch-all hit")
    ):
        sends = relay.receive("in:1", cell if cell is not None else path.wrap(payload), NOW)
    assert all(len(data) == CELL_BYTES for _, data in sends)


def _session_pair() -> tuple[SessionCore, bytes, SessionCore, bytes, bytes]:
    initiator = SessionCore.initiate(OWNER, SIBLING.public, NOW)
    [init] = initiator.outgoing(NOW)
    responder = SessionCore.respond(SIBLING, init, NOW)
    [accept] = responder.outgoing(NOW)
    waiting = copy.deepcopy(initiator)
    initiator.receive_packet(accept, NOW)
    assert initiator.state is SessionState.OPEN
    initiator.send_message(b"hello sibling")
    [data] = initiator.outgoing(NOW)
    return waiting, init, responder, accept, data


_WAITING, _INIT, _RESPONDER, _ACCEPT, _DATA = _session_pair()


@settings(FUZZ, max_examples=80)
@given(st.one_of(st.binary(max_size=200), byte_mutations(_INIT)))
def test_session_init_authenticates_or_raises_session_error(packet: bytes) -> None:
    session_id = packet_session_id(packet)
    assert session_id is None or len(session_id) == 8
    core = refused_or_decoded(lambda: SessionCore.respond(SIBLING, packet, NOW), SessionError)
    assert core is None or packet == _INIT


@settings(FUZZ, max_examples=90)
@given(st.one_of(st.binary(max_size=200), byte_mutations(_DATA), byte_mutations(_ACCEPT)))
def test_sessions_ignore_forged_packets(packet: bytes) -> None:
    responder = copy.deepcopy(_RESPONDER)
    responder.receive_packet(packet, NOW)
    assert responder.state is SessionState.OPEN
    assert not responder.received or (
        packet == _DATA and list(responder.received) == [b"hello sibling"]
    )
    waiting = copy.deepcopy(_WAITING)
    waiting.receive_packet(packet, NOW)
    assert waiting.state is SessionState.HANDSHAKE or packet == _ACCEPT


# --- the harness itself can fail ---------------------------------------------------------------

_SELF_TEST = settings(FUZZ, max_examples=100, phases=[Phase.generate], report_multiple_bugs=False)


def test_the_harness_catches_a_decoder_raising_the_wrong_exception() -> None:
    def sloppy(data: bytes) -> object:
        (size,) = struct.unpack(">H", data[:2])  # a length prefix read before any size check
        return decode_record(data[2 : 2 + size])

    @_SELF_TEST
    @given(st.one_of(*(attacks(record) for record in _SYNC_RECORDS)))
    def prop(data: bytes) -> None:
        refused_or_decoded(lambda: sloppy(data))

    with pytest.raises(struct.error):
        prop()


def test_the_harness_catches_a_verify_that_accepts_mutations() -> None:
    @_SELF_TEST
    @given(attacks(_REQUEST.to_bytes()))
    def prop(data: bytes) -> None:
        check_signed(PairingRequest.from_bytes, lambda record: None, _REQUEST, data)

    with pytest.raises(AssertionError, match="a mutated record verifies"):
        prop()
