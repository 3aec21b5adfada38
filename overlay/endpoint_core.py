"""What an endpoint decides, sans-I/O: which paths it keeps, pings, drops and builds, which
path carries what and which intro its sessions name, when its introsets are republished,
and which answer (a pong, a DHT result, an exit reply put back together from its
fragments) belongs to which question.

:class:`EndpointCore` takes cells and the time in (``now_ms``) and hands typed effects out
(:data:`Effect`); :class:`~overlay.endpoint.Endpoint` is its Trio driver, which owns the
links, the tasks and the waiting, and carries the effects out. Each session keeps its own
core (:class:`~overlay.session.SessionCore`): what reaches this one for a session comes
out as :class:`DeliverPacket`.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from .cells import CellError, CellKind, decode_cell
from .constants import (
    DHT_REQUEST_TIMEOUT_MS,
    EXIT_UNANSWERED_TO_RETIRE,
    INTRO_PROBE_PINGS,
    INTRO_PROBE_TIMEOUT_MS,
    INTRO_PROBES_UNANSWERED_TO_RETIRE,
    INTRO_RETIREMENTS_PER_LIFETIME,
    INTROSET_LIFETIME_MS,
    INTROSET_MAX_INTROS,
    MAX_HOPS,
    MAX_PATH_LIFETIME_MS,
    MIN_HOPS,
    WITHHOLDING_AVOIDED_MS,
)
from .contact import Contact
from .exits import ExitStatus, Reassembly, decode_exit_reply, encode_exit_request
from .introset import Intro
from .onion import LayerError
from .path import Path, PathState, freshest
from .payloads import (
    REQUEST_ID_BYTES,
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
from .session import probe_packet

#: Random bytes that start a measuring ping's echo, so its pong is told from any other.
PING_TOKEN_BYTES = 8

#: The relays, of the Ed25519 keys listed, that this endpoint may enter the overlay
#: through (the first hop of its paths).
EntryFilter = Callable[[Collection[bytes]], frozenset[bytes]]

_ENTRY_SHARE = b"p2ps-entry-share"

#: How many entry relays an :class:`EntryShare` gives each member when the listing holds
#: enough: one alone would leave a device no way into the overlay while that relay is
#: down.
MIN_ENTRY_RELAYS = 2


@dataclass(frozen=True)
class EntryShare:
    """The relays ``member`` may enter the overlay through, so that endpoints which must
    never share an entry relay (the devices of one account, ``members``) do not.

    Each relay belongs to the member whose keyed hash of (relay, member) under ``secret``
    is highest (rendezvous hashing): every member computes the same split from the same
    secret and member keys, relay by relay, and without ``secret`` nobody can tell which
    member owns a relay. Hashing alone leaves some member with no relay at all often
    enough to matter on a small network (with 8 relays and 3 devices, one account in
    nine), and that device could not sync directly; so a member short of
    :data:`MIN_ENTRY_RELAYS` (or of an equal share, when there are fewer) takes, one at a
    time, its best-scoring relay from a member that has more than that.

    That step depends on the whole listing, so members that read different listings
    could both admit a relay it moved. It therefore runs on ``base``, a listing the
    members agreed on (siblings pass the newest listing any of them read, over their
    sessions); relays outside ``base`` go by hash alone, which needs no agreement. With
    no ``base`` it runs on the listing given (measured before ``base`` existed, for one
    relay joining and one member reading it first: 4 % of 2-device accounts on 8 relays,
    28 % of 3-device accounts on 8, shared an entry until both had read it). Use as an
    :data:`EntryFilter`."""

    secret: bytes
    members: frozenset[bytes]
    member: bytes
    base: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        if self.member not in self.members:
            raise ValueError("the member must be one of the members")

    def owners(self, relays: Collection[bytes]) -> dict[bytes, bytes]:
        """relay → the member that may enter through it, for each of ``relays``."""
        balanced = self._balanced(set(relays) if self.base is None else self.base)
        return {
            relay: balanced[relay] if relay in balanced else self._by_hash(relay)
            for relay in sorted(set(relays))
        }

    def _by_hash(self, relay: bytes) -> bytes:
        return max(sorted(self.members), key=lambda member: self._score(relay, member))

    def _balanced(self, relays: Collection[bytes]) -> dict[bytes, bytes]:
        members = sorted(self.members)
        owner = {relay: self._by_hash(relay) for relay in sorted(relays)}
        held: dict[bytes, list[bytes]] = {member: [] for member in members}
        for relay, member in owner.items():
            held[member].append(relay)
        least = min(MIN_ENTRY_RELAYS, len(owner) // len(members))
        while True:
            short = min(members, key=lambda member: (len(held[member]), member))
            spare = [r for r in owner if len(held[owner[r]]) > least]
            if len(held[short]) >= least or not spare:
                return owner
            taken = max(spare, key=lambda relay: (self._score(relay, short), relay))
            held[owner[taken]].remove(taken)
            held[short].append(taken)
            owner[taken] = short

    def _score(self, relay: bytes, member: bytes) -> bytes:
        return hashlib.blake2b(
            relay + member, digest_size=16, key=self.secret, person=_ENTRY_SHARE
        ).digest()

    def __call__(self, relays: Collection[bytes]) -> frozenset[bytes]:
        return frozenset(r for r, owner in self.owners(relays).items() if owner == self.member)

    def or_on_listed(self, relays: Collection[bytes]) -> frozenset[bytes]:
        """This member's share of ``relays``; if dealing on ``base`` leaves it none of
        them (a base whose relays have all left, or an empty base, which deals by hash
        alone, over a short listing), its share dealt on ``relays`` themselves, so that
        it can still enter the overlay."""
        entries = self(relays)
        if entries or self.base is None:
            return entries
        return replace(self, base=None)(relays)


@dataclass
class EndpointStats:
    paths_built: int = 0
    paths_failed: int = 0
    cells_dropped: int = 0
    sessions_opened: int = 0
    sessions_accepted: int = 0
    #: INITs refused because this endpoint had already opened a session for them.
    inits_replayed: int = 0
    #: Authentic INITs refused for their send time: replays, or a clock that is off.
    inits_stale: int = 0
    #: INITs from peers the endpoint takes no sessions from, or past its caps.
    inits_refused: int = 0


@dataclass(frozen=True)
class SendPayload:
    """Wrap ``payload`` for ``path`` and hand it to the path's link (a cell that cannot be
    handed over breaks the path: drop it with :meth:`EndpointCore.drop_path`)."""

    path: Path
    payload: PathPayload


@dataclass(frozen=True)
class BuildPath:
    """Build one more path: pick its hops (:meth:`EndpointCore.choose_hops`), add it
    (:meth:`EndpointCore.add_path`) and open a link to its first hop."""


@dataclass(frozen=True)
class ClosePath:
    """``path`` is dropped: close its link."""

    path: Path


@dataclass(frozen=True)
class PathsChanged:
    """A path was built or died: wake whoever waits for paths, and have every session
    announce where it is reached now."""


@dataclass(frozen=True)
class DeliverPacket:
    """A session packet that another endpoint sent to one of this endpoint's intros."""

    packet: bytes


@dataclass(frozen=True)
class Answered:
    """The question ``token`` (a ping's echo, a DHT request id) has its answer: wake its
    asker."""

    token: bytes


Effect = SendPayload | BuildPath | ClosePath | PathsChanged | DeliverPacket | Answered


@dataclass(frozen=True)
class Republish:
    """Publish the introset under each of ``secrets`` again, then report
    :meth:`EndpointCore.republished`."""

    secrets: tuple[bytes, ...]


@dataclass(frozen=True)
class Route:
    """How a session sends now: along ``path``, naming ``intro`` as where to answer."""

    path: Path
    intro: Intro


@dataclass(frozen=True)
class Question:
    """A ping or a DHT request on its way: ``send`` it, then wait for :class:`Answered`
    with ``token`` until ``deadline_ms`` (None: as long as the asker likes)."""

    token: bytes
    send: SendPayload
    deadline_ms: int | None


@dataclass(frozen=True)
class _Probe:
    """A probe of ``target``'s intro under way: ``packet`` should come back down
    ``target`` by ``deadline_ms``."""

    packet: bytes
    target: Path
    deadline_ms: int


@dataclass
class _DhtWait:
    deadline_ms: int
    response: bytes | None = None


@dataclass
class _ExitWait:
    """An exit request awaiting its reply: the fragments so far (from the first one on,
    which says how many there are), then the reply."""

    parts: Reassembly | None = None
    reply: tuple[ExitStatus, bytes] | None = None


def entries_of(
    relays: Collection[bytes], entry_filter: EntryFilter | None
) -> frozenset[bytes] | None:
    """The relays of ``relays`` a path may start at: None for any (no filter), or those
    ``entry_filter`` admits (paths can be built only if it admits one:
    :func:`paths_possible`)."""
    return None if entry_filter is None else entry_filter(relays)


def paths_possible(relays: Collection[bytes], hops: int, entries: frozenset[bytes] | None) -> bool:
    """Whether paths of ``hops`` relays can be built through ``relays``: there are that
    many, and one of them may start a path (``entries``: those that may, None for any;
    :func:`entries_of`)."""
    return len(relays) >= hops and (entries is None or bool(entries))


class EndpointCore:
    """The decisions of one endpoint with ``paths`` paths of ``hops`` relays picked from
    ``directory`` with ``rng``, starting at ``now_ms``; with ``entry_filter``, the first
    hop of every path is one of the relays it admits (the other hops are not
    restricted). The filter is asked again for every path built, so an endpoint follows
    a change in what it admits (a device that paired with a sibling)."""

    def __init__(
        self,
        directory: dict[bytes, Contact],
        rng: random.Random,
        now_ms: int,
        *,
        hops: int,
        paths: int,
        path_lifetime_ms: int,
        ping_interval_ms: int,
        republish_ms: int,
        entry_filter: EntryFilter | None = None,
    ) -> None:
        if not MIN_HOPS <= hops <= MAX_HOPS:
            raise ValueError(f"hops must be in {MIN_HOPS}..{MAX_HOPS}")
        if len(directory) < hops:
            raise ValueError(f"{hops}-hop paths need at least {hops} verified relay contacts")
        entries = entries_of(directory.keys(), entry_filter)
        if entries is not None and not entries:
            raise ValueError("the entry filter admits none of the relays")
        if not 0 < path_lifetime_ms <= MAX_PATH_LIFETIME_MS:
            raise ValueError(f"path lifetime must be in 1..{MAX_PATH_LIFETIME_MS} ms")
        if not 0 < republish_ms <= INTROSET_LIFETIME_MS // 2:
            raise ValueError(f"republish_ms must be in 1..{INTROSET_LIFETIME_MS // 2}")
        self.stats = EndpointStats()
        self._directory = directory
        self._rng = rng
        self._entry_filter = entry_filter
        #: The relays paths may start at (None: any): what the filter admitted last, of
        #: the listing in use.
        self._entries = entries
        self._hops = hops
        self._path_count = paths
        self._lifetime_ms = path_lifetime_ms
        self._ping_interval_ms = ping_interval_ms
        self._republish_ms = republish_ms
        self._paths: list[Path] = []
        #: The relays of the last path that died young.
        self._avoid: set[bytes] = set()
        #: Its first hop (with an entry filter, the likeliest of them to work: its link
        #: held, unless it is one of the lost entries).
        self._avoid_entry: bytes | None = None
        #: First hops whose link broke under a live path, until a path through one is
        #: built again: with an entry filter, the entries tried last.
        self._lost_entries: set[bytes] = set()
        #: Terminals of paths retired for keeping what they should pass on (exit replies,
        #: what is sent to their intro), and when, until one passes something on or
        #: :data:`WITHHOLDING_AVOIDED_MS` have passed: the next paths end elsewhere while
        #: they can.
        self._withholding: dict[bytes, int] = {}
        self._next_path = 0
        #: The echoes of the pings awaiting their pongs.
        self._pings: set[bytes] = set()
        self._dht: dict[bytes, _DhtWait] = {}
        self._exits: dict[bytes, _ExitWait] = {}
        self._secrets: list[bytes] = []
        #: The intro siblings pick of those last published (None: none published yet).
        self._published_intro: bytes | None = None
        self._republish_at_ms = now_ms + republish_ms
        self._probe_interval_ms = ping_interval_ms * INTRO_PROBE_PINGS
        self._probe: _Probe | None = None
        self._probe_at_ms = now_ms + self._probe_interval_ms
        #: When paths were retired for their intros, within the last path lifetime.
        self._intro_retirements: deque[int] = deque()

    # --- paths ---------------------------------------------------------------------------

    @property
    def directory(self) -> Mapping[bytes, Contact]:
        """The relays paths are built through: pubkey → verified contact."""
        return self._directory

    def update_directory(self, directory: dict[bytes, Contact]) -> bool:
        """Build paths through ``directory`` (verified contacts) from now on: relays come
        and go, and a contact lives a day, so a device that stays up must take the
        listing's current ones. Paths already built keep their relays until they expire
        or die. Refused (False) when it holds too few relays for a path, or no entry the
        entry filter admits: a listing read at a bad moment must not leave the endpoint
        unable to build any."""
        entries = entries_of(directory.keys(), self._entry_filter)
        if not paths_possible(directory.keys(), self._hops, entries):
            return False  # too few, or its entries are all gone: keep the old ones
        self._directory = directory
        self._entries = entries
        self._avoid &= directory.keys()
        self._lost_entries &= directory.keys()
        self._withholding = {k: t for k, t in self._withholding.items() if k in directory}
        return True

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    def choose_hops(self) -> list[Contact]:
        """The relays of the next path: never all of those of a path that died young (we
        cannot tell which of them stopped answering) while enough others remain, and
        first a relay the entry filter admits (one of those of the path that died, if
        it admits no other: the filter is never overridden)."""
        relays = sorted(self._directory.values(), key=lambda c: c.pubkey)
        preferred = [c for c in relays if c.pubkey not in self._avoid]
        pool = preferred if len(preferred) >= self._hops else relays
        if len(pool) < self._hops:
            raise RuntimeError(f"{self._hops} hops need at least {self._hops} relays")
        entries = self._admitted()
        if entries is None:
            return self._terminal_that_passes_on(self._rng.sample(pool, self._hops), pool)
        # The filter is never overridden (a relay it refuses may be a sibling's entry).
        # With every admitted relay on the path that died, its first hop is tried first
        # if its link held (the fault lay further on), one whose link broke last.
        admitted = [c for c in relays if c.pubkey in entries]
        usable = [c for c in admitted if c.pubkey not in self._lost_entries]
        entry = self._rng.choice(
            [c for c in admitted if c in pool]
            or [c for c in usable if c.pubkey == self._avoid_entry]
            or usable
            or admitted
        )
        rest = [c for c in pool if c is not entry]
        if len(rest) < self._hops - 1:
            rest = [c for c in relays if c is not entry]
        return self._terminal_that_passes_on([entry, *self._rng.sample(rest, self._hops - 1)], rest)

    def _terminal_that_passes_on(self, hops: list[Contact], others: list[Contact]) -> list[Contact]:
        """``hops``, unless their terminal (the last) kept what it should have passed on
        and one of ``others`` off the path has not: that one instead (in a small listing
        the relays to avoid leave too few to choose from, and the same one came back)."""
        if hops[-1].pubkey not in self._withholding:
            return hops
        exits = [c for c in others if c not in hops and c.pubkey not in self._withholding]
        return [*hops[:-1], self._rng.choice(exits)] if exits else hops

    def _admitted(self) -> frozenset[bytes] | None:
        """The entries the filter admits now; if it admits none of the listing, those it
        admitted last, so that the endpoint can still build paths."""
        if self._entry_filter is not None:
            self._entries = self._entry_filter(self._directory.keys()) or self._entries
        return self._entries

    def add_path(self, hops: list[Contact], now_ms: int) -> tuple[Path, bytes]:
        """A new path through ``hops``, kept from now on, and the cell that builds it."""
        path, cell = Path.build(hops, now_ms, self._lifetime_ms)
        self._paths.append(path)
        return path, cell

    def keep_paths(self, now_ms: int) -> list[Effect]:
        """Drop the paths found dead and those that enter by a listed relay the entry
        filter no longer admits (one through a relay that left the listing is kept until
        it expires or dies, as :meth:`update_directory` says), ping those due a ping
        (``ping_interval_ms`` after they were last heard from: an unanswered one shows the
        path dead), and build as many as it takes to have ``paths`` not due for
        replacement. While it publishes an introset it probes its intros too
        (:meth:`_keep_probing`)."""
        effects = self._probe_timed_out(now_ms)
        self._withholding = {
            k: t for k, t in self._withholding.items() if now_ms - t < WITHHOLDING_AVOIDED_MS
        }
        entries = self._admitted()
        for path in list(self._paths):
            path.check(now_ms)
            entry = path.hops[0].pubkey
            if path.state is PathState.DEAD:
                effects += self.drop_path(path, now_ms)
            elif entries is not None and entry in self._directory and entry not in entries:
                effects += self._retire(path)  # its entry is a sibling's now
            elif path.state is PathState.ESTABLISHED and now_ms >= path.ping_due_ms(
                self._ping_interval_ms
            ):
                path.ping_sent_ms = now_ms
                effects.append(SendPayload(path, Ping()))
        fresh = sum(not p.needs_replacement(now_ms) for p in self._paths)
        effects += [BuildPath()] * (self._path_count - fresh)
        return effects + self._keep_probing(now_ms)

    def next_check_ms(self, now_ms: int) -> int | None:
        """When :meth:`keep_paths` next has something to do, unless paths change first
        (None: not before they do)."""
        checks = [p.next_check_ms(now_ms, self._ping_interval_ms) for p in self._paths]
        checks.append(self._next_probe_check_ms())
        return min((t for t in checks if t is not None), default=None)

    def drop_path(self, path: Path, now_ms: int) -> list[Effect]:
        """Give ``path`` up. One that dies before it expires makes the next builds avoid
        its relays."""
        if path in self._paths:
            self._paths.remove(path)
            if path.expiry_ms > now_ms:
                self.stats.paths_failed += 1
                self._avoid = {h.pubkey for h in path.hops}
                self._avoid_entry = path.hops[0].pubkey
        path.state = PathState.DEAD
        return [ClosePath(path), PathsChanged()]

    def _retire(self, path: Path) -> list[Effect]:
        """Give up ``path``, which did not fail: it is not counted, nor its relays avoided."""
        self._paths.remove(path)
        path.state = PathState.DEAD
        return [ClosePath(path), PathsChanged()]

    def link_lost(self, path: Path) -> list[Effect]:
        """The link to ``path``'s first hop ended: the path is dead (and dropped by the
        next :meth:`keep_paths`), and its first hop is suspect."""
        if path.state is PathState.DEAD:
            return []
        path.state = PathState.DEAD
        self._lost_entries.add(path.hops[0].pubkey)
        return [PathsChanged()]

    def usable_count(self, now_ms: int) -> int:
        return sum(p.usable(now_ms) for p in self._paths)

    def next_path(self, now_ms: int, avoid: Collection[Path] = ()) -> Path | None:
        """The usable path to send the next packet or request on: each in turn, but none
        of ``avoid`` (the paths a request already failed on)."""
        usable = [p for p in self._paths if p.usable(now_ms) and p not in avoid]
        if not usable:
            return None
        self._next_path += 1
        return usable[self._next_path % len(usable)]

    def exit_path(self, now_ms: int, tried: Collection[Path]) -> Path | None:
        """The path for an exit request's next attempt: a usable one not ``tried`` yet;
        with none, while a path is being built, None (wait for it: the attempt that
        failed may have met a dead path); and with none being built either, a tried one
        again (none will be built while these work)."""
        path = self.next_path(now_ms, tried)
        if path is not None or any(p.state is PathState.BUILDING for p in self._paths):
            return path
        return self.next_path(now_ms)

    def exit_unanswered(self, path: Path, now_ms: int) -> list[Effect]:
        """An exit request on ``path`` got no answer, not even its exit's failure: an exit
        that keeps its answers (its terminal still answers pings), or a path that lost
        them. :data:`EXIT_UNANSWERED_TO_RETIRE` in a row and the path is retired (another
        is built, whose exit is another while one will do), or one such exit would cost
        every request sent its way a timeout."""
        path.exits_unanswered += 1
        if path.exits_unanswered < EXIT_UNANSWERED_TO_RETIRE or path.state is PathState.DEAD:
            return []
        return self._retire_withholding(path, now_ms)

    def exit_answered(self, path: Path) -> None:
        """An exit request on ``path`` was answered (a failure the exit reports counts:
        the exit is doing its job)."""
        path.exits_unanswered = 0
        self._withholding.pop(path.terminal.pubkey, None)

    def _retire_withholding(self, path: Path, now_ms: int) -> list[Effect]:
        """``path``'s terminal keeps what it should pass on: the path is dead (dropped by
        the next :meth:`keep_paths`, which builds another), and the next paths end at
        another relay while one will do."""
        path.state = PathState.DEAD
        self._withholding[path.terminal.pubkey] = now_ms
        return [PathsChanged()]

    def route(self, now_ms: int) -> Route | None:
        """How a session sends now: on the next path in turn, naming the freshest intro
        (see :func:`~overlay.path.freshest`)."""
        path = self.next_path(now_ms)
        if path is None:
            return None
        intro = freshest(self._paths, now_ms) or path
        return Route(path, Intro(intro.terminal.pubkey, intro.intro_id, intro.expiry_ms))

    def intros(self, now_ms: int) -> list[Intro]:
        """The intros of the usable paths."""
        return [
            Intro(p.terminal.pubkey, p.intro_id, p.expiry_ms)
            for p in self._paths
            if p.usable(now_ms)
        ]

    # --- probing its own intros -----------------------------------------------------------
    #
    # Pings show a path's relays hold it; they do not show that its terminal hands on what
    # other endpoints send to the intro it hosts, which is all a sibling relies on. So an
    # endpoint that publishes an introset sends each of its intros in turn, every
    # ``INTRO_PROBE_PINGS`` ping intervals, a probe through another of its paths. One that
    # does not come back in time is sent again at once (by the next of the other paths, so
    # the terminal it leaves by is less likely to be the one at fault), and an intro that
    # leaves ``INTRO_PROBES_UNANSWERED_TO_RETIRE`` in a row retires its path, at most
    # ``INTRO_RETIREMENTS_PER_LIFETIME`` times per path lifetime.

    def _keep_probing(self, now_ms: int) -> list[Effect]:
        """The next probe, if one is due and the endpoint publishes (nobody else learns
        its intros but the peers of its sessions, which find new ones in its packets) and
        has a path for it to leave by besides the one it tests. The next is due within a
        probe interval whether it went or not, at a random point of its second half, and
        takes one of a session packet's shapes at random (:func:`~.session.probe_packet`):
        a relay that passes probes alone must not find them by their time or their looks."""
        if self._probe is not None or now_ms < self._probe_at_ms or not self._secrets:
            return []
        self._probe_at_ms = now_ms + int(self._probe_interval_ms * self._rng.uniform(0.5, 1.0))
        target = self._probe_target(now_ms)
        sender = None if target is None else self.next_path(now_ms, [target])
        if target is None or sender is None:
            return []
        packet = probe_packet(init_shaped=self._rng.random() < 0.5)
        target.probed_ms = now_ms
        self._probe = _Probe(packet, target, now_ms + INTRO_PROBE_TIMEOUT_MS)
        return [SendPayload(sender, Transfer(target.terminal.pubkey, target.intro_id, packet))]

    def _probe_target(self, now_ms: int) -> Path | None:
        """The usable path whose intro is probed next: one whose last probe went
        unanswered, else the one probed longest ago (a new one first)."""
        usable = [p for p in self._paths if p.usable(now_ms)]
        return min(
            usable,
            key=lambda p: (-p.probes_unanswered, -1 if p.probed_ms is None else p.probed_ms),
            default=None,
        )

    def _probe_came_back(self, path: Path) -> list[Effect]:
        """The probe under way came back: if by the path it tests, its intro works."""
        assert self._probe is not None
        if path is not self._probe.target:
            self.stats.cells_dropped += 1  # relays that saw it played it elsewhere
            return []
        path.probes_unanswered = 0
        self._withholding.pop(path.terminal.pubkey, None)
        self._probe = None
        return []

    def _probe_timed_out(self, now_ms: int) -> list[Effect]:
        """The probe under way, once past its deadline, is unanswered: the next goes at
        once to the same intro, or, at the last in a row, its path is retired (a path the
        cap leaves alone waits out a probe interval before the next)."""
        probe = self._probe
        if probe is None or now_ms < probe.deadline_ms:
            return []
        self._probe = None
        target = probe.target
        target.probes_unanswered += 1
        if target.probes_unanswered < INTRO_PROBES_UNANSWERED_TO_RETIRE:
            self._probe_at_ms = now_ms
            return []
        if not target.usable(now_ms) or not self._may_retire_for_intro(now_ms):
            return []
        self._intro_retirements.append(now_ms)
        self._republish_at_ms = min(self._republish_at_ms, now_ms)  # without its intro
        return self._retire_withholding(target, now_ms)

    def _may_retire_for_intro(self, now_ms: int) -> bool:
        """Whether fewer than ``INTRO_RETIREMENTS_PER_LIFETIME`` paths were retired for
        their intros within the last path lifetime."""
        while self._intro_retirements and self._intro_retirements[0] <= now_ms - self._lifetime_ms:
            self._intro_retirements.popleft()
        return len(self._intro_retirements) < INTRO_RETIREMENTS_PER_LIFETIME

    def _next_probe_check_ms(self) -> int | None:
        """When probing next has something to do: the deadline of the probe under way, or
        the next probe while the endpoint publishes."""
        if self._probe is not None:
            return self._probe.deadline_ms
        return self._probe_at_ms if self._secrets else None

    # --- cells in ------------------------------------------------------------------------

    def receive_cell(self, path: Path, data: bytes, now_ms: int) -> list[Effect]:
        """One cell from ``path``'s first hop. Whatever it holds (the terminal hop and any
        endpoint that reaches our intro choose much of it), what does not decode is
        counted and dropped; a reply lost on the way (the path is dead) drops the path."""
        try:
            cell = decode_cell(data)
            if cell.kind is not CellKind.DATA or cell.id != path.first_id:
                raise CellError("not a cell of this path")
            payload = decode_payload(path.unwrap(cell.body, now_ms))
        except (CellError, LayerError):
            self.stats.cells_dropped += 1
            if path.state is PathState.DEAD:
                return self.drop_path(path, now_ms)
            return []
        if isinstance(payload, ExitReply):
            return self._exit_reply(payload)
        if isinstance(payload, Built):
            path.on_built(now_ms)
            self._lost_entries.discard(path.hops[0].pubkey)
            self.stats.paths_built += 1
            return [PathsChanged()]
        if isinstance(payload, Deliver):
            if self._probe is not None and self._probe.packet == payload.data:
                return self._probe_came_back(path)
            return [DeliverPacket(payload.data)]
        if isinstance(payload, Pong):
            if payload.echo in self._pings:
                self._pings.discard(payload.echo)
                return [Answered(payload.echo)]
            return []
        if isinstance(payload, DhtResult):
            wait = self._dht.get(payload.request_id)
            if wait is None or wait.response is not None or now_ms >= wait.deadline_ms:
                return []
            wait.response = payload.response
            return [Answered(payload.request_id)]
        self.stats.cells_dropped += 1  # what only an owner sends
        return []

    # --- questions -----------------------------------------------------------------------

    def ping(self, path: Path, padding_bytes: int = 0) -> Question:
        """A round trip to ``path``'s terminal hop carrying ``padding_bytes`` of filler each
        way; call :meth:`forget_ping` once no longer waiting."""
        echo = os.urandom(PING_TOKEN_BYTES) + bytes(padding_bytes)
        self._pings.add(echo)
        return Question(echo, SendPayload(path, Ping(echo)), None)

    def forget_ping(self, token: bytes) -> None:
        self._pings.discard(token)

    def ask_dht(self, path: Path, relay: bytes, request: bytes, now_ms: int) -> Question:
        """Ask ``relay`` the DHT ``request`` through ``path``; an answer counts until
        ``DHT_REQUEST_TIMEOUT_MS`` from ``now_ms``. :meth:`dht_response` says what it was."""
        request_id = os.urandom(REQUEST_ID_BYTES)
        deadline_ms = now_ms + DHT_REQUEST_TIMEOUT_MS
        self._dht[request_id] = _DhtWait(deadline_ms)
        return Question(
            request_id, SendPayload(path, DhtRequest(request_id, relay, request)), deadline_ms
        )

    def dht_response(self, request_id: bytes) -> bytes | None:
        """The answer to DHT request ``request_id``, or None if none came in time; the
        request is forgotten."""
        wait = self._dht.pop(request_id, None)
        return None if wait is None else wait.response

    def ask_exit(self, path: Path, address: str, body: bytes) -> tuple[bytes, list[Effect]]:
        """Have ``path``'s exit hop hand ``body`` to the server at ``address``: the request
        id (answered by :class:`Answered`) and the fragments to send. Call
        :meth:`exit_reply` once no longer waiting."""
        request_id = os.urandom(REQUEST_ID_BYTES)
        message = encode_exit_request(address, body)
        self._exits[request_id] = _ExitWait()
        return request_id, [
            SendPayload(path, fragment)
            for fragment in exit_fragments(ExitRequest, request_id, message)
        ]

    def exit_reply(self, request_id: bytes) -> tuple[ExitStatus, bytes] | None:
        """What exit request ``request_id`` was answered (None: nothing yet); forgotten."""
        wait = self._exits.pop(request_id, None)
        return None if wait is None else wait.reply

    def _exit_reply(self, fragment: ExitReply) -> list[Effect]:
        """One fragment of an exit reply: only for a request still awaited, each fragment
        once, bounded by :class:`Reassembly`; anything else is dropped and counted."""
        wait = self._exits.get(fragment.request_id)
        if wait is None or wait.reply is not None:
            self.stats.cells_dropped += 1
            return []
        if wait.parts is None:
            wait.parts = Reassembly(fragment.count)
        try:
            message = wait.parts.add(fragment)
            if message is None:
                return []
            wait.reply = decode_exit_reply(message)
        except CellError:
            self.stats.cells_dropped += 1
            return []
        return [Answered(fragment.request_id)]

    # --- introsets -----------------------------------------------------------------------

    def publish_under(self, secret: bytes) -> None:
        """Keep the introset for the siblings sharing ``secret`` republished."""
        if secret not in self._secrets:
            self._secrets.append(secret)

    @property
    def secrets(self) -> list[bytes]:
        return list(self._secrets)

    def introset_intros(self, now_ms: int) -> list[Intro]:
        """The intros to publish now (the freshest ``INTROSET_MAX_INTROS``), remembered as
        those published."""
        intros = sorted(self.intros(now_ms), key=lambda i: -i.expiry_ms)[:INTROSET_MAX_INTROS]
        self._published_intro = intros[0].intro_id if intros else None
        return intros

    def keep_introsets(self, now_ms: int) -> Republish | None:
        """Republish every ``republish_ms``, and as soon as the published intro that
        siblings pick (the one that lives longest: :func:`~overlay.session.freshest_intro`)
        stops working, its path dead or replaced, so that they never look up a dead intro
        for long. Another published intro that goes changes nothing a sibling does, nor
        does a path that is merely added: both go out with the next republish. Endpoints
        replace each path shortly before it expires, so this is one republish per path
        lifetime, not one per path replaced."""
        live = {i.intro_id for i in self.intros(now_ms)}
        died = (
            bool(live) and self._published_intro is not None and self._published_intro not in live
        )
        if died or now_ms >= self._republish_at_ms:
            return Republish(tuple(self._secrets))
        return None

    @property
    def republish_at_ms(self) -> int:
        """When :meth:`keep_introsets` republishes unless paths change first."""
        return self._republish_at_ms

    def republished(self, now_ms: int) -> None:
        """A :class:`Republish` is done: the next is due ``republish_ms`` from now."""
        self._republish_at_ms = now_ms + self._republish_ms
