"""Publishing an endpoint's introset and looking a sibling's up, over DHT requests on the
endpoint's paths.

What an introset holds and who can open it is :mod:`overlay.introset`; where it is
stored, :func:`~overlay.dht.closest_relays`; when it is republished,
:meth:`~overlay.endpoint_core.EndpointCore.keep_introsets`. What is here is asking:
every replica at once, again for those that did not answer, up to ``DHT_ATTEMPTS``
rounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from .clock import Clock
from .constants import DHT_ATTEMPTS, INTROSET_LIFETIME_MS, INTROSET_REPLICAS
from .dht import DhtStatus, closest_relays, get_request, put_request
from .endpoint_core import EndpointCore
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

#: Ask ``relay`` a DHT request on some path; its response, or None if none came.
AskDht = Callable[[bytes, bytes], Awaitable[bytes | None]]


class Introsets:
    """An endpoint's introsets: :meth:`publish`, :meth:`run` (republishing) and
    :meth:`lookup`."""

    def __init__(
        self,
        core: EndpointCore,
        keys: KeyPair,
        clock: Clock,
        *,
        ask: AskDht,
        ready: Callable[[], Awaitable[None]],
        paths_event: Callable[[], trio.Event],
    ) -> None:
        """``ready``: wait for a usable path; ``paths_event``: the event set at the
        paths' next change."""
        self._core = core
        self._keys = keys
        self._clock = clock
        self._ask = ask
        self._ready = ready
        self._paths_event = paths_event

    async def publish(self, shared_secret: bytes) -> int:
        """Publish for the siblings sharing ``shared_secret`` and keep it republished
        while the endpoint runs. Returns how many replicas stored it."""
        self._core.publish_under(shared_secret)
        return await self._publish_one(shared_secret)

    async def _publish_one(self, shared_secret: bytes) -> int:
        await self._ready()
        now = self._clock.now_ms()
        rendezvous = rendezvous_keys(shared_secret, self._keys.public, epoch_of(now))
        intros = self._core.introset_intros(now)
        introset = seal_introset(rendezvous, self._keys, intros, now + INTROSET_LIFETIME_MS)
        replicas = closest_relays(
            rendezvous.location, list(self._core.directory), INTROSET_REPLICAS
        )
        stored = 0

        async def put(relay: bytes) -> None:
            nonlocal stored
            for _ in range(DHT_ATTEMPTS):
                if await self._ask(relay, put_request(introset)) == bytes((DhtStatus.STORED,)):
                    stored += 1
                    return

        async with trio.open_nursery() as nursery:
            for relay in replicas:
                nursery.start_soon(put, relay)
        return stored

    async def run(self) -> None:
        """Carry out :meth:`EndpointCore.keep_introsets` whenever the paths change or its
        timer is due."""
        while True:
            changed = self._paths_event()
            republish = self._core.keep_introsets(self._clock.now_ms())
            if republish is None:
                with self._clock.move_on_at_ms(self._core.republish_at_ms):
                    await changed.wait()
                continue
            for secret in republish.secrets:
                await self._publish_one(secret)
            self._core.republished(self._clock.now_ms())

    async def lookup(self, shared_secret: bytes, owner: bytes) -> list[Intro]:
        """The live intros of sibling ``owner``, or [] if no replica has them. All replicas
        are asked at once (this epoch's and the last's); the first introset that opens
        wins. Replicas that gave no answer are asked again, in up to ``DHT_ATTEMPTS``
        rounds; an answer that they hold nothing is final, so looking up a sibling that
        is offline costs one round."""
        now = self._clock.now_ms()
        found: list[Intro] = []
        asking = [
            (relay, rendezvous)
            for epoch in (epoch_of(now), epoch_of(now) - 1)
            for rendezvous in [rendezvous_keys(shared_secret, owner, epoch)]
            for relay in closest_relays(rendezvous.location, list(self._core.directory))
        ]
        for _ in range(DHT_ATTEMPTS):
            silent: list[tuple[bytes, RendezvousKeys]] = []
            async with trio.open_nursery() as nursery:
                for relay, rendezvous in asking:
                    nursery.start_soon(
                        self._lookup_one, relay, rendezvous, owner, found, silent, nursery
                    )
            if found or not silent:
                return found
            asking = silent
        return []

    async def _lookup_one(
        self,
        relay: bytes,
        rendezvous: RendezvousKeys,
        owner: bytes,
        found: list[Intro],
        silent: list[tuple[bytes, RendezvousKeys]],
        nursery: trio.Nursery,
    ) -> None:
        """Ask one replica; ``silent`` collects those that did not answer."""
        response = await self._ask(relay, get_request(rendezvous.location))
        if not response:
            silent.append((relay, rendezvous))
            return
        if response[0] != DhtStatus.FOUND:
            return
        try:
            intros = open_introset(response[1:], rendezvous, owner, self._clock.now_ms())
        except IntrosetError:
            return
        if intros and not found:
            found.extend(intros)
            nursery.cancel_scope.cancel()
