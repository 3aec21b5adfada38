"""The layering of DESIGN.md §2, checked on the source: ``overlay`` never imports
``p2psync``, and protocol cores stay sans-I/O (no Trio, no sockets)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Protocol logic that must stay pure: bytes/events in, bytes/events out, time passed in.
SANS_IO = [
    "p2psync/wire.py",
    "p2psync/identity.py",
    "p2psync/envelope.py",
    "p2psync/mapping.py",
    "p2psync/device/content.py",
    "p2psync/device/pairing.py",
    "p2psync/device/keys.py",
    "p2psync/device/store.py",
    "p2psync/swarm/ring.py",
    "p2psync/swarm/store.py",
    "p2psync/swarm/records.py",
    "p2psync/swarm/repair.py",
    "p2psync/swarm/auth.py",
    "p2psync/sync/negentropy.py",
    "p2psync/sync/records.py",
    "p2psync/sync/live.py",
    "overlay/cells.py",
    "overlay/onion.py",
    "overlay/path.py",
    "overlay/dht.py",
    "overlay/introset.py",
    "overlay/session.py",
    "overlay/contact.py",
    "overlay/keys.py",
]
IO_MODULES = {"trio", "socket", "asyncio", "selectors"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_overlay_never_imports_p2psync() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] == "p2psync"
        )
        for path in (ROOT / "overlay").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("module", SANS_IO)
def test_protocol_cores_are_sans_io(module: str) -> None:
    path = ROOT / module
    if not path.exists():
        pytest.skip(f"{module} is not written yet")
    io = sorted(m for m in imported_modules(path) if m.split(".")[0] in IO_MODULES)
    assert io == [], f"{module} imports {io}"
