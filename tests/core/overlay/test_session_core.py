"""The session state machine alone: handshake, ordering, loss, window, close, failure."""

from __future__ import annotations

import random
from typing import Any

import pytest

from overlay.constants import (
    SESSION_HALF_CLOSED_IDLE_MS,
    SESSION_INIT_FRESHNESS_MS,
    SESSION_INTRO_REFRESH_MS,
    SESSION_LAST_FIN_SENDS,
    SESSION_RTO_MAX_MS,
    SESSION_STALL_RETRIES,
    SESSION_UNREAD_BYTES,
    SESSION_WINDOW_FRAGMENTS,
)
from overlay.introset import Intro
from overlay.keys import KeyPair
from overlay.session import (
    FRAGMENT_BYTES,
    PROBE_COUNTERS,
    InitReplayCache,
    Refusal,
    Refused,
    SessionAcceptor,
    SessionCore,
    SessionError,
    SessionState,
    StaleInit,
    probe_packet,
)

ALICE = KeyPair.from_seed(b"\x0a" * 32)
BOB = KeyPair.from_seed(b"\x0b" * 32)
CAROL = KeyPair.from_seed(b"\x0c" * 32)


def pump(
    a: SessionCore | None, b_keys: KeyPair, *, loss: float = 0.0, seed: int = 0, rounds: int = 400
) -> tuple[SessionCore, SessionCore, int]:
    """Run both sides in lockstep virtual time (10 ms per round); returns (a, b, now)."""
    rng = random.Random(seed)
    a = a or SessionCore.initiate(ALICE, b_keys.public, 0)
    b: SessionCore | None = None
    now = 0
    for _ in range(rounds):
        for packet in a.outgoing(now):
            if rng.random() < loss:
                continue
            if b is None:
                try:
                    b = SessionCore.respond(b_keys, packet, now)
                except SessionError:
                    continue
            else:
                b.receive_packet(packet, now)
        if b is not None:
            for packet in b.outgoing(now):
                if rng.random() >= loss:
                    a.receive_packet(packet, now)
        now += 10
    assert b is not None
    return a, b, now


def test_handshake_then_ordered_fragmented_messages() -> None:
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    messages = [b"", b"x", bytes(range(256)) * 300, b"y" * FRAGMENT_BYTES]
    for m in messages:
        a.send_message(m)
    a.close()
    a, b, _ = pump(a, BOB)
    assert a.state is SessionState.OPEN or a.state is SessionState.CLOSED
    assert list(b.received) == messages
    assert b.peer == ALICE.public and b.peer_finished


@pytest.mark.parametrize("seed", range(3))
def test_lossy_delivery_is_complete_and_in_order(seed: int) -> None:
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    messages = [bytes([i]) * (i * 600) for i in range(40)]  # nobody reads: 468 000 bytes
    assert sum(map(len, messages)) < SESSION_UNREAD_BYTES
    for m in messages:
        a.send_message(m)
    a, b, _ = pump(a, BOB, loss=0.2, seed=seed, rounds=3000)
    assert list(b.received) == messages
    assert a.all_acknowledged


def test_window_bounds_packets_in_flight() -> None:
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    b = SessionCore.respond(BOB, a.outgoing(0)[0], 0)
    a.receive_packet(b.outgoing(0)[0], 0)
    a.send_message(bytes(FRAGMENT_BYTES * (SESSION_WINDOW_FRAGMENTS + 10)))
    assert len(a.outgoing(1)) == SESSION_WINDOW_FRAGMENTS


def test_wrong_key_cannot_answer_and_silence_fails() -> None:
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    with pytest.raises(SessionError):
        SessionCore.respond(KeyPair.from_seed(b"\x0c" * 32), a.outgoing(0)[0], 0)
    now = 0
    while a.state is SessionState.HANDSHAKE:
        a.outgoing(now)
        now += 100
    assert a.state is SessionState.FAILED


def test_tampered_data_is_ignored() -> None:
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    b = SessionCore.respond(BOB, a.outgoing(0)[0], 0)
    a.receive_packet(b.outgoing(0)[0], 0)
    a.send_message(b"secret")
    packet = a.outgoing(1)[0]
    b.receive_packet(packet[:-1] + bytes([packet[-1] ^ 1]), 1)
    assert not b.received
    b.receive_packet(packet, 2)
    assert list(b.received) == [b"secret"]
    assert b"secret" not in packet


def test_init_hides_the_initiators_key_and_any_other_key_cannot_open_it() -> None:
    """Relays carry INIT: it must not show who is calling. Only the responder learns it."""
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    [init] = a.outgoing(0)
    assert ALICE.public not in init and ALICE.x25519_public not in init
    assert SessionCore.respond(BOB, init, 0).peer == ALICE.public
    with pytest.raises(SessionError):
        SessionCore.respond(KeyPair.from_seed(b"\x0c" * 32), init, 0)
    forged = bytearray(init)
    forged[60] ^= 1  # inside the sealed static key
    with pytest.raises(SessionError):
        SessionCore.respond(BOB, bytes(forged), 0)


def run(a: SessionCore, b: SessionCore, now: int, rounds: int, *, a_lost: bool = False) -> int:
    """Both sides in lockstep virtual time, 10 ms per round; returns the time after."""
    for _ in range(rounds):
        for packet in a.outgoing(now):
            if not a_lost:
                b.receive_packet(packet, now)
        for packet in b.outgoing(now):
            a.receive_packet(packet, now)
        now += 10
    return now


def test_a_fin_that_answers_the_peers_stops_being_sent_once_the_peer_is_gone() -> None:
    a, b, now = pump(None, BOB, rounds=20)
    a.close()
    now = run(a, b, now, 20)  # b gets the FIN and acknowledges it
    assert b.peer_finished and a.all_acknowledged
    b.close()
    sends = 0
    for _ in range(6000):  # a has left: nothing b sends arrives
        sends += len(b.outgoing(now))
        now += 10
    assert b.state is SessionState.CLOSED and b.failure is None
    assert sends == SESSION_LAST_FIN_SENDS > SESSION_STALL_RETRIES


def test_both_sides_closing_at_once_end_cleanly() -> None:
    a, b, now = pump(None, BOB, rounds=20)
    a.close()
    b.close()
    run(a, b, now, 200)
    assert a.state is b.state is SessionState.CLOSED
    assert a.peer_finished and b.peer_finished and a.all_acknowledged and b.all_acknowledged


def test_closing_at_once_while_one_side_is_cut_off_ends_both_sides() -> None:
    """Both close at once and nothing of A's gets through any more (its FIN, its acks):
    A has B's FIN, so it gives its own up after ``SESSION_LAST_FIN_SENDS`` sends; B keeps
    resending its FIN until ``SESSION_MAX_RETRIES``. Neither is left waiting for ever."""
    a, b, now = pump(None, BOB, rounds=20)
    a.close()
    b.close()
    started, a_closed_at = now, None
    for _ in range(30_000):  # 5 minutes
        a.outgoing(now)
        if a.state is SessionState.CLOSED and a_closed_at is None:
            a_closed_at = now
        for packet in b.outgoing(now):
            a.receive_packet(packet, now)
        now += 10
    assert a.state is SessionState.CLOSED and a.peer_finished
    assert a_closed_at is not None and a_closed_at - started < 60_000
    assert b.state is SessionState.FAILED


def test_a_side_that_closed_first_gives_up_on_a_peer_that_goes_quiet() -> None:
    """A's FIN is acknowledged; B keeps sending, at gaps as wide as a fully backed-off
    retransmission, then goes quiet without its own FIN (crashed, or its FIN never got
    through). A receives all B sends and fails ``SESSION_HALF_CLOSED_IDLE_MS`` after B's
    last new packet; replays of an old packet of B's (a relay could send them) do not
    keep it alive."""
    a, b, now = pump(None, BOB, rounds=20)
    a.close()
    gap_rounds = (SESSION_RTO_MAX_MS << 4) // 10
    assert gap_rounds * 10 < SESSION_HALF_CLOSED_IDLE_MS
    for n in range(3):
        b.send_message(b"still here %d" % n)
        [old] = b.outgoing(now)
        a.receive_packet(old, now)
        last_heard = now
        now = run(a, b, now, gap_rounds)
    assert a.state is SessionState.OPEN and len(a.received) == 3
    assert a.all_acknowledged and not a.peer_finished
    assert a.next_deadline_ms() == last_heard + SESSION_HALF_CLOSED_IDLE_MS
    for _ in range(600):  # B is gone; a relay replays its last packet every second
        if a.state is not SessionState.OPEN:
            break
        a.receive_packet(old, now)
        a.outgoing(now)
        now += 1000
    assert a.state is SessionState.FAILED and a.failure is not None and "quiet" in a.failure
    assert now - last_heard <= SESSION_HALF_CLOSED_IDLE_MS + 1000


def test_init_is_refused_outside_the_freshness_window_either_way() -> None:
    """A recorded INIT replayed later, or one from a clock far ahead, opens nothing; the
    send time is under the seal, so a relay cannot refresh it."""
    sent_at = 10 * SESSION_INIT_FRESHNESS_MS
    [init] = SessionCore.initiate(ALICE, BOB.public, sent_at).outgoing(sent_at)
    for now in (sent_at - SESSION_INIT_FRESHNESS_MS, sent_at + SESSION_INIT_FRESHNESS_MS):
        assert SessionCore.respond(BOB, init, now).init_sent_ms == sent_at
    for now in (sent_at - SESSION_INIT_FRESHNESS_MS - 1, sent_at + SESSION_INIT_FRESHNESS_MS + 1):
        with pytest.raises(StaleInit, match="stale or early"):
            SessionCore.respond(BOB, init, now)
    for index in range(len(init) - 16 - 8 - 40, len(init) - 16 - 40):  # the sealed send time
        forged = bytearray(init)
        forged[index] ^= 1
        with pytest.raises(SessionError, match="does not authenticate"):
            SessionCore.respond(BOB, bytes(forged), sent_at)


def test_replay_cache_refuses_a_second_copy_and_forgets_what_went_stale() -> None:
    [init] = SessionCore.initiate(ALICE, BOB.public, 0).outgoing(0)
    [other] = SessionCore.initiate(ALICE, BOB.public, 0).outgoing(0)
    cache = InitReplayCache(max_entries=2)
    assert not cache.is_replay(init, 0)
    assert cache.admit(SessionCore.respond(BOB, init, 0), 0)
    assert cache.is_replay(init, 5) and not cache.is_replay(other, 5)
    assert not cache.is_replay(b"", 5) and not cache.is_replay(init, SESSION_INIT_FRESHNESS_MS + 1)
    assert not cache.admit(SessionCore.respond(BOB, init, 5), 5)
    assert cache.admit(SessionCore.respond(BOB, other, 5), 5)
    assert len(cache) == 2
    later = SESSION_INIT_FRESHNESS_MS + 1  # both stale now: respond() refuses them itself
    [fresh] = SessionCore.initiate(ALICE, BOB.public, later).outgoing(later)
    assert cache.admit(SessionCore.respond(BOB, fresh, later), later)
    assert len(cache) == 1


def why(outcome: SessionCore | Refusal) -> Refused | None:
    return outcome.why if isinstance(outcome, Refusal) else None


def test_the_acceptor_opens_an_init_once_refuses_its_replays_before_any_key_work_and_then_as_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a relay that carried an INIT can do with it: send it again. Within the
    freshness window the bytes alone refuse it (no Diffie-Hellman is spent on it), after
    it its age does; a packet that is no INIT of ours opens nothing."""
    responded: list[bytes] = []
    respond = SessionCore.respond

    def counting(local: KeyPair, packet: bytes, now_ms: int, **admission: Any) -> SessionCore:
        responded.append(packet)
        return respond(local, packet, now_ms, **admission)

    monkeypatch.setattr(SessionCore, "respond", staticmethod(counting))
    acceptor = SessionAcceptor(BOB)
    [init] = SessionCore.initiate(ALICE, BOB.public, 0).outgoing(0)
    opened = acceptor.accept(init, 10)
    assert isinstance(opened, SessionCore) and opened.peer == ALICE.public
    assert why(acceptor.accept(init, 20)) is Refused.REPLAYED
    assert responded == [init]
    stale = acceptor.accept(init, SESSION_INIT_FRESHNESS_MS + 1)
    assert why(stale) is Refused.STALE and "stale" in getattr(stale, "detail", "")
    [for_carol] = SessionCore.initiate(ALICE, CAROL.public, 0).outgoing(0)
    assert why(acceptor.accept(for_carol, 30)) is Refused.UNREADABLE
    assert why(acceptor.accept(b"\x01" + bytes(100), 30)) is Refused.UNREADABLE


def test_a_full_replay_cache_forgets_the_entry_that_goes_stale_first() -> None:
    cache = InitReplayCache(max_entries=2)
    inits = [SessionCore.initiate(ALICE, BOB.public, t).outgoing(t)[0] for t in (30, 10, 20)]
    for init in inits:
        assert cache.admit(SessionCore.respond(BOB, init, 40), 40)
    assert len(cache) == 2
    assert cache.admit(SessionCore.respond(BOB, inits[1], 40), 40)  # sent at 10: forgotten
    assert not cache.admit(SessionCore.respond(BOB, inits[0], 40), 40)


def test_a_silent_peer_marks_the_session_stalled_and_a_move_resends_at_once() -> None:
    """After ``SESSION_STALL_RETRIES`` resends of one fragment the core says it is stalled
    (the endpoint then looks the peer's introset up again); ``peer_moved`` sends to the new
    intro and resends what is unacknowledged without waiting out the backed-off timer."""
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    b = SessionCore.respond(BOB, a.outgoing(0)[0], 0)
    a.receive_packet(b.outgoing(0)[0], 0)
    a.send_message(b"lost in a dead relay")
    assert a.outgoing(1) and not a.stalled
    now, resends = 1, 0
    while not a.stalled:
        now += 1_000
        resends += bool(a.outgoing(now))
        assert resends <= SESSION_STALL_RETRIES
    assert resends == SESSION_STALL_RETRIES
    assert a.outgoing(now + 1) == []  # backed off: nothing due yet
    moved = Intro(b"\x01" * 32, b"\x02" * 16, now + 60_000)
    a.peer_moved(moved)
    resent = a.outgoing(now + 2)
    assert a.peer_intro == moved and resent  # at once
    for packet in resent:
        b.receive_packet(packet, now + 2)
    assert b.received and b.received[-1] == b"lost in a dead relay"


def test_a_stalled_session_looks_the_peer_up_at_most_once_per_refresh_interval() -> None:
    """The look-up of the peer's introset is due only while stalled, and a due one counts
    as begun: the next is due ``SESSION_INTRO_REFRESH_MS`` later at the earliest. What it
    finds moves the session to the freshest intro other than the one it stalls at."""
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    b = SessionCore.respond(BOB, a.outgoing(0)[0], 0)
    a.receive_packet(b.outgoing(0)[0], 0)
    assert not a.intro_lookup_due(0)  # not stalled
    a.send_message(b"lost in a dead relay")
    now = 1
    while not a.stalled:
        a.outgoing(now)
        now += 1_000
    assert a.intro_lookup_due(now)
    assert not a.intro_lookup_due(now + SESSION_INTRO_REFRESH_MS - 1)
    assert a.intro_lookup_due(now + SESSION_INTRO_REFRESH_MS)

    old = Intro(b"\x01" * 32, b"\x02" * 16, now + 10_000)
    fresh = Intro(b"\x03" * 32, b"\x04" * 16, now + 60_000)
    a.peer_intro = fresh
    assert not a.found_intros([])
    assert not a.found_intros([fresh])  # nowhere else to try
    # Stalled at the freshest (its relay may keep what it should deliver): the other one.
    assert a.found_intros([old, fresh]) and a.peer_intro == old
    assert a.found_intros([fresh, old]) and a.peer_intro == fresh


def test_only_the_newest_packet_moves_the_session_to_the_intro_it_names() -> None:
    """Bob moves to a new intro; a packet of his from before, played again by a relay,
    does not send Alice back to the old one (it did: she sent into a dead intro until
    his next packet)."""
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    b = SessionCore.respond(BOB, a.outgoing(0)[0], 0)
    old = Intro(b"\x01" * 32, b"\x02" * 16, 60_000)
    new = Intro(b"\x03" * 32, b"\x04" * 16, 120_000)
    b.local_intro = old
    b.send_message(b"from the old intro")
    recorded = b.outgoing(0)
    b.local_intro = new
    b.send_message(b"from the new intro")
    for packet in recorded + b.outgoing(1):
        a.receive_packet(packet, 1)
    assert a.peer_intro == new
    for packet in recorded:
        a.receive_packet(packet, 2)
    assert a.peer_intro == new
    assert list(a.received) == [b"from the old intro", b"from the new intro"]


def test_a_session_holds_what_its_application_has_not_read_up_to_a_bound() -> None:
    """A peer sending without end to a session nobody reads fills it to
    :data:`SESSION_UNREAD_BYTES`, then waits (its fragments are not acknowledged); read
    in time, the rest comes, in order and whole."""
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    messages = [bytes([i]) * 60_000 for i in range(40)]  # 2.4 MB
    for message in messages:
        a.send_message(message)
    a, b, now = pump(a, BOB, rounds=500)
    held = sum(map(len, b.received))
    assert SESSION_UNREAD_BYTES - 60_000 <= held <= SESSION_UNREAD_BYTES + FRAGMENT_BYTES
    assert not a.all_acknowledged
    taken: list[bytes] = []
    for _ in range(20_000):
        while b.received:
            taken.append(b.take_received())
        if len(taken) == len(messages):
            break
        for packet in a.outgoing(now):
            b.receive_packet(packet, now)
        for packet in b.outgoing(now):
            a.receive_packet(packet, now)
        now += 10
    assert a.state is SessionState.OPEN and taken == messages


def test_the_acceptor_opens_no_session_from_a_key_it_does_not_admit() -> None:
    """Refused once the INIT shows its sender's key: an authentic INIT from Alice opens
    nothing while Bob admits Carol alone, and opens a session once he admits her."""
    acceptor = SessionAcceptor(BOB, admits=lambda peer: peer == CAROL.public)
    init = SessionCore.initiate(ALICE, BOB.public, 0).outgoing(0)[0]
    refused = acceptor.accept(init, 0)
    assert isinstance(refused, Refusal) and refused.why is Refused.NOT_ADMITTED
    acceptor.admits = lambda peer: peer in (CAROL.public, ALICE.public)
    opened = acceptor.accept(SessionCore.initiate(ALICE, BOB.public, 1).outgoing(1)[0], 1)
    assert isinstance(opened, SessionCore) and opened.peer == ALICE.public


def test_a_probe_looks_like_an_init_or_an_acknowledgement_a_session_sends() -> None:
    """An endpoint's probes of its own intros take the length, type and clear fields of
    a session's INIT or of its acknowledgement, the counter one a session could have:
    a relay that kept session packets and passed probes found them by a random counter
    (one past 2**32: a session's counts from 1)."""
    a = SessionCore.initiate(ALICE, BOB.public, 0)
    [init] = a.outgoing(0)
    b = SessionCore.respond(BOB, init, 0)
    a.send_message(b"x")
    for packet in b.outgoing(0):
        a.receive_packet(packet, 0)
    for packet in a.outgoing(10):
        b.receive_packet(packet, 10)
    ack = min(b.outgoing(20), key=len)
    for _ in range(64):
        init_shaped, ack_shaped = probe_packet(init_shaped=True), probe_packet(init_shaped=False)
        assert (len(init_shaped), init_shaped[0]) == (len(init), init[0])
        assert (len(ack_shaped), ack_shaped[0]) == (len(ack), ack[0])
        assert 1 <= int.from_bytes(ack_shaped[9:17], "big") <= PROBE_COUNTERS
    assert int.from_bytes(ack[9:17], "big") <= PROBE_COUNTERS
