"""A path as its owner sees it (sans-I/O): build it, wrap outgoing payloads in one layer
per hop, unwrap what comes back, and know when it is built, stale or dead.

Payloads to and from the terminal hop are :class:`Payload` kinds (first byte).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .cells import CellKind, frame_payload, make_cell, unframe_payload
from .constants import (
    DEFAULT_PATH_LIFETIME_MS,
    MAX_HOPS,
    MAX_PATH_LIFETIME_MS,
    MIN_HOPS,
    PATH_BUILD_TIMEOUT_MS,
    PATH_PING_TIMEOUT_MS,
    PATH_REBUILD_MARGIN_MS,
    TERMINAL_PAYLOAD_BYTES,
)
from .contact import Contact
from .onion import (
    BuildRecord,
    LayerOpener,
    LayerSealer,
    PathBroken,
    layer_bytes,
    new_path_id,
    pad_body,
    seal_build_frames,
)

#: Largest payload an endpoint can hand its terminal hop in one cell.
MAX_PAYLOAD_BYTES = TERMINAL_PAYLOAD_BYTES - 2


class Payload(enum.IntEnum):
    """First byte of a payload between a path's owner and its terminal hop."""

    BUILT = 1  # terminal → owner: the path works
    PING = 2
    PONG = 3
    TRANSFER = 4  # owner → terminal: relay pk ‖ intro id ‖ data, for another path's owner
    DELIVER = 5  # terminal → owner: data handed over by another relay
    DHT_REQUEST = 6  # owner → terminal: request id (8) ‖ relay pk ‖ DHT message
    DHT_RESULT = 7  # terminal → owner: request id (8) ‖ DHT response


class PathState(enum.Enum):
    BUILDING = "building"
    ESTABLISHED = "established"
    DEAD = "dead"


@dataclass
class Path:
    """One path of ``len(hops)`` relays, owned by an endpoint."""

    hops: list[Contact]
    #: Per hop, nearest first: the sealer of its outward layer, the opener of its replies.
    sealers: list[LayerSealer]
    openers: list[LayerOpener]
    first_id: bytes
    intro_id: bytes
    created_ms: int
    expiry_ms: int
    state: PathState = PathState.BUILDING
    last_heard_ms: int = 0
    ping_sent_ms: int | None = None
    #: Exit requests on this path in a row that got no answer at all (see
    #: :meth:`~overlay.endpoint_core.EndpointCore.exit_unanswered`).
    exits_unanswered: int = 0
    #: Probes of this path's intro in a row that did not come back, and when it was last
    #: probed (see :meth:`~overlay.endpoint_core.EndpointCore.keep_paths`).
    probes_unanswered: int = 0
    probed_ms: int | None = None

    @classmethod
    def build(
        cls, hops: list[Contact], now_ms: int, lifetime_ms: int = DEFAULT_PATH_LIFETIME_MS
    ) -> tuple[Path, bytes]:
        """A new path and the build cell to send to its first hop."""
        if not MIN_HOPS <= len(hops) <= MAX_HOPS:
            raise ValueError(f"a path has {MIN_HOPS}..{MAX_HOPS} hops")
        if not 0 < lifetime_ms <= MAX_PATH_LIFETIME_MS:
            raise ValueError(f"a path lives at most {MAX_PATH_LIFETIME_MS} ms (relays refuse more)")
        if len({h.pubkey for h in hops}) != len(hops):
            raise ValueError("a relay appears twice in the path")
        ids = [new_path_id() for _ in range(len(hops) + 1)]
        expiry_ms = now_ms + lifetime_ms
        records = [
            BuildRecord(
                upstream_id=ids[i],
                downstream_id=ids[i + 1],
                next_hop=hops[i + 1].pubkey if i + 1 < len(hops) else bytes(32),
                expiry_ms=expiry_ms,
                hop_index=i + 1,
            )
            for i in range(len(hops))
        ]
        body, keys = seal_build_frames(records, [h.x25519 for h in hops])
        sealers, openers = zip(*(k.owner_side() for k in keys), strict=True)
        path = cls(
            hops=list(hops),
            sealers=list(sealers),
            openers=list(openers),
            first_id=ids[0],
            intro_id=ids[-1],
            created_ms=now_ms,
            expiry_ms=expiry_ms,
            last_heard_ms=now_ms,
        )
        return path, make_cell(CellKind.BUILD, ids[0], pad_body(body))

    @property
    def terminal(self) -> Contact:
        return self.hops[-1]

    def wrap(self, payload: bytes) -> bytes:
        """The DATA cell that carries ``payload`` to the terminal hop. Every hop counts
        it, so a cell wrapped and then not sent breaks the path."""
        inner = frame_payload(payload, layer_bytes(len(self.hops) + 1))
        for sealer in reversed(self.sealers):
            inner = sealer.seal(inner)
        return make_cell(CellKind.DATA, self.first_id, inner)

    def unwrap(self, body: bytes, now_ms: int) -> bytes:
        """The payload of a DATA cell that came back along this path (LayerError if not).
        A reply lost on the way (:class:`PathBroken`) leaves the path dead."""
        inner = body
        try:
            for index, opener in enumerate(self.openers):
                inner = opener.open(inner[: layer_bytes(index + 1)])
        except PathBroken:
            self.state = PathState.DEAD
            raise
        self.last_heard_ms = now_ms
        return unframe_payload(inner)

    # --- lifecycle, all decided from ``now_ms`` ------------------------------------------

    def on_built(self, now_ms: int) -> None:
        if self.state is PathState.BUILDING:
            self.state = PathState.ESTABLISHED
        self.last_heard_ms = now_ms

    def usable(self, now_ms: int) -> bool:
        return self.state is PathState.ESTABLISHED and now_ms < self.expiry_ms

    def needs_replacement(self, now_ms: int) -> bool:
        """Dead, or close enough to expiry that a successor should be built now."""
        return self.state is PathState.DEAD or now_ms >= self.expiry_ms - PATH_REBUILD_MARGIN_MS

    def check(self, now_ms: int) -> None:
        """Mark the path dead if its build or its last ping went unanswered."""
        if (
            self.state is PathState.BUILDING and now_ms - self.created_ms > PATH_BUILD_TIMEOUT_MS
        ) or (
            self.state is PathState.ESTABLISHED
            and self.ping_sent_ms is not None
            and self.last_heard_ms < self.ping_sent_ms
            and now_ms - self.ping_sent_ms > PATH_PING_TIMEOUT_MS
        ):
            self.state = PathState.DEAD
        if now_ms >= self.expiry_ms:
            self.state = PathState.DEAD

    def ping_due_ms(self, ping_interval_ms: int) -> int:
        """When an established path is next pinged: ``ping_interval_ms`` after it was last
        heard from or pinged, whichever is later. Any cell that comes back along the path
        (a reply, a sibling's packet to its intro, the build's answer) shows every hop
        still holds it, as a pong would; so a path in use is not pinged at all."""
        return max(self.last_heard_ms, self.ping_sent_ms or 0) + ping_interval_ms

    def next_check_ms(self, now_ms: int, ping_interval_ms: int) -> int | None:
        """When, after ``now_ms``, its keeper next has something to do for this path
        (None: never, it is dead): :meth:`check` a build
        or a ping that may have gone unanswered, send the next ping (:meth:`ping_due_ms`),
        build a successor, or see it expire. The keeper sleeps until
        then (or until paths change) instead of polling: polling every half second was
        most of an idle device's wake-ups."""
        if self.state is PathState.DEAD:
            return None
        deadlines = [self.expiry_ms]
        if self.state is PathState.BUILDING:
            deadlines.append(self.created_ms + PATH_BUILD_TIMEOUT_MS + 1)
        elif self.state is PathState.ESTABLISHED:
            deadlines.append(self.ping_due_ms(ping_interval_ms))
            if self.ping_sent_ms is not None and self.last_heard_ms < self.ping_sent_ms:
                deadlines.append(self.ping_sent_ms + PATH_PING_TIMEOUT_MS + 1)
        # Every deadline above, once passed, changes the path when it is checked (dead,
        # or a ping sent), so one already passed is due now: after a jump of the clock
        # past all of them, waiting only for later ones would leave expired paths in use
        # for ever. The rebuild margin is the exception: once passed, a successor is
        # being built and nothing more is due until expiry.
        if min(deadlines) <= now_ms:
            return now_ms
        rebuild = self.expiry_ms - PATH_REBUILD_MARGIN_MS
        return min(t for t in (*deadlines, rebuild) if t > now_ms)


def freshest(paths: Iterable[Path], now_ms: int) -> Path | None:
    """The usable path that expires last: the one whose intro a session gives its peer.

    Any usable path may carry a packet, but the intro a packet names is where the peer
    sends from then on, possibly long after (an idle session may say nothing for minutes).
    An endpoint builds successors ``PATH_REBUILD_MARGIN_MS`` before its paths expire and
    announces them at once, so the peer learns the new intro while the old one still
    works. Naming a path that is about to expire instead (any of them, in turn) left the
    peer sending to an intro that was gone: endpoints started together expire their paths
    together, each side's announcement then went to the other's dead intro, and the
    session was stuck until a retransmission stalled and the peer's introset was looked
    up again, seconds later."""
    usable = [p for p in paths if p.usable(now_ms)]
    return max(usable, key=lambda p: p.expiry_ms) if usable else None
