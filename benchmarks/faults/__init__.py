"""Fault injection on a multi-process local network (issue 6).

:func:`open_cluster` runs registry, service nodes and relays as child processes this
process owns, so a fault is exact (``kill -9`` at a chosen moment, restart on the same
data directory and port). :mod:`.scenarios` holds the faults and the check after each:
every store a client saw acknowledged comes back from every swarm member, and the system
recovers with no operator action. ``python -m benchmarks.faults`` runs them all and prints
what each showed; ``p2psync bench soak`` mixes them with load for minutes.
"""

from .cluster import Cluster, open_cluster
from .ledger import AckLedger, Audit, audit, wait_converged
from .load import LatencySample, LoadStats, run_retriever, run_storers, run_subscriber
from .process import ServiceProcess
from .scenarios import (
    FaultReport,
    accepting_node_lost,
    node_crash_during_burst,
    registry_outage,
    relay_crash,
)

__all__ = [
    "AckLedger",
    "Audit",
    "Cluster",
    "FaultReport",
    "LatencySample",
    "LoadStats",
    "ServiceProcess",
    "accepting_node_lost",
    "audit",
    "node_crash_during_burst",
    "open_cluster",
    "registry_outage",
    "relay_crash",
    "run_retriever",
    "run_storers",
    "run_subscriber",
    "wait_converged",
]
