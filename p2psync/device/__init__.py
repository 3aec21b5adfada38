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
    Room,
    SyncStatus,
    Whoami,
    create_device,
    describe_device,
    describe_pairing_address,
    device_in_use,
    open_device,
)
from .facades import DevicePairing, Friends, Rooms
from .friends import ContactState
from .modes import Mode
from .rows import Contact, HistoryItem

__all__ = [
    "Contact",
    "ContactState",
    "Device",
    "DeviceConfig",
    "DeviceError",
    "DevicePairing",
    "Friends",
    "HistoryItem",
    "Mode",
    "NetworkAccess",
    "NetworkFileError",
    "PairingError",
    "PairingOffer",
    "PairingTicket",
    "Rejection",
    "Room",
    "Rooms",
    "SyncStatus",
    "Whoami",
    "create_device",
    "describe_device",
    "describe_pairing_address",
    "device_in_use",
    "open_device",
]
