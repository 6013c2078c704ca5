"""Request weight per API key and per client address, in fixed one-minute windows (as Binance counts
REQUEST_WEIGHT): a request that would exceed a limit is refused with 429, Retry-After (seconds to the
next window) and X-MBX-USED-WEIGHT-1M; a refused request adds nothing.

Memory is bounded: only the current window's counters are kept (they are dropped when it ends), and at
most `max_clients` of them; past that, new clients of the window share one overflow counter.
"""

from __future__ import annotations

WINDOW_MS = 60_000
OVERFLOW = "\x00overflow"


class WeightLimiter:
    def __init__(self, limit: int, *, max_clients: int = 100_000) -> None:
        self.limit = limit
        self.max_clients = max_clients
        self._window = -1
        self._used: dict[str, int] = {}

    def used(self, client: str) -> int:
        return self._used.get(client, 0)

    def take(self, client: str, weight: int, now_ms: int) -> int | None:
        """Count `weight` for `client`: None when allowed, else the seconds until the next window."""
        window = now_ms // WINDOW_MS
        if window != self._window:
            self._window = window
            self._used = {}
        if client not in self._used and len(self._used) >= self.max_clients:
            client = OVERFLOW
        used = self._used.get(client, 0) + weight
        if used > self.limit:
            return max(1, -(-((window + 1) * WINDOW_MS - now_ms) // 1000))
        self._used[client] = used
        return None


TRY_AGAIN_LATER = 1013  # WebSocket close code (RFC 6455 registry): "Try Again Later"


class ConnectionLimiter:
    """Open WebSocket connections per client address: `acquire` says whether one more is allowed (and
    counts it), `release` forgets it when it closes."""

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self._open: dict[str, int] = {}

    def open(self, address: str) -> int:
        return self._open.get(address, 0)

    def acquire(self, address: str) -> bool:
        n = self._open.get(address, 0)
        if n >= self.per_address:
            return False
        self._open[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self._open.get(address, 0) - 1
        if n > 0:
            self._open[address] = n
        else:
            self._open.pop(address, None)
