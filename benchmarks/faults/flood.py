"""A flood against one service node: its memory must stay bounded, honest clients served.

:func:`run_flood` runs three phases against one node process of a running
:class:`~.cluster.Cluster` — *before* (a baseline), *during* (the flood) and *after* —
while an honest client on one long-lived connection stores and reads back at a modest
pace, and the node's resident set size (``VmRSS``) is sampled every ``RSS_EVERY_S``.

During the flood, several attackers hit the node at once (:class:`AttackPlan`):

* **held** — connections opened and held, more than ``ServerLimits.max_connections``;
  refused ones retry, so the connection table stays full;
* **churn** — connections opened, asked one thing and dropped, as fast as they go;
* **silent** — TCP connections that never start the WebSocket handshake;
* **pipeline** — connections sending signed retrieves of ~94 KB pages without ever
  reading a reply (the node must stop reading them, not queue replies);
* **oversize** — stores with data over the size limit, and frames over the frame limit;
* **rate** — one connection sending cheap requests as fast as the node takes them.

The attackers run in a child process (``python -m benchmarks.faults.flood``), so their CPU
does not slow the honest client's event loop and its latency is the node's. Each
attacker drives its sockets by hand (wsproto, pre-encoded frames) to push far more than
an :class:`~p2psync.rpc.RpcClient` could, and tallies what the node answered.

The report: baseline, peak and after RSS; the honest client's successes, failures and
p50/p99 per phase; what each attacker did and which error codes (or closes) it got; and
whether every store the honest client saw acknowledged comes back and the node still
answers a new connection once the flood is over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from rich.table import Table
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
)
from wsproto.events import Request as WsRequest
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from overlay import tls
from overlay.addresses import split_host_port
from overlay.tasks import open_task_nursery
from p2psync.clock import Clock
from p2psync.errors import ConnectionLost, DecodeError, RpcError
from p2psync.identity import Identity, session_id_key
from p2psync.rpc import RpcClient, open_rpc
from p2psync.swarm.auth import AuthSigner
from p2psync.swarm.client import open_swarm_client
from p2psync.swarm.constants import DEFAULT_TTL_MS, MAX_DATA_BYTES
from p2psync.swarm.ring import NodeInfo, SwarmMap
from p2psync.urls import split_url
from p2psync.websocket import WebSocketTransport
from p2psync.wire import (
    MAX_FRAME_BYTES,
    ErrorReply,
    Fields,
    Reply,
    Request,
    decode_frame,
    encode_frame,
)

from .cluster import Cluster
from .ledger import NAMESPACE, held_by
from .load import LatencySample
from .process import ServiceProcess, _read_kib

FLOOD_SECONDS = 20.0
BASELINE_S = 5.0
AFTER_S = 5.0
RSS_EVERY_S = 0.5
#: One honest cycle (a store, then a signed retrieve that must bring it) per period.
HONEST_PERIOD_S = 0.05
HONEST_PAYLOAD_BYTES = 200
NEWCOMER_EVERY_S = 1.0
#: An honest call slower than this counts as a failure ("timeout").
HONEST_CALL_TIMEOUT_S = 10.0
HONEST_ERRORS = (OSError, ConnectionLost, RpcError, DecodeError)
#: How long the node gets to answer a new connection once the flood is over.
ALIVE_TIMEOUT_S = 10.0
#: Refused or dropped attackers come back after this long.
RETRY_S = 0.5
#: The pipeliners' owner holds this many messages of this size: each retrieve reply
#: is then a full page (the node's 96 KiB limit), the most a small request can cost.
PAGE_MESSAGES = 2
PAGE_MESSAGE_BYTES = 48_000
PIPELINE_BATCH = 16
#: Stores over the data limit an oversize attacker sends before its frame over the limit.
OVERSIZE_STORES = 32
RATE_BATCH = 256
READ_BYTES = 65536
#: An attacker waits this long for its WebSocket (a node busy with the flood may take
#: seconds to accept a connection); then it gives up and tries again.
ATTACK_HANDSHAKE_S = 20.0
#: What a refused or dropped attacker sees; it comes back after ``RETRY_S``.
ATTACK_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    LocalProtocolError,
    RemoteProtocolError,
)
#: Labels of the identities tried when looking for owners the target node serves.
OWNER_LABELS = 10_000
PHASES = ("before", "during", "after")


# --- what runs: the plan ---------------------------------------------------------------


@dataclass(frozen=True)
class AttackPlan:
    """How many of each attacker run at once, for ``seconds``."""

    seconds: float = FLOOD_SECONDS
    seed: int = 0
    held: int = 600
    churners: int = 4
    silent: int = 200
    #: Each pins up to ~7 MiB of replies (outbox, plus a full page per in-flight slot):
    #: eight are more than the node's reply memory, so it has to shed some.
    pipeliners: int = 8
    oversize: int = 2
    rate: int = 1
    #: The identity (``Identity.from_label``) the pipeliners read and oversize stores
    #: name: one the target node serves, found by :func:`run_flood`.
    owner_label: str = ""


@dataclass(frozen=True)
class FloodPlan:
    attack: AttackPlan = field(default_factory=AttackPlan)
    baseline_s: float = BASELINE_S
    after_s: float = AFTER_S
    honest_period_s: float = HONEST_PERIOD_S


# --- the attackers (in the child process) ------------------------------------------------


@dataclass
class Tally:
    """What one kind of attacker did and what the node answered it."""

    connections: int = 0
    #: Connections that never became a WebSocket, by why.
    connect_failures: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    answered: int = 0
    #: Error replies by code.
    refused: dict[str, int] = field(default_factory=dict)
    #: Connections the node closed: ``close <code>`` (a WebSocket close), or ``eof``.
    closed: dict[str, int] = field(default_factory=dict)

    @property
    def replies(self) -> int:
        return self.answered + sum(self.refused.values())

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    def close(self, how: str) -> None:
        self.closed[how] = self.closed.get(how, 0) + 1

    def failed_to_connect(self, reason: str) -> None:
        self.connect_failures[reason] = self.connect_failures.get(reason, 0) + 1

    def count(self, received: Iterable[bytes | CloseConnection]) -> bool:
        """Count replies and closes among what was ``received``; whether the node closed."""
        for item in received:
            if isinstance(item, CloseConnection):
                self.close(f"close {item.code}")
                return True
            try:
                frame = decode_frame(item)
            except DecodeError:
                self.refuse("undecodable reply")
                continue
            if isinstance(frame, ErrorReply):
                self.refuse(frame.code)
            elif isinstance(frame, Reply):
                self.answered += 1
        return False


class RawSocket:
    """A hand-driven WebSocket client: it sends pre-encoded bytes as fast as the socket
    takes them and parses replies only when asked, so one process can flood a node."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self._parts: list[bytes] = []

    def frame(self, payload: bytes) -> bytes:
        return self.ws.send(BytesMessage(data=payload))

    def request(self, rid: int, method: str, params: dict[str, Any]) -> bytes:
        return self.frame(encode_frame(Request(rid, method, params)))

    async def receive(self) -> list[bytes | CloseConnection] | None:
        """The whole messages and the close one read completed (``None``: the socket
        ended without a close)."""
        try:
            data = await self.stream.receive_some(READ_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        try:
            self.ws.receive_data(bytes(data))  # a TLS stream may hand a bytearray
        except RemoteProtocolError:
            return None
        return self._assemble(self.ws.events())

    def _assemble(self, events: Iterable[Event]) -> list[bytes | CloseConnection]:
        received: list[bytes | CloseConnection] = []
        for event in events:
            if isinstance(event, CloseConnection):
                received.append(event)
            elif isinstance(event, BytesMessage):
                self._parts.append(bytes(event.data))
                if event.message_finished:
                    received.append(b"".join(self._parts))
                    self._parts = []
        return received

    async def read_until(self, tally: Tally, replies: int) -> bool:
        """Read until ``replies`` more answers or refusals came; whether the node closed."""
        target = tally.replies + replies
        while tally.replies < target:
            if await self.tally_one_read(tally):
                return True
        return False

    async def tally_one_read(self, tally: Tally) -> bool:
        """Read once and count what came; whether the node closed the connection."""
        received = await self.receive()
        if received is None:
            tally.close("eof")
            return True
        return tally.count(received)

    async def tally_until_closed(self, tally: Tally) -> None:
        while not await self.tally_one_read(tally):
            pass


@asynccontextmanager
async def raw_socket(url: str, tally: Tally, *, handshake: bool = True) -> AsyncIterator[RawSocket]:
    """Open a TCP connection (and, unless told not to, the WebSocket on it, inside TLS
    pinned to the node's key when its url is ``wss://``: a silent socket starts neither);
    ``OSError`` if the node refused it. Counts the connection either way."""
    authority, pin = split_url(url)
    host, port = split_host_port(authority)
    tally.connections += 1
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        tally.failed_to_connect(type(exc).__name__)
        raise
    async with stream:
        ws = WSConnection(ConnectionType.CLIENT)
        carried: trio.abc.Stream = stream
        if handshake:
            carried = await _handshake(stream, ws, authority, pin, tally)
        yield RawSocket(carried, ws)


async def _handshake(
    stream: trio.SocketStream, ws: WSConnection, authority: str, pin: bytes | None, tally: Tally
) -> trio.abc.Stream:
    """The TLS handshake (with a pin) and the WebSocket one; the stream they carry."""
    reason = "handshake timeout"
    with trio.move_on_after(ATTACK_HANDSHAKE_S):
        try:
            carried = stream if pin is None else await tls.connect_tls(stream, pin)
            await carried.send_all(ws.send(WsRequest(host=authority, target="/")))
            while True:
                data = await carried.receive_some(READ_BYTES)
                if not data:
                    raise OSError("closed during the handshake")
                ws.receive_data(bytes(data))
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return carried
                    if isinstance(event, RejectConnection | RejectData):
                        raise OSError("handshake rejected")
        except (
            OSError,
            trio.BrokenResourceError,
            trio.TooSlowError,
            RemoteProtocolError,
            tls.PeerKeyMismatch,
        ) as exc:
            reason = str(exc) or type(exc).__name__
    tally.failed_to_connect(reason)
    raise OSError(f"no websocket: {reason}")


async def _retrying(attack: Callable[[], Awaitable[None]]) -> None:
    """Run ``attack`` again whenever the node refuses or drops it, after ``RETRY_S``."""
    while True:
        with suppress(*ATTACK_ERRORS):
            await attack()
        await trio.sleep(RETRY_S)


async def hold_one(url: str, tally: Tally) -> None:
    """Open a connection, ask ``info`` (answered: a slot is ours) and hold it until the
    node closes it; a refusal (``unavailable``) comes back after ``RETRY_S``."""
    async with raw_socket(url, tally) as sock:
        await sock.stream.send_all(sock.request(1, "info", {}))
        tally.requests += 1
        answered = tally.answered
        if await sock.read_until(tally, 1) or tally.answered == answered:
            return
        await sock.tally_until_closed(tally)


async def churn_once(url: str, tally: Tally) -> None:
    """Open, ask ``info``, drop: a connection's whole life, as fast as it goes."""
    async with raw_socket(url, tally) as sock:
        await sock.stream.send_all(sock.request(1, "info", {}))
        tally.requests += 1
        await sock.read_until(tally, 1)


async def churn(url: str, tally: Tally) -> None:
    while True:
        try:
            await churn_once(url, tally)
        except ATTACK_ERRORS:
            await trio.sleep(RETRY_S / 10)


async def stay_silent(url: str, tally: Tally) -> None:
    """A TCP connection that never says a word, until the node's handshake timeout."""
    async with raw_socket(url, tally, handshake=False) as sock:
        await sock.tally_until_closed(tally)


async def pipeline_unread(url: str, owner: Identity, clock: Clock, tally: Tally) -> None:
    """Signed retrieves of a full page, sent as fast as the node reads them, never a
    reply read: the node must stop reading rather than queue replies."""
    signer = AuthSigner(owner)
    rid = 0
    async with raw_socket(url, tally) as sock:
        while True:
            batch = []
            for _ in range(PIPELINE_BATCH):
                rid += 1
                params = {
                    "pubkey": owner.session_id,
                    "namespace": NAMESPACE,
                    "last_hash": None,
                    "auth": signer.auth("retrieve", NAMESPACE, clock.now_ms()),
                }
                batch.append(sock.request(rid, "retrieve", params))
            try:
                await sock.stream.send_all(b"".join(batch))
            except trio.BrokenResourceError:
                tally.close("reset")  # dropped by the node: it is never read, so seen here
                return
            tally.requests += PIPELINE_BATCH


async def send_oversize(url: str, owner: Identity, clock: Clock, tally: Tally) -> None:
    """A store whose data is over the limit (answered ``too_large``, the connection goes
    on), repeated; then a frame over the frame limit (the node closes, code 1009)."""
    async with raw_socket(url, tally) as sock:
        for rid in range(1, OVERSIZE_STORES + 1):
            params = _store_params(owner, clock, bytes(MAX_DATA_BYTES + 1024))
            await sock.stream.send_all(sock.request(rid, "store", params))
            tally.requests += 1
            if await sock.read_until(tally, 1):
                return
        tally.requests += 1
        # The node may close before it has taken all of it; its close is read below.
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await sock.stream.send_all(sock.frame(bytes(MAX_FRAME_BYTES + 65536)))
        await sock.tally_until_closed(tally)


async def flood_requests(url: str, tally: Tally) -> None:
    """``info`` requests as fast as the node reads them, on one connection, with every
    reply read and tallied (``rate_limited`` beyond the node's per-connection rate)."""
    async with raw_socket(url, tally) as sock, open_task_nursery() as nursery:
        blob = b"".join(sock.request(rid, "info", {}) for rid in range(RATE_BATCH))

        async def send() -> None:
            try:
                while True:
                    await sock.stream.send_all(blob)
                    tally.requests += RATE_BATCH
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the reader sees why

        nursery.start_soon(send)
        await sock.tally_until_closed(tally)


async def run_attackers(url: str, plan: AttackPlan, started: Callable[[], None]) -> dict[str, Any]:
    """Every attacker of ``plan`` at once for ``plan.seconds``; what each did. The ones
    that need a connection slot to attack start first, then the connection flood."""
    owner = Identity.from_label(plan.owner_label)
    clock = Clock()
    await _fill_page(url, owner, clock)
    tallies = {
        name: Tally() for name in ("pipeline", "rate", "oversize", "held", "churn", "silent")
    }
    started()
    with trio.move_on_after(plan.seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(plan.pipeliners):
                attack = partial(pipeline_unread, url, owner, clock, tallies["pipeline"])
                nursery.start_soon(_retrying, attack)
            for _ in range(plan.rate):
                nursery.start_soon(_retrying, partial(flood_requests, url, tallies["rate"]))
            for _ in range(plan.oversize):
                attack = partial(send_oversize, url, owner, clock, tallies["oversize"])
                nursery.start_soon(_retrying, attack)
            await trio.sleep(RETRY_S)  # let them take their slots before the table fills
            for _ in range(plan.held):
                nursery.start_soon(_retrying, partial(hold_one, url, tallies["held"]))
            for _ in range(plan.churners):
                nursery.start_soon(churn, url, tallies["churn"])
            for _ in range(plan.silent):
                nursery.start_soon(_retrying, partial(stay_silent, url, tallies["silent"]))
    return {name: asdict(tally) for name, tally in tallies.items()}


async def _fill_page(url: str, owner: Identity, clock: Clock) -> None:
    """Give the pipeliners' owner a full page of messages (ordinary, accepted stores)."""
    rng = random.Random(owner.session_id)
    # The attacker speaks whatever the target's url says (plaintext for ws://).
    transport = WebSocketTransport(plain=split_url(url)[1] is None)
    async with open_rpc(transport, url) as rpc:
        for _ in range(PAGE_MESSAGES):
            data = rng.randbytes(PAGE_MESSAGE_BYTES)
            await rpc.call("store", _store_params(owner, clock, data))


def _store_params(owner: Identity, clock: Clock, data: bytes) -> dict[str, Any]:
    return {
        "pubkey": owner.session_id,
        "namespace": NAMESPACE,
        "ttl": DEFAULT_TTL_MS,
        "timestamp": clock.now_ms(),
        "data": data,
    }


def attacker_main() -> None:
    """``python -m benchmarks.faults.flood --target URL --plan JSON``: prints ``flooding``
    when the attack begins and, when it ends, one JSON line of what each attacker did."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults.flood")
    parser.add_argument(
        "--target", required=True, help="wss:// (or plain ws://) url of the node to flood"
    )
    parser.add_argument("--plan", required=True, help="an AttackPlan as JSON")
    args = parser.parse_args()
    plan = AttackPlan(**json.loads(args.plan))

    def started() -> None:
        print("flooding", flush=True)

    tallies = trio.run(run_attackers, args.target, plan, started)
    print(json.dumps(tallies), flush=True)


# --- the honest client and the measurements (in the driver) ------------------------------


class Phases:
    """Which phase the run is in, read by the honest client and the RSS sampler;
    ``on_enter`` hears of each (to show progress)."""

    def __init__(self, on_enter: Callable[[str], None] = lambda phase: None) -> None:
        self.current = PHASES[0]
        self.started = trio.current_time()
        self.began = {PHASES[0]: 0.0}
        self._on_enter = on_enter
        on_enter(self.current)

    def enter(self, phase: str) -> None:
        self.current = phase
        self.began[phase] = round(trio.current_time() - self.started, 2)
        self._on_enter(phase)

    def elapsed(self) -> float:
        return round(trio.current_time() - self.started, 2)


@dataclass
class HonestPhase:
    """What honest clients saw in one phase."""

    stores: int = 0
    retrieves: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    store_latency: LatencySample = field(default_factory=LatencySample)
    retrieve_latency: LatencySample = field(default_factory=LatencySample)
    #: Clients connecting for the first time (see :func:`probe_newcomers`).
    newcomers: Tally = field(default_factory=Tally)
    newcomer_latency: LatencySample = field(default_factory=LatencySample)

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def figures(self) -> dict[str, Any]:
        return {
            "stores": self.stores,
            "retrieves": self.retrieves,
            "failures": dict(self.failures),
            "store_ms": _quantiles(self.store_latency),
            "retrieve_ms": _quantiles(self.retrieve_latency),
            "newcomers": asdict(self.newcomers),
            "newcomer_ms": _quantiles(self.newcomer_latency),
        }


def _quantiles(sample: LatencySample) -> dict[str, float | None]:
    return {"p50": sample.quantile_ms(0.5), "p99": sample.quantile_ms(0.99)}


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, RpcError):
        return exc.code
    if isinstance(exc, ConnectionLost):
        return "connection lost"
    if isinstance(exc, DecodeError):
        return "bad reply"
    return "cannot connect"


class HonestClient:
    """A device's traffic at a modest pace on one long-lived connection to the node (as
    a device keeps one): store a message, then a signed retrieve from its cursor that
    must bring it back. A lost connection is reopened (and counted as a failure)."""

    def __init__(self, url: str, owner: Identity, clock: Clock, seed: int) -> None:
        self.url = url
        self.owner = owner
        self.clock = clock
        self.phases = {phase: HonestPhase() for phase in PHASES}
        self.acknowledged: set[bytes] = set()
        #: Acknowledged stores that the retrieve right after did not bring.
        self.not_read_back = 0
        self._signer = AuthSigner(owner)
        self._random = random.Random(seed)
        self._cursor: bytes | None = None

    async def run(self, transport: WebSocketTransport, phases: Phases, period_s: float) -> None:
        while True:
            try:
                async with open_rpc(transport, self.url) as rpc:
                    await self._cycles(rpc, phases, period_s)
            except HONEST_ERRORS as exc:
                self.phases[phases.current].fail(_failure_reason(exc))
                await trio.sleep(period_s)

    async def _cycles(self, rpc: RpcClient, phases: Phases, period_s: float) -> None:
        next_at = trio.current_time()
        while True:
            await self._cycle(rpc, self.phases[phases.current])
            next_at = max(next_at + period_s, trio.current_time())
            await trio.sleep_until(next_at)

    async def _cycle(self, rpc: RpcClient, phase: HonestPhase) -> None:
        data = self._random.randbytes(HONEST_PAYLOAD_BYTES)
        result = await self._timed(rpc, "store", _store_params(self.owner, self.clock, data), phase)
        if result is None:
            return
        digest = Fields(result, "result").blob("hash", size=32)
        self.acknowledged.add(digest)
        phase.stores += 1
        params = {
            "pubkey": self.owner.session_id,
            "namespace": NAMESPACE,
            "last_hash": self._cursor,
            "auth": self._signer.auth("retrieve", NAMESPACE, self.clock.now_ms()),
        }
        result = await self._timed(rpc, "retrieve", params, phase)
        if result is None:
            return
        phase.retrieves += 1
        hashes = [
            Fields(m, "message").blob("hash", size=32)
            for m in Fields(result, "result").items("messages", max_len=1024)
        ]
        if hashes:
            self._cursor = hashes[-1]
        if digest not in hashes:
            self.not_read_back += 1

    async def _timed(
        self, rpc: RpcClient, method: str, params: dict[str, Any], phase: HonestPhase
    ) -> Any:
        """The call's result, its latency recorded; ``None`` (a failure counted) if it
        was refused or took longer than ``HONEST_CALL_TIMEOUT_S``. A lost connection
        propagates, to be reopened."""
        started = trio.current_time()
        try:
            with trio.fail_after(HONEST_CALL_TIMEOUT_S):
                result = await rpc.call(method, params)
        except trio.TooSlowError:
            phase.fail("timeout")
            return None
        except RpcError as exc:
            phase.fail(exc.code)
            return None
        sample = phase.store_latency if method == "store" else phase.retrieve_latency
        sample.add(trio.current_time() - started)
        return result


async def probe_newcomers(url: str, phases: Phases, honest: dict[str, HonestPhase]) -> None:
    """Every ``NEWCOMER_EVERY_S``, a client that was not connected before opens a
    connection and asks ``info``: while the held connections fill the node's table, it
    is refused (``unavailable``) — the price of a bounded table, and what it looks like."""
    while True:
        phase = honest[phases.current]
        tally = phase.newcomers
        started, answered = trio.current_time(), tally.answered
        with trio.move_on_after(HONEST_CALL_TIMEOUT_S) as deadline, suppress(*ATTACK_ERRORS):
            async with raw_socket(url, tally) as sock:
                await sock.stream.send_all(sock.request(1, "info", {}))
                tally.requests += 1
                await sock.read_until(tally, 1)
        if deadline.cancelled_caught:
            tally.refuse("timeout")
        elif tally.answered > answered:
            phase.newcomer_latency.add(trio.current_time() - started)
        await trio.sleep(NEWCOMER_EVERY_S)


@dataclass(frozen=True)
class RssSample:
    at_s: float
    phase: str
    kib: int


async def sample_rss(pid: int, phases: Phases, samples: list[RssSample]) -> None:
    """``VmRSS`` of ``pid`` every ``RSS_EVERY_S`` (what is resident now, unlike the
    ``VmHWM`` high-water mark soak reports, which cannot show memory being given back)."""
    while True:
        samples.append(RssSample(phases.elapsed(), phases.current, _read_kib(pid, "VmRSS")))
        await trio.sleep(RSS_EVERY_S)


async def _attack_in_child(
    url: str, plan: AttackPlan, log_path: Path, phases: Phases
) -> dict[str, Any]:
    """Run the attackers as ``python -m benchmarks.faults.flood`` (their stderr goes to
    ``log_path``); enter the *during* phase when they start, return their tallies. The
    child ends by itself after ``plan.seconds``, and with this call if it is cancelled."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.faults.flood",
        "--target",
        url,
        "--plan",
        json.dumps(asdict(plan)),
    ]
    async with open_task_nursery() as nursery:
        with log_path.open("ab") as log:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            )
        assert process.stdout is not None
        lines = LineReader(process.stdout)
        first = await lines.line()
        if first != "flooding":
            raise RuntimeError(f"the attacker process said {first!r} (see {log_path})")
        phases.enter("during")
        report = await lines.line()
        await process.wait()
    if process.returncode != 0 or not report:
        raise RuntimeError(f"the attacker process failed (see {log_path})")
    tallies: dict[str, Any] = json.loads(report)
    return tallies


class LineReader:
    """Lines of a child's stdout, one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def line(self) -> str:
        """The next line, stripped; ``""`` once the stream has ended."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                return ""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace").strip()


# --- the run and its report ----------------------------------------------------------------


@dataclass
class FloodReport:
    target: str
    seconds: float
    phases_began_s: dict[str, float]
    rss: list[RssSample]
    #: The node's ``VmHWM`` once the flood is over: catches a peak between samples (but
    #: also counts whatever came before the baseline, from the process's start on).
    hwm_kib: int
    honest: dict[str, HonestPhase]
    attack: dict[str, Any]
    acknowledged: int
    #: Acknowledged honest stores the node does not return once the flood is over.
    unretrievable: int
    not_read_back: int
    alive_after: bool

    def rss_kib(self, phase: str) -> list[int]:
        return [s.kib for s in self.rss if s.phase == phase and s.kib]

    @property
    def baseline_kib(self) -> int:
        return int(statistics.median(self.rss_kib("before") or [0]))

    @property
    def peak_kib(self) -> int:
        return max(self.rss_kib("during") + self.rss_kib("after"), default=0)

    @property
    def after_kib(self) -> int:
        return (self.rss_kib("after") or [0])[-1]

    @property
    def held(self) -> bool:
        """The invariants: the node still answers, nothing acknowledged went missing."""
        return self.alive_after and self.unretrievable == 0

    def latency_ratios(self) -> dict[str, float | None]:
        """During ÷ before, per call and quantile."""
        before, during = self.honest["before"].figures(), self.honest["during"].figures()
        ratios: dict[str, float | None] = {}
        for call in ("store_ms", "retrieve_ms"):
            for q in ("p50", "p99"):
                base, flood = before[call][q], during[call][q]
                ratio = round(flood / base, 2) if base and flood is not None else None
                ratios[f"{call.removesuffix('_ms')}_{q}"] = ratio
        return ratios

    def figures(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "seconds": self.seconds,
            "phases_began_s": self.phases_began_s,
            "rss_mib": {
                "baseline": _mib(self.baseline_kib),
                "peak": _mib(self.peak_kib),
                "after": _mib(self.after_kib),
                "growth": _mib(self.peak_kib - self.baseline_kib),
                "high_water_mark": _mib(self.hwm_kib),
            },
            "rss_samples": [[s.at_s, s.phase, s.kib] for s in self.rss],
            "honest": {phase: h.figures() for phase, h in self.honest.items()},
            "latency_during_over_before": self.latency_ratios(),
            "attack": self.attack,
            "acknowledged": self.acknowledged,
            "unretrievable": self.unretrievable,
            "not_read_back": self.not_read_back,
            "alive_after": self.alive_after,
            "held": self.held,
        }


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def served_label(swarms: SwarmMap, node: NodeInfo, prefix: str) -> str:
    """The first label ``f"{prefix}/{i}"`` whose identity's swarm ``node`` is in."""
    for i in range(OWNER_LABELS):
        label = f"{prefix}/{i}"
        if node in swarms.nodes_for_key(session_id_key(Identity.from_label(label).session_id)):
            return label
    raise RuntimeError(f"no identity among {OWNER_LABELS} is served by {node.url}")


async def answers_new_connection(transport: WebSocketTransport, url: str) -> bool:
    """Whether the node answers ``info`` on a connection opened now."""
    with trio.move_on_after(ALIVE_TIMEOUT_S):
        try:
            async with open_rpc(transport, url) as rpc:
                await rpc.call("info", {})
        except HONEST_ERRORS:
            return False
        return True
    return False


async def run_flood(
    cluster: Cluster,
    target: ServiceProcess,
    plan: FloodPlan | None = None,
    *,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> FloodReport:
    """The three phases against ``target`` (see the module docstring), then the checks:
    every acknowledged honest store comes back from ``target``, which still answers.
    ``on_phase`` hears of each phase as it begins."""
    plan = plan or FloodPlan()
    swarms = await cluster.swarm_map()
    node = cluster.node_info(target, swarms)
    seed = plan.attack.seed
    honest_owner = Identity.from_label(served_label(swarms, node, f"flood/{seed}/honest"))
    honest = HonestClient(target.url, honest_owner, cluster.clock, seed)
    attack = plan.attack
    if not attack.owner_label:
        label = served_label(swarms, node, f"flood/{seed}/attacker")
        attack = dataclasses.replace(attack, owner_label=label)
    samples: list[RssSample] = []
    phases = Phases(on_phase)
    pid = target.pid
    async with open_task_nursery() as nursery:
        nursery.start_soon(sample_rss, pid, phases, samples)
        nursery.start_soon(honest.run, cluster.transport, phases, plan.honest_period_s)
        nursery.start_soon(probe_newcomers, target.url, phases, honest.phases)
        await trio.sleep(plan.baseline_s)
        log_path = cluster.data_dir / "flood-attackers.log"
        tallies = await _attack_in_child(target.url, attack, log_path, phases)
        phases.enter("after")
        await trio.sleep(plan.after_s)
        nursery.cancel_scope.cancel()
    hwm_kib = _read_kib(pid, "VmHWM")
    alive = target.running and await answers_new_connection(cluster.transport, target.url)
    async with open_swarm_client(cluster.transport, cluster.directory(), cluster.clock) as swarm:
        try:
            held = await held_by(swarm, honest.owner, node)
        except HONEST_ERRORS:
            held = set()
    return FloodReport(
        target.name,
        attack.seconds,
        phases.began,
        samples,
        hwm_kib,
        honest.phases,
        tallies,
        len(honest.acknowledged),
        len(honest.acknowledged - held),
        honest.not_read_back,
        alive,
    )


# --- printing ------------------------------------------------------------------------------


def flood_tables(figures: dict[str, Any]) -> list[Table]:
    """The report of :meth:`FloodReport.figures` as two rich tables: what held, and
    what the attackers did and were answered."""
    return [_held_table(figures), _attack_table(figures["attack"])]


def _held_table(figures: dict[str, Any]) -> Table:
    rss, honest = figures["rss_mib"], figures["honest"]
    table = Table(title=f"flood: {figures['target']} flooded for {figures['seconds']:.0f} s")
    table.add_column("measure")
    for phase in PHASES:
        table.add_column(phase, justify="right")
    table.add_row(
        "node RSS (MiB)",
        f"{rss['baseline']} baseline",
        f"{rss['peak']} peak (+{rss['growth']})",
        f"{rss['after']} (hwm {rss['high_water_mark']})",
    )
    table.add_row("honest stores acknowledged", *(str(honest[p]["stores"]) for p in PHASES))
    table.add_row("honest failures", *(_counts(honest[p]["failures"]) for p in PHASES))
    ratios = figures["latency_during_over_before"]
    for call in ("store", "retrieve"):
        table.add_row(
            f"honest {call} p50 / p99 ms",
            *(_p50_p99(honest[p][f"{call}_ms"]) for p in PHASES),
        )
        table.add_row(
            f"  {call} during ÷ before",
            "",
            f"×{ratios[f'{call}_p50']} / ×{ratios[f'{call}_p99']}",
            "",
        )
    table.add_row(
        "new connections ok / refused", *(_newcomers(honest[p]["newcomers"]) for p in PHASES)
    )
    table.add_row(
        "new connection p50 / p99 ms", *(_p50_p99(honest[p]["newcomer_ms"]) for p in PHASES)
    )
    acknowledged = figures["acknowledged"]
    returned = acknowledged - figures["unretrievable"]
    table.add_row("honest stores returned after", "", "", f"{returned} of {acknowledged}")
    table.add_row("node answers afterwards", "", "", "yes" if figures["alive_after"] else "NO")
    return table


def _attack_table(attack: dict[str, Any]) -> Table:
    table = Table(title="flood: what the attackers did and were answered")
    for column in ("attacker", "conns", "requests", "answered"):
        table.add_column(column, justify="left" if column == "attacker" else "right")
    for column in ("refused (error code)", "closed by node / no websocket"):
        table.add_column(column)
    for name, tally in attack.items():
        ended = _counts(tally["closed"]), _counts(tally["connect_failures"])
        table.add_row(
            name,
            f"{tally['connections']:,}",
            f"{tally['requests']:,}",
            f"{tally['answered']:,}",
            _counts(tally["refused"]),
            " / ".join(ended),
        )
    return table


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items())) or "-"


def _p50_p99(quantiles: dict[str, float | None]) -> str:
    p50, p99 = quantiles["p50"], quantiles["p99"]
    return "-" if p50 is None else f"{p50} / {p99}"


def _newcomers(tally: dict[str, Any]) -> str:
    refused = sum(tally["refused"].values()) + sum(tally["connect_failures"].values())
    return f"{tally['answered']} / {refused}"


if __name__ == "__main__":
    attacker_main()
