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
    "p2psync/rpc/limits.py",
    "p2psync/backoff.py",
    "p2psync/identity.py",
    "p2psync/envelope.py",
    "p2psync/mapping.py",
    "p2psync/fileserver/rules.py",
    "p2psync/opengroup/posts.py",
    "p2psync/device/content.py",
    "p2psync/device/pairing.py",
    "p2psync/device/pairing_address.py",
    "p2psync/device/friends.py",
    "p2psync/device/modes.py",
    "p2psync/device/keys.py",
    "p2psync/device/migration.py",
    "p2psync/device/deletions.py",
    "p2psync/device/sibling_rules.py",
    "p2psync/device/rows.py",
    "p2psync/device/inbound.py",
    "p2psync/device/fanout.py",
    "p2psync/device/delivery.py",
    "p2psync/device/online_switch.py",
    "p2psync/swarm/ring.py",
    "p2psync/swarm/listing.py",
    "p2psync/swarm/registry_book.py",
    "p2psync/swarm/cursor.py",
    "p2psync/swarm/admission.py",
    "p2psync/swarm/quorum.py",
    "p2psync/swarm/taken_rows.py",
    "p2psync/swarm/attempts.py",
    "p2psync/swarm/proof.py",
    "p2psync/swarm/access.py",
    "p2psync/urls.py",
    "p2psync/onion/sealing.py",
    "p2psync/onion/addresses.py",
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
    "p2psync/sync/session_records.py",
    "p2psync/sync/presence.py",
    "overlay/cells.py",
    "overlay/onion.py",
    "overlay/path.py",
    "overlay/dht.py",
    "overlay/introset.py",
    "overlay/introset_lookup.py",
    "overlay/session.py",
    "overlay/contact.py",
    "overlay/addresses.py",
    "overlay/keys.py",
    "overlay/payloads.py",
    "overlay/endpoint_core.py",
    "overlay/relay_core.py",
    "overlay/exits.py",
    "overlay/transit.py",
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


#: Private-looking names that are public API (a named tuple's) or the interpreter's own.
NOT_PRIVATE = {"_replace", "_asdict", "_fields", "_make", "_getframe", "_exit"}
#: Calls that reach an attribute by its name as a string.
BY_NAME = {"getattr", "setattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last.startswith("_") and not last.startswith("__") and last not in NOT_PRIVATE


class _PrivateReads(ast.NodeVisitor):
    """Collects reads of another object's or module's private state: ``obj._name`` unless
    ``obj`` is the ``self``/``cls`` of an enclosing method, the same by name (``getattr``,
    ``setattr``, ``monkeypatch.setattr``), ``vars()`` / ``__dict__``, and imports of a
    module's private names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits: list[str] = []
        self._own: list[str] = []

    def _hit(self, node: ast.AST) -> None:
        self.hits.append(f"{self.name}:{getattr(node, 'lineno', 0)}: {ast.unparse(node)}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for statement in node.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
                params = statement.args.posonlyargs + statement.args.args
                self._own.append(params[0].arg if params else "")
                self.generic_visit(statement)
                self._own.pop()
            else:
                self.visit(statement)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        owner = node.value
        own = isinstance(owner, ast.Name) and owner.id in self._own
        if node.attr == "__dict__" or (_private(node.attr) and not own):
            self._hit(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if called == "vars" or (
            called in BY_NAME
            and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and _private(a.value)
                for a in node.args[:2]
            )
        ):
            self._hit(node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if any(_private(alias.name) for alias in node.names):
            self._hit(node)


def private_reads(source: str, name: str) -> list[str]:
    visitor = _PrivateReads(name)
    visitor.visit(ast.parse(source))
    return visitor.hits


def sources_of_tests() -> list[Path]:
    return sorted(
        p for p in (ROOT / "tests").rglob("*.py") if "node_modules" not in p.relative_to(ROOT).parts
    )


def test_no_test_reads_private_state() -> None:
    """Tests drive the public interfaces (a private attribute pins the implementation,
    and passes on what no user can reach)."""
    hits = [
        hit
        for p in sources_of_tests()
        for hit in private_reads(p.read_text(), str(p.relative_to(ROOT)))
    ]
    assert hits == []


@pytest.mark.parametrize(
    "source",
    [
        "def f(sync):\n    return sync._serving\n",
        "class T:\n    def f(self, other):\n        return other._x\n",
        "def f(self):\n    return self._x\n",  # a function, not a method: self is anything
        "patched = lambda self: self._x\n",
        "def f(d):\n    return getattr(d, '_siblings')\n",
        "def f(monkeypatch, e):\n    monkeypatch.setattr(e, '_choose_hops', None)\n",
        "def f(monkeypatch):\n    monkeypatch.setattr('p2psync.device.x._y', None)\n",
        "def f(d):\n    return vars(d)\n",
        "def f(d):\n    return d.__dict__\n",
        "from p2psync.swarm.client import _messages_from\n",
    ],
)
def test_the_private_read_check_finds(source: str) -> None:
    assert len(private_reads(source, "probe")) == 1


def test_the_private_read_check_lets_public_and_own_state_be() -> None:
    source = (
        "import sys\n"
        "class T:\n"
        "    def f(self, row):\n"
        "        def inner():\n"
        "            return self._mine\n"
        "        return inner(), row._replace(a=1), row._asdict(), sys._getframe(), row.__class__\n"
    )
    assert private_reads(source, "probe") == []
