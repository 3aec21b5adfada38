"""What starting the library and the command line loads (issue 16 point 6: every CLI call
pays for its imports). Checked by module name in a fresh interpreter, not by timing: the
test fails as soon as someone imports a heavy module eagerly again, on any machine."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What ``import p2psync`` must leave unloaded: the package names its API lazily, so none
#: of the library (the overlay, the servers, the simulator, TLS's ``cryptography``).
HEAVY_FOR_THE_PACKAGE = (
    "trio",
    "cryptography",
    "overlay",
    "overlay.endpoint",
    "overlay.link",
    "p2psync.device",
    "p2psync.network",
    "p2psync.swarm.node",
    "p2psync.swarm.messages",
    "p2psync.fileserver",
    "p2psync.fileserver.server",
    "p2psync.fileserver.client",
    "p2psync.fileserver.store",
    "p2psync.opengroup",
    "p2psync.opengroup.server",
    "p2psync.opengroup.client",
    "p2psync.opengroup.store",
    "p2psync.sim",
)
#: What the command line must leave unloaded until a command runs that needs it: the
#: servers and the network a device command never runs, the simulator, TLS.
HEAVY_FOR_THE_CLI = (
    "cryptography",
    "p2psync.network",
    "p2psync.launcher",
    "p2psync.services",
    "p2psync.swarm.node",
    "p2psync.sim",
    "benchmarks",
)


def loaded(statement: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has loaded after running ``statement``."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{statement}; import json, sys; "
            f"print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_import_p2psync_loads_none_of_the_library() -> None:
    assert loaded("import p2psync", HEAVY_FOR_THE_PACKAGE) == []


@pytest.mark.parametrize(
    "statement",
    [
        "import p2psync.cli",
        "from p2psync.cli import build_parser; "
        "build_parser().parse_args(['device', 'whoami', '--data', 'd'])",
    ],
)
def test_the_command_line_loads_only_what_a_command_needs(statement: str) -> None:
    assert loaded(statement, HEAVY_FOR_THE_CLI) == []


#: What building the parser and parsing a command line leave unloaded: ``--help`` and a
#: usage error answer at once (0.44 s with the device loaded to build its commands, 0.06
#: s without), and the chosen command loads the rest (its ``loads``).
#: (An id given checks as a key, with the crypto, as it is parsed.)
HEAVY_FOR_THE_PARSER = ("trio", "nacl", "overlay", "p2psync.device", "p2psync.identity")


def test_parsing_a_command_line_loads_none_of_the_library() -> None:
    statement = (
        "from p2psync.cli import build_parser; "
        "args = build_parser().parse_args(['device', 'inbox', '--data', 'd', '--network', 'n']); "
        "assert args.loads == ('p2psync.cli_device',)"
    )
    assert loaded(statement, HEAVY_FOR_THE_PARSER) == []


def test_the_public_names_still_import() -> None:
    """``from p2psync import X`` for every documented name, and ``*``, load on demand."""
    statement = (
        "import p2psync; from p2psync import *; "
        "missing = [n for n in p2psync.__all__ if n not in globals()]; assert not missing, missing"
    )
    assert loaded(statement, ("p2psync.device", "p2psync.sim.runner")) == [
        "p2psync.device",
        "p2psync.sim.runner",
    ]


def test_the_console_script_holds_stops_before_it_loads_the_command_line() -> None:
    """``main`` holds Ctrl-C and SIGTERM before it imports anything but ``signal`` (not
    even ``typing``, ~5 ms): a stop during the command line's imports is acted on with one
    line, not raised inside an import as a traceback (``tests/system/test_cli.py`` stops
    it at moments after). Checked by what is loaded, and what is installed when the
    command line's module is looked for, in a fresh interpreter."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"p2psync": "p2psync.command:main"}
    script = """
import signal, sys
before = set(sys.modules)
import p2psync.command
new = sorted(set(sys.modules) - before)
assert new == ["p2psync", "p2psync.command", "p2psync.stops"], new

class HandlersWhenTheCommandLineLoads:
    def find_spec(self, name, path=None, target=None):
        if name == "p2psync.cli":
            raise LookupError(signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))

sys.meta_path.insert(0, HandlersWhenTheCommandLineLoads())
try:
    p2psync.command.main()
except LookupError as found:
    sigint, sigterm = found.args
assert sigint is not signal.default_int_handler, sigint
assert sigterm is not signal.SIG_DFL, sigterm
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_a_worker_process_started_from_the_console_script_holds_no_stops() -> None:
    """``multiprocessing``'s spawn starts a benchmark's worker by running the parent's
    main script as ``__mp_main__``, which imports ``p2psync.command`` and does not call
    ``main``: that must leave SIGTERM and Ctrl-C as they were. (A hold taken on import
    was never released in the worker: it noted the SIGTERM that was to end it and ran
    on, so ``bench storage --scale`` stopped early waited for its validation run.)"""
    console_script = Path(sys.executable).with_name("p2psync")
    statement = (
        f"import runpy, signal; runpy.run_path({str(console_script)!r}, run_name='__mp_main__'); "
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL; "
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler"
    )
    assert loaded(statement, ("p2psync.command",)) == ["p2psync.command"]
