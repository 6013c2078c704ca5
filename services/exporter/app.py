"""The exporter process: one SourceExport per (source, sink); gRPC health (NOT_SERVING while a broker
refuses); sources are every accounts shard ("accounts-0", ...) and every matching shard, followed as
the reader principal.

A matching shard (or accounts shard) added to the configuration file while the exporter runs (its
table written before `exchange cluster add-shard`, services.cluster.operator) is exported too, without
a restart: services.common.config_watch hands over the reloaded file and each new source gets its own
SourceExport per sink, whose checkpoint is, as for every source, the broker's last message of it (so a
shard's events from before the addition are exported from its first one). Only additions are taken:
a source removed from the file goes on being exported, and the [exporter] settings (brokers, format,
batch size) stay those the process started with, until a restart."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.clients import AccountsClient, MatchingClient
from services.clients.channels import Connection
from services.clients.discovery import learn_addresses, resolver_for
from services.clients.follow import EventSource
from services.clients.resolver import ACCOUNTS, Resolver, accounts_name
from services.common.config import ExchangeConfig
from services.common.config_watch import ConfigWatch
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
        self.config = config  # the one started with: its [exporter] settings are kept (module docstring)
        self.fmt = check_format(config.exporter.format)
        self.resolver = resolver or resolver_for(config)
        self.sink_kinds = len(configured_sinks(config))
        if not self.sink_kinds:
            raise ValueError("[exporter] needs nats_url or kafka_bootstrap")
        self.sinks: list[Sink] = []
        self.connections: list[Connection] = []
        self.exports: list[SourceExport] = []
        self.server: ServerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False  # start() ran: a source added from now on is exported at once
        self._stopping = False
        for i in range(self.sink_kinds):
            for shard in sorted(config.shards):
                self._shard_export(shard, i)
            conn = Connection(ACCOUNTS, self.resolver)
            self.connections.append(conn)
            accounts = AccountsClient(conn)  # sharded by user: one event stream per accounts shard
            for source in config.accounts_sources():
                self._add_export(source, accounts.account_events(source), i)
        # A matching shard (or accounts shard) added to the configuration while running is exported too.
        self.watch = ConfigWatch(config.path, self._reconfigure)

    def _shard_export(self, shard: str, sink_index: int) -> SourceExport:
        conn = Connection(shard, self.resolver)
        self.connections.append(conn)
        return self._add_export(shard, MatchingClient(conn).events(source=shard), sink_index)

    def _accounts_export(self, index: int, source: str, sink_index: int) -> SourceExport:
        """An accounts shard added while running: a client of that shard alone (the first client's
        shard count was taken when it started)."""
        conn = Connection(accounts_name(index), self.resolver)
        self.connections.append(conn)
        return self._add_export(source, AccountsClient(conn).account_events(source), sink_index)

    def _add_export(self, source: str, events: EventSource[Any], sink_index: int) -> SourceExport:
        sink = configured_sinks(self.config)[sink_index]  # a fresh instance (configured_sinks)
        self.sinks.append(sink)
        export = SourceExport(
            source,
            events,
            sink,
            fmt=self.fmt,
            batch_size=self.config.exporter.batch_size,
            on_failure_change=self._update_health,
        )
        self.exports.append(export)
        if self._running and not self._stopping:  # running: export it now (else start() does)
            self._tasks.append(asyncio.create_task(export.run(), name=_task_name(export)))
        return export

    def sources(self) -> set[str]:
        return {e.source for e in self.exports}

    def _reconfigure(self, config: ExchangeConfig) -> None:
        """A reloaded configuration (services.common.config_watch): export the sources it adds."""
        learn_addresses(self.resolver, config)
        known = self.sources()
        shards = [s for s in sorted(config.shards) if s not in known]
        accounts = [(i, s) for i, s in enumerate(config.accounts_sources()) if s not in known]
        for i in range(self.sink_kinds):
            for shard in shards:
                self._shard_export(shard, i)
            for index, source in accounts:
                self._accounts_export(index, source, i)
        for source in [*shards, *(s for _, s in accounts)]:
            log.info(
                "exporting a source added to the configuration",
                extra={
                    "source": source,
                    "sinks": ",".join(e.sink.name for e in self.exports if e.source == source),
                },
            )

    def failures(self) -> dict[str, SourceFailure]:
        return {e.tracker.source: e.failure for e in self.exports if e.failure is not None}

    async def _update_health(self) -> None:
        if not self._stopping:
            await set_health(self.server, "", self.failures())

    async def start(self) -> None:
        self.server = await start_server(self.config.exporter.listen, [], [])
        start_metrics(self.config.exporter.metrics_listen)
        self._running = True
        self._tasks = [asyncio.create_task(e.run(), name=_task_name(e)) for e in self.exports]
        self._tasks.append(asyncio.create_task(self.watch.run(), name="exporter-config-watch"))

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


def _task_name(export: SourceExport) -> str:
    return f"export-{export.source}-{export.sink.name}"
