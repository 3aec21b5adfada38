"""p2psync: device-to-device sync for swarm-based private messengers.

The public API (DESIGN.md §10): an embedded network, devices on it, and the storage
benchmark's trace runner (``run_scenario``, with the ``Trace`` and ``Send`` a client builds
its own trace from, or a ``Scenario`` for a seeded synthetic one). Everything else is
internal unless the README documents it.

The names are loaded on first use (``from p2psync import Device`` works as ever): the
package itself imports nothing, so that ``import p2psync`` and every ``p2psync`` command
start without the overlay, the servers, the simulator and ``cryptography``, and a command
loads only the modules it runs.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing ``typing`` costs the console script ~5 ms before
# it holds Ctrl-C (``p2psync.command``); type checkers honour the name alone.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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

#: Each public name and the module (relative to this package) that defines it.
_MODULE_OF = {
    "Contact": ".device",
    "Device": ".device",
    "DeviceConfig": ".device",
    "DeviceError": ".device",
    "HistoryItem": ".device",
    "NetworkAccess": ".device",
    "PairingError": ".device",
    "open_device": ".device",
    "DecodeError": ".errors",
    "P2PSyncError": ".errors",
    "RpcError": ".errors",
    "LocalNetwork": ".network",
    "open_local_network": ".network",
    "run_scenario": ".sim.runner",
    "Scenario": ".sim.scenario",
    "Send": ".sim.scenario",
    "Trace": ".sim.scenario",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first asked for, and keep the name
    here so the next look-up is an ordinary attribute."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
