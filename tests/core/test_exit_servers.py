"""Which servers an exit relay reaches: the listed ones, each however a request spells its
address, and nothing else (an exit that reached any address would scan its host's
network for whoever asked)."""

from __future__ import annotations

import pytest

from p2psync.onion.addresses import ExitServers, ServerAddress, server_address

KEY = "ab" * 32
NODE_WS = "ws://10.77.0.5:4100"
NODE_WSS = f"wss://10.77.0.6:4100/{KEY}"
FILES = "ws://files.example:4300"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("ws://10.77.0.5:4100", ServerAddress("ws", "10.77.0.5", 4100, None)),
        ("ws://10.77.0.5:4100/", ServerAddress("ws", "10.77.0.5", 4100, None)),
        ("ws://10.77.0.5:04100/2", ServerAddress("ws", "10.77.0.5", 4100, None)),
        ("ws://Files.Example:80", ServerAddress("ws", "files.example", 80, None)),
        ("ws://[::1]:80", ServerAddress("ws", "[::1]", 80, None)),
        ("ws://[0:0::1]:80", ServerAddress("ws", "[::1]", 80, None)),
        (f"wss://h:1/{KEY}", ServerAddress("wss", "h", 1, bytes.fromhex(KEY))),
        (f"wss://h:1/{KEY.upper()}", ServerAddress("wss", "h", 1, bytes.fromhex(KEY))),
        ("mem:node3", ServerAddress("mem", "node3", 0, None)),
    ],
)
def test_spellings_of_a_server_normalise_to_one(address: str, expected: ServerAddress) -> None:
    assert server_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "10.77.0.5:4100",  # no scheme
        "http://10.77.0.5:4100",
        "WS://10.77.0.5:4100",
        "ws://10.77.0.5",  # no port
        "ws://10.77.0.5:0",
        "ws://10.77.0.5:65536",
        "ws://10.77.0.5:+80",
        "ws://10.77.0.5:8_0",
        "ws://10.77.0.5: 80",
        "ws://:4100",  # an empty host is loopback to the transport
        "ws://user@10.77.0.5:4100",
        "ws://10.77.0.5:4100?x=1",
        "ws://::1:80",  # IPv6 without brackets
        "ws://[10.0.0.1]:80",
        "ws://h_st:80",
        "wss://h:1",  # TLS without the pin
        "wss://h:1/abcd",
        f"wss://h:1/{KEY}/more",
        f"wss://h:1/{'zz' * 32}",
        "mem:",
    ],
)
def test_what_names_no_server_normalises_to_nothing(address: str) -> None:
    assert server_address(address) is None


def test_an_exit_routes_spellings_of_listed_servers_to_the_listed_address_only() -> None:
    servers = ExitServers([FILES])
    servers.update([NODE_WS, NODE_WSS])
    assert servers.route(NODE_WS) == NODE_WS
    assert servers.route("ws://10.77.0.5:4100/1") == NODE_WS  # one connection, not one each
    assert servers.route("ws://10.77.0.5:4100/2") == NODE_WS
    assert servers.route(f"wss://10.77.0.6:4100/{KEY.upper()}") == NODE_WSS
    assert servers.route("ws://FILES.example:4300") == FILES
    refused = [
        "ws://10.77.0.5:4101",  # another port of a listed host
        "ws://127.0.0.1:4100",
        "ws://10.77.0.1:4100",  # the hosts' gateway
        "wss://10.77.0.5:4100/" + KEY,  # a listed plain server, asked for TLS
        "ws://10.77.0.6:4100",  # a listed TLS server, asked in plain
        "wss://10.77.0.6:4100/" + "cd" * 32,  # the right place, another key
        "garbage",
    ]
    assert [servers.route(address) for address in refused] == [None] * len(refused)


def test_a_node_that_leaves_the_listing_is_no_longer_reached_but_given_servers_stay() -> None:
    servers = ExitServers([FILES, "not a url"])
    servers.update([NODE_WS])
    servers.update([NODE_WSS])
    assert servers.route(NODE_WS) is None
    assert servers.route(NODE_WSS) == NODE_WSS and servers.route(FILES) == FILES
    assert len(servers) == 2
