"""Server urls, parsed without I/O: ``wss://host:port/<hex key>`` is a WebSocket server
reached over TLS that accepts only that key, ``ws://host:port`` a plaintext one
(:mod:`.websocket`); relays' ``host:port#<key>`` are :mod:`overlay.addresses`."""

from __future__ import annotations

from overlay.addresses import split_pin


def split_url(url: str) -> tuple[str, bytes | None]:
    """``ws://host:port`` → (``host:port``, None); ``wss://host:port/<hex key>`` → (…, key).

    ``ValueError`` for anything else; a ``wss://`` URL without a whole key is refused too:
    TLS without the pin would authenticate nobody."""
    if url.startswith("ws://"):
        return url.removeprefix("ws://").split("/", 1)[0], None
    if not url.startswith("wss://"):
        raise ValueError(f"not a ws:// or wss:// url: {url!r}")
    authority, _, key = url.removeprefix("wss://").partition("/")
    try:
        _, pin = split_pin(f"{authority}#{key}")
    except ValueError:  # said of the url as given, not of the relay form it was parsed in
        raise ValueError(
            f"{url!r} is not wss://host:port/<the pinned key, 64 hex digits>"
        ) from None
    return authority, pin


def server_url(authority: str, key: bytes | None) -> str:
    """The url a server at ``authority`` (``host:port``) reports: ``wss://…/<hex key>``,
    pinned to its key, or plaintext ``ws://…`` for a server without one."""
    return f"ws://{authority}" if key is None else f"wss://{authority}/{key.hex()}"


def bare_address(address: str) -> str:
    """The ``host:port`` of any address a server reports: ``wss://host:port/<key>``,
    ``ws://host:port``, a relay's ``host:port#<key>`` or ``host:port`` itself."""
    if address.startswith(("ws://", "wss://")):
        return split_url(address)[0]
    return split_pin(address)[0]
