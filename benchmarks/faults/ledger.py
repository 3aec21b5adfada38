"""What the swarm owes back: every store a client saw acknowledged, and the audit that
compares it with what each swarm member actually returns.

A store counts only once its reply arrived: a node that crashed after committing but
before answering owes nothing (the client retried elsewhere). Two figures come out of an
audit, and the first is the one that must be 0:

* **lost** — acknowledged messages that *no* member returns;
* **missing** — per member, acknowledged messages that member does not return yet
  (repair lag: non-zero right after a fault, 0 once the swarm has converged).

Each member is read with its own cursor (exact paging on one node), through signed
``retrieve`` as any client would, so the audit checks the public API, not the SQLite file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from p2psync.errors import ConnectionLost, DecodeError, RpcError
from p2psync.identity import Identity, session_id_key
from p2psync.swarm.client import SwarmClient
from p2psync.swarm.ring import NodeInfo, SwarmMap

from .polling import poll_until

NAMESPACE = 0


@dataclass
class AckLedger:
    """Acknowledged hashes by owner. Grows with the run (32 bytes and a set slot per
    store): it is the one thing a soak must keep in full to prove nothing was lost."""

    owners: list[Identity]
    acknowledged: dict[str, set[bytes]] = field(default_factory=dict)
    count: int = 0
    _waiters: list[tuple[int, trio.Event]] = field(default_factory=list)

    def record(self, owner: Identity, digest: bytes) -> None:
        hashes = self.acknowledged.setdefault(owner.session_id, set())
        if digest not in hashes:
            hashes.add(digest)
            self.count += 1
            for target, event in self._waiters:
                if self.count >= target:
                    event.set()

    async def reached(self, count: int) -> None:
        """Wait until ``count`` stores have been acknowledged in all (faults are timed by
        progress of the load, not by the clock)."""
        if self.count >= count:
            await trio.lowlevel.checkpoint()
            return
        waiter = (count, trio.Event())
        self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            self._waiters.remove(waiter)


@dataclass(frozen=True)
class Audit:
    acknowledged: int
    lost: int
    missing: dict[str, int]
    #: Member URL → the error its last read ended with (an audit that cannot read a
    #: member cannot say it converged, and the reason is what an operator needs first).
    unreachable: dict[str, str]

    @property
    def converged(self) -> bool:
        """Every member answered and returns every acknowledged message."""
        return self.lost == 0 and not self.unreachable and not any(self.missing.values())


async def held_by(swarm: SwarmClient, owner: Identity, node: NodeInfo) -> set[bytes]:
    """Every unexpired hash ``node`` returns for ``owner`` (all pages, one cursor)."""
    held: set[bytes] = set()
    last: bytes | None = None
    while True:
        messages, more, _ = await swarm.retrieve(owner, NAMESPACE, last, node)
        held.update(m.hash for m in messages)
        if not more or not messages:
            return held
        last = messages[-1].hash


async def audit(swarm: SwarmClient, ledger: AckLedger, swarms: SwarmMap) -> Audit:
    """Read every owner's messages from every member of its swarm, side by side."""
    missing: dict[str, int] = {}
    unreachable: dict[str, str] = {}
    held_anywhere: dict[str, set[bytes]] = {o.session_id: set() for o in ledger.owners}

    async def check(owner: Identity, node: NodeInfo) -> None:
        wanted = ledger.acknowledged.get(owner.session_id, set())
        try:
            held = await held_by(swarm, owner, node)
        except (OSError, ConnectionLost, RpcError, DecodeError) as error:
            unreachable[node.url] = f"{type(error).__name__}: {error}"
            return
        held_anywhere[owner.session_id] |= held & wanted
        missing[node.url] = missing.get(node.url, 0) + len(wanted - held)

    async with trio.open_nursery() as nursery:
        for owner in ledger.owners:
            for node in swarms.nodes_for_key(session_id_key(owner.session_id)):
                nursery.start_soon(check, owner, node)
    lost = sum(len(hashes - held_anywhere[owner]) for owner, hashes in ledger.acknowledged.items())
    return Audit(ledger.count, lost, missing, dict(sorted(unreachable.items())))


async def wait_converged(swarm: SwarmClient, ledger: AckLedger, swarms: SwarmMap) -> Audit:
    """Audit until every member holds everything acknowledged; bound it with a cancel
    scope (and audit once more to report where it stood when the deadline passed)."""
    latest: list[Audit] = []

    async def converged() -> bool:
        latest[:] = [await audit(swarm, ledger, swarms)]
        return latest[0].converged

    await poll_until(converged)
    return latest[0]
