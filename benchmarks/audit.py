"""What the servers of a network learn about where a user's devices are.

Every request a service node, the file server or the open group server answers is
recorded with the address it came from (:meth:`p2psync.rpc.RpcServer.observe`; an onion
request's inner request is seen as coming from the exit relay, as the server sees it).
From that the audit counts what the reference document wants hidden, "the association
between two public keys (i.e. a single user's primary and secondary devices)":

* requests any server received from a device's own address, and
* accounts that one server saw from two device addresses (which tells it that the account
  has two devices, where they are and when each is online).

The registry is watched apart (:attr:`ServerAudit.registry_readers`): a device's first
read of the listing at each start (which relays exist) is made before it has paths and
carries no account key; every later read goes to service nodes through its paths.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from p2psync.network import LocalNetwork
from p2psync.swarm.messages import SESSION_ID_CHARS


@dataclass(frozen=True)
class Observation:
    server: str
    method: str
    #: Where the request came from: a host name (in-memory network) or an IP address.
    address: str
    #: The account keys (session ids) the request names.
    accounts: frozenset[str]


@dataclass
class ServerAudit:
    """Records what the servers of ``network`` see once :meth:`watch` has been called."""

    observations: list[Observation] = field(default_factory=list)
    #: The address of every read of the registry's listing (a ``list`` page).
    registry_readers: list[str] = field(default_factory=list)

    def watch(self, network: LocalNetwork) -> None:
        for url, server in network.servers().items():
            server.observe(partial(self._record, url))
        if network.registry_rpc is not None:
            network.registry_rpc.observe(self._registry_read)

    def _registry_read(self, method: str, peer: str, params: Mapping[str, Any]) -> None:
        if method == "list":
            self.registry_readers.append(_address(peer))

    def registry_reads_from(self, addresses: Collection[str]) -> int:
        """Pages of the registry's listing read from one of ``addresses``."""
        return sum(reader in addresses for reader in self.registry_readers)

    def _record(self, server: str, method: str, peer: str, params: Mapping[str, Any]) -> None:
        accounts = frozenset(
            value
            for value in params.values()
            if isinstance(value, str) and len(value) == SESSION_ID_CHARS and value[:2] == "05"
        )
        self.observations.append(Observation(server, method, _address(peer), accounts))

    def requests_from(self, addresses: Collection[str]) -> int:
        """Requests any server received from one of ``addresses``."""
        return sum(observation.address in addresses for observation in self.observations)

    def accounts_seen_from_two(self, addresses: Collection[str]) -> int:
        """(server, account) pairs where that server saw the account named in requests
        from two or more of ``addresses``: a server that could tie the devices together."""
        seen: dict[tuple[str, str], set[str]] = {}
        for observation in self.observations:
            if observation.address in addresses:
                for account in observation.accounts:
                    seen.setdefault((observation.server, account), set()).add(observation.address)
        return sum(len(found) >= 2 for found in seen.values())


def _address(peer: str) -> str:
    """A peer's address without its port (``127.0.0.11:53422`` → ``127.0.0.11``); a host
    name on the in-memory network as it is."""
    host, separator, port = peer.rpartition(":")
    return host if separator and port.isdigit() else peer
