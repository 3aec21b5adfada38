"""What becomes of each copy the outbox stores, sans-I/O.

The outbox stores an owner's copies in ``store_batch`` requests, and the swarm answers
per copy (:class:`~p2psync.swarm.client.SwarmClient` has already had a refusal for good
confirmed by a second member, :mod:`~p2psync.swarm.attempts`). Each answer settles its
copy (:func:`settle`):

* stored: the copy is done;
* refused for good (the request will never succeed: too large, a bad TTL...): the copy is
  dropped, and the user is told in the log, since sending it again would fail again;
* anything else (a member out of reach, a recipient's mailbox full): the copy stays, and
  the outbox tries again after its back-off.

A batch refused for good as a whole (one copy in it, say, is malformed) goes again a copy
at a time (:func:`one_at_a_time`), so that only the copies at fault are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import RpcError
from ..swarm.attempts import refused_for_good

#: A store's answer: (hash, expiry) of the stored copy, or its refusal.
Result = tuple[bytes, int] | RpcError


@dataclass
class Settlement:
    """What a batch's answers settle, by the copies' places in the batch."""

    #: Copies done with: stored, or dropped for good.
    done: list[int] = field(default_factory=list)
    #: Copies dropped, with why (each is in ``done`` too).
    dropped: list[tuple[int, RpcError]] = field(default_factory=list)
    #: The first refusal that leaves a copy to send again (None: none did).
    retry: RpcError | None = None


def settle(results: Sequence[Result]) -> Settlement:
    settlement = Settlement()
    for index, result in enumerate(results):
        if isinstance(result, RpcError) and not refused_for_good(result):
            settlement.retry = settlement.retry or result
            continue
        if isinstance(result, RpcError):
            settlement.dropped.append((index, result))
        settlement.done.append(index)
    return settlement


def one_at_a_time(refusal: RpcError) -> bool:
    """Whether a batch refused whole with ``refusal`` goes again a copy at a time (a
    refusal for good); else the refusal is the batch's, to be tried again as it is."""
    return refused_for_good(refusal)
