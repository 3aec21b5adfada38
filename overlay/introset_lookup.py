"""Whom an endpoint asks to store its introset or to find a sibling's, and what their
answers mean, sans-I/O.

An introset is kept by the :data:`~.constants.INTROSET_REPLICAS` relays closest to its
rendezvous location on the ring (:func:`~.dht.closest_relays`), and the location changes
every epoch. Publishing (:func:`introset_to_publish`) seals the introset for this epoch
and names those relays; each is asked up to :data:`~.constants.DHT_ATTEMPTS` times until
it answers that it stored it (:func:`stored`).

A lookup (:class:`IntrosetLookup`) asks every replica of this epoch and of the last at
once (an introset published just before the epoch turned is still at the old location),
and the first introset that opens as ``owner``'s wins. Replicas that gave no answer are
asked again, in up to :data:`~.constants.DHT_ATTEMPTS` rounds; an answer that they hold
nothing is final, so looking up a sibling that is offline costs one round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .constants import DHT_ATTEMPTS, INTROSET_LIFETIME_MS, INTROSET_REPLICAS
from .dht import DhtStatus, closest_relays, get_request, put_request
from .introset import (
    Intro,
    IntrosetError,
    RendezvousKeys,
    epoch_of,
    open_introset,
    rendezvous_keys,
    seal_introset,
)
from .keys import KeyPair


def introset_to_publish(
    shared_secret: bytes,
    keys: KeyPair,
    intros: Sequence[Intro],
    relays: Iterable[bytes],
    now_ms: int,
) -> tuple[bytes, list[bytes]]:
    """A ``DHT PUT`` of our introset for the siblings sharing ``shared_secret``, sealed at
    ``now_ms``, and the relays (of ``relays``) to ask to keep it."""
    rendezvous = rendezvous_keys(shared_secret, keys.public, epoch_of(now_ms))
    introset = seal_introset(rendezvous, keys, list(intros), now_ms + INTROSET_LIFETIME_MS)
    return put_request(introset), closest_relays(
        rendezvous.location, list(relays), INTROSET_REPLICAS
    )


def stored(response: bytes | None) -> bool:
    """Whether a replica's answer to a ``DHT PUT`` says it keeps the introset."""
    return response == bytes((DhtStatus.STORED,))


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask ``relay`` the ``DHT GET`` ``request`` (for the introset at ``rendezvous``)."""

    relay: bytes
    request: bytes
    rendezvous: RendezvousKeys


class IntrosetLookup:
    """One lookup of ``owner``'s intros (see the module): :meth:`next_round` says whom to
    ask, :meth:`answered` takes each answer; :attr:`found` is the result."""

    def __init__(
        self, shared_secret: bytes, owner: bytes, relays: Iterable[bytes], now_ms: int
    ) -> None:
        self._owner = owner
        relays = list(relays)
        epoch = epoch_of(now_ms)
        self._round: list[Ask] = [
            Ask(relay, get_request(rendezvous.location), rendezvous)
            for rendezvous in (rendezvous_keys(shared_secret, owner, e) for e in (epoch, epoch - 1))
            for relay in closest_relays(rendezvous.location, relays)
        ]
        self._silent: list[Ask] = []
        self._rounds = 0
        self.found: list[Intro] = []

    def next_round(self) -> list[Ask]:
        """Whom to ask now, all at once: everybody first, then those that said nothing;
        none once the intros are found, nobody is left to ask again, or after
        ``DHT_ATTEMPTS`` rounds."""
        if self._rounds:
            self._round, self._silent = self._silent, []
        if self.found or self._rounds >= DHT_ATTEMPTS:
            return []
        self._rounds += 1
        return list(self._round)

    def answered(self, ask: Ask, response: bytes | None, now_ms: int) -> bool:
        """``ask``'s answer (None or empty: none came). True once the intros are found,
        when the round's other asks need no answer."""
        if not response:
            self._silent.append(ask)
            return False
        if self.found or response[0] != DhtStatus.FOUND:
            return bool(self.found)
        try:
            intros = open_introset(response[1:], ask.rendezvous, self._owner, now_ms)
        except IntrosetError:
            return False
        self.found = list(intros)
        return bool(self.found)
