"""API keys: who a signed request acts for, and what it may do.

A key is (api_key, user_id, permissions, label, created, revoked). The api_key is public (it travels in
X-MBX-APIKEY); the secret signs requests (HMAC-SHA256), so the gateway must be able to read it back:
it is not hashed but encrypted at rest with AES-GCM (`cryptography`), under a 256-bit key kept in the
secrets folder beside the exchange's credentials (`[gateway] key_file`, mode 0600, generated on first
run), with the api_key as associated data (a ciphertext moved to another row does not decrypt). A copy of
the database alone does not reveal any secret. The secret is answered once, when the key is created.

Store: SQL through SQLAlchemy on the same backends as history (SQLite by default, PostgreSQL, MariaDB),
not a journaled state machine: keys are configuration of the edge, not money; nothing orders them
against other commands, several gateways can share one database, and an operator can inspect and revoke
with SQL in an emergency. Lookups are answered from memory (every valid key, loaded at start and
re-read every `refresh_s`), so a signed request costs no query; a key revoked through another gateway
(another machine sharing the database) stops working within that period, through this one at once.
The worker processes of one gateway (`[gateway] workers = N`) share a version number of the keys
(services.gateway.shared): a create or revoke bumps it once committed, and a worker that sees a newer
version re-reads the keys before it verifies its next request (`sync`), so a key created or revoked
through the admin service holds on every worker as soon as the admin call has answered.

Permissions: read (balances, orders, trades, the user data stream), trade (orders), strategies
(quantizer). There is no withdrawal permission: withdrawals never go through keys.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import InvalidArgument, NotFound, Reason, quote
from services.common.limits import check_user
from services.gateway.shared import KEYS_VERSION, SharedState

READ, TRADE, STRATEGIES = "read", "trade", "strategies"
PERMISSIONS = (READ, TRADE, STRATEGIES)
MAX_LABEL = 64
MAX_KEYS_PER_USER = 100

metadata = sa.MetaData()
api_keys = sa.Table(
    "gateway_api_keys",
    metadata,
    sa.Column("api_key", sa.String(80), primary_key=True),
    sa.Column("user_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("permissions", sa.String(64), nullable=False),
    sa.Column("label", sa.String(MAX_LABEL), nullable=False, default=""),
    sa.Column("secret_nonce", sa.LargeBinary(12), nullable=False),
    sa.Column("secret_sealed", sa.LargeBinary(128), nullable=False),
    sa.Column("created_time_us", sa.BigInteger, nullable=False),
    sa.Column("revoked_time_us", sa.BigInteger, nullable=False, default=0),
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    api_key: str
    user_id: int
    permissions: frozenset[str]
    label: str
    created_time_us: int
    revoked_time_us: int = 0


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """A valid key with its secret, as the request verifier needs it."""

    key: ApiKey
    secret: bytes


def load_or_create_master_key(path: Path) -> bytes:
    """The AES-256 key that seals the secrets: read from `path`, generated there (0600) on first run."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        raw = secrets.token_bytes(32).hex().encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first: then use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        raw = path.read_bytes()
    key = bytes.fromhex(raw.decode().strip())
    if len(key) != 32:
        raise ValueError(f"{path}: not a 256-bit key")
    return key


def parse_permissions(text: str) -> frozenset[str]:
    perms = frozenset(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = perms - set(PERMISSIONS)
    if unknown:
        raise InvalidArgument(
            f"unknown permission {quote(sorted(unknown)[0])}; permissions are {', '.join(PERMISSIONS)}",
            Reason.INVALID_FIELD,
        )
    return perms or frozenset({READ})


class KeyStore:
    def __init__(
        self, url: str, master_key: bytes, *, refresh_s: float = 2.0, state: SharedState | None = None
    ) -> None:
        self.engine = sa.create_engine(url)
        metadata.create_all(self.engine)
        self._aead = AESGCM(master_key)
        self.refresh_s = refresh_s
        self.state = state or SharedState.local(replay_slots=1, weight_slots=1, connection_slots=1)
        self.version = self.state.version(KEYS_VERSION)
        self._active: dict[str, ActiveKey] = {}
        self._loaded_at = 0.0
        self._syncing: asyncio.Lock | None = None
        self.reload()

    def close(self) -> None:
        self.engine.dispose()

    # --- administration (blocking: call from a thread) --------------------------------------------

    def create(self, user_id: int, permissions: frozenset[str], label: str = "") -> tuple[ApiKey, str]:
        """A new key for `user_id`: (the key, its secret). The secret is never returned again."""
        check_user(user_id)
        if len(label) > MAX_LABEL:
            raise InvalidArgument(f"label is longer than {MAX_LABEL} characters", Reason.FIELD_TOO_LONG)
        unknown = set(permissions) - set(PERMISSIONS)
        if unknown:
            raise InvalidArgument(f"unknown permission {quote(sorted(unknown)[0])}", Reason.INVALID_FIELD)
        perms = frozenset(permissions) or frozenset({READ})
        api_key = secrets.token_hex(32)
        secret = secrets.token_hex(32)
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), api_key.encode())
        now = time.time_ns() // 1000
        key = ApiKey(api_key, user_id, perms, label, now)
        with self.engine.begin() as conn:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(api_keys)
                .where(api_keys.c.user_id == user_id, api_keys.c.revoked_time_us == 0)
            ).scalar_one()
            if count >= MAX_KEYS_PER_USER:
                raise InvalidArgument(
                    f"user {user_id} already has {MAX_KEYS_PER_USER} valid keys; revoke one first",
                    Reason.VALUE_OUT_OF_RANGE,
                )
            conn.execute(
                api_keys.insert().values(
                    api_key=api_key,
                    user_id=user_id,
                    permissions=",".join(sorted(perms)),
                    label=label,
                    secret_nonce=nonce,
                    secret_sealed=sealed,
                    created_time_us=now,
                    revoked_time_us=0,
                )
            )
        self._active[api_key] = ActiveKey(key, secret.encode())
        self.state.bump(KEYS_VERSION)
        return key, secret

    def list(self, user_id: int = 0, *, include_revoked: bool = False) -> list[ApiKey]:
        q = sa.select(api_keys).order_by(api_keys.c.created_time_us, api_keys.c.api_key)
        if user_id:
            q = q.where(api_keys.c.user_id == user_id)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_time_us == 0)
        with self.engine.connect() as conn:
            return [self._key(row) for row in conn.execute(q)]

    def revoke(self, api_key: str) -> ApiKey:
        now = time.time_ns() // 1000
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.api_key == api_key)).first()
            if row is None:
                raise NotFound(f"no API key {quote(api_key, 12)}", Reason.API_KEY_NOT_FOUND)
            if row.revoked_time_us == 0:
                conn.execute(
                    api_keys.update().where(api_keys.c.api_key == api_key).values(revoked_time_us=now)
                )
            else:
                now = row.revoked_time_us
        self._active.pop(api_key, None)
        self.state.bump(KEYS_VERSION)
        key = self._key(row)
        return ApiKey(key.api_key, key.user_id, key.permissions, key.label, key.created_time_us, now)

    def reload(self) -> None:
        """Re-read every valid key (and decrypt its secret) from the database."""
        version = self.state.version(KEYS_VERSION)  # read first: a change during the read is seen next
        active: dict[str, ActiveKey] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(api_keys).where(api_keys.c.revoked_time_us == 0)):
                secret = self._aead.decrypt(row.secret_nonce, row.secret_sealed, row.api_key.encode())
                active[row.api_key] = ActiveKey(self._key(row), secret)
        self._active = active
        self._loaded_at = time.monotonic()
        self.version = version

    def stale(self) -> bool:
        """Whether another worker created or revoked a key since this one last read them."""
        return self.state.version(KEYS_VERSION) != self.version

    async def sync(self) -> None:
        """Re-read the keys if another worker changed them (the request path: one comparison when
        nothing changed); concurrent callers wait for the same reading."""
        if self.stale():
            await self.refresh(only_if_stale=True)

    async def refresh(self, *, only_if_stale: bool = False) -> None:
        """Re-read the keys in a thread; one reading at a time (so an older one never lands last)."""
        if self._syncing is None:
            self._syncing = asyncio.Lock()
        async with self._syncing:
            if not only_if_stale or self.stale():
                await asyncio.to_thread(self.reload)

    # --- the request path ------------------------------------------------------------------------

    def active(self, api_key: str) -> ActiveKey | None:
        return self._active.get(api_key)

    def due(self) -> bool:
        return time.monotonic() - self._loaded_at >= self.refresh_s

    @staticmethod
    def _key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
        m = row._mapping
        return ApiKey(
            str(m["api_key"]),
            int(str(m["user_id"])),
            frozenset(p for p in str(m["permissions"]).split(",") if p),
            str(m["label"]),
            int(str(m["created_time_us"])),
            int(str(m["revoked_time_us"])),
        )
