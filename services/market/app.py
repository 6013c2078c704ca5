"""The market-data process: restore, consume, serve, snapshot.

State = the latest snapshot under <data_dir>/market/ + the replay of every shard's events after the
snapshot's checkpoints. Snapshots are taken every `snapshot_every` applied events (counted over all
shards) and on shutdown; each holds the checkpoints, so a restart (even after kill -9) resumes exactly
where the snapshot was taken and ignores events it already holds.

Health: MarketService is SERVING while every shard's events apply; while a shard's next event cannot be
applied (ShardConsumer.failure) it is NOT_SERVING (queries keep being answered, from the state as it
was before that event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from exchange.v1 import market_service_pb2, market_service_pb2_grpc

from services.clients.channels import Connection
from services.clients.discovery import learn_addresses, resolver_for
from services.clients.resolver import Resolver
from services.common.config import ExchangeConfig
from services.common.config_watch import ConfigWatch
from services.common.consumers import SourceFailure, set_health
from services.common.rpc import ServerHandle, start_metrics, start_server
from services.common.snapshots import SnapshotStore
from services.market.consumer import ShardConsumer
from services.market.service import Hub, MarketServicer
from services.market.state import Changes, MarketDataState

log = logging.getLogger("services.market")

SERVICE_NAME = market_service_pb2.DESCRIPTOR.services_by_name["MarketService"].full_name


class Snapshotter:
    def __init__(self, store: SnapshotStore, state: MarketDataState, every: int) -> None:
        self.store = store
        self.state = state
        self.every = every
        self.saved = state.applied
        self.pending = 0

    def note(self, events: int) -> None:
        self.pending += events
        if self.every > 0 and self.pending >= self.every:
            self.save()

    def save(self) -> None:
        seq = self.state.applied
        self.pending = 0
        if seq == self.saved:
            return
        t0 = time.perf_counter()
        try:
            data = self.state.snapshot()
            self.store.save(seq, data)
        except OSError as exc:
            log.error("snapshot failed", extra={"seq": seq, "error": str(exc)})
            return
        self.saved = seq
        log.info(
            "snapshot",
            extra={
                "seq": seq,
                "bytes": len(data),
                "ms": round((time.perf_counter() - t0) * 1000, 1),
                "checkpoints": ",".join(f"{k}={v}" for k, v in sorted(self.state.checkpoints.items())),
            },
        )


def restore_state(config: ExchangeConfig, store: SnapshotStore) -> MarketDataState:
    markets = list(config.catalog.markets.values())
    latest = store.latest()
    if latest is None:
        return MarketDataState(markets)
    seq, data = latest
    state = MarketDataState.restore(data, markets)
    log.info("restored snapshot", extra={"seq": seq, "checkpoints": str(state.checkpoints)})
    return state


class MarketDataApp:
    def __init__(
        self, config: ExchangeConfig, *, data_dir: Path | None = None, resolver: Resolver | None = None
    ) -> None:
        self.config = config
        self.store = SnapshotStore(data_dir or config.service_dir("market"))
        self.state = restore_state(config, self.store)
        self.hub = Hub()
        self.servicer = MarketServicer(self.state, self.hub)
        self.snapshotter = Snapshotter(self.store, self.state, config.market.snapshot_every)
        self.resolver = resolver or resolver_for(config)
        self.consumers = [self._shard_consumer(name) for name in sorted(config.shards)]
        # A matching shard or market added to the configuration while running is followed too.
        self.watch = ConfigWatch(config.path, self._reconfigure)
        self.server: ServerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def _shard_consumer(self, name: str) -> ShardConsumer:
        return ShardConsumer(
            name,
            Connection(name, self.resolver),
            self.state,
            self._on_batch,
            on_failure_change=self._update_health,
            on_unknown_markets=self._on_unknown_markets,
        )

    def _on_unknown_markets(self, markets: set[str]) -> None:
        """Events of markets not known here: a market just added (its table in the configuration
        before `exchange cluster add-market`) may not have been noticed yet; look now."""
        config = self.watch.check()
        if config is not None:
            self._reconfigure(config)

    def _reconfigure(self, config: ExchangeConfig) -> None:
        """A reloaded configuration (services.common.config_watch): the markets and shards it adds.
        A market is taken in before its shard is followed, so none of its events is skipped."""
        learn_addresses(self.resolver, config)
        for spec in config.catalog.markets.values():
            if self.state.add_market(spec):
                log.info("market added to the configuration", extra={"market": spec.symbol})
        followed = {c.shard for c in self.consumers}
        for name in sorted(set(config.shards) - followed):
            consumer = self._shard_consumer(name)
            self.consumers.append(consumer)
            log.info("following a shard added to the configuration", extra={"shard": name})
            if self._tasks:  # started: follow it now (else start() does)
                self._tasks.append(asyncio.create_task(consumer.run(), name=f"consume-{name}"))
        self.config = config

    def failures(self) -> dict[str, SourceFailure]:
        """The shards whose next event cannot be applied."""
        return {c.shard: c.failure for c in self.consumers if c.failure is not None}

    async def _update_health(self) -> None:
        if not self._stopping:
            await set_health(self.server, SERVICE_NAME, self.failures())

    def _on_batch(self, changes: Changes) -> None:
        self.servicer.on_changes(changes)
        self.snapshotter.note(changes.events)

    async def start(self) -> None:
        self.server = await start_server(
            self.config.market.listen,
            [(market_service_pb2_grpc.add_MarketServiceServicer_to_server, self.servicer)],
            [SERVICE_NAME],
        )
        start_metrics(self.config.market.metrics_listen)
        self._tasks = [asyncio.create_task(c.run(), name=f"consume-{c.shard}") for c in self.consumers]
        self._tasks.append(asyncio.create_task(self.watch.run(), name="market-config-watch"))

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.hub.close()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        self.snapshotter.save()
