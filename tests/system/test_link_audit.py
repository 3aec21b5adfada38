"""What a passive observer of a device's links reads: no account or node key when links
are TLS pinned to the servers' announced keys (the default), and keys when they are plain
(so the check can fail). Real loopback sockets on Trio's real clock, a
:class:`~benchmarks.link_tap.LinkWatch` tap in front of every server and relay the
devices talk to."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from benchmarks.link_tap import account_and_node_keys, open_link_watch
from p2psync.device import Device, open_device
from p2psync.identity import Identity
from p2psync.network import make_transport, open_local_network, wait_until

#: Real time the story may take (it takes a few seconds).
STORY_S = 60


@pytest.mark.parametrize("route", ["direct", "onion"])
@pytest.mark.parametrize("plain", [False, True], ids=["tls", "plain"])
async def test_a_link_observer_reads_account_and_node_keys_only_on_plain_links(
    tmp_path: Path, route: str, plain: bool
) -> None:
    """Alice asks Bob to be friends and Bob reads the request, each device reaching the
    servers as ``route`` says; the observer of their links reads none of their account
    ids, device keys or the nodes' keys with TLS, and some of them on plain links."""
    async with (
        open_local_network(
            3, relays=3, transport=make_transport("tcp", plain=plain), data_dir=tmp_path / "net"
        ) as network,
        open_link_watch() as links,
    ):

        def device(name: str) -> AbstractAsyncContextManager[Device]:
            return open_device(
                tmp_path / name,
                links.access(network.access(rpc_route=route)),
                mode="linked",
                name=name,
                seed=Identity.from_label(f"link-audit/{name}").seed,
            )

        with trio.fail_after(STORY_S):
            async with device("alice") as alice, device("bob") as bob:
                await alice.friends.request(bob.session_id, "hi, it's me")
                await wait_until(lambda: bob.friends.contact(alice.session_id) is not None)
                keys = account_and_node_keys(network, [alice.whoami(), bob.whoami()])
        read = links.plaintext_keys(keys)
    assert links.connections > 0  # not vacuous: the devices' links went through taps
    if plain:
        assert read is not None and read > 0
    else:
        assert read == 0
