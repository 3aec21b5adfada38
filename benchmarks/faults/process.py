"""One service (``p2psync node|registry|relay``) as a child process the fault driver owns.

Owning the child, rather than asking ``network up`` for pids, is what makes faults exact:
the driver can ``kill -9`` it at a chosen moment (a crash: no cleanup runs, only what
SQLite committed survives) and start it again on the same data directory *and port*, so
to the rest of the network the restarted service is the same one, at the same address,
with the same key and data.

Each incarnation is started by the launcher's :func:`p2psync.launcher.run_service`, the
same code ``network up`` uses, inside the caller's nursery, so no child outlives the
driver's ``async with``; ``--exit-with-stdin`` covers the driver itself being killed
outright.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

import trio

from p2psync.hosts import port_of
from p2psync.launcher import Running, Service, run_service, stop_child


def _read_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ServiceProcess:
    """A restartable child. ``peak_rss_kib`` is the highest ``VmHWM`` seen over every
    incarnation: it is sampled before each kill, since the kernel forgets it at death."""

    def __init__(self, name: str, args: Sequence[str], data_dir: Path) -> None:
        self.service = Service(name, tuple(args), data_dir)
        self.url = ""
        self.peak_rss_kib = 0
        self.starts = 0
        self._port = 0
        self._process: trio.Process | None = None
        #: Set once the last incarnation's run has ended, its clean-up included.
        self._ended = trio.Event()
        self._ended.set()

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        """The running incarnation's pid (to sample its memory)."""
        return self._require_running().pid

    @property
    def log_path(self) -> Path:
        return self.service.log_path

    async def start(self, nursery: trio.Nursery) -> str:
        """Start an incarnation in ``nursery``; return its url once it prints ``ready``.
        A restart listens on the port the first incarnation was given."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        # The process may be gone while its run still cleans up after it (a service on a
        # host: ending what its uid left), which must not meet the next incarnation.
        await self._ended.wait()
        running: Running = await nursery.start(self._incarnation)
        self._process = running.process
        self.starts += 1
        if not self.url:
            self.url = running.url
            self._port = port_of(running.url)
        elif running.url != self.url:
            raise RuntimeError(f"{self.name} came back at {running.url}, not {self.url}")
        return running.url

    async def _incarnation(self, *, task_status: trio.TaskStatus[Running]) -> int:
        self._ended = ended = trio.Event()
        try:
            return await run_service(self.service, self._port, task_status=task_status)
        finally:
            ended.set()

    def sample_rss(self) -> int:
        """Update and return the peak resident set size (KiB) of this service."""
        if self._process is not None and self.running:
            self.peak_rss_kib = max(self.peak_rss_kib, _read_kib(self._process.pid, "VmHWM"))
        return self.peak_rss_kib

    def pause(self, paused: bool = True) -> None:
        """``SIGSTOP`` (or ``SIGCONT``): the process holds its sockets but answers nothing,
        as a machine that hangs would."""
        self._require_running().send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    async def kill(self) -> None:
        """``kill -9``: the process gets no chance to flush, close or say goodbye."""
        process = self._require_running()
        self.sample_rss()
        process.kill()
        await process.wait()

    async def stop(self) -> None:
        """An orderly stop, as ``network up`` stops its children (see :func:`stop_child`)."""
        process = self._require_running()
        self.sample_rss()
        await stop_child(process)
        await process.wait()

    def _require_running(self) -> trio.Process:
        if self._process is None or not self.running:
            raise RuntimeError(f"{self.name} is not running")
        return self._process
