"""A relay as the exit of onion requests: the fragments of a request become one call to a
server, its reply goes back in fragments, and everything malformed, repeated, oversized
or over the caps is dropped and counted without touching other requests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overlay.cells import CellError, decode_cell
from overlay.constants import (
    DEFAULT_PATH_LIFETIME_MS,
    EXIT_MAX_MESSAGE_BYTES,
    EXIT_TIMEOUT_MS,
    INTROSET_REPUBLISH_MS,
    PATH_PING_INTERVAL_MS,
)
from overlay.contact import make_contact, verified_directory
from overlay.endpoint_core import Answered, Effect, EndpointCore, SendPayload
from overlay.exits import (
    ExitStatus,
    Reassembly,
    decode_exit_reply,
    decode_exit_request,
    encode_exit_request,
)
from overlay.keys import KeyPair
from overlay.path import Path, Payload
from overlay.payloads import (
    EXIT_CHUNK_BYTES,
    EXIT_MAX_FRAGMENTS,
    ExitPayload,
    ExitReply,
    ExitRequest,
    decode_payload,
    exit_fragments,
)
from overlay.relay import ExitCall, RelayCore
from tests.core.overlay.test_cores import NOW

EXIT = KeyPair.from_seed(b"\x41" * 32)
CONTACTS = [make_contact(EXIT, "mem:exit", NOW)]
SERVER = "ws://10.0.0.9:4000"


def exit_relay(per_path: int = 8, total: int = 256) -> RelayCore:
    return RelayCore(
        EXIT,
        verified_directory(CONTACTS, NOW),
        exit_enabled=True,
        max_exits_per_path=per_path,
        max_exits=total,
    )


def one_hop_path(relay: RelayCore) -> Path:
    path, build = Path.build(CONTACTS, NOW)
    [(_, built)] = relay.receive("in:owner", build, NOW)
    assert path.unwrap(decode_cell(built).body, NOW) == bytes((Payload.BUILT,))
    return path


def send(relay: RelayCore, path: Path, payload: bytes, now_ms: int = NOW) -> None:
    assert relay.receive("in:owner", path.wrap(payload), now_ms) == []


def ask(relay: RelayCore, path: Path, request_id: bytes, body: bytes) -> None:
    for fragment in exit_fragments(ExitRequest, request_id, encode_exit_request(SERVER, body)):
        send(relay, path, fragment.encode())


def raw_fragment(request_id: bytes, index: int, count: int, chunk: bytes) -> bytes:
    return (
        bytes((ExitPayload.EXIT_REQUEST,))
        + request_id
        + index.to_bytes(2, "big")
        + count.to_bytes(2, "big")
        + chunk
    )


def replies(relay: RelayCore, path: Path, call: ExitCall, reply: bytes | None) -> bytes:
    """What the owner reassembles of the exit's answer."""
    sends = relay.exit_done(call.token, reply)
    parts: Reassembly | None = None
    message = None
    for link, cell in sends:
        assert link == "in:owner"
        fragment = decode_payload(path.unwrap(decode_cell(cell).body, NOW))
        assert isinstance(fragment, ExitReply)
        parts = parts or Reassembly(fragment.count)
        message = parts.add(fragment)
    assert message is not None
    return message


def test_a_request_in_fragments_is_one_call_and_its_reply_comes_back() -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    body = bytes(range(256)) * 20  # several fragments
    ask(relay, path, b"r" * 8, body)
    [call] = relay.take_exit_calls()
    assert (call.address, call.body) == (SERVER, body)
    reply = b"answer" * 1000
    assert decode_exit_reply(replies(relay, path, call, reply)) == (ExitStatus.OK, reply)
    assert relay.stats.exits == 1 and relay.exit_count == 0


def test_no_answer_and_an_oversize_answer_reach_the_owner_as_failures() -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    ask(relay, path, b"a" * 8, b"x")
    ask(relay, path, b"b" * 8, b"y")
    silent, greedy = relay.take_exit_calls()
    assert decode_exit_reply(replies(relay, path, silent, None)) == (ExitStatus.FAILED, b"")
    oversize = bytes(EXIT_MAX_MESSAGE_BYTES)
    assert decode_exit_reply(replies(relay, path, greedy, oversize)) == (ExitStatus.FAILED, b"")
    assert relay.stats.exit_failures == 1 and relay.stats.dropped_exit_oversize == 1


def test_a_repeated_fragment_is_a_replay() -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    first, second = exit_fragments(
        ExitRequest, b"r" * 8, encode_exit_request(SERVER, bytes(EXIT_CHUNK_BYTES))
    )
    send(relay, path, first.encode())
    send(relay, path, first.encode())
    assert relay.stats.dropped_replay == 1
    send(relay, path, second.encode())
    assert len(relay.take_exit_calls()) == 1
    send(relay, path, second.encode())  # the whole request is at the server already
    assert relay.stats.dropped_replay == 2 and relay.take_exit_calls() == []


@pytest.mark.parametrize(
    "fragment",
    [
        raw_fragment(b"r" * 8, 0, 0, b"x"),  # no fragments
        raw_fragment(b"r" * 8, 2, 2, b"x"),  # index past the count
        raw_fragment(b"r" * 8, 0, EXIT_MAX_FRAGMENTS + 1, bytes(EXIT_CHUNK_BYTES)),  # too many
        raw_fragment(b"r" * 8, 0, 2, b"short"),  # a fragment before the last is not full
        raw_fragment(b"r" * 8, 0, 1, b""),  # no address
        raw_fragment(b"r" * 8, 0, 1, b"\x05ab"),  # address longer than what follows
        raw_fragment(b"r" * 8, 0, 1, b"\x02\xff\xfe body"),  # address not ASCII
        raw_fragment(b"r" * 8, 0, 1, b"\x02\n\n body"),  # address not printable
        bytes((ExitPayload.EXIT_REQUEST,)) + b"r" * 8 + b"\x00",  # header cut short
    ],
)
def test_malformed_requests_are_dropped_and_counted(fragment: bytes) -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    send(relay, path, fragment)
    assert relay.stats.dropped_malformed == 1
    assert relay.exit_count == 0 and relay.take_exit_calls() == []
    ask(relay, path, b"s" * 8, b"fine")  # the path lives on
    assert len(relay.take_exit_calls()) == 1


def test_a_fragment_that_changes_the_count_is_dropped() -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    send(relay, path, raw_fragment(b"r" * 8, 0, 3, bytes(EXIT_CHUNK_BYTES)))
    send(relay, path, raw_fragment(b"r" * 8, 1, 2, b"x"))
    assert relay.stats.dropped_malformed == 1 and relay.exit_count == 0


def test_requests_past_the_caps_or_to_a_relay_that_is_no_exit_are_refused() -> None:
    relay = exit_relay(per_path=2, total=3)
    path, other = one_hop_path(relay), one_hop_path(relay)
    for n in range(3):
        ask(relay, path, bytes([n]) * 8, b"x")
    assert relay.stats.dropped_exit_refused == 1 and relay.exit_count == 2
    ask(relay, other, b"o" * 8, b"x")
    ask(relay, other, b"p" * 8, b"x")  # over the relay's total
    assert relay.stats.dropped_exit_refused == 2 and relay.exit_count == 3
    for call in relay.take_exit_calls():
        relay.exit_done(call.token, b"ok")
    assert relay.exit_count == 0

    plain = RelayCore(EXIT, verified_directory(CONTACTS, NOW))
    ask(plain, one_hop_path(plain), b"r" * 8, b"x")
    assert plain.stats.dropped_exit_refused == 1 and plain.take_exit_calls() == []


def test_a_request_whose_fragments_stop_coming_is_forgotten() -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    send(relay, path, raw_fragment(b"r" * 8, 0, 2, bytes(EXIT_CHUNK_BYTES)))
    assert relay.exit_count == 1
    relay.expire(NOW + EXIT_TIMEOUT_MS)
    assert relay.exit_count == 0


def test_exit_codecs_refuse_what_they_cannot_carry() -> None:
    with pytest.raises(ValueError):
        exit_fragments(ExitRequest, b"r" * 8, bytes(EXIT_MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ValueError):
        encode_exit_request("x" * 256, b"")
    with pytest.raises(CellError):
        decode_exit_reply(bytes((ExitStatus.FAILED,)) + b"body")
    with pytest.raises(CellError):
        decode_exit_reply(b"\x07")
    assert decode_exit_request(encode_exit_request(SERVER, b"b")) == (SERVER, b"b")
    fragment = ExitReply(b"q" * 8, 1, 3, b"chunk")
    assert decode_payload(fragment.encode()) == fragment


@given(st.binary(max_size=64), st.sampled_from(list(ExitPayload)))
def test_exit_payloads_decode_or_raise_cell_error(body: bytes, kind: ExitPayload) -> None:
    """Whatever an owner or an exit sends, decoding raises nothing but CellError, and what
    decodes is within the bounds a reassembly relies on."""
    try:
        fragment = decode_payload(bytes((kind,)) + body)
    except CellError:
        return
    assert isinstance(fragment, ExitRequest | ExitReply)
    assert 0 <= fragment.index < fragment.count <= EXIT_MAX_FRAGMENTS


def owner_and_path(relay: RelayCore) -> tuple[EndpointCore, Path]:
    """An endpoint core with one built one-hop path through ``relay``."""
    core = EndpointCore(
        verified_directory(CONTACTS, NOW),
        random.Random(1),
        NOW,
        hops=1,
        paths=1,
        path_lifetime_ms=DEFAULT_PATH_LIFETIME_MS,
        ping_interval_ms=PATH_PING_INTERVAL_MS,
        republish_ms=INTROSET_REPUBLISH_MS,
    )
    path, build = core.add_path(core.choose_hops(), NOW)
    [(_, built)] = relay.receive("in:owner", build, NOW)
    core.receive_cell(path, built, NOW)
    return core, path


def carry(relay: RelayCore, effects: list[Effect]) -> None:
    for effect in effects:
        assert isinstance(effect, SendPayload)
        assert relay.receive("in:owner", effect.path.wrap(effect.payload.encode()), NOW) == []


def test_the_owner_reassembles_the_reply_and_drops_one_it_no_longer_awaits() -> None:
    relay = exit_relay()
    core, path = owner_and_path(relay)
    body = bytes(5000)
    request_id, sends = core.ask_exit(path, SERVER, body)
    carry(relay, sends)
    [call] = relay.take_exit_calls()
    assert call.body == body
    effects = [
        e
        for _, cell in relay.exit_done(call.token, b"r" * 3000)
        for e in core.receive_cell(path, cell, NOW)
    ]
    assert effects == [Answered(request_id)]
    assert core.exit_reply(request_id) == (ExitStatus.OK, b"r" * 3000)

    late_id, sends = core.ask_exit(path, SERVER, b"x")
    carry(relay, sends)
    [late] = relay.take_exit_calls()
    assert core.exit_reply(late_id) is None  # the asker gave up
    cells = relay.exit_done(late.token, b"too late" * 300)
    assert [e for _, cell in cells for e in core.receive_cell(path, cell, NOW)] == []
    assert core.stats.cells_dropped == len(cells) > 1
