"""A service of a network of hosts can make and join no namespace, and leaves no process
behind once it stops: what a service someone broke into could still do, tried as its uid."""

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

from p2psync.confine import CLONE_NEW_FLAGS
from p2psync.hosts import unavailable_reason
from p2psync.service_users import SERVICE_UID_BASE, as_service, end_every_process_of

UID = SERVICE_UID_BASE + 270
OTHER_UID = SERVICE_UID_BASE + 271
REASON = unavailable_reason()
needs_hosts = pytest.mark.skipif(REASON is not None, reason=f"no services' uids here: {REASON}")

#: What a broken-into service would try, as a module: every way to a namespace of its own
#: or another's, and what a service must still be able to do (threads, subprocesses).
TRIES = """
import ctypes, json, os, subprocess, threading

libc = ctypes.CDLL(None, use_errno=True)
SYS_CLONE, SYS_SETNS, SIGCHLD = 56, 308, 17
tried = {}
for name, flag in json.loads(os.environ["FLAGS"]).items():
    child = libc.syscall(SYS_CLONE, flag | SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        os._exit(0)
    if child > 0:
        os.waitpid(child, 0)
    tried["clone " + name] = child > 0
for options in (["--user"], ["--user", "--net"], ["--user", "--mount"]):
    tried["unshare " + " ".join(options)] = subprocess.run(
        ["unshare", *options, "true"], capture_output=True
    ).returncode == 0
with open("/proc/self/ns/net") as namespace:
    tried["setns"] = libc.syscall(SYS_SETNS, namespace.fileno(), 0) == 0
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
tried["thread"] = True
tried["subprocess"] = subprocess.run(["true"]).returncode == 0
print(json.dumps(tried))
"""


@pytest.fixture
def module_folder() -> Iterator[Path]:
    """A folder every uid can read, holding the module above."""
    folder = Path(tempfile.mkdtemp(prefix="p2psync-confine-"))
    folder.chmod(0o755)
    (folder / "tries.py").write_text(TRIES)
    (folder / "tries.py").chmod(0o644)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def _tries(folder: Path, *, confined: bool) -> dict[str, bool]:
    python = [sys.executable, "-P", "-m", *(("p2psync.confine",) if confined else ()), "tries"]
    environment = {**os.environ, "PYTHONPATH": str(folder), "FLAGS": json.dumps(CLONE_NEW_FLAGS)}
    result = subprocess.run(
        as_service(UID, python), capture_output=True, text=True, cwd="/", env=environment
    )
    assert result.returncode == 0, result.stderr
    tried: dict[str, bool] = json.loads(result.stdout)
    return tried


@needs_hosts
def test_a_confined_service_makes_and_joins_no_namespace_but_runs_threads_and_programs(
    module_folder: Path,
) -> None:
    confined = _tries(module_folder, confined=True)
    assert confined == {
        **{f"clone {name}": False for name in CLONE_NEW_FLAGS},
        "unshare --user": False,
        "unshare --user --net": False,
        "unshare --user --mount": False,
        "setns": False,
        "thread": True,
        "subprocess": True,
    }
    # Not vacuous: without the filter, the same uid makes a user namespace here (and with
    # it every other kind), where the kernel allows that.
    unconfined = _tries(module_folder, confined=False)
    if not unconfined["unshare --user"]:
        pytest.skip("this kernel lets no uid make a user namespace: nothing to take away")
    assert unconfined["clone user"] and unconfined["unshare --user --net"]


@needs_hosts
def test_every_process_a_services_uid_left_is_ended_and_no_other() -> None:
    left = [
        subprocess.Popen(as_service(UID, ["setsid", "sleep", "600"])),
        subprocess.Popen(as_service(UID, ["sh", "-c", "sleep 600 & sleep 600"])),
    ]
    other = subprocess.Popen(as_service(OTHER_UID, ["sleep", "600"]))
    try:
        assert _pids_of(UID), "the processes it left are running"
        end_every_process_of(UID)
        assert _pids_of(UID) == []
        for process in left:
            assert process.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None, "a process of another uid is not touched"
        end_every_process_of(UID)  # nothing left to end is not an error
    finally:
        for process in (*left, other):
            process.kill()
            process.wait()
        for pid in _pids_of(UID):  # what the shell started, had the test failed
            os.kill(pid, signal.SIGKILL)


def _pids_of(uid: int) -> list[int]:
    """Processes whose real uid is ``uid`` (zombies are ended already)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.partition(":")[::2] for line in status.splitlines())
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry.name))
    return pids
