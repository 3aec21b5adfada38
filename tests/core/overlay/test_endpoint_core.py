"""The endpoint's decisions driven directly, with the time passed in: which paths it keeps,
pings, drops and builds, which answers belong to which question, which path and intro a
session uses, when introsets are republished; and the payload codec they speak."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.cells import CellError, decode_cell
from overlay.constants import (
    DEFAULT_PATH_LIFETIME_MS,
    DHT_REQUEST_TIMEOUT_MS,
    INTRO_PROBE_PINGS,
    INTRO_PROBE_TIMEOUT_MS,
    INTRO_RETIREMENTS_PER_LIFETIME,
    INTROSET_LIFETIME_MS,
    INTROSET_REPUBLISH_MS,
    PATH_BUILD_TIMEOUT_MS,
    PATH_ID_BYTES,
    PATH_PING_INTERVAL_MS,
    PATH_PING_TIMEOUT_MS,
    PATH_REBUILD_MARGIN_MS,
    WITHHOLDING_AVOIDED_MS,
)
from overlay.contact import Contact, verified_directory
from overlay.dht import DhtStatus, get_request
from overlay.endpoint_core import (
    Answered,
    DeliverPacket,
    Effect,
    EndpointCore,
    PathsChanged,
    Republish,
    SendPayload,
    entries_of,
    paths_possible,
)
from overlay.path import Path, PathState, Payload
from overlay.payloads import (
    REQUEST_ID_BYTES,
    TRANSFER_HEADER_BYTES,
    Built,
    Deliver,
    DhtRequest,
    DhtResult,
    PathPayload,
    Ping,
    Pong,
    Transfer,
    decode_payload,
)
from tests.core.overlay.test_cores import NOW, Net

SECRET = b"\x05" * 32


def core_over(
    contacts: list[Contact], *, paths: int = 1, republish_ms: int = INTROSET_REPUBLISH_MS
) -> EndpointCore:
    """An endpoint core building ``paths`` 3-hop paths through ``contacts``."""
    return EndpointCore(
        verified_directory(contacts, NOW),
        random.Random(1),
        NOW,
        hops=3,
        paths=paths,
        path_lifetime_ms=DEFAULT_PATH_LIFETIME_MS,
        ping_interval_ms=PATH_PING_INTERVAL_MS,
        republish_ms=republish_ms,
    )


class Harness:
    """An endpoint core whose paths run through relay cores (:class:`Net`)."""

    def __init__(
        self, paths: int = 1, republish_ms: int = INTROSET_REPUBLISH_MS, relays: int = 6
    ) -> None:
        self.net = Net(relays)
        self.core = core_over(self.net.contacts, paths=paths, republish_ms=republish_ms)

    def start_path(self, now_ms: int = NOW) -> Path:
        """A path as the driver starts one for :class:`BuildPath`, its build cell sent."""
        path, cell = self.core.add_path(self.core.choose_hops(), now_ms)
        self.net.inject(path.hops[0].address, cell)
        return path

    def built_path(self, now_ms: int = NOW) -> Path:
        path = self.start_path(now_ms)
        assert self.replies(path, now_ms) == [PathsChanged()]
        return path

    def send(self, effect: Effect) -> None:
        assert isinstance(effect, SendPayload)
        self.net.inject(effect.path.hops[0].address, effect.path.wrap(effect.payload.encode()))

    def replies(self, path: Path, now_ms: int) -> list[Effect]:
        """What the core makes of every cell that came back to the owner."""
        effects = [
            e for cell in self.net.to_owner for e in self.core.receive_cell(path, cell, now_ms)
        ]
        self.net.to_owner.clear()
        return effects

    def keep(self, now_ms: int, *, kept: bool = False) -> tuple[list[Effect], list[Transfer]]:
        """:meth:`EndpointCore.keep_paths` carried out as the driver does (pings and
        probes sent, paths built, each cell that comes back handed to the path it came
        by), but with the probes kept on the way if ``kept``: every effect, and the
        probes sent."""
        effects = self.core.keep_paths(now_ms)
        probes = [
            e.payload
            for e in effects
            if isinstance(e, SendPayload) and isinstance(e.payload, Transfer)
        ]
        for effect in effects:
            if isinstance(effect, SendPayload) and not (kept and is_probe(effect)):
                self.send(effect)
        by_id = {path.first_id: path for path in self.core.paths}
        back = [
            e
            for cell in self.net.to_owner
            for e in self.core.receive_cell(by_id[decode_cell(cell).id], cell, now_ms)
        ]
        self.net.to_owner.clear()
        for _ in range(kinds(effects).count("BuildPath")):
            self.built_path(now_ms)
        return effects + back, probes


def is_probe(effect: Effect) -> bool:
    """Whether ``effect`` sends a probe of one of the endpoint's own intros (the only
    transfers its core sends by itself)."""
    return isinstance(effect, SendPayload) and isinstance(effect.payload, Transfer)


def kinds(effects: list[Effect]) -> list[str]:
    return [type(effect).__name__ for effect in effects]


# --- path keeping -------------------------------------------------------------------------


@dataclass
class KeepCase:
    name: str
    #: Brings the harness to the case's state; returns the time to call keep_paths at.
    setup: Callable[[Harness], int]
    effects: list[str]
    paths_left: int
    paths_failed: int = 0


def _nothing(h: Harness) -> int:
    return NOW


def _fresh(h: Harness) -> int:
    h.built_path()
    return NOW


IDLE = NOW + PATH_PING_INTERVAL_MS


def _not_idle_long_enough(h: Harness) -> int:
    h.built_path()
    return IDLE - 1


def _idle(h: Harness) -> int:
    h.built_path()
    return IDLE


def _pinged(h: Harness) -> int:
    path = h.built_path()
    [ping] = h.core.keep_paths(IDLE)
    h.send(ping)
    h.replies(path, IDLE)
    return IDLE + PATH_PING_INTERVAL_MS - 1


def _heard_from_since(h: Harness) -> int:
    """A DHT answer comes back along the path after the ping's pong: it shows the path
    works as well as a pong would."""
    path = h.built_path()
    [ping] = h.core.keep_paths(IDLE)
    h.send(ping)
    h.replies(path, IDLE)
    h.send(h.core.ask_dht(path, path.terminal.pubkey, get_request(bytes(32)), IDLE + 100).send)
    h.replies(path, IDLE + 100)
    return IDLE + PATH_PING_INTERVAL_MS


def _ping_due(h: Harness) -> int:
    path = h.built_path()
    [ping] = h.core.keep_paths(IDLE)
    h.send(ping)
    h.replies(path, IDLE)
    return IDLE + PATH_PING_INTERVAL_MS


def _ping_unanswered(h: Harness) -> int:
    h.built_path()
    h.core.keep_paths(IDLE)  # the ping is never sent: no pong comes
    return IDLE + PATH_PING_TIMEOUT_MS + 1


def _build_unanswered(h: Harness) -> int:
    h.core.add_path(h.core.choose_hops(), NOW)  # its build cell is lost
    return NOW + PATH_BUILD_TIMEOUT_MS + 1


def _near_expiry(h: Harness) -> int:
    path = h.built_path()
    return path.expiry_ms - PATH_REBUILD_MARGIN_MS


def _expired(h: Harness) -> int:
    path = h.built_path()
    return path.expiry_ms


KEEP_CASES = [
    KeepCase("no paths: build them", _nothing, ["BuildPath"], 0),
    KeepCase("just built (its answer heard): nothing", _fresh, [], 1),
    KeepCase("not idle a whole interval: nothing", _not_idle_long_enough, [], 1),
    KeepCase("idle a whole interval: ping", _idle, ["SendPayload"], 1),
    KeepCase("pinged a moment ago: nothing", _pinged, [], 1),
    KeepCase("heard from after the ping: nothing yet", _heard_from_since, [], 1),
    KeepCase("ping interval over: ping again", _ping_due, ["SendPayload"], 1),
    KeepCase(
        "ping unanswered: drop and rebuild",
        _ping_unanswered,
        ["ClosePath", "PathsChanged", "BuildPath"],
        0,
        paths_failed=1,
    ),
    KeepCase(
        "build unanswered: drop and rebuild",
        _build_unanswered,
        ["ClosePath", "PathsChanged", "BuildPath"],
        0,
        paths_failed=1,
    ),
    KeepCase("near expiry: build its successor", _near_expiry, ["SendPayload", "BuildPath"], 1),
    KeepCase(
        "expired: drop and rebuild, not a failure",
        _expired,
        ["ClosePath", "PathsChanged", "BuildPath"],
        0,
    ),
]


@pytest.mark.parametrize("case", KEEP_CASES, ids=[c.name for c in KEEP_CASES])
def test_keep_paths_decides_from_the_time(case: KeepCase) -> None:
    h = Harness()
    now = case.setup(h)
    effects = h.core.keep_paths(now)
    assert kinds(effects) == case.effects
    assert len(h.core.paths) == case.paths_left
    assert h.core.stats.paths_failed == case.paths_failed
    pings = [e.payload for e in effects if isinstance(e, SendPayload)]
    assert all(isinstance(p, Ping) for p in pings)


def test_the_next_check_is_the_first_thing_due() -> None:
    h = Harness()
    assert h.core.next_check_ms(NOW) is None
    path = h.built_path()
    # heard from when built: the first ping is due an interval later
    assert h.core.next_check_ms(NOW) == IDLE
    [ping] = h.core.keep_paths(IDLE)
    # the ping just sent may go unanswered: look again once it would have timed out
    assert h.core.next_check_ms(IDLE) == IDLE + PATH_PING_TIMEOUT_MS + 1
    h.send(ping)
    assert h.replies(path, IDLE + 20) == []
    # answered: the next ping is due an interval after the pong
    assert h.core.next_check_ms(IDLE + 20) == IDLE + 20 + PATH_PING_INTERVAL_MS


def test_a_check_whose_time_has_passed_is_due_at_once() -> None:
    """The clock may jump past every deadline of a path (a suspended laptop, a skipped
    day): the check is due now, or the keeper would wait for a change that never comes
    while the expired path stays in use."""
    h = Harness()
    path = h.built_path()
    [ping] = h.core.keep_paths(IDLE)
    h.send(ping)
    h.replies(path, IDLE + 20)
    day_later = NOW + 25 * 60 * 60 * 1000
    assert h.core.next_check_ms(day_later) == day_later
    assert kinds(h.core.keep_paths(day_later)) == ["ClosePath", "PathsChanged", "BuildPath"]


def test_inside_the_rebuild_margin_nothing_is_due_before_expiry() -> None:
    h = Harness()
    path = h.built_path()
    [ping] = h.core.keep_paths(IDLE)
    h.send(ping)
    h.replies(path, IDLE + 20)
    late = path.expiry_ms - PATH_REBUILD_MARGIN_MS + 1
    assert kinds(h.core.keep_paths(late)) == ["SendPayload", "BuildPath"]
    h.core.keep_paths(late)  # the successor is under way: only the old path's ping left
    assert h.core.next_check_ms(late) is not None
    assert h.core.next_check_ms(late) > late


def test_paths_are_built_through_the_relays_of_the_latest_listing() -> None:
    """Relays come and go while a device stays up: builds after an update use only the
    relays it names; paths already built keep theirs."""
    h = Harness()
    old_path = h.built_path()
    current = verified_directory(h.net.contacts[3:], NOW)
    assert h.core.update_directory(current)
    for _ in range(20):
        assert {hop.pubkey for hop in h.core.choose_hops()} <= current.keys()
    assert old_path in h.core.paths


def test_a_listing_too_short_for_a_path_is_not_taken() -> None:
    h = Harness()
    before = dict(h.core.directory)
    assert not h.core.update_directory(verified_directory(h.net.contacts[:2], NOW))
    assert h.core.directory == before


def test_builds_avoid_the_relays_of_a_path_that_died_young() -> None:
    h = Harness()
    path = h.built_path()
    assert kinds(h.core.drop_path(path, NOW + 1)) == ["ClosePath", "PathsChanged"]
    assert path.state is PathState.DEAD
    dead = {hop.pubkey for hop in path.hops}
    assert not dead & {hop.pubkey for hop in h.core.choose_hops()}


def test_a_lost_link_kills_its_path_once() -> None:
    h = Harness()
    path = h.built_path()
    assert h.core.link_lost(path) == [PathsChanged()]
    assert h.core.link_lost(path) == []
    assert not path.usable(NOW) and h.core.usable_count(NOW) == 0


def test_sessions_take_paths_in_turn_and_name_the_freshest_intro() -> None:
    h = Harness(paths=2)
    older = h.built_path()
    newer_path, cell = h.core.add_path(h.core.choose_hops(), NOW + 1_000)
    h.net.inject(newer_path.hops[0].address, cell)
    h.replies(newer_path, NOW + 1_000)
    routes = [h.core.route(NOW + 2_000) for _ in range(4)]
    assert [r.path for r in routes if r is not None] == [newer_path, older] * 2
    assert {r.intro.intro_id for r in routes if r is not None} == {newer_path.intro_id}
    assert h.core.route(newer_path.expiry_ms) is None


def test_an_exit_request_goes_again_on_a_tried_path_only_when_none_is_being_built() -> None:
    h = Harness(paths=2)
    first, second = h.built_path(), h.built_path()
    assert h.core.exit_path(NOW, [first]) is second
    assert h.core.exit_path(NOW, [first, second]) in (first, second)
    building = h.start_path()
    assert h.core.exit_path(NOW, [first, second]) is None  # wait for it
    h.replies(building, NOW)
    assert h.core.exit_path(NOW, [first, second]) is building


def test_a_path_whose_exit_leaves_requests_unanswered_twice_in_a_row_is_retired() -> None:
    """An exit that answers its path's pings but never its requests: the second request
    in a row it leaves with no answer retires the path (and the next builds avoid its
    relays, and its terminal as their terminal for a while, not for good: an honest relay
    can be framed); an answer in between, a failure the exit reports included, starts
    again."""
    h = Harness(paths=2)
    path = h.built_path()
    assert h.core.exit_unanswered(path, NOW) == []
    h.core.exit_answered(path)
    assert h.core.exit_unanswered(path, NOW) == []
    assert path.usable(NOW)
    assert h.core.exit_unanswered(path, NOW) == [PathsChanged()]
    assert not path.usable(NOW) and h.core.exit_unanswered(path, NOW) == []
    h.core.keep_paths(NOW)
    assert path.terminal.pubkey not in {hop.pubkey for hop in h.core.choose_hops()}


def test_the_terminal_of_a_path_retired_for_withholding_ends_no_path_for_a_while() -> None:
    """It is left out as a terminal for :data:`WITHHOLDING_AVOIDED_MS`, then may be one
    again (an honest relay framed once was never a terminal again, so nothing it passed
    on could clear it). Another path dying young first, so that its relays, not the
    retired path's, are the ones avoided."""
    h = Harness(paths=2, relays=9)
    path = h.built_path()
    h.core.exit_unanswered(path, NOW)
    assert h.core.exit_unanswered(path, NOW) == [PathsChanged()]
    h.core.keep_paths(NOW)
    h.core.drop_path(h.built_path(), NOW)  # died young: its relays are avoided now
    assert any(path.terminal in h.core.choose_hops() for _ in range(50))  # a hop, not last
    h.core.keep_paths(NOW + WITHHOLDING_AVOIDED_MS - 1)
    assert all(h.core.choose_hops()[-1] != path.terminal for _ in range(100))
    h.core.keep_paths(NOW + WITHHOLDING_AVOIDED_MS)
    assert any(h.core.choose_hops()[-1] == path.terminal for _ in range(100))


# --- probing its own intros ---------------------------------------------------------------

PROBE_INTERVAL = PATH_PING_INTERVAL_MS * INTRO_PROBE_PINGS


def test_an_intro_that_keeps_two_probes_in_a_row_has_its_path_retired() -> None:
    """An endpoint that publishes sends its intros in turn a probe through its other
    path; one that comes back is nobody's session packet. The relay of an intro that
    keeps one (answering its path's pings all the same) is probed again at once, and the
    second kept retires the path: another is built, ending elsewhere, and the introset is
    republished without the intro."""
    h = Harness(paths=2)
    h.built_path(), h.built_path()
    assert h.keep(NOW + PROBE_INTERVAL)[1] == []  # nothing published: nobody sends here
    h.core.publish_under(SECRET)
    now = NOW + PROBE_INTERVAL
    effects, [answered] = h.keep(now)
    assert not [e for e in effects if isinstance(e, DeliverPacket)]
    now += PROBE_INTERVAL
    _, [kept] = h.keep(now, kept=True)
    assert kept.intro_id != answered.intro_id  # the other intro's turn
    now += INTRO_PROBE_TIMEOUT_MS
    effects, [again] = h.keep(now, kept=True)
    assert again.intro_id == kept.intro_id and "BuildPath" not in kinds(effects)
    now += INTRO_PROBE_TIMEOUT_MS
    effects, _ = h.keep(now)
    assert "BuildPath" in kinds(effects) and h.core.stats.paths_failed == 1
    assert kept.intro_id not in {intro.intro_id for intro in h.core.intros(now)}
    assert h.core.keep_introsets(now) == Republish((SECRET,))
    assert all(h.core.choose_hops()[-1].pubkey != kept.relay for _ in range(20))


def test_a_probe_answered_between_two_kept_ones_leaves_the_path() -> None:
    h = Harness(paths=2)
    h.built_path(), h.built_path()
    h.core.publish_under(SECRET)
    now = NOW + PROBE_INTERVAL
    for kept in (True, False) * 3:
        h.keep(now, kept=kept)
        now += INTRO_PROBE_TIMEOUT_MS
    h.keep(now)
    assert h.core.stats.paths_failed == 0 and len(h.core.intros(now)) == 2


def test_probes_kept_wherever_they_go_retire_a_few_paths_per_lifetime_at_most() -> None:
    """A relay that keeps probes alone (it can tell them from session packets, or it is
    the terminal they leave by) must not make the endpoint replace its paths without
    end: at most ``INTRO_RETIREMENTS_PER_LIFETIME`` per path lifetime, and past them a
    probe per probe interval."""
    h = Harness(paths=2)
    h.built_path(), h.built_path()
    h.core.publish_under(SECRET)
    span = DEFAULT_PATH_LIFETIME_MS - PATH_REBUILD_MARGIN_MS - 1_000
    probes = 0
    for now in range(NOW + 1_000, NOW + span, 1_000):
        probes += len(h.keep(now, kept=True)[1])
    assert h.core.stats.paths_failed == INTRO_RETIREMENTS_PER_LIFETIME
    retries = INTRO_RETIREMENTS_PER_LIFETIME + 1
    assert probes <= span // (PROBE_INTERVAL // 2) + retries


# --- cells in -----------------------------------------------------------------------------


@dataclass
class CellCase:
    name: str
    #: Sends something along the path (or not) and returns the effects expected back.
    ask: Callable[[Harness, Path], list[Effect]]
    now_ms: int = NOW
    dropped: int = 0


def _ping(h: Harness, path: Path) -> list[Effect]:
    question = h.core.ping(path, 100)
    h.send(question.send)
    return [Answered(question.token)]


def _stray_pong(h: Harness, path: Path) -> list[Effect]:
    h.send(SendPayload(path, Ping(b"nobody asked")))
    return []


def _dht(h: Harness, path: Path) -> list[Effect]:
    question = h.core.ask_dht(path, path.terminal.pubkey, get_request(bytes(32)), NOW)
    h.send(question.send)
    return [Answered(question.token)]


def _late_dht(h: Harness, path: Path) -> list[Effect]:
    question = h.core.ask_dht(path, path.terminal.pubkey, get_request(bytes(32)), NOW)
    h.send(question.send)
    return []


def _delivery(h: Harness, path: Path) -> list[Effect]:
    transfer = Transfer(path.terminal.pubkey, path.intro_id, b"a session packet")
    h.send(SendPayload(path, transfer))
    return [DeliverPacket(b"a session packet")]


def _garbage(h: Harness, path: Path) -> list[Effect]:
    h.net.to_owner.append(bytes(1400))
    return []


CELL_CASES = [
    CellCase("a pong answers its ping", _ping),
    CellCase("a pong nobody waits for", _stray_pong),
    CellCase("a DHT result in time", _dht, NOW + DHT_REQUEST_TIMEOUT_MS - 1),
    CellCase("a DHT result too late", _late_dht, NOW + DHT_REQUEST_TIMEOUT_MS),
    CellCase("a transfer to our own intro", _delivery),
    CellCase("a cell of no path", _garbage, dropped=1),
]


@pytest.mark.parametrize("case", CELL_CASES, ids=[c.name for c in CELL_CASES])
def test_cells_from_the_first_hop_become_effects(case: CellCase) -> None:
    h = Harness()
    path = h.built_path()
    expected = case.ask(h, path)
    assert h.replies(path, case.now_ms) == expected
    assert h.core.stats.cells_dropped == case.dropped
    assert path.usable(NOW)


def test_a_dht_answer_is_kept_until_asked_for_and_only_once() -> None:
    h = Harness()
    path = h.built_path()
    question = h.core.ask_dht(path, path.terminal.pubkey, get_request(bytes(32)), NOW)
    assert question.deadline_ms == NOW + DHT_REQUEST_TIMEOUT_MS
    h.send(question.send)
    h.send(question.send)  # the same request twice: the second answer changes nothing
    assert h.replies(path, NOW) == [Answered(question.token)]
    assert h.core.dht_response(question.token) == bytes((DhtStatus.NOT_FOUND,))
    assert h.core.dht_response(question.token) is None


def test_an_unanswered_dht_request_has_no_response() -> None:
    h = Harness()
    path = h.built_path()
    question = h.core.ask_dht(path, path.terminal.pubkey, get_request(bytes(32)), NOW)
    assert h.core.dht_response(question.token) is None


# --- republishing -------------------------------------------------------------------------


def test_republish_every_republish_ms_and_when_the_freshest_published_intro_dies() -> None:
    h = Harness(paths=2, republish_ms=60_000)
    first = h.built_path()
    h.core.publish_under(SECRET)
    h.core.publish_under(SECRET)
    assert [intro.intro_id for intro in h.core.introset_intros(NOW)] == [first.intro_id]
    republish = Republish((SECRET,))
    steps: list[tuple[str, Callable[[], object], int, Republish | None]] = [
        ("published intros live", lambda: None, NOW + 1_000, None),
        ("a path added", h.built_path, NOW + 2_000, None),
        ("the timer is due", lambda: None, NOW + 60_000, republish),
        ("after republishing", lambda: h.core.republished(NOW + 60_000), NOW + 60_001, None),
        (
            "a published intro died",
            lambda: h.core.drop_path(first, NOW + 1),
            NOW + 60_002,
            republish,
        ),
    ]
    for name, step, now_ms, expected in steps:
        step()
        assert h.core.keep_introsets(now_ms) == expected, name
    assert h.core.republish_at_ms == NOW + 120_000


def test_only_the_intro_siblings_pick_going_republishes_at_once() -> None:
    """Of two published intros, siblings send to the one that lives longest: the other's
    path going (as it does first, when paths are replaced in turn) leaves that one."""
    h = Harness(paths=3)
    h.core.publish_under(SECRET)

    def built_at(now_ms: int) -> Path:
        path, cell = h.core.add_path(h.core.choose_hops(), now_ms)
        h.net.inject(path.hops[0].address, cell)
        assert h.replies(path, now_ms) == [PathsChanged()]
        return path

    older, later = built_at(NOW), built_at(NOW + 5_000)
    published = h.core.introset_intros(NOW + 5_000)
    assert [intro.intro_id for intro in published] == [later.intro_id, older.intro_id]
    h.core.republished(NOW + 5_000)
    built_at(NOW + 6_000)
    h.core.drop_path(older, NOW + 7_000)
    assert h.core.keep_introsets(NOW + 7_000) is None
    h.core.drop_path(later, NOW + 8_000)
    assert h.core.keep_introsets(NOW + 8_000) == Republish((SECRET,))


# --- the payload codec --------------------------------------------------------------------

_relay = st.binary(min_size=32, max_size=32)
_request_id = st.binary(min_size=REQUEST_ID_BYTES, max_size=REQUEST_ID_BYTES)
_rest = st.binary(max_size=200)

payloads: st.SearchStrategy[PathPayload] = st.one_of(
    st.just(Built()),
    st.builds(Ping, _rest),
    st.builds(Pong, _rest),
    st.builds(Transfer, _relay, st.binary(min_size=PATH_ID_BYTES, max_size=PATH_ID_BYTES), _rest),
    st.builds(Deliver, _rest),
    st.builds(DhtRequest, _request_id, _relay, _rest),
    st.builds(DhtResult, _request_id, _rest),
)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_payloads_round_trip(payload: PathPayload) -> None:
    encoded = payload.encode()
    assert encoded[0] in set(Payload)
    assert decode_payload(encoded) == payload


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=120), payloads.map(lambda p: p.encode()[:-1])))
def test_payloads_decode_only_as_encoded_or_raise_cell_error(data: bytes) -> None:
    """Any bytes: a payload that encodes back to them, or CellError (never another error)."""
    try:
        payload = decode_payload(data)
    except CellError:
        return
    assert payload.encode() == data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (bytes((0,)), "unknown payload kind"),
        (bytes((99,)) + bytes(60), "unknown payload kind"),
        (bytes((Payload.BUILT, 0)), "with a body"),
        (bytes((Payload.TRANSFER,)) + bytes(TRANSFER_HEADER_BYTES - 2), "too short"),
        (bytes((Payload.DHT_REQUEST,)) + bytes(REQUEST_ID_BYTES + 31), "too short"),
        (bytes((Payload.DHT_RESULT,)) + bytes(REQUEST_ID_BYTES - 1), "too short"),
    ],
)
def test_malformed_payloads_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(CellError, match=reason):
        decode_payload(data)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Transfer(bytes(31), bytes(PATH_ID_BYTES), b""),
        lambda: Transfer(bytes(32), bytes(PATH_ID_BYTES + 1), b""),
        lambda: DhtRequest(bytes(REQUEST_ID_BYTES - 1), bytes(32), b""),
        lambda: DhtRequest(bytes(REQUEST_ID_BYTES), bytes(33), b""),
        lambda: DhtResult(bytes(REQUEST_ID_BYTES + 1), b""),
    ],
)
def test_payloads_with_wrong_field_sizes_cannot_be_made(make: Callable[[], PathPayload]) -> None:
    with pytest.raises(ValueError, match="bytes, expected"):
        make()


def test_paths_need_as_many_relays_as_hops_and_an_entry_the_filter_admits() -> None:
    relays = [bytes([i]) * 32 for i in range(3)]
    assert paths_possible(relays, 3, None)
    assert not paths_possible(relays[:2], 3, None)
    assert paths_possible(relays, 3, entries_of(relays, lambda keys: frozenset(list(keys)[:1])))
    assert not paths_possible(relays, 3, entries_of(relays, lambda keys: frozenset()))
    assert entries_of(relays, None) is None


@pytest.mark.parametrize(
    ("relays", "republish_ms", "refusal"),
    [
        (2, INTROSET_REPUBLISH_MS, "need at least 3 verified relay contacts"),
        (6, 0, "republish_ms must be in"),
        (6, INTROSET_LIFETIME_MS // 2 + 1, "republish_ms must be in"),
    ],
)
def test_an_endpoint_core_refuses_what_could_never_keep_a_path(
    relays: int, republish_ms: int, refusal: str
) -> None:
    with pytest.raises(ValueError, match=refusal):
        core_over(Net(6).contacts[:relays], republish_ms=republish_ms)
