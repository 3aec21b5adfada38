"""TLS on real TCP links, the server pinned by its announced key (``overlay/tls.py``).

Real loopback sockets, so these run on Trio's real clock (a MockClock's autojump would
jump past the handshake deadline while the kernel moves the bytes)."""

from __future__ import annotations

import pytest
import trio

from benchmarks.link_tap import LinkTap, plaintext_keys
from overlay import addresses, tls
from overlay.addresses import split_host_port
from overlay.keys import KeyPair
from overlay.link import Link, LinkClosed, TcpTransport

SERVER = KeyPair.from_seed(bytes([1]) * 32)
IMPOSTOR = KeyPair.from_seed(bytes([2]) * 32)
ACCOUNT = KeyPair.from_seed(bytes([3]) * 32)


async def echo(link: Link) -> None:
    while True:
        await link.send(await link.receive())


def announcement() -> bytes:
    """What a relay hands another on a link: an account key and a signature over it."""
    return ACCOUNT.public + ACCOUNT.sign(ACCOUNT.public) + ACCOUNT.public.hex().encode()


async def test_client_pinning_the_announced_key_talks(nursery: trio.Nursery) -> None:
    address = await nursery.start(TcpTransport(keys=SERVER).serve, echo)
    assert addresses.split_pin(address)[1] == SERVER.public
    async with TcpTransport().connect(address) as link:
        await link.send(b"hello")
        assert await link.receive() == b"hello"


async def test_server_presenting_another_key_is_refused(nursery: trio.Nursery) -> None:
    address = await nursery.start(TcpTransport(keys=IMPOSTOR).serve, echo)
    bare, _ = addresses.split_pin(address)
    with pytest.raises(LinkClosed, match="expected " + SERVER.public.hex()):
        async with TcpTransport().connect(addresses.pinned_address(bare, SERVER.public)):
            pytest.fail("connected to a server holding another key")


async def test_server_survives_a_refused_handshake(nursery: trio.Nursery) -> None:
    address = await nursery.start(TcpTransport(keys=SERVER).serve, echo)
    bare, _ = addresses.split_pin(address)
    async with TcpTransport(plain=True).connect(bare) as plain:  # speaks no TLS at all
        await plain.send(b"x" * 8)
        with pytest.raises(LinkClosed):
            await plain.receive()
    async with TcpTransport().connect(address) as link:
        await link.send(b"still here")
        assert await link.receive() == b"still here"


async def test_a_tls_client_refuses_an_address_that_names_no_key(nursery: trio.Nursery) -> None:
    """A listing entry or a setting without a pin would otherwise be a plaintext link on a
    network whose links are TLS: the client refuses it before any socket opens. Only the
    explicit choice of plaintext (``plain``) dials a bare address."""
    bare = await nursery.start(TcpTransport(plain=True).serve, echo)
    with pytest.raises(LinkClosed, match="names no key"):
        async with TcpTransport().connect(bare):
            pytest.fail("a TLS client spoke plaintext")
    async with TcpTransport(plain=True).connect(bare) as link:
        await link.send(b"plain, as asked")
        assert await link.receive() == b"plain, as asked"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:1#" + "ab" * 31, "127.0.0.1:1#" + "ab" * 33, "127.0.0.1:1#" + "zz" * 32],
)
def test_malformed_pins_are_refused_at_decode(address: str) -> None:
    with pytest.raises(ValueError, match="pinned"):
        addresses.split_pin(address)


def test_certificates_are_made_once_per_key() -> None:
    assert tls.server_context(SERVER.seed) is tls.server_context(SERVER.seed)
    assert tls.server_context(SERVER.seed) is not tls.server_context(IMPOSTOR.seed)


async def tapped_exchange(nursery: trio.Nursery, *, encrypted: bool) -> bytes:
    """A relay↔relay-style link through a tap; returns what the tap read."""
    transport = TcpTransport(keys=SERVER if encrypted else None)
    address = await nursery.start(transport.serve, echo)
    bare, pin = addresses.split_pin(address)
    tap = LinkTap(*split_host_port(bare))
    port = await nursery.start(tap.serve)
    via = f"127.0.0.1:{port}"
    async with TcpTransport(plain=not encrypted).connect(
        via if pin is None else addresses.pinned_address(via, pin)
    ) as link:
        await link.send(announcement())
        assert await link.receive() == announcement()
    return tap.captured


async def test_tap_reads_no_keys_or_signatures_on_a_tls_link(nursery: trio.Nursery) -> None:
    captured = await tapped_exchange(nursery, encrypted=True)
    assert plaintext_keys(captured, [ACCOUNT.public]) == 0
    assert ACCOUNT.sign(ACCOUNT.public) not in captured


async def test_tap_reads_keys_and_signatures_on_a_plaintext_link(nursery: trio.Nursery) -> None:
    """The control: the same tap does find them without TLS, so the check above can fail."""
    captured = await tapped_exchange(nursery, encrypted=False)
    assert plaintext_keys(captured, [ACCOUNT.public]) == 1
    assert ACCOUNT.sign(ACCOUNT.public) in captured


async def test_a_flood_of_unfinished_tls_handshakes_holds_a_bounded_number_of_sockets(
    nursery: trio.Nursery,
) -> None:
    """A relay's links exist only after the TLS handshake: past ``max_pending_handshakes``
    sockets still in it, the one waiting longest is dropped at once (not after the
    handshake timeout, each holding a socket and some 50 KiB), and an honest relay still
    gets in."""
    transport = TcpTransport(keys=SERVER, max_pending_handshakes=8)
    address = await nursery.start(transport.serve, echo)
    host, port = split_host_port(addresses.split_pin(address)[0])
    hostile = [await trio.open_tcp_stream(host, port) for _ in range(40)]
    with trio.fail_after(5):  # far less than the handshake timeout
        for stream in hostile[:32]:
            assert await stream.receive_some(1024) == b""
        async with TcpTransport().connect(address) as link:
            await link.send(b"honest")
            assert await link.receive() == b"honest"
    for stream in hostile:
        await stream.aclose()
