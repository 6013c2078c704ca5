"""Follows one matching shard's event stream into the market-data state.

Each (re)connection asks MatchingService.StreamEvents for the events after the state's checkpoint for
the shard; each response (whole commands only) is applied at once, synchronously, so the state and its
snapshots only ever hold whole commands. Errors reconnect with exponential backoff. A second task polls
the shard's status to export the consumer's lag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from prometheus_client import Counter, Gauge

from services.common.rpc import channel
from services.market.state import Changes, GapError, MarketDataState

log = logging.getLogger(__name__)

APPLIED = Counter("exchange_market_events_applied_total", "Matching events applied", ["shard"])
CHECKPOINT = Gauge("exchange_market_checkpoint", "Last matching event applied", ["shard"])
LAG = Gauge(
    "exchange_market_lag_events", "Events the shard has published that are not applied yet", ["shard"]
)
EVENT_AGE = Gauge(
    "exchange_market_event_age_seconds", "Wall-clock age of the last applied event's time", ["shard"]
)
CONNECTED = Gauge("exchange_market_connected", "1 while the shard's event stream is open", ["shard"])

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0


class ShardConsumer:
    def __init__(
        self,
        shard: str,
        address: str,
        state: MarketDataState,
        on_batch: Callable[[Changes], None],
        *,
        max_batch: int = 2000,
        lag_poll_s: float = 2.0,
    ) -> None:
        self.shard = shard
        self.address = address
        self.state = state
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.lag_poll_s = lag_poll_s
        self.shard_sequence = 0  # the shard's latest event sequence, as last polled

    async def run(self) -> None:
        """Consume until cancelled."""
        poller = asyncio.create_task(self._poll_lag())
        try:
            await self._consume()
        finally:
            poller.cancel()
            CONNECTED.labels(self.shard).set(0)

    async def _consume(self) -> None:
        backoff = BACKOFF_START_S
        shard = self.shard
        state = self.state
        applied = APPLIED.labels(shard)
        checkpoint = CHECKPOINT.labels(shard)
        quiet = False  # a failure was already logged; repeat failures go to debug until data flows
        while True:
            start = state.checkpoint(shard) + 1
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "following shard",
                extra={"shard": shard, "address": self.address, "from_sequence": start},
            )
            try:
                async with channel(self.address) as ch:
                    stub = mgrpc.MatchingServiceStub(ch)
                    call = stub.StreamEvents(
                        mpb.StreamEventsRequest(from_sequence=start, max_batch=self.max_batch)
                    )
                    async for resp in call:
                        if quiet:
                            log.info(
                                "shard event stream back", extra={"shard": shard, "from_sequence": start}
                            )
                            quiet = False
                        CONNECTED.labels(shard).set(1)
                        if not resp.events:
                            continue
                        changes = state.apply_batch(shard, resp.events)
                        self.on_batch(changes)
                        applied.inc(changes.events)
                        cp = state.checkpoint(shard)
                        checkpoint.set(cp)
                        if self.shard_sequence:
                            LAG.labels(shard).set(max(0, self.shard_sequence - cp))
                        backoff = BACKOFF_START_S
                    log.info("shard event stream ended", extra={"shard": shard})
            except grpc.aio.AioRpcError as exc:
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "shard event stream down; retrying",
                    extra={
                        "shard": shard,
                        "code": exc.code().name,
                        "details": exc.details() or "",
                        "retry_s": backoff,
                    },
                )
                quiet = True
            except (GapError, ValueError, KeyError, TypeError) as exc:
                log.error(
                    "cannot apply shard events; reconnecting",
                    extra={"shard": shard, "error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, GapError),
                )
            CONNECTED.labels(shard).set(0)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _poll_lag(self) -> None:
        if self.lag_poll_s <= 0:
            return
        async with channel(self.address) as ch:
            stub = mgrpc.MatchingServiceStub(ch)
            while True:
                await asyncio.sleep(self.lag_poll_s)
                t = self.state.event_times.get(self.shard)
                if t:
                    EVENT_AGE.labels(self.shard).set(max(0.0, time.time() - t / 1e6))
                try:
                    status = await stub.GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=1.0)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return
                    continue
                self.shard_sequence = int(status.event_sequence)
                LAG.labels(self.shard).set(max(0, self.shard_sequence - self.state.checkpoint(self.shard)))
