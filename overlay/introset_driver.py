"""Publishing an endpoint's introset and looking a sibling's up, over DHT requests on the
endpoint's paths.

What an introset holds and who can open it is :mod:`overlay.introset`; whom to ask and
what their answers mean, :mod:`overlay.introset_lookup`; when it is republished,
:meth:`~overlay.endpoint_core.EndpointCore.keep_introsets`. What is here is asking.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from .clock import Clock
from .constants import DHT_ATTEMPTS
from .endpoint_core import EndpointCore
from .introset import Intro
from .introset_lookup import Ask, IntrosetLookup, introset_to_publish, stored
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
        request, replicas = introset_to_publish(
            shared_secret, self._keys, self._core.introset_intros(now), self._core.directory, now
        )
        kept = 0

        async def put(relay: bytes) -> None:
            nonlocal kept
            for _ in range(DHT_ATTEMPTS):
                if stored(await self._ask(relay, request)):
                    kept += 1
                    return

        async with trio.open_nursery() as nursery:
            for relay in replicas:
                nursery.start_soon(put, relay)
        return kept

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
        """The live intros of sibling ``owner``, or [] if no replica has them
        (:class:`~.introset_lookup.IntrosetLookup` says whom to ask)."""
        lookup = IntrosetLookup(shared_secret, owner, self._core.directory, self._clock.now_ms())
        while asks := lookup.next_round():
            async with trio.open_nursery() as nursery:
                for ask in asks:
                    nursery.start_soon(self._ask_one, lookup, ask, nursery.cancel_scope)
        return lookup.found

    async def _ask_one(self, lookup: IntrosetLookup, ask: Ask, round_: trio.CancelScope) -> None:
        response = await self._ask(ask.relay, ask.request)
        if lookup.answered(ask, response, self._clock.now_ms()):
            round_.cancel()
