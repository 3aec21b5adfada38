"""What a relay decides, sans-I/O: it forwards path cells, terminates paths, hands
payloads between paths, stores introsets and, as a path's exit, hands requests to servers.

:class:`RelayCore` is the whole protocol: ``receive(link, bytes, now_ms)`` returns
``(link, bytes)`` pairs to send, and :meth:`RelayCore.take_exit_calls` the requests to hand
to servers (:class:`ExitCall`) when this relay is a path's exit. Links are opaque names
chosen by the driver (:mod:`overlay.relay`): ``"in:N"`` for connections that reached us,
``"out:ADDRESS"`` for the ones it opened. Anything that does not parse, authenticate or
belong is dropped and counted in :class:`RelayStats`; one bad cell never affects other
paths.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .cells import CellError, CellKind, decode_cell, frame_payload, make_cell, unframe_payload
from .constants import (
    DHT_PENDING_MAX,
    DHT_REQUEST_TIMEOUT_MS,
    EXIT_MAX_MESSAGE_BYTES,
    EXIT_TIMEOUT_MS,
    PATH_ID_BYTES,
)
from .contact import Contact, verified_directory
from .dht import IntrosetStore
from .exits import (
    ExitCaps,
    ExitStatus,
    Reassembly,
    RepeatedFragment,
    decode_exit_request,
    encode_exit_reply,
    peer_host,
)
from .keys import KeyPair
from .onion import (
    LayerError,
    LayerOpener,
    LayerSealer,
    PathBroken,
    RecordError,
    ReplayedLayer,
    layer_bytes,
    open_build_frame,
    pad_body,
)
from .payloads import (
    Built,
    Deliver,
    DhtRequest,
    DhtResult,
    ExitReply,
    ExitRequest,
    PathPayload,
    Ping,
    Pong,
    Transfer,
    decode_payload,
    exit_fragments,
)
from .transit import TransitBook, TransitCaps

logger = logging.getLogger(__name__)

Send = tuple[str, bytes]
#: Which server a requested exit address names: the address to reach it at, or None (not
#: a server this exit may reach). Pure; see :class:`Exit`.
ExitRoute = Callable[[str], str | None]


@dataclass(frozen=True)
class ExitCall:
    """Hand ``body`` to the server at ``address``, then report what came back (or that
    nothing did) with :meth:`RelayCore.exit_done` and ``token``."""

    token: bytes
    address: str
    body: bytes


@dataclass
class RelayStats:
    """What a relay did and what it refused; drops are by reason."""

    builds: int = 0
    forwarded: int = 0
    transfers: int = 0
    dht_requests: int = 0
    dropped_malformed: int = 0
    dropped_unknown_path: int = 0
    dropped_replay: int = 0
    dropped_tampered: int = 0
    dropped_wrong_link: int = 0
    dropped_unknown_relay: int = 0
    dropped_queue_full: int = 0
    #: Cells that came after a lost one: each tore its path down (see PathBroken).
    dropped_gap: int = 0
    #: Exit requests handed to servers, and those that failed (no answer in time, an
    #: unreachable server, a reply over ``EXIT_MAX_MESSAGE_BYTES``: the owner is told).
    exits: int = 0
    exit_failures: int = 0
    #: New exit requests refused: this relay is no exit, or the path, its link or the
    #: relay has as many under way as it may (:class:`~overlay.exits.ExitCaps`).
    dropped_exit_refused: int = 0
    #: Whole exit requests naming an address that is no server this exit may reach
    #: (the owner is told; nothing is connected to).
    dropped_exit_address: int = 0
    #: Server replies too large to carry back (the owner gets a failure instead).
    dropped_exit_oversize: int = 0
    #: Builds dropped because this relay keeps as many hops or builds as it may, in all
    #: or for their host (:class:`~overlay.transit.TransitCaps`).
    dropped_transit_full: int = 0

    @property
    def dropped(self) -> int:
        return (
            self.dropped_malformed
            + self.dropped_unknown_path
            + self.dropped_replay
            + self.dropped_tampered
            + self.dropped_wrong_link
            + self.dropped_unknown_relay
            + self.dropped_queue_full
            + self.dropped_gap
            + self.dropped_exit_refused
            + self.dropped_exit_address
            + self.dropped_exit_oversize
            + self.dropped_transit_full
        )


@dataclass(frozen=True)
class SeenCell:
    """A cell as a relay is handed it (see :attr:`RelayCore.observer`): on which link,
    from which address, and when."""

    cell: bytes
    #: This relay's name for the link (``in:N``, ``out:ADDRESS``).
    link: str
    #: The address of the link's other end as the transport reports it (``host:port``,
    #: or a host name on a :class:`~overlay.link.MemoryNetwork`); "" when the driver
    #: gave none.
    peer: str
    now_ms: int


@dataclass
class _Hop:
    forward: LayerOpener
    backward: LayerSealer
    hop_index: int
    expiry_ms: int
    up_link: str
    up_id: bytes
    down_link: str | None
    down_id: bytes
    #: Who is at the other end of ``up_link`` (:func:`~overlay.exits.peer_host`).
    up_host: str


@dataclass
class _Exit:
    """An exit request under way: reassembling (``parts``), or at the server (None)."""

    hop: _Hop
    parts: Reassembly | None
    #: When a request still reassembling is given up (its fragments stopped coming).
    deadline_ms: int


@dataclass
class RelayCore:
    keys: KeyPair
    directory: dict[bytes, Contact]
    stats: RelayStats = field(default_factory=RelayStats)
    store: IntrosetStore = field(default_factory=IntrosetStore)
    #: Sees every cell this relay is handed, as the relay does, with the link and the
    #: address it came from: for audits of what a relay learns (the demo's privacy table,
    #: ``benchmarks/relay_audit.py``), never for routing.
    observer: Callable[[SeenCell], None] | None = None
    #: Forwarded DHT requests kept awaiting an answer, at most (see DHT_PENDING_MAX).
    max_pending_dht: int = DHT_PENDING_MAX
    #: Which servers this relay hands exit requests to (see :class:`Exit`); None: it is
    #: no exit, and refuses them all.
    exit_route: ExitRoute | None = None
    #: Exit requests a path, a link and the relay may have under way at once.
    exit_caps: ExitCaps = field(default_factory=ExitCaps)
    #: Hops and remembered builds the relay keeps, in all and per host.
    transit_caps: TransitCaps = field(default_factory=TransitCaps)
    _upstream: dict[bytes, _Hop] = field(default_factory=dict)
    _downstream: dict[bytes, _Hop] = field(default_factory=dict)
    _intros: dict[bytes, _Hop] = field(default_factory=dict)
    #: The ephemeral key of every build taken → (its path's expiry, its host).
    _seen_builds: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    _transit: TransitBook = field(default_factory=TransitBook)
    #: token → (hop, the endpoint's request id, when to stop waiting), in arrival order
    #: (an OrderedDict: a plain dict's first key slows down as entries leave its front)
    _pending_dht: OrderedDict[bytes, tuple[_Hop, bytes, int]] = field(default_factory=OrderedDict)
    #: (path id ‖ the owner's request id) → the exit request under way.
    _exits: dict[bytes, _Exit] = field(default_factory=dict)
    _exit_calls: list[ExitCall] = field(default_factory=list)

    def receive(self, link: str, data: bytes, now_ms: int, *, peer: str = "") -> list[Send]:
        """What to send for ``data`` received on ``link``; ``peer`` is the address of the
        link's other end (for :attr:`observer`, and the exit caps per host)."""
        if self.observer is not None:
            self.observer(SeenCell(data, link, peer, now_ms))
        try:
            cell = decode_cell(data)
        except CellError:
            self.stats.dropped_malformed += 1
            return []
        try:
            if cell.kind is CellKind.BUILD:
                return self._build(link, cell.id, cell.body, now_ms, peer)
            if cell.kind is CellKind.DATA:
                return self._data(link, cell.id, cell.body, now_ms)
            if cell.kind is CellKind.TRANSFER:
                return self._deliver(cell.id, unframe_payload(cell.body))
            if cell.kind is CellKind.DHT_REQUEST:
                self.stats.dht_requests += 1
                response = self.store.handle(link, unframe_payload(cell.body), now_ms)
                return [
                    (
                        link,
                        make_cell(
                            CellKind.DHT_RESPONSE, cell.id, frame_payload(response, len(cell.body))
                        ),
                    )
                ]
            pending = self._pending_dht.pop(cell.id, None)
            if pending is None or pending[2] <= now_ms:  # its endpoint stopped waiting
                self.stats.dropped_unknown_path += 1
                return []
            hop, request_id, _ = pending
            return self._to_owner(hop, DhtResult(request_id, unframe_payload(cell.body)))
        except RecordError:
            self.stats.dropped_malformed += 1
        except LayerError:
            self.stats.dropped_tampered += 1
        except (CellError, ValueError, IndexError):
            self.stats.dropped_malformed += 1
        except Exception:  # a router drops what it cannot handle; it never stops forwarding
            logger.exception("relay dropped a cell it could not handle")
            self.stats.dropped_malformed += 1
        return []

    def update_directory(self, contacts: list[Contact], now_ms: int) -> None:
        """Replace the relays this relay may forward to (unverifiable contacts are left out).
        The registry that supplies contacts calls this when its list changes."""
        self.directory = verified_directory(contacts, now_ms)

    def expire(self, now_ms: int) -> None:
        """Forget hops and replay-filter entries past their expiry."""
        self._drop_hops(lambda hop: hop.expiry_ms <= now_ms)
        for key in [k for k, (e, _) in self._seen_builds.items() if e <= now_ms]:
            _, host = self._seen_builds.pop(key)
            self._transit.drop_build(host)
        self._expire_pending_dht(now_ms)
        self._expire_exits(now_ms)
        self.store.expire(now_ms)

    def link_lost(self, link: str) -> None:
        """Forget the hops that used a link that broke: their paths are gone."""
        self._drop_hops(lambda hop: link in (hop.up_link, hop.down_link))

    def _drop_hops(self, gone: Callable[[_Hop], bool]) -> None:
        for hop in [h for h in self._upstream.values() if gone(h)]:
            self._forget(hop)

    @property
    def hop_count(self) -> int:
        return len(self._upstream)

    @property
    def exit_count(self) -> int:
        """Exit requests under way (reassembling or at a server)."""
        return len(self._exits)

    def take_exit_calls(self) -> list[ExitCall]:
        """The requests to hand to servers that the cells received so far completed."""
        calls, self._exit_calls = self._exit_calls, []
        return calls

    def exit_done(self, token: bytes, reply: bytes | None) -> list[Send]:
        """The server's ``reply`` to :class:`ExitCall` ``token`` (None: no answer in time
        or none at all), carried back to the path's owner if the path still exists."""
        pending = self._exits.pop(token, None)
        if pending is None:
            return []
        if reply is None:
            self.stats.exit_failures += 1
            message = encode_exit_reply(ExitStatus.FAILED)
        elif len(reply) + 1 > EXIT_MAX_MESSAGE_BYTES:
            self.stats.dropped_exit_oversize += 1
            message = encode_exit_reply(ExitStatus.FAILED)
        else:
            message = encode_exit_reply(ExitStatus.OK, reply)
        return self._exit_answer(pending.hop, token[PATH_ID_BYTES:], message)

    def _exit_answer(self, hop: _Hop, request_id: bytes, message: bytes) -> list[Send]:
        """An exit reply to the owner of ``hop``'s path, if the path still exists."""
        if self._upstream.get(hop.up_id) is not hop:
            return []
        return [
            send
            for fragment in exit_fragments(ExitReply, request_id, message)
            for send in self._to_owner(hop, fragment)
        ]

    @property
    def pending_dht_count(self) -> int:
        """Forwarded DHT requests still awaiting an answer."""
        return len(self._pending_dht)

    # --- cells --------------------------------------------------------------------------

    def _build(self, link: str, path_id: bytes, body: bytes, now_ms: int, peer: str) -> list[Send]:
        """A build for this relay's part of a path: a hop, forwarding the rest of the
        build or, as the last hop, answering the owner; dropped if replayed, malformed,
        naming no known relay, or past :attr:`transit_caps`."""
        ephemeral, record, keys, rest = open_build_frame(body, self.keys.dh, now_ms)
        if ephemeral in self._seen_builds:
            self.stats.dropped_replay += 1
            return []
        if (
            record.upstream_id != path_id
            or path_id in self._upstream
            or record.downstream_id in self._downstream
            or record.downstream_id in self._intros
        ):
            self.stats.dropped_malformed += 1
            return []
        down_link: str | None = None
        if not record.terminal:
            contact = self.directory.get(record.next_hop)
            if contact is None or contact.pubkey == self.keys.public:
                self.stats.dropped_unknown_relay += 1
                return []
            down_link = f"out:{contact.address}"
        host = peer_host(peer, loopback_apart=True) if peer else link
        if not self.transit_caps.admits(self._transit, host, down_link):
            self.stats.dropped_transit_full += 1
            return []
        self._seen_builds[ephemeral] = (record.expiry_ms, host)
        self._transit.add_build(host)
        hop = _Hop(
            *keys.relay_side(),
            record.hop_index,
            record.expiry_ms,
            link,
            path_id,
            down_link,
            record.downstream_id,
            host,
        )
        self._upstream[path_id] = hop
        self._transit.add_hop(host, down_link)
        self.stats.builds += 1
        if down_link is None:
            self._intros[record.downstream_id] = hop
            return self._to_owner(hop, Built())
        self._downstream[record.downstream_id] = hop
        return [(down_link, make_cell(CellKind.BUILD, record.downstream_id, rest))]

    def _data(self, link: str, path_id: bytes, body: bytes, now_ms: int) -> list[Send]:
        hop = self._upstream.get(path_id)
        if hop is not None:
            if hop.up_link != link:
                self.stats.dropped_wrong_link += 1
                return []
            try:
                inner = hop.forward.open(body[: layer_bytes(hop.hop_index)])
            except ReplayedLayer:
                self.stats.dropped_replay += 1
                return []
            except PathBroken:
                self.stats.dropped_gap += 1
                self._forget(hop)
                return []
            if hop.down_link is None:
                return self._terminal(hop, unframe_payload(inner), now_ms)
            self.stats.forwarded += 1
            return [(hop.down_link, make_cell(CellKind.DATA, hop.down_id, pad_body(inner)))]
        hop = self._downstream.get(path_id)
        if hop is None:
            self.stats.dropped_unknown_path += 1
            return []
        if hop.down_link != link:
            self.stats.dropped_wrong_link += 1
            return []
        self.stats.forwarded += 1
        return [self._backward(hop, body[: layer_bytes(hop.hop_index + 1)])]

    def _backward(self, hop: _Hop, inner: bytes) -> Send:
        sealed = hop.backward.seal(inner)
        return hop.up_link, make_cell(CellKind.DATA, hop.up_id, pad_body(sealed))

    def _forget(self, hop: _Hop) -> None:
        """Tear this relay's part of a path down: later cells in either direction are
        dropped as of an unknown path, and the owner finds the path dead by its pings."""
        if self._upstream.get(hop.up_id) is hop:
            del self._upstream[hop.up_id]
            self._transit.drop_hop(hop.up_host, hop.down_link)
        table = self._intros if hop.down_link is None else self._downstream
        if table.get(hop.down_id) is hop:
            del table[hop.down_id]

    def _to_owner(self, hop: _Hop, payload: PathPayload) -> list[Send]:
        framed = frame_payload(payload.encode(), layer_bytes(hop.hop_index + 1))
        return [self._backward(hop, framed)]

    def _terminal(self, hop: _Hop, data: bytes, now_ms: int) -> list[Send]:
        payload = decode_payload(data)
        if isinstance(payload, Ping):
            return self._to_owner(hop, Pong(payload.echo))
        if isinstance(payload, Transfer):
            self.stats.transfers += 1
            if payload.relay == self.keys.public:
                return self._deliver(payload.intro_id, payload.data)
            contact = self.directory.get(payload.relay)
            if contact is None:
                self.stats.dropped_unknown_relay += 1
                return []
            body = frame_payload(payload.data, len(data))
            cell = make_cell(CellKind.TRANSFER, payload.intro_id, body)
            return [(f"out:{contact.address}", cell)]
        if isinstance(payload, DhtRequest):
            if payload.relay == self.keys.public:
                self.stats.dht_requests += 1
                # Counted against the link the path came in by: one neighbour's share.
                response = self.store.handle(hop.up_link, payload.request, now_ms)
                return self._to_owner(hop, DhtResult(payload.request_id, response))
            contact = self.directory.get(payload.relay)
            if contact is None:
                self.stats.dropped_unknown_relay += 1
                return []
            token = os.urandom(PATH_ID_BYTES)
            self._await_dht(token, hop, payload.request_id, now_ms)
            body = frame_payload(payload.request, len(data))
            return [(f"out:{contact.address}", make_cell(CellKind.DHT_REQUEST, token, body))]
        if isinstance(payload, ExitRequest):
            return self._exit_fragment(hop, payload, now_ms)
        raise CellError(f"a relay is not sent {type(payload).__name__} payloads")

    def _exit_fragment(self, hop: _Hop, fragment: ExitRequest, now_ms: int) -> list[Send]:
        """Put an exit request together; once whole, it becomes an :class:`ExitCall` to
        the address :attr:`exit_route` gives for the one it names. A new request past
        :attr:`exit_caps` is refused, and one naming no server this exit may reach; the
        owner is told (BUSY on the first fragment, REFUSED once whole), so it tries
        another path at once. A repeated fragment is a replay. None of these touches
        other requests."""
        token = hop.up_id + fragment.request_id
        pending = self._exits.get(token)
        if pending is None:
            self._expire_exits(now_ms)
            if self.exit_route is None or not self._exit_admitted(hop):
                self.stats.dropped_exit_refused += 1
                if fragment.index != 0:
                    return []  # the owner was answered for the first one
                status = ExitStatus.REFUSED if self.exit_route is None else ExitStatus.BUSY
                return self._exit_answer(hop, fragment.request_id, encode_exit_reply(status))
            pending = self._exits[token] = _Exit(
                hop, Reassembly(fragment.count), now_ms + EXIT_TIMEOUT_MS
            )
        if pending.parts is None:
            self.stats.dropped_replay += 1  # the whole request is at the server already
            return []
        try:
            message = pending.parts.add(fragment)
            if message is None:
                return []
            address, body = decode_exit_request(message)
        except RepeatedFragment:
            self.stats.dropped_replay += 1
            return []
        except CellError:
            del self._exits[token]
            raise
        assert self.exit_route is not None  # admitted above
        server = self.exit_route(address)
        if server is None:
            del self._exits[token]
            self.stats.dropped_exit_address += 1
            refused = encode_exit_reply(ExitStatus.REFUSED)
            return self._exit_answer(hop, fragment.request_id, refused)
        pending.parts = None
        self.stats.exits += 1
        self._exit_calls.append(ExitCall(token, server, body))
        return []

    def _exit_admitted(self, hop: _Hop) -> bool:
        """Whether a new request on ``hop``'s path fits :attr:`exit_caps`."""
        on_path = on_host = 0
        for under_way in self._exits.values():
            on_path += under_way.hop is hop
            on_host += under_way.hop.up_host == hop.up_host
        return self.exit_caps.admits(on_path, on_host, len(self._exits))

    def _expire_exits(self, now_ms: int) -> None:
        """Forget the requests whose fragments stopped coming (those at a server end with
        :meth:`exit_done`, which the driver calls within ``EXIT_TIMEOUT_MS``)."""
        for token in [
            t for t, e in self._exits.items() if e.parts is not None and e.deadline_ms <= now_ms
        ]:
            del self._exits[token]

    def _await_dht(self, token: bytes, hop: _Hop, request_id: bytes, now_ms: int) -> None:
        """Remember where the answer to a forwarded DHT request goes, for as long as its
        endpoint waits for it. A neighbour that never answers would otherwise grow the
        table for ever: past ``max_pending_dht`` the oldest entry, the nearest to giving
        up anyway, makes room, so a flood shortens waits instead of refusing new requests."""
        self._expire_pending_dht(now_ms)
        if len(self._pending_dht) >= self.max_pending_dht:
            self._pending_dht.popitem(last=False)
        self._pending_dht[token] = (hop, request_id, now_ms + DHT_REQUEST_TIMEOUT_MS)

    def _expire_pending_dht(self, now_ms: int) -> None:
        """Forget the DHT requests nobody waits for any more. Entries are in arrival order,
        so the first is the first to expire and each check costs O(1) amortised (a clock
        stepping back only delays expiry; the cap still holds)."""
        while self._pending_dht:
            token = next(iter(self._pending_dht))
            if self._pending_dht[token][2] > now_ms:
                return
            del self._pending_dht[token]

    def _deliver(self, intro_id: bytes, data: bytes) -> list[Send]:
        hop = self._intros.get(intro_id)
        if hop is None:
            self.stats.dropped_unknown_path += 1
            return []
        return self._to_owner(hop, Deliver(data))


# --- Trio driver -----------------------------------------------------------------------------
