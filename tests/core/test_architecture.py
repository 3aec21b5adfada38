"""The layering of DESIGN.md §2, checked on the source: ``overlay`` never imports
``p2psync``, protocol cores stay sans-I/O (no Trio, no sockets), and the library never
imports the lab (``benchmarks``: the demo, the benchmarks, the fault drivers) nor what
only the lab installs, so ``import p2psync`` loads the library alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Protocol logic that must stay pure: bytes/events in, bytes/events out, time passed in;
#: neither they nor anything of ours they import touch a socket, a clock task or a database.
SANS_IO = [
    "p2psync/wire.py",
    "p2psync/identity.py",
    "p2psync/envelope.py",
    "p2psync/mapping.py",
    "p2psync/device/content.py",
    "p2psync/device/pairing.py",
    "p2psync/device/friends.py",
    "p2psync/device/modes.py",
    "p2psync/device/keys.py",
    "p2psync/device/migration.py",
    "p2psync/device/deletions.py",
    "p2psync/swarm/ring.py",
    "p2psync/swarm/rows.py",
    "p2psync/swarm/settling.py",
    "p2psync/swarm/records.py",
    "p2psync/swarm/repair.py",
    "p2psync/swarm/auth.py",
    "p2psync/swarm/messages.py",
    "p2psync/swarm/node_core.py",
    "p2psync/sync/negentropy.py",
    "p2psync/sync/records.py",
    "p2psync/sync/live.py",
    "p2psync/sync/resync.py",
    "overlay/cells.py",
    "overlay/onion.py",
    "overlay/path.py",
    "overlay/dht.py",
    "overlay/introset.py",
    "overlay/session.py",
    "overlay/contact.py",
    "overlay/keys.py",
    "overlay/payloads.py",
    "overlay/endpoint_core.py",
    "overlay/exits.py",
]
IO_MODULES = {"trio", "socket", "asyncio", "selectors", "sqlite3", "subprocess"}
#: The library's packages, and what they must not import: the lab, and what only the
#: lab extra or the tests install.
LIBRARY = ("p2psync", "overlay")
LAB_ONLY = {"benchmarks", "rich", "matplotlib", "pytest", "hypothesis"}
#: What ``import p2psync`` must leave unloaded.
NOT_LOADED = ("trio.testing", "pytest", "rich", "matplotlib", "benchmarks")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imports_by_scope(path: Path) -> tuple[set[str], set[str]]:
    """The modules ``path`` imports at module level (a class body included) and those it
    imports inside a function (lazily, when the function runs)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lazy: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    lazy.update(alias.name for alias in inner.names)
                elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    lazy.add(inner.module)
    everything = imported_modules(path)
    return everything - lazy, lazy


def library_files() -> list[Path]:
    return sorted(path for package in LIBRARY for path in (ROOT / package).rglob("*.py"))


def test_overlay_never_imports_p2psync() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] == "p2psync"
        )
        for path in (ROOT / "overlay").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def internal_imports(path: Path) -> list[Path]:
    """The modules of ours that ``path`` imports (absolute or relative), as files."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            parts = [*package[: len(package) - node.level + 1], *(node.module or "").split(".")]
        else:
            parts = (node.module or "").split(".")
        parts = [part for part in parts if part]
        if not parts or parts[0] not in LIBRARY:
            continue
        module = ROOT.joinpath(*parts).with_suffix(".py")
        if module.is_file():
            found.append(module)
        else:  # ``from . import name``: the names may be modules
            found += [
                ROOT.joinpath(*parts, alias.name).with_suffix(".py")
                for alias in node.names
                if ROOT.joinpath(*parts, alias.name).with_suffix(".py").is_file()
            ]
    return found


@pytest.mark.parametrize("module", SANS_IO)
def test_protocol_cores_are_sans_io(module: str) -> None:
    """Checked through everything of ours the core imports: a core that takes one value
    type from a driver's or a store's module imports its sockets or its database too."""
    path = ROOT / module
    assert path.exists(), f"{module} is listed here but does not exist: update the list"
    chains = {path: [module]}
    todo = [path]
    while todo:
        current = todo.pop()
        io = sorted(m for m in imported_modules(current) if m.split(".")[0] in IO_MODULES)
        assert io == [], f"{' -> '.join(chains[current])} imports {io}"
        for imported in internal_imports(current):
            if imported not in chains:
                chains[imported] = [*chains[current], str(imported.relative_to(ROOT))]
                todo.append(imported)


def test_the_library_never_imports_the_lab() -> None:
    """No module of ``p2psync`` or ``overlay`` imports ``benchmarks``, rich, matplotlib or
    the test tools, except the ``demo`` and ``bench`` commands of the command line, which
    import ``benchmarks`` when they run (and say so if the lab extra is missing)."""
    offenders = {}
    for path in library_files():
        eager, lazy = imports_by_scope(path)
        allowed_lazily = {"benchmarks"} if path == ROOT / "p2psync" / "cli.py" else set()
        found = sorted(m for m in eager if m.split(".")[0] in LAB_ONLY) + sorted(
            m for m in lazy if m.split(".")[0] in LAB_ONLY - allowed_lazily
        )
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_cli_reaches_the_lab_lazily() -> None:
    """The check above is not vacuous: the CLI does import ``benchmarks``, inside the
    command handlers."""
    eager, lazy = imports_by_scope(ROOT / "p2psync" / "cli.py")
    assert not any(m.split(".")[0] == "benchmarks" for m in eager)
    assert any(m.split(".")[0] == "benchmarks" for m in lazy)


def test_the_library_uses_no_private_trio_module() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.startswith("trio._")
        )
        for path in library_files()
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert not [p for p in library_files() if "trio._" in p.read_text()]


def test_importing_p2psync_loads_the_library_alone() -> None:
    """In a fresh interpreter: no test clock (hence no pytest), no rich, no matplotlib, no
    lab."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import p2psync, sys; print(sorted(m for m in {NOT_LOADED!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_packages_ship_their_annotations() -> None:
    """PEP 561: a client type-checking against p2psync or overlay uses their annotations."""
    for package in ("p2psync", "overlay"):
        assert (ROOT / package / "py.typed").is_file(), f"{package} has no py.typed"


def private_reads(source: str, name: str) -> list[str]:
    """``obj._name`` where ``obj`` is not the code's own ``self`` or ``cls``: a read of
    another object's (or module's) private state."""
    return [
        f"{name}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]


def test_no_test_reads_private_state() -> None:
    """Tests drive the public interfaces (a private attribute pins the implementation,
    and passes on what no user can reach)."""
    tests = sorted((ROOT / "tests").rglob("*.py"))
    hits = [hit for p in tests for hit in private_reads(p.read_text(), str(p.relative_to(ROOT)))]
    assert hits == []


def test_the_private_read_check_is_not_vacuous() -> None:
    source = (
        "def f(sync, other):\n    self = sync\n    return self._own, sync._serving, other.peer\n"
    )
    assert private_reads(source, "probe") == ["probe:3: sync._serving"]
