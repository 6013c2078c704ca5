"""Process level: `python -m services.market` against a fake matching shard serving a fixed event list;
kill -9 it mid-way, restart it, and compare with the straight computation (no event counted twice)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import market_service_pb2 as pb
from exchange.v1 import market_service_pb2_grpc as pbg
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc

from services.common.config import load_config
from services.common.security import process_security
from services.market.klines import INTERVALS
from testkit.cluster import DEFAULT_MARKETS, free_port
from testkit.service_process import ServiceProcess
from tests.market.sim import Generator, kiv, reference_klines, trades_of

pytestmark = pytest.mark.slow

MARKETS = ["BTC_USDT", "ETH_USDT", "SOL_USDT"]


class FakeShard(mgrpc.MatchingServiceServicer):
    """Serves a fixed event list like MatchingService.StreamEvents: whole commands per response,
    slowly, then keeps the stream open. Each stream starts a few events early (a harmless resend)."""

    def __init__(
        self, events: list[ev.MatchingEvent], per_response: int = 12, delay_s: float = 0.004
    ) -> None:
        self.events = events
        self.per_response = per_response
        self.delay_s = delay_s
        self.requests: list[int] = []

    def StreamEvents(
        self, request: mpb.StreamEventsRequest, context: Any
    ) -> Iterator[mpb.StreamEventsResponse]:
        self.requests.append(request.from_sequence)
        i = max(0, request.from_sequence - 1 - 5)
        events = self.events
        while context.is_active():
            if i >= len(events):
                time.sleep(0.05)
                continue
            j = min(len(events), i + self.per_response)
            while j < len(events) and (events[j].command_source, events[j].command_sequence) == (
                events[j - 1].command_source,
                events[j - 1].command_sequence,
            ):
                j += 1
            yield mpb.StreamEventsResponse(events=events[i:j])
            i = j
            time.sleep(self.delay_s)


def serve(fake: FakeShard, workers: int) -> tuple[grpc.Server, int]:
    """The fake shard on an ephemeral port, started; returns the server and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    mgrpc.add_MatchingServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class MarketProcess(ServiceProcess):
    def __init__(self, directory: Path, shard_address: str) -> None:
        address = f"127.0.0.1:{free_port()}"
        config = [
            'data_dir = "data"',
            '[shards."matching-0"]',
            f'listen = "{shard_address}"',
            "[market]",
            f'listen = "{address}"',
            "snapshot_every = 150",
            "[assets]" + DEFAULT_MARKETS,
        ]
        super().__init__(directory, "services.market", "\n".join(config), address)
        # authenticated as admin with the credentials of the process's data directory
        creds = process_security(load_config(self.config), "admin").channel_credentials()
        self.channel = grpc.secure_channel(self.address, creds)
        self.stub = pbg.MarketServiceStub(self.channel)

    def start(self) -> None:
        super().start()
        self.wait_ready()

    def checkpoint(self) -> int:
        st = self.stub.GetMarketDataStatus(pb.GetMarketDataStatusRequest(), timeout=5)
        return int(st.checkpoints.get("matching-0", 0))

    def wait_checkpoint(self, at_least: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cp = self.checkpoint()
            if cp >= at_least:
                return cp
            time.sleep(0.01)
        raise TimeoutError(f"checkpoint stuck below {at_least}:\n{self.log()[-3000:]}")


def test_kill_9_restart_resumes_without_double_counting(tmp_path: Path) -> None:
    gen = Generator(seed=99, markets=MARKETS, quiet=0.004)
    events = gen.run(2500)
    total = len(events)
    assert total > 2500

    fake = FakeShard(events)
    server, port = serve(fake, workers=8)
    market = MarketProcess(tmp_path, f"127.0.0.1:{port}")
    try:
        market.start()
        ready = [e for e in market.log_entries() if e.get("msg") == "market data ready"]
        assert ready and ready[0]["port"] == int(market.address.rsplit(":", 1)[1])
        market.wait_checkpoint(total // 3)
        assert market.signal(signal.SIGKILL) == -signal.SIGKILL
        snaps = sorted((tmp_path / "data" / "market").glob("*.snap"))
        assert snaps, "no snapshot before the kill"

        market.start()
        restored = [e for e in market.log_entries() if e.get("msg") == "restored snapshot"]
        assert restored and 0 < restored[-1]["seq"] < total, "killed after the end: nothing to resume"
        assert fake.requests[-1] == restored[-1]["seq"] + 1
        market.wait_checkpoint(total)

        for symbol in MARKETS:
            trades = trades_of(events, symbol)
            assert trades
            end = trades[-1].time_us + 1
            for interval in INTERVALS:
                resp = market.stub.GetKlines(
                    pb.GetKlinesRequest(market=symbol, interval=kiv(interval), end_time_us=end, limit=1500),
                    timeout=5,
                )
                want = reference_klines(trades, interval, 0, end, 1500)
                got = [(k.open_time_us, k.trade_count) for k in resp.klines]
                assert got == [(r[0], r[7]) for r in want], (symbol, interval)
            weekly = market.stub.GetKlines(
                pb.GetKlinesRequest(market=symbol, interval=kiv(7), end_time_us=end),
                timeout=5,
            )
            assert sum(k.trade_count for k in weekly.klines) == len(trades)  # nothing counted twice
            depth = market.stub.GetMarketDepth(pb.GetMarketDepthRequest(market=symbol, limit=100), timeout=5)
            bids, asks = gen.engine.books[symbol].depth(100)
            assert [(lv.price_ticks, lv.amount_lots, lv.order_count) for lv in depth.bids] == bids
            assert [(lv.price_ticks, lv.amount_lots, lv.order_count) for lv in depth.asks] == asks
            assert depth.sequence == total

        # A clean stop takes a final snapshot at the last event.
        assert market.signal(signal.SIGTERM) == 0
        entries = market.log_entries()
        assert any(e.get("msg") == "stopped" and e.get("applied") == total for e in entries)
        assert max(int(p.stem) for p in (tmp_path / "data" / "market").glob("*.snap")) == total
    finally:
        market.kill()
        market.channel.close()
        server.stop(0)


def test_restart_from_clean_shutdown_streams_nothing_twice(tmp_path: Path) -> None:
    """After SIGTERM the snapshot is at the last event: a restart asks for the next one."""
    gen = Generator(seed=5, markets=["BTC_USDT"])
    events = gen.run(300)
    fake = FakeShard(events, per_response=50, delay_s=0)
    server, port = serve(fake, workers=4)
    market = MarketProcess(tmp_path, f"127.0.0.1:{port}")
    try:
        market.start()
        market.wait_checkpoint(len(events))
        query = pb.GetKlinesRequest(market="BTC_USDT", interval=kiv(4), end_time_us=events[-1].time_us + 1)
        before = market.stub.GetKlines(query, timeout=5)
        assert sum(k.trade_count for k in before.klines) == len(trades_of(events, "BTC_USDT"))
        assert market.signal(signal.SIGTERM) == 0
        market.start()
        assert fake.requests[-1] == len(events) + 1
        assert market.checkpoint() == len(events)
        assert market.stub.GetKlines(query, timeout=5) == before
    finally:
        market.kill()
        market.channel.close()
        server.stop(0)
