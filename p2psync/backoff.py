"""How long a retry loop waits before it tries again: one rule for every such loop.

A wait doubles with each failure in a row, from the first wait up to a cap, and starts
again from the first after a success: a peer that is down for a moment is tried again
within seconds, one down for good costs a request every cap. Some loops go again at once
after their first failures (a subscription moves to another member without waiting).
Pure: the driver sleeps, spreading the wait if its peers must not all come back at once.
"""

from __future__ import annotations

import random


class Backoff:
    """The waits of one retry loop (see the module): ``failed()`` after each failure
    gives the wait before the next try; ``succeeded()`` starts the waits again."""

    def __init__(self, first_s: float, max_s: float, *, immediate: int = 0) -> None:
        """Waits from ``first_s`` doubling up to ``max_s``, after the first ``immediate``
        failures in a row, which wait nothing."""
        if not first_s > 0 or not max_s > 0 or immediate < 0:
            raise ValueError("waits are positive and immediate retries not negative")
        self.first_s = first_s
        self.max_s = max_s
        self._immediate = immediate
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures in a row so far."""
        return self._failures

    def failed(self) -> float:
        """A try failed: the seconds to wait before the next."""
        self._failures += 1
        doublings = self._failures - self._immediate - 1
        if doublings < 0:
            return 0.0
        # Capped before it is computed: 2 ** doublings grows without bound.
        wait = self.first_s
        for _ in range(doublings):
            if wait >= self.max_s:
                break
            wait *= 2
        return min(self.max_s, wait)

    def succeeded(self) -> None:
        """A try succeeded: the next failure waits the first wait again."""
        self._failures = 0


def jittered(wait_s: float, spread: float, rng: random.Random) -> float:
    """``wait_s`` moved by up to ``spread`` of itself either way, uniformly: loops of
    many peers that started together (nodes brought up at once, devices of one test)
    must not keep hitting a server in the same instant."""
    return wait_s * (1 + spread * (2 * rng.random() - 1))
