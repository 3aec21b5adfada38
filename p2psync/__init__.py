"""p2psync: device-to-device sync for swarm-based private messengers.

The public API (DESIGN.md §10): an embedded network, devices on it, and the storage
benchmark's trace runner (``run_scenario``, with the ``Trace`` and ``Send`` a client builds
its own trace from, or a ``Scenario`` for a seeded synthetic one). Everything else is
internal unless the README documents it.
"""

from .device import (
    Contact,
    Device,
    DeviceConfig,
    DeviceError,
    HistoryItem,
    NetworkAccess,
    PairingError,
    open_device,
)
from .errors import DecodeError, P2PSyncError, RpcError
from .network import LocalNetwork, open_local_network
from .sim.runner import run_scenario
from .sim.scenario import Scenario, Send, Trace

__all__ = [
    "Contact",
    "DecodeError",
    "Device",
    "DeviceConfig",
    "DeviceError",
    "HistoryItem",
    "LocalNetwork",
    "NetworkAccess",
    "P2PSyncError",
    "PairingError",
    "RpcError",
    "Scenario",
    "Send",
    "Trace",
    "open_device",
    "open_local_network",
    "run_scenario",
]
