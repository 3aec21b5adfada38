"""Every form of address a server announces reads back to its ``host:port`` and its pin,
and the forms a client must refuse are refused (pure functions, no sockets)."""

from __future__ import annotations

import pytest

from overlay.link import MemoryNetwork, TcpTransport
from p2psync.hosts import port_of
from p2psync.identity import Identity
from p2psync.urls import bare_address, server_url, split_url
from p2psync.websocket import WebSocketTransport

KEY = Identity.from_label("addresses/server")
HEX = KEY.ed25519_public.hex()


@pytest.mark.parametrize(
    ("address", "bare"),
    [
        (f"wss://10.77.0.2:4321/{HEX}", "10.77.0.2:4321"),
        ("ws://10.77.0.2:4321", "10.77.0.2:4321"),
        (f"10.77.0.2:4321#{HEX}", "10.77.0.2:4321"),
        ("10.77.0.2:4321", "10.77.0.2:4321"),
        (f"wss://[::1]:4321/{HEX}", "[::1]:4321"),
    ],
)
def test_every_announced_form_reads_back_to_its_host_and_port(address: str, bare: str) -> None:
    assert bare_address(address) == bare
    assert port_of(address) == 4321


def test_a_servers_url_pins_its_key_or_says_it_is_plain() -> None:
    url = server_url("127.0.0.1:7000", KEY.ed25519_public)
    assert url == f"wss://127.0.0.1:7000/{HEX}"
    assert split_url(url) == ("127.0.0.1:7000", KEY.ed25519_public)
    assert server_url("127.0.0.1:7000", None) == "ws://127.0.0.1:7000"
    assert split_url("ws://127.0.0.1:7000") == ("127.0.0.1:7000", None)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1", "wss://127.0.0.1:1", f"wss://127.0.0.1:1/{HEX[:-2]}"]
)
def test_urls_without_a_scheme_we_speak_or_a_whole_pin_are_refused(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        split_url(url)
    assert "#" not in str(refused.value), "said of the url as the user gave it"


def test_real_transports_serve_as_their_key_unless_plain_and_emulations_never() -> None:
    seed = KEY.seed
    websocket = WebSocketTransport().as_server(seed)
    assert isinstance(websocket, WebSocketTransport) and websocket.identity is not None
    assert websocket.identity.ed25519_public == KEY.ed25519_public
    assert WebSocketTransport(plain=True).as_server(seed) == WebSocketTransport(plain=True)
    tcp = TcpTransport().as_server(seed)
    assert isinstance(tcp, TcpTransport) and tcp.keys is not None
    assert tcp.keys.public == KEY.ed25519_public
    assert TcpTransport(plain=True).as_server(seed) == TcpTransport(plain=True)
    memory = MemoryNetwork()
    assert memory.as_server(seed) is memory
    assert WebSocketTransport(plain=True).for_overlay() == TcpTransport(plain=True)
