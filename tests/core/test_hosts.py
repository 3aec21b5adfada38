"""The plan of a network of hosts: names that fit the kernel and never collide across
runs, addresses in the run's /24, and removals that touch only the run's own names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from p2psync.hosts import (
    LOOPBACK,
    MAX_HOSTS,
    Host,
    HostPlan,
    HostsError,
    HostsRecord,
    next_index,
    pick_subnet,
    port_of,
    removals,
)
from p2psync.launcher import Service
from p2psync.service_users import SERVICE_UID_BASE, as_service

#: The kernel's limit on an interface name (IFNAMSIZ - 1).
MAX_IFNAME = 15


def _names_made(plan: HostPlan, index: int) -> set[str]:
    """Interface names the plan's commands create in the root namespace."""
    made = set()
    for command in [*plan.bridge_commands(), *plan.host_commands(index)]:
        if command[:3] == ["ip", "link", "add"]:
            made.add(command[3])
    return made


def test_every_interface_name_fits_the_kernel_even_for_the_last_host() -> None:
    plan = HostPlan("abcdef", 3)
    names = _names_made(plan, MAX_HOSTS - 1)
    assert names == {"p2psabcdef", f"p2psabcdefv{MAX_HOSTS - 1}"}
    assert all(len(name) <= MAX_IFNAME for name in names)


def test_hosts_have_addresses_of_their_own_in_the_runs_subnet() -> None:
    plan = HostPlan("abcdef", 3)
    hosts = [plan.host(index) for index in range(MAX_HOSTS)]
    assert plan.gateway == "10.77.3.1"
    assert hosts[0] == Host("10.77.3.2", "p2psabcdef-0")
    assert hosts[-1].address == "10.77.3.254"
    assert len({host.address for host in hosts} | {plan.gateway}) == MAX_HOSTS + 1


@pytest.mark.parametrize("index", [-1, MAX_HOSTS])
def test_a_host_outside_the_subnet_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        HostPlan("abcdef", 0).host(index)


@pytest.mark.parametrize(
    ("run_id", "subnet"),
    [("abcde", 0), ("abcdefa", 0), ("ABCDEF", 0), ("abcdeg", 0), ("abcdef", 256), ("abcdef", -1)],
)
def test_a_record_with_a_bad_run_id_or_subnet_is_refused(run_id: str, subnet: int) -> None:
    with pytest.raises(ValueError):
        HostPlan(run_id, subnet)


def test_removals_touch_only_the_runs_own_names_links_before_namespaces() -> None:
    commands = removals(
        "abcdef",
        namespaces=["p2psabcdef-1", "p2psabcdef-0", "p2ps123456-0", "other"],
        links=["lo", "eth0", "p2psabcdef", "p2psabcdefv0", "p2ps123456", "p2ps123456v0"],
    )
    assert commands == [
        ["ip", "link", "del", "p2psabcdefv0"],
        ["ip", "link", "del", "p2psabcdef"],
        ["ip", "netns", "del", "p2psabcdef-0"],
        ["ip", "netns", "del", "p2psabcdef-1"],
    ]


def test_a_device_host_removes_its_veth_and_namespace() -> None:
    assert HostPlan("abcdef", 0).host_removals(7) == [
        ["ip", "link", "del", "p2psabcdefv7"],
        ["ip", "netns", "del", "p2psabcdef-7"],
    ]


def test_a_run_takes_the_first_subnet_no_interface_holds() -> None:
    assert pick_subnet(["127.0.0.1", "10.0.0.5"]) == 0
    assert pick_subnet(["10.77.0.1", "10.77.1.1", "10.77.3.1", "10.78.2.1"]) == 2
    with pytest.raises(HostsError, match="in use"):
        pick_subnet(f"10.77.{n}.1" for n in range(256))


def test_a_device_host_takes_the_first_free_index() -> None:
    assert next_index([]) == 0
    assert next_index([0, 1, 3]) == 2
    with pytest.raises(HostsError, match="at most"):
        next_index(range(MAX_HOSTS))


def test_a_host_wraps_commands_in_its_namespace_and_listens_on_its_address() -> None:
    host = HostPlan("abcdef", 0).host(0)
    assert host.wrap(["ping", "10.77.0.1"]) == [
        "ip",
        "netns",
        "exec",
        "p2psabcdef-0",
        "ping",
        "10.77.0.1",
    ]
    command = ["p2psync", "node"]
    # In a PID namespace that ends with the launcher, made by root's p2psync.contain.
    assert host.wrap_service(command, SERVICE_UID_BASE) == [
        sys.executable, "-P", "-m", "p2psync.contain",
        *host.wrap(as_service(SERVICE_UID_BASE, command)),
    ]  # fmt: skip
    assert host.listen() == "10.77.0.2:0"
    assert LOOPBACK.wrap(["p2psync"]) == LOOPBACK.wrap_service(["p2psync"], None) == ["p2psync"]
    with pytest.raises(ValueError, match="uid of its own"):
        host.wrap_service(["p2psync", "node"], None)
    assert LOOPBACK.listen(9000) == "127.0.0.1:9000"


def test_a_restart_listens_on_the_announced_port() -> None:
    assert port_of("ws://10.77.0.2:4321") == 4321
    assert port_of("10.77.0.9:4000") == 4000
    with pytest.raises(ValueError):
        port_of("ws://10.77.0.2")


GOOD_RECORD = {"run_id": "abcdef", "subnet": 3, "pid": 4242, "hosts": {"registry": 0, "alice": 9}}


def test_a_record_reads_back_what_was_written() -> None:
    record = HostsRecord.decode(json.dumps(GOOD_RECORD), Path("hosts.json"))
    assert record == HostsRecord(HostPlan("abcdef", 3), 4242, {"registry": 0, "alice": 9})
    assert HostsRecord.decode(record.encode(), Path("hosts.json")) == record


@pytest.mark.parametrize(
    "change",
    [
        {"pid": 0},  # os.kill(0, 0) would ask about this process group, not a launcher
        {"pid": -1},  # os.kill(-1, 0) would ask about every process
        {"pid": True},
        {"pid": "4242"},
        {"subnet": 256},
        {"subnet": -1},
        {"run_id": "abc"},
        {"hosts": {"alice": MAX_HOSTS}},
        {"hosts": {"alice": -1}},
        {"hosts": {"alice": "0"}},
        {"hosts": ["alice"]},
    ],
)
def test_a_record_with_a_field_out_of_range_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(HostsError, match=r"hosts\.json"):
        HostsRecord.decode(json.dumps({**GOOD_RECORD, **change}), Path("hosts.json"))


@pytest.mark.parametrize("text", ["", "{", "[]", '{"run_id": "abcdef"}'])
def test_a_record_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(HostsError, match=r"hosts\.json"):
        HostsRecord.decode(text, Path("hosts.json"))


def test_a_service_on_a_host_gets_its_folder_whole_a_clean_path_and_no_namespace() -> None:
    """It starts in ``/``, so a folder given relative to the launcher's would be another;
    its working folder is off its import path (``-P``); it starts by forbidding itself
    namespaces (:mod:`p2psync.confine`)."""
    host = HostPlan("abcdef", 0).host(0)
    command = Service("node-0", ("node",), Path("net/node-0"), host, SERVICE_UID_BASE).command()
    assert command[command.index("--data") + 1] == str(Path("net/node-0").absolute())
    python = command.index(sys.executable, 1)  # the first is p2psync.contain's
    assert command[python : python + 6] == [
        sys.executable, "-P", "-m", "p2psync.confine", "p2psync", "node"
    ]  # fmt: skip
    loopback = Service("node-0", ("node",), Path("net/node-0")).command()
    assert loopback[:4] == [sys.executable, "-m", "p2psync", "node"]
