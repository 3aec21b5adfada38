"""Numbers on the command line, checked as argparse reads them: whole numbers and
durations within a range, and address ranges, so a typo or a hostile value is a usage
error (exit 2, one line) instead of a run that allocates without end, waits for ever or
fails later with another library's wording."""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Callable

from .errors import DecodeError

#: Longest duration any option takes: a week.
MAX_SECONDS = 7 * 24 * 3600.0


def session_id(text: str) -> str:
    """An id given on the command line: a usage error at once if it is not one anyone
    can hold, rather than a wait for an answer that cannot come."""
    from .identity import sealable_key  # with the crypto: only where an id is given

    try:
        sealable_key(text)
    except DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a session id: {text[:80]!r} ({exc})") from None
    return text


def whole_number(minimum: int, maximum: int) -> Callable[[str], int]:
    """A parser for a whole number from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum} to {maximum}, not {text}")
        return value

    return parse


def number_up_to(maximum: float, *, positive: bool = False) -> Callable[[str], float]:
    """A parser for a finite number up to ``maximum`` (seconds, days, a rate: the option
    says); more than 0 if ``positive``, else at least 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        low_ok = value > 0 if positive else value >= 0
        if not (math.isfinite(value) and low_ok and value <= maximum):
            bound = "more than 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"must be {bound} and at most {maximum:g}, not {text}")
        return value

    return parse


def address_range(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address range in CIDR form (``10.0.0.0/8``, ``fd00::/8``; a single address is
    a range of one)."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an address range: {text[:80]!r} (CIDR, say 10.0.0.0/8)"
        ) from None
