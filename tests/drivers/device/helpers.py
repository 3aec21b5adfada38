"""An embedded network under virtual time, and devices on it, for the device tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from p2psync.clock import TEST_EPOCH_MS, Clock
from p2psync.device import Device, open_device
from p2psync.device.values import PairingTicket
from p2psync.envelope import open_envelope
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, open_local_network
from p2psync.swarm.node_config import NodeConfig

from ..swarm.helpers import wait_until

#: Maintenance that comes round rarely, so that days of virtual time stay fast.
QUIET = NodeConfig(
    sweep_interval_s=600,
    registry_refresh_s=150,
    repair_interval_s=6 * 3600,
    announce_interval_s=150,
)


@asynccontextmanager
async def open_world(nodes: int = 6, relays: int = 0) -> AsyncIterator[LocalNetwork]:
    async with open_local_network(
        nodes, relays=relays, clock=Clock(TEST_EPOCH_MS), node_config=QUIET
    ) as network:
        yield network


def device(
    network: LocalNetwork,
    root: Path,
    label: str,
    mode: str | None = None,
    *,
    route: str = "direct",
    **options: Any,
) -> AbstractAsyncContextManager[Device]:
    """The device ``label`` under ``root``, with a key derived from the label, reaching
    servers by ``route``; opening it again (``mode`` may then be left out) finds its
    state as it was left."""
    return open_device(
        root / label,
        network.access(rpc_route=route),
        mode=mode,
        name=label,
        seed=Identity.from_label(f"device/{label}").seed,
        **options,
    )


def start_pairing(nursery: trio.Nursery, new: Device, primary: Device) -> list[PairingTicket]:
    """``new`` asks ``primary`` to pair, in ``nursery``: the list returned gets the ticket
    once the primary's challenge arrives (the test plays the user meanwhile)."""
    tickets: list[PairingTicket] = []

    async def request() -> None:
        tickets.append(await new.pairing.request(primary.session_id))

    nursery.start_soon(request)
    return tickets


async def pair(primary: Device, new: Device) -> None:
    """The user's part of pairing: compare the code on both screens, accept on the primary."""
    ticket = await new.pairing.request(primary.session_id)
    await wait_until(lambda: bool(primary.pairing.requests()))
    [offer] = primary.pairing.requests()
    assert offer.code == ticket.code and len(ticket.code) == 7
    # The device the user is shown is the one that joins, in both modes.
    assert offer.device == new.whoami().device_id
    assert await accept_pairing(primary, new, offer.code) == offer.device


async def accept_pairing(primary: Device, new: Device, code: str) -> str:
    """The user accepts ``code`` on ``primary``, and ``new`` is paired within a minute;
    the device accepted."""
    accepted = await primary.pairing.accept(code)
    with trio.fail_after(60):
        await new.pairing.wait_paired()
    return accepted


async def befriend(asker: Device, answerer: Device) -> None:
    await asker.friends.request(answerer.session_id, "hi, it's me")
    await wait_until(lambda: answerer.friends.contact(asker.session_id) is not None)
    contact = answerer.friends.contact(asker.session_id)
    assert contact is not None and contact.state == "pending" and contact.note == "hi, it's me"
    await answerer.friends.accept(asker.session_id)
    await wait_until(lambda: is_friend(asker, answerer.session_id))


@asynccontextmanager
async def siblings_and_friend(
    network: LocalNetwork, root: Path, mode: str, friend_mode: str | None = None
) -> AsyncIterator[tuple[Device, Device, Device]]:
    """Alice's phone and desktop, paired, and Bob (of ``friend_mode``, by default
    Alice's), a friend both of them know."""
    async with (
        device(network, root, "phone", mode) as phone,
        device(network, root, "desktop", mode) as desktop,
        device(network, root, "bob", friend_mode or mode) as bob,
    ):
        await pair(phone, desktop)
        await befriend(phone, bob)
        await wait_until(lambda: is_friend(desktop, bob.session_id))
        yield phone, desktop, bob


@asynccontextmanager
async def three_mapped_devices(
    network: LocalNetwork, root: Path
) -> AsyncIterator[tuple[Device, Device, Device]]:
    """Alice's phone (the primary), desktop and tablet, ``mapped``, paired in that order."""
    async with (
        device(network, root, "phone", "mapped") as phone,
        device(network, root, "desktop", "mapped") as desktop,
        device(network, root, "tablet", "mapped") as tablet,
    ):
        await pair(phone, desktop)
        await pair(phone, tablet)
        yield phone, desktop, tablet


def is_friend(device: Device, other: str) -> bool:
    contact = device.friends.contact(other)
    return contact is not None and contact.state == "friend"


def texts(device: Device, conversation: str) -> list[tuple[bool, str]]:
    return [(item.outgoing, item.text) for item in device.history(conversation)]


def stored_messages(network: LocalNetwork, owner: str, namespace: int) -> int:
    """Distinct live messages stored for ``owner`` (replicas inside a swarm count once)."""
    now_ms = network.clock.now_ms()
    return len(
        {
            row.hash
            for node in network.running_nodes()
            for row in node.store.records(now_ms, [owner])
            if row.namespace == namespace and row.data is not None
        }
    )


def stored_kinds(network: LocalNetwork, reader: Identity, namespace: int) -> list[str]:
    """The kinds of the live records stored for ``reader`` in ``namespace``."""
    now_ms = network.clock.now_ms()
    rows = {
        row.hash: row.data
        for node in network.running_nodes()
        for row in node.store.records(now_ms, [reader.session_id])
        if row.namespace == namespace and row.data is not None
    }
    return sorted(open_envelope(reader, data).kind for data in rows.values() if data is not None)
