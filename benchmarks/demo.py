"""``p2psync demo``: the paired-device scenario of DESIGN.md §8, narrated, on the embedded
network (registry, 6 service nodes, 8 relays, file server, open group, on loopback sockets
by default), through the public :class:`~p2psync.device.Device` API.

Alice pairs a desktop with her phone (the code check is shown), befriends Bob, and they
talk: every message reaches both of Alice's devices, and what one of them sends reaches
the other directly over the onion overlay. The desktop goes offline and catches up from
the sync copy its sibling left in the swarm; then it stays away past the TTL (the clock
jumps 25 h: virtual time) and re-syncs directly from the phone. Both devices post to a
public chat and show up as one person. Tables say what the swarms held, and what the
file server, the service nodes and the relays could learn about Alice's two devices (every
cell the relays are handed is checked for the devices' keys).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from benchmarks.link_tap import account_and_node_keys, open_link_watch
from benchmarks.relay_audit import TIMING_WINDOW_MS, RelayAudit, TimingMatch, siblings_apart_ms
from overlay.keys import x25519_of
from overlay.relay_core import SeenCell
from p2psync.cli import run_stoppable
from p2psync.device import Device, DeviceConfig, open_device
from p2psync.envelope import open_envelope
from p2psync.errors import P2PSyncError
from p2psync.fileserver.client import open_fileserver_client
from p2psync.identity import Identity
from p2psync.network import LocalNetwork, open_local_network, wait_until
from p2psync.swarm.constants import NAMESPACE_MESSAGES, NAMESPACE_SYNC
from p2psync.swarm.node_config import NodeConfig

STEP_TIMEOUT_S = 30.0
#: A day and an hour: past the 24 h TTL of everything stored before the jump.
PAST_TTL_MS = 25 * 3600 * 1000
#: Requests to one server by one method follow sibling sync (check (b)) when as many
#: matches would come by chance less often than this, all (server, method) pairs counted.
SYNC_TIMING_ALPHA = 0.001


class DemoFailed(P2PSyncError):
    """A step of the demo did not happen in time."""


def run_demo(
    *, transport: str = "tcp", seed: int = 1, mode: str = "linked", json_path: str | None = None
) -> int:
    # Into a file or a pipe, a line stays one line (rich wraps at 80 columns there).
    console = Console(soft_wrap=not sys.stdout.isatty())
    started = time.perf_counter()

    def say(text: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.2f}s[/]  {text}")

    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # The clock jump makes every service re-announce: expected, and not news here.
        logging.getLogger("p2psync").setLevel(logging.ERROR)
    summary = run_stoppable(_scenario, transport, seed, mode, say)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    console.print(_storage_table(summary))
    console.print(_privacy_table(summary))
    console.print(_device_table(summary))
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


async def _step(what: str, condition: Callable[[], bool]) -> float:
    """Wait for ``condition``; the seconds it took, or :class:`DemoFailed`."""
    begun = trio.current_time()
    with trio.move_on_after(STEP_TIMEOUT_S):
        await wait_until(condition, poll_s=0.01)
        return trio.current_time() - begun
    raise DemoFailed(f"{what} did not happen within {STEP_TIMEOUT_S:g} s")


async def _scenario(
    transport: str, seed: int, mode: str, say: Callable[[str], None]
) -> dict[str, Any]:
    # Quick maintenance, so the network settles in seconds after the clock jump.
    quick = NodeConfig(registry_refresh_s=1.0, announce_interval_s=1.0)
    # Devices reach every server by onion requests, so they poll: a subscription needs a
    # connection of its own, which would show the node the device's address.
    # Deletions and offers of what a device read wait seconds, not minutes, so the story
    # shows a copy going while you watch; the timing check below is made with these
    # shorter delays (a harder test: less time to blur the rhythm of sibling sync).
    config = DeviceConfig(grace_s=2.0, delete_delay_s=(1.0, 4.0), inbound_push_delay_s=(0.5, 2.0))
    with tempfile.TemporaryDirectory(prefix="p2psync-demo-") as root:
        async with (
            open_local_network(
                6, relays=8, transport=transport, node_config=quick, seed=seed
            ) as network,
            open_link_watch() as links,
        ):
            say(
                f"embedded network up ({transport}): registry, file server, open group, "
                "6 service nodes, 8 onion relays"
            )
            audit = RelayAudit(network.clock)
            watch = KeyWatch([])
            audit.watch(network, watch)
            hosts = {
                name: name if transport == "memory" else f"127.0.0.{11 + index}"
                for index, name in enumerate(("alice-phone", "alice-desktop", "bob"))
            }

            def open_as(name: str) -> Any:
                return open_device(
                    Path(root) / name,
                    # Every link the device opens goes through a tap: what a passive
                    # observer of its wire reads (on tcp; the memory network has no wire).
                    links.access(network.access(rpc_route="onion", host=hosts[name])),
                    mode=mode,
                    name=name,
                    seed=Identity.from_label(f"demo/{seed}/{name}").seed,
                    config=config,
                )

            async with (
                open_as("alice-phone") as phone,
                open_as("alice-desktop") as desktop,
                open_as("bob") as bob,
            ):
                watch.telltales += _telltales(phone, desktop)
                # What the desktop's swarm is read with (the account's key when linked).
                reader = Identity.from_label(
                    f"demo/{seed}/alice-{'phone' if mode == 'linked' else 'desktop'}"
                )
                await _pairing(phone, desktop, mode, say)
                paired_ms = network.clock.now_ms()
                figures = await _story(network, phone, desktop, bob, mode, say, watch, reader)
                figures["privacy"].update(await _privacy(network, phone, watch, figures["storage"]))
                alice = {hosts["alice-phone"], hosts["alice-desktop"]}
                figures["privacy"].update(
                    {
                        "server_requests": len(audit.servers.observations),
                        "device_addresses_seen_by_servers": audit.servers.requests_from(alice),
                        "registry_reads_from_devices": audit.servers.registry_reads_from(alice),
                        "servers_seeing_alice_from_two_addresses": (
                            audit.servers.accounts_seen_from_two(alice)
                        ),
                    }
                )
                accounts = {phone.session_id, desktop.whoami().device_id}
                figures["privacy"].update(_relay_figures(audit, hosts, accounts, paired_ms))
                figures["privacy"]["link_plaintext_keys"] = links.plaintext_keys(
                    account_and_node_keys(network, [d.whoami() for d in (phone, desktop, bob)])
                )
                return figures


@dataclass
class KeyWatch:
    """Looks for the ``telltales`` in what the network holds and carries. Called with a
    cell (as a relay observer), it counts the cells the relays are handed, their sizes,
    and those that show a telltale."""

    telltales: list[bytes]
    cells: int = 0
    sizes: set[int] = field(default_factory=set)
    cells_showing_a_key: int = 0

    def __call__(self, seen: SeenCell) -> None:
        self.cells += 1
        self.sizes.add(len(seen.cell))
        self.cells_showing_a_key += self.shows_a_key(seen.cell)

    def shows_a_key(self, item: bytes) -> bool:
        return any(telltale in item for telltale in self.telltales)


def _telltales(*devices: Device) -> list[bytes]:
    """The keys that would tie Alice's devices to each other or to her, raw and in hex:
    each device's own key and its overlay key (Ed25519 and X25519)."""
    keys = []
    for device in devices:
        keys += [device.whoami().device_key, device.whoami().overlay_key]
        keys.append(x25519_of(device.whoami().overlay_key))
    return keys + [key.hex().encode() for key in keys]


def _relay_figures(
    audit: RelayAudit, hosts: dict[str, str], accounts: set[str], paired_ms: int
) -> dict[str, Any]:
    """Checks (a) and (b) of :mod:`benchmarks.relay_audit` for Alice's two devices (a:
    once they are siblings, :func:`~benchmarks.relay_audit.siblings_apart_ms`). A
    device's links carry its host's address, and those of the endpoint it meets its
    siblings on its name on the emulated network; on tcp overlay links leave from
    127.0.0.1 whatever the device's host, so no relay can tell them apart and (a) is not
    measured (None)."""
    devices = [{name, hosts[name]} for name in ("alice-phone", "alice-desktop")]
    seen = all(any(peers & device for peers in audit.peers().values()) for device in devices)
    matches = audit.timing(accounts)
    following = [m for m in matches if m.p_value * len(matches) < SYNC_TIMING_ALPHA]
    return {
        "relays_seeing_both_siblings": (
            audit.relays_seeing_two(devices, siblings_apart_ms(paired_ms)) if seen else None
        ),
        "sibling_sync_cells": len(audit.sync_times_ms()),
        # (server, method) pairs whose requests naming Alice's account come within the
        # window of sibling sync less likely by chance than SYNC_TIMING_ALPHA, all pairs
        # counted.
        "server_methods_following_sibling_sync": len(following),
        "sibling_sync_timing": {
            "window_ms": TIMING_WINDOW_MS,
            "server_methods": len(matches),
            # The pairs that follow sibling sync, least likely by chance first; the
            # closest one alone if none does.
            "closest": [_match_figures(m) for m in following or matches[:1]],
        },
    }


def _match_figures(match: TimingMatch) -> dict[str, Any]:
    return {
        "server": match.server,
        "method": match.method,
        "requests": match.requests,
        "matched": match.matched,
        "expected": round(match.expected, 2),
        "p_value": match.p_value,
    }


def _stored_items(network: LocalNetwork, watch: KeyWatch) -> dict[str, int]:
    """The rows the service nodes hold now, of every namespace (a replica set counts
    once), and how many of them show a telltale."""
    now = network.clock.now_ms()
    stored = list(
        {
            row.hash: row.data
            for node in network.running_nodes()
            for row in node.store.records(now, None)
            if row.data is not None
        }.values()
    )
    return {
        "stored_items": len(stored),
        "stored_items_showing_a_key": sum(map(watch.shows_a_key, stored)),
    }


async def _privacy(
    network: LocalNetwork, phone: Device, watch: KeyWatch, storage: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the file server and the relays could learn about Alice's two devices."""
    async with open_fileserver_client(network.transport, network.fileserver_url) as files:
        listed = (await files.get_mappings(phone.session_id)).devices
    introsets = [record for relay in network.relays for record in relay.introset_records()]
    return {
        "fileserver_devices_listed": len(listed),
        # The swarms looked at before the clock jump: Alice's, and in ``mapped`` mode
        # her desktop's own.
        "alice_swarm_keys": len(
            {r["swarm_of"] for r in storage if r["swarm_of"].startswith("alice") and r["stored"]}
        ),
        "relay_cells": watch.cells,
        "relay_cell_sizes": sorted(watch.sizes),
        "relay_cells_showing_a_key": watch.cells_showing_a_key,
        "introsets": len(introsets),
        "introsets_showing_a_key": sum(map(watch.shows_a_key, introsets)),
    }


async def _pairing(phone: Device, desktop: Device, mode: str, say: Callable[[str], None]) -> None:
    say(f"[bold]1. Pairing[/] ({mode} mode): Alice's desktop asks her phone to pair")
    ticket = await desktop.pairing.request(phone.session_id)
    await _step("the pairing request", lambda: bool(phone.pairing.requests()))
    [offer] = phone.pairing.requests()
    say(
        f"   desktop shows [bold yellow]{ticket.code}[/], phone shows "
        f"[bold yellow]{offer.code}[/]: {'they match' if offer.code == ticket.code else 'MISMATCH'}"
    )
    await phone.pairing.accept(offer.code)
    await _step("the pairing grant", lambda: desktop.whoami().paired)
    how = "shares Alice's identity" if mode == "linked" else "is mapped to Alice on the file server"
    say(f"   paired: the desktop {how}")


async def _story(
    network: LocalNetwork,
    phone: Device,
    desktop: Device,
    bob: Device,
    mode: str,
    say: Callable[[str], None],
    watch: KeyWatch,
    reader: Identity,
) -> dict[str, Any]:
    figures: dict[str, Any] = {"mode": mode}
    alice = phone.session_id
    say("[bold]2. Friends[/]: Bob asks Alice; her desktop accepts")
    await bob.friends.request(alice, "hi, it's Bob")
    await _step("Bob's request", lambda: desktop.friends.contact(bob.session_id) is not None)
    await desktop.friends.accept(bob.session_id)
    await _step(
        "the acceptance", lambda: _is_friend(bob, alice) and _is_friend(phone, bob.session_id)
    )
    await _step("the siblings' session", lambda: bool(phone.sync_status().connected_siblings))
    say("   friends; the phone and the desktop found each other on the overlay")

    say("[bold]3. Live[/]: messages reach both devices; what one sends, the other gets directly")
    await bob.send(alice, "Hello Alice!")
    took = await _step(
        "Bob's message", lambda: all(len(d.history(bob.session_id)) == 1 for d in (phone, desktop))
    )
    say(f"   Bob's message is on the phone and the desktop ({took * 1000:.0f} ms)")
    await phone.send(bob.session_id, "Hi Bob, from my phone")
    took = await _step("the direct push", lambda: len(desktop.history(bob.session_id)) == 2)
    figures["direct_push_ms"] = round(took * 1000, 1)
    say(
        f"   the phone's reply is on the desktop in {took * 1000:.0f} ms, pushed over onion "
        "paths: no sync copy stored"
    )

    await _step("the acknowledgements", lambda: phone.sync_status().unacknowledged == 0)
    say("[bold]4. Offline[/]: the desktop goes offline; the phone keeps talking")
    await desktop.set_online(False)
    await phone.send(bob.session_id, "Desktop is off, I'm on my phone")
    await trio.sleep(config_grace(phone) + 1)
    await phone.flush()
    copies = _sync_copies(network, reader)
    say(
        f"   the desktop did not acknowledge within {config_grace(phone):g} s: "
        f"{copies} sync {'copy' if copies == 1 else 'copies'} stored in the swarm"
    )
    await desktop.set_online(True)
    took = await _step("the catch-up", lambda: len(desktop.history(bob.session_id)) == 3)
    say(f"   back online, the desktop caught up in {took:.1f} s")
    await _step("the copy's deletion", lambda: _sync_copies(network, reader) == 0)
    say("   both devices hold it now, so the sync copy was deleted early")

    say("[bold]5. Away past the TTL[/]: the desktop is off while Alice and Bob talk on")
    await desktop.set_online(False)
    await bob.send(alice, "Are we still on for Friday?")
    await _step("Bob's question", lambda: len(phone.history(bob.session_id)) == 4)
    await phone.send(bob.session_id, "Yes, see you Friday")
    await trio.sleep(config_grace(phone) + 1)
    await phone.flush()
    owners = {"alice": alice, "bob": bob.session_id}
    if mode == "mapped":
        owners["alice-desktop"] = desktop.whoami().device_id
    figures["storage"] = _storage(network, owners)
    figures["privacy"] = _stored_items(network, watch)
    # Bob polls (by onion requests): let him read Alice's answer before the jump expires it.
    await _step("Alice's answer on Bob's device", lambda: len(bob.history(alice)) == 5)
    for device in (phone, bob):
        await device.set_online(False)
    with trio.move_on_after(STEP_TIMEOUT_S) as relisting:
        await network.pass_idle(PAST_TTL_MS)
    if relisting.cancelled_caught:
        raise DemoFailed(f"the network did not announce itself again within {STEP_TIMEOUT_S:g} s")
    say("   [italic]the clock jumps 25 h (virtual time): everything the swarm held expired[/]")
    for device in (phone, bob, desktop):
        await device.set_online(True)
    took = await _step(
        "the re-sync", lambda: phone.whoami().device_id in desktop.sync_status().resynced_siblings
    )
    same = [i.id for i in desktop.history()] == [i.id for i in phone.history()]
    say(
        f"   the desktop re-synced from the phone by Negentropy in {took:.1f} s: "
        f"{len(desktop.history())} messages, {'identical' if same else 'DIFFERENT'} histories"
    )

    say("[bold]6. Public chat[/]: both of Alice's devices post; Bob sees one Alice")
    await phone.rooms.create("lobby")
    await phone.rooms.post("lobby", "Morning, everyone (phone)")
    await desktop.rooms.post("lobby", "And hello from my desktop")
    posts = await bob.rooms.messages("lobby")
    users = {post.user for post in posts}
    say(f"   {len(posts)} posts from {len(users)} user: {'Alice' if users == {alice} else users}")

    figures["identical_histories"] = same
    figures["devices"] = [
        {
            "device": device.whoami().name,
            "device_id": device.whoami().device_id,
            "user": device.session_id,
            "messages": len(device.history()),
            "complete_until_ms": device.sync_status().complete_until,
        }
        for device in (phone, desktop, bob)
    ]
    figures["public_chat_users"] = sorted(users)
    return figures


def config_grace(device: Device) -> float:
    return device.config.grace_s


def _is_friend(device: Device, user: str) -> bool:
    contact = device.friends.contact(user)
    return contact is not None and contact.state == "friend"


def _live_rows(network: LocalNetwork, owner: str, namespace: int) -> dict[bytes, bytes]:
    now = network.clock.now_ms()
    return {
        row.hash: row.data
        for node in network.running_nodes()
        for row in node.store.records(now, [owner])
        if row.namespace == namespace and row.data is not None
    }


def _sync_copies(network: LocalNetwork, reader: Identity) -> int:
    """Sync copies of sent messages waiting in the swarm ``reader`` reads."""
    rows = _live_rows(network, reader.session_id, NAMESPACE_SYNC)
    return sum(open_envelope(reader, data).kind == "sync_sent" for data in rows.values())


def _storage(network: LocalNetwork, owners: dict[str, str]) -> list[dict[str, Any]]:
    """Per swarm and namespace: messages stored there so far (a replica set counts once),
    how many of them were deleted before their expiry, and the bytes still held."""
    now = network.clock.now_ms()
    rows = []
    for name, owner in owners.items():
        for namespace in (NAMESPACE_MESSAGES, NAMESPACE_SYNC):
            found: dict[bytes, bytes | None] = {}
            for node in network.running_nodes():
                for row in node.store.records(now, [owner]):
                    if row.namespace == namespace:
                        deleted = row.data is None or found.get(row.hash, b"") is None
                        found[row.hash] = None if deleted else row.data
            held = [d for d in found.values() if d is not None]
            rows.append(
                {
                    "swarm_of": name,
                    "namespace": namespace,
                    "stored": len(found),
                    "deleted_early": len(found) - len(held),
                    "bytes_held": sum(len(d) for d in held),
                }
            )
    return rows


def _storage_table(summary: dict[str, Any]) -> Table:
    table = Table(title="what the swarms stored before the clock jump (a replica set counts once)")
    for column in ("swarm of", "namespace", "stored", "deleted early", "bytes still held"):
        table.add_column(column, justify="left" if column == "swarm of" else "right")
    for row in summary["storage"]:
        name = {0: "0 messages", 1: "1 sync and control"}[row["namespace"]]
        table.add_row(
            row["swarm_of"],
            name,
            str(row["stored"]),
            str(row["deleted_early"]),
            str(row["bytes_held"]),
        )
    return table


def _privacy_table(summary: dict[str, Any]) -> Table:
    privacy = summary["privacy"]
    table = Table(title="what the network could learn about Alice's two devices")
    for column in ("who", "what", "seen"):
        table.add_column(column, justify="right" if column == "seen" else "left")
    sizes = ", ".join(str(size) for size in privacy["relay_cell_sizes"])
    table.add_row(
        "file server", "devices it lists for Alice", str(privacy["fileserver_devices_listed"])
    )
    table.add_row(
        "service nodes", "keys Alice's messages are stored under", str(privacy["alice_swarm_keys"])
    )
    table.add_row(
        "service nodes",
        f"of {privacy['stored_items']} rows held before the jump (every namespace and"
        " mailbox: the table above's and the pairing's), showing a device or overlay key",
        str(privacy["stored_items_showing_a_key"]),
    )
    table.add_row(
        "servers",
        f"of {privacy['server_requests']} requests they answered, from a device's own "
        "address (onion requests come from exit relays)",
        str(privacy["device_addresses_seen_by_servers"]),
    )
    table.add_row(
        "registry",
        "reads of its listing from Alice's devices' addresses (one a start, before paths; "
        "later reads go to service nodes through paths)",
        str(privacy["registry_reads_from_devices"]),
    )
    table.add_row(
        "servers",
        "that saw Alice's account from both devices' addresses",
        str(privacy["servers_seeing_alice_from_two_addresses"]),
    )
    plain = privacy["link_plaintext_keys"]
    table.add_row(
        "link observers",
        "account, device and node keys read on the devices' links (TLS pinned to the "
        "announced keys)" + ("" if plain is not None else ": not measured, no wire in memory"),
        "n/a" if plain is None else str(plain),
    )
    table.add_row(
        "onion relays",
        f"of {privacy['relay_cells']} cells ({sizes} bytes each), showing a device or overlay key",
        str(privacy["relay_cells_showing_a_key"]),
    )
    table.add_row(
        "onion relays",
        f"of {privacy['introsets']} introsets held, showing a device or overlay key",
        str(privacy["introsets_showing_a_key"]),
    )
    both = privacy["relays_seeing_both_siblings"]
    table.add_row(
        "onion relays",
        "next to both of Alice's devices (cells from both addresses, once paired)"
        + ("" if both is not None else ": not measured, on tcp every overlay link is 127.0.0.1's"),
        "n/a" if both is None else str(both),
    )
    timing = privacy["sibling_sync_timing"]
    closest = timing["closest"][0] if timing["closest"] else None
    detail = (
        ""
        if closest is None
        else f" (closest: {closest['matched']} of {closest['requests']} {closest['method']} "
        f"requests within {timing['window_ms']} ms, {closest['expected']:g} by chance,"
        f" p = {closest['p_value']:.2g})"
    )
    table.add_row(
        "servers",
        f"of {timing['server_methods']} (server, method) pairs, whose requests for Alice's "
        f"account follow sibling sync (p × pairs < {SYNC_TIMING_ALPHA:g}){detail}",
        str(privacy["server_methods_following_sibling_sync"]),
    )
    return table


def _device_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"devices ({summary['mode']} mode, {summary['seconds']} s)")
    for column in ("device", "user", "messages in history"):
        table.add_column(column)
    for row in summary["devices"]:
        table.add_row(row["device"], row["user"][:14] + "…", str(row["messages"]))
    return table
