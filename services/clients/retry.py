"""When a unary call is tried again: only UNAVAILABLE, only for calls that are safe to repeat (reads, and
writes made idempotent by a business id or a client order id), at most `max_attempts` tries in all, and
all of them within the call's one deadline.

The wait before a retry is the server's google.rpc.RetryInfo delay when it sent one (rpc.Unavailable
always does), else an exponential backoff (initial_backoff_s, doubling, at most max_backoff_s); either is
stretched by a random factor in [1, 1 + jitter] so that clients refused together do not come back
together. A retry whose wait would end past the deadline is not made: the caller gets the UNAVAILABLE
error at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # tries in all, the first included (1 = never retry)
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    # A RetryInfo delay longer than this is not waited for (the error is raised).
    max_retry_after_s: float = 30.0

    def delay(
        self, retry: int, retry_after_ms: int | None, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait before retry number `retry` (1 = the second attempt), None when no retry is
        allowed any more."""
        if retry >= self.max_attempts:
            return None
        if retry_after_ms is not None:
            base = retry_after_ms / 1000.0
            if base > self.max_retry_after_s:
                return None
        else:
            base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return base * (1.0 + self.jitter * rand())


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
