"""The command line: clear one-line errors, and ``network up`` as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2psync.clock import Clock
from p2psync.identity import Identity
from p2psync.rpc import open_rpc
from p2psync.swarm.client import Message, open_swarm_client
from p2psync.swarm.directory import RegistryDirectory
from p2psync.websocket import WebSocketTransport

P2PSYNC = [sys.executable, "-m", "p2psync"]


@pytest.mark.parametrize(
    "args",
    [
        ["network", "up", "--nodes", "0", "--data", "x"],
        ["network", "up", "--nodes", "many", "--data", "x"],
        ["node", "--data", "x"],
        ["node", "--data", "x", "--registry", "ws://127.0.0.1:9/", "--ledger", "zz"],
        ["node", "--data", "x", "--static", "/nonexistent/network.json"],
        ["bench", "storage", "--quick", "--json", "/nonexistent/storage.json"],
        ["bench", "storage", "--quick", "--plot", "/nonexistent/storage.png"],
        ["demo", "--json", "/nonexistent/demo.json"],
        ["bench", "throughput", "--clients", "-1"],
        ["bench", "throughput", "--nodes", "1"],
        ["frobnicate"],
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*P2PSYNC, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode != 0
    assert "error" in result.stderr.strip().splitlines()[-1]


def test_an_output_path_that_cannot_be_created_is_refused_before_the_run(tmp_path: Path) -> None:
    """``/proc`` is a directory that passes every permission check as root but refuses a
    new file: the command says so at once (usage error, 2) rather than after the run."""
    result = subprocess.run(
        [*P2PSYNC, "demo", "--json", "/proc/demo.json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("argument --json: /proc/demo.json cannot be written: No such file or directory")
    )
    # A FIFO nobody reads would block the check for ever (signals held meanwhile); a
    # link is not followed to create a file where it points.
    fifo, link = tmp_path / "fifo.json", tmp_path / "link.json"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "elsewhere.json")
    for path in (fifo, link):
        result = subprocess.run(
            [*P2PSYNC, "demo", "--json", str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().endswith(f"{path} is not a regular file")
    assert not (tmp_path / "elsewhere.json").exists()


def test_a_node_the_ledger_has_not_admitted_does_not_start(tmp_path: Path) -> None:
    """On a network with a ledger, a node without a registration would never be listed:
    it says so and exits instead of serving nobody."""
    ledger = Identity.from_label("cli/ledger").ed25519_public.hex()
    result = subprocess.run(
        [
            *P2PSYNC,
            "node",
            "--data",
            str(tmp_path / "n"),
            "--registry",
            "ws://127.0.0.1:9/",
            "--ledger",
            ledger,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("p2psync: error: no registration in ")
    assert "p2psync ledger register" in last


def test_a_file_where_a_data_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [*P2PSYNC, "registry", "--data", str(tmp_path / "file")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"p2psync: error: --data {tmp_path / 'file'} exists and is not a directory"
    )


@pytest.mark.slow
async def test_network_up_runs_processes_until_interrupted(tmp_path: Path) -> None:
    """Nodes start side by side; a ``network.json`` left from an earlier network is
    replaced, and the one it writes goes when it stops."""
    (tmp_path / "network.json").write_text('{"registry": "ws://127.0.0.1:9/stale"}')
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "network", "up", "--nodes", "2", "--relays", "2", "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert await _first_line(process) == f"ready {tmp_path / 'network.json'}"
        description = json.loads((tmp_path / "network.json").read_text())
        assert set(description) >= {
            "ledger",
            "registry",
            "fileserver",
            "opengroup",
            "fileserver_key",
            "opengroup_key",
            "nodes",
            "relays",
        }
        assert len(description["nodes"]) == 2 and len(description["relays"]) == 2
        transport = WebSocketTransport()
        alice = Identity.from_label("alice")
        clock = Clock()
        directory = RegistryDirectory(
            transport, description["registry"], clock, bytes.fromhex(description["ledger"])
        )
        delivered = trio.Event()
        received: list[Message] = []

        async def deliver(batch: list[Message]) -> None:
            received.extend(batch)
            delivered.set()

        async with open_swarm_client(transport, directory, clock) as swarm:
            digest, _ = await swarm.store(alice.session_id, 0, b"over real processes")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: swarm.poll(alice, 0, deliver, interval_s=0.2))
                with trio.fail_after(30):
                    await delivered.wait()
                nursery.cancel_scope.cancel()
            assert [m.hash for m in received] == [digest]
        process.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await process.wait()
        assert code == 130
        assert not (tmp_path / "network.json").exists()
        for node in description["nodes"]:
            with pytest.raises(OSError):
                async with open_rpc(transport, node["url"]):
                    pass
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(30):
                await process.wait()
            process.kill()
            await process.wait()


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _first_line(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(120):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(1024)
            assert chunk, "network up exited early"
            line += chunk
    return line.decode().strip()


@pytest.mark.slow
async def test_network_up_again_with_fewer_nodes_waits_only_for_this_runs(tmp_path: Path) -> None:
    """Brought up again on the same folder, a network lists only the processes this run
    started: the nodes of an earlier, larger run are gone and are not waited for. Its
    servers and the node that stays come back at the addresses they had (devices keep
    them: on new ports, a device made before the restart waited 25 s for every command
    and never reached the open group). The second starts as a shell without job control
    starts a background job, with SIGINT ignored: ``kill -INT`` still stops it (it once
    ran on with all its children)."""
    described: list[dict[str, Any]] = []
    for nodes in (3, 1):
        process = await trio.lowlevel.open_process(
            [*P2PSYNC, "network", "up", "--nodes", str(nodes), "--relays", "0", "--data", tmp_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=_ignoring_sigint if nodes == 1 else None,
        )
        try:
            assert await _first_line(process) == f"ready {tmp_path / 'network.json'}"
            description = json.loads((tmp_path / "network.json").read_text())
            assert len(description["nodes"]) == nodes
            described.append(description)
        finally:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(60):
                await process.wait()
            if process.returncode is None:
                process.terminate()  # its children go with it
                await process.wait()
        assert process.returncode == 130
    first, again = described
    for server in ("registry", "fileserver", "opengroup"):
        assert again[server] == first[server]
    [node] = again["nodes"]
    assert node in first["nodes"]


async def test_a_service_whose_port_was_taken_meanwhile_comes_up_on_another(
    tmp_path: Path,
) -> None:
    """The port the registry had the last time is another process's now: the network
    comes up all the same, the registry on a new port (which the next run keeps); a
    ports file that is not what ``network up`` wrote is no reason to fail either."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "ports.json").write_text(json.dumps({"registry": port, "node-0": "x"}))
        process = await trio.lowlevel.open_process(
            [*P2PSYNC, "network", "up", "--nodes", "1", "--relays", "0", "--data", tmp_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert await _first_line(process) == f"ready {tmp_path / 'network.json'}"
            registry = json.loads((tmp_path / "network.json").read_text())["registry"]
            kept = json.loads((tmp_path / "ports.json").read_text())
            assert f":{port}/" not in registry and f":{kept['registry']}/" in registry
        finally:
            process.send_signal(signal.SIGINT)
            await process.wait()


def test_network_up_names_the_process_that_did_not_come_up(tmp_path: Path) -> None:
    """A node that cannot start (its database is garbage) ends ``network up`` with one line
    naming it and its log, no traceback, and nothing left running."""
    (tmp_path / "node-1").mkdir()
    (tmp_path / "node-1" / "messages.sqlite3").write_bytes(b"not a database" * 400)
    result = subprocess.run(
        [*P2PSYNC, "network", "up", "--nodes", "2", "--relays", "0", "--data", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"p2psync: error: node-1 exited before it was ready (see {tmp_path}/node-1.log)"
    assert not _descendants(os.getpid())


def _descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


async def _stderr_until(process: trio.Process, marker: bytes, *, timeout_s: float) -> bytes:
    """What ``process`` wrote on stderr up to and including ``marker`` (it must say it
    within ``timeout_s``, and not exit first)."""
    assert process.stderr is not None
    return await _said_until(process.stderr, marker, timeout_s=timeout_s)


async def _said_until(stream: trio.abc.ReceiveStream, marker: bytes, *, timeout_s: float) -> bytes:
    """What came on ``stream`` up to and including ``marker``, which must come within
    ``timeout_s`` and before the stream ends."""
    said = b""
    with trio.fail_after(timeout_s):
        while marker not in said:
            chunk = await stream.receive_some(4096)
            assert chunk, f"it exited early: {said.decode(errors='replace')}"
            said += chunk
    return said


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(4096):
        pass


async def _until_gone(pids: set[int]) -> None:
    """Wait until none of ``pids`` runs: a child may outlive its stopped parent for a
    moment, not for 10 s. (The process table has no event to wait for: poll it.)"""
    with trio.fail_after(10):
        while [pid for pid in pids if _alive(pid)]:  # noqa: ASYNC110
            await trio.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_bench_throughput_measures_a_swarm_with_quorum_writes(tmp_path: Path) -> None:
    """The DESIGN.md §9 fields, from a swarm of two node processes in which every store
    waits for the other member's commit."""
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [*P2PSYNC, "bench", "throughput", "--seconds", "0.5", "--nodes", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    contract = {
        "stores_per_s",
        "retrieves_per_s",
        "floor_stores_per_s",
        "ratio",
        "quorum",
        "ratio_per_core",
    }
    assert contract <= set(figures)
    assert figures["quorum"] == 2 and figures["nodes"] == figures["swarm_members"] == 2
    assert figures["stores_per_s"] > 0 and figures["retrieves_per_s"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["stores_per_s"] / figures["floor_stores_per_s"], abs=0.001
    )
    assert figures["ratio_per_core"] > 0 and figures["node_cpu_us_per_store"] > 0


@pytest.mark.slow
async def test_the_demo_stopped_by_sigterm_says_so_in_one_line(tmp_path: Path) -> None:
    """SIGTERM mid-story ends the demo as Ctrl-C does: its embedded network unwinds,
    and the last line says why it stopped (it used to die in silence)."""
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        await _said_until(process.stdout, b"1. Pairing", timeout_s=60)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, process.stdout)  # what it says as it unwinds
                said = b""
                while chunk := await process.stderr.receive_some(4096):
                    said += chunk
                code = await process.wait()
        assert code == 143
        assert said.decode().strip().splitlines()[-1] == "terminated"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_bench_throughput_stopped_mid_load_leaves_no_process(
    stop: signal.Signals, tmp_path: Path
) -> None:
    """Stopped while it loads the swarm, the bench ends every node process (and the
    registry) it started before it exits: nothing is left running."""
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "bench", "throughput", "--seconds", "6", "--nodes", "2"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        await _stderr_until(process, b"stores", timeout_s=150)
        children = _descendants(process.pid)
        assert len(children) >= 3  # the registry and two nodes
        process.send_signal(stop)
        with trio.fail_after(60):
            code = await process.wait()
        assert code == (130 if stop == signal.SIGINT else 143)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_bench_throughput_stopped_while_it_measures_the_floor() -> None:
    """SIGTERM while the bench measures its SQLite floor, before Trio runs: 143 and one
    line (SIGTERM's default ended it there, with no line and no clean-up)."""
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "bench", "throughput", "--seconds", "6", "--nodes", "2"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        said = await _stderr_until(process, b"single-commit SQLite", timeout_s=60)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            while chunk := await process.stderr.receive_some(65536):
                said += chunk
            code = await process.wait()
        assert code == 143, said.decode()
        assert said.decode().strip().splitlines()[-1] == "terminated"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "workers_started", "stop"),
    [
        (["--quick"], 2, signal.SIGTERM),
        (["--scale", "--users", "20", "--days", "1"], 1, signal.SIGTERM),
        (["--scale", "--users", "20", "--days", "1"], 1, signal.SIGINT),
    ],
    ids=["quick-SIGTERM", "scale-SIGTERM", "scale-SIGINT"],
)
async def test_bench_storage_stopped_by_sigterm_ends_its_workers(
    args: list[str], workers_started: int, stop: signal.Signals
) -> None:
    """SIGTERM to ``bench storage`` ends the worker processes replaying the strategies
    (they ran on at full CPU when the bench was stopped), with status 143; with
    ``--scale`` too, whose worker validates the model on devices (SIGTERM left it
    running, and Ctrl-C waited over a minute for it), and Ctrl-C there exits 130 at once."""
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "bench", "storage", *args],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        # The process table has no event to wait for: poll it (each wait has a deadline).
        with trio.fail_after(120):
            while len(workers := _descendants(process.pid)) < workers_started:  # noqa: ASYNC110
                await trio.sleep(0.2)
        process.send_signal(stop)
        with trio.fail_after(30):
            code = await process.wait()
        assert code == (130 if stop == signal.SIGINT else 143)
        await _until_gone(workers)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


#: The console script, as a person runs it (``pip install`` puts it beside the interpreter).
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("p2psync"))


def _handles_sigterm(pid: int) -> bool:
    """Whether ``pid`` has a SIGTERM handler in place (``SigCgt`` in ``/proc``): true once
    ``main`` runs, the earliest moment a console script's own code can act on a signal."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))[7:], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize(
    ("stop", "delay_s"),
    [
        (signal.SIGINT, 0.0),
        (signal.SIGINT, 0.05),
        (signal.SIGINT, 0.15),
        (signal.SIGINT, 0.3),
        (signal.SIGINT, 0.6),
        (signal.SIGTERM, 0.0),
        (signal.SIGTERM, 0.05),
        (signal.SIGTERM, 0.6),
        (signal.SIGTERM, 1.5),
    ],
)
def test_a_stop_while_the_command_loads_exits_cleanly(
    stop: signal.Signals, delay_s: float, tmp_path: Path
) -> None:
    """Ctrl-C (or SIGTERM) as soon as ``main`` runs and at a few moments after, while the
    command imports its modules and then while it serves: exit 130 (143), one line, no
    traceback (it printed a KeyboardInterrupt traceback and died by the signal; a server
    died by SIGTERM's default while it served)."""
    process = subprocess.Popen(
        [CONSOLE_SCRIPT, "registry", "--data", str(tmp_path), "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _handles_sigterm(process.pid):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(delay_s)  # the moment under test, not a wait for something to happen
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    assert process.returncode == (130 if stop == signal.SIGINT else 143), stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] in {"stopped", "terminated"}


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_the_fault_driver_stops_with_one_line_and_no_process_left(
    stop: signal.Signals,
) -> None:
    """``python -m benchmarks.faults`` stopped once its network is up: 143 (130) with one
    line, every process of the network ended (SIGTERM left 4 of 9 running; Ctrl-C printed
    an exception-group traceback and exited 1)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks.faults"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        said = await _stderr_until(process, b"network up", timeout_s=120)
        children = _descendants(process.pid)
        assert len(children) >= 9  # the registry, the file server, 3 nodes, 5 relays
        process.send_signal(stop)
        with trio.fail_after(30):
            code = await process.wait()
            said += await process.stderr.receive_some(65536) or b""
        assert code == (130 if stop == signal.SIGINT else 143)
        assert b"Traceback" not in said
        assert said.decode().strip().splitlines()[-1] in {"stopped", "terminated"}
        await _until_gone(children)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_fault_driver_checks_its_json_path_before_the_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.faults", "--json", "/nonexistent/faults.json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("no directory /nonexistent to write faults.json in")
    )
