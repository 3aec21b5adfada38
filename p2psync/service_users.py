"""A uid of its own for each service of a network of hosts (``network up --hosts``).

A service someone breaks into should hold nothing but its own folder: not root's files,
not the ledger's key, not another service's keys or store, and no process but its own to
signal. So each service runs without capabilities (``setpriv``) as a uid that is its
folder's alone, on this machine, for good: the uid a folder was given is kept in a
machine-wide book (:data:`BOOK`, root's alone) under the folder's path and inode, so the
folder has it again on the next run, and no uid is ever given twice, whatever became of
the folder that had it (a setuid program its service left in ``/tmp`` would otherwise
make someone that uid with a new folder). A uid is given only if no account, group,
subordinate range (``/etc/subuid``) or process has it.

Root never reaches into a folder a service has had: the launcher hands a folder over
(:func:`hand_over`) only while it is root's (new, or from a run before services had uids
of their own), when nothing a service left can be in it; a folder that belongs to
another uid than its own is refused. What root still reads or writes in a service's
folder (its registration, its public key) it opens without following links.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .process_lock import open_lock_file
from .whole_file import read_small_file, remove_leftovers, replace_file

#: How a service runs: with no capability and no way to gain one (``setpriv`` of
#: util-linux), which takes away joining or making namespaces, configuring interfaces and
#: routes, raw sockets and reading what its uid may not, and with no group but its own.
WITHOUT_CAPABILITIES = (
    "setpriv",
    "--no-new-privs",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--clear-groups",
)
#: Services' uids are given from here upward, skipping any an account, a group or a
#: process has (a directory service or a container's range may reach this far).
SERVICE_UID_BASE = 0x770000
#: The uid the start-up check runs as: below every service's, never given to one.
PROBE_UID = SERVICE_UID_BASE - 1
MAX_SERVICE_UIDS = 1 << 20
MAX_BOOK_BYTES = 64 << 20
#: The machine-wide book of which folder has which uid.
BOOK = Path("/var/lib/p2psync/service-uids.json")
#: Where containers' uid ranges are kept.
SUBORDINATE = (Path("/etc/subuid"), Path("/etc/subgid"))


class ServiceUserError(OSError):
    """A service's folder cannot be given to it (said in one line)."""


def as_service(uid: int, command: Sequence[str]) -> list[str]:
    """``command`` without capabilities, as ``uid`` (its group too, and no others)."""
    return [*WITHOUT_CAPABILITIES, f"--reuid={uid}", f"--regid={uid}", *command]


@dataclass(frozen=True)
class UidBook:
    """Folders (by :func:`folder_key`) and the uid each was given. Read back from a file,
    so every entry is checked: a uid outside the services' range would hand a folder to
    an account."""

    uids: Mapping[str, int]

    def encode(self) -> str:
        return json.dumps(dict(sorted(self.uids.items())), indent=1) + "\n"

    @classmethod
    def decode(cls, text: str) -> UidBook:
        try:
            record = json.loads(text)
        except ValueError as error:
            raise ServiceUserError(f"{BOOK} is not JSON: {error}") from None
        if not isinstance(record, dict) or not all(
            isinstance(folder, str)
            and folder.startswith("/")
            and "|" in folder
            and isinstance(uid, int)
            and not isinstance(uid, bool)
            and SERVICE_UID_BASE <= uid < SERVICE_UID_BASE + MAX_SERVICE_UIDS
            for folder, uid in record.items()
        ):
            raise ServiceUserError(f"{BOOK} must map folders to uids of services")
        return cls(record)

    def give(self, folder: str, taken: Callable[[int], bool]) -> tuple[int, UidBook]:
        """The uid of ``folder`` (its key, :func:`folder_key`), and the book after: the
        one it has, else one above every uid the book ever gave that ``taken`` does not
        say is someone's. None is given again, so the book only grows."""
        if folder in self.uids:
            return self.uids[folder], self
        start = max(self.uids.values(), default=SERVICE_UID_BASE - 1) + 1
        for uid in range(start, SERVICE_UID_BASE + MAX_SERVICE_UIDS):
            if not taken(uid):
                return uid, UidBook({**self.uids, folder: uid})
        raise ServiceUserError("every uid services may have is given")


# --- the driver ---------------------------------------------------------------------------


def folder_key(folder: Path) -> str:
    """A folder as the book knows it: its real path and its inode (not its device number,
    which a remount or a reboot may change on some file systems), so a folder renamed is
    one it has not seen (given a uid of its own, it is refused, still the old uid's, not
    handed over), and so is a new one made where a removed one was, unless the file
    system gave it the removed one's inode (then it is the same folder to the book, and
    the service of that path has it again)."""
    info = os.stat(folder, follow_symlinks=False)
    return f"{os.path.realpath(folder)}|{info.st_ino}"


def service_uid(folder: Path, book: Path = BOOK) -> int:
    """The uid of the service kept in ``folder`` (given now if it has none), recorded in
    ``book`` under a lock, so two launchers at once never give one uid twice. The book is
    replaced whole (a crash leaves the old one or the new), and one that cannot be read is
    an error, never an empty book that would give uids again."""
    book.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_lock_file(book.with_suffix(".lock")) as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        text = read_small_file(book, MAX_BOOK_BYTES)
        known = UidBook({}) if text is None else UidBook.decode(text.decode(errors="replace"))
        remove_leftovers(book)
        uid, after = known.give(folder_key(folder), taken_uids())
        if after is not known:
            replace_file(book, after.encode().encode())
    return uid


def taken_uids(
    subordinate: Sequence[Path] = SUBORDINATE,
) -> Callable[[int], bool]:
    """Whether an account, a group, a subordinate range (a container's) or a running
    process has a uid: the ranges and the processes read once, here, so a search past
    a long range costs a comparison a uid, not a scan."""
    accounted = accounted_for(subordinate)
    running: set[int] = set()
    for _, status in _statuses():
        for line in status.splitlines():
            if line.startswith(("Uid:", "Gid:")):
                running.update(int(field) for field in line.split()[1:] if field.isdigit())
    return lambda uid: uid in running or accounted(uid)


def accounted_for(subordinate: Sequence[Path] = SUBORDINATE) -> Callable[[int], bool]:
    """Whether an account, a group or a subordinate range has a uid (ranges read once)."""
    ranges = [span for path in subordinate for span in subordinate_ranges(path)]

    def accounted(uid: int) -> bool:
        if any(start <= uid < start + count for start, count in ranges):
            return True
        for lookup in (pwd.getpwuid, grp.getgrgid):
            try:
                lookup(uid)
                return True
            except KeyError:
                pass
        return False

    return accounted


def processes_of(uid: int) -> list[int]:
    """Processes whose real, effective or saved uid is ``uid``, those that have ended
    (zombies) left out; a leader that has ended while its other threads run has not."""
    pids = []
    for pid, status in _statuses():
        fields = dict(line.partition(":")[::2] for line in status.splitlines())
        uids = {int(field) for field in fields.get("Uid", "").split()[:3] if field.isdigit()}
        ended = fields.get("State", "").strip().startswith("Z")
        if uid in uids and (not ended or fields.get("Threads", "1").strip() != "1"):
            pids.append(pid)
    return pids


def subordinate_ranges(path: Path) -> list[tuple[int, int]]:
    """The ranges ``path`` (``name:start:count`` lines) gives, malformed lines left out."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    ranges = []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            ranges.append((int(parts[1]), int(parts[2])))
    return ranges


def hand_over(folder: Path, uid: int) -> None:
    """Make ``folder`` ``uid``'s, and its alone (mode 700).

    A folder that is root's (the launcher made it, or a run before services had uids of
    their own kept it) is handed over with all in it: nothing a service left can be in
    it. One that is ``uid``'s already is left as it is: root does not walk what a service
    could have filled with links. One of any other owner is refused."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        owner = os.fstat(descriptor).st_uid
        if owner == 0:
            os.fchmod(descriptor, 0o700)  # closed to all but root while it is handed over
            for _, directories, files, inside in os.fwalk(dir_fd=descriptor):
                for name in (*directories, *files):
                    _give(name, inside, uid)
            os.fchown(descriptor, uid, uid)
        elif owner != uid:
            raise ServiceUserError(
                f"{folder} belongs to uid {owner}, not to its service's ({uid}): "
                f"remove it, or chown -R {uid}:{uid} it if it is this service's"
            )
        os.fchmod(descriptor, 0o700)
    finally:
        os.close(descriptor)


def refuse_foreign_folder(folder: Path) -> None:
    """A service run as this process (on loopback) may not use a folder another uid has
    had: as root it would open, and SQLite create, whatever that uid left at the names
    it uses (a link to a file of root's)."""
    owner = os.stat(folder, follow_symlinks=False).st_uid
    if owner != os.geteuid():
        raise ServiceUserError(
            f"{folder} belongs to uid {owner} (a service of a network of hosts?), not to "
            f"this process's ({os.geteuid()}): run it with --hosts again, or remove it"
        )


def refuse_open_folder(folder: Path) -> None:
    """A network's folder run by root must be root's and writable by root alone, and so
    must every folder above it (one that others may write is allowed if it is sticky,
    as ``/tmp`` is): the launcher writes its logs, its ledger and its records there, and
    anyone who could put a link at one of those names, or swap the folder or one above
    it for a link, would have root write where it points (OpenSSH's StrictModes)."""
    if os.geteuid() != 0:
        return
    real = Path(os.path.realpath(folder))
    for place in (real, *real.parents):
        info = os.stat(place, follow_symlinks=False)
        shared = info.st_mode & 0o022 and not (place != real and info.st_mode & stat.S_ISVTX)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or shared:
            raise ServiceUserError(
                f"{folder} must be in folders of root's that only root may write, and "
                f"{place} is not (chown root and chmod go-w it, or choose another)"
            )


#: The real and saved uid of the process that ends what a service left running
#: (:func:`end_every_process_of`): given to no service and to nothing else, so no
#: service's process may signal it (that takes its real or saved uid) or trace it.
REAPER_UID = SERVICE_UID_BASE - 2
#: One reaper at a time on the machine: two would share a real uid, and could signal
#: each other.
REAPER_LOCK = BOOK.parent / "reaper.lock"
REAP_TIMEOUT_S = 10.0
REAP_LOCK_POLL_S = 0.05
#: Run by root: become the reaper (real and saved uid :data:`REAPER_UID`, effective uid
#: the service's, no capability left), then signal every process that uid may: the
#: service's uid's alone. The kernel goes through every process under a lock ``fork``
#: waits for, so one call reaches a process forked meanwhile too.
_REAP = """
import os, signal, sys
uid, reaper = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setresgid(reaper, reaper, reaper)
os.setresuid(reaper, uid, reaper)
try:
    os.kill(-1, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def end_every_process_of(
    uid: int, lock: Path = REAPER_LOCK, timeout_s: float = REAP_TIMEOUT_S
) -> list[int]:
    """Kill whatever runs as a service's ``uid`` (a service someone broke into may have
    started processes that left its process group and its session), wait for them to be
    gone, and return those still running after (none, unless something held them: a
    reason to refuse to start the service again). The uid is the service's alone, so
    this reaches nothing else; should an account, a group, a range or a container have
    it now, or the reaper's uid be anyone's, this is refused instead, in one line, as
    is a reaper that cannot finish within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_lock_file(lock) as held:
        _lock_until(held.fileno(), deadline, lock)
        _refuse_shared(uid)
        try:
            reaper = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _REAP, str(uid), str(REAPER_UID)],
                cwd="/",
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(0.0, deadline - time.monotonic()),
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise ServiceUserError(
                f"the reaper of uid {uid} did not finish within {timeout_s:g} s"
            ) from None
        if reaper.returncode != 0:
            said = (reaper.stderr.strip().splitlines() or ["no reason given"])[-1]
            raise ServiceUserError(f"the reaper of uid {uid} failed: {said}")
    left = processes_of(uid)
    for pid in left:
        _wait_gone(pid, deadline)  # SIGKILL is delivered; a large process takes a while
    return processes_of(uid)


def _lock_until(descriptor: int, deadline: float, path: Path) -> None:
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ServiceUserError(f"{path} is held by another reaper") from None
            time.sleep(REAP_LOCK_POLL_S)


def _refuse_shared(uid: int) -> None:
    """A uid a service shares with anyone is not the service's to reap: nor is a reap
    whose reaper's uid someone else has (the kernel lets a process signal the reaper
    when their real uids match)."""
    accounted = accounted_for()
    if accounted(uid) or accounted(REAPER_UID):
        raise ServiceUserError(
            f"uid {uid} or the reaper's {REAPER_UID} now belongs to an account, a group or "
            "a subordinate range: its processes are not a service's to end"
        )
    if processes_of(REAPER_UID):
        raise ServiceUserError(f"processes run as the reaper's uid {REAPER_UID}: not reaping")
    ours = os.stat("/proc/self/ns/user").st_ino
    for pid in processes_of(uid):
        try:
            theirs = os.stat(f"/proc/{pid}/ns/user").st_ino
        except OSError:
            continue
        if theirs != ours:  # a service makes no user namespace: a container's process
            raise ServiceUserError(f"uid {uid} runs in a container (process {pid}): not reaping")


def _wait_gone(pid: int, deadline: float) -> None:
    """Until ``pid`` has exited (its descriptor becomes readable) or the deadline."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(descriptor, select.POLLIN)
        poller.poll(max(0, int((deadline - time.monotonic()) * 1000)))
    finally:
        os.close(descriptor)


def _statuses() -> Iterator[tuple[int, str]]:
    """Each running process's pid and ``/proc/PID/status`` (one gone meanwhile left out)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "status").read_text()
            except OSError:
                continue


def open_log(path: Path) -> BinaryIO:
    """A service's log, appended to, its reader's (root's) alone and never a link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    descriptor = os.open(path, flags, 0o600)
    os.fchmod(descriptor, 0o600)  # a log kept from before is made so too
    return os.fdopen(descriptor, "ab")


def _give(name: str, directory: int, uid: int) -> None:
    """Only folders and files with one name: a file linked in from elsewhere is not the
    folder's to give (``/etc/shadow`` hard-linked in, where the kernel allows that)."""
    info = os.lstat(name, dir_fd=directory)
    if stat.S_ISDIR(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink == 1):
        os.chown(name, uid, uid, dir_fd=directory, follow_symlinks=False)
