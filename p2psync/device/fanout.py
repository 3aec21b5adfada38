"""Which copies a message from the outbox becomes: the fan-out rule, decided apart from
the lookups it needs.

An entry's first copy goes to its recipient. Beyond it: one for each other device of a
``mapped`` recipient (whatever this device's mode: those devices have swarms of their
own), and, for our siblings, the sync copies the mode puts where they read
(:meth:`~.modes.Rules.sibling_owners`). A text sent with direct sync on gets no sync copy
here: the siblings take it directly, or a fallback copy after the grace. Anything else
sent to the user's own account (a contact change, a sibling record) is already a
message for the siblings.

:func:`fan_out` asks for each device list it lacks (:class:`~.inbound.NeedDevicesOf`,
the same question the inbound core asks) and is called again with it, so the driver's
only work is the lookup and the sealing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .content import Content, SyncSent, Text
from .inbound import NeedDevicesOf
from .modes import Rules
from .rows import Contact


@dataclass(frozen=True, slots=True)
class Sent:
    """One outbox entry as the fan-out reads it."""

    recipient: str
    message_id: bytes | None
    timestamp_ms: int
    content: Content


@dataclass(frozen=True, slots=True)
class CopyTo:
    """Seal ``content`` to ``owner`` and store it in that owner's swarm."""

    owner: str
    content: Content


@dataclass(frozen=True, slots=True)
class Sender:
    """The sending device, as the rule needs it."""

    user_id: str
    device_id: str
    rules: Rules
    has_siblings: bool
    direct_sync: bool


def fan_out(
    sent: Sent, sender: Sender, devices: Mapping[str, tuple[str, ...]]
) -> NeedDevicesOf | list[CopyTo]:
    """The copies beyond the first, or the device list still needed to decide them
    (``devices``: the lists looked up so far, by user)."""
    copies: list[CopyTo] = []
    content = sent.content
    to_friend = sent.recipient != sender.user_id
    if to_friend:
        if sent.recipient not in devices:
            return NeedDevicesOf(sent.recipient, fresh=False)
        fanned = replace(content, id=sent.message_id) if isinstance(content, Text) else content
        copies += [
            CopyTo(device, fanned) for device in devices[sent.recipient] if device != sent.recipient
        ]
    if isinstance(content, Text):
        if sender.direct_sync:
            return copies
        assert sent.message_id is not None, "a text in the outbox has its id"
        content = SyncSent(sent.message_id, sent.recipient, sent.timestamp_ms, content.text)
    elif to_friend:
        return copies
    if sender.user_id not in devices:
        return NeedDevicesOf(sender.user_id, fresh=False)
    owners = sender.rules.sibling_owners(
        sender.user_id, devices[sender.user_id], sender.device_id, sender.has_siblings
    )
    return copies + [CopyTo(owner, content) for owner in owners]


def last_known_devices(
    user: str,
    *,
    user_id: str,
    device_id: str,
    siblings: Mapping[str, str],
    contact: Contact | None,
) -> tuple[str, ...]:
    """``user``'s devices when the file server cannot be asked: our own account as this
    device knows it (its user, itself and its siblings), a friend's as last heard, and
    anyone else's as the one key we have."""
    if user == user_id:
        return (user_id, device_id, *siblings)
    return contact.devices if contact is not None else (user,)
