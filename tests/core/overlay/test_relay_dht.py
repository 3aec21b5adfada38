"""A terminal relay forwards its paths' DHT requests to the relay they name and remembers
where each answer goes. A neighbour that never answers must not grow that memory: it is
capped, and kept only while the asking endpoint still waits (DHT_REQUEST_TIMEOUT_MS)."""

from __future__ import annotations

from overlay.cells import CellKind, decode_cell, frame_payload, make_cell
from overlay.constants import CELL_BODY_BYTES, DHT_REQUEST_TIMEOUT_MS
from overlay.contact import make_contact, verified_directory
from overlay.dht import DhtStatus, get_request
from overlay.keys import KeyPair
from overlay.path import Path, Payload
from overlay.relay_core import RelayCore
from tests.core.overlay.test_cores import NOW

TERMINAL = KeyPair.from_seed(b"\x31" * 32)
SILENT = KeyPair.from_seed(b"\x32" * 32)
CONTACTS = [make_contact(TERMINAL, "mem:terminal", NOW), make_contact(SILENT, "mem:silent", NOW)]
NOT_FOUND = bytes((DhtStatus.NOT_FOUND,))


def one_hop_path(relay: RelayCore) -> Path:
    """A path whose only (so terminal) hop is ``relay``."""
    path, build = Path.build(CONTACTS[:1], NOW)
    [(_, built)] = relay.receive("in:owner", build, NOW)
    assert path.unwrap(decode_cell(built).body, NOW) == bytes((Payload.BUILT,))
    return path


def ask_silent(relay: RelayCore, path: Path, request_id: int, now_ms: int) -> bytes:
    """Ask the silent relay, through ``path``, for an introset: the token it went out with."""
    payload = (
        bytes((Payload.DHT_REQUEST,))
        + request_id.to_bytes(8, "big")
        + SILENT.public
        + get_request(bytes(32))
    )
    [(link, cell)] = relay.receive("in:owner", path.wrap(payload), now_ms)
    assert link == "out:mem:silent"
    return decode_cell(cell).id


def answer(relay: RelayCore, path: Path, token: bytes, now_ms: int) -> bytes | None:
    """The silent relay answers after all: the request id its result reaches the owner
    with, or None if the terminal relay no longer knew where it goes."""
    cell = make_cell(CellKind.DHT_RESPONSE, token, frame_payload(NOT_FOUND, CELL_BODY_BYTES))
    sends = relay.receive("out:mem:silent", cell, now_ms)
    if not sends:
        return None
    [(link, reply)] = sends
    assert link == "in:owner"
    result = path.unwrap(decode_cell(reply).body, now_ms)
    assert result[:1] == bytes((Payload.DHT_RESULT,)) and result[9:] == NOT_FOUND
    return result[1:9]


def test_requests_a_neighbour_never_answers_are_capped_oldest_first() -> None:
    relay = RelayCore(TERMINAL, verified_directory(CONTACTS, NOW), max_pending_dht=8)
    path = one_hop_path(relay)
    tokens = [ask_silent(relay, path, n, NOW) for n in range(20)]
    assert relay.pending_dht_count == 8
    assert answer(relay, path, tokens[0], NOW) is None  # made room for later ones
    assert relay.stats.dropped_unknown_path == 1
    assert answer(relay, path, tokens[-1], NOW) == (19).to_bytes(8, "big")
    assert relay.pending_dht_count == 7


def test_requests_are_forgotten_once_their_endpoint_stopped_waiting() -> None:
    relay = RelayCore(TERMINAL, verified_directory(CONTACTS, NOW))
    path = one_hop_path(relay)
    early = [ask_silent(relay, path, n, NOW) for n in range(5)]
    later = ask_silent(relay, path, 5, NOW + 1_000)
    assert relay.pending_dht_count == 6
    # a late answer reaches nobody: the endpoint gave up on it at the same moment
    assert answer(relay, path, early[0], NOW + DHT_REQUEST_TIMEOUT_MS) is None
    assert answer(relay, path, later, NOW + DHT_REQUEST_TIMEOUT_MS) == (5).to_bytes(8, "big")
    relay.expire(NOW + DHT_REQUEST_TIMEOUT_MS)
    assert relay.pending_dht_count == 0
    # the next forwarded request clears what expired before it, without waiting for expire()
    ask_silent(relay, path, 6, NOW + DHT_REQUEST_TIMEOUT_MS)
    ask_silent(relay, path, 7, NOW + DHT_REQUEST_TIMEOUT_MS + 1_000)
    ask_silent(relay, path, 8, NOW + 2 * DHT_REQUEST_TIMEOUT_MS)
    assert relay.pending_dht_count == 2
