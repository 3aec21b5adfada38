"""Commands handed to a running device over its folder's socket (:mod:`p2psync.cli_control`):
what the work says arrives in order before its exit status, a terminal that hangs up
stops its work, and no one but the device's user is answered."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from p2psync.cli_control import CONTROL_SOCKET, ControlError, forward, say, serve_control


async def test_the_work_says_its_lines_in_order_then_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[list[str]] = []

    async def perform(argv: list[str], network: str | None) -> int:
        asked.append([*argv, str(network)])
        for n in range(200):
            say(f"line {n}")
            if n % 50 == 0:
                await trio.lowlevel.checkpoint()
        say("a warning", err=True)
        return 3

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, tmp_path, perform)
        mode = stat.S_IMODE(os.stat(tmp_path / CONTROL_SOCKET).st_mode)
        assert mode == 0o600
        assert await forward(tmp_path, ["device", "send", "x"], "/net.json") == 3
        nursery.cancel_scope.cancel()
    assert asked == [["device", "send", "x", "/net.json"]]
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"line {n}" for n in range(200)]
    assert err.splitlines()[-1] == "a warning"
    assert not (tmp_path / CONTROL_SOCKET).exists()  # the socket goes with the run


async def test_a_terminal_that_hangs_up_stops_its_work(tmp_path: Path) -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def perform(argv: list[str], network: str | None) -> int:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, tmp_path, perform)
        with trio.CancelScope() as terminal:
            nursery.start_soon(lambda: forward(tmp_path, ["device", "accept"], None))
            await started.wait()
            terminal.cancel()
        nursery.cancel_scope.cancel()
    assert cancelled.is_set()


async def test_no_run_means_none_and_a_run_gone_mid_command_is_an_error(tmp_path: Path) -> None:
    assert await forward(tmp_path, ["device", "send"], None) is None  # no socket
    started = trio.Event()

    async def perform(argv: list[str], network: str | None) -> int:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("not reached")

    async def stop_the_run_once_it_works(run: trio.CancelScope) -> None:
        await started.wait()
        run.cancel()  # the run stops with the command under way

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as run:
            nursery.start_soon(stop_the_run_once_it_works, run)
            await nursery.start(serve_control, tmp_path, perform)
            with pytest.raises(ControlError, match="stopped before the command was done"):
                await forward(tmp_path, ["device", "send"], None)
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
async def test_another_user_is_not_answered() -> None:
    """Another user cannot reach the socket (mode 0600); and were it reachable (here the
    socket is opened up on purpose), the run answers only its own user."""
    performed: list[list[str]] = []

    async def perform(argv: list[str], network: str | None) -> int:
        performed.append(argv)
        return 0

    folder = Path(tempfile.mkdtemp(prefix="p2psync-control-", dir="/tmp"))
    os.chmod(folder, 0o755)
    probe = "\n".join(
        [
            "import os, socket, sys",
            "os.setuid(65534)",
            "s = socket.socket(socket.AF_UNIX)",
            "try:",
            "    s.connect(sys.argv[1])",
            "except PermissionError:",
            "    sys.exit(print('refused'))",
            "try:",
            '    s.sendall(b\'{"argv": ["device", "send"]}\\n\')',
            "    print('answered' if s.recv(100) else 'closed')",
            "except (BrokenPipeError, ConnectionResetError):",
            "    print('closed')",
        ]
    )
    path = str(folder / CONTROL_SOCKET)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, folder, perform)
            for opened_up, said in ((False, b"refused\n"), (True, b"closed\n")):
                if opened_up:
                    os.chmod(folder / CONTROL_SOCKET, 0o666)
                probed = await trio.run_process(
                    [sys.executable, "-c", probe, path],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                assert probed.stdout == said, probed.stderr
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(folder)
    assert performed == []


async def test_a_folder_too_deep_for_a_socket_runs_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / ("d" * 120)
    deep.mkdir()

    async def perform(argv: list[str], network: str | None) -> int:
        return 0

    await serve_control(deep, perform)  # returns at once, having said why
    assert "commands from other terminals are unavailable" in capsys.readouterr().err


async def test_no_connection_stops_the_run(tmp_path: Path) -> None:
    """A terminal that hangs up with output unread, and requests that are not one (too
    deep for JSON, not a command line), end their own connection only: the run answers
    the next command as before."""
    started = trio.Event()

    async def perform(argv: list[str], network: str | None) -> int:
        if argv == ["chatty"]:  # a long history at once, then a wait
            for n in range(3000):
                say(f"line {n} " + "x" * 300)
            started.set()
            await trio.sleep_forever()
        return 0

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, tmp_path, perform)
        # A terminal that asks, reads nothing and goes (its unread output resets the
        # connection under the run's writes and reads).
        stream = await trio.open_unix_socket(str(tmp_path / CONTROL_SOCKET))
        async with stream:
            await stream.send_all(b'{"argv": ["chatty"]}\n')
            await started.wait()
            await trio.sleep(0.05)
        for junk in (b"[" * 60_000 + b"\n", b"[1, 2]\n", b'{"argv": [1]}\n', b"\xff\n"):
            stream = await trio.open_unix_socket(str(tmp_path / CONTROL_SOCKET))
            async with stream:
                await stream.send_all(junk)
                assert await stream.receive_some() == b""  # hung up on, not answered
        assert await forward(tmp_path, ["quiet"], None) == 0
        nursery.cancel_scope.cancel()
