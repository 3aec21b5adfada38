"""The record of a network of hosts (``DIR/hosts.json``) when ``network host`` adds a
device's host while ``network up`` is still making its own: the device takes an index
none of them has, and its entry stays in the record (real namespaces; needs root).

The moment is made, not waited for: an ``ip`` first on ``PATH`` holds the network's
first ``ip netns add`` until the test has added the device's host."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import trio

from p2psync.hosts import (
    HOSTS_FILE,
    Host,
    HostsRecord,
    open_device_host,
    open_hosts,
    unavailable_reason,
)

REASON = unavailable_reason()
NAMES = ["registry", "node-0", "relay-0"]

#: Passes every command to the real ip, but holds the first ``ip netns add <run>-0``
#: until the test opens the gate (both ends are FIFOs in $GATE).
GATED_IP = """#!/bin/sh
if [ "$1" = netns ] && [ "$2" = add ] && [ "${{3##*-}}" = 0 ] && mkdir "$GATE/held" 2>/dev/null
then
    echo held > "$GATE/reached"
    read go < "$GATE/open"
fi
exec {ip} "$@"
"""


def _open_gate(gate: Path) -> None:
    """Let the held ``ip`` go on (nothing to do if nothing is held)."""
    with contextlib.suppress(OSError):  # ENXIO: no ip is waiting
        descriptor = os.open(gate / "open", os.O_WRONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "w") as fifo:
            fifo.write("go\n")


@pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")
async def test_a_device_host_added_while_the_hosts_are_made_keeps_an_index_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_ip = shutil.which("ip")
    assert real_ip is not None
    gate, tools, net = tmp_path / "gate", tmp_path / "bin", tmp_path / "net"
    for folder in (gate, tools, net):
        folder.mkdir()
    os.mkfifo(gate / "reached")
    os.mkfifo(gate / "open")
    (tools / "ip").write_text(GATED_IP.format(ip=real_ip))
    (tools / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("GATE", str(gate))
    made: dict[str, Host] = {}
    up = trio.Event()

    async def network() -> None:
        async with open_hosts(net, NAMES) as hosts:
            made.update(hosts)
            up.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(network)
        try:
            with trio.fail_after(60):
                await trio.to_thread.run_sync((gate / "reached").read_text)
                async with open_device_host(net, "phone") as phone:
                    assert phone.namespace is not None
                    assert int(phone.namespace.rsplit("-", 1)[1]) == len(NAMES)
                    await trio.to_thread.run_sync(_open_gate, gate)
                    await up.wait()
                    assert phone.address not in {host.address for host in made.values()}
                    path = net / HOSTS_FILE
                    record = HostsRecord.decode(path.read_text(), path)
                    assert dict(record.hosts) == {
                        "registry": 0,
                        "node-0": 1,
                        "relay-0": 2,
                        "phone": 3,
                    }
        finally:
            _open_gate(gate)
            nursery.cancel_scope.cancel()
