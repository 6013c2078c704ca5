"""Request weight per API key and per client address, in fixed one-minute windows (as Binance counts
REQUEST_WEIGHT): a request that would exceed a limit is refused with 429, Retry-After (seconds to the
next window) and X-MBX-USED-WEIGHT-1M; a refused request adds nothing.

The counters live in the workers' shared state (services.gateway.shared): with `[gateway] workers = N`
a key or an address has one limit across all the workers, not one per worker. Memory is bounded: a table
of fixed size whose stale entries (of a past window) are reused; a client that finds no room in its
probe chain shares the table's overflow counter (OVERFLOW) with the others in that case.
"""

from __future__ import annotations

from services.gateway.shared import SharedState, Table, key_of

WINDOW_MS = 60_000
OVERFLOW = "\x00overflow"


class WeightLimiter:
    def __init__(self, limit: int, state: SharedState, *, per_key: bool = False) -> None:
        self.limit = limit
        self.state = state
        self.table: Table = state.key_weights if per_key else state.ip_weights
        self.overflow = 1 if per_key else 0

    def used(self, client: str, now_ms: int) -> int:
        window = now_ms // WINDOW_MS
        if client == OVERFLOW:
            return self.state.overflow_used(self.overflow, window)
        return self.state.used(self.table, self.overflow, key_of(client), window)

    def take(self, client: str, weight: int, now_ms: int) -> tuple[int | None, int]:
        """Count `weight` for `client`: (None when allowed, else the seconds until the next window;
        the weight used this window, this request's included when allowed)."""
        window = now_ms // WINDOW_MS
        used = self.state.take(self.table, self.overflow, key_of(client), weight, window, self.limit)
        if used < 0:
            return max(1, -(-((window + 1) * WINDOW_MS - now_ms) // 1000)), self.limit
        return None, used


TRY_AGAIN_LATER = 1013  # WebSocket close code (RFC 6455 registry): "Try Again Later"


class ConnectionLimiter:
    """Open WebSocket connections per client address, over every worker: `acquire` says whether one more
    is allowed (and counts it under this worker), `release` forgets it when it closes. Each worker counts
    its own (so a restarted worker's are reset: `SharedState.forget_worker`); the limit applies to
    their sum."""

    def __init__(self, per_address: int, state: SharedState, *, worker: int = 0, workers: int = 1) -> None:
        self.per_address = per_address
        self.state = state
        self.worker = worker
        self.workers = workers

    def _keys(self, address: str) -> list[int]:
        return [key_of(f"{w} {address}") for w in range(self.workers)]

    def open(self, address: str) -> int:
        return self.state.open_connections(self._keys(address))

    def acquire(self, address: str) -> bool:
        keys = self._keys(address)
        return self.state.acquire_connection(keys, keys[self.worker], self.worker, self.per_address)

    def release(self, address: str) -> None:
        self.state.release_connection(key_of(f"{self.worker} {address}"), self.worker)
