"""Pinned addresses, parsed without I/O: ``host:port#<hex key>`` is where a client
connects with TLS that accepts only that key (:mod:`.tls`); a bare ``host:port`` is
plaintext."""

from __future__ import annotations

#: Bytes of an Ed25519 public key, and so of a pin.
PIN_BYTES = 32


def pinned_address(address: str, key: bytes) -> str:
    """``host:port`` → ``host:port#<hex key>``: the address a client connects to with TLS."""
    if len(key) != PIN_BYTES:
        raise ValueError(f"a pinned key is {PIN_BYTES} bytes, not {len(key)}")
    return f"{address}#{key.hex()}"


def split_pin(address: str) -> tuple[str, bytes | None]:
    """``host:port#<hex>`` → (``host:port``, key); a bare ``host:port`` has no pin (plaintext).

    The pin is range-checked here, at decode: exactly 64 hex digits, else ``ValueError``."""
    bare, sep, pin = address.partition("#")
    if not sep:
        return address, None
    if len(pin) != 2 * PIN_BYTES:
        raise ValueError(f"the key pinned in {address!r} is not {2 * PIN_BYTES} hex digits")
    try:
        return bare, bytes.fromhex(pin)
    except ValueError:
        raise ValueError(f"the key pinned in {address!r} is not hex") from None


def split_host_port(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9000"`` or ``"[::1]:9000"`` → (host, port), with a clear error."""
    host, sep, port = address.removeprefix("tcp://").rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
