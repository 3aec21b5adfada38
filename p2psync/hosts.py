"""Hosts of their own: each process in a Linux network namespace with its own address.

On loopback every process shares 127.0.0.1, so a run cannot show what a process reveals
by its address, nor that it works when its peers are elsewhere. ``network up --hosts``
puts every child in a namespace of its own, joined by a veth pair to a bridge the run
makes, and ``network host`` adds one more (for a device) to a running network.

Every name a run makes starts with ``p2ps<run id>`` (the bridge ``p2ps<id>``, namespaces
``p2ps<id>-<n>``, the root ends of the veth pairs ``p2ps<id>v<n>``), so two runs never
collide and what a run left behind when it was killed outright is found by that prefix
and removed by the next run on the same data directory. Each run takes the first /24 of
10.77.0.0/16 that no interface here holds: the bridge (so the root namespace, where
devices run by default) is ``.1``, hosts are ``.2`` onwards.

:class:`HostPlan` is pure (names, addresses, and the ``ip`` commands that make and remove
them); :func:`open_hosts` and :func:`open_device_host` run those commands. A service on
a host runs as a uid of its own (:mod:`.service_users`). Where a child
listens, and how its address is read back from its url, is decided here and only here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import trio

from overlay.addresses import split_host_port

from .contain import contained
from .process_lock import open_lock_file
from .service_users import BOOK, PROBE_UID, as_service
from .urls import bare_address

logger = logging.getLogger(__name__)

NETWORK = "10.77"
NAME_PREFIX = "p2ps"
RUN_ID_HEX = 6
#: Host addresses are .2 to .254 of the run's /24.
MAX_HOSTS = 253
HOSTS_FILE = "hosts.json"
#: Held while a run picks its /24 and claims it, so two runs starting at once differ;
#: in root's own folder (hosts need root), where no one else can hold or replace it.
SUBNET_LOCK = BOOK.parent / "hosts.lock"


class HostsError(OSError):
    """Hosts could not be made or found (said in one line)."""


@dataclass(frozen=True)
class Host:
    """Where a child runs: loopback here, or a namespace with an address of its own."""

    address: str
    namespace: str | None = None

    def wrap(self, command: Sequence[str]) -> list[str]:
        """``command`` run in this host, as it is (``p2psync network host``: the user's
        own command, with the rights the user gave it)."""
        if self.namespace is None:
            return list(command)
        return ["ip", "netns", "exec", self.namespace, *command]

    def wrap_service(self, command: Sequence[str], uid: int | None) -> list[str]:
        """A service of the network run in this host: in a namespace, as ``uid``
        without capabilities (:func:`~.service_users.as_service`), which a host in a
        namespace requires, in a PID namespace that ends with its launcher
        (:mod:`.contain`)."""
        if self.namespace is None:
            return list(command)
        if uid is None:
            raise ValueError("a service on a host runs as a uid of its own")
        return contained(self.wrap(as_service(uid, command)))

    def listen(self, port: int = 0) -> str:
        """The ``--listen`` of a service on this host (port 0: any free one)."""
        return f"{self.address}:{port}"


LOOPBACK = Host("127.0.0.1")


def port_of(url: str) -> int:
    """The port a service announced in ``url`` (``wss://host:port/<key>``, ``ws://host:port``
    or a relay's ``host:port#<key>``), so a restart can listen there again and stay the
    same service to its peers."""
    return split_host_port(bare_address(url))[1]


@dataclass(frozen=True)
class HostPlan:
    """One run's names and addresses, and the ``ip`` commands for them."""

    run_id: str
    subnet: int

    def __post_init__(self) -> None:
        if len(self.run_id) != RUN_ID_HEX or any(c not in "0123456789abcdef" for c in self.run_id):
            raise ValueError(f"a run id is {RUN_ID_HEX} lowercase hex digits, not {self.run_id!r}")
        if not 0 <= self.subnet <= 255:
            raise ValueError(f"subnet {self.subnet} is outside 0-255")

    @property
    def prefix(self) -> str:
        return f"{NAME_PREFIX}{self.run_id}"

    @property
    def bridge(self) -> str:
        return self.prefix

    @property
    def gateway(self) -> str:
        """The bridge's address: how the root namespace reaches every host."""
        return f"{NETWORK}.{self.subnet}.1"

    def host(self, index: int) -> Host:
        if not 0 <= index < MAX_HOSTS:
            raise ValueError(f"host {index} is outside 0-{MAX_HOSTS - 1}")
        return Host(f"{NETWORK}.{self.subnet}.{index + 2}", f"{self.prefix}-{index}")

    def _veth(self, index: int) -> str:
        return f"{self.prefix}v{index}"

    def bridge_commands(self) -> list[list[str]]:
        return [
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ]

    def host_commands(self, index: int) -> list[list[str]]:
        host = self.host(index)
        assert host.namespace is not None
        namespace, veth = host.namespace, self._veth(index)
        inside = ["ip", "-n", namespace]
        return [
            ["ip", "netns", "add", namespace],
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace],
            ["ip", "link", "set", veth, "master", self.bridge, "up"],
            [*inside, "addr", "add", f"{host.address}/24", "dev", "eth0"],
            [*inside, "link", "set", "eth0", "up"],
            [*inside, "link", "set", "lo", "up"],
        ]

    def host_removals(self, index: int) -> list[list[str]]:
        """The veth pair goes with its root end, even while a process still holds the
        namespace; the namespace's name goes with it."""
        namespace = self.host(index).namespace
        assert namespace is not None
        return [["ip", "link", "del", self._veth(index)], ["ip", "netns", "del", namespace]]


@dataclass(frozen=True)
class HostsRecord:
    """``DIR/hosts.json``: the run on ``DIR`` (its plan and launcher's pid) and its hosts
    by name. Read back from disk, so every field is checked: a pid of 0 or below would
    make the liveness check signal a process group, an index out of range an address
    outside the run's /24."""

    plan: HostPlan
    pid: int
    hosts: Mapping[str, int]

    def encode(self) -> str:
        record = {
            "run_id": self.plan.run_id,
            "subnet": self.plan.subnet,
            "pid": self.pid,
            "hosts": dict(self.hosts),
        }
        return json.dumps(record, indent=2) + "\n"

    @classmethod
    def decode(cls, text: str, path: Path) -> HostsRecord:
        try:
            record = json.loads(text)
        except ValueError as error:
            raise HostsError(f"{path} is not JSON: {error}") from None
        if not isinstance(record, dict):
            raise HostsError(f"{path} is not a record of hosts")
        run_id, subnet, pid, hosts = (
            record.get(key) for key in ("run_id", "subnet", "pid", "hosts")
        )
        if not isinstance(run_id, str) or not _is_int(subnet) or not _is_int(pid) or pid < 1:
            raise HostsError(f"{path}: run_id, subnet or pid is missing or out of range")
        if not isinstance(hosts, dict) or not all(
            isinstance(name, str) and _is_int(index) and 0 <= index < MAX_HOSTS
            for name, index in hosts.items()
        ):
            raise HostsError(f"{path}: hosts must map names to indexes 0-{MAX_HOSTS - 1}")
        try:
            plan = HostPlan(run_id, subnet)
        except ValueError as error:
            raise HostsError(f"{path}: {error}") from None
        return cls(plan, pid, hosts)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def removals(run_id: str, namespaces: Iterable[str], links: Iterable[str]) -> list[list[str]]:
    """Commands that remove whatever of run ``run_id`` exists: links first (veth root ends,
    then the bridge), then namespaces. Run ids have a fixed length, so the prefix of one
    is never the prefix of another's names."""
    prefix = f"{NAME_PREFIX}{run_id}"
    ours = sorted((name for name in links if name.startswith(prefix)), key=len, reverse=True)
    return [
        *(["ip", "link", "del", name] for name in ours),
        *(["ip", "netns", "del", name] for name in sorted(namespaces) if name.startswith(prefix)),
    ]


def pick_subnet(addresses: Iterable[str]) -> int:
    """The first /24 of 10.77.0.0/16 that none of ``addresses`` is in."""
    taken = set()
    for address in addresses:
        parts = address.split(".")
        if len(parts) == 4 and ".".join(parts[:2]) == NETWORK and parts[2].isdigit():
            taken.add(int(parts[2]))
    for subnet in range(256):
        if subnet not in taken:
            return subnet
    raise HostsError(f"every /24 of {NETWORK}.0.0/16 is in use here")


def next_index(taken: Iterable[int]) -> int:
    used = set(taken)
    index = next(i for i in range(MAX_HOSTS + 1) if i not in used)
    if index == MAX_HOSTS:
        raise HostsError(f"a network of hosts holds at most {MAX_HOSTS}")
    return index


def unavailable_reason(data_dir: Path | None = None) -> str | None:
    """Why hosts cannot be made here, for a network kept in ``data_dir`` (None: they
    can); asked before a run so it can fall back to loopback instead of failing half-way.
    Creating and removing a namespace is the honest test: a container may run as root
    without the right to make one. Services, each its own uid, must reach their folders
    in ``data_dir`` (SQLite opens a file by its whole path, so every folder above must
    be open to others, as ``/var/lib`` and ``/tmp`` are and ``/root`` is not)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if shutil.which("setpriv") is None:
        return "the setpriv command (util-linux), which gives each service a uid, is missing"
    # A service's uid reads only what is open to all: a Python (or a virtualenv) in a
    # user's home may be out of its reach, or only its program may be, so that it runs
    # another Python's library (the system's, found where its own is closed). Extension
    # modules hold across a minor version's releases, not across minor versions.
    # And it must be able to forbid itself namespaces (libseccomp), and still start a
    # thread under that filter (which turns ``clone3`` away), in a PID namespace of its
    # own (a container may not let root make one).
    probe = (
        "import sys, threading, p2psync.confine, p2psync.services\n"
        "p2psync.confine.forbid_namespaces()\n"
        "thread = threading.Thread(target=lambda: None)\n"
        "thread.start()\n"
        "thread.join()\n"
        "print(*sys.version_info[:2])"
    )
    confined = subprocess.run(
        contained(as_service(PROBE_UID, [sys.executable, "-c", probe])),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd="/",
    )
    if confined.returncode != 0:
        said = (confined.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"{sys.executable} cannot run as a service's own uid: {said}"
    ours = "{} {}".format(*sys.version_info[:2])
    if confined.stdout.strip() != ours:
        theirs = confined.stdout.strip().replace(" ", ".")
        return (
            f"{sys.executable} runs as Python {theirs} for a service's own uid, not "
            f"{ours.replace(' ', '.')}: its files are not all open to others"
        )
    try:
        BOOK.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(BOOK.parent, os.W_OK):
            raise PermissionError("not writable")
    except OSError as error:
        return f"the services' uids cannot be kept in {BOOK.parent}: {error}"
    if data_dir is not None:
        reach = as_service(PROBE_UID, ["test", "-x", str(data_dir.absolute())])
        if subprocess.run(reach, cwd="/").returncode != 0:
            return (
                f"a service's own uid cannot reach {data_dir} "
                "(every folder down to it must be open to others: chmod o+x)"
            )
    probe = f"{NAME_PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {_first_line(made.stderr)}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# --- the driver: runs the plan's commands ---------------------------------------------------


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no reason given")


async def _ip(command: Sequence[str]) -> str:
    result = await trio.run_process(
        list(command), capture_stdout=True, capture_stderr=True, check=False
    )
    if result.returncode != 0:
        raise HostsError(
            f"{' '.join(command)}: {_first_line(result.stderr.decode(errors='replace'))}"
        )
    return result.stdout.decode()


async def _ip_json(command: Sequence[str]) -> list[dict[str, Any]]:
    text = (await _ip(["ip", "-j", *command])).strip()
    return list(json.loads(text)) if text else []


async def _remove(commands: Sequence[Sequence[str]]) -> None:
    """Run every removal, logging (not raising) the ones that fail, so one leftover does
    not keep the rest behind."""
    for command in commands:
        try:
            await _ip(command)
        except HostsError as error:
            logger.warning("could not remove: %s", error)


async def _remove_run(run_id: str) -> None:
    namespaces = [entry["name"] for entry in await _ip_json(["netns", "list"])]
    links = [entry["ifname"] for entry in await _ip_json(["link", "show"])]
    await _remove(removals(run_id, namespaces, links))


@asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    with open_lock_file(path) as handle:
        await trio.to_thread.run_sync(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _read_record(data_dir: Path) -> HostsRecord | None:
    try:
        text = (data_dir / HOSTS_FILE).read_text()
    except FileNotFoundError:
        return None
    return HostsRecord.decode(text, data_dir / HOSTS_FILE)


def _write_record(data_dir: Path, record: HostsRecord) -> None:
    (data_dir / HOSTS_FILE).write_text(record.encode())


@asynccontextmanager
async def open_hosts(data_dir: Path, names: Sequence[str]) -> AsyncIterator[dict[str, Host]]:
    """A host for each of ``names``, removed (with the bridge) on exit, however it exits.

    What an earlier run on ``data_dir`` left (it was killed before it could clean up) is
    removed first; a run on ``data_dir`` that is still alive is refused.
    ``DATA_DIR/hosts.json`` records the run (id, subnet, pid, hosts) while it lasts, for
    that clean-up and for :func:`open_device_host`. It is written once, whole, under the
    lock, before any host is made: a ``network host`` that comes while they are being
    made then takes an index none of them has, and its own entry is never overwritten."""
    if len(names) > MAX_HOSTS:
        raise HostsError(f"a network of hosts holds at most {MAX_HOSTS}")
    lock = data_dir / "hosts.lock"
    async with _locked(lock):
        stale = _read_record(data_dir)
        if stale is not None:
            if stale.pid != os.getpid() and _alive(stale.pid):
                raise HostsError(f"a network of hosts already runs on {data_dir} (pid {stale.pid})")
            await _remove_run(stale.plan.run_id)
        SUBNET_LOCK.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        async with _locked(SUBNET_LOCK):
            addresses = [
                info["local"]
                for entry in await _ip_json(["-4", "addr", "show"])
                for info in entry.get("addr_info", [])
            ]
            plan = HostPlan(secrets.token_hex(RUN_ID_HEX // 2), pick_subnet(addresses))
            claimed = {name: index for index, name in enumerate(names)}
            _write_record(data_dir, HostsRecord(plan, os.getpid(), claimed))
            try:
                for command in plan.bridge_commands():
                    await _ip(command)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _remove_run(plan.run_id)
                (data_dir / HOSTS_FILE).unlink(missing_ok=True)
                raise
    try:
        hosts: dict[str, Host] = {}
        for index, name in enumerate(names):
            for command in plan.host_commands(index):
                await _ip(command)
            hosts[name] = plan.host(index)
        yield hosts
    finally:
        with trio.CancelScope(shield=True):
            await _remove_run(plan.run_id)
            async with _locked(lock):
                (data_dir / HOSTS_FILE).unlink(missing_ok=True)


@asynccontextmanager
async def open_device_host(data_dir: Path, name: str) -> AsyncIterator[Host]:
    """One more host, ``name``, on the network of hosts running on ``data_dir``, removed
    on exit; for a device, so it too is seen at an address of its own."""
    not_running = HostsError(
        f"no network of hosts runs on {data_dir} (start: p2psync network up --hosts "
        f"--data {data_dir})"
    )
    if not (data_dir / HOSTS_FILE).exists():
        raise not_running
    lock = data_dir / "hosts.lock"
    async with _locked(lock):
        record = _read_record(data_dir)
        if record is None or not _alive(record.pid):
            raise not_running
        if name in record.hosts:
            raise HostsError(f"{data_dir} already has a host named {name}")
        plan = record.plan
        index = next_index(record.hosts.values())
        _write_record(data_dir, HostsRecord(plan, record.pid, {**record.hosts, name: index}))
    try:
        for command in plan.host_commands(index):
            await _ip(command)
        yield plan.host(index)
    finally:
        with trio.CancelScope(shield=True):
            await _remove(plan.host_removals(index))
            async with _locked(lock):
                current = _read_record(data_dir)
                if current is not None and current.plan == plan:
                    hosts = {n: i for n, i in current.hosts.items() if n != name}
                    _write_record(data_dir, HostsRecord(plan, current.pid, hosts))
