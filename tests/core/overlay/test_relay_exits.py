"""A relay as the exit of onion requests: the fragments of a request become one call to a
server its route allows, its reply goes back in fragments, and everything malformed,
repeated, oversized, over the caps or to another address is dropped and counted without
touching other requests."""

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
    ExitCaps,
    ExitStatus,
    Reassembly,
    decode_exit_reply,
    decode_exit_request,
    encode_exit_request,
    peer_host,
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
from overlay.relay_core import ExitCall, RelayCore, Send
from tests.core.overlay.test_cores import NOW

EXIT = KeyPair.from_seed(b"\x41" * 32)
CONTACTS = [make_contact(EXIT, "mem:exit", NOW)]
SERVER = "ws://10.0.0.9:4000"
#: The exit's route: only SERVER, by one spelling (what the route is made of, and how it
#: tells spellings apart, is p2psync's: tests/core/test_exit_servers.py).
ROUTES = {SERVER: SERVER, "ws://10.0.0.9:4000/1": SERVER}


def exit_relay(per_path: int = 8, total: int = 256, per_host: int = 64) -> RelayCore:
    return RelayCore(
        EXIT,
        verified_directory(CONTACTS, NOW),
        exit_route=ROUTES.get,
        exit_caps=ExitCaps(per_path, per_host, total),
    )


def one_hop_path(relay: RelayCore, link: str = "in:owner", peer: str = "") -> Path:
    path, build = Path.build(CONTACTS, NOW)
    [(_, built)] = relay.receive(link, build, NOW, peer=peer)
    assert path.unwrap(decode_cell(built).body, NOW) == bytes((Payload.BUILT,))
    return path


def send(
    relay: RelayCore, path: Path, payload: bytes, now_ms: int = NOW, link: str = "in:owner"
) -> list[Send]:
    return relay.receive(link, path.wrap(payload), now_ms)


def ask(
    relay: RelayCore,
    path: Path,
    request_id: bytes,
    body: bytes,
    address: str = SERVER,
    link: str = "in:owner",
) -> list[ExitStatus]:
    """Send one exit request; the statuses the owner was answered with at once (none
    while it is at the server)."""
    answers = []
    for fragment in exit_fragments(ExitRequest, request_id, encode_exit_request(address, body)):
        for sent_on, cell in send(relay, path, fragment.encode(), link=link):
            assert sent_on == link
            reply = decode_payload(path.unwrap(decode_cell(cell).body, NOW))
            assert isinstance(reply, ExitReply) and reply.request_id == request_id
            answers.append(decode_exit_reply(reply.chunk)[0])
    return answers


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
    assert send(relay, path, first.encode()) == []
    assert send(relay, path, first.encode()) == []
    assert relay.stats.dropped_replay == 1
    assert send(relay, path, second.encode()) == []
    assert len(relay.take_exit_calls()) == 1
    assert send(relay, path, second.encode()) == []  # the whole request is at the server
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
    assert send(relay, path, fragment) == []
    assert relay.stats.dropped_malformed == 1
    assert relay.exit_count == 0 and relay.take_exit_calls() == []
    assert ask(relay, path, b"s" * 8, b"fine") == []  # the path lives on
    assert len(relay.take_exit_calls()) == 1


def test_a_fragment_that_changes_the_count_is_dropped() -> None:
    relay = exit_relay()
    path = one_hop_path(relay)
    assert send(relay, path, raw_fragment(b"r" * 8, 0, 3, bytes(EXIT_CHUNK_BYTES))) == []
    assert send(relay, path, raw_fragment(b"r" * 8, 1, 2, b"x")) == []
    assert relay.stats.dropped_malformed == 1 and relay.exit_count == 0


def test_requests_past_the_caps_or_to_a_relay_that_is_no_exit_are_refused() -> None:
    """Refused at once, so the owner tries another path without waiting out a timeout."""
    relay = exit_relay(per_path=2, total=3)
    path, other = one_hop_path(relay, "in:a"), one_hop_path(relay, "in:b")
    answers = [ask(relay, path, bytes([n]) * 8, b"x", link="in:a") for n in range(3)]
    assert answers == [[], [], [ExitStatus.BUSY]]
    assert relay.stats.dropped_exit_refused == 1 and relay.exit_count == 2
    assert ask(relay, other, b"o" * 8, b"x", link="in:b") == []
    assert ask(relay, other, b"p" * 8, b"x", link="in:b") == [ExitStatus.BUSY]  # the total
    assert relay.stats.dropped_exit_refused == 2 and relay.exit_count == 3
    for call in relay.take_exit_calls():
        relay.exit_done(call.token, b"ok")
    assert relay.exit_count == 0

    plain = RelayCore(EXIT, verified_directory(CONTACTS, NOW))
    assert ask(plain, one_hop_path(plain), b"r" * 8, b"x") == [ExitStatus.REFUSED]
    assert plain.stats.dropped_exit_refused == 1 and plain.take_exit_calls() == []


def test_the_paths_of_one_link_share_a_cap_and_leave_room_for_other_links() -> None:
    """However many paths one neighbour brings (one client, or the relay carrying its
    paths), they hold at most ``per_host`` of the relay's exit slots together."""
    relay = exit_relay(per_path=2, per_host=3, total=8)
    crowd = [one_hop_path(relay, "in:crowd") for _ in range(3)]
    answers = [
        ask(relay, path, bytes([n, i]) * 4, b"x", link="in:crowd")
        for n, path in enumerate(crowd)
        for i in range(2)
    ]
    assert answers.count([]) == 3 and answers.count([ExitStatus.BUSY]) == 3
    assert relay.exit_count == 3
    other = one_hop_path(relay, "in:other")
    assert ask(relay, other, b"o" * 8, b"x", link="in:other") == []
    assert relay.exit_count == 4
    first = relay.take_exit_calls()[0]
    relay.exit_done(first.token, b"ok")  # a slot of the crowd's link is free again
    assert ask(relay, crowd[0], b"again!!!", b"x", link="in:crowd") == []


@pytest.mark.parametrize(
    ("crowd", "other"),
    [
        (["10.0.0.5:4001", "10.0.0.5:4002", "10.0.0.5:4003"], "10.0.0.6:4001"),
        (
            ["[2001:db8::1]:4001", "[2001:db8::2]:4001", "[2001:db8::ffff:1]:4001"],
            "[2001:db9::1]:4001",
        ),
    ],
)
def test_links_from_one_host_share_its_cap(crowd: list[str], other: str) -> None:
    """Four links from one machine once held every slot of an exit: the cap counts the
    paths of every link from one host (an IPv6 /64) together."""
    relay = exit_relay(per_path=2, per_host=3, total=8)
    paths = [one_hop_path(relay, f"in:{n}", peer) for n, peer in enumerate(crowd)]
    answers = [
        ask(relay, path, bytes([n, i]) * 4, b"x", link=f"in:{n}")
        for n, path in enumerate(paths)
        for i in range(2)
    ]
    assert answers.count([]) == 3 and answers.count([ExitStatus.BUSY]) == 3
    elsewhere = one_hop_path(relay, "in:other", other)
    assert ask(relay, elsewhere, b"o" * 8, b"x", link="in:other") == []


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("10.0.0.5:4001", "10.0.0.5"),
        ("[2001:db8::1]:4001", "2001:db8::/64"),
        ("relay.example:443#" + "ab" * 32, "relay.example"),
        ("mem:relay3", "mem:relay3"),
        ("127.0.0.1:4001", "127.0.0.1"),
        ("[::ffff:10.0.0.5]:4001", "10.0.0.5"),
        ("[2001:db8::1%eth0]:4001", "2001:db8::/64"),
        ("2001:db8::5", "2001:db8::/64"),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_a_relay_counts_loopback_peers_by_link() -> None:
    """On one machine every process is 127.0.0.1: a relay's exit caps count each link."""
    assert peer_host("127.0.0.1:4001", loopback_apart=True) == "127.0.0.1:4001"
    assert peer_host("[::1]:4001", loopback_apart=True) == "[::1]:4001"
    assert peer_host("10.0.0.5:4001", loopback_apart=True) == "10.0.0.5"


def test_an_address_the_route_does_not_name_is_refused_and_reaches_nothing() -> None:
    """A whole request for an address that is no server this exit serves (loopback, the
    hosts' gateway, a port scan) is answered REFUSED and never becomes a call; another
    spelling of an allowed server becomes a call to the address the route gives."""
    relay = exit_relay()
    path = one_hop_path(relay)
    for n, address in enumerate(("ws://127.0.0.1:22", "ws://10.77.0.1:6379", "mem:registry")):
        assert ask(relay, path, bytes([n]) * 8, b"x" * 2000, address) == [ExitStatus.REFUSED]
    assert relay.take_exit_calls() == [] and relay.exit_count == 0
    assert relay.stats.dropped_exit_address == 3 and relay.stats.exits == 0
    assert ask(relay, path, b"s" * 8, b"x", "ws://10.0.0.9:4000/1") == []
    [call] = relay.take_exit_calls()
    assert call.address == SERVER


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
