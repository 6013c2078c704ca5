"""The resolver every client of a configuration uses: `resolver_for(config)`.

Without `[cluster] zookeeper` (the embedded default) it is StaticResolver.from_config: the addresses
of the file. With it, a ZooKeeperResolver over that static one: each matching shard's and accounts
shard's leader is read from ZooKeeper and followed with watches (a failover or a replica moved to
another address reaches every client without a restart), and every other name (history, market, a
shard not elected yet) falls back to the file. The client library's NOT_LEADER redirect refreshes it
(services.clients.base).

Reaching ZooKeeper is part of starting: a client that cannot connect (within 15 s) raises, and its
supervisor restarts it (a service dialing the file's addresses while the cluster's leaders are
elsewhere would only be refused).
"""

from __future__ import annotations

from services.clients.resolver import Resolver, StaticResolver, config_addresses
from services.common.config import ExchangeConfig


def resolver_for(config: ExchangeConfig) -> Resolver:
    """The resolver for `config`'s clients (see the module docstring)."""
    static = StaticResolver.from_config(config)
    cluster = config.cluster
    if not cluster.zookeeper:
        return static
    from services.clients.zk_resolver import ZooKeeperResolver  # kazoo: only in cluster mode

    return ZooKeeperResolver(
        cluster.zookeeper,
        root=cluster.zk_root,
        fallback=static,
        session_timeout_s=cluster.session_timeout_s,
    )


def learn_addresses(resolver: Resolver, config: ExchangeConfig) -> None:
    """Take the addresses of a reloaded configuration (services.common.config_watch: a shard added
    while running) into `resolver`: a StaticResolver's, or the static fallback of a ZooKeeperResolver
    (whose leaders come from ZooKeeper anyway). Connections to a changed address redial it."""
    static = resolver if isinstance(resolver, StaticResolver) else getattr(resolver, "fallback", None)
    if not isinstance(static, StaticResolver):
        return
    for name, address in config_addresses(config).items():
        static.set(name, address)
