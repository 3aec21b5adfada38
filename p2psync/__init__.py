"""p2psync: device-to-device sync for swarm-based private messengers.

The public API (DESIGN.md §10): an embedded network, devices on it, and the storage
benchmark's trace runner. Everything else is internal unless the README documents it.
"""

from .bench.storage import run_scenario
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
    "open_device",
    "open_local_network",
    "run_scenario",
]
