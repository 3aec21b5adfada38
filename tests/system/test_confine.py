"""A service of a network of hosts can make and join no namespace, and leaves no process
behind once it stops: what a service someone broke into could still do, tried as its uid."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2psync.contain import CANNOT_START, PASSED_ON, become, contained
from p2psync.hosts import unavailable_reason
from p2psync.service_users import (
    REAPER_UID,
    SERVICE_UID_BASE,
    ServiceUserError,
    as_service,
    end_every_process_of,
)

#: Below the range services' uids are given from, so never a service's.
UID = SERVICE_UID_BASE - 300
OTHER_UID = SERVICE_UID_BASE - 301
#: linux/sched.h, written out here rather than read from the code under test.
NAMESPACE_FLAGS = {
    "mount": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
}
REASON = unavailable_reason()
needs_hosts = pytest.mark.skipif(REASON is not None, reason=f"no services' uids here: {REASON}")

#: What a broken-into service would try, as a module: every way to a namespace of its own
#: or another's, and what a service must still be able to do (threads, subprocesses).
TRIES = """
import ctypes, json, os, subprocess, threading

libc = ctypes.CDLL(None, use_errno=True)
SYS_CLONE, SYS_SETNS, SYS_CLONE3, SIGCHLD = 56, 308, 435, 17
NEWUSER = 0x10000000
tried = {}


def started(child):
    if child == 0:
        os._exit(0)
    if child > 0:
        os.waitpid(child, 0)
    return child > 0


# Each kind with a user namespace of its own, which grants the rights to make it.
for name, flag in json.loads(os.environ["FLAGS"]).items():
    tried["clone " + name] = started(libc.syscall(SYS_CLONE, NEWUSER | flag | SIGCHLD, 0, 0, 0, 0))
arguments = (ctypes.c_uint64 * 11)(NEWUSER, 0, 0, 0, SIGCHLD)  # struct clone_args
tried["clone3 user"] = started(libc.syscall(SYS_CLONE3, arguments, ctypes.sizeof(arguments)))
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
    environment = {**os.environ, "PYTHONPATH": str(folder), "FLAGS": json.dumps(NAMESPACE_FLAGS)}
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
        **{f"clone {name}": False for name in NAMESPACE_FLAGS},
        "clone3 user": False,
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
    assert all(unconfined[f"clone {name}"] for name in NAMESPACE_FLAGS), unconfined
    assert unconfined["clone3 user"] and unconfined["unshare --user --net"]


#: A broken-into service: it starts a process in a session of its own, clears its
#: parent-death signal (the option truncated to 32 bits, as the kernel reads it, so no
#: seccomp rule on the full argument would catch it), ignores SIGTERM, and never exits
#: when stdin closes.
LEAVES = """
import ctypes, signal, subprocess, time

subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, start_new_session=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
cleared = ctypes.CDLL(None).syscall(157, 0x100000001, 0, 0, 0, 0) == 0  # prctl
print("up", "cleared" if cleared else "kept", flush=True)
time.sleep(600)
"""

#: A launcher: starts the service (the command, in JSON) with a pipe as its stdin, says
#: its child's pid and what the service said, and waits to be killed.
LAUNCHER = """
import json, subprocess, sys, time

service = subprocess.Popen(json.loads(sys.argv[1]), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
print(service.pid, service.stdout.readline().decode().strip(), flush=True)
time.sleep(600)
"""


@needs_hosts
@pytest.mark.parametrize(
    ("contain", "killed"),
    [(True, "launcher"), (True, "its child"), (False, "launcher")],
    ids=["launcher killed", "contain killed", "not contained"],
)
def test_a_broken_into_service_and_what_it_started_end_with_a_launcher_killed_outright(
    module_folder: Path, contain: bool, killed: str
) -> None:
    """The launcher's child is :mod:`p2psync.contain`: killed with the launcher (its stdin
    closes) or on its own (its init's parent-death signal), its PID namespace ends."""
    (module_folder / "leaves.py").write_text(LEAVES)
    (module_folder / "leaves.py").chmod(0o644)
    service = as_service(UID, [sys.executable, "-P", "-m", "p2psync.confine", "leaves"])
    command = contained(service) if contain else service
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(command)],
        stdout=subprocess.PIPE,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(module_folder)},
    )
    try:
        assert launcher.stdout is not None
        child, said = launcher.stdout.readline().decode().split(" ", 1)
        assert said == "up cleared\n", "it has none of its own to rely on"
        running = _pids_of(UID)
        assert len(running) == 2, "the service and the process it left are running"
        ended = [os.pidfd_open(pid) for pid in running]
        os.kill(launcher.pid if killed == "launcher" else int(child), signal.SIGKILL)
        # Each pidfd reads as ready once its process is gone, wherever it was reparented.
        outcome = [bool(select.select([fd], [], [], 10 if contain else 1)[0]) for fd in ended]
        # Not vacuous: without the PID namespace both live on after their launcher.
        assert outcome == [contain, contain]
    finally:
        _end([launcher], UID)


@needs_hosts
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_contained_service_stops_on_the_launchers_signal_and_exits_as_it_did(
    signum: signal.Signals, code: int
) -> None:
    """As the launcher stops a service: SIGTERM, then SIGKILL after a grace period. A
    namespace's first process would ignore a SIGTERM it has no handler for (a service
    has none: it stops by SIGTERM's default), so the service must not be that process."""
    script = "import time; print('up', flush=True); time.sleep(600)"
    service = subprocess.Popen(
        contained(as_service(UID, [sys.executable, "-I", "-S", "-c", script])),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
    )
    try:
        assert service.stdout is not None and service.stdout.readline() == b"up\n"
        service.send_signal(signum)
        assert service.wait(timeout=10) == code, "ended by the signal, as the launcher reads it"
    finally:
        _end([service], UID)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_held_through_the_fork_ends_the_service_as_its_own_would(
    signum: signal.Signals,
) -> None:
    """contain holds SIGTERM and SIGINT across its forks; one that came meanwhile must
    meet the service's child with the default action, not a handler Python left there
    (SIGINT's KeyboardInterrupt ended the init as a failed start, 126)."""
    child = os.fork()
    if child == 0:  # as the init's child is: Python's handlers, the signals held
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, PASSED_ON)
            os.kill(os.getpid(), signum)
            become(["true"])
        finally:
            os._exit(CANNOT_START)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signum


def _running_as(uid: int, script: str) -> subprocess.Popen[bytes]:
    """``sh -c SCRIPT`` as ``uid``, returned once it runs as that uid: the script says
    ``up`` when it is (``setpriv`` changes uid after the process exists)."""
    process = subprocess.Popen(as_service(uid, ["sh", "-c", script]), stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"
    return process


def _end(processes: list[subprocess.Popen[bytes]], *uids: int) -> None:
    """Clean up after a test, passed or failed: every process it started, and every
    process of ``uids`` (what its shells started)."""
    for process in processes:
        process.kill()
    for uid in uids:
        for pid in _pids_of(uid):
            os.kill(pid, signal.SIGKILL)
    for process in processes:
        process.communicate()


@needs_hosts
def test_every_process_a_services_uid_left_is_ended_and_no_other() -> None:
    left = [
        _running_as(UID, "echo up; exec setsid sleep 600"),
        _running_as(UID, "sleep 600 & echo up; exec sleep 600"),
    ]
    other = _running_as(OTHER_UID, "echo up; exec sleep 600")
    try:
        assert len(_pids_of(UID)) == 3, "the processes it left are running"
        assert end_every_process_of(UID) == []
        assert _pids_of(UID) == []
        for process in left:
            assert process.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None, "a process of another uid is not touched"
        assert end_every_process_of(UID) == [], "nothing left to end is not an error"
    finally:
        _end([*left, other], UID)


#: A process left behind that fights whatever would end it: it stops, then kills, every
#: process its uid may signal, as fast as it can.
FIGHTER = """
import os, signal
print("fighting", flush=True)
while True:
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        try:
            os.kill(-1, sig)
        except OSError:
            pass
"""


@needs_hosts
def test_a_process_left_behind_that_fights_back_is_ended_all_the_same() -> None:
    """The reaper runs with a real and saved uid no service has, so a service's process
    can neither signal nor trace it."""
    fight = as_service(UID, [sys.executable, "-I", "-S", "-c", FIGHTER])
    fighter = subprocess.Popen(fight, stdout=subprocess.PIPE)
    try:
        for _ in range(3):
            assert fighter.stdout is not None and fighter.stdout.readline() == b"fighting\n"
            assert _pids_of(UID) == [fighter.pid]
            assert end_every_process_of(UID) == []
            assert fighter.wait(timeout=10) == -signal.SIGKILL
            fighter.stdout.close()
            fighter = subprocess.Popen(fight, stdout=subprocess.PIPE)
    finally:
        fighter.kill()
        fighter.communicate()


@needs_hosts
def test_the_processes_of_a_uid_an_account_has_now_are_not_ended() -> None:
    with pytest.raises(ServiceUserError, match="belongs to an account"):
        end_every_process_of(0)


#: A leftover that takes a while to die: the kernel frees its memory after the SIGKILL.
LARGE = """
import sys
held = bytearray(128 << 20)
for page in range(0, len(held), 4096):
    held[page] = 1
print("large", flush=True)
sys.stdin.read()
"""


@needs_hosts
def test_a_large_leftover_is_waited_for_not_reported() -> None:
    large = subprocess.Popen(
        as_service(UID, [sys.executable, "-I", "-S", "-c", LARGE]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert large.stdout is not None and large.stdout.readline() == b"large\n"
        assert end_every_process_of(UID) == []
        assert large.wait(timeout=10) == -signal.SIGKILL
    finally:
        large.kill()
        large.communicate()


@needs_hosts
def test_no_reap_while_someone_has_the_reapers_uid() -> None:
    """A process of the reaper's uid could signal (and stop) the reaper, and the reaper's
    kill would reach it: no reap then, and nothing ended."""
    left = _running_as(UID, "echo up; exec sleep 600")
    squatter = _running_as(REAPER_UID, "echo up; exec sleep 600")
    try:
        with pytest.raises(ServiceUserError, match="the reaper's uid"):
            end_every_process_of(UID)
        assert left.poll() is None and squatter.poll() is None
    finally:
        _end([left, squatter])


@needs_hosts
def test_a_reaper_waits_for_another_a_bounded_time(tmp_path: Path) -> None:
    lock = tmp_path / "reaper.lock"
    with open(lock, "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ServiceUserError, match="held by another reaper"):
            end_every_process_of(UID, lock=lock, timeout_s=0.2)


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
