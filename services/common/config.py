"""The exchange's TOML configuration: markets, shard map, and each service's endpoints and knobs.

One file describes a whole exchange (deploy/exchange.toml is the embedded default). Each process reads
it and picks its own section; relative paths are relative to the file's directory.

    data_dir = "data"
    [assets] ... [[markets]] ...               # see services.common.markets
    [accounts]  listen = "127.0.0.1:50051"  shards = 1        # users partitioned by user_id mod shards
    [shards.matching-0]  listen = "127.0.0.1:50061"  markets = ["BTC_USDT", ...]   # optional markets
    [history]  listen = "127.0.0.1:50071"  database_url = "sqlite:///{data_dir}/history.sqlite"
    [market]   listen = "127.0.0.1:50081"
    [gateway]  listen = "127.0.0.1:8080"  admin_listen = "127.0.0.1:50091"   # HTTP/WS and its admin gRPC
    [quantizer]  listen = "127.0.0.1:50101"  max_strategies_per_user = 20

Accounts sharded by user: `[accounts] shards = N` runs N accounts processes, "accounts-0" ..
"accounts-<N-1>"; shard i owns the users with user_id mod N == i (sub-account ids are allocated in their
owner's partition). Shard i listens at `shard_listen[i]` (default: `listen` with its port + i) and is
dialed at `shard_advertise[i]` (default: shard 0 at `advertise`, each as for any `listen`);
`metrics_listen`, when set, moves by i too.
With one shard (the default) the source is `source` ("accounts-0") and nothing changes.

Cluster mode: `[cluster] zookeeper = "h1:2181,h2:2181,h3:2181"` (and `zk_root`, default "/ostrakon")
makes every client of this file (the services, the CLI, the gateway) find shard and accounts leaders in
ZooKeeper and follow their changes (services.clients.discovery); the addresses here remain the
fallback for every other name. Empty (the default): the addresses here are all there is.

`listen` is where a service binds; `advertise` (optional, in each of those sections) is the address the
others dial (services.clients.resolver): by default `listen`, with a wildcard host (0.0.0.0, [::]) taken
as 127.0.0.1.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.common.markets import ConfigError, MarketCatalog

DEFAULT_SHARD = "matching-0"


@dataclass(frozen=True)
class AccountsConfig:
    source: str = "accounts-0"
    listen: str = "127.0.0.1:50051"
    # The address others dial ("" = listen, a wildcard host 0.0.0.0 / [::] as 127.0.0.1).
    advertise: str = ""
    metrics_listen: str = ""
    # Take a snapshot every this many journaled commands (0 = only on shutdown).
    snapshot_every: int = 200_000
    # Commands waiting to be journaled before new ones get UNAVAILABLE.
    max_queue: int = 100_000
    # Orders accepted but not yet acknowledged by their matching shard before new orders get UNAVAILABLE.
    max_outbox_lag: int = 200_000
    max_batch: int = 5_000
    fee_account_user_id: int = 0
    # Accounts shards: users are partitioned by user_id mod shards (see the module docstring).
    shards: int = 1
    shard_listen: tuple[str, ...] = ()
    shard_advertise: tuple[str, ...] = ()
    # Which shard this is (set by ExchangeConfig.accounts_shard, not in the file).
    index: int = 0

    def owner_of(self, user_id: int) -> int:
        """The index of the accounts shard that owns `user_id`."""
        return user_id % self.shards

    def shard_source(self, index: int) -> str:
        """The source (and service) name of accounts shard `index`."""
        return self.source if self.shards == 1 else f"accounts-{index}"


@dataclass(frozen=True)
class ShardConfig:
    name: str
    listen: str
    advertise: str = ""  # the address others dial ("" = listen, a wildcard host as 127.0.0.1)
    metrics_listen: str = ""
    snapshot_every: int = 200_000
    # How often the shard journals an expiry command for GTD orders (milliseconds).
    expiry_interval_ms: int = 1_000
    max_queue: int = 200_000


@dataclass(frozen=True)
class HistoryConfig:
    listen: str = "127.0.0.1:50071"
    advertise: str = ""  # the address others dial ("" = listen, a wildcard host as 127.0.0.1)
    metrics_listen: str = ""
    database_url: str = "sqlite:///{data_dir}/history.sqlite"
    batch_size: int = 20_000  # most events per ingest transaction (batches grow only when history lags)


@dataclass(frozen=True)
class MarketDataConfig:
    listen: str = "127.0.0.1:50081"
    advertise: str = ""  # the address others dial ("" = listen, a wildcard host as 127.0.0.1)
    metrics_listen: str = ""
    snapshot_every: int = 100_000


@dataclass(frozen=True)
class ExporterConfig:
    """[exporter]: event export to broker topics (services.exporter); run only when enabled."""

    enabled: bool = False
    listen: str = "127.0.0.1:50091"  # gRPC health only
    metrics_listen: str = ""
    nats_url: str = ""  # e.g. "nats://127.0.0.1:4222": JetStream subjects ("" = off)
    nats_stream_prefix: str = "EXCHANGE_EVENTS"  # one stream per source: <prefix>_<SOURCE>
    nats_storage: str = "file"  # "file" or "memory"
    kafka_bootstrap: str = ""  # e.g. "127.0.0.1:9092": Kafka topics ("" = off)
    subject_prefix: str = "exchange.events"  # subjects <prefix>.<source>.<kind>, topics <prefix>.<source>
    format: str = "protobuf"  # payload: "protobuf" (the event's bytes) or "json"
    batch_size: int = 1000  # most events per broker round


@dataclass(frozen=True)
class GatewayConfig:
    """The HTTP/WebSocket gateway (services.gateway): `listen` serves HTTP (REST /api/v3 and the
    WebSocket streams), `admin_listen` gRPC (GatewayAdminService and health)."""

    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:50091"
    advertise: str = ""  # the address others dial for admin_listen ("" = admin_listen)
    # API keys (SQLAlchemy URL); secrets are encrypted with a key kept in the secrets folder.
    database_url: str = "sqlite:///{data_dir}/gateway.sqlite"
    key_file: str = "{data_dir}/secrets/gateway-keys.key"
    # Signed requests: the largest recvWindow accepted (ms) and the default one.
    max_recv_window_ms: int = 60_000
    default_recv_window_ms: int = 5_000
    # Request weight allowed per minute, per API key and per client IP (Binance: 6000 per IP).
    weight_per_minute_key: int = 6_000
    weight_per_minute_ip: int = 6_000
    # Orders waiting for the accounts SubmitOrders stream; most commands per batch.
    max_pending_orders: int = 10_000
    max_batch: int = 500
    # WebSocket: messages queued per connection before a slow consumer is disconnected.
    ws_buffer: int = 1_000
    # WebSocket connections open at once per client IP (past it: closed with code 1013 and the reason),
    # and listen keys (user data streams, services.gateway.listenkeys) per API key.
    ws_connections_per_ip: int = 300
    ws_streams_per_connection: int = 200  # market streams one connection may subscribe to
    listen_keys_per_api_key: int = 10
    # A MARKET BUY by quantity spends at most best ask x (1 + this, in basis points) x quantity
    # (services.gateway.market_buy).
    market_buy_price_cap_bps: int = 500
    # Worker processes serving `listen` together (SO_REUSEPORT): the first one also serves admin_listen
    # and starts the others; rate limits, the replay guard, API keys and listen keys hold across them
    # (services.gateway.shared). 1 on a machine the whole exchange shares (services.gateway.workers).
    workers: int = 1


@dataclass(frozen=True)
class QuantizerConfig:
    """The hosted-strategy service (services.quantizer)."""

    source: str = "quantizer-0"
    listen: str = "127.0.0.1:50101"
    advertise: str = ""  # the address others dial ("" = listen, a wildcard host as 127.0.0.1)
    metrics_listen: str = ""
    snapshot_every: int = 50_000
    # Per user: strategies not stopped or failed, and the capital they hold per asset (decimal strings,
    # e.g. {USDT = "1000000"}; an asset not named is not limited).
    max_strategies_per_user: int = 20
    max_capital: Mapping[str, str] = field(default_factory=dict)
    # Default slippage cap of a strategy's market sells (stop, exits): a limit IOC at last x (1 - cap).
    stop_slippage: str = "0.05"
    # Clock ticks for recurring buys and cooldowns (milliseconds).
    timer_interval_ms: int = 1_000
    # Order placements and cancels in flight at once (each strategy's own stay in order; they go to
    # accounts in batches over one SubmitOrders stream, or as unary calls with order_stream = false).
    executor_workers: int = 64
    order_stream: bool = True


@dataclass(frozen=True)
class SecurityConfig:
    # "local": plaintext, servers accept loopback peers only (the embedded default);
    # "tls": TLS with the certificate below (across machines).
    transport: str = "local"
    # The credentials file every process of the exchange reads (generated on first run).
    credentials: str = "{data_dir}/secrets/credentials.json"
    # TLS: PEM files; when empty, a CA and a server certificate for tls_hosts are generated under
    # {data_dir}/secrets/tls/ on first run.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the clients of this configuration find leaders (cluster mode; see the module docstring)."""

    zookeeper: str = ""  # "host:port,host:port,..."; "" = no ZooKeeper: the configured addresses
    zk_root: str = "/ostrakon"
    session_timeout_s: float = 10.0  # the clients' own ZooKeeper session (they lead nothing)


@dataclass(frozen=True)
class ExchangeConfig:
    path: Path
    data_dir: Path
    catalog: MarketCatalog
    accounts: AccountsConfig
    shards: Mapping[str, ShardConfig]
    history: HistoryConfig
    market: MarketDataConfig
    security: SecurityConfig = field(default_factory=SecurityConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def accounts_sources(self) -> list[str]:
        """The source names of every accounts shard, by index."""
        return [self.accounts.shard_source(i) for i in range(self.accounts.shards)]

    def accounts_shard(self, which: int | str = 0) -> AccountsConfig:
        """The [accounts] section as accounts shard `which` (an index or a source name) sees it: its
        source, listen, advertise and metrics addresses."""
        a = self.accounts
        sources = self.accounts_sources()
        if isinstance(which, str):
            if which not in sources:
                raise ConfigError(
                    f"no accounts shard {which!r} in {self.path}; shards are {', '.join(sources)}"
                )
            index = sources.index(which)
        else:
            index = which
            if not 0 <= index < a.shards:
                raise ConfigError(f"no accounts shard {index} in {self.path} ({a.shards} configured)")
        if a.shards == 1:
            return a
        listen = a.shard_listen[index] if a.shard_listen else _port_plus(a.listen, index)
        advertise = a.shard_advertise[index] if a.shard_advertise else a.advertise if index == 0 else ""
        metrics = _port_plus(a.metrics_listen, index) if a.metrics_listen else ""
        return replace(
            a, source=sources[index], listen=listen, advertise=advertise, metrics_listen=metrics, index=index
        )

    def shard(self, name: str) -> ShardConfig:
        try:
            return self.shards[name]
        except KeyError:
            raise ConfigError(f"no shard {name!r} in {self.path}") from None

    def service_dir(self, name: str) -> Path:
        return self.data_dir / name

    def history_url(self) -> str:
        return self.history.database_url.replace("{data_dir}", str(self.data_dir))

    def path_of(self, template: str) -> Path:
        """A configured path: {data_dir} substituted, relative paths taken from the config's folder."""
        p = Path(template.replace("{data_dir}", str(self.data_dir)))
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def credentials_path(self) -> Path:
        """EXCHANGE_CREDENTIALS overrides the configured file (clients run from anywhere)."""
        import os

        override = os.environ.get("EXCHANGE_CREDENTIALS")
        return Path(override) if override else self.path_of(self.security.credentials)


def load_config(path: str | Path) -> ExchangeConfig:
    p = Path(path).resolve()
    with open(p, "rb") as f:
        data = tomllib.load(f)
    return config_from_dict(data, base_dir=p.parent, path=p)


def config_from_dict(data: Mapping[str, Any], *, base_dir: Path, path: Path | None = None) -> ExchangeConfig:
    data_dir = Path(str(data.get("data_dir", "data")))
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()
    catalog = MarketCatalog.from_dict(data, default_shard=DEFAULT_SHARD)
    raw_shards = data.get("shards") or {DEFAULT_SHARD: {"listen": "127.0.0.1:50061"}}
    if not isinstance(raw_shards, Mapping):
        raise ConfigError("[shards] must be a table of shard tables")
    assignment = {
        name: s["markets"] for name, s in raw_shards.items() if isinstance(s, Mapping) and "markets" in s
    }
    if assignment:
        catalog = catalog.with_shards(assignment)
    shards: dict[str, ShardConfig] = {}
    for name, raw in raw_shards.items():
        raw = dict(raw)
        raw.pop("markets", None)
        shards[name] = _build(ShardConfig, {"name": name, **raw}, f"shards.{name}")
    for market in catalog.markets.values():
        if market.shard not in shards:
            raise ConfigError(
                f"market {market.symbol} is owned by shard {market.shard!r}, which is not configured"
            )
    return ExchangeConfig(
        path=path or base_dir / "exchange.toml",
        data_dir=data_dir,
        catalog=catalog,
        accounts=_accounts(data.get("accounts", {})),
        shards=shards,
        history=_build(HistoryConfig, data.get("history", {}), "history"),
        market=_build(MarketDataConfig, data.get("market", {}), "market"),
        security=_security(data.get("security", {})),
        gateway=_build(GatewayConfig, data.get("gateway", {}), "gateway"),
        quantizer=_build(QuantizerConfig, data.get("quantizer", {}), "quantizer"),
        exporter=_build(ExporterConfig, data.get("exporter", {}), "exporter"),
        cluster=_build(ClusterConfig, data.get("cluster", {}), "cluster"),
    )


def _port_plus(address: str, n: int) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"[accounts] {address!r} has no port to number the accounts shards from")
    return f"{host}:{int(port) + n}"


def _accounts(raw: Any) -> AccountsConfig:
    if isinstance(raw, Mapping) and "index" in raw:
        raise ConfigError("[accounts] unknown keys: ['index']")
    cfg: AccountsConfig = _build(AccountsConfig, raw, "accounts")
    cfg = replace(cfg, shard_listen=tuple(cfg.shard_listen), shard_advertise=tuple(cfg.shard_advertise))
    lists = {"shard_listen": cfg.shard_listen, "shard_advertise": cfg.shard_advertise}
    if not isinstance(cfg.shards, int) or cfg.shards < 1:
        raise ConfigError(f"[accounts] shards must be a whole number >= 1, not {cfg.shards!r}")
    for key, values in lists.items():
        if values and len(values) != cfg.shards:
            raise ConfigError(f"[accounts] {key} names {len(values)} addresses for {cfg.shards} shards")
    if cfg.shards > 1 and cfg.source != "accounts-0":
        raise ConfigError('[accounts] with several shards their sources are "accounts-<i>": leave source out')
    return cfg


def _security(raw: Any) -> SecurityConfig:
    cfg: SecurityConfig = _build(SecurityConfig, raw, "security")
    if cfg.transport not in ("local", "tls"):
        raise ConfigError(f'[security] transport must be "local" or "tls", not {cfg.transport!r}')
    if isinstance(cfg.tls_hosts, list):
        cfg = SecurityConfig(**{**cfg.__dict__, "tls_hosts": tuple(cfg.tls_hosts)})
    return cfg


def _build(cls: type[Any], raw: Any, section: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}] must be a table")
    known = set(cls.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"[{section}] unknown keys: {sorted(unknown)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"[{section}] {exc}") from exc
