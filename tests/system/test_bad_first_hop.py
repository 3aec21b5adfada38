"""An endpoint outlives a first hop that anyone could have listed: a relay whose
certificate is not the key its contact names, or a contact whose address does not parse.
Real TLS on loopback, so it is a system test."""

from __future__ import annotations

import time

import trio

from overlay import addresses
from overlay.contact import make_contact
from overlay.endpoint import open_endpoint
from overlay.keys import KeyPair
from overlay.link import Link, TcpTransport


async def _echo(link: Link) -> None:
    while True:
        await link.send(await link.receive())


async def test_an_impostor_or_a_malformed_first_hop_loses_a_path_not_the_endpoint() -> None:
    now = int(time.time() * 1000)
    impostor = KeyPair.from_seed(bytes([99]) * 32)
    async with trio.open_nursery() as nursery:
        contacts = []
        for index in range(4):
            keys = KeyPair.from_seed(bytes([10 + index]) * 32)
            if index % 2:
                address = "127.0.0.1:9#" + "zz" * 32  # not a pin
            else:
                served = await nursery.start(TcpTransport(keys=impostor).serve, _echo)
                address = addresses.pinned_address(addresses.split_pin(served)[0], keys.public)
            contacts.append(make_contact(keys, address, now))
        with trio.fail_after(20):
            async with open_endpoint(bytes(32), TcpTransport(), contacts) as endpoint:
                while endpoint.stats.paths_failed < 4:  # noqa: ASYNC110 (no event for it)
                    await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
