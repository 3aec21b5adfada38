"""What the onion relays of a network learn about a user's siblings (issue 17, point 4).

Every cell every relay is handed is recorded with the address of the link it came by and
the time (:meth:`p2psync.services.AnnouncedRelay.observe`), and every request every
server answers with its time and the accounts it names (beside a
:class:`~benchmarks.audit.ServerAudit`, which keeps where it came from). Two checks:

* **(a) Both ends of a sibling session.** A relay that exchanged cells with two sibling
  devices' addresses (the entry hop of paths of both) sees both ends of their session:
  it can match the cells one sends to those the other receives, and so tie the two
  addresses together. :meth:`RelayAudit.relays_seeing_two` counts such relays.
* **(b) Sibling sync in the account's swarm traffic.** Sibling sync shows on relays as
  TRANSFER cells: a session packet handed from one path's terminal relay to the relay the
  peer's path ends at (the one cell kind only sessions use; packets whose two relays are
  one relay are not seen, so this is a lower bound). If the account's requests at one
  server come within ``window_ms`` of such a cell more often than chance predicts, that
  server's log carries the rhythm of sibling sync: whoever also sees when the siblings
  talk (one relay on their paths, a watcher of a device's link) can match the two, and
  the pattern alone (a delete moments after a read) can say that siblings acknowledged.
  :meth:`RelayAudit.timing` counts, per server and method, the account's requests within
  ``window_ms`` either side of a TRANSFER cell, against the count expected if request
  times did not depend on sync times (the share of the active time those windows cover,
  times the requests), with the binomial probability of seeing as many by chance.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from benchmarks.audit import ServerAudit
from overlay.addresses import split_host_port
from overlay.cells import CellKind
from overlay.constants import PATH_PING_INTERVAL_MS
from overlay.relay_core import SeenCell
from p2psync.clock import Clock
from p2psync.network import LocalNetwork
from p2psync.sim.scenario import merged_spans

#: Requests this close to a sibling-sync cell (either side) count as matched: an ack
#: that triggers a delete arrives at its server within a few path latencies.
TIMING_WINDOW_MS = 200
#: A stretch this long with nothing observed is idle (a skipped clock, a device away): it
#: is left out of the time a request could have fallen in by chance.
IDLE_GAP_MS = 10_000


def siblings_apart_ms(paired_ms: int) -> int:
    """When two devices that paired at ``paired_ms`` no longer share an entry relay: each
    endpoint drops its paths through relays its share no longer admits the next time it
    looks at its paths, within a ping interval."""
    return paired_ms + PATH_PING_INTERVAL_MS


@dataclass(frozen=True)
class RelayCell:
    """One cell a relay was handed: from whom (the address of the link's other end, its
    port left out), of which kind (a link label, in clear), and when."""

    relay: str
    peer: str
    kind: int
    at_ms: int


@dataclass(frozen=True)
class TimingMatch:
    """The account's requests one server answered, how many came within the window of a
    sibling-sync cell, how many would by chance, and the probability of at least as many
    by chance (binomial)."""

    server: str
    method: str
    requests: int
    matched: int
    expected: float
    p_value: float


@dataclass
class RelayAudit:
    """Records what the relays and servers of a network see once :meth:`watch` is called."""

    clock: Clock
    cells: list[RelayCell] = field(default_factory=list)
    #: Where every request came from and what it named (see :class:`ServerAudit`) ...
    servers: ServerAudit = field(default_factory=ServerAudit)
    #: ... and when it came, in the same order.
    request_times_ms: list[int] = field(default_factory=list)

    def watch(self, network: LocalNetwork, *also: Callable[[SeenCell], None]) -> None:
        """Watch every relay and server of ``network`` from now on; ``also`` are handed
        every cell too (a relay has one observer)."""
        for relay in network.relays:
            relay.observe(partial(self._cell, relay.address, also))
        self.servers.watch(network)
        for server in network.servers().values():
            server.observe(self._stamp)

    def _cell(
        self, relay: str, also: tuple[Callable[[SeenCell], None], ...], seen: SeenCell
    ) -> None:
        self.cells.append(RelayCell(relay, host_of(seen.peer), seen.cell[0], seen.now_ms))
        for observer in also:
            observer(seen)

    def _stamp(self, method: str, peer: str, params: Mapping[str, Any]) -> None:
        self.request_times_ms.append(self.clock.now_ms())

    def peers(self, since_ms: int = 0) -> dict[str, set[str]]:
        """Each relay's set of addresses it exchanged cells with (from ``since_ms``)."""
        seen: dict[str, set[str]] = {}
        for cell in self.cells:
            if cell.at_ms >= since_ms:
                seen.setdefault(cell.relay, set()).add(cell.peer)
        return seen

    def relays_seeing_two(self, devices: Collection[Collection[str]], since_ms: int = 0) -> int:
        """Relays that exchanged cells with two or more of ``devices`` (each given as the
        addresses its links carry) from ``since_ms`` on: check (a) for siblings, 0 when
        it holds. Devices become siblings when they pair, and before that nothing keeps
        their entry relays apart: count from :func:`siblings_apart_ms` of the pairing."""
        return sum(
            sum(bool(peers & set(device)) for device in devices) >= 2
            for peers in self.peers(since_ms).values()
        )

    def sync_times_ms(self) -> list[int]:
        """When relays were handed sibling-session packets (TRANSFER cells)."""
        return sorted(c.at_ms for c in self.cells if c.kind == CellKind.TRANSFER)

    def account_requests_ms(self, accounts: Collection[str]) -> dict[tuple[str, str], list[int]]:
        """Per server and method, when it answered a request naming one of ``accounts``."""
        found: dict[tuple[str, str], list[int]] = {}
        for observation, at_ms in zip(
            self.servers.observations, self.request_times_ms, strict=True
        ):
            if observation.accounts & set(accounts):
                key = (observation.server, observation.method)
                found.setdefault(key, []).append(at_ms)
        return found

    def timing(
        self, accounts: Collection[str], window_ms: int = TIMING_WINDOW_MS
    ) -> list[TimingMatch]:
        """Check (b) for each server and method that served ``accounts``, least likely by
        chance first."""
        return timing_matches(self.account_requests_ms(accounts), self.sync_times_ms(), window_ms)


def timing_matches(
    requests_ms: Mapping[tuple[str, str], list[int]],
    sync_ms: list[int],
    window_ms: int = TIMING_WINDOW_MS,
) -> list[TimingMatch]:
    """For each (server, method) of ``requests_ms``, how many of its requests fall within
    ``window_ms`` of one of ``sync_ms``, against chance. The windows cover a share of the
    active time (the stretches between consecutive observations, sync or request, no
    longer than ``IDLE_GAP_MS``); a request whose time did not depend on sync would fall
    in them with that probability. Grouped by method as well as server, because a server
    knows which method each request was: a few deletes that always follow sync are not
    hidden among many polls that do not. Least likely by chance first."""
    windows = merged_spans([(t - window_ms, t + window_ms) for t in sync_ms])
    observed = sorted([*sync_ms, *(t for times in requests_ms.values() for t in times)])
    active = merged_spans([(a, b) for a, b in itertools.pairwise(observed) if b - a <= IDLE_GAP_MS])
    total = sum(end - start for start, end in active)
    covered = sum(_overlap(window, span) for window in windows for span in active)
    share = min(1.0, covered / total) if total else 1.0
    starts = [start for start, _ in windows]
    matches = []
    for (server, method), times in requests_ms.items():
        matched = 0
        for t in times:
            index = bisect.bisect_right(starts, t) - 1
            matched += index >= 0 and t <= windows[index][1]
        n = len(times)
        matches.append(
            TimingMatch(server, method, n, matched, n * share, _at_least(matched, n, share))
        )
    return sorted(matches, key=lambda match: match.p_value)


def host_of(peer: str) -> str:
    """A link peer's host (``127.0.0.11:53422`` → ``127.0.0.11``; a pinned relay address
    ``host:port#key`` → ``host``; ``mem:relay3`` → ``relay3``)."""
    bare = peer.partition("#")[0]
    try:
        return split_host_port(bare)[0]
    except ValueError:
        return bare.removeprefix("mem:")


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in logarithms (n may be thousands)."""
    if k <= 0:
        return 1.0
    if p <= 0.0 or k > n:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
        for i in range(k, n + 1)
    )
    return min(1.0, sum(math.exp(term) for term in terms))
