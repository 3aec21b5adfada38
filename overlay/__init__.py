"""A Lokinet-style onion overlay emulation. Knows nothing about messages or swarms.

The names below are the overlay's public API (DESIGN.md §6); everything else is internal.

* Relays: :func:`serve_relay` (one relay, a Trio server) and :func:`open_relays` (several
  in-process, for embedded networks and tests), from signed :class:`Contact` records.
* Endpoints: :func:`open_endpoint` → :class:`Endpoint` with ``publish(secret)``,
  ``lookup(secret, owner)``, ``connect(peer, shared_secret=...)`` and ``sessions()``;
  a :class:`Session` has ``send`` / ``receive`` / ``aclose``.
* Links: :class:`TcpTransport` and :class:`MemoryNetwork` (with :class:`LinkProfile`).
"""

from .clock import Clock
from .contact import Contact, ContactError, make_contact, verified_directory
from .endpoint import Endpoint, open_endpoint
from .introset import Intro
from .keys import KeyPair
from .link import Link, LinkClosed, LinkProfile, MemoryNetwork, TcpTransport, Transport
from .relay import RelayInfo, open_relays, serve_relay
from .relay_core import RelayStats
from .session import SessionError
from .session_driver import Session, SessionClosed

__all__ = [
    "Clock",
    "Contact",
    "ContactError",
    "Endpoint",
    "Intro",
    "KeyPair",
    "Link",
    "LinkClosed",
    "LinkProfile",
    "MemoryNetwork",
    "RelayInfo",
    "RelayStats",
    "Session",
    "SessionClosed",
    "SessionError",
    "TcpTransport",
    "Transport",
    "make_contact",
    "open_endpoint",
    "open_relays",
    "serve_relay",
    "verified_directory",
]
