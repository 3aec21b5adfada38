"""Which servers an exit hands onion requests to, sans-I/O: what tells servers apart in
an address (:func:`server_address`: two spellings of one server are one server) and the
servers an exit serves (:class:`ExitServers`). An exit that reached any address a request
named would be a port scanner of its own host's network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from overlay.exits import peer_host


def exit_host(relay_url: str) -> str:
    """The host a relay announced at ``relay_url`` calls servers from, as a server's
    :func:`~overlay.exits.peer_host` spells a caller (the emulated network's ``mem:NAME``
    is host ``NAME``)."""
    return peer_host(relay_url.removeprefix("mem:"))


class ServerAddress(NamedTuple):
    """What tells servers apart in an address: two spellings of one server are equal."""

    scheme: str
    host: str
    port: int
    #: The Ed25519 key a ``wss://`` address pins (None for the other schemes).
    key: bytes | None


def server_address(address: str) -> ServerAddress | None:
    """The server ``address`` names, or None if it is not a server address an exit would
    reach: ``ws://host:port`` (a path after it names the same server, as the WebSocket
    transport ignores it), ``wss://host:port/<64 hex digits>`` (the pinned key is part of
    the server), or the emulated network's ``mem:NAME``. Hosts compare case-blind and
    IP literals by value; a port is 1-65535 in ASCII digits; user info, a query, a
    fragment, an empty host or a ``wss://`` path that is not one key make it None."""
    if address.startswith("mem:"):
        name = address.removeprefix("mem:")
        return ServerAddress("mem", name, 0, None) if name else None
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        return None
    authority, _, path = rest.partition("/")
    key = None
    if scheme == "wss":
        try:
            key = bytes.fromhex(path) if len(path) == 64 and path.isascii() else None
        except ValueError:
            key = None
        if key is None:
            return None
    host, sep, port = authority.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        return None
    canonical = _canonical_host(host)
    return None if canonical is None else ServerAddress(scheme, canonical, int(port), key)


def _canonical_host(host: str) -> str | None:
    """An IP literal as :mod:`ipaddress` writes it (IPv6 in brackets), a name in lower
    case; None for anything else (an empty host, user info, a stray character)."""
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        ip = None
    if ip is not None:
        if bracketed != (ip.version == 6):
            return None  # an IPv6 literal needs its brackets, and only it has them
        return f"[{ip}]" if bracketed else str(ip)
    name = host.lower()
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return name if name and set(name) <= allowed else None


class ExitServers:
    """The servers an exit hands onion requests to: the service nodes of the latest
    listing it read (:meth:`update`) and the servers it was started with (the file
    server, the open group server, as ``network.json`` names them). Pure."""

    def __init__(self, fixed: Iterable[str] = ()) -> None:
        self._fixed = tuple(fixed)
        self._by_server: dict[ServerAddress, str] = {}
        self.update(())

    def update(self, node_urls: Iterable[str]) -> None:
        """The listing's service nodes now (those of an earlier listing are forgotten).
        Urls already known are not parsed again: a relay re-reads a listing of thousands
        on its event loop."""
        known = {url: server for server, url in self._by_server.items()}
        by_server: dict[ServerAddress, str] = {}
        for url in (*self._fixed, *node_urls):
            server = known.get(url) or server_address(url)
            if server is not None:
                by_server.setdefault(server, url)
        self._by_server = by_server

    def route(self, address: str) -> str | None:
        """The listed address of the server ``address`` names (one connection per
        server, however requests spell it), or None: no server this exit serves."""
        server = server_address(address)
        return None if server is None else self._by_server.get(server)

    def __len__(self) -> int:
        return len(self._by_server)
