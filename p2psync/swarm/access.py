"""Mailbox access: the owner's word that a store comes from someone it wrote to.

``store`` needs no account (DESIGN.md §4: anyone may leave a message for anyone), so a
stranger could fill a mailbox to its quota (:mod:`.allowance`) and keep it full as rows
expire: the owner's friends' mail would wait as long as the flood went on. So each owner
keeps the last part of its quota (:func:`vouched_reserve`) for stores that carry
its *access*: an Ed25519 signature by the mailbox's own key over its session id and an
expiry. A device signs one a week and puts it in the first envelope it seals to each
mailbox that week (see :mod:`p2psync.envelope`), so whoever it wrote to can show it when
they store for it; it is a bearer token, as Signal's unidentified-access key is, and
proves nothing about who shows it.

* The node checks it without state of its own: the signing key must be the owner's and
  the signature good (else ``unauthorized``: no honest sender shows a forged one, it
  checked the access when it opened the envelope that carried it). One that has expired,
  or that claims more than :data:`MAX_ACCESS_VALIDITY_MS` ahead, counts as none: a
  friend who has not heard from the owner for four weeks stores as a stranger does,
  which costs it nothing until a flood.
* What a node learns: that a store comes from someone the owner wrote to within the
  validity, and in which week it last did (the expiry: weeks, not days, so that every
  contact written to in one week shows the same token), not who.
* A leaked access is good until it expires (five weeks at most): the owner cannot revoke
  one sooner (that would need state at every member). The members of the owner's swarm
  see it too (they could show it, but could fill the reserve by replication anyway).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, RpcError
from ..identity import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    ed25519_matches_session_id,
    verify,
)
from ..wire import Fields

ACCESS_DOMAIN = b"p2psync-mailbox-access/1:"
DAY_MS = 24 * 3600 * 1000
#: How often a device signs a new access: every week (counted from the Unix epoch), so
#: that its expiry tells a node no more than the week its owner last wrote to the sender.
ACCESS_PERIOD_MS = 7 * DAY_MS
#: How long an access is good past the end of the week it was signed in (:func:`access_expiry`).
ACCESS_VALIDITY_MS = 28 * DAY_MS
#: The furthest ahead an access may expire and count: what a device signs, and two days
#: for a clock that runs fast.
MAX_ACCESS_VALIDITY_MS = ACCESS_PERIOD_MS + ACCESS_VALIDITY_MS + 2 * DAY_MS
#: In a ``rate_limited`` refusal's data: the owner's mailbox is full to stores that show
#: no current access of its (a store showing one would be taken).
NEEDS_ACCESS = "needs_access"
#: Accesses a node remembers as checked (a signature check costs ~50 µs; a contact's
#: stores show the same token all week).
CHECKED_ACCESSES = 4096


@dataclass(frozen=True, slots=True)
class MailboxAccess:
    """An owner's access, as a store or an envelope carries it."""

    ed25519: bytes
    expiry_ms: int
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"ed25519": self.ed25519, "expiry": self.expiry_ms, "signature": self.signature}

    @classmethod
    def from_wire(cls, fields: Fields) -> MailboxAccess:
        fields.only("ed25519", "expiry", "signature")
        return cls(
            fields.blob("ed25519", size=KEY_BYTES),
            fields.uint("expiry"),
            fields.blob("signature", size=SIGNATURE_BYTES),
        )


def vouched_reserve(quota: int) -> int:
    """The part of an owner's ``quota`` only stores showing its access may fill: a
    quarter (16 MiB of the default 64, some 12 000 messages of 1 KiB from its contacts
    while a stranger holds the rest full)."""
    return quota // 4


def access_text(owner: str, expiry_ms: int) -> bytes:
    return ACCESS_DOMAIN + owner.encode() + b":" + str(expiry_ms).encode()


def access_expiry(now_ms: int) -> int:
    """The expiry a device signs at ``now_ms``: the same all week, 28 to 35 days ahead."""
    return (now_ms // ACCESS_PERIOD_MS + 1) * ACCESS_PERIOD_MS + ACCESS_VALIDITY_MS


def sign_access(owner: Identity, now_ms: int) -> MailboxAccess:
    """``owner``'s access to its own mailbox, as of ``now_ms``."""
    expiry_ms = access_expiry(now_ms)
    signature = owner.sign(access_text(owner.session_id, expiry_ms))
    return MailboxAccess(owner.ed25519_public, expiry_ms, signature)


def is_current(access: MailboxAccess, now_ms: int) -> bool:
    """Whether ``access`` counts at ``now_ms``: not expired, and not dated further ahead
    than an honest device signs."""
    return now_ms < access.expiry_ms <= now_ms + MAX_ACCESS_VALIDITY_MS


def is_signed_by_owner(access: MailboxAccess, owner: str) -> bool:
    """Whether ``access`` is ``owner``'s own signature (its key the owner's)."""
    try:
        return ed25519_matches_session_id(access.ed25519, owner) and verify(
            access.ed25519, access_text(owner, access.expiry_ms), access.signature
        )
    except DecodeError:  # the owner is no session id
        return False


class AccessChecks:
    """A node's checks of the accesses stores show, remembering the last
    :data:`CHECKED_ACCESSES` good ones."""

    def __init__(self, remembered: int = CHECKED_ACCESSES) -> None:
        self._remembered = remembered
        self._good: OrderedDict[tuple[str, MailboxAccess], None] = OrderedDict()

    def vouched(self, owner: str, access: MailboxAccess | None, now_ms: int) -> bool:
        """Whether a store for ``owner`` showing ``access`` may use the owner's reserve;
        ``unauthorized`` for an access that is not the owner's."""
        if access is None:
            return False
        key = (owner, access)
        if key in self._good:
            self._good.move_to_end(key)
        elif is_signed_by_owner(access, owner):
            self._good[key] = None
            if len(self._good) > self._remembered:
                self._good.popitem(last=False)
        else:
            raise RpcError("unauthorized", "the access shown is not the owner's")
        return is_current(access, now_ms)
