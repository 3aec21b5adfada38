"""What a device's store holds, as values: history items, contacts, outbox entries and
their copies, messages siblings have yet to acknowledge, pairings. The cores decide on
these (:mod:`.inbound` among them) without the database that keeps them (:mod:`.store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .content import ContactRecord, HistoryRecord
from .friends import ContactState


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One message in a device's history, sent or received."""

    seq: int
    id: bytes
    timestamp_ms: int
    conversation: str
    outgoing: bool
    sender: str
    device: str
    text: str

    @property
    def record(self) -> HistoryRecord:
        """The item as siblings exchange it (its id travels beside it)."""
        return HistoryRecord(
            self.timestamp_ms, self.conversation, self.outgoing, self.sender, self.device, self.text
        )


@dataclass(frozen=True, slots=True)
class Contact:
    user: str
    state: ContactState
    devices: tuple[str, ...]
    note: str = ""
    #: The display name the user gave themselves (checked when it arrived); "" if none.
    #: Shown beside the user's id, never instead of it.
    name: str = ""

    @property
    def record(self) -> ContactRecord:
        return ContactRecord(self.user, self.state, self.devices, self.name)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    kind: str
    recipient: str
    body: bytes
    timestamp_ms: int
    message_id: bytes | None
    expanded: bool


@dataclass(frozen=True, slots=True)
class Copy:
    """One sealed copy of an outbox entry, destined for ``owner``'s swarm."""

    seq: int
    owner: str
    namespace: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Pending:
    """A message some sibling has yet to acknowledge."""

    id: bytes
    published_ms: int
    body: bytes
    inbound: bool
    fell_back: bool
    #: The sibling that sent it and pushed it here, when this device only stands in for
    #: that sibling's sync copy; None for what this device sent or received itself.
    relayed_from: str | None


@dataclass(frozen=True, slots=True)
class Pairing:
    request_id: bytes
    incoming: bool
    peer: str
    name: str
    timestamp_ms: int
    #: A :class:`~p2psync.device.pairing.PairingState` once read back from the store.
    state: str
    data: bytes = field(repr=False)  # may hold a private key (the pairing's ephemeral)
