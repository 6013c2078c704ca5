"""python -m services.quantizer --config deploy/exchange.toml

The hosted-strategy service: the journaled quantizer machine (services.quantizer.machine) on the
shared host, the accounts event feed, the executor and QuantizerService on [quantizer] listen."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from typing import Any

from exchange.v1 import quantizer_service_pb2

from services.clients.accounts import AccountsClient
from services.clients.discovery import resolver_for
from services.clients.errors import ClientError
from services.clients.market import MarketClient
from services.common.config import ExchangeConfig, load_config
from services.common.failstop import FailStop
from services.common.host import HostOptions, StateMachineHost
from services.common.logs import setup_logging
from services.common.rpc import (
    configure,
    register_service,
    run_until_signal,
    start_metrics,
    start_server,
)
from services.common.security import process_security
from services.quantizer.executor import Executor
from services.quantizer.feed import AccountsFeed
from services.quantizer.machine import CODEC, Limits, QuantizerMachine
from services.quantizer.orders import OrderStream
from services.quantizer.service import QuantizerServicer
from services.quantizer.timing import JOURNAL

log = logging.getLogger("services.quantizer")


def limits_of(config: ExchangeConfig) -> Limits:
    q = config.quantizer
    caps: dict[str, int] = {}
    for symbol, text in q.max_capital.items():
        asset = config.catalog.assets.get(symbol)
        if asset is None:
            raise SystemExit(f"[quantizer] max_capital names an unknown asset {symbol!r}")
        caps[symbol] = asset.parse(str(text), allow_zero=True)
    return Limits(max_strategies=q.max_strategies_per_user, max_capital=caps)


class Quantizer:
    """The service's parts, started and stopped together (also used in-process by the benchmark)."""

    def __init__(self, config: ExchangeConfig, *, accept_snapshot_beyond_journal: bool = False) -> None:
        self.config = config
        q = config.quantizer
        limits = limits_of(config)
        self.host: StateMachineHost[dict[str, Any], QuantizerMachine] = StateMachineHost(
            q.source,
            config.service_dir(q.source),
            restore=lambda data: QuantizerMachine.restore(config.catalog, limits, data),
            codec=CODEC,
            options=HostOptions(
                snapshot_every=q.snapshot_every, accept_snapshot_beyond_journal=accept_snapshot_beyond_journal
            ),
        )
        resolver = resolver_for(config)
        self.accounts = AccountsClient.resolve(resolver)
        # The feed reads every user's accounts events (StreamAccountEvents, GetAccountsStatus) as the
        # quantizer principal itself: its role allows those two reads (services.common.auth).
        self.market = MarketClient.resolve(resolver)
        self.executor = Executor(
            self.accounts,
            lambda: self.host.machine,
            self._submit,
            workers=q.executor_workers,
            orders=OrderStream(self.accounts) if q.order_stream else None,
        )
        # One feed per accounts source: with accounts sharded by user, each shard's event stream.
        self.feeds = [
            AccountsFeed(self.accounts, lambda: self.host.machine, self._submit, source=source)
            for source in config.accounts_sources()
        ]
        self.tasks: list[asyncio.Task[None]] = []
        self.reconciled = asyncio.Event()
        self.reconcile_stats: dict[str, int] = {}
        # A part that cannot go on (e.g. the accounts events after the checkpoint are no longer kept):
        # the process exits non-zero so that its supervisor restarts it and an operator sees why.
        self.fatal = asyncio.Event()

    def _submit(self, command: dict[str, Any]) -> None:
        self.host.enqueue_internal(command)

    async def start(self) -> None:
        await self.host.start()
        self.host.on_effects.append(self._journal_timing)
        self.host.on_effects.append(self.executor.hook)
        self.executor.start()
        self.tasks = [
            *(
                asyncio.create_task(
                    self._guard(feed.run(), f"the accounts event feed of {feed.source}"),
                    name=f"quantizer-feed-{feed.source}",
                )
                for feed in self.feeds
            ),
            asyncio.create_task(self._guard(self._timers(), "the timers"), name="quantizer-timers"),
            asyncio.create_task(self._guard(self._reconcile(), "reconciliation"), name="quantizer-reconcile"),
        ]

    def _journal_timing(self, effects: list[Any]) -> None:
        fed = max(feed.fed_at for feed in self.feeds)
        if fed and effects:
            JOURNAL.observe(time.monotonic() - fed)
            for feed in self.feeds:
                feed.fed_at = 0.0

    async def _guard(self, work: Any, what: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.critical("%s failed; the quantizer stops", what, exc_info=True)
            self.fatal.set()

    async def _timers(self) -> None:
        interval = max(0.01, self.config.quantizer.timer_interval_ms / 1000)
        while True:
            await asyncio.sleep(interval)
            wake = self.host.machine.next_wakeup()
            if wake is not None and wake <= time.time_ns() // 1000 and self.host.failure is None:
                self._submit({"t": "timer"})

    async def _reconcile(self) -> None:
        """Once every feed has read up to where its accounts shard was when we started (fills while
        we were down are then journaled), bring the exchange in line with the strategies' tables."""
        for feed in self.feeds:
            while True:
                try:
                    target = await feed.current_end()
                    break
                except ClientError:
                    await asyncio.sleep(0.5)
            while feed.seen < target:
                await asyncio.sleep(0.02)
        await self.host.submit({"t": "sync"})  # everything the feed handed over is applied
        self.reconcile_stats = await self.executor.reconcile()
        log.info("reconciled", extra=self.reconcile_stats)
        self.reconciled.set()

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.executor.stop()
        await self.host.stop()
        await self.accounts.close()
        await self.market.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m services.quantizer", description="Run the quantizer service."
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    ap.add_argument(
        "--accept-snapshot-beyond-journal",
        action="store_true",
        help="after journal damage: take the latest snapshot as the truth and continue after it",
    )
    args = ap.parse_args()
    config = load_config(args.config)
    q = config.quantizer
    configure(process_security(config, "quantizer"))
    setup_logging(q.source)
    failstop = FailStop(q.source)
    fatal: list[bool] = []

    async def run(stop: asyncio.Event) -> None:
        app = Quantizer(config, accept_snapshot_beyond_journal=args.accept_snapshot_beyond_journal)
        await app.start()
        failstop.arm(app.host, stop)
        servicer = QuantizerServicer(app.host, config.catalog, q, app.accounts, app.market)
        service = quantizer_service_pb2.DESCRIPTOR.services_by_name["QuantizerService"]
        server = await start_server(
            q.listen, [(lambda s, srv: register_service(srv, service, s), servicer)], [service.full_name]
        )
        failstop.set_server(server)
        start_metrics(q.metrics_listen)
        log.info("quantizer ready", extra={"port": server.port, "strategies": len(app.host.machine.entries)})
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(app.fatal.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if app.fatal.is_set():
            fatal.append(True)
        log.info("stopping")
        await server.stop(grace=1.0)
        await app.stop()
        log.info("stopped", extra={"applied_seq": app.host.machine.applied_seq})

    run_until_signal(run)
    failstop.exit_if_failed()
    if fatal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
