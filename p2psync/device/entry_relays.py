"""Which relays a device's endpoints may enter the overlay by, and the relay listing its
siblings deal them on.

A relay that is the entry of two siblings sees both ends of their session, and both
devices' addresses; so the account's relays are dealt among its devices
(:class:`~overlay.endpoint_core.EntryShare`, keyed by the siblings' secret) and each
device enters only by its own. Siblings that read the registry at different times would
deal on different listings, so they pass the newest any of them read over their
sessions and deal on that one (docs/security.md, "Relays next to siblings").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from overlay.contact import Contact as RelayContact
from overlay.contact import verified_directory
from overlay.endpoint_core import EntryShare, paths_possible

from ..sync.records import Relays
from .keys import siblings_secret
from .local import SECRET_META, Local


def siblings_secret_of(local: Local) -> bytes | None:
    """What a device's siblings find each other's introsets by (None before the first
    pairing of a ``mapped`` device)."""
    if local.rules.derives_siblings_secret():
        return siblings_secret(local.identity.seed)
    return local.store.get_meta(SECRET_META)


class SiblingEntries:
    """The entry filter of every endpoint of a device, the one it meets its siblings on
    and its onion pool's: the device's part of the account's :class:`EntryShare`, as the
    store says now (every relay while it has no sibling). A relay that is the entry of
    two siblings, whichever of their endpoints, sees both devices' addresses.

    The share is dealt on the relay listing the siblings agree on (the newest any of
    them read, passed over their sessions: :meth:`Local.entry_listing`; by hash alone
    for one too long to pass on), so siblings that read the registry at different times
    still deal alike (:meth:`EntryShare.or_on_listed`).

    ``or_any``: when the share gives this device none of the listing (fewer relays than
    devices), admit every relay rather than none; the onion pool takes that, since a
    device must still reach its swarm, while the sibling endpoint does without."""

    def __init__(self, local: Local, *, or_any: bool = False) -> None:
        self._local = local
        self._or_any = or_any
        #: The last share dealt, the relays it was dealt on and its entries: each path
        #: check asks, and the answer changes only with the siblings or the listings.
        self._dealt: tuple[EntryShare, frozenset[bytes], frozenset[bytes]] | None = None

    def __call__(self, relays: Collection[bytes]) -> frozenset[bytes]:
        keys = self._local.store.sibling_overlay_keys()
        secret = siblings_secret_of(self._local)
        if not keys or secret is None:
            return frozenset(relays)
        own = self._local.overlay_key
        members = frozenset(keys.values()) | {own}
        agreed = self._local.entry_listing()
        base = None if agreed is None else agreed.keys
        share, listed = EntryShare(secret, members, own, base), frozenset(relays)
        if self._dealt is not None and self._dealt[:2] == (share, listed):
            entries = self._dealt[2]
        else:
            entries = share.or_on_listed(listed)
            self._dealt = (share, listed, entries)
        return entries or (frozenset(relays) if self._or_any else entries)


def learn_from_sibling(local: Local, listing: Relays) -> bool:
    """Keep a sibling's listing if every contact in it verifies here (the dealing runs on
    all of them) and it replaces ours."""
    now = local.clock.now_ms()
    if len(verified_directory(list(listing.contacts), now)) < len(listing.contacts):
        return False
    return local.learn_entry_listing(listing)


def learn_read(local: Local, contacts: Sequence[RelayContact]) -> Relays | None:
    """The listing this device just read, as siblings agree on it (:meth:`Relays.agreed`),
    if it replaces the one the siblings deal entries on (then kept). One too short for a
    path is left out: it would only take relays away."""
    now = local.clock.now_ms()
    if not paths_possible(verified_directory(list(contacts), now).keys(), local.config.hops, None):
        return None
    listing = Relays.read(now, contacts).agreed()
    return listing if local.learn_entry_listing(listing) else None
