"""Which member of a swarm a client asks next, and what each answer means, sans-I/O.

A client asks the members of an owner's swarm one at a time, in a random order, until one
answers. Each failure says what comes next (:meth:`MemberAttempts.failed`):

* ``unavailable``, ``rate_limited``, ``internal`` or a lost connection: the next member;
* ``wrong_swarm``: the client's listing is older than the member's; read the registry
  again and start over with the swarm it names (at most :data:`MAX_REDIRECTS` times, so
  members that disagree with the registry cannot keep a client going round);
* a refusal for good (:data:`REFUSED_FOR_GOOD`), on which a caller gives up what it asked
  (the outbox drops the copy): one member's word is not enough, since a hostile member
  could so make senders drop mail. It is taken once a second member (another key)
  refuses too, or from the one member of a swarm of one; refused by one member while
  no other answers, the request is ``unavailable``, and the caller asks again later;
* any other refusal: given up at once (the caller's own mistake, say ``clock_skew``).

A ``store_batch`` answers per store, so the same rule is applied per store after the
call: :func:`second_opinion` names the stores to ask another member about, and
:func:`with_second_opinion` puts its answers in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..errors import RpcError
from .ring import NodeInfo

#: Errors after which another member of the swarm is asked.
RETRYABLE = ("unavailable", "rate_limited", "internal")
#: Refusals that say the request will never succeed: taken only from two members, or the
#: one member of a swarm of one. A full mailbox is not one of them (``rate_limited``: it
#: takes mail again as rows expire).
REFUSED_FOR_GOOD = ("bad_request", "too_large", "bad_ttl", "unauthorized")
#: ``wrong_swarm`` answers followed by one request.
MAX_REDIRECTS = 2

T = TypeVar("T")


def refused_for_good(result: object) -> bool:
    return isinstance(result, RpcError) and result.code in REFUSED_FOR_GOOD


@dataclass(frozen=True, slots=True)
class Refresh:
    """Read the registry again, then :meth:`MemberAttempts.restart` with the swarm."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The request fails with ``error``."""

    error: Exception


class MemberAttempts:
    """One request's way through the members of a swarm (see the module). ``besides``:
    the member whose refusal for good was had already (a ``store_batch``'s second
    opinion): it is not asked, and the first member to refuse too confirms it."""

    def __init__(self, members: Sequence[NodeInfo], *, besides: NodeInfo | None = None) -> None:
        self._besides = besides
        self._needed = 2 if besides is None else 1
        self._refused: dict[str, RpcError] = {}  # by member key: a member is one word
        self._redirects = 0
        self._last_error: Exception = RpcError("unavailable", "no node of the swarm answered")
        self.restart(members)

    def restart(self, members: Sequence[NodeInfo]) -> None:
        """Ask ``members`` (the swarm as the registry now lists it) from the first."""
        besides = None if self._besides is None else self._besides.pubkey
        self._waiting = [node for node in members if node.pubkey != besides]
        self._needed = min(self._needed, len(self._waiting))

    def next(self) -> NodeInfo | None:
        """The member to ask next; None when every member has been asked."""
        while self._waiting:
            node = self._waiting.pop(0)
            if node.pubkey not in self._refused:
                return node
        return None

    def failed(self, node: NodeInfo, error: Exception) -> Refresh | GiveUp | None:
        """``node`` did not answer, or refused with ``error``: what next (None: ask the
        next member)."""
        self._last_error = error
        if not isinstance(error, RpcError):
            return None  # unreachable, or the connection was lost
        if error.code == "wrong_swarm" and self._redirects < MAX_REDIRECTS:
            self._redirects += 1
            return Refresh()
        if error.code in REFUSED_FOR_GOOD:
            self._refused[node.pubkey] = error
            if len(self._refused) >= self._needed:
                return GiveUp(next(iter(self._refused.values())))
            return None
        if error.code in RETRYABLE:
            return None
        return GiveUp(error)

    def exhausted(self) -> RpcError:
        """Why the request failed once no member is left to ask."""
        if self._refused:
            first = next(iter(self._refused.values()))
            return RpcError("unavailable", f"one member refused ({first}) and no other answered")
        if isinstance(self._last_error, RpcError):
            return self._last_error
        return RpcError("unavailable", f"no node of the swarm answered: {self._last_error}")


def failed_last(members: Sequence[NodeInfo], failed: Sequence[str]) -> list[NodeInfo]:
    """``members`` in their order, but those in ``failed`` (keys, the latest failure
    last) after the rest, in the order they failed: a subscription that lost its member
    asks every other before one that failed lately (the listing may still name a member
    that is gone)."""
    rank = {key: index for index, key in enumerate(failed)}
    return sorted(members, key=lambda node: rank.get(node.pubkey, -1))


def second_opinion(results: Sequence[object], swarm_size: int) -> list[int]:
    """The stores of a ``store_batch`` whose refusal for good another member must confirm
    (none in a swarm of one, whose member's word is final)."""
    if swarm_size < 2:
        return []
    return [index for index, result in enumerate(results) if refused_for_good(result)]


def with_second_opinion(
    results: Sequence[T | RpcError],
    asked: Sequence[int],
    second: Sequence[T | RpcError] | Exception,
) -> list[T | RpcError]:
    """``results`` with the stores ``asked`` again answered by ``second``, the second
    member's answers, whatever they are; or, when that call failed, a refusal for good
    it raised itself (a second member refused the whole batch), else ``unavailable``."""
    if isinstance(second, Exception):
        unconfirmed = second if isinstance(second, RpcError) and refused_for_good(second) else None
        second = [unconfirmed or RpcError("unavailable", f"not confirmed: {second}")] * len(asked)
    merged = list(results)
    for index, answer in zip(asked, second, strict=True):
        merged[index] = answer
    return merged
