"""The cluster description (deploy/cluster.toml, documented in deploy/README.md) and the exchange
configuration generated from it.

    exchange = "exchange.toml"          # the exchange config it builds on (markets, assets, settings)
    data_dir = "data/cluster-run"       # relative to this file: everything the cluster writes

    [zookeeper]                         # hosts (required), start, root, session_timeout,
    hosts = ["127.0.0.1:2191", ...]     # peer_port, election_port
    [nats]                              # urls (required), start, cluster_port, stream_replicas,
                                        # stream_prefix
    urls = ["nats://127.0.0.1:4301", ...]

    [shards.matching-0]                 # pairs and replicas (required), snapshot_every, ...
    pairs = ["BTC_USDT", "ETH_USDT"]
    replicas = [{ member = "a", listen = "127.0.0.1:50061" }, { member = "b", listen = ... }]

    [accounts]                          # replicas (optional: each accounts shard as leader +
    shards = 2                          # followers), shards (accounts sharded by user, default
    replicas = [{ member = "a", listen = "127.0.0.1:50051" }, ...]    # the base's or 1), the rest
                                        # as in the exchange config
    [history]                           # database_url (required), create_database, the rest as in
                                        # the exchange config
    [market] [gateway] [quantizer] [exporter] [security]    # as in the exchange config

`load_description(path)` parses and validates it: a DescriptionError (a ConfigError) names the file,
the table and the key. `exchange_config_dict` builds the exchange config the services run on: the
base file's markets and settings, the cluster's `data_dir`, one [shards.<name>] per shard with its
pairs as `markets` and its first replica's address (what a static resolver dials first; a follower
redirects writes to the leader it names), and the service tables merged over the base's.

Accounts replicas: `[accounts] replicas` describes the replicas of every accounts shard. With one
shard (the default) they are accounts-0's (or the configured `source`'s). With `shards = N` (accounts
sharded by user, in the description's [accounts] or the base's) shard accounts-<i> runs the same
members, each port of `listen`, `advertise` and `metrics_listen` moved by i x len(replicas): replicas
a, b at 50051, 50052 make accounts-0 a, b at 50051, 50052 and accounts-1 a, b at 50053, 50054. Each
shard is its own election (`accounts_name(i)`: "accounts", "accounts-1", ...; what the clients
resolve in ZooKeeper) and its own JetStream command stream (its source, "accounts-<i>"); the
generated config gives each shard its first replica's address (`[accounts] shard_listen`,
`shard_advertise`) as the static fallback. With replicas the addresses are the replicas': `listen`,
`advertise`, `metrics_listen`, `shard_listen` and `shard_advertise` in [accounts] are refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from services.clients.resolver import advertise_address
from services.common.config import ExchangeConfig, config_from_dict
from services.common.markets import ConfigError

NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SERVICE_TABLES = ("accounts", "history", "market", "gateway", "quantizer", "exporter", "security")
SHARD_OPTIONS = ("snapshot_every", "expiry_interval_ms", "max_queue")
REPLICA_KEYS = ("member", "listen", "advertise", "metrics_listen")
GENERATED_CONFIG = "exchange.toml"  # in the cluster's data_dir
ACCOUNTS_SOURCE = "accounts-0"  # the first accounts shard's source (with the default `source`)
# [accounts] keys that replicas replace (each replica has its own listen, advertise, metrics_listen).
ACCOUNTS_ADDRESS_KEYS = ("listen", "advertise", "metrics_listen", "shard_listen", "shard_advertise")
MAX_ACCOUNTS_SHARDS = 64
# Matching shard names that are other services' names in ZooKeeper, the resolver and the streams.
RESERVED_SHARD = re.compile(r"^(accounts(-\d+)?|history|market)$")


class DescriptionError(ConfigError):
    """The cluster description is invalid (the message names the file, the table and the key)."""


@dataclass(frozen=True)
class ReplicaSpec:
    service: str  # the matching shard ("matching-0") or the accounts shard's source ("accounts-1")
    member: str
    listen: str
    advertise: str = ""
    metrics_listen: str = ""
    kind: str = "matching"  # or "accounts"

    @property
    def name(self) -> str:
        return f"{self.service}/{self.member}"

    @property
    def address(self) -> str:
        """Where others dial it (and what it publishes in ZooKeeper when it leads)."""
        return advertise_address(self.listen, self.advertise)


@dataclass(frozen=True)
class ShardSpec:
    name: str
    pairs: tuple[str, ...]
    replicas: tuple[ReplicaSpec, ...]
    options: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ZooKeeperSpec:
    hosts: tuple[str, ...]
    start: bool = True
    root: str = "/ostrakon"
    session_timeout: float = 2.0
    peer_port: int = 2888
    election_port: int = 3888

    @property
    def connect_string(self) -> str:
        return ",".join(self.hosts)


@dataclass(frozen=True)
class NatsSpec:
    urls: tuple[str, ...]
    start: bool = True
    cluster_port: int = 6301
    stream_replicas: int = 3
    stream_prefix: str = "ostrakon"  # of the stream names (several exchanges on one NATS)


@dataclass(frozen=True)
class ClusterDescription:
    path: Path
    exchange: Path
    data_dir: Path
    zookeeper: ZooKeeperSpec
    nats: NatsSpec
    shards: tuple[ShardSpec, ...]
    # Every accounts replica, shard by shard (none: accounts runs as the launcher runs it).
    accounts: tuple[ReplicaSpec, ...] = ()
    create_database: bool = True
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # tables for the config
    accounts_shards: int = 1  # with accounts replicas: how many accounts shards run them

    @property
    def replicas(self) -> list[ReplicaSpec]:
        """Every matching replica, shard by shard."""
        return [r for s in self.shards for r in s.replicas]

    def accounts_groups(self) -> list[tuple[str, tuple[ReplicaSpec, ...]]]:
        """Per accounts shard, by index (its election is accounts_name(index)): its source (the name
        of its command stream) and its replicas. Empty without accounts replicas."""
        out: dict[str, list[ReplicaSpec]] = {}
        for r in self.accounts:
            out.setdefault(r.service, []).append(r)
        return [(source, tuple(rs)) for source, rs in out.items()]

    @property
    def database_url(self) -> str:
        return str(self.services["history"]["database_url"])

    def pair_map(self) -> dict[str, str]:
        return {p: s.name for s in self.shards for p in s.pairs}

    @property
    def exchange_config_path(self) -> Path:
        return self.data_dir / GENERATED_CONFIG


# --- parsing -----------------------------------------------------------------------------------------


class _Checker:
    """Typed reads of one description's tables; every failure names the file, table and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, what: str) -> DescriptionError:
        return DescriptionError(f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}")

    def table(self, raw: Any, where: str, known: tuple[str, ...] | None, *required: str) -> dict[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(raw) - set(known)) if known is not None else []
        if unknown:
            raise self.fail(where, f"unknown key {', '.join(unknown)} (known: {', '.join(known or ())})")
        for k in required:
            if k not in raw:
                raise self.fail(where, f"{k} is required")
        return dict(raw)

    def string(self, raw: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
        v = raw.get(key, default)
        if not isinstance(v, str) or (default is None and not v):
            raise self.fail(where, f"{key} must be a non-empty string, not {v!r}")
        return v

    def boolean(self, raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        v = raw.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(where, f"{key} must be true or false, not {v!r}")
        return v

    def integer(self, raw: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
        v = raw.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.fail(where, f"{key} must be a whole number from {lo} to {hi}, not {v!r}")
        return v

    def strings(self, raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        v = raw.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise self.fail(where, f"{key} must be a non-empty list of strings, not {v!r}")
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise self.fail(where, f"{key} names {', '.join(dup)} more than once")
        return tuple(v)

    def address(self, value: str, where: str, key: str) -> str:
        host, sep, port = value.split("://", 1)[-1].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.fail(where, f"{key} {value!r} is not host:port")
        return value

    def local_ports(self, addresses: tuple[str, ...], where: str, key: str) -> None:
        """start = true: services.cluster.servers runs the nodes here, on consecutive loopback ports."""
        ports = []
        for a in addresses:
            host, _, port = a.split("://", 1)[-1].rpartition(":")
            if host not in ("127.0.0.1", "localhost"):
                raise self.fail(where, f"start = true runs the servers here: {key} {a!r} is not on 127.0.0.1")
            ports.append(int(port))
        if ports != list(range(ports[0], ports[0] + len(ports))):
            raise self.fail(
                where, f"start = true numbers the nodes' ports: {key} must be consecutive, {ports}"
            )

    def replicas(self, raw: Any, where: str, service: str, kind: str = "matching") -> tuple[ReplicaSpec, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "replicas must be a non-empty list of { member, listen } tables")
        out: list[ReplicaSpec] = []
        for i, item in enumerate(raw):
            rw = f"{where} replicas[{i}]"
            r = self.table(item, rw, REPLICA_KEYS, "member", "listen")
            member = self.string(r, "member", rw)
            if not NAME.match(member):
                raise self.fail(rw, f"member {member!r}: a member name is letters, digits, - and _")
            if any(x.member == member for x in out):
                raise self.fail(rw, f"member {member} is named twice")
            spec = ReplicaSpec(
                service,
                member,
                self.address(self.string(r, "listen", rw), rw, "listen"),
                self.string(r, "advertise", rw, ""),
                self.string(r, "metrics_listen", rw, ""),
                kind,
            )
            if spec.advertise:
                self.address(spec.advertise, rw, "advertise")
            metrics = spec.metrics_listen  # "host:port" or ":port" (on 127.0.0.1, services.common.rpc)
            _, sep, port = metrics.rpartition(":")
            if metrics and not (sep and port.isdigit() and 0 < int(port) < 65536):
                raise self.fail(rw, f"metrics_listen {metrics!r} is not host:port")
            out.append(spec)
        return tuple(out)

    def shifted(self, address: str, by: int, where: str, key: str, source: str) -> str:
        """`address` with its port moved by `by` (an accounts shard's replica; see the docstring)."""
        if not address or not by:
            return address
        head, _, port = address.rpartition(":")
        moved = int(port) + by
        if moved > 65535:
            raise self.fail(where, f"{key} {address!r} moved by {by} for {source} is beyond port 65535")
        return f"{head}:{moved}"

    def accounts_replicas(
        self, acc: dict[str, Any], base: Mapping[str, Any], where: str
    ) -> tuple[tuple[ReplicaSpec, ...], int]:
        """[accounts] replicas for every accounts shard (popping `replicas` from `acc`), and how
        many shards; `acc` gets the generated addresses (see the module docstring)."""
        for key in ACCOUNTS_ADDRESS_KEYS:
            if key in acc:
                raise self.fail(
                    where,
                    f"{key}: with replicas the addresses are the replicas' (their listen, advertise, "
                    f"metrics_listen): leave {key} out",
                )
        merged = {**base, **acc}
        shards = self.integer(merged, "shards", where, 1, 1, MAX_ACCOUNTS_SHARDS)
        source = merged.get("source", ACCOUNTS_SOURCE) if shards == 1 else ACCOUNTS_SOURCE
        first = self.replicas(acc.pop("replicas"), where, str(source), "accounts")
        out: list[ReplicaSpec] = []
        for i in range(shards):
            src = str(source) if shards == 1 else f"accounts-{i}"
            by = i * len(first)
            for j, r in enumerate(first):
                rw = f"{where} replicas[{j}]"
                out.append(
                    ReplicaSpec(
                        src,
                        r.member,
                        self.shifted(r.listen, by, rw, "listen", src),
                        self.shifted(r.advertise, by, rw, "advertise", src),
                        self.shifted(r.metrics_listen, by, rw, "metrics_listen", src),
                        "accounts",
                    )
                )
        heads = out[:: len(first)]  # each shard's first replica: what a static resolver dials first
        if shards == 1:
            acc.update(listen=heads[0].listen, advertise=heads[0].advertise)
        else:
            acc.update(
                shards=shards,
                listen=heads[0].listen,
                advertise=heads[0].advertise,
                shard_listen=[r.listen for r in heads],
                shard_advertise=[r.advertise for r in heads],
            )
        return tuple(out), shards


def load_description(path: str | Path) -> ClusterDescription:
    p = Path(path).resolve()
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise DescriptionError(f"{p}: not TOML: {exc}") from None
    return description_from_dict(data, path=p)


def description_from_dict(data: Mapping[str, Any], *, path: Path) -> ClusterDescription:
    c = _Checker(path)
    top = ("exchange", "data_dir", "zookeeper", "nats", "shards", *SERVICE_TABLES)
    c.table(data, "", top, "zookeeper", "nats", "shards", "history")
    exchange = path.parent / c.string(data, "exchange", "", "exchange.toml")
    if not exchange.is_file():
        raise c.fail("", f"exchange: no file {exchange}")
    data_dir = path.parent / c.string(data, "data_dir", "", "data/cluster-run")

    w = "[zookeeper]"
    z = c.table(data["zookeeper"], w, tuple(ZooKeeperSpec.__dataclass_fields__), "hosts")
    hosts = c.strings(z, "hosts", w)
    for h in hosts:
        c.address(h, w, "hosts entry")
    timeout = z.get("session_timeout", 2.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 1.0 <= timeout <= 60.0:
        raise c.fail(w, f"session_timeout must be seconds from 1 to 60, not {timeout!r}")
    root = c.string(z, "root", w, "/ostrakon")
    if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", root):
        raise c.fail(w, f"root must be an absolute ZooKeeper path such as /ostrakon, not {root!r}")
    zk = ZooKeeperSpec(
        hosts,
        c.boolean(z, "start", w, True),
        root,
        float(timeout),
        c.integer(z, "peer_port", w, 2888, 1, 65535),
        c.integer(z, "election_port", w, 3888, 1, 65535),
    )
    if zk.start:
        c.local_ports(hosts, w, "hosts")

    w = "[nats]"
    n = c.table(data["nats"], w, tuple(NatsSpec.__dataclass_fields__), "urls")
    urls = c.strings(n, "urls", w)
    for u in urls:
        if not u.startswith(("nats://", "tls://")):
            raise c.fail(w, f"urls entry {u!r} is not nats://host:port")
        c.address(u, w, "urls entry")
    nats = NatsSpec(
        urls,
        c.boolean(n, "start", w, True),
        c.integer(n, "cluster_port", w, 6301, 1, 65535),
        c.integer(n, "stream_replicas", w, 3, 1, 5),
        c.string(n, "stream_prefix", w, "ostrakon"),
    )
    if not NAME.match(nats.stream_prefix):
        raise c.fail(w, f"stream_prefix must be letters, digits, - and _, not {nats.stream_prefix!r}")
    if nats.start:
        c.local_ports(urls, w, "urls")
    if nats.stream_replicas > len(urls):
        raise c.fail(
            w, f"stream_replicas = {nats.stream_replicas} needs as many servers; urls has {len(urls)}"
        )

    services = {k: c.table(data[k], f"[{k}]", None) for k in SERVICE_TABLES if k in data}
    history = services["history"]
    c.string(history, "database_url", "[history]")
    create_database = c.boolean(history, "create_database", "[history]", True)
    history.pop("create_database", None)
    accounts: tuple[ReplicaSpec, ...] = ()
    accounts_shards = 1
    if "replicas" in services.get("accounts", {}):  # accounts in cluster mode, like a matching shard
        base = _read_base(path, exchange).get("accounts", {})
        accounts, accounts_shards = c.accounts_replicas(
            services["accounts"], base if isinstance(base, Mapping) else {}, "[accounts]"
        )

    shards_raw = c.table(data["shards"], "[shards]", None)
    if not shards_raw:
        raise c.fail("[shards]", "describe at least one shard")
    shards: list[ShardSpec] = []
    owner: dict[str, str] = {}
    for name, raw in shards_raw.items():
        w = f"[shards.{name}]"
        if not NAME.match(name):
            raise c.fail(w, "a shard name is letters, digits, - and _")
        if RESERVED_SHARD.match(name):
            raise c.fail(
                w, "accounts, accounts-<i>, history and market name other services: not a matching shard"
            )
        s = c.table(raw, w, ("pairs", "replicas", *SHARD_OPTIONS), "pairs", "replicas")
        pairs = c.strings(s, "pairs", w)
        for pair in pairs:
            if pair in owner:
                raise c.fail(w, f"pair {pair} is on two shards: {owner[pair]} and {name}")
            owner[pair] = name
        options = {k: c.integer(s, k, w, 0, 0, 2**31) for k in SHARD_OPTIONS if k in s}
        shards.append(ShardSpec(name, pairs, c.replicas(s["replicas"], w, name), options))

    desc = ClusterDescription(
        path,
        exchange,
        data_dir,
        zk,
        nats,
        tuple(shards),
        accounts,
        create_database,
        services,
        accounts_shards,
    )
    _check_against_config(c, desc, owner)
    return desc


def _check_against_config(c: _Checker, desc: ClusterDescription, owner: Mapping[str, str]) -> None:
    """The pairs are the base's markets, each on a shard; no two processes share an address."""
    markets = {m.get("symbol") for m in _base(desc).get("markets", []) if isinstance(m, Mapping)}
    for pair, shard in owner.items():
        if pair not in markets:
            raise c.fail(f"[shards.{shard}]", f"pair {pair} is not a market of {desc.exchange}")
    unplaced = sorted(str(m) for m in markets - set(owner))
    if unplaced:
        raise c.fail(
            "[shards]", f"market {', '.join(unplaced)} of {desc.exchange.name} is on no shard's pairs"
        )
    config = exchange_config(desc)
    sources = [source for source, _ in desc.accounts_groups()]
    if desc.accounts and sources != config.accounts_sources():  # by construction: a bug otherwise
        raise c.fail(
            "[accounts]", f"replicas of {sources}, but the config's shards are {config.accounts_sources()}"
        )
    from services.launcher import plan  # the other services' addresses

    taken: dict[str, str] = {}
    replaced = {"services.matching", "services.accounts"} if desc.accounts else {"services.matching"}
    others = [(ch.name, ch.address) for ch in plan(config) if ch.module not in replaced]
    for name, address in [(r.name, r.address) for r in (*desc.replicas, *desc.accounts)] + others:
        if address in taken:
            raise c.fail("", f"{name} and {taken[address]} are both at {address}")
        taken[address] = name


# --- the generated exchange config -----------------------------------------------------------------


def _read_base(path: Path, exchange: Path) -> dict[str, Any]:
    try:
        with open(exchange, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise DescriptionError(f"{path}: exchange: {exchange} is not TOML: {exc}") from None


def _base(desc: ClusterDescription) -> dict[str, Any]:
    return _read_base(desc.path, desc.exchange)


def exchange_config_dict(desc: ClusterDescription) -> dict[str, Any]:
    """The exchange config of the cluster, as a TOML document's tables."""
    base = _base(desc)
    out: dict[str, Any] = {k: v for k, v in base.items() if k != "shards"}
    out["data_dir"] = str(desc.data_dir)
    out["shards"] = {}
    for s in desc.shards:
        first = s.replicas[0]
        table: dict[str, Any] = {"listen": first.listen, "markets": list(s.pairs), **s.options}
        if first.advertise:
            table["advertise"] = first.advertise
        out["shards"][s.name] = table
    for section, settings in desc.services.items():
        out[section] = {**base.get(section, {}), **settings}
    # Every client of the generated config finds the leaders in ZooKeeper (services.clients.discovery).
    out["cluster"] = {
        **base.get("cluster", {}),
        "zookeeper": desc.zookeeper.connect_string,
        "zk_root": desc.zookeeper.root,
    }
    return out


def exchange_config(desc: ClusterDescription) -> ExchangeConfig:
    """The generated exchange config, validated (without writing it)."""
    try:
        return config_from_dict(
            exchange_config_dict(desc), base_dir=desc.data_dir, path=desc.exchange_config_path
        )
    except ConfigError as exc:
        raise DescriptionError(f"{desc.path}: the exchange config it generates is invalid: {exc}") from None


def write_exchange_config(desc: ClusterDescription) -> Path:
    """Write the generated exchange config to <data_dir>/exchange.toml (atomically); its path."""
    exchange_config(desc)
    path = desc.exchange_config_path
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# Generated from {desc.path} and {desc.exchange} by services.cluster.deploy: edit those.\n"
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(head + tomli_w.dumps(exchange_config_dict(desc)))
    tmp.replace(path)
    return path
