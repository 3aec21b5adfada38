"""``network up --hosts``: every process on an address of its own, devices too, and
nothing left behind (namespace, veth, bridge or process) once it stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from overlay.addresses import split_host_port
from p2psync.hosts import unavailable_reason
from p2psync.service_users import as_service, service_uid
from p2psync.urls import bare_address

P2PSYNC = [sys.executable, "-m", "p2psync"]
REASON = unavailable_reason()
needs_hosts = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")


def _ip_names(*command: str) -> set[str]:
    """Names of namespaces (``netns list``) or links (``link show``) that exist now."""
    out = subprocess.run(["ip", "-j", *command], capture_output=True, check=True).stdout
    key = "name" if command[0] == "netns" else "ifname"
    return {entry[key] for entry in json.loads(out or b"[]")}


def _leftovers(prefix: str) -> set[str]:
    return {
        name
        for name in _ip_names("netns", "list") | _ip_names("link", "show")
        if name.startswith(prefix)
    }


def _processes_using(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (every child of the network has it
    in its ``--data``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _can_read(uid: int, path: Path) -> bool:
    """Whether ``uid`` (without capabilities, as a service runs) can read ``path``."""
    return subprocess.run(as_service(uid, ["cat", str(path)]), capture_output=True).returncode == 0


def _status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict ({} once the process is gone)."""
    try:
        lines = (Path("/proc") / str(pid) / "status").read_text().splitlines()
    except OSError:
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


async def _p2psync(*args: str) -> str:
    result = await trio.run_process(
        [*P2PSYNC, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode() + result.stderr.decode()


def _stale_run(tmp_path: Path) -> str:
    """What a run killed outright leaves: a record naming a dead launcher, its bridge
    and a namespace."""
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    run_id = "dead00"
    record = {"run_id": run_id, "subnet": 254, "pid": gone.pid, "hosts": {}}
    (tmp_path / "hosts.json").write_text(json.dumps(record))
    subprocess.run(["ip", "link", "add", f"p2ps{run_id}", "type", "bridge"], check=True)
    subprocess.run(["ip", "netns", "add", f"p2ps{run_id}-0"], check=True)
    return f"p2ps{run_id}"


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every service's uid can reach (pytest's own are under one only root may
    enter), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="p2psync-hosts-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@needs_hosts
def test_a_network_its_services_cannot_reach_runs_on_loopback_and_says_why(
    tmp_path: Path, open_folder: Path
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    assert unavailable_reason(open_folder) is None
    reason = unavailable_reason(closed / "net")
    assert reason is not None and "cannot reach" in reason and "chmod o+x" in reason


@needs_hosts
@pytest.mark.slow
async def test_network_of_hosts_comes_up_serves_devices_on_hosts_and_leaves_nothing(
    tmp_path: Path, open_folder: Path
) -> None:
    net = open_folder / "net"
    net.mkdir()
    stale = _stale_run(net)
    # A process node-0's uid left running when a launcher was killed outright.
    (net / "node-0").mkdir()
    left_by_a_killed_run = await trio.lowlevel.open_process(
        as_service(service_uid(net / "node-0"), ["setsid", "sleep", "600"])
    )
    process = await trio.lowlevel.open_process(
        [*P2PSYNC, "network", "up", "--hosts", "--nodes", "3", "--relays", "2", "--data", str(net)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(45):
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(1024)
                assert chunk, "network up exited early"
                line += chunk
        assert line.decode().strip() == f"ready {net / 'network.json'}"
        assert not _leftovers(stale), "the crashed run's namespace and bridge are gone"
        assert left_by_a_killed_run.poll() == -signal.SIGKILL, "and its processes"
        prefix = "p2ps" + json.loads((net / "hosts.json").read_text())["run_id"]
        assert len(_ip_names("netns", "list") & _leftovers(prefix)) == 8

        description = json.loads((net / "network.json").read_text())
        urls = [
            description["registry"],
            description["fileserver"],
            description["opengroup"],
            *(node["url"] for node in description["nodes"]),
            *(relay["address"] for relay in description["relays"]),
        ]
        assert len(urls) == 8
        hosts = [split_host_port(bare_address(url))[0] for url in urls]
        assert all(host.startswith("10.77.") for host in hosts), hosts
        assert len(set(hosts)) == 8, "each process on an address of its own"
        # Every service runs with no capability and no way to gain one, as a uid of its
        # own, which reads neither the ledger's key nor another service's keys.
        # Each is in a PID namespace of its own, whose first process is root's init (of
        # p2psync.contain, the launcher's child): none outlives the launcher.
        running = _processes_using(net)
        children = [pid for pid in running if _status(pid)["PPid"] == str(process.pid)]
        assert len(children) == 8 and all(b"p2psync.contain" in _cmdline(pid) for pid in children)
        inits = [pid for pid in running if _status(pid)["PPid"] in map(str, children)]
        assert len(inits) == 8 and all(_status(pid)["NSpid"].split()[-1] == "1" for pid in inits)
        assert all(_status(pid)["Uid"].split()[0] == "0" for pid in inits)
        services = [pid for pid in running if _status(pid)["PPid"] in map(str, inits)]
        assert len(services) == 8 and all(b"p2psync.confine" in _cmdline(pid) for pid in services)
        uids = set()
        for pid in services:
            status = _status(pid)
            assert status["CapEff"] == "0" * 16 and status["CapBnd"] == "0" * 16, (pid, status)
            assert status["NoNewPrivs"] == "1", (pid, status)
            assert status["Seccomp"] == "2", "it forbade itself namespaces (p2psync.confine)"
            assert os.getsid(pid) != os.getsid(process.pid), "no terminal of root's to take"
            uid, effective, saved, _ = (int(field) for field in status["Uid"].split())
            assert uid == effective == saved and uid != 0 and status["Groups"] == "", status
            uids.add(uid)
        assert len(uids) == 8
        node_key = net / "node-0" / "node.key"
        assert node_key.exists()
        owner = node_key.stat().st_uid
        assert owner in uids and _can_read(owner, node_key)
        assert not _can_read(owner, net / "ledger" / "ledger.key")
        assert not any(_can_read(uid, node_key) for uid in uids - {owner})
        # What a service someone broke into might start to outlive it.
        left_behind = await trio.lowlevel.open_process(
            as_service(owner, ["setsid", "sleep", "600"])
        )

        network = str(net / "network.json")
        alice, bob = str(tmp_path / "alice"), str(tmp_path / "bob")
        in_host = ("network", "host", "--data", str(net))
        await _p2psync(
            *in_host, "alice", "--", *P2PSYNC, "device", "init", "--data", alice, "--mode", "linked"
        )
        await _p2psync("device", "init", "--data", bob, "--mode", "linked")
        bob_id = json.loads(await _p2psync("device", "whoami", "--data", bob, "--json"))["user"]
        await _p2psync(
            *in_host,
            "alice",
            "--",
            *P2PSYNC,
            "device",
            "contacts",
            "--data",
            alice,
            "--network",
            network,
            "--add",
            bob_id,
            "--text",
            "from a host",
        )
        # A store is acknowledged once a quorum holds it, and a reader asks one member:
        # the one it asks may get its copy a moment later, so read until it is there.
        inbox = ""
        with trio.fail_after(20):
            while "'from a host'" not in inbox:
                inbox = await _p2psync(
                    *in_host, "bob", "--", *P2PSYNC, "device", "inbox", "--data", bob,
                    "--network", network,
                )  # fmt: skip
        assert len(_ip_names("netns", "list") & _leftovers(prefix)) == 8, "device hosts gone"
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await process.wait()
    assert code == 143
    with trio.fail_after(10):
        assert await left_behind.wait() == -signal.SIGKILL, "ended with its service"
    assert not _leftovers(prefix)
    assert not (net / "hosts.json").exists()
    assert _processes_using(net) == []


async def test_a_device_host_needs_a_running_network_of_hosts(tmp_path: Path) -> None:
    result = await trio.run_process(
        [*P2PSYNC, "network", "host", "--data", str(tmp_path), "alice", "--", "true"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"p2psync: error: no network of hosts runs on {tmp_path} (start: p2psync network up "
        f"--hosts --data {tmp_path})"
    ]
