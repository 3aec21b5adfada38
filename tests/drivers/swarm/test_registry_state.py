"""The registry's saved state: what it acknowledged is in its file, however many
announcements arrive at once, and a registry started again lists it."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from overlay.link import MemoryNetwork
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.identity import Identity
from p2psync.rpc import open_rpc
from p2psync.swarm.listing import sign_announcement
from p2psync.swarm.registry import RegistryServer

RELAYS = 40


async def test_announcements_arriving_at_once_are_all_saved(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Each announcement is saved as it is taken; with many at once, every one is still
    acknowledged, the file holds them all with the permissions the operator gave it, and
    no half-written file is left beside it (one a crash left is removed)."""
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    state = tmp_path / "registry.json"
    await trio.Path(state).write_text("[]")
    await trio.Path(state).chmod(0o640)
    await trio.Path(tmp_path / ".registry.json.k1ll3d.tmp").write_text("[{")
    relays = [Identity.from_label(f"state/relay/{i}") for i in range(RELAYS)]

    async def announce(relay: Identity, port: int) -> None:
        async with open_rpc(network, url) as client:
            params = sign_announcement(relay, "relay", f"tcp://10.0.0.1:{port}", clock.now_ms())
            await client.call("announce", params)

    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            RegistryServer(clock, state, ledger=None, dial_back=None).serve, network, "mem:r"
        )
        async with trio.open_nursery() as announcers:
            for port, relay in enumerate(relays):
                announcers.start_soon(announce, relay, port)
        nursery.cancel_scope.cancel()

    restarted = RegistryServer(clock, state, ledger=None, dial_back=None)
    listed = {relay.pubkey for relay in restarted.snapshot().relays}
    assert listed == {relay.ed25519_public.hex() for relay in relays}
    assert [path.name for path in await trio.Path(tmp_path).iterdir()] == [state.name]
    assert (await trio.Path(state).stat()).st_mode & 0o777 == 0o640
