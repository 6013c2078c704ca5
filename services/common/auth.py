"""Who may call what: identities, roles, credentials and the per-method access table.

Every gRPC caller presents a bearer token (`authorization: Bearer <token>` metadata); the server maps
it to a Principal (a name and a role) and checks the role against ACCESS before the handler runs. Health
checking and reflection are public (probes and tools; they change nothing and reveal only the API).

Roles:
- admin: everything but submitting commands to a matching shard (operators, the CLI).
- peer: an accounts shard; only principal "accounts-N" may submit matching commands as source
  "accounts-N" (MatchingService.SubmitCommands); reads matching events and depth.
- wallet: the wallet / back office: deposits, withdrawals, balances.
- trader: acts for users (the gateway): orders, balances, user streams, history, market.
- quantizer: the hosted-strategy service: everything a trader may, plus the all-users accounts event
  stream and status (StreamAccountEvents, GetAccountsStatus) that its feed follows, so that it reads
  them as itself rather than with another principal's token. An ordinary trader still may not.
- reader: read-only: every query and event stream (history and market consume streams as readers).

The credentials file (JSON, mode 0600, in a 0700 folder; `<data_dir>/secrets/credentials.json` by
default) is generated on first run: one token per principal and the history page-token key. Every
process of one exchange reads the same file; a cluster distributes it like any other secret. Servers
keep only SHA-256 digests of tokens in memory for the lookup.

Transport (config [security] transport): "local" (the embedded default: plaintext, and the server
accepts only loopback peers, enforced by gRPC's local credentials) or "tls" (across machines: server
certificate and CA from the config, or generated under `<data_dir>/secrets/tls/` on first run).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

CREDENTIALS_VERSION = 1
TOKEN_PREFIX = "exk_"


class Role(StrEnum):
    ADMIN = "admin"
    PEER = "peer"
    WALLET = "wallet"
    TRADER = "trader"
    READER = "reader"
    QUANTIZER = "quantizer"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


# The principals every exchange has, besides one peer per accounts source.
DEFAULT_PRINCIPALS: dict[str, Role] = {
    "admin": Role.ADMIN,
    "wallet": Role.WALLET,
    "trader": Role.TRADER,
    "reader": Role.READER,
    "history": Role.READER,
    "market": Role.READER,
    "quantizer": Role.QUANTIZER,
    "gateway": Role.TRADER,
}

ALL = frozenset(Role)
_A, _P, _W, _T, _R = Role.ADMIN, Role.PEER, Role.WALLET, Role.TRADER, Role.READER

# Full method name -> roles allowed. A method that is not listed is refused to everybody (a new RPC
# must be given its roles here: tests/test_auth.py checks every method of every service is listed).
ACCESS: dict[str, frozenset[Role]] = {}


def _grant(service: str, roles: Iterable[Role], *methods: str) -> None:
    allowed = frozenset(roles)
    for m in methods:
        ACCESS[f"/exchange.v1.{service}/{m}"] = allowed


_grant("AccountsService", ALL, "ListAssets", "ListMarkets")
_grant("AccountsService", (_A, _W), "Deposit", "Withdraw")
_grant("AccountsService", (_A, _W, _T, _R), "GetBalances")
_grant(
    "AccountsService",
    (_A, _T),
    "PlaceOrder",
    "CancelOrder",
    "CancelAllOrders",
    "AmendOrder",
    "SubmitOrders",
)
_grant("AccountsService", (_A, _T, _R), "GetOrder", "ListOpenOrders", "StreamUserEvents")
_grant("AccountsService", (_A, _R), "StreamAccountEvents", "GetAccountsStatus")
_grant("AccountsService", (_A, _T), "OpenSubAccount", "Transfer")
_grant("AccountsService", (_A, _T, _R), "ListSubAccounts")
_grant("MatchingService", (_P,), "SubmitCommands")
_grant("MatchingService", (_A, _P, _R), "StreamEvents", "GetMatchingStatus")
_grant("MatchingService", (_A, _P, _T, _R), "GetDepth", "ListBookOrders")
# Moving a market between shards and adding one while running (services.cluster.operator).
_grant("MatchingService", (_A,), "ExportMarket", "ImportMarket", "OpenMarket")
_grant("AccountsService", (_A,), "RouteMarket", "AddMarket")
_grant(
    "HistoryService",
    (_A, _T, _R),
    "GetOrderHistory",
    "ListFinishedOrders",
    "ListOrderTrades",
    "ListUserTrades",
    "ListBalanceHistory",
)
_grant("HistoryService", (_A, _R), "GetHistoryStatus")
_grant(
    "MarketService",
    ALL,
    "GetKlines",
    "GetTicker",
    "ListTickers",
    "ListRecentTrades",
    "GetMarketDepth",
    "SubscribeKlines",
    "SubscribeTicker",
    "SubscribeDepth",
    "SubscribeTrades",
)
_grant("MarketService", (_A, _R), "GetMarketDataStatus")
_grant(
    "QuantizerService",
    (_A, _T),
    "CreateStrategy",
    "PauseStrategy",
    "ResumeStrategy",
    "StopStrategy",
    "BacktestStrategy",
)
_grant("QuantizerService", (_A, _T, _R), "GetStrategy", "ListStrategies", "PreviewGrid", "PreviewDca")
_grant("GatewayAdminService", (_A,), "CreateApiKey", "RevokeApiKey")
_grant("GatewayAdminService", (_A, _R), "ListApiKeys")

# The quantizer role: whatever a trader may call, plus the two all-users accounts reads its feed needs.
for _method, _roles in list(ACCESS.items()):
    if _T in _roles:
        ACCESS[_method] = _roles | {Role.QUANTIZER}
for _method in ("StreamAccountEvents", "GetAccountsStatus"):
    _path = f"/exchange.v1.AccountsService/{_method}"
    ACCESS[_path] = ACCESS[_path] | {Role.QUANTIZER}

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenVerifier:
    """Server side: token -> principal (by SHA-256 digest, so no token is compared character by
    character and none is kept in memory)."""

    def __init__(self, principals: Mapping[str, tuple[Role, str]]) -> None:
        self._by_digest = {digest(token): Principal(name, role) for name, (role, token) in principals.items()}

    def principal(self, token: str) -> Principal | None:
        return self._by_digest.get(digest(token))

    def from_metadata(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal | None:
        if not metadata:
            return None
        for key, value in metadata:
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return None
                return self.principal(token.strip())
        return None


@dataclass(frozen=True)
class Credentials:
    path: Path
    principals: Mapping[str, tuple[Role, str]]  # name -> (role, token)
    page_token_key: bytes

    def token(self, name: str) -> str:
        try:
            return self.principals[name][1]
        except KeyError:
            raise KeyError(f"no credentials for {name!r} in {self.path}") from None

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(self.principals)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("version") != CREDENTIALS_VERSION:
        raise ValueError(f"{path}: not a credentials file of version {CREDENTIALS_VERSION}")
    return data


def _write(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _parse(path: Path, data: Mapping[str, Any]) -> Credentials:
    principals: dict[str, tuple[Role, str]] = {}
    for name, entry in dict(data.get("principals", {})).items():
        principals[str(name)] = (Role(entry["role"]), str(entry["token"]))
    return Credentials(path, principals, bytes.fromhex(str(data["page_token_key"])))


def load_credentials(path: Path) -> Credentials:
    """Read an existing credentials file (clients: the CLI, tests, tools)."""
    data = _read(path)
    if data is None:
        raise FileNotFoundError(
            f"no credentials at {path}: start the exchange once (it generates them) or point "
            "EXCHANGE_CREDENTIALS at the file"
        )
    return _parse(path, data)


def ensure_credentials(path: Path, peers: Iterable[str] = ()) -> Credentials:
    """Load the credentials file, generating it (or the principals it lacks) on first run.

    Safe when several processes start at once (a lock file beside it); the file is mode 0600 in a
    folder of mode 0700, written atomically."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    wanted = dict(DEFAULT_PRINCIPALS)
    for peer in peers:
        wanted[peer] = Role.PEER
    with locked(folder):
        data = _read(path)
        changed = data is None
        if data is None:
            data = {"version": CREDENTIALS_VERSION, "page_token_key": secrets.token_hex(32), "principals": {}}
        principals = data.setdefault("principals", {})
        for name, role in wanted.items():
            if name not in principals:
                principals[name] = {"role": str(role), "token": new_token()}
                changed = True
            elif name in DEFAULT_PRINCIPALS and principals[name].get("role") != str(role):
                # A default principal's role is the code's (e.g. "quantizer" was once a trader): the
                # token stays, the role follows.
                principals[name]["role"] = str(role)
                changed = True
        if changed:
            _write(path, data)
        else:
            os.chmod(path, 0o600)
    return _parse(path, data)
