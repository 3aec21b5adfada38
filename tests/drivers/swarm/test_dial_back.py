"""The registry lists an address only once it has reached the announcer there: a staked
node or relay cannot list someone else's address (or one nothing serves)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from overlay.link import Link, MemoryNetwork, TcpTransport, Transport
from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.errors import RpcError
from p2psync.identity import Identity
from p2psync.swarm.admission import Ledger
from p2psync.swarm.listing import ANNOUNCEMENT_TTL_MS, Snapshot, needs_dial_back, sign_announcement
from p2psync.swarm.registry import RegistryDirectory, RegistryServer
from p2psync.websocket import WebSocketTransport

LEDGER = Ledger(Identity.from_label("dial-back-ledger"))
ROGUE = Identity.from_label("dial-back-rogue")
VICTIM = Identity.from_label("dial-back-victim")


def _registration(identity: Identity) -> bytes:
    return LEDGER.register(identity.ed25519_public.hex()).encode()


def test_an_address_is_reached_again_only_when_new_changed_or_expired() -> None:
    now = TEST_EPOCH_MS
    listed = (now + ANNOUNCEMENT_TTL_MS, {"url": "mem:a"}, b"")
    assert needs_dial_back(None, "mem:a", now)
    assert not needs_dial_back(listed, "mem:a", now)
    assert needs_dial_back(listed, "mem:b", now)
    assert needs_dial_back(listed, "mem:a", now + ANNOUNCEMENT_TTL_MS)


def test_a_relay_url_pinning_another_key_is_left_out_by_readers() -> None:
    """A relay serves TLS as its own key too, so its ``host:port#<key>`` must pin it."""
    now = TEST_EPOCH_MS
    victim_url = f"10.0.0.1:7000#{VICTIM.ed25519_public.hex()}"
    announcements = [
        sign_announcement(VICTIM, "relay", victim_url, now),
        sign_announcement(ROGUE, "relay", victim_url, now),
        sign_announcement(ROGUE, "relay", "10.0.0.2:7000#" + "zz" * 32, now),
    ]
    snapshot = Snapshot.from_announcements({"announcements": announcements}, now, ledger=None)
    assert [(r.pubkey, r.url) for r in snapshot.relays] == [
        (VICTIM.ed25519_public.hex(), victim_url)
    ]


async def test_an_address_nothing_serves_is_refused_until_the_announcer_serves_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = MemoryNetwork()
    clock = Clock(TEST_EPOCH_MS)
    registry = RegistryServer(clock, ledger=LEDGER.public_key, dial_back=network)
    dials = 0

    async def count(link: Link) -> None:
        nonlocal dials
        dials += 1

    async with trio.open_nursery() as nursery:
        url = await nursery.start(registry.serve, network, "mem:registry")
        directory = RegistryDirectory(network, url, clock, LEDGER.public_key)
        for kind in ("node", "relay"):
            with pytest.raises(RpcError) as refused:
                await directory.announce(
                    ROGUE, kind, "mem:nobody", registration=_registration(ROGUE)
                )
            assert refused.value.code == "unavailable" and "mem:nobody" in refused.value.message
        assert registry.snapshot().announcements == ()
        await nursery.start(network.serve, count, "mem:rogue")
        await directory.announce(ROGUE, "relay", "mem:rogue", registration=_registration(ROGUE))
        await directory.announce(ROGUE, "relay", "mem:rogue", registration=_registration(ROGUE))
        assert [r.url for r in registry.snapshot().relays] == ["mem:rogue"]
        assert dials == 1  # the repeat at the same address is not dialled again
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("kind", "transport", "url_of"),
    [
        ("node", WebSocketTransport(), lambda served, key: _wss(served, key)),
        ("relay", TcpTransport(), lambda served, key: f"{served.partition('#')[0]}#{key}"),
    ],
)
async def test_an_admitted_announcer_cannot_list_an_address_another_key_serves(
    kind: str, transport: Transport, url_of: Callable[[str, str], str]
) -> None:
    """On real sockets: the victim serves TLS as its key at an address; the rogue, admitted
    by the ledger, announces that address pinned to its own key (which readers accept).
    The registry's dial is refused by the victim's certificate, so the rogue is not
    listed; the victim itself is."""
    clock = Clock()
    registry = RegistryServer(clock, ledger=LEDGER.public_key, dial_back=WebSocketTransport())
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            registry.serve,
            WebSocketTransport().as_server(Identity.from_label("registry").seed),
            "127.0.0.1:0",
        )
        served = await nursery.start(
            transport.as_server(VICTIM.seed).serve, _hang_up, "127.0.0.1:0"
        )
        directory = RegistryDirectory(WebSocketTransport(), url, clock, LEDGER.public_key)
        rogue_url = url_of(served, ROGUE.ed25519_public.hex())
        with pytest.raises(RpcError) as refused:
            await directory.announce(ROGUE, kind, rogue_url, registration=_registration(ROGUE))
        assert refused.value.code == "unavailable"
        victim_url = url_of(served, VICTIM.ed25519_public.hex())
        await directory.announce(VICTIM, kind, victim_url, registration=_registration(VICTIM))
        listed = registry.snapshot()
        assert [entry["record"]["url"] for entry in listed.announcements] == [victim_url]
        nursery.cancel_scope.cancel()


def _wss(served: str, key: str) -> str:
    """``wss://host:port/<key>`` at the address a server reported."""
    return served.rsplit("/", 1)[0] + "/" + key


async def _hang_up(link: Link) -> None:
    """Serves an address and nothing more."""
