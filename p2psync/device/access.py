"""How a device reaches the network: the transport, the node registry, the file server and
the open group server, with the clock they all share.

A device gets one from the embedded network (:meth:`p2psync.network.LocalNetwork.access`)
or from the ``network.json`` that ``p2psync network up`` writes
(:meth:`NetworkAccess.from_file`); the device itself does not care which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from overlay.contact import Contact, ContactError
from overlay.link import TcpTransport, Transport

from ..clock import Clock
from ..errors import P2PSyncError
from ..swarm.registry import Directory, RegistryDirectory
from ..websocket import WebSocketTransport


class NetworkFileError(P2PSyncError):
    """A ``network.json`` that is missing, unreadable or not what ``network up`` writes."""


def _url(description: dict[str, object], key: str, path: Path) -> str:
    value = description.get(key)
    if not isinstance(value, str) or not value.startswith("ws://"):
        raise NetworkFileError(f"{path}: {key!r} must be a ws:// URL")
    return value


def _ledger(description: dict[str, object], path: Path) -> bytes:
    value = description.get("ledger")
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise NetworkFileError(f"{path}: 'ledger' must be the ledger's key, 64 hex digits")
    return key


def _node_urls(description: dict[str, object]) -> tuple[str, ...]:
    """The nodes ``network up`` listed, asked for the network while the registry is down
    (entries that are not what it writes are skipped: they are only a fallback)."""
    nodes = description.get("nodes")
    if not isinstance(nodes, list):
        return ()
    return tuple(
        node["url"]
        for node in nodes
        if isinstance(node, dict)
        and isinstance(node.get("url"), str)
        and node["url"].startswith("ws://")
    )


@dataclass(frozen=True)
class NetworkAccess:
    transport: Transport
    directory: Directory
    clock: Clock
    fileserver_url: str
    opengroup_url: str
    overlay_transport: Transport

    async def relay_contacts(self) -> list[Contact]:
        """The overlay relays the registry lists now (their signed contacts)."""
        snapshot = await self.directory.fetch()
        contacts = []
        for relay in snapshot.relays:
            try:
                contacts.append(Contact.decode(relay.contact))
            except ContactError:
                continue
        return contacts

    @classmethod
    def from_file(cls, path: str | Path, clock: Clock | None = None) -> NetworkAccess:
        """Read the ``network.json`` of a running ``p2psync network up``."""
        path = Path(path)
        try:
            description = json.loads(path.read_text())
        except OSError as exc:
            raise NetworkFileError(f"cannot read {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NetworkFileError(f"{path} is not JSON: {exc}") from None
        if not isinstance(description, dict):
            raise NetworkFileError(f"{path} must hold a JSON object")
        clock = clock or Clock()
        transport = WebSocketTransport()
        return cls(
            transport,
            RegistryDirectory(
                transport,
                _url(description, "registry", path),
                clock,
                _ledger(description, path),
                seeds=_node_urls(description),
            ),
            clock,
            _url(description, "fileserver", path),
            _url(description, "opengroup", path),
            TcpTransport(),
        )
