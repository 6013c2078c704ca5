"""Binance's listenKey user data stream (the REST-managed one, older than the WebSocket API's):

    POST   /api/v3/userDataStream                 (X-MBX-APIKEY, no signature) -> {"listenKey": KEY}
    PUT    /api/v3/userDataStream?listenKey=KEY   keepalive: valid for another 60 minutes -> {}
    DELETE /api/v3/userDataStream?listenKey=KEY   -> {}; its open streams are closed
    WS     /ws/KEY                                executionReport and outboundAccountPosition events
                                                  (services.gateway.userdata.UserEvents), raw payloads

A listen key expires `LISTEN_KEY_TTL_MS` after its creation or last keepalive (the gateway's clock: this
is an edge adapter, not a state machine), and dies with its API key (revoked, or without the read
permission): the sweep closes its streams. At most `max_per_key` listen keys per API key. Keys are 64
random alphanumeric characters, kept in memory only (a restarted gateway forgets them, as a client of
Binance must expect anyway).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.errors import Reason
from services.gateway.errors import ApiError

LISTEN_KEY_TTL_MS = 60 * 60 * 1000
LISTEN_KEY_LEN = 64
INVALID_LISTEN_KEY = -1125  # Binance: "This listenKey does not exist."
ALPHABET = string.ascii_letters + string.digits
LISTEN_KEY_PATTERN = f"[A-Za-z0-9]{{{LISTEN_KEY_LEN}}}"


@dataclass
class ListenKey:
    listen_key: str
    api_key: str
    user_id: int
    expires_ms: int
    # close(reason) of every stream open on this key
    streams: set[Callable[[str], None]] = field(default_factory=set)


class ListenKeys:
    def __init__(self, *, max_per_key: int, ttl_ms: int = LISTEN_KEY_TTL_MS) -> None:
        self.max_per_key = max_per_key
        self.ttl_ms = ttl_ms
        self._keys: dict[str, ListenKey] = {}
        self._by_api_key: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def create(self, api_key: str, user_id: int, now_ms: int) -> ListenKey:
        self.sweep(now_ms, lambda _k: True)
        mine = self._by_api_key.setdefault(api_key, set())
        if len(mine) >= self.max_per_key:
            raise ApiError(
                400,
                INVALID_LISTEN_KEY,
                f"At most {self.max_per_key} listen keys per API key: delete one, or keep one alive.",
                reason=str(Reason.VALUE_OUT_OF_RANGE),
            )
        listen_key = "".join(secrets.choice(ALPHABET) for _ in range(LISTEN_KEY_LEN))
        entry = ListenKey(listen_key, api_key, user_id, now_ms + self.ttl_ms)
        self._keys[listen_key] = entry
        mine.add(listen_key)
        return entry

    def get(self, listen_key: str, now_ms: int) -> ListenKey | None:
        entry = self._keys.get(listen_key)
        if entry is None or entry.expires_ms <= now_ms:
            return None
        return entry

    def owned(self, api_key: str, listen_key: str, now_ms: int) -> ListenKey:
        entry = self.get(listen_key, now_ms)
        if entry is None or entry.api_key != api_key:
            raise ApiError(
                400, INVALID_LISTEN_KEY, "This listenKey does not exist.", reason=str(Reason.INVALID_FIELD)
            )
        return entry

    def keepalive(self, api_key: str, listen_key: str, now_ms: int) -> None:
        self.owned(api_key, listen_key, now_ms).expires_ms = now_ms + self.ttl_ms

    def delete(self, api_key: str, listen_key: str, now_ms: int) -> None:
        self._remove(self.owned(api_key, listen_key, now_ms), "listen key deleted")

    def sweep(self, now_ms: int, api_key_valid: Callable[[str], bool]) -> int:
        """Drop the expired listen keys and those whose API key is no longer valid, closing their
        streams; how many were dropped."""
        dead = [
            (k, "listen key expired" if k.expires_ms <= now_ms else "API key revoked")
            for k in self._keys.values()
            if k.expires_ms <= now_ms or not api_key_valid(k.api_key)
        ]
        for entry, reason in dead:
            self._remove(entry, reason)
        return len(dead)

    def _remove(self, entry: ListenKey, reason: str) -> None:
        self._keys.pop(entry.listen_key, None)
        mine = self._by_api_key.get(entry.api_key)
        if mine is not None:
            mine.discard(entry.listen_key)
            if not mine:
                del self._by_api_key[entry.api_key]
        for close in list(entry.streams):
            close(reason)
        entry.streams.clear()
