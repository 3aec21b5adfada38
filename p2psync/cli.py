"""The ``p2psync`` command line: argument parsing only; the work is in library calls.

Every command exits non-zero with a one-line error on bad input or a failure it can
explain; Ctrl-C stops a command cleanly at any moment, while it loads too (exit code 130),
and so does SIGTERM while it loads (143; a running command handles SIGTERM itself).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .arguments import address_range, number_up_to, session_id, whole_number
from .errors import P2PSyncError
from .network_defaults import DEFAULT_RELAYS, TRANSPORTS
from .stops import (
    HeldStops,
    Terminated,
    raise_if_terminated,
    sigterm_admitted,
    sigterm_deferred,
)
from .swarm.constants import MAX_STORE_BATCH, MIN_TTL_MS, STORE_QUORUM

if TYPE_CHECKING:
    import trio

    from overlay.link import Transport

    from .clock import Clock
    from .swarm.directory import Directory

# A command imports what it runs inside its function (Trio, the device commands, the
# servers, the launcher, the overlay, ``cryptography`` for TLS): every call of the command
# line pays for what is imported here, and what is imported here loads before ``main`` can
# turn a Ctrl-C into a clean exit, so it is the standard library and constants alone.

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM, as a shell reports a process it ended.
EXIT_TERMINATED = 143


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


def output_file(text: str) -> str:
    """A file a command will write when it is done: refused before any work if it could
    not be written (a missing or read-only directory, or a directory in its place)."""
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"no directory {folder} to write {path.name} in")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    existed = path.exists()
    # Permissions alone do not say (root passes them; /proc refuses new files): open it,
    # without following a link, without blocking, and creating only a file of our own.
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        os.close(os.open(path, flags if existed else flags | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {exc.strerror}") from None
    if not existed:
        path.unlink()
    return text


#: Nodes, and relays, one ``network up`` starts at most: with ``--hosts`` each process
#: needs an address of its own, 253 in a run's /24, three of them for the servers.
MAX_PROCESSES = 250
#: Past the largest swarm (8), a quorum only means "every member".
MAX_QUORUM = 64


def _run(args: argparse.Namespace, service: Callable[..., Awaitable[None]], *params: Any) -> int:
    """Run a service until Ctrl-C or SIGTERM (or, under ``network up``, until its
    launcher goes)."""
    if args.exit_with_stdin:
        from .services import exit_when_stdin_closes

        run_stoppable(exit_when_stdin_closes, service, *params)
    else:
        run_stoppable(service, *params)
    return 0


def _server_transport(args: argparse.Namespace) -> Transport:
    """What a server process serves (and calls its peers) with: TLS pinned to its key,
    or plaintext with ``--plain-links``."""
    from .network import make_transport

    return make_transport("tcp", plain=args.plain_links)


def _or_print_url(
    command: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A server ``command``, or with ``--print-url`` the url it would announce."""

    def run(args: argparse.Namespace) -> int:
        if not args.print_url:
            return command(args)
        from .services import announced_url

        print(announced_url(args.command, _data_dir(args), args.listen, plain=args.plain_links))
        return 0

    return run


def _data_dir(args: argparse.Namespace) -> Path:
    path = Path(args.data)
    if path.exists() and not path.is_dir():
        raise CommandError(f"--data {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- commands ------------------------------------------------------------------------------


#: What ``demo`` and ``bench`` say, exiting 2, without the lab extra (rich, matplotlib and
#: the ``benchmarks`` package that holds them).
LAB_MISSING = "p2psync: the demo and benchmarks need the lab extra: pip install -e '.[lab]'"
LAB_MODULES = ("rich", "matplotlib", "benchmarks")


def _needs_lab(
    command: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """``command`` (the demo or a benchmark, which import ``benchmarks`` lazily), or one
    line saying to install the lab extra if it is missing."""

    def run(args: argparse.Namespace) -> int:
        from importlib.util import find_spec

        if any(find_spec(name) is None for name in LAB_MODULES):
            print(LAB_MISSING, file=sys.stderr)
            return EXIT_USAGE
        return command(args)

    return run


@_needs_lab
def _cmd_demo(args: argparse.Namespace) -> int:
    from benchmarks.demo import run_demo

    return run_demo(transport=args.transport, seed=args.seed, mode=args.mode, json_path=args.json)


async def terminated_by_sigterm(*, task_status: trio.TaskStatus[None]) -> None:
    """Raise :class:`Terminated` on SIGTERM, so a network command unwinds as on Ctrl-C:
    its children stop and its hosts are removed before it exits."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM) as signals, sigterm_admitted():
        task_status.started()
        async for _ in signals:
            raise Terminated


Result = TypeVar("Result")


async def unless_terminated(work: Callable[[], Awaitable[Result]]) -> Result:
    """What ``work`` returns; a SIGTERM meanwhile unwinds it as Ctrl-C would (its
    nurseries end their children) and raises :class:`Terminated` (exit 143, one line)."""
    import trio

    async with trio.open_nursery() as nursery:
        await nursery.start(terminated_by_sigterm)
        result = await work()
        nursery.cancel_scope.cancel()
    return result


def run_stoppable(work: Callable[..., Awaitable[Result]], *args: Any) -> Result:
    """``trio.run(work, *args)``, which SIGTERM unwinds as Ctrl-C does
    (:func:`unless_terminated`), at any moment: until the receiver is open it waits."""
    import trio

    with sigterm_deferred():
        return trio.run(unless_terminated, partial(work, *args))


def _cmd_network_up(args: argparse.Namespace) -> int:
    import trio

    from .hosts import unavailable_reason
    from .launcher import network_up
    from .network import make_transport

    data_dir = _data_dir(args)
    separate_hosts = args.hosts
    if separate_hosts and (reason := unavailable_reason(data_dir)) is not None:
        print(f"p2psync: no separate hosts ({reason}): running on loopback", file=sys.stderr)
        separate_hosts = False

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(
                partial(
                    network_up,
                    make_transport("tcp", plain=args.plain_links),
                    data_dir,
                    args.nodes,
                    args.relays,
                    separate_hosts=separate_hosts,
                    plain_links=args.plain_links,
                    on_progress=lambda message: print(f"started {message}", file=sys.stderr),
                )
            )
            print(f"ready {path}", flush=True)

    run_stoppable(main)
    return 0


def _cmd_network_host(args: argparse.Namespace) -> int:
    from .launcher import run_in_host

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise CommandError("network host needs a command to run: ... NAME -- COMMAND")
    return run_stoppable(run_in_host, Path(args.data), args.name, command)


def _ledger_key(args: argparse.Namespace) -> bytes | None:
    from .services import parse_ledger_key

    return None if args.ledger is None else parse_ledger_key(args.ledger)


def _cmd_node(args: argparse.Namespace) -> int:
    from .clock import Clock
    from .services import make_directory, node_registration, run_node
    from .swarm.node_config import NodeConfig

    data_dir = _data_dir(args)
    transport = _server_transport(args)
    clock = Clock()
    static = Path(args.static) if args.static else None
    ledger = _ledger_key(args)
    registration = node_registration(data_dir, ledger)
    directory = make_directory(transport, clock, args.registry, static, data_dir, ledger)
    config = NodeConfig(store_quorum=args.quorum)
    return _run(
        args, run_node, transport, data_dir, args.listen, directory, clock, registration, config
    )


def _cmd_registry(args: argparse.Namespace) -> int:
    from .clock import Clock
    from .services import run_registry

    return _run(
        args,
        run_registry,
        _server_transport(args),
        _data_dir(args),
        args.listen,
        Clock(),
        _ledger_key(args),
        args.refuse_dial,
    )


def _cmd_ledger_register(args: argparse.Namespace) -> int:
    from .services import RELAY_KEY_FILE, admit_node, open_ledger

    ledger = open_ledger(_data_dir(args))
    kind, folder = ("relay", args.relay_data) if args.relay_data else ("node", args.node_data)
    key_file = RELAY_KEY_FILE if kind == "relay" else ""
    registration = admit_node(ledger, _data_dir(argparse.Namespace(data=folder)), key_file)
    print(f"registered {kind} {registration.node} at height {registration.height}")
    print(f"ledger {ledger.public_key.hex()}")
    return 0


def _listing_of(args: argparse.Namespace, clock: Clock) -> Directory | None:
    """The registry a file server or open group server reads the relays from, if given."""
    if args.registry is None:
        return None
    from .network import make_transport
    from .services import make_directory

    transport = make_transport("tcp", plain=args.plain_links)
    return make_directory(transport, clock, args.registry, None, _data_dir(args))


def _cmd_fileserver(args: argparse.Namespace) -> int:
    from .clock import Clock
    from .services import run_fileserver

    clock = Clock()
    listing = _listing_of(args, clock)
    return _run(
        args, run_fileserver, _server_transport(args), _data_dir(args), args.listen, clock, listing
    )


def _cmd_opengroup(args: argparse.Namespace) -> int:
    from .clock import Clock
    from .services import remove_room, run_opengroup

    if args.remove_room is not None:
        went = remove_room(Path(args.data), args.remove_room)
        print(f"removed room {args.remove_room} and its {went} posts")
        return 0

    clock = Clock()
    return _run(
        args,
        run_opengroup,
        _server_transport(args),
        _data_dir(args),
        args.listen,
        args.fileserver,
        clock,
        _listing_of(args, clock),
        args.room_creators,
    )


def _cmd_relay(args: argparse.Namespace) -> int:
    from overlay import TcpTransport

    from .clock import Clock
    from .network import make_transport
    from .services import RELAY_KEY_FILE, make_directory, node_registration, run_relay

    data_dir = _data_dir(args)
    clock = Clock()
    ledger = _ledger_key(args)
    servers = make_transport("tcp", plain=args.plain_links)  # what an exit reaches servers with
    directory = make_directory(servers, clock, args.registry, None, data_dir, ledger)
    registration = node_registration(data_dir, ledger, RELAY_KEY_FILE)
    run = partial(run_relay, exit_servers=args.exit_server, registration=registration)
    links = TcpTransport(plain=args.plain_links)
    return _run(args, run, links, data_dir, args.listen, directory, clock, servers)


@_needs_lab
def _cmd_bench_overlay(args: argparse.Namespace) -> int:
    from benchmarks.overlay_bench import run_overlay_bench

    result = run_overlay_bench(quick=args.quick)
    for key, value in result.items():
        print(f"{key:26} {value}")
    _write_json(args.json, result)
    return 0


def _sync_copy_hours(text: str) -> float:
    """Hours a sync copy lives: at most the TTL (a day), at least what a swarm keeps."""
    hours = number_up_to(24, positive=True)(text)
    if hours * 3_600_000 < MIN_TTL_MS:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_TTL_MS / 3_600_000:.4f} (a swarm keeps nothing under "
            f"{MIN_TTL_MS // 1000} s), not {text}"
        )
    return hours


@_needs_lab
def _cmd_bench_storage(args: argparse.Namespace) -> int:
    hours = args.sync_copy_hours
    sync_copy_ttl_ms = None if hours is None else round(hours * 3_600_000)
    if args.scale or args.trace:
        from benchmarks.model_bench import run_model_bench

        if args.plot:
            raise CommandError("--plot is for the device runs; --scale and --trace print figures")
        run_model_bench(
            args.users,
            args.days,
            args.rate,
            args.profile,
            args.seed,
            args.json,
            args.trace,
            sync_copy_ttl_ms=sync_copy_ttl_ms,
        )
        return 0
    from benchmarks.storage import run_storage_bench

    run_storage_bench(
        quick=args.quick,
        seed=args.seed,
        json_path=args.json,
        plot_path=args.plot,
        sync_copy_ttl_ms=sync_copy_ttl_ms,
    )
    return 0


@_needs_lab
def _cmd_bench_throughput(args: argparse.Namespace) -> int:
    from benchmarks.throughput import print_report, run_throughput

    result = run_throughput(
        seconds=args.seconds,
        clients=args.clients,
        pipeline=args.pipeline,
        nodes=args.nodes,
        quorum=args.quorum,
        batch=args.batch,
    )
    print_report(result)
    _write_json(args.json, result)
    return 0


@_needs_lab
def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from benchmarks.soak import run_soak

    figures = run_soak(
        minutes=args.minutes,
        nodes=args.nodes,
        clients=args.clients,
        json_path=args.json,
        flood_seconds=args.flood_seconds,
    )
    flood_held = figures["flood"]["held"] if "flood" in figures else True
    return 0 if figures["lost"] == 0 and flood_held else EXIT_FAILURE


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


# --- parser --------------------------------------------------------------------------------

PLAIN_LINKS_HELP = (
    "serve plaintext (ws://, bare host:port) instead of TLS pinned to the announced key"
    " (for benchmarks that compare; anyone on the wire reads keys and signatures)"
)


#: What the servers' and the network's commands import as they start (see :func:`main`).
SERVICE_MODULES = ("p2psync.services", "p2psync.launcher", "p2psync.network")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2psync",
        description="Device-to-device sync for swarm-based private messengers.",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: warning)",
    )
    parser.set_defaults(loads=SERVICE_MODULES)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="the narrated demo on an embedded local network (the main job)"
    )
    demo.add_argument("--seed", type=int, default=1, help="randomness seed (default: 1)")
    demo.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="tcp",
        help="loopback sockets or in-memory (default: tcp)",
    )
    demo.add_argument(
        "--mode",
        choices=["linked", "mapped"],
        default="linked",
        help="multi-device mode (default: linked)",
    )
    demo.add_argument(
        "--json", type=output_file, metavar="FILE", help="also write the summary as JSON"
    )
    demo.set_defaults(run=_cmd_demo, loads=("benchmarks.demo",))

    network = commands.add_parser("network", help="a local network of separate processes")
    network_commands = network.add_subparsers(dest="network_command", required=True)
    up = network_commands.add_parser(
        "up", help="run a registry, servers, nodes and relays until Ctrl-C"
    )
    up.add_argument(
        "--nodes", type=whole_number(1, MAX_PROCESSES), default=6, help="service nodes (default: 6)"
    )
    up.add_argument(
        "--relays",
        type=whole_number(0, MAX_PROCESSES),
        default=DEFAULT_RELAYS,
        help=f"overlay relays for direct sibling sync (default: {DEFAULT_RELAYS}; "
        "0: devices sync through the swarm only)",
    )
    up.add_argument("--data", required=True, metavar="DIR", help="where every process keeps data")
    up.add_argument(
        "--hosts",
        action="store_true",
        help="every process on a host of its own (a network namespace on a bridge, "
        "10.77.x.y), each service as a uid of its own without capabilities or namespaces "
        "(a seccomp filter), the hosts removed on exit; needs root, ip, setpriv, libseccomp "
        "and a Python and DIR open to others (else loopback, saying why)",
    )
    up.add_argument("--plain-links", action="store_true", help=PLAIN_LINKS_HELP)
    up.set_defaults(run=_cmd_network_up)
    host = network_commands.add_parser(
        "host",
        help="run COMMAND on a host of its own, added to the network of hosts on DIR "
        "(network up --hosts), removed when it exits",
    )
    host.add_argument("--data", required=True, metavar="DIR", help="the network's --data")
    host.add_argument("name", metavar="NAME", help="the host's name (unique on the network)")
    host.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="what to run there"
    )
    host.set_defaults(run=_cmd_network_host)

    def server(
        name: str, help_text: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--data", required=True, metavar="DIR", help="data directory")
        sub.add_argument(
            "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="default: 127.0.0.1:0"
        )
        sub.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)
        sub.add_argument("--plain-links", action="store_true", help=PLAIN_LINKS_HELP)
        sub.add_argument(
            "--print-url",
            action="store_true",
            help="print the url this server will announce at --listen (its key made in DIR"
            " if new) and exit: what to give others before it starts",
        )
        sub.set_defaults(run=_or_print_url(run))
        return sub

    node = server("node", "one service node", _cmd_node)
    where = node.add_mutually_exclusive_group(required=True)
    where.add_argument("--registry", metavar="URL", help="registry to announce to and read")
    where.add_argument("--static", metavar="FILE", help="JSON file listing the nodes instead")
    ledger_help = (
        "the network ledger's public key (hex): only nodes it registered are listed"
        " (without it, any node that announces itself is)"
    )
    node.add_argument("--ledger", metavar="HEX", help=ledger_help)
    node.add_argument(
        "--quorum",
        type=whole_number(1, MAX_QUORUM),
        default=STORE_QUORUM,
        help=f"members that must hold a store before it is acknowledged (default: {STORE_QUORUM})",
    )
    relay = server("relay", "one overlay relay (announced to the registry)", _cmd_relay)
    relay.add_argument("--registry", metavar="URL", required=True, help="registry to use")
    relay.add_argument(
        "--ledger",
        metavar="HEX",
        help="the network ledger's public key (hex): the relay starts only with a"
        " registration that ledger signed (made by `p2psync ledger register --relay-data`)",
    )
    relay.add_argument(
        "--exit-server",
        action="append",
        default=[],
        metavar="URL",
        help="a server besides the listed service nodes this relay hands onion requests to"
        " (the file server, the open group server; repeat for each)",
    )
    registry = server("registry", "the registry of service nodes and relays", _cmd_registry)
    registry.add_argument("--ledger", metavar="HEX", help=ledger_help)
    registry.add_argument(
        "--refuse-dial",
        action="append",
        default=[],
        type=address_range,
        metavar="CIDR",
        help="an address range the registry never connects into to check an announced"
        " address (a management network, link-local 169.254.0.0/16; never the range the"
        " nodes and relays announce from); repeat for each",
    )
    ledger = commands.add_parser("ledger", help="the network's admission authority")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    register = ledger_commands.add_parser(
        "register",
        help="admit the node (or relay) kept in its directory (writes its registration there)",
    )
    register.add_argument("--data", required=True, metavar="DIR", help="the ledger's directory")
    admitted = register.add_mutually_exclusive_group(required=True)
    admitted.add_argument("--node-data", metavar="NODE_DIR", help="a node's data directory")
    admitted.add_argument("--relay-data", metavar="RELAY_DIR", help="a relay's data directory")
    register.set_defaults(run=_cmd_ledger_register)
    listing_help = (
        "registry to read the relays from: onion requests from their hosts share the"
        " exits' allowance, others a small one apart (without it, every caller's do)"
    )
    fileserver = server("fileserver", "the file server (device mappings)", _cmd_fileserver)
    opengroup = server("opengroup", "an open group (public chat) server", _cmd_opengroup)
    opengroup.add_argument("--fileserver", metavar="URL", help="for mapped-mode attribution")
    opengroup.add_argument(
        "--room-creator",
        dest="room_creators",
        action="append",
        type=session_id,
        metavar="ID",
        help="a session id whose key may create rooms (repeat for more); without any, every"
        " key may, rationed: list them on a server strangers reach",
    )
    opengroup.add_argument(
        "--remove-room",
        metavar="NAME",
        help="remove room NAME and its posts from the open group in DIR and exit (a server"
        " running on DIR stops serving it at once)",
    )
    for onion_server in (fileserver, opengroup):
        onion_server.add_argument("--registry", metavar="URL", help=listing_help)

    from .cli_device_parser import add_device_commands

    add_device_commands(commands)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    throughput = bench_commands.add_parser(
        "throughput",
        help="stores/s and retrieves/s of a node in a swarm (quorum writes) beside a floor",
    )
    throughput.add_argument(
        "--seconds",
        type=number_up_to(3600, positive=True),
        default=5.0,
        help="per phase (default: 5)",
    )
    throughput.add_argument(
        "--clients", type=whole_number(1, 1024), default=4, help="connections (default: 4)"
    )
    throughput.add_argument(
        "--pipeline",
        type=whole_number(1, 4096),
        default=32,
        help="requests in flight per connection (default: 32)",
    )
    throughput.add_argument(
        "--nodes",
        type=whole_number(2, 64),
        default=3,
        help="node processes in the swarm, the loaded one included (default: 3)",
    )
    throughput.add_argument(
        "--quorum",
        type=whole_number(1, MAX_QUORUM),
        default=STORE_QUORUM,
        help=f"the nodes' store quorum (default: {STORE_QUORUM}; 1 to compare)",
    )
    throughput.add_argument(
        "--batch",
        type=whole_number(1, MAX_STORE_BATCH),
        default=16,
        help="stores per store_batch request in the batched phase (default: 16)",
    )
    throughput.add_argument(
        "--json", type=output_file, metavar="FILE", help="write the figures as JSON"
    )
    throughput.set_defaults(run=_cmd_bench_throughput, loads=("benchmarks.throughput",))
    overlay = bench_commands.add_parser(
        "overlay", help="onion messages/s and CPU per message over 3 hops beside the crypto floor"
    )
    overlay.add_argument("--quick", action="store_true", help="fewer rounds")
    overlay.add_argument(
        "--json", type=output_file, metavar="FILE", help="write the figures as JSON"
    )
    overlay.set_defaults(run=_cmd_bench_overlay, loads=("benchmarks.overlay_bench",))
    storage = bench_commands.add_parser(
        "storage", help="stored copies, byte-hours and latency per sync strategy (virtual time)"
    )
    storage.add_argument("--quick", action="store_true", help="the small scenario (minutes)")
    storage.add_argument("--seed", type=int, default=1, help="scenario seed (default: 1)")
    storage.add_argument("--json", type=output_file, metavar="FILE", help="write the §9 JSON")
    storage.add_argument(
        "--scale",
        action="store_true",
        help="the trace-level model at scale (default 10 000 users × 30 days), validated"
        " against real devices on a small trace",
    )
    storage.add_argument(
        "--users", type=whole_number(1, 1_000_000), default=10_000, help="--scale: users"
    )
    storage.add_argument(
        "--days", type=number_up_to(3650, positive=True), default=30.0, help="--scale: days"
    )
    storage.add_argument(
        "--rate",
        type=number_up_to(100_000, positive=True),
        default=20.0,
        help="--scale: messages per user per day",
    )
    storage.add_argument(
        "--profile", choices=("office", "mobile"), default="office", help="--scale: churn profile"
    )
    storage.add_argument(
        "--trace", metavar="FILE", help="model your own trace, JSON or CSV (see the README)"
    )
    storage.add_argument(
        "--plot",
        type=output_file,
        metavar="FILE",
        help="write a PNG of stored copies and bytes over time",
    )
    storage.add_argument(
        "--sync-copy-hours",
        type=_sync_copy_hours,
        metavar="H",
        help="p2p's sync copies live H hours, not the TTL (24): less storage, and a sibling "
        "away longer gets them only when it meets its sibling",
    )
    storage.set_defaults(run=_cmd_bench_storage, loads=("benchmarks.storage",))
    soak = bench_commands.add_parser(
        "soak", help="load and faults (node kill -9, registry stop) for minutes: what held, lost"
    )
    soak.add_argument(
        "--minutes",
        type=number_up_to(7 * 24 * 60, positive=True),
        required=True,
        help="how long to run the load",
    )
    soak.add_argument(
        "--nodes", type=whole_number(1, 64), default=4, help="node processes (default: 4)"
    )
    soak.add_argument(
        "--clients", type=whole_number(1, 1024), default=4, help="concurrent clients (default: 4)"
    )
    soak.add_argument(
        "--flood-seconds",
        type=number_up_to(3600),
        default=0.0,
        metavar="S",
        help="then flood one node for S seconds (connections past its limit, unread "
        "pipelined requests, oversize frames, a request-rate flood) while an honest client "
        "stores and reads; report its RSS before/peak/after and the honest latency "
        "(default: 0, no flood)",
    )
    soak.add_argument("--json", type=output_file, metavar="FILE", help="write the figures as JSON")
    soak.set_defaults(run=_cmd_bench_soak, loads=("benchmarks.soak",))
    return parser


def main(argv: Sequence[str] | None = None, *, held: HeldStops | None = None) -> int:
    """Run one command; its exit status.

    The parser is light (``--help`` and a usage error import nothing else); the command
    it chose then loads the modules it runs (``loads``: a third of a second for Trio, the
    device or the servers). A Ctrl-C or SIGTERM meanwhile is only noted (from ``held``'s
    start: the console script holds them before it imports this module, see
    :mod:`p2psync.command`), and acted on once loading is done (exit 130 or 143, one line,
    as while the command runs): raised inside the import system, the KeyboardInterrupt
    can come out as another error (a ``ModuleNotFoundError`` for the module it
    interrupted) or not at all."""
    stops = held if held is not None else HeldStops.from_now()
    command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(command_line)
        _load(args.loads)
    finally:
        stops.release()
    args.command_line = command_line  # a device command may hand it to a running `run`
    try:
        if stops.signals:
            raise KeyboardInterrupt if stops.signals[0] == signal.SIGINT else Terminated
        logging.basicConfig(
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        status = int(args.run(args))
        raise_if_terminated()  # one swallowed on the way stops the command all the same
        return status
    except BaseException as exc:
        return exit_status(exc)


def _load(modules: Sequence[str]) -> None:
    """Import ``modules``; one that is missing is the command's to report (the lab's are
    an extra: see :func:`_needs_lab`)."""
    for name in modules:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)


def exit_status(exc: BaseException, program: str = "p2psync") -> int:
    """How a command line ends on ``exc``: a stop (Ctrl-C 130, SIGTERM 143) or a failure it
    can explain (1) is one line on stderr and its status; anything else is a bug, raised
    again for its traceback. For the lab's own entry points too, so every command stops
    and fails alike."""
    explained = explain(exc, program)
    if explained is None:
        raise exc
    status, line = explained
    print(line, file=sys.stderr)
    return status


def explain(exc: BaseException, program: str = "p2psync") -> tuple[int, str] | None:
    """The exit status and the one line :func:`exit_status` gives ``exc``; None for a bug."""
    error = _single(exc)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "stopped"
    if isinstance(error, Terminated):
        return EXIT_TERMINATED, "terminated"
    if isinstance(error, _EXPLAINED):
        return EXIT_FAILURE, f"{program}: error: {error}"
    return None


def _single(exc: BaseException) -> BaseException:
    """The one error inside (possibly nested) single-member exception groups, as Trio
    reports an error or a Ctrl-C that left a nursery. A stop (Ctrl-C, SIGTERM) is the
    answer whatever else it met on the way out: a worker whose pipe broke as it was being
    stopped is not an error of the command."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        for stop in (KeyboardInterrupt, Terminated):
            if exc.subgroup(stop) is not None:
                return stop()
        # Children that failed side by side for reasons each one line says (three nodes
        # refused one folder each): the first, and how many more.
        leaves = _leaves(exc)
        if all(isinstance(leaf, _EXPLAINED) for leaf in leaves):
            return CommandError(f"{leaves[0]} (and {len(leaves) - 1} more)")
    return exc


_EXPLAINED = (CommandError, P2PSyncError, ValueError, OSError)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for member in group.exceptions
        for leaf in (_leaves(member) if isinstance(member, BaseExceptionGroup) else [member])
    ]
