"""The exporter process: one SourceExport per (source, sink); gRPC health (NOT_SERVING while a broker
refuses); sources are every accounts shard ("accounts-0", ...) and every matching shard, followed as
the reader principal."""

from __future__ import annotations

import asyncio
import logging

from services.clients import AccountsClient, MatchingClient
from services.clients.channels import Connection
from services.clients.discovery import resolver_for
from services.clients.resolver import ACCOUNTS, Resolver
from services.common.config import ExchangeConfig
from services.common.consumers import SourceFailure, set_health
from services.common.rpc import ServerHandle, start_metrics, start_server
from services.exporter.exporter import SourceExport
from services.exporter.jetstream import JetStreamSink
from services.exporter.kafka import KafkaSink
from services.exporter.messages import check_format
from services.exporter.sinks import Sink

log = logging.getLogger("services.exporter")


def configured_sinks(config: ExchangeConfig) -> list[Sink]:
    """The brokers to export to (fresh instances: each source gets its own connection and producer, so
    one source's failure and reconnection never disturbs another's publishes)."""
    ex = config.exporter
    sinks: list[Sink] = []
    if ex.nats_url:
        sinks.append(
            JetStreamSink(
                ex.nats_url,
                subject_prefix=ex.subject_prefix,
                stream_prefix=ex.nats_stream_prefix,
                storage=ex.nats_storage,
            )
        )
    if ex.kafka_bootstrap:
        sinks.append(KafkaSink(ex.kafka_bootstrap, topic_prefix=ex.subject_prefix))
    return sinks


class ExporterApp:
    def __init__(self, config: ExchangeConfig, *, resolver: Resolver | None = None) -> None:
        self.config = config
        fmt = check_format(config.exporter.format)
        self.resolver = resolver or resolver_for(config)
        kinds = configured_sinks(config)
        if not kinds:
            raise ValueError("[exporter] needs nats_url or kafka_bootstrap")
        self.sinks: list[Sink] = []
        self.connections: list[Connection] = []
        self.exports: list[SourceExport] = []
        for i in range(len(kinds)):
            for shard in sorted(config.shards):
                conn = Connection(shard, self.resolver)
                self.connections.append(conn)
                events = MatchingClient(conn).events(source=shard)
                self.exports.append(self._export(shard, events, self._sink(i), fmt))
            conn = Connection(ACCOUNTS, self.resolver)
            self.connections.append(conn)
            accounts = AccountsClient(conn)  # sharded by user: one event stream per accounts shard
            for source in config.accounts_sources():
                self.exports.append(self._export(source, accounts.account_events(source), self._sink(i), fmt))
        self.server: ServerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def _sink(self, index: int) -> Sink:
        sink = configured_sinks(self.config)[index]
        self.sinks.append(sink)
        return sink

    def _export(self, source: str, events: object, sink: Sink, fmt: str) -> SourceExport:
        return SourceExport(
            source,
            events,  # type: ignore[arg-type]
            sink,
            fmt=fmt,
            batch_size=self.config.exporter.batch_size,
            on_failure_change=self._update_health,
        )

    def failures(self) -> dict[str, SourceFailure]:
        return {e.tracker.source: e.failure for e in self.exports if e.failure is not None}

    async def _update_health(self) -> None:
        if not self._stopping:
            await set_health(self.server, "", self.failures())

    async def start(self) -> None:
        self.server = await start_server(self.config.exporter.listen, [], [])
        start_metrics(self.config.exporter.metrics_listen)
        self._tasks = [
            asyncio.create_task(e.run(), name=f"export-{e.source}-{e.sink.name}") for e in self.exports
        ]

    async def stop(self) -> None:
        self._stopping = True
        if self.server is not None:
            await self.server.set_serving(False)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sink in self.sinks:
            await sink.close()
        for conn in self.connections:
            await conn.close()
        if self.server is not None:
            await self.server.stop(grace=1.0)
