"""The two multi-device modes as rules, one method each, so no driver branches on the mode.

``mapped`` (v1.5.0): every device has its own key and swarm; the primary countersigns a
device mapping that senders look up on the file server. ``linked``: the primary hands its
identity seed to the new device; every device is the same user with one swarm. Each rule
below is where one of those differences is decided (DESIGN.md §1, §10).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Mode(StrEnum):
    """Fixed when a device is created; stored, sent in pairing requests and shown by the
    CLI by its value."""

    MAPPED = "mapped"
    LINKED = "linked"


class Rules:
    """The ``mapped`` rules; :class:`LinkedRules` overrides where ``linked`` differs."""

    mode = Mode.MAPPED

    def is_primary(self, user_id: str, device_id: str) -> bool:
        """A ``mapped`` primary is the device whose key is the user's."""
        return user_id == device_id

    def own_devices_without_lookup(self, user: str, user_id: str) -> tuple[str, ...] | None:
        """The devices of ``user`` when no file server lookup is needed: none here (our
        own devices have mappings too)."""
        return None

    def sibling_owners(
        self, user_id: str, own_devices: Iterable[str], device_id: str, has_siblings: bool
    ) -> list[str]:
        """Where sync copies go: each other device as the file server lists it (a revoked
        device gets none)."""
        return sorted(set(own_devices) - {device_id})

    def fallback_owners(self, user_id: str, unacknowledged_by: Iterable[str]) -> list[str]:
        """Where a fallback sync copy goes: the swarm of each sibling that did not
        acknowledge."""
        return list(unacknowledged_by)

    def own_key_refused(self, user: str, user_id: str) -> bool:
        """Whether a device key other than the user's is refused outright for ``user``."""
        return False

    def sync_signer_is_account(self) -> bool:
        """Whether a sync record must be signed by the account key itself (else by a
        sibling device, checked against the device list)."""
        return False

    def deletes_filed_sync_copy(self) -> bool:
        """Whether a filed sync copy is deleted at once (only this device reads its own
        swarm), rather than counting as covering the message for every sibling."""
        return True

    def shares_received(self) -> bool:
        """Whether a received message is pushed to siblings directly (they read the same
        swarm, and sharing it lets it leave early)."""
        return False

    def hands_over_seed(self) -> bool:
        """Whether pairing hands the account seed to the new device: its request is then
        sealed by a key made for it alone, where it also receives the challenge and the
        grant; else the request is a signed mapping request from the device's own key,
        and the grant a countersigned mapping."""
        return False

    def derives_siblings_secret(self) -> bool:
        """Whether siblings' rendezvous secret comes from the account seed (else it is
        made by the primary and handed over in the grant)."""
        return False

    def ignores_known_sibling_request(self) -> bool:
        """Whether a pairing request from a known sibling is its own, still in the swarm
        the account shares (else it is a replay, refused)."""
        return False

    def can_revoke(self) -> str | None:
        """Why this mode cannot revoke a device, or None if it can."""
        return None


class LinkedRules(Rules):
    mode = Mode.LINKED

    def is_primary(self, user_id: str, device_id: str) -> bool:
        return True

    def own_devices_without_lookup(self, user: str, user_id: str) -> tuple[str, ...] | None:
        return (user,) if user == user_id else None

    def sibling_owners(
        self, user_id: str, own_devices: Iterable[str], device_id: str, has_siblings: bool
    ) -> list[str]:
        """One copy in the account's own swarm, which every sibling reads, while it has
        siblings."""
        return [user_id] if has_siblings else []

    def fallback_owners(self, user_id: str, unacknowledged_by: Iterable[str]) -> list[str]:
        return [user_id]

    def own_key_refused(self, user: str, user_id: str) -> bool:
        return user == user_id

    def sync_signer_is_account(self) -> bool:
        return True

    def deletes_filed_sync_copy(self) -> bool:
        return False

    def shares_received(self) -> bool:
        return True

    def hands_over_seed(self) -> bool:
        return True

    def derives_siblings_secret(self) -> bool:
        return True

    def ignores_known_sibling_request(self) -> bool:
        return True

    def can_revoke(self) -> str | None:
        return "linked devices share one identity: revoking one needs a new identity"


RULES: dict[Mode, Rules] = {Mode.MAPPED: Rules(), Mode.LINKED: LinkedRules()}
