"""Negentropy against the reference peer: nostr-tools' ``nip77`` from the npm registry, run
by node as a subprocess that exchanges hex lines over stdin/stdout.

nostr-tools decodes varints with signed 32-bit shifts, so item timestamps stay below 2**31
here (nostr timestamps are seconds); the full 64-bit range is covered Python to Python.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from p2psync.sync.negentropy import Negentropy, StorageVector

pytestmark = pytest.mark.interop

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
PEER_SCRIPT = INTEROP_DIR / "negentropy_peer.mjs"
NO_LIMIT_FOR_NODE = 2**40  # nostr-tools has no "0 = unlimited" and insists on >= 4096
PROCESS_DEADLINE_S = 180
MAX_ROUNDS = 2000

Item = tuple[int, bytes]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the interop tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    """Path to node, with nostr-tools installed beside the peer script (npm install once)."""
    node_path = shutil.which("node")
    npm_path = shutil.which("npm")
    if node_path is None or npm_path is None:
        _unavailable("node and npm are needed for the Negentropy interop tests")
    if not (INTEROP_DIR / "node_modules" / "nostr-tools").is_dir():
        try:
            done = subprocess.run(
                [npm_path, "install", "--no-audit", "--no-fund"],
                cwd=INTEROP_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"npm install in {INTEROP_DIR} failed: {exc}")
        if done.returncode != 0:
            _unavailable(f"npm install in {INTEROP_DIR} failed: {done.stderr.strip()[-2000:]}")
    return node_path


class NodePeer:
    """One nostr-tools Negentropy in a node process; lines are "MSG hex", "NULL", "DONE json"."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def read(self) -> tuple[str, str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            assert self.proc.stderr is not None
            raise AssertionError(
                f"node peer exited {self.proc.returncode}: {self.proc.stderr.read()}"
            )
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == "ERROR":
            raise AssertionError(f"node peer failed: {rest}")
        return kind, rest

    def read_msg(self) -> bytes | None:
        kind, rest = self.read()
        if kind == "NULL":
            return None
        assert kind == "MSG", (kind, rest)
        return bytes.fromhex(rest)

    def read_done(self) -> tuple[set[bytes], set[bytes]]:
        kind, rest = self.read()
        assert kind == "DONE", (kind, rest)
        return parse_done(rest)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def parse_done(text: str) -> tuple[set[bytes], set[bytes]]:
    """The ids the node side reported as (have, need), as sets: the references may report an
    id twice under a frame limit."""
    result: dict[str, list[str]] = json.loads(text)
    return {bytes.fromhex(i) for i in result["have"]}, {bytes.fromhex(i) for i in result["need"]}


@contextmanager
def node_peer(
    node: str, tmp_path: Path, role: str, items: Sequence[Item], limit: int
) -> Iterator[NodePeer]:
    items_path = tmp_path / f"{role}-items.json"
    items_path.write_text(json.dumps([[t, i.hex()] for t, i in items]))
    with subprocess.Popen(
        [node, str(PEER_SCRIPT), role, str(items_path), str(limit or NO_LIMIT_FOR_NODE)],
        cwd=INTEROP_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        watchdog = threading.Timer(PROCESS_DEADLINE_S, proc.kill)
        watchdog.start()
        try:
            yield NodePeer(proc)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def make_storage(items: Sequence[Item]) -> StorageVector:
    storage = StorageVector()
    for timestamp, id in items:
        storage.insert(timestamp, id)
    storage.seal()
    return storage


def ids(items: Sequence[Item]) -> set[bytes]:
    return {id for _, id in items}


def random_items(rng: random.Random, n: int) -> list[Item]:
    items = []
    timestamp = 1_700_000_000
    for _ in range(n):
        timestamp += rng.choice((0, 0, 1, 2, 60))  # repeated seconds need id-prefix bounds
        items.append((timestamp, rng.randbytes(32)))
    return items


def drop(items: Sequence[Item], indexes: set[int]) -> list[Item]:
    return [item for i, item in enumerate(items) if i not in indexes]


def case(name: str) -> tuple[list[Item], list[Item]]:
    """(node's items, Python's items) for one named scenario."""
    rng = random.Random(name)
    if name == "identical":
        items = random_items(rng, 3000)
        return items, list(items)
    if name == "disjoint":
        return random_items(rng, 400), random_items(rng, 500)
    if name == "gap":
        items = random_items(rng, 3000)
        return drop(items, set(range(1200, 1500))), items
    if name == "scattered":
        items = random_items(rng, 3000)
        return (
            drop(items, set(rng.sample(range(3000), 60))),
            drop(items, set(rng.sample(range(3000), 60))),
        )
    if name == "node-empty":
        return [], random_items(rng, 2000)
    if name == "python-empty":
        return random_items(rng, 2000), []
    if name == "small":
        items = random_items(rng, 40)
        return items[:25], items[10:]
    # "10k": ~10 000 items each, differences scattered, in runs and at the ends
    items = random_items(rng, 10_000)
    node_missing = set(rng.sample(range(10_000), 150)) | set(range(4000, 4400))
    python_missing = set(rng.sample(range(10_000), 150)) | set(range(9800, 10_000))
    return drop(items, node_missing), drop(items, python_missing)


CASES = ["identical", "disjoint", "gap", "scattered", "node-empty", "python-empty", "small", "10k"]
LIMITS = [0, 4096]


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("name", CASES)
def test_nostr_tools_initiator_python_responder(
    node: str, tmp_path: Path, name: str, limit: int
) -> None:
    node_items, python_items = case(name)
    responder = Negentropy(make_storage(python_items), limit)
    round_trips = 0
    with node_peer(node, tmp_path, "initiator", node_items, limit) as peer:
        kind, rest = peer.read()
        while kind == "MSG":
            assert round_trips < MAX_ROUNDS
            msg = bytes.fromhex(rest)
            reply = responder.respond(msg)
            if limit:
                assert max(len(msg), len(reply)) <= limit
            round_trips += 1
            peer.send(reply.hex())
            kind, rest = peer.read()
        assert kind == "DONE", (kind, rest)
    have, need = parse_done(rest)
    assert have == ids(node_items) - ids(python_items)
    assert need == ids(python_items) - ids(node_items)
    if name == "identical":
        assert round_trips == 1


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("name", CASES)
def test_python_initiator_nostr_tools_peer(
    node: str, tmp_path: Path, name: str, limit: int
) -> None:
    """nostr-tools has no responder role (it answers an IdList by reporting the differences
    itself), so each side learns part of the difference; together they must learn all of it,
    and every message must parse on the other side."""
    node_items, python_items = case(name)
    initiator = Negentropy(make_storage(python_items), limit)
    have: set[bytes] = set()
    need: set[bytes] = set()
    with node_peer(node, tmp_path, "peer", node_items, limit) as peer:
        msg: bytes | None = initiator.initiate()
        for _ in range(MAX_ROUNDS):
            if msg is None:
                break
            peer.send(msg.hex())
            reply = peer.read_msg()
            msg, step_have, step_need = initiator.process_reply(reply or b"\x61")
            have.update(step_have)
            need.update(step_need)
        assert msg is None
        peer.send("END")
        node_have, node_need = peer.read_done()
    assert have | node_need == ids(python_items) - ids(node_items)
    assert need | node_have == ids(node_items) - ids(python_items)


@pytest.mark.parametrize("name", ["identical", "gap", "scattered", "node-empty", "10k"])
def test_messages_are_byte_identical(node: str, tmp_path: Path, name: str) -> None:
    """The first message, and the answer to a first message (fingerprints only, as both sides
    hold at least 32 items or none), match nostr-tools byte for byte."""
    node_items, python_items = case(name)
    with node_peer(node, tmp_path, "initiate", node_items, 0) as peer:
        node_first = peer.read_msg()
        peer.read_done()
    assert node_first == Negentropy(make_storage(node_items)).initiate()

    first = Negentropy(make_storage(python_items)).initiate()
    with node_peer(node, tmp_path, "peer", node_items, 0) as peer:
        peer.send(first.hex())
        node_reply = peer.read_msg() or b"\x61"
        peer.send("END")
        peer.read_done()
    assert Negentropy(make_storage(node_items)).respond(first) == node_reply
