"""What a server takes out of a sealed onion request, and what it refuses."""

from __future__ import annotations

import pytest

from p2psync.identity import Identity
from p2psync.onion.sealing import (
    ONION_FRESHNESS_MS,
    ONION_METHOD,
    ONION_REQUEST_ID,
    OnionRefused,
    SealedRequests,
    seal_request,
)
from p2psync.wire import Request, decode_frame, encode_frame

SERVER = Identity.from_label("server")
NOW = 1_000_000_000
REQUEST = Request(ONION_REQUEST_ID, "retrieve", {"pubkey": "05ab"})


def opener() -> SealedRequests:
    return SealedRequests(SERVER, max_frame_bytes=64 * 1024)


def test_a_sealed_request_opens_to_itself_and_the_reply_box_is_the_clients() -> None:
    body, client_box = seal_request(SERVER.ed25519_public, REQUEST, NOW)
    request, reply_box = opener().open(body, NOW + 1_000)
    assert request == REQUEST
    reply = reply_box.encrypt(encode_frame(Request(1, "x", {})))
    assert decode_frame(client_box.decrypt(reply)) == Request(1, "x", {})


def refusal(sealed: SealedRequests, body: bytes, now_ms: int = NOW) -> str:
    with pytest.raises(OnionRefused) as refused:
        sealed.open(body, now_ms)
    assert refused.value.code == "bad_request"
    return refused.value.reason.value


def test_a_body_opened_before_is_a_replay() -> None:
    sealed = opener()
    body, _ = seal_request(SERVER.ed25519_public, REQUEST, NOW)
    sealed.open(body, NOW)
    assert refusal(sealed, body) == "replayed"


@pytest.mark.parametrize("skew", [ONION_FRESHNESS_MS + 1, -ONION_FRESHNESS_MS - 1])
def test_a_body_sealed_too_far_from_the_servers_clock_is_stale(skew: int) -> None:
    body, _ = seal_request(SERVER.ed25519_public, REQUEST, NOW)
    assert refusal(opener(), body, NOW + skew) == "stale"


def test_garbage_another_servers_body_and_a_nested_onion_are_malformed() -> None:
    sealed = opener()
    assert refusal(sealed, b"\x00" * 100) == "malformed"
    other, _ = seal_request(Identity.from_label("other").ed25519_public, REQUEST, NOW)
    assert refusal(sealed, other) == "malformed"
    nested = Request(ONION_REQUEST_ID, ONION_METHOD, {"body": b"..."})
    body, _ = seal_request(SERVER.ed25519_public, nested, NOW)
    assert refusal(sealed, body) == "malformed"


def test_what_it_remembers_is_bounded_by_freshness_and_by_count() -> None:
    sealed = SealedRequests(SERVER, max_frame_bytes=64 * 1024, capacity=2)
    bodies = [seal_request(SERVER.ed25519_public, REQUEST, NOW)[0] for _ in range(3)]
    for body in bodies:
        sealed.open(body, NOW)
    assert sealed.remembered == 2  # the oldest went first
    later, _ = seal_request(SERVER.ed25519_public, REQUEST, NOW + ONION_FRESHNESS_MS + 2)
    sealed.open(later, NOW + ONION_FRESHNESS_MS + 2)
    assert sealed.remembered == 1  # the stale ones are refused as stale anyway
    assert refusal(sealed, bodies[2], NOW + ONION_FRESHNESS_MS + 2) == "stale"
