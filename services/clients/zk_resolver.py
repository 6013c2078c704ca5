"""ZooKeeperResolver: the Resolver (services.clients.resolver) for a cluster: each shard's leader
address from ZooKeeper (`/ostrakon/shards/<shard>/leader`, written by services.cluster.election),
followed with kazoo watches; every other name (and a shard without a leader node yet) from a
fallback resolver, such as StaticResolver.from_config.

Watchers are told `(name, address)` when a shard's leader changes ("" while it has none: a
connection should then wait and retry, not dial the old leader).

`refresh(name)` reads a shard's leader node at once instead of waiting for the watch (the client
library calls it after a follower refused a write with NOT_LEADER, services.clients.base); it tells
the watchers too when the leader changed.
"""

from __future__ import annotations

import threading
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from services.clients.resolver import Resolver, UnknownService
from services.cluster.election import DEFAULT_ROOT, LeaderInfo, connect, leader_path


class ZooKeeperResolver(Resolver):
    def __init__(
        self,
        hosts: str = "",
        *,
        client: KazooClient | None = None,
        root: str = DEFAULT_ROOT,
        fallback: Resolver | None = None,
        session_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        if client is None and not hosts:
            raise ValueError("ZooKeeperResolver needs hosts or a client")
        self.zk = client or connect(hosts, session_timeout_s)
        self._own_client = client is None
        self.root = root.rstrip("/")
        self.fallback = fallback
        self._leaders: dict[str, LeaderInfo | None] = {}
        self._watched: set[str] = set()
        self._state = threading.Lock()
        self.zk.ensure_path(f"{self.root}/shards")
        ChildrenWatch(self.zk, f"{self.root}/shards", self._on_shards)

    def _on_shards(self, children: list[str]) -> None:
        for shard in children:
            self._watch_shard(shard)

    def _watch_shard(self, shard: str) -> None:
        with self._state:
            if shard in self._watched:
                return
            self._watched.add(shard)

        def on_leader(data: bytes | None, _stat: Any) -> None:
            self._learn(shard, data)

        DataWatch(self.zk, leader_path(self.root, shard), on_leader)

    def _learn(self, shard: str, data: bytes | None) -> None:
        info = None
        if data:
            try:
                info = LeaderInfo.decode(data)
            except (ValueError, KeyError):
                info = None
        with self._state:
            before = self._leaders.get(shard)
            self._leaders[shard] = info
        if (before.address if before else "") != (info.address if info else ""):
            self._changed(shard, info.address if info else "")

    def refresh(self, name: str) -> str:
        """Read shard `name`'s leader node now (blocking: one ZooKeeper round trip); its address, ""
        when it has none. A name that is not a shard in ZooKeeper is left to the fallback."""
        try:
            data, _ = self.zk.get(leader_path(self.root, name))
        except NoNodeError:
            data = None
        with self._state:
            known = name in self._watched
        if data is not None or known:
            self._learn(name, data)
        if data is not None and not known:
            self._watch_shard(name)
        info = self.leader(name)
        return info.address if info else ""

    def leader(self, shard: str) -> LeaderInfo | None:
        with self._state:
            return self._leaders.get(shard)

    def address(self, name: str) -> str:
        with self._state:
            info = self._leaders.get(name)
        if info is not None:
            return info.address
        if self.fallback is not None:
            return self.fallback.address(name)
        raise UnknownService(name, self.names())

    def names(self) -> list[str]:
        with self._state:
            mine = [n for n, i in self._leaders.items() if i is not None]
        other = self.fallback.names() if self.fallback is not None else []
        return sorted(set(mine) | set(other))

    def canonical(self, name: str) -> str:
        return self.fallback.canonical(name) if self.fallback is not None else name

    def close(self) -> None:
        if self._own_client:
            self.zk.stop()
            self.zk.close()
