"""Devices: identity, history, durable outbox, friends, pairing (``mapped`` and ``linked``)."""

from .access import NetworkAccess, NetworkFileError
from .device import (
    Device,
    DeviceConfig,
    DeviceError,
    PairingError,
    PairingOffer,
    PairingTicket,
    Rejection,
    create_device,
    describe_device,
    open_device,
)
from .store import Contact, HistoryItem

__all__ = [
    "Contact",
    "Device",
    "DeviceConfig",
    "DeviceError",
    "HistoryItem",
    "NetworkAccess",
    "NetworkFileError",
    "PairingError",
    "PairingOffer",
    "PairingTicket",
    "Rejection",
    "create_device",
    "describe_device",
    "open_device",
]
