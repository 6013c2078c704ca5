"""Binance's listenKey user data stream (the REST-managed one, older than the WebSocket API's):

    POST   /api/v3/userDataStream                 (X-MBX-APIKEY, no signature) -> {"listenKey": KEY}
    PUT    /api/v3/userDataStream?listenKey=KEY   keepalive: valid for another 60 minutes -> {}
    DELETE /api/v3/userDataStream?listenKey=KEY   -> {}; its open streams are closed
    WS     /ws/KEY                                executionReport and outboundAccountPosition events
                                                  (services.gateway.userdata.UserEvents), raw payloads

A listen key expires `LISTEN_KEY_TTL_MS` after its creation or last keepalive (the gateway's clock: this
is an edge adapter, not a state machine), and dies with its API key (revoked, or without the read
permission): the sweep closes its streams. At most `max_per_key` listen keys per API key. Keys are 64
random alphanumeric characters.

Where they live: in the API key database (table gateway_listen_keys, beside the keys), because with
`[gateway] workers = N` the POST, the keepalive, the DELETE and the WebSocket may each reach another
worker process. The streams open on a worker are that worker's (`attach`); a DELETE through another
worker bumps the shared listen-key version (services.gateway.shared), and every worker's sweeper,
which polls that version, closes its streams of deleted keys at once (besides its sweep every SWEEP_S).
The store's methods block (SQL): the handlers call them in a thread.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from services.common.errors import Reason
from services.gateway.errors import ApiError
from services.gateway.keys import metadata
from services.gateway.shared import LISTEN_KEYS_VERSION, SharedState

LISTEN_KEY_TTL_MS = 60 * 60 * 1000
LISTEN_KEY_LEN = 64
INVALID_LISTEN_KEY = -1125  # Binance: "This listenKey does not exist."
ALPHABET = string.ascii_letters + string.digits
LISTEN_KEY_PATTERN = f"[A-Za-z0-9]{{{LISTEN_KEY_LEN}}}"
# Expired rows are deleted this long after their expiry: meanwhile every worker still tells "expired"
# from "deleted" when it closes its streams.
PURGE_AFTER_MS = 60_000

listen_keys = sa.Table(
    "gateway_listen_keys",
    metadata,
    sa.Column("listen_key", sa.String(LISTEN_KEY_LEN), primary_key=True),
    sa.Column("api_key", sa.String(80), nullable=False, index=True),
    sa.Column("user_id", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False, index=True),
)

Close = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ListenKey:
    listen_key: str
    api_key: str
    user_id: int
    expires_ms: int


def _missing() -> ApiError:
    return ApiError(
        400, INVALID_LISTEN_KEY, "This listenKey does not exist.", reason=str(Reason.INVALID_FIELD)
    )


class ListenKeys:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_per_key: int,
        ttl_ms: int = LISTEN_KEY_TTL_MS,
        state: SharedState | None = None,
    ) -> None:
        self.engine = engine
        metadata.create_all(engine, tables=[listen_keys])
        self.max_per_key = max_per_key
        self.ttl_ms = ttl_ms
        self.state = state or SharedState.local(replay_slots=1, weight_slots=1, connection_slots=1)
        self.streams: dict[str, set[Close]] = {}  # the streams open on this worker, by listen key
        self.seen_version = self.state.version(LISTEN_KEYS_VERSION)
        self._purge_at = 0

    def count(self, now_ms: int) -> int:
        """Listen keys valid at `now_ms` (every worker's)."""
        with self.engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(listen_keys).where(listen_keys.c.expires_ms > now_ms)
            return int(conn.execute(q).scalar_one())

    def create(self, api_key: str, user_id: int, now_ms: int) -> ListenKey:
        listen_key = "".join(secrets.choice(ALPHABET) for _ in range(LISTEN_KEY_LEN))
        entry = ListenKey(listen_key, api_key, user_id, now_ms + self.ttl_ms)
        t = listen_keys.c
        with self.engine.begin() as conn:
            mine = conn.execute(
                sa.select(sa.func.count())
                .select_from(listen_keys)
                .where(t.api_key == api_key, t.expires_ms > now_ms)
            ).scalar_one()
            if mine >= self.max_per_key:
                raise ApiError(
                    400,
                    INVALID_LISTEN_KEY,
                    f"At most {self.max_per_key} listen keys per API key: delete one, or keep one alive.",
                    reason=str(Reason.VALUE_OUT_OF_RANGE),
                )
            conn.execute(
                listen_keys.insert().values(
                    listen_key=listen_key, api_key=api_key, user_id=user_id, expires_ms=entry.expires_ms
                )
            )
        return entry

    def _row(self, listen_key: str) -> ListenKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(listen_keys).where(listen_keys.c.listen_key == listen_key)).first()
        if row is None:
            return None
        return ListenKey(str(row.listen_key), str(row.api_key), int(row.user_id), int(row.expires_ms))

    def get(self, listen_key: str, now_ms: int) -> ListenKey | None:
        entry = self._row(listen_key)
        if entry is None or entry.expires_ms <= now_ms:
            return None
        return entry

    def owned(self, api_key: str, listen_key: str, now_ms: int) -> ListenKey:
        entry = self.get(listen_key, now_ms)
        if entry is None or entry.api_key != api_key:
            raise _missing()
        return entry

    def keepalive(self, api_key: str, listen_key: str, now_ms: int) -> None:
        t = listen_keys.c
        with self.engine.begin() as conn:
            done = conn.execute(
                listen_keys.update()
                .where(t.listen_key == listen_key, t.api_key == api_key, t.expires_ms > now_ms)
                .values(expires_ms=now_ms + self.ttl_ms)
            ).rowcount
        if not done:
            raise _missing()

    def delete(self, api_key: str, listen_key: str, now_ms: int) -> None:
        self.remove(api_key, listen_key, now_ms)
        self.close([(listen_key, "listen key deleted")])

    def remove(self, api_key: str, listen_key: str, now_ms: int) -> None:
        """delete without closing the streams (in a thread; then `close` them on the event loop)."""
        t = listen_keys.c
        with self.engine.begin() as conn:
            done = conn.execute(
                listen_keys.delete().where(
                    t.listen_key == listen_key, t.api_key == api_key, t.expires_ms > now_ms
                )
            ).rowcount
        if not done:
            raise _missing()
        self.state.bump(LISTEN_KEYS_VERSION)

    # --- this worker's streams -------------------------------------------------------------------

    def attach(self, listen_key: str, close: Close) -> None:
        self.streams.setdefault(listen_key, set()).add(close)

    def detach(self, listen_key: str, close: Close) -> None:
        mine = self.streams.get(listen_key)
        if mine is not None:
            mine.discard(close)
            if not mine:
                del self.streams[listen_key]

    def changed(self) -> bool:
        """Whether a listen key was deleted (through any worker) since the last sweep."""
        return self.state.version(LISTEN_KEYS_VERSION) != self.seen_version

    def sweep(self, now_ms: int, api_key_valid: Callable[[str], bool]) -> int:
        """Close this worker's streams of listen keys that expired, were deleted or lost their API key,
        and delete the rows that expired more than PURGE_AFTER_MS ago; how many listen keys' streams
        were closed."""
        dead = self.dead(now_ms, api_key_valid)
        self.close(dead)
        return len(dead)

    def dead(
        self, now_ms: int, api_key_valid: Callable[[str], bool], names: list[str] | None = None
    ) -> list[tuple[str, str]]:
        """The SQL part of `sweep` (in a thread, given `names`: the listen keys of this worker's streams,
        taken on its event loop): (listen key, reason) of the streams to close."""
        self.seen_version = self.state.version(LISTEN_KEYS_VERSION)
        dead: list[tuple[str, str]] = []
        names = list(self.streams) if names is None else names
        if names:
            with self.engine.connect() as conn:
                rows = {
                    str(r.listen_key): (str(r.api_key), int(r.expires_ms))
                    for r in conn.execute(
                        sa.select(
                            listen_keys.c.listen_key, listen_keys.c.api_key, listen_keys.c.expires_ms
                        ).where(listen_keys.c.listen_key.in_(names))
                    )
                }
            for name in names:
                row = rows.get(name)
                if row is None:
                    reason = "listen key deleted"
                elif row[1] <= now_ms:
                    reason = "listen key expired"
                elif not api_key_valid(row[0]):
                    reason = "API key revoked"
                else:
                    continue
                dead.append((name, reason))
        if now_ms >= self._purge_at:  # at most once a PURGE_AFTER_MS per worker
            self._purge_at = now_ms + PURGE_AFTER_MS
            with self.engine.begin() as conn:
                conn.execute(listen_keys.delete().where(listen_keys.c.expires_ms <= now_ms - PURGE_AFTER_MS))
        return dead

    def close(self, dead: list[tuple[str, str]]) -> None:
        """Close the streams of these listen keys on this worker (on its event loop), with the reasons."""
        for listen_key, reason in dead:
            for close in list(self.streams.pop(listen_key, ())):
                close(reason)
