"""A skipped idle stretch (``Clock.skip_idle``) reaches every timer of the swarm at once:
nodes announce again and serve, with no wait for timers kept in Trio's time."""

from __future__ import annotations

import trio
import trio.testing

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.identity import Identity
from p2psync.swarm.listing import ANNOUNCEMENT_TTL_MS

from .helpers import holders, open_test_swarm, wait_until

ALICE = Identity.from_label("alice")
DAY_MS = 86_400_000
#: Virtual seconds a store and a read may take after the jump: nodes re-read the registry
#: after ``LISTING_SETTLING_S`` at the soonest, so anything waiting for a timer kept in
#: Trio's time (60 s registry refresh, 120 s announce interval) takes far longer.
PROMPT_S = 10


async def test_after_a_skipped_day_nodes_announce_again_and_serve_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_swarm(6) as (network, swarm):
        before, _ = await swarm.store(ALICE.session_id, 0, b"before", ttl_ms=3 * DAY_MS)
        await wait_until(lambda: holders(network, ALICE, before) == 6)
        network.clock.skip_idle(25 * 3_600_000)
        jumped_at, started = network.clock.now_ms(), trio.current_time()
        with trio.fail_after(PROMPT_S):
            after, _ = await swarm.store(ALICE.session_id, 0, b"after")
            messages, _, _ = await swarm.retrieve(ALICE, 0, None)
            listing = await network.directory().fetch()
        assert [m.data for m in messages] == [b"before", b"after"]
        assert after != before
        # Every node announced itself since the jump: the listing reads as fresh.
        assert len(listing.nodes) == 6
        assert network.clock.now_ms() - jumped_at < ANNOUNCEMENT_TTL_MS
        assert trio.current_time() - started < PROMPT_S
        # The nodes' rate limits measured the skipped day like a lived one: a burst at
        # once is admitted.
        for n in range(20):
            await swarm.store(ALICE.session_id, 0, b"burst %d" % n)
        assert not any(
            node.rpc.stats.errors.get("rate_limited") for node in network.running_nodes()
        )


async def test_a_skip_ends_the_waits_it_passes_and_shortens_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(TEST_EPOCH_MS)
    woke: dict[str, float] = {}

    async def wait(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "passed", 60)
        nursery.start_soon(wait, "shortened", 7_200)
        await trio.sleep(10)
        clock.skip_idle(3_600_000)
        with clock.move_on_after(120) as scope:
            clock.skip_idle(120_000)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    # Two hours, less the two skips (an hour and two minutes) of the Trio time.
    assert woke == {"passed": 10, "shortened": 7_200 - 3_600 - 120}
