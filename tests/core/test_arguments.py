"""Numbers on the command line are checked as they are read: out of range, not finite or
not a number is a usage error (exit 2) naming the option, before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2psync.cli import build_parser, explain

REFUSED = [
    ["network", "up", "--data", "d", "--nodes", "99999999999999999999"],
    ["network", "up", "--data", "d", "--nodes", "0"],
    ["network", "up", "--data", "d", "--relays", "-1"],
    ["bench", "soak", "--minutes", "nan"],
    ["bench", "soak", "--minutes", "inf"],
    ["bench", "throughput", "--seconds", "0"],
    ["bench", "storage", "--users", "10000000000"],
    ["bench", "storage", "--sync-copy-hours", "25"],
    ["bench", "storage", "--sync-copy-hours", "0.001"],
    ["device", "inbox", "--data", "d", "--network", "n", "--timeout", "-3"],
    ["device", "inbox", "--data", "d", "--network", "n", "--timeout", "0"],
    ["device", "inbox", "--data", "d", "--network", "n", "--wait", "-1"],
    ["device", "inbox", "--data", "d", "--network", "n", "--wait", "nan"],
    ["device", "rooms", "--data", "d", "--network", "n", "lobby", "--since", "9" * 23],
    ["device", "rooms", "--data", "d", "--network", "n", "lobby", "--since", "-1"],
    ["registry", "--data", "d", "--refuse-dial", "10.0.0.0/33"],
    ["registry", "--data", "d", "--refuse-dial", "private"],
]


@pytest.mark.parametrize("argv", REFUSED, ids=[" ".join(a[:2] + a[-2:]) for a in REFUSED])
def test_an_out_of_range_number_is_a_usage_error_naming_its_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    option = next(a for a in argv if a.startswith("--") and a not in ("--data", "--network"))
    assert f"argument {option}: " in capsys.readouterr().err


ID_REFUSED = [
    ["device", "pair", "--data", "d", "--network", "n", "--primary", "xyz"],
    ["device", "send", "--data", "d", "--network", "n", "xyz", "hi"],
    ["device", "devices", "--data", "d", "--network", "n", "--revoke", "05" + "zz" * 32],
    ["device", "contacts", "--data", "d", "--network", "n", "--add", "05" + "00" * 32],
    ["device", "init", "--data", "d", "--mode", "linked", "--name", "a\nb"],
    ["device", "init", "--data", "d", "--mode", "linked", "--name", "x" * 5000],
    ["device", "init", "--data", "", "--mode", "linked"],
]


@pytest.mark.parametrize(
    "argv", ID_REFUSED, ids=[" ".join(a[:2]) + f" {i}" for i, a in enumerate(ID_REFUSED)]
)
def test_ids_names_and_directories_are_checked_as_they_are_read(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad id, device name or directory is a usage error before anything is opened or
    sent (``pair`` used to say it was waiting for ``xyz`` first)."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    assert "error: argument " in capsys.readouterr().err


def test_a_data_directory_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["device", "whoami", "--data", str(afile)])
    assert f"{afile} exists and is not a directory" in capsys.readouterr().err


def test_numbers_in_range_are_taken() -> None:
    args = build_parser().parse_args(
        ["device", "inbox", "--data", "d", "--network", "n", "--timeout", "0.5", "--wait", "0"]
    )
    assert (args.timeout, args.wait) == (0.5, 0.0)
    args = build_parser().parse_args(["network", "up", "--data", "d", "--nodes", "250"])
    assert args.nodes == 250


def test_failures_side_by_side_are_one_line_naming_the_first_and_how_many_more() -> None:
    """Children that fail together (three nodes each refusing a folder) leave a nursery as
    an exception group: the command still says one line, not a traceback."""
    group = ExceptionGroup(
        "nursery",
        [OSError("node-0: refused"), ExceptionGroup("inner", [ValueError("node-1: refused")])],
    )
    assert explain(group) == (1, "p2psync: error: node-0: refused (and 1 more)")
    assert explain(ExceptionGroup("bug", [OSError("one line"), KeyError("a bug")])) is None
    assert explain(BaseExceptionGroup("stop", [OSError("pipe"), KeyboardInterrupt()])) == (
        130,
        "stopped",
    )
