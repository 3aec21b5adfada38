"""End-to-end sessions between endpoints, sans-I/O: handshake, encryption, ordered
reliable delivery with acks, retransmission, a bounded window and a clean close.

The handshake is a one-round-trip exchange authenticated by both long-term X25519 keys
(converted from the endpoints' Ed25519 keys) and made fresh by ephemeral keys on both
sides: the initiator's first packet is readable only by the responder, and the session keys
mix all four Diffie-Hellman results, one per direction. As in Noise IK, the initiator's
static key travels encrypted under the ephemeral-static secret, so the relays that carry an
INIT cannot tell who is calling (and cannot link one device's sessions by its key).

``INIT = 1 ‖ session id ‖ e ‖ seal_es(s) ‖ seal_es+ss(sent_ms ‖ intro)``. Every packet names the
sender's current intro (inside the encryption), so either side can rebuild paths mid-session.

A relay on the path can record an INIT and send it again later. The responder cannot answer
a replay usefully (it has no initiator to finish the handshake with), but unchecked it would
open a session that waits out its retries. So the INIT carries its send time under the
authenticated seal, :meth:`SessionCore.respond` refuses one outside
``SESSION_INIT_FRESHNESS_MS`` of the responder's clock, and the endpoint remembers the
ephemeral keys of fresh ones (:class:`InitReplayCache`) until they go stale; both checks
are :class:`SessionAcceptor`'s.

Packets: ``type (1) ‖ session id (8) ‖ ...``. A :class:`SessionCore` takes packets in
(``receive_packet``) and hands packets out (``outgoing``), with ``now_ms`` passed in; the
driver also asks ``next_deadline_ms`` to know when to call ``outgoing`` again.
"""

from __future__ import annotations

import enum
import heapq
import os
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nacl.bindings as sodium

from .constants import (
    MAX_SESSION_MESSAGE_BYTES,
    SESSION_HALF_CLOSED_IDLE_MS,
    SESSION_HANDSHAKE_TIMEOUT_MS,
    SESSION_INIT_FRESHNESS_MS,
    SESSION_INIT_REPLAY_ENTRIES,
    SESSION_INTRO_REFRESH_MS,
    SESSION_LAST_FIN_SENDS,
    SESSION_MAX_RETRIES,
    SESSION_RTO_INITIAL_MS,
    SESSION_RTO_MAX_MS,
    SESSION_RTO_MIN_MS,
    SESSION_STALL_RETRIES,
    SESSION_UNREAD_BYTES,
    SESSION_WINDOW_FRAGMENTS,
)
from .introset import Intro
from .keys import KeyPair, kdf, x25519_of
from .path import MAX_PAYLOAD_BYTES
from .payloads import TRANSFER_HEADER_BYTES

_encrypt = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
_INTRO = struct.Struct(">32s16sQ")
_SEGMENT = struct.Struct(">BII")
_INIT_TIME = struct.Struct(">Q")
SESSION_ID_BYTES = 8
#: Where an INIT or an ACCEPT carries its sender's ephemeral key, in clear (an INIT's
#: identity).
_EPHEMERAL = slice(1 + SESSION_ID_BYTES, 1 + SESSION_ID_BYTES + 32)
#: Where a DATA packet carries its counter, in clear (the nonce; the header is authenticated).
_COUNTER = slice(1 + SESSION_ID_BYTES, 1 + SESSION_ID_BYTES + 8)
#: type, session id, ephemeral key, and the sealed static key.
_INIT_HEADER = 1 + SESSION_ID_BYTES + 32 + 32 + 16
#: Room for a session packet inside a TRANSFER payload.
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES - TRANSFER_HEADER_BYTES
_DATA_OVERHEAD = 1 + SESSION_ID_BYTES + 8 + 16 + _INTRO.size + _SEGMENT.size
_INIT_LENGTH = _INIT_HEADER + _INIT_TIME.size + _INTRO.size + 16
FRAGMENT_BYTES = MAX_PACKET_BYTES - _DATA_OVERHEAD


class SessionError(Exception):
    """The session failed: handshake timeout, peer unreachable, or closed."""


class NotPublished(SessionError):
    """The peer has no live introset under the secret it was looked up by: it is away (or
    has not published yet), rather than unreachable at intros it published."""


class StaleInit(SessionError):
    """An authentic INIT sent too long ago (a replay) or too far ahead (a skewed clock)."""


class NotAdmitted(SessionError):
    """An INIT from a key the responder takes no session from."""


#: Whether the endpoint whose key is given may open a session to us.
Admits = Callable[[bytes], bool]


class PacketType(enum.IntEnum):
    INIT = 1
    ACCEPT = 2
    DATA = 3


class _Flag(enum.IntFlag):
    END = 1  # last fragment of a message
    FIN = 2  # no more messages from this side
    ACK_ONLY = 4


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


def packet_session_id(packet: bytes) -> bytes | None:
    """The session id of a well-formed packet header, else None."""
    if len(packet) < 1 + SESSION_ID_BYTES or packet[0] not in (1, 2, 3):
        return None
    return packet[1 : 1 + SESSION_ID_BYTES]


#: The counters a probe shaped as a session's acknowledgement names, as a session's do
#: (they count up from 1): one far past any session's would tell a probe apart.
PROBE_COUNTERS = 1 << 16


def probe_packet(init_shaped: bool) -> bytes:
    """A packet an endpoint sends its own intro to test it, shaped as a session's INIT
    (a real ephemeral key, the rest random, an INIT's length) or as an acknowledgement
    of a session the relay may not have carried yet (sessions move between intros), with
    a counter a session could have: a relay that keeps session packets and passes probes
    would have to tell them apart by what it sees, and each shape is what that kind of
    session packet shows it. No session takes it (an INIT-shaped one that comes back
    late opens none: its static key is no key's)."""
    if init_shaped:
        header = bytes((PacketType.INIT,)) + os.urandom(SESSION_ID_BYTES)
        header += KeyPair.from_seed(os.urandom(32)).public
        return header + os.urandom(_INIT_LENGTH - len(header))
    counter = 1 + int.from_bytes(os.urandom(8), "big") % PROBE_COUNTERS
    header = bytes((PacketType.DATA,)) + os.urandom(SESSION_ID_BYTES) + counter.to_bytes(8, "big")
    return header + os.urandom(_DATA_OVERHEAD - len(header))


def _pack_intro(intro: Intro | None) -> bytes:
    if intro is None:
        return bytes(_INTRO.size)
    return _INTRO.pack(intro.relay, intro.intro_id, intro.expiry_ms)


def _unpack_intro(data: bytes) -> Intro | None:
    relay, intro_id, expiry_ms = _INTRO.unpack(data)
    return None if relay == bytes(32) else Intro(relay, intro_id, expiry_ms)


def _nonce(counter: int) -> bytes:
    return bytes(16) + counter.to_bytes(8, "big")


@dataclass
class _Inflight:
    segment: bytes
    flags: _Flag
    sent_ms: int
    retries: int = 0


class InitReplayCache:
    """The ephemeral keys of fresh INITs an endpoint accepted, each kept until its INIT
    is too old for :meth:`SessionCore.respond` to take anyway, so memory is bounded by
    the freshness window and ``SESSION_INIT_REPLAY_ENTRIES``."""

    def __init__(self, max_entries: int = SESSION_INIT_REPLAY_ENTRIES) -> None:
        self._max_entries = max_entries
        self._forget_at: dict[bytes, int] = {}
        self._by_expiry: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._forget_at)

    def is_replay(self, packet: bytes, now_ms: int) -> bool:
        """Whether ``packet`` is an INIT whose ephemeral key was admitted before and is
        still fresh: checked on the raw bytes, so a replay costs the responder no
        Diffie-Hellman at all. (One gone stale is refused by :meth:`SessionCore.respond`.)"""
        if len(packet) < _EPHEMERAL.stop or packet[0] != PacketType.INIT:
            return False
        forget_at = self._forget_at.get(packet[_EPHEMERAL])
        return forget_at is not None and now_ms <= forget_at

    def admit(self, core: SessionCore, now_ms: int) -> bool:
        """False if this responder session's INIT was admitted before (a replay)."""
        while self._by_expiry and (
            self._by_expiry[0][0] < now_ms or len(self._by_expiry) >= self._max_entries
        ):
            _, ephemeral = heapq.heappop(self._by_expiry)
            del self._forget_at[ephemeral]
        if core.init_ephemeral in self._forget_at:
            return False
        forget_at = core.init_sent_ms + SESSION_INIT_FRESHNESS_MS
        self._forget_at[core.init_ephemeral] = forget_at
        heapq.heappush(self._by_expiry, (forget_at, core.init_ephemeral))
        return True


class Refused(enum.Enum):
    """Why a packet for no open session opened none."""

    #: An INIT this endpoint already opened a session for, still fresh.
    REPLAYED = "replayed"
    #: An authentic INIT sent outside the freshness window: a replay, or a clock that is off.
    STALE = "stale"
    #: Not an INIT this endpoint can read (tampered, misrouted, or a stray packet).
    UNREADABLE = "unreadable"
    #: An authentic INIT from a key this endpoint takes no sessions from (or no more).
    NOT_ADMITTED = "not admitted"


@dataclass(frozen=True)
class Refusal:
    why: Refused
    #: What the check found (for a stale INIT: when it was sent, against our clock).
    detail: str = ""


class SessionAcceptor:
    """Whether a packet that belongs to no open session opens one, as the responder.

    Anyone who knows an endpoint's intro can send it packets, and the relays on the way
    can send again what they carried, so this is the decision an attacker reaches first:
    a replay is refused on its bytes before any Diffie-Hellman, a stale INIT by its age,
    anything else that does not authenticate is dropped.

    The replay cache is bounded (``SESSION_INIT_REPLAY_ENTRIES``): someone who sends
    that many fresh, authentic INITs (a handshake each, made to our key) evicts the oldest
    still inside the window, and a replay of one of those then opens a session. Such a
    session can never finish its handshake or carry a record; what runs on top must not
    let it stand in for a live one (sibling sync keeps its session until a new one
    carries a record)."""

    def __init__(self, local: KeyPair, admits: Admits = lambda peer: True) -> None:
        """``admits``: whether a peer, by its key, may open a session (asked once the
        INIT shows the key, before the rest of the handshake's work)."""
        self._local = local
        self._replays = InitReplayCache()
        self.admits = admits

    def accept(self, packet: bytes, now_ms: int) -> SessionCore | Refusal:
        if self._replays.is_replay(packet, now_ms):
            return Refusal(Refused.REPLAYED)
        try:
            core = SessionCore.respond(self._local, packet, now_ms, admits=self.admits)
        except NotAdmitted as exc:
            return Refusal(Refused.NOT_ADMITTED, str(exc))
        except StaleInit as exc:
            return Refusal(Refused.STALE, str(exc))
        except SessionError as exc:
            return Refusal(Refused.UNREADABLE, str(exc))
        if not self._replays.admit(core, now_ms):
            return Refusal(Refused.REPLAYED)
        return core


def freshest_intro(intros: Sequence[Intro]) -> Intro:
    """Of a peer's intros, the one to send to: the one that lives longest."""
    return max(intros, key=lambda intro: intro.expiry_ms)


def intros_to_try(intros: Sequence[Intro]) -> list[Intro]:
    """A peer's intros in the order to try them, the freshest first: one whose relay
    keeps what it should deliver answers its own path's pings all the same, so a
    handshake that gets no answer at one is tried at the next."""
    return sorted(intros, key=lambda intro: intro.expiry_ms, reverse=True)


class SessionCore:
    """One end of a session. Construct with :meth:`initiate` or :meth:`respond`."""

    def __init__(self, local: KeyPair, peer: bytes, session_id: bytes, now_ms: int) -> None:
        self.local = local
        self.peer = peer
        self.session_id = session_id
        self.state = SessionState.HANDSHAKE
        self.local_intro: Intro | None = None
        self.peer_intro: Intro | None = None
        self.received: deque[bytes] = deque()
        #: Bytes received and not yet taken, the message being put together included.
        self._unread_bytes = 0
        self.peer_finished = False
        self.failure: str | None = None
        self.ignored_packets = 0
        #: The last :meth:`outgoing` retransmitted a fragment for at least the
        #: ``SESSION_STALL_RETRIES``-th time: the peer may not be at ``peer_intro`` any more.
        self.stalled = False
        #: When the last look-up of the peer's introset began (:meth:`intro_lookup_due`).
        self._intro_looked_up_ms: int | None = None
        self._started_ms = now_ms
        #: When the peer last sent an authentic packet that was new (a replay of an old
        #: one, by a relay on the path, does not count), and that packet's counter.
        self._heard_ms = now_ms
        self._heard_counter = 0
        self._ephemeral = os.urandom(32)
        self._send_key = b""
        self._receive_key = b""
        self._send_counter = 0
        self._init_packet: bytes | None = None
        self._accept_bytes: bytes | None = None
        self._accept_due = False
        self._accept_ephemeral_public = b""
        self._handshake_sent_ms: int | None = None
        #: On a responder: the initiator's ephemeral key and the INIT's send time, the
        #: identity and age of the INIT for :class:`InitReplayCache`.
        self.init_ephemeral = b""
        self.init_sent_ms = now_ms
        # sending
        self._unsent: deque[tuple[bytes, _Flag]] = deque()
        self._inflight: dict[int, _Inflight] = {}
        self._next_seq = 0
        self._fin_queued = False
        self._rto_ms = SESSION_RTO_INITIAL_MS
        self._srtt_ms: float | None = None
        self._resend_due = False
        # receiving
        self._expected = 0
        self._out_of_order: dict[int, tuple[_Flag, bytes]] = {}
        self._partial = bytearray()
        self._ack_due = False

    # --- handshake ------------------------------------------------------------------------

    @classmethod
    def initiate(cls, local: KeyPair, peer: bytes, now_ms: int) -> SessionCore:
        session = cls(local, peer, os.urandom(SESSION_ID_BYTES), now_ms)
        session._init_packet = b""  # built lazily, once local_intro is known
        return session

    def _dh_static(self) -> tuple[bytes, bytes]:
        peer_x = x25519_of(self.peer)
        return peer_x, self.local.dh(peer_x)

    def _build_init(self, now_ms: int) -> bytes:
        # Each key below seals exactly one message (retries resend the same bytes), so a
        # zero nonce is safe; the ephemeral key makes both keys new for every session.
        peer_x, ss = self._dh_static()
        es = bytes(sodium.crypto_scalarmult(self._ephemeral, peer_x))
        header = bytes((PacketType.INIT,)) + self.session_id
        header += bytes(sodium.crypto_scalarmult_base(self._ephemeral))
        header += _encrypt(self.local.public, header, bytes(24), kdf(es, b"p2ps-sess-init-s"))
        key = kdf(es + ss, b"p2ps-sess-init")
        body = _INIT_TIME.pack(now_ms) + _pack_intro(self.local_intro)
        return header + _encrypt(body, header, bytes(24), key)

    @classmethod
    def respond(
        cls, local: KeyPair, packet: bytes, now_ms: int, *, admits: Admits = lambda peer: True
    ) -> SessionCore:
        """The responder side of an INIT packet (raises SessionError if it is not one, or
        if it was sent more than ``SESSION_INIT_FRESHNESS_MS`` away from ``now_ms``;
        :class:`NotAdmitted` if ``admits`` refuses its sender, known after one
        Diffie-Hellman of the four)."""
        if len(packet) != _INIT_LENGTH or packet[0] != PacketType.INIT:
            raise SessionError("not an INIT packet")
        start = _EPHEMERAL.start
        initiator_ephemeral = packet[_EPHEMERAL]
        header = packet[:_INIT_HEADER]
        try:
            es = local.dh(initiator_ephemeral)
            peer = _decrypt(
                header[start + 32 :],
                header[: start + 32],
                bytes(24),
                kdf(es, b"p2ps-sess-init-s"),
            )
        except Exception:
            raise SessionError("INIT does not authenticate") from None
        if not admits(peer):
            raise NotAdmitted(f"no session from {peer[:4].hex()}…")
        try:
            session = cls(local, peer, packet[1:start], now_ms)
            peer_x, ss = session._dh_static()
            body = _decrypt(
                packet[_INIT_HEADER:], header, bytes(24), kdf(es + ss, b"p2ps-sess-init")
            )
        except Exception:
            raise SessionError("INIT does not authenticate") from None
        (sent_ms,) = _INIT_TIME.unpack_from(body)
        if abs(now_ms - sent_ms) > SESSION_INIT_FRESHNESS_MS:
            raise StaleInit(f"INIT sent at {sent_ms} is stale or early at {now_ms}")
        session.init_ephemeral = initiator_ephemeral
        session.init_sent_ms = sent_ms
        session.peer_intro = _unpack_intro(body[_INIT_TIME.size :])
        ee = bytes(sodium.crypto_scalarmult(session._ephemeral, initiator_ephemeral))
        se = bytes(sodium.crypto_scalarmult(session._ephemeral, peer_x))
        session._set_keys(es + ss + ee + se, initiator=False)
        session.state = SessionState.OPEN
        session._accept_ephemeral_public = bytes(sodium.crypto_scalarmult_base(session._ephemeral))
        session._accept_due = True
        return session

    def _set_keys(self, material: bytes, *, initiator: bool) -> None:
        forward = kdf(material, b"p2ps-sess-i2r")
        backward = kdf(material, b"p2ps-sess-r2i")
        self._send_key, self._receive_key = (
            (forward, backward) if initiator else (backward, forward)
        )

    def _on_accept(self, packet: bytes) -> None:
        if self.state is not SessionState.HANDSHAKE or self._init_packet is None:
            return
        header = packet[: _EPHEMERAL.stop]
        responder_ephemeral = packet[_EPHEMERAL]
        peer_x, ss = self._dh_static()
        es = bytes(sodium.crypto_scalarmult(self._ephemeral, peer_x))
        ee = bytes(sodium.crypto_scalarmult(self._ephemeral, responder_ephemeral))
        se = self.local.dh(responder_ephemeral)
        self._set_keys(es + ss + ee + se, initiator=True)
        try:
            intro = _decrypt(packet[len(header) :], header, _nonce(0), self._receive_key)
        except Exception:
            self._send_key = self._receive_key = b""
            return
        self.peer_intro = _unpack_intro(intro) or self.peer_intro
        self.state = SessionState.OPEN
        self._init_packet = None

    # --- application side -------------------------------------------------------------------

    def send_message(self, data: bytes) -> None:
        """Queue a message (fragmented); use :attr:`buffered_fragments` for flow control."""
        if self._fin_queued or self.state in (SessionState.CLOSED, SessionState.FAILED):
            raise SessionError("session is closed for sending")
        if len(data) > MAX_SESSION_MESSAGE_BYTES:
            raise ValueError(f"message of {len(data)} bytes exceeds {MAX_SESSION_MESSAGE_BYTES}")
        chunks = [data[i : i + FRAGMENT_BYTES] for i in range(0, len(data), FRAGMENT_BYTES)]
        chunks = chunks or [b""]
        for index, chunk in enumerate(chunks):
            self._unsent.append((chunk, _Flag.END if index == len(chunks) - 1 else _Flag(0)))

    def close(self) -> None:
        """Send FIN after everything queued; idempotent."""
        if not self._fin_queued and self.state is not SessionState.FAILED:
            self._fin_queued = True
            self._unsent.append((b"", _Flag.FIN))

    @property
    def buffered_fragments(self) -> int:
        return len(self._unsent) + len(self._inflight)

    def announce(self) -> None:
        """Send a packet soon even with nothing to say, so the peer learns our current
        intro (call when this side's paths change)."""
        if self.state is SessionState.OPEN and self._send_key:
            self._ack_due = True

    def intro_lookup_due(self, now_ms: int) -> bool:
        """Whether to look the peer's introset up again now, and if so it counts as begun:
        the session is :attr:`stalled` (the peer may have moved to an intro we were never
        told of) and no look-up began in the last ``SESSION_INTRO_REFRESH_MS``."""
        last = self._intro_looked_up_ms
        if not self.stalled or (last is not None and now_ms - last < SESSION_INTRO_REFRESH_MS):
            return False
        self._intro_looked_up_ms = now_ms
        return True

    def found_intros(self, intros: Sequence[Intro]) -> bool:
        """The peer's introset, as a look-up found it while stalled: move to its freshest
        intro (:meth:`peer_moved`), or, if that is where we send now and stall, to its
        freshest other one (an intro relay that keeps what it should deliver still answers
        its path's pings, so its path lives on). True if it moved."""
        others = [intro for intro in intros if intro != self.peer_intro]
        if not others:
            return False
        self.peer_moved(freshest_intro(others))
        return True

    def peer_moved(self, intro: Intro) -> None:
        """The peer is at ``intro`` now, as found out of band (its introset): send there,
        and resend what is unacknowledged at once rather than after the backed-off timeout,
        since it went to an intro that is gone."""
        self.peer_intro = intro
        self._resend_due = True
        self.announce()

    @property
    def fin_sent(self) -> bool:
        """Our FIN has been handed out at least once (it is last in line when queued)."""
        return self._fin_queued and not self._unsent

    @property
    def all_acknowledged(self) -> bool:
        return not self._unsent and not self._inflight

    @property
    def finished(self) -> bool:
        """Both sides sent FIN and ours was acknowledged (or the session failed)."""
        return self.state is SessionState.FAILED or (
            self._fin_queued and self.peer_finished and not self._unsent and not self._inflight
        )

    # --- packets in -------------------------------------------------------------------------

    def receive_packet(self, packet: bytes, now_ms: int) -> None:
        """Feed one packet with this session's id. Garbage is ignored, never raised."""
        kind = packet[0] if packet else 0
        try:
            if kind == PacketType.ACCEPT:
                self._on_accept(packet)
            elif kind == PacketType.INIT:
                if self._accept_bytes is not None:
                    self._accept_due = True  # our ACCEPT was lost: send the same bytes again
            elif kind == PacketType.DATA and self._receive_key:
                self._on_data(packet, now_ms)
        except Exception:  # anything on the path can forge a header; it is only dropped
            self.ignored_packets += 1

    def _on_data(self, packet: bytes, now_ms: int) -> None:
        header = packet[: _COUNTER.stop]
        counter = int.from_bytes(packet[_COUNTER], "big")
        try:
            plain = _decrypt(packet[len(header) :], header, _nonce(counter), self._receive_key)
        except Exception:
            return
        if counter > self._heard_counter:
            self._heard_counter = counter
            self._heard_ms = max(self._heard_ms, now_ms)
            # Only the newest packet says where the peer is now: an old one a relay plays
            # again would move us back to an intro that is gone.
            self.peer_intro = _unpack_intro(plain[: _INTRO.size]) or self.peer_intro
        if self.state is SessionState.HANDSHAKE:
            self.state = SessionState.OPEN  # DATA proves the peer has our keys
            self._init_packet = None
        flags, seq, ack = _SEGMENT.unpack_from(plain, _INTRO.size)
        data = plain[_INTRO.size + _SEGMENT.size :]
        self._on_ack(ack, now_ms)
        if _Flag.ACK_ONLY in _Flag(flags):
            return
        self._ack_due = True
        if seq < self._expected or seq in self._out_of_order:
            return
        if seq >= self._expected + 4 * SESSION_WINDOW_FRAGMENTS:
            return
        if self._unread_bytes >= SESSION_UNREAD_BYTES:
            return  # not taken, so not acknowledged: the peer waits until we read
        self._out_of_order[seq] = (_Flag(flags), data)
        while self._expected in self._out_of_order:
            flag, chunk = self._out_of_order.pop(self._expected)
            self._expected += 1
            if _Flag.FIN in flag:
                self.peer_finished = True
                continue
            self._partial += chunk
            self._unread_bytes += len(chunk)
            if _Flag.END in flag:
                self.received.append(bytes(self._partial))
                self._partial.clear()

    def take_received(self) -> bytes:
        """The next message received (there must be one), no longer counted as unread."""
        message = self.received.popleft()
        self._unread_bytes -= len(message)
        return message

    def _on_ack(self, ack: int, now_ms: int) -> None:
        for seq in [s for s in self._inflight if s < ack]:
            item = self._inflight.pop(seq)
            if item.retries == 0:
                sample = now_ms - item.sent_ms
                self._srtt_ms = (
                    sample if self._srtt_ms is None else 0.875 * self._srtt_ms + 0.125 * sample
                )
                self._rto_ms = int(
                    min(SESSION_RTO_MAX_MS, max(SESSION_RTO_MIN_MS, 3 * self._srtt_ms))
                )

    # --- packets out ------------------------------------------------------------------------

    def _seal(self, flags: _Flag, seq: int, data: bytes) -> bytes:
        self._send_counter += 1
        header = bytes((PacketType.DATA,)) + self.session_id + self._send_counter.to_bytes(8, "big")
        plain = _pack_intro(self.local_intro) + _SEGMENT.pack(flags, seq, self._expected) + data
        return header + _encrypt(plain, header, _nonce(self._send_counter), self._send_key)

    def outgoing(self, now_ms: int) -> list[bytes]:
        """Packets to send now; call again at :meth:`next_deadline_ms` or after any input."""
        if self.state in (SessionState.FAILED, SessionState.CLOSED):
            return []
        packets: list[bytes] = []
        if self.state is SessionState.HANDSHAKE:
            if now_ms - self._started_ms > SESSION_HANDSHAKE_TIMEOUT_MS:
                self._fail("handshake timed out")
                return []
            if self._init_packet is not None and (
                self._handshake_sent_ms is None or now_ms - self._handshake_sent_ms >= self._rto_ms
            ):
                self._handshake_sent_ms = now_ms
                if not self._init_packet:
                    self._init_packet = self._build_init(now_ms)  # same bytes on every retry
                packets.append(self._init_packet)
            return packets
        if self._accept_due:
            if self._accept_bytes is None:
                header = bytes((PacketType.ACCEPT,)) + self.session_id
                header += self._accept_ephemeral_public
                sealed = _encrypt(_pack_intro(self.local_intro), header, _nonce(0), self._send_key)
                self._accept_bytes = header + sealed
            packets.append(self._accept_bytes)
            self._accept_due = False
        self.stalled = False
        resend, self._resend_due = self._resend_due, False
        for seq, item in self._inflight.items():
            if resend or now_ms - item.sent_ms >= self._rto_ms * (1 << min(item.retries, 4)):
                item.retries += 1
                if item.retries > SESSION_MAX_RETRIES:
                    self._fail("peer stopped acknowledging")
                    return []
                self.stalled |= item.retries >= SESSION_STALL_RETRIES
                item.sent_ms = now_ms
                packets.append(self._seal(item.flags, seq, item.segment))
        while self._unsent and len(self._inflight) < SESSION_WINDOW_FRAGMENTS:
            chunk, flags = self._unsent.popleft()
            seq = self._next_seq
            self._next_seq += 1
            self._inflight[seq] = _Inflight(chunk, flags, now_ms)
            packets.append(self._seal(flags, seq, chunk))
        if self._ack_due and not packets:
            packets.append(self._seal(_Flag.ACK_ONLY, 0, b""))
        self._ack_due = False
        if (
            self._fin_queued
            and self.peer_finished
            and not self._unsent
            and (not self._inflight or self._only_an_unanswered_fin_in_flight())
        ):
            self.state = SessionState.CLOSED
        deadline = self._half_closed_deadline_ms()
        if deadline is not None and now_ms >= deadline:
            self._fail("the peer went quiet without saying goodbye")
        return packets

    def _half_closed_deadline_ms(self) -> int | None:
        """When a session that said goodbye, and had everything acknowledged, gives up
        on a peer that has not said goodbye and has gone quiet: the peer may have crashed,
        or its FIN may have been lost every time it was sent, and nothing else would ever
        end this side (it has nothing to retransmit). It fails rather than closes, since
        the peer never said it was done."""
        if (
            self.state is SessionState.OPEN
            and self._fin_queued
            and not self.peer_finished
            and not self._unsent
            and not self._inflight
        ):
            return self._heard_ms + SESSION_HALF_CLOSED_IDLE_MS
        return None

    def _only_an_unanswered_fin_in_flight(self) -> bool:
        """The peer said goodbye, and our FIN went out ``SESSION_LAST_FIN_SENDS`` times
        and is all that is left unacknowledged. A peer that said goodbye first may leave as
        soon as its own FIN is acknowledged, so nobody will acknowledge ours: waiting out
        ``SESSION_MAX_RETRIES`` kept such a session (and its driver) alive for 9 minutes.
        Should the peer still be there and have missed our FIN (both closed at once and
        every copy was lost), it has nothing left in flight either, and its half-closed
        limit ends it (:meth:`_half_closed_deadline_ms`)."""
        if len(self._inflight) != 1:
            return False
        (item,) = self._inflight.values()
        return bool(item.flags & _Flag.FIN) and item.retries + 1 >= SESSION_LAST_FIN_SENDS

    def next_deadline_ms(self) -> int | None:
        if self.state is SessionState.HANDSHAKE:
            base = (
                self._handshake_sent_ms if self._handshake_sent_ms is not None else self._started_ms
            )
            return min(base + self._rto_ms, self._started_ms + SESSION_HANDSHAKE_TIMEOUT_MS + 1)
        if self._inflight:
            return min(
                item.sent_ms + self._rto_ms * (1 << min(item.retries, 4))
                for item in self._inflight.values()
            )
        return self._half_closed_deadline_ms()

    def _fail(self, reason: str) -> None:
        self.state = SessionState.FAILED
        self.failure = reason
