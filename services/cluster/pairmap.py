"""The pair map: which matching shard owns each market, and the registered matching shards.

In a cluster it lives in ZooKeeper (root `/ostrakon` by default, beside services.cluster.election):

    /ostrakon/pairs/<MARKET>       {"shard": "matching-1", "moving_to": "", "epoch": 3}
    /ostrakon/shards/<shard>       one node per registered matching shard (`add-shard` creates it;
                                   its leader publishes `leader` under it, see services.cluster.election)

`moving_to` is set while services.cluster.operator moves the market (its orders are then refused
retryably), `epoch` counts the changes of the entry. A market without a node is where the
configuration puts it. In the embedded default (no ZooKeeper) the same entries are kept in a JSON
file, `<data_dir>/pairs.json` (FilePairMap).

The map is what tools and clients read to find a market's shard (`ZooKeeperPairMap.watch` tells them
of changes). It is not what accounts routes by: accounts journals each route change itself
(RouteMarketCommand, services.accounts.machine), so that its replay routes as it did; the operator
changes both, the journals first.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from services.cluster.election import DEFAULT_ROOT, connect, shard_path


@dataclass(frozen=True)
class PairEntry:
    shard: str
    moving_to: str = ""
    epoch: int = 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> PairEntry:
        d = json.loads(data)
        return cls(str(d["shard"]), str(d.get("moving_to", "")), int(d.get("epoch", 0)))


class PairMap(Protocol):
    def get(self, market: str) -> PairEntry | None: ...

    def entries(self) -> dict[str, PairEntry]: ...

    def put(self, market: str, shard: str, moving_to: str = "") -> PairEntry: ...

    def shards(self) -> list[str]: ...

    def add_shard(self, shard: str) -> bool: ...


def pairs_path(root: str) -> str:
    return f"{root.rstrip('/')}/pairs"


class ZooKeeperPairMap:
    """The pair map in ZooKeeper. Changes are compare-and-set on the node's version (two operators
    cannot interleave their writes of one market)."""

    def __init__(
        self,
        hosts: str = "",
        *,
        client: KazooClient | None = None,
        root: str = DEFAULT_ROOT,
        session_timeout_s: float = 10.0,
    ) -> None:
        if client is None and not hosts:
            raise ValueError("ZooKeeperPairMap needs hosts or a client")
        self.zk = client or connect(hosts, session_timeout_s)
        self._own_client = client is None
        self.root = root.rstrip("/")
        self.zk.ensure_path(pairs_path(self.root))
        self.zk.ensure_path(f"{self.root}/shards")

    def _path(self, market: str) -> str:
        return f"{pairs_path(self.root)}/{market}"

    def get(self, market: str) -> PairEntry | None:
        try:
            data, _ = self.zk.get(self._path(market))
        except NoNodeError:
            return None
        return PairEntry.decode(data)

    def entries(self) -> dict[str, PairEntry]:
        out: dict[str, PairEntry] = {}
        for market in sorted(self.zk.get_children(pairs_path(self.root))):
            entry = self.get(market)
            if entry is not None:
                out[market] = entry
        return out

    def put(self, market: str, shard: str, moving_to: str = "") -> PairEntry:
        """Set a market's entry (a new epoch; the entry as it is when it says so already)."""
        path = self._path(market)
        while True:
            try:
                data, stat = self.zk.get(path)
            except NoNodeError:
                entry = PairEntry(shard, moving_to, 1)
                try:
                    self.zk.create(path, entry.encode(), makepath=True)
                    return entry
                except NodeExistsError:
                    continue
            before = PairEntry.decode(data)
            if (before.shard, before.moving_to) == (shard, moving_to):
                return before  # already so: no change, no new epoch
            entry = PairEntry(shard, moving_to, before.epoch + 1)
            try:
                self.zk.set(path, entry.encode(), version=stat.version)
                return entry
            except BadVersionError:
                continue

    def shards(self) -> list[str]:
        return sorted(self.zk.get_children(f"{self.root}/shards"))

    def add_shard(self, shard: str) -> bool:
        """Register a matching shard (True when it was not yet)."""
        try:
            self.zk.create(shard_path(self.root, shard), b"", makepath=True)
            return True
        except NodeExistsError:
            return False

    def watch(self, callback: Callable[[str, PairEntry | None], None]) -> None:
        """Call `callback(market, entry)` for every market's entry now and whenever one changes (from
        kazoo's thread: keep it short)."""
        watched: set[str] = set()
        lock = threading.Lock()

        def on_children(children: list[str]) -> None:
            for market in children:
                with lock:
                    if market in watched:
                        continue
                    watched.add(market)

                DataWatch(self.zk, self._path(market), self._data_watcher(market, callback))

        ChildrenWatch(self.zk, pairs_path(self.root), on_children)

    @staticmethod
    def _data_watcher(
        market: str, callback: Callable[[str, PairEntry | None], None]
    ) -> Callable[[bytes | None, Any], None]:
        # (two parameters: kazoo passes a third, the event, to a function that takes three)
        def on_data(data: bytes | None, _stat: Any) -> None:
            callback(market, PairEntry.decode(data) if data else None)

        return on_data

    def close(self) -> None:
        if self._own_client:
            self.zk.stop()
            self.zk.close()


class FilePairMap:
    """The pair map of the embedded default: a JSON file (`<data_dir>/pairs.json`), replaced
    atomically on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"pairs": {}, "shards": []}
        return data

    def _store(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def get(self, market: str) -> PairEntry | None:
        raw = self._load()["pairs"].get(market)
        return PairEntry(**raw) if raw else None

    def entries(self) -> dict[str, PairEntry]:
        return {m: PairEntry(**raw) for m, raw in sorted(self._load()["pairs"].items())}

    def put(self, market: str, shard: str, moving_to: str = "") -> PairEntry:
        with self._lock:
            data = self._load()
            before = data["pairs"].get(market)
            if before and (before["shard"], before["moving_to"]) == (shard, moving_to):
                return PairEntry(**before)  # already so: no change, no new epoch
            entry = PairEntry(shard, moving_to, (before or {}).get("epoch", 0) + 1)
            data["pairs"][market] = asdict(entry)
            self._store(data)
            return entry

    def shards(self) -> list[str]:
        return sorted(self._load().get("shards", []))

    def add_shard(self, shard: str) -> bool:
        with self._lock:
            data = self._load()
            if shard in data.setdefault("shards", []):
                return False
            data["shards"].append(shard)
            self._store(data)
            return True
