"""Traces: seeded generation under both churn profiles (the ``office`` traces exactly as
before profiles existed), the packed forms that let a month of 10 000 users fit in
memory, and trace files read back as they were written or refused in one line naming
where they are wrong."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from p2psync.errors import P2PSyncError
from p2psync.sim.scenario import (
    AWAKE_MS,
    DAY_MS,
    FOREGROUND_S,
    KINDS,
    MAX_SEND_BYTES,
    MAX_USERS,
    Scenario,
    Send,
    SendTable,
    Spans,
    Trace,
    TraceFileError,
    build_trace,
    dump_trace,
    load_trace,
)

H = 3_600_000
M = 60_000


def _digest(trace: Trace) -> str:
    h = hashlib.sha256(repr((trace.users, trace.duration_ms, trace.seed)).encode())
    for key in sorted(trace.online):
        h.update(repr((key, [tuple(s) for s in trace.online[key]])).encode())
    for s in trace.sends:
        h.update(repr((s.at_ms, s.user, s.kind, s.to_user, s.size)).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("scenario", "digest", "sends"),
    [
        # Digests of the traces generated before profiles and packed forms existed: the
        # benchmark's published figures were made on these, so they must not move.
        (Scenario(users=4, days=4.5, messages_per_user_per_day=12), "0d19c5ce0d6105d2", 125),
        (Scenario(users=8, days=7.0), "8ef650de6da7797b", 666),
        (Scenario(), "56dc0553ce671e55", 498),
        (
            Scenario(users=2, days=1.5, messages_per_user_per_day=8, long_offline_days=0, seed=3),
            "c4fa685342c8e61c",
            12,
        ),
        (Scenario(users=50, days=10, seed=7, message_bytes=(0, 5000)), "87d7ec0ca55d7c1d", 6418),
        (Scenario(users=1, days=2), "33d6f1213feb8ff7", 0),
    ],
)
def test_office_traces_are_what_they_always_were(
    scenario: Scenario, digest: str, sends: int
) -> None:
    trace = build_trace(scenario)
    assert (_digest(trace), len(trace.sends)) == (digest, sends)


def test_the_profile_defaults_to_office_and_is_reported() -> None:
    assert Scenario().profile == "office"
    assert Scenario(profile="mobile").to_json()["profile"] == "mobile"
    with pytest.raises(ValueError, match=r"Scenario\.profile must be one of office, mobile"):
        Scenario(profile="tablet")


MOBILE = Scenario(users=20, days=7, messages_per_user_per_day=20, seed=5, profile="mobile")


def test_mobile_phones_are_reachable_only_in_short_foreground_sessions() -> None:
    trace = build_trace(MOBILE)
    trace.validate()
    assert trace == build_trace(MOBILE)  # seeded
    assert trace != build_trace(replace(MOBILE, seed=6))
    for user in range(MOBILE.users):
        phone = trace.online[(user, "phone")]
        on = sum(end - start for start, end in phone)
        assert on < 0.15 * MOBILE.days * DAY_MS  # versus about two thirds of the day
        assert all(AWAKE_MS[0] <= start % DAY_MS < AWAKE_MS[1] for start, _ in phone)
        desktop = trace.online[(user, "desktop")]  # as in the office profile
        assert all(start % DAY_MS > 8 * H and end % DAY_MS <= 19 * H for start, end in desktop)
        assert {start // DAY_MS % 7 for start, _ in desktop} <= {0, 1, 2, 3, 4}
        # Most sessions are one to five minutes; only a few joined ones are longer.
        short = sum(end - start <= FOREGROUND_S[1] * 1000 for start, end in phone)
        assert short >= 0.8 * len(phone)


def test_a_mobile_user_who_writes_opens_the_app() -> None:
    """Attempts while nothing is online in waking hours are sent, from the phone, which
    comes to the foreground for them; at night they are dropped as in ``office``."""
    trace = build_trace(MOBILE)
    from_phone = [s for s in trace.sends if s.kind == "phone"]
    assert len(from_phone) > 0.5 * len(trace.sends)
    late = AWAKE_MS[1] + FOREGROUND_S[1] * 1000  # a session opened at 22:59 runs on
    for send in trace.sends:
        assert AWAKE_MS[0] <= send.at_ms % DAY_MS < late or send.kind == "desktop"
    expected = MOBILE.users * MOBILE.messages_per_user_per_day * MOBILE.days
    assert 0.55 * expected < len(trace.sends) < expected  # nights lose a third


def test_model_scale_scenarios_are_accepted_but_devices_keep_their_bound() -> None:
    scenario = Scenario(users=MAX_USERS + 1, days=0.05, messages_per_user_per_day=2)
    trace = build_trace(scenario)
    trace.validate(max_users=MAX_USERS + 1)
    with pytest.raises(ValueError, match=rf"users must be an int in 1\.\.{MAX_USERS}"):
        trace.validate()


def test_generation_reports_progress() -> None:
    seen: list[float] = []
    build_trace(Scenario(users=5, days=2), on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 10


# --- packed forms ----------------------------------------------------------------------------


def test_spans_read_as_the_tuples_they_hold() -> None:
    spans = Spans([(0, 5), (7, 9)])
    assert len(spans) == 2 and spans[1] == (7, 9) and spans[-1] == (7, 9)
    assert list(spans) == [(0, 5), (7, 9)] and spans[:1] == [(0, 5)]
    assert spans == [(0, 5), (7, 9)] and spans == [[0, 5], [7, 9]] and spans == Spans(spans)
    assert spans != [(0, 5)] and spans != "0-5" and spans != Spans([(0, 5), (7, 8)])
    assert repr(spans) == "Spans([(0, 5), (7, 9)])"


def test_a_send_table_reads_as_sends() -> None:
    sends = [Send(10, 0, "phone", 1, 300), Send(20, 1, "desktop", 0, 0)]
    table = SendTable(sends)
    assert len(table) == 2 and table[1] == sends[1] and table[-2] == sends[0]
    assert list(table) == sends and table[::-1] == sends[::-1]
    assert table == sends and table == SendTable(sends) and table != sends[:1]
    assert SendTable.of(table) is table and SendTable.of(sends) == table
    assert repr(table) == "SendTable(<2 sends>)"


def test_a_packed_trace_checks_and_answers_as_a_plain_one() -> None:
    trace = build_trace(Scenario(users=3, days=1, seed=2))
    assert isinstance(trace.sends, SendTable)
    plain = Trace(
        trace.users,
        trace.duration_ms,
        {key: list(spans) for key, spans in trace.online.items()},
        list(trace.sends),
        trace.seed,
    )
    assert plain == trace
    plain.validate()
    for send in trace.sends:
        for kind in KINDS:
            assert trace.is_online(send.user, kind, send.at_ms) == any(
                a <= send.at_ms < b for a, b in plain.online[(send.user, kind)]
            )


# --- trace files -----------------------------------------------------------------------------

SMALL = Trace(
    users=2,
    duration_ms=3 * H,
    online={
        (0, "phone"): [(0, 3 * H)],
        (0, "desktop"): [(10 * M, H), (2 * H, 3 * H)],
        (1, "phone"): [(0, H)],
    },
    sends=[Send(20 * M, 0, "phone", 1, 300), Send(30 * M, 1, "phone", 0, 0)],
    seed=9,
)

CSV = """\
# a hand-written trace
users,2
duration_ms,10800000
seed, 9

online,0,phone,0,10800000
online,0,desktop,600000,3600000
online,1,phone,0,3600000
send,1200000,0,phone,1,300
online,0,desktop,7200000,10800000
send,1800000,1,phone,0,0
"""


def test_a_dumped_trace_loads_back(tmp_path: Path) -> None:
    for trace in (SMALL, build_trace(MOBILE)):
        path = tmp_path / "trace.json"
        dump_trace(trace, path)
        assert json.loads(path.read_text())["format"] == "p2psync-trace/1"
        assert load_trace(path) == trace


def test_a_csv_trace_loads(tmp_path: Path) -> None:
    path = tmp_path / "trace.CSV"
    path.write_text(CSV)
    assert load_trace(path) == SMALL


def test_a_json_trace_may_leave_out_format_seed_and_silent_devices(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"users": 2, "duration_ms": 1000}')
    assert load_trace(path) == Trace(2, 1000)


def _json(**changes: Any) -> str:
    document: dict[str, Any] = {
        "users": 2,
        "duration_ms": 3 * H,
        "devices": [
            {"user": 0, "kind": "phone", "online": [[0, 3 * H]]},
            {"user": 1, "kind": "desktop", "online": [[0, H]]},
        ],
        "sends": [{"at_ms": 20 * M, "user": 0, "kind": "phone", "to_user": 1, "size": 300}],
    }
    document.update(changes)
    return json.dumps(document, indent=1)


def _send(**changes: Any) -> list[dict[str, Any]]:
    send = {"at_ms": 20 * M, "user": 0, "kind": "phone", "to_user": 1, "size": 300}
    return [{**send, **changes}]


HEAD = "users,2\nduration_ms,10800000\nonline,0,phone,0,10800000\n"

BAD_FILES: dict[str, tuple[str, str | bytes, str]] = {
    "not JSON": ("t.json", '{"users": 2,\n "duration_ms": }', r"t\.json:2: not JSON"),
    "not an object": ("t.json", "[1, 2]", r"t\.json: expected a JSON object"),
    "unknown field": ("t.json", _json(colour=1), r"t\.json: unknown field 'colour'"),
    "other format": ("t.json", _json(format="v9"), r"t\.json: format: expected"),
    "no users": ("t.json", '{"duration_ms": 5}', r"t\.json: users must be given first"),
    "too many users": ("t.json", _json(users=10**6), r"t\.json: users must be an int in 1\.\."),
    "bool duration": ("t.json", _json(duration_ms=True), "duration_ms must be an int"),
    "devices not a list": ("t.json", _json(devices={}), r"t\.json: devices: expected a list"),
    "device fields": (
        "t.json",
        _json(devices=[{"user": 0, "kind": "phone"}]),
        r"devices\[0\]: expected the fields",
    ),
    "device twice": (
        "t.json",
        _json(
            devices=[
                {"user": 0, "kind": "phone", "online": []},
                {"user": 0, "kind": "phone", "online": []},
            ]
        ),
        r"devices\[1\]: the same device is listed twice",
    ),
    "unknown user": (
        "t.json",
        _json(devices=[{"user": 2, "kind": "phone", "online": []}]),
        r"devices\[0\]: user must be in 0\.\.1, not 2",
    ),
    "unhashable user": (
        "t.json",
        _json(devices=[{"user": [0], "kind": "phone", "online": []}]),
        r"devices\[0\]: user must be in 0\.\.1, not \[0\]",
    ),
    "tablet": (
        "t.json",
        _json(devices=[{"user": 0, "kind": "tablet", "online": []}]),
        r"devices\[0\]: unknown device kind 'tablet'",
    ),
    "online not a list": (
        "t.json",
        _json(devices=[{"user": 0, "kind": "phone", "online": 5}]),
        r"devices\[0\]\.online: expected a list",
    ),
    "span of three": (
        "t.json",
        _json(devices=[{"user": 0, "kind": "phone", "online": [[0, 1, 2]]}]),
        r"devices\[0\]\.online\[0\]: a span is a pair of ints",
    ),
    "spans overlap": (
        "t.json",
        _json(devices=[{"user": 0, "kind": "phone", "online": [[0, 10], [5, 20]]}]),
        r"devices\[0\]\.online\[1\]: .* spans must be in order and not overlap",
    ),
    "span past the end": (
        "t.json",
        _json(devices=[{"user": 0, "kind": "phone", "online": [[0, 3 * H + 1]]}]),
        r"devices\[0\]\.online\[0\]: span \[0, 10800001\] is outside",
    ),
    "send fields": ("t.json", _json(sends=[{"at_ms": 5}]), r"sends\[0\]: expected the fields"),
    "send as text": ("t.json", _json(sends=_send(size="300")), r"sends\[0\]: size must be an int"),
    "send too big": (
        "t.json",
        _json(sends=_send(size=MAX_SEND_BYTES + 1)),
        r"sends\[0\]: size must be an int in 0\.\.",
    ),
    "send to oneself": ("t.json", _json(sends=_send(to_user=0)), r"sends\[0\]: user 0 sends to"),
    "send while offline": (
        "t.json",
        _json(sends=_send(user=1, kind="desktop", to_user=0, at_ms=2 * H)),
        r"t\.json: sends\[0\]: user 1's desktop is offline at 7200000 ms",
    ),
    "csv unknown record": (
        "t.csv",
        "users,2\nfriends,1,2\n",
        r"t\.csv:2: unknown record 'friends'",
    ),
    "csv fields": ("t.csv", "users,2,3\n", r"t\.csv:1: users takes 1 fields, not 2"),
    "csv header late": (
        "t.csv",
        "users,2\nonline,0,phone,0,5\nduration_ms,10\n",
        r"t\.csv:2: duration_ms must be given first",
    ),
    "csv header twice": ("t.csv", "users,2\nusers,3\n", r"t\.csv:2: users must be given once"),
    "csv seed after spans": (
        "t.csv",
        HEAD + "seed,4\n",
        r"t\.csv:4: seed must be given once, before any span or send",
    ),
    "csv bad number": (
        "t.csv",
        "users,two\nduration_ms,5\nsend,1,0,phone,1,1\n",
        r"t\.csv:3: users",
    ),
    "csv span text": ("t.csv", HEAD + "online,1,phone,0,1h\n", r"t\.csv:4: a span is a pair"),
    "csv span order": (
        "t.csv",
        HEAD + "online,1,phone,50,60\nonline,1,phone,10,20\n",
        r"t\.csv:5: span .* starts before the previous one ends",
    ),
    "csv kind as number": (
        "t.csv",
        HEAD + "send,5,0,1,1,5\n",
        r"t\.csv:4: unknown device kind '1'",
    ),
    "csv offline sender": (
        "t.csv",
        HEAD + "send,5,0,desktop,1,5\nsend,5,0,phone,1,5\n",
        r"t\.csv:4: user 0's desktop is offline at 5 ms",
    ),
    "csv late offline sender": (
        "t.csv",
        HEAD + "send,5,0,phone,1,5\nsend,50,1,phone,0,5\nonline,1,phone,0,10\n",
        r"t\.csv:5: user 1's phone is offline at 50 ms",
    ),
    "not text": ("t.csv", b"users,2\n\xff\xfe\n", r"t\.csv: not text"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_trace_file_is_refused_in_one_line(name: str, tmp_path: Path) -> None:
    filename, content, message = BAD_FILES[name]
    path = tmp_path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(TraceFileError, match=message) as caught:
        load_trace(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, P2PSyncError) and isinstance(caught.value, ValueError)


def test_a_missing_trace_file_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match=r"nothing\.json: cannot read it: No such file"):
        load_trace(tmp_path / "nothing.json")


def test_a_trace_for_devices_can_be_held_to_their_bound(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"users,{MAX_USERS + 1}\nduration_ms,5\n")
    assert load_trace(path).users == MAX_USERS + 1
    with pytest.raises(TraceFileError, match=rf"users must be an int in 1\.\.{MAX_USERS},"):
        load_trace(path, max_users=MAX_USERS)
