"""One service (``p2psync node|registry|relay``) as a child process the fault driver owns.

Owning the child, rather than asking ``network up`` for pids, is what makes faults exact:
the driver can ``kill -9`` it at a chosen moment (a crash: no cleanup runs, only what
SQLite committed survives) and start it again on the same data directory *and port*, so
to the rest of the network the restarted service is the same one, at the same address,
with the same key and data.

Each incarnation runs as ``trio.run_process`` inside the caller's nursery, so no child
outlives the driver's ``async with``; ``--exit-with-stdin`` covers the driver itself
being killed outright.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from overlay.link import split_host_port

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


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
        self.name = name
        self.args = list(args)
        self.data_dir = data_dir
        self.url = ""
        self.peak_rss_kib = 0
        self.starts = 0
        self._listen = "127.0.0.1:0"
        self._process: trio.Process | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int:
        """The running incarnation's pid (to sample its memory)."""
        return self._require_running().pid

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    async def start(self, nursery: trio.Nursery) -> str:
        """Start an incarnation in ``nursery``; return its url once it prints ``ready``.
        A restart listens on the port the first incarnation was given."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "p2psync",
            *self.args,
            "--data",
            str(self.data_dir),
            "--listen",
            self._listen,
            "--exit-with-stdin",
        ]
        with self.log_path.open("ab") as log:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    check=False,
                )
            )
        self._process = process
        self.starts += 1
        with trio.fail_after(READY_TIMEOUT_S):
            url = await self._ready_line(process)
        if not self.url:
            self.url = url
            host, port = split_host_port(url.removeprefix("ws://"))
            self._listen = f"{host}:{port}"
        elif url != self.url:
            raise RuntimeError(f"{self.name} came back at {url}, not {self.url}")
        return url

    async def _ready_line(self, process: trio.Process) -> str:
        assert process.stdout is not None
        buffer = b""
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"{self.name} exited before it was ready (see {self.log_path})")
            buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith("ready "):
            raise RuntimeError(f"{self.name} said {line!r} instead of 'ready <url>'")
        return line.removeprefix("ready ")

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
        """An orderly stop (SIGTERM), escalating to SIGKILL after ``STOP_GRACE_S``."""
        process = self._require_running()
        self.sample_rss()
        process.terminate()
        with trio.move_on_after(STOP_GRACE_S) as waiting:
            await process.wait()
        if waiting.cancelled_caught:
            process.kill()
            await process.wait()

    def _require_running(self) -> trio.Process:
        if self._process is None or not self.running:
            raise RuntimeError(f"{self.name} is not running")
        return self._process
