"""The history process: migrate, consume, serve.

    app = HistoryApp(config, page_token_key=key)  # engine from config.history_url()
    await app.start()               # alembic upgrade head, gRPC server, one consumer per source
    ...
    await app.stop()

Sources: every shard in config.shards (MatchingService.StreamEvents) and every accounts shard
(config.accounts_sources(): "accounts-0", ...; AccountsService.StreamAccountEvents), each with its own
checkpoint, at the addresses of services.clients.resolver (each section's
advertise address, by default its listen address).

Health: HistoryService is SERVING while every source stores its events; while a source's next event
cannot be stored (StreamConsumer.failure) it is NOT_SERVING, and GetHistoryStatus names the source, the
event and why. Queries keep being answered either way.
"""

from __future__ import annotations

import asyncio
import logging

from exchange.v1 import history_service_pb2_grpc

from services.clients.channels import Connection
from services.clients.discovery import learn_addresses, resolver_for
from services.clients.resolver import Resolver, accounts_name
from services.common.config import ExchangeConfig
from services.common.config_watch import ConfigWatch
from services.common.consumers import SourceFailure, set_health
from services.common.markets import MarketCatalog
from services.common.rpc import ServerHandle, start_metrics, start_server
from services.history.consumer import DbWorker, StreamConsumer
from services.history.queries import HistoryQueries
from services.history.service import SERVICE_NAME, HistoryServicer
from services.history.store import HistoryStore, create_history_engine, describe_url, migrate

log = logging.getLogger("services.history")


class HistoryApp:
    def __init__(
        self,
        config: ExchangeConfig,
        *,
        page_token_key: bytes,
        database_url: str | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver or resolver_for(config)
        self.engine = create_history_engine(database_url or config.history_url())
        self.database = describe_url(self.engine)
        self.store = HistoryStore(self.engine)
        self.queries = HistoryQueries(self.engine, config.catalog, page_token_key=page_token_key)
        self.servicer = HistoryServicer(
            self.queries,
            config.catalog,
            checkpoints=self.store.checkpoints,
            database=self.database,
            failures=self.failures,
        )
        self.worker = DbWorker()
        self.consumers = [self._shard_consumer(name) for name in sorted(config.shards)]
        # Accounts sharded by user: one consumer (and checkpoint) per accounts shard's event stream.
        self.consumers += [
            StreamConsumer(
                source,
                "accounts",
                Connection(accounts_name(i), self.resolver),
                self.store,
                self.worker,
                batch_events=config.history.batch_size,
                on_failure_change=self._update_health,
            )
            for i, source in enumerate(config.accounts_sources())
        ]
        # A matching shard (or market) added to the configuration while running is followed too.
        self.watch = ConfigWatch(config.path, self._reconfigure)
        self.server: ServerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def _shard_consumer(self, name: str) -> StreamConsumer:
        return StreamConsumer(
            name,
            "matching",
            Connection(name, self.resolver),
            self.store,
            self.worker,
            batch_events=self.config.history.batch_size,
            on_failure_change=self._update_health,
        )

    def _reconfigure(self, config: ExchangeConfig) -> None:
        """A reloaded configuration (services.common.config_watch): follow the shards it adds, answer
        queries on the markets and assets it adds."""
        learn_addresses(self.resolver, config)
        known, new = self.queries.catalog, config.catalog  # additions only (config_watch)
        catalog = MarketCatalog({**known.assets, **new.assets}, {**known.markets, **new.markets}, new.shards)
        self.queries.catalog = self.servicer.catalog = catalog
        followed = {c.source for c in self.consumers}
        for name in sorted(set(config.shards) - followed):
            consumer = self._shard_consumer(name)
            self.consumers.append(consumer)
            log.info("following a shard added to the configuration", extra={"source": name})
            if self._tasks:  # started: follow it now (else start() does)
                self._tasks.append(asyncio.create_task(consumer.run(), name=f"history-consume-{name}"))
        self.config = config

    def failures(self) -> dict[str, SourceFailure]:
        """The sources whose next event cannot be stored."""
        return {c.source: c.failure for c in self.consumers if c.failure is not None}

    async def _update_health(self) -> None:
        if not self._stopping:
            await set_health(self.server, SERVICE_NAME, self.failures())

    async def start(self) -> None:
        await asyncio.to_thread(migrate, self.engine)
        self.server = await start_server(
            self.config.history.listen,
            [(history_service_pb2_grpc.add_HistoryServiceServicer_to_server, self.servicer)],
            [SERVICE_NAME],
        )
        start_metrics(self.config.history.metrics_listen)
        self._tasks = [
            asyncio.create_task(c.run(), name=f"history-consume-{c.source}") for c in self.consumers
        ]
        self._tasks.append(asyncio.create_task(self.watch.run(), name="history-config-watch"))

    async def stop(self) -> None:
        self._stopping = True
        if self.server is not None:
            await self.server.set_serving(False)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.worker.close)  # the write in progress commits (or not) as a whole
        if self.server is not None:
            await self.server.stop(grace=1.0)
        self.engine.dispose()
