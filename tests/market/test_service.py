"""MarketService over real gRPC (in-process server): validation errors, formatting, subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import market_service_pb2 as pb
from exchange.v1 import market_service_pb2_grpc as pbg

from services.common.rpc import channel, error_reason, start_server
from services.market.klines import D1, H1, INTERVALS, M1
from services.market.service import MarketServicer
from services.market.state import MarketDataState
from tests.market.sim import Generator, default_catalog, kiv, reference_klines, trades_of

MARKET = "BTC_USDT"
CODE = grpc.StatusCode


class Harness:
    def __init__(self, seed: int = 21, commands: int = 1500) -> None:
        self.gen = Generator(seed=seed, markets=[MARKET, "ETH_USDT"], quiet=0.01)
        self.state = MarketDataState(default_catalog().markets.values())
        self.apply(self.gen.run(commands))
        self.now = self.gen.time_us + 1
        self.servicer = MarketServicer(self.state, clock=lambda: self.now)
        self.spec = default_catalog().market(MARKET)

    def apply(self, events: list[Any]) -> None:
        changes = self.state.apply_batch("matching-0", events)
        if hasattr(self, "servicer"):
            self.servicer.on_changes(changes)

    def more(self, commands: int) -> list[Any]:
        start = len(self.gen.events)
        for _ in range(commands):
            self.gen.step()
        new = self.gen.events[start:]
        self.apply(new)
        self.now = self.gen.time_us + 1
        return new

    async def __aenter__(self) -> pbg.MarketServiceStub:
        name = pb.DESCRIPTOR.services_by_name["MarketService"].full_name
        self.server = await start_server(
            "127.0.0.1:0", [(pbg.add_MarketServiceServicer_to_server, self.servicer)], [name]
        )
        self.channel = channel(f"127.0.0.1:{self.server.port}")
        return pbg.MarketServiceStub(self.channel)

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        self.servicer.hub.close()
        await self.server.stop(0.5)


def run(fn: Callable[[Harness, pbg.MarketServiceStub], Awaitable[None]], h: Harness | None = None) -> None:
    h = h or Harness()

    async def main() -> None:
        async with h as stub:
            await fn(h, stub)

    asyncio.run(main())


async def expect_error(code: grpc.StatusCode, call: Awaitable[Any], fragment: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert fragment in (info.value.details() or "")


async def first_message_error(code: grpc.StatusCode, call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == code, info.value.details()


def test_bad_queries_get_clear_errors() -> None:
    async def body(h: Harness, stub: pbg.MarketServiceStub) -> None:
        K = pb.GetKlinesRequest
        await expect_error(CODE.INVALID_ARGUMENT, stub.GetKlines(K(market=MARKET)), "interval")
        await expect_error(
            CODE.INVALID_ARGUMENT, stub.GetKlines(K(market=MARKET, interval=kiv(99))), "interval"
        )
        await expect_error(
            CODE.INVALID_ARGUMENT,
            stub.GetKlines(K(market=MARKET, interval=kiv(M1), start_time_us=2000, end_time_us=1000)),
            "inverted",
        )
        await expect_error(
            CODE.INVALID_ARGUMENT,
            stub.GetKlines(K(market=MARKET, interval=kiv(M1), start_time_us=1000, end_time_us=1000)),
        )
        await expect_error(
            CODE.INVALID_ARGUMENT, stub.GetKlines(K(market=MARKET, interval=kiv(M1), start_time_us=-1))
        )
        await expect_error(
            CODE.INVALID_ARGUMENT, stub.GetKlines(K(market=MARKET, interval=kiv(M1), limit=1501))
        )
        await expect_error(
            CODE.NOT_FOUND, stub.GetKlines(K(market="NOPE_USDT", interval=kiv(M1))), "NOPE_USDT"
        )
        await expect_error(CODE.INVALID_ARGUMENT, stub.GetKlines(K(market="", interval=kiv(M1))))
        D = pb.GetMarketDepthRequest
        await expect_error(
            CODE.INVALID_ARGUMENT, stub.GetMarketDepth(D(market=MARKET, merge="0.001")), "tick"
        )
        await expect_error(
            CODE.INVALID_ARGUMENT, stub.GetMarketDepth(D(market=MARKET, merge="0.015")), "tick"
        )
        await expect_error(CODE.INVALID_ARGUMENT, stub.GetMarketDepth(D(market=MARKET, merge="abc")))
        await expect_error(CODE.INVALID_ARGUMENT, stub.GetMarketDepth(D(market=MARKET, merge="0")))
        await expect_error(CODE.INVALID_ARGUMENT, stub.GetMarketDepth(D(market=MARKET, merge="-1")))
        await expect_error(CODE.INVALID_ARGUMENT, stub.GetMarketDepth(D(market=MARKET, limit=5001)))
        await expect_error(CODE.NOT_FOUND, stub.GetMarketDepth(D(market="BTC_EUR")))
        await expect_error(CODE.NOT_FOUND, stub.GetTicker(pb.GetTickerRequest(market="BTC_EUR")))
        await expect_error(
            CODE.INVALID_ARGUMENT,
            stub.ListRecentTrades(pb.ListRecentTradesRequest(market=MARKET, limit=1001)),
        )
        await first_message_error(
            CODE.INVALID_ARGUMENT, stub.SubscribeKlines(pb.SubscribeKlinesRequest(market=MARKET))
        )
        await first_message_error(
            CODE.NOT_FOUND,
            stub.SubscribeKlines(pb.SubscribeKlinesRequest(market="X_Y", interval=kiv(M1))),
        )
        await first_message_error(
            CODE.INVALID_ARGUMENT, stub.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET, merge="0.001"))
        )
        await first_message_error(
            CODE.NOT_FOUND, stub.SubscribeTrades(pb.SubscribeTradesRequest(market="X_Y"))
        )
        await first_message_error(
            CODE.NOT_FOUND, stub.SubscribeTicker(pb.SubscribeTickerRequest(market="X_Y"))
        )

    run(body)


def fmt(ticks: int, step: str) -> str:
    """Independent decimal formatting: ticks x step, minimal digits."""
    d = (Decimal(ticks) * Decimal(step)).normalize()
    text = f"{d:f}"
    return text


def test_queries_match_the_engine_and_the_reference() -> None:
    async def body(h: Harness, stub: pbg.MarketServiceStub) -> None:
        spec = h.spec
        trades = trades_of(h.gen.events, MARKET)
        end = trades[-1].time_us + 1
        for interval in INTERVALS:
            resp = await stub.GetKlines(
                pb.GetKlinesRequest(market=MARKET, interval=kiv(interval), end_time_us=end, limit=1500)
            )
            want = reference_klines(trades, interval, 0, end, 1500)
            assert [k.open_time_us for k in resp.klines] == [r[0] for r in want]
            for k, r in zip(resp.klines, want, strict=True):
                assert k.market == MARKET and k.interval == interval
                assert (k.open, k.high, k.low, k.close) == tuple(fmt(p, spec.price_tick) for p in r[1:5])
                assert k.volume == fmt(r[5], spec.lot_size)
                assert Decimal(k.quote_volume) == Decimal(r[6]) / 10**spec.quote.decimals
                assert k.trade_count == r[7]
        # Default limit 500, open range: ends with the interval containing "now".
        resp = await stub.GetKlines(pb.GetKlinesRequest(market=MARKET, interval=kiv(M1)))
        assert len(resp.klines) == 500
        assert resp.klines[-1].open_time_us == h.now - h.now % 60_000_000

        book = h.gen.engine.books[MARKET]
        for merge, ticks in (("", 1), ("0.01", 1), ("0.05", 5), ("1", 100)):
            depth = await stub.GetMarketDepth(pb.GetMarketDepthRequest(market=MARKET, limit=10, merge=merge))
            bids, asks = book.depth(10, ticks)
            assert [(lv.price_ticks, lv.amount_lots, lv.order_count) for lv in depth.bids] == bids
            assert [(lv.price_ticks, lv.amount_lots, lv.order_count) for lv in depth.asks] == asks
            assert [lv.price for lv in depth.bids] == [fmt(p, spec.price_tick) for p, _, _ in bids]
            assert [lv.amount for lv in depth.asks] == [fmt(a, spec.lot_size) for _, a, _ in asks]
            assert depth.sequence == h.gen.engine.event_seq

        recent = await stub.ListRecentTrades(pb.ListRecentTradesRequest(market=MARKET, limit=5))
        assert [t.price for t in recent.trades] == [
            fmt(t.price, spec.price_tick) for t in reversed(trades[-5:])
        ]
        assert (await stub.ListRecentTrades(pb.ListRecentTradesRequest(market=MARKET))).trades[
            0
        ] == recent.trades[0]

        ticker = (await stub.GetTicker(pb.GetTickerRequest(market=MARKET))).ticker
        day = [t for t in trades if t.time_us // 60_000_000 > (h.now // 60_000_000) - 1440]
        assert ticker.last_price == fmt(trades[-1].price, spec.price_tick)
        if day:
            assert ticker.trade_count == len(day)
            assert ticker.open == fmt(day[0].price, spec.price_tick)
            assert ticker.high == fmt(max(t.price for t in day), spec.price_tick)
            assert ticker.volume == fmt(sum(t.lots for t in day), spec.lot_size)
            assert len(ticker.change_ratio.split(".")[1]) == 4
        assert ticker.best_bid == fmt(book.best_bid() or 0, spec.price_tick)
        assert ticker.best_ask == fmt(book.best_ask() or 0, spec.price_tick)
        tickers = (await stub.ListTickers(pb.ListTickersRequest())).tickers
        assert [t.market for t in tickers] == sorted(default_catalog().markets)
        quiet = next(t for t in tickers if t.market == "DOGE_USDT")
        assert (quiet.last_price, quiet.open, quiet.volume, quiet.trade_count, quiet.change_ratio) == (
            "",
            "",
            "0",
            0,
            "",
        )

        status = await stub.GetMarketDataStatus(pb.GetMarketDataStatusRequest())
        assert dict(status.checkpoints) == {"matching-0": h.gen.engine.event_seq}

    run(body)


async def read(call: Any, timeout: float = 5.0) -> Any:
    msg = await asyncio.wait_for(call.read(), timeout)
    assert msg is not grpc.aio.EOF
    return msg


def test_subscriptions_send_current_value_then_changes() -> None:
    async def body(h: Harness, stub: pbg.MarketServiceStub) -> None:
        depth_call = stub.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET, limit=5, merge="0.05"))
        ticker_call = stub.SubscribeTicker(pb.SubscribeTickerRequest(market=MARKET))
        kline_call = stub.SubscribeKlines(pb.SubscribeKlinesRequest(market=MARKET, interval=kiv(H1)))
        trades_call = stub.SubscribeTrades(pb.SubscribeTradesRequest(market=MARKET))

        depth = await stub.GetMarketDepth(pb.GetMarketDepthRequest(market=MARKET, limit=5, merge="0.05"))
        first = await read(depth_call)
        assert (list(first.bids), list(first.asks), first.sequence) == (
            list(depth.bids),
            list(depth.asks),
            depth.sequence,
        )
        ticker = (await stub.GetTicker(pb.GetTickerRequest(market=MARKET))).ticker
        assert (await read(ticker_call)).ticker == ticker
        kl = await stub.GetKlines(pb.GetKlinesRequest(market=MARKET, interval=kiv(H1), limit=1))
        assert (await read(kline_call)).kline == kl.klines[0]
        recent = await stub.ListRecentTrades(pb.ListRecentTradesRequest(market=MARKET, limit=100))
        assert list((await read(trades_call)).trades) == list(reversed(recent.trades))

        # Changes: run commands until the market trades, then each stream reports the new state.
        known = len(trades_of(h.gen.events, MARKET))
        while True:
            h.more(20)
            all_trades = trades_of(h.gen.events, MARKET)
            if len(all_trades) > known + 3:
                break
        await asyncio.sleep(0)
        got: list[Any] = []
        while len(got) < len(all_trades) - known:
            got.extend((await read(trades_call)).trades)
        assert [(t.price, t.amount) for t in got] == [
            (fmt(t.price, h.spec.price_tick), fmt(t.lots, h.spec.lot_size)) for t in all_trades[known:]
        ]
        depth = await stub.GetMarketDepth(pb.GetMarketDepthRequest(market=MARKET, limit=5, merge="0.05"))
        msg = await read(depth_call)
        while (list(msg.bids), list(msg.asks)) != (list(depth.bids), list(depth.asks)):
            msg = await read(depth_call)
        assert msg.sequence == h.gen.engine.event_seq
        kl = await stub.GetKlines(
            pb.GetKlinesRequest(market=MARKET, interval=kiv(H1), limit=1, end_time_us=h.now)
        )
        while (await read(kline_call)).kline != kl.klines[0]:
            pass
        ticker = (await stub.GetTicker(pb.GetTickerRequest(market=MARKET))).ticker
        t = (await read(ticker_call)).ticker
        while t.last_price != ticker.last_price or t.trade_count != ticker.trade_count:
            t = (await read(ticker_call)).ticker
        for call in (depth_call, ticker_call, kline_call, trades_call):
            call.cancel()
        await asyncio.sleep(0.1)
        assert h.servicer.hub.count() == 0

    run(body)


def test_hub_close_ends_streams_cleanly() -> None:
    async def body(h: Harness, stub: pbg.MarketServiceStub) -> None:
        call = stub.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET))
        await read(call)
        h.servicer.hub.close()
        assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        assert await call.code() == CODE.OK

    run(body)


class FakeContext:
    def __init__(self) -> None:
        self.code: Any = None

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> None:
        self.code = code
        raise RuntimeError(details)


def test_slow_trade_subscriber_is_dropped_not_waited_for() -> None:
    h = Harness(commands=300)

    async def body() -> None:
        ctx = FakeContext()
        stream = h.servicer.SubscribeTrades(pb.SubscribeTradesRequest(market=MARKET), ctx)
        await stream.__anext__()  # the current value
        # Ingestion runs on without the subscriber reading: more than 1000 new trades.
        target = h.state.markets[MARKET].trade_seq + 1100
        while h.state.markets[MARKET].trade_seq < target:
            h.more(200)
        with pytest.raises(RuntimeError, match="behind"):
            await stream.__anext__()
        assert ctx.code == CODE.RESOURCE_EXHAUSTED
        assert h.servicer.hub.count(MARKET) == 0

    asyncio.run(body())


def test_kline_subscription_before_any_trade_waits_for_the_first() -> None:
    h = Harness(commands=0)

    async def body() -> None:
        stream = h.servicer.SubscribeKlines(
            pb.SubscribeKlinesRequest(market=MARKET, interval=kiv(D1)), FakeContext()
        )
        nxt = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)
        assert not nxt.done()  # nothing to send yet
        while h.state.markets[MARKET].trade_seq == 0:
            h.more(10)
        msg = await asyncio.wait_for(nxt, 2)
        assert msg.kline.trade_count >= 1
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(body())


def test_kline_subscription_sends_late_updates_of_the_previous_interval() -> None:
    state = MarketDataState(default_catalog().markets.values())
    now = [0]
    servicer = MarketServicer(state, clock=lambda: now[0])
    t0 = 1_717_400_000_000_000 - 1_717_400_000_000_000 % 60_000_000  # a minute boundary
    seq = [0]

    def trade(time_us: int, price: int) -> None:
        seq[0] += 1
        e = ev.MatchingEvent(source="matching-0", sequence=seq[0], time_us=time_us, market=MARKET)
        e.trade_executed.CopyFrom(
            ev.TradeExecuted(trade_id=seq[0], price_ticks=price, amount_lots=1, quote_units=price)
        )
        servicer.on_changes(state.apply_batch("matching-0", [e]))

    async def body() -> None:
        trade(t0 + 30_000_000, 100)
        now[0] = t0 + 70_000_000  # the next minute, before any trade in it
        stream = servicer.SubscribeKlines(
            pb.SubscribeKlinesRequest(market=MARKET, interval=kiv(M1)), FakeContext()
        )
        first = (await stream.__anext__()).kline
        assert (first.open_time_us, first.close, first.trade_count) == (t0 + 60_000_000, "1", 0)
        trade(t0 + 59_000_000, 110)  # stamped in the previous minute
        late = (await stream.__anext__()).kline
        assert (late.open_time_us, late.close, late.trade_count) == (t0, "1.1", 2)
        trade(t0 + 80_000_000, 120)
        cur = (await stream.__anext__()).kline
        assert (cur.open_time_us, cur.open, cur.trade_count) == (t0 + 60_000_000, "1.2", 1)
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(body())


async def expect_reason(code: grpc.StatusCode, reason: str, call: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert error_reason(info.value) == reason, info.value.details()
    return str(info.value.details())


async def first_message_reason(code: grpc.StatusCode, reason: str, call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == code, info.value.details()
    assert error_reason(info.value) == reason, info.value.details()


def test_every_request_field_is_bounded_with_a_precise_reason() -> None:
    long_market = "BTC_USDT" * 500  # 4000 characters
    INVALID, NOT_FOUND = CODE.INVALID_ARGUMENT, CODE.NOT_FOUND

    async def body(h: Harness, stub: pbg.MarketServiceStub) -> None:
        K, D, T = pb.GetKlinesRequest, pb.GetMarketDepthRequest, pb.ListRecentTradesRequest
        m1 = kiv(M1)
        # market: required, bounded, known; the message quotes a short prefix only
        for call in (
            stub.GetKlines(K(market=long_market, interval=m1)),
            stub.GetTicker(pb.GetTickerRequest(market=long_market)),
            stub.ListRecentTrades(T(market=long_market)),
            stub.GetMarketDepth(D(market=long_market)),
        ):
            details = await expect_reason(INVALID, "FIELD_TOO_LONG", call)
            assert len(details) < 200 and "4000 characters" in details
        await expect_reason(INVALID, "INVALID_FIELD", stub.GetTicker(pb.GetTickerRequest()))
        details = await expect_reason(
            NOT_FOUND, "UNKNOWN_MARKET", stub.GetTicker(pb.GetTickerRequest(market="X" * 32))
        )
        assert len(details) < 100
        # interval, times, limits
        await expect_reason(INVALID, "INVALID_FIELD", stub.GetKlines(K(market=MARKET, interval=kiv(99))))
        for start, end in ((-1, 0), (0, -1), (-(2**63), 0)):
            await expect_reason(
                INVALID,
                "VALUE_OUT_OF_RANGE",
                stub.GetKlines(K(market=MARKET, interval=m1, start_time_us=start, end_time_us=end)),
            )
        await expect_reason(
            INVALID,
            "VALUE_OUT_OF_RANGE",
            stub.GetKlines(K(market=MARKET, interval=m1, start_time_us=5, end_time_us=5)),
        )
        for limit in (1501, 2**32 - 1):
            await expect_reason(
                INVALID, "VALUE_OUT_OF_RANGE", stub.GetKlines(K(market=MARKET, interval=m1, limit=limit))
            )
        assert len((await stub.GetKlines(K(market=MARKET, interval=m1, limit=1500))).klines) == 1500
        await expect_reason(
            INVALID, "VALUE_OUT_OF_RANGE", stub.ListRecentTrades(T(market=MARKET, limit=1001))
        )
        await expect_reason(INVALID, "VALUE_OUT_OF_RANGE", stub.GetMarketDepth(D(market=MARKET, limit=5001)))
        assert await stub.GetMarketDepth(D(market=MARKET, limit=5000))
        # merge
        details = await expect_reason(
            INVALID, "FIELD_TOO_LONG", stub.GetMarketDepth(D(market=MARKET, merge="1" * 10_000))
        )
        assert len(details) < 200
        for merge in ("0.015", "abc", "0", "-1", "1e3", "9" * 40):  # "0.015": more decimals than the tick
            await expect_reason(
                INVALID, "INVALID_DECIMAL", stub.GetMarketDepth(D(market=MARKET, merge=merge))
            )
        # the same checks on the streams, before anything is sent
        await first_message_reason(
            INVALID, "FIELD_TOO_LONG", stub.SubscribeTicker(pb.SubscribeTickerRequest(market=long_market))
        )
        await first_message_reason(
            INVALID, "FIELD_TOO_LONG", stub.SubscribeTrades(pb.SubscribeTradesRequest(market=long_market))
        )
        await first_message_reason(
            INVALID,
            "FIELD_TOO_LONG",
            stub.SubscribeKlines(pb.SubscribeKlinesRequest(market=long_market, interval=m1)),
        )
        await first_message_reason(
            INVALID, "INVALID_FIELD", stub.SubscribeKlines(pb.SubscribeKlinesRequest(market=MARKET))
        )
        await first_message_reason(
            INVALID,
            "VALUE_OUT_OF_RANGE",
            stub.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET, limit=5001)),
        )
        await first_message_reason(
            INVALID,
            "FIELD_TOO_LONG",
            stub.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET, merge="5" * 65)),
        )
        await first_message_reason(
            NOT_FOUND, "UNKNOWN_MARKET", stub.SubscribeDepth(pb.SubscribeDepthRequest(market="NOPE"))
        )
        assert h.servicer.hub.count() == 0  # refused requests hold no subscription

    run(body)


def test_subscriptions_are_capped_and_refused_ones_cost_nothing() -> None:
    h = Harness(commands=200)
    h.servicer.hub.max_subscriptions = 3

    async def body(h: Harness, stub: pbg.MarketServiceStub) -> None:
        calls = [stub.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET)) for _ in range(3)]
        for call in calls:
            await read(call)
        assert h.servicer.hub.count() == 3
        refused = stub.SubscribeTicker(pb.SubscribeTickerRequest(market=MARKET))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await refused.read()
        assert info.value.code() == CODE.UNAVAILABLE and error_reason(info.value) == "BUSY"
        assert h.servicer.hub.count() == 3
        calls[0].cancel()
        deadline = asyncio.get_running_loop().time() + 5
        while h.servicer.hub.count() != 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        again = stub.SubscribeTicker(pb.SubscribeTickerRequest(market=MARKET))
        assert (await read(again)).ticker.market == MARKET
        for call in (*calls[1:], again):
            call.cancel()

    run(body, h)


def test_a_subscriber_that_never_reads_does_not_make_the_server_buffer() -> None:
    """Depth streams are computed when they can be sent: once the transport's flow-control window is
    full, a client that stops reading holds one suspended stream, however many changes ingestion applies
    meanwhile (and ingestion never waits for it)."""
    state = MarketDataState(default_catalog().markets.values())
    seq = [0]

    def accept(side: int, price: int) -> ev.MatchingEvent:
        seq[0] += 1
        e = ev.MatchingEvent(source="matching-0", sequence=seq[0], time_us=seq[0], market=MARKET)
        o = e.order_accepted.order
        o.order_id, o.user_id, o.market = seq[0], 1, MARKET
        o.side, o.type = side, 1  # type: ignore[assignment]
        o.price_ticks, o.amount_lots = price, 10
        return e

    levels = 5000
    state.apply_batch(
        "matching-0",
        [accept(1, 1_000_000 - k) for k in range(levels)] + [accept(2, 1_000_001 + k) for k in range(levels)],
    )
    servicer = MarketServicer(state, clock=lambda: 10**15)
    produced = {"n": 0, "bytes": 0}
    real = servicer.SubscribeDepth

    async def counting(request: Any, context: Any) -> Any:
        async for msg in real(request, context):
            produced["n"] += 1
            produced["bytes"] += msg.ByteSize()
            yield msg

    servicer.SubscribeDepth = counting  # type: ignore[assignment,method-assign]

    async def change_and_wait(times: int) -> None:
        for _ in range(times):
            servicer.on_changes(state.apply_batch("matching-0", [accept(1, 1_000_000)]))
            await asyncio.sleep(0.005)  # the server side runs

    async def main() -> None:
        name = pb.DESCRIPTOR.services_by_name["MarketService"].full_name
        server = await start_server(
            "127.0.0.1:0", [(pbg.add_MarketServiceServicer_to_server, servicer)], [name]
        )
        ch = channel(f"127.0.0.1:{server.port}")
        try:
            call = pbg.MarketServiceStub(ch).SubscribeDepth(
                pb.SubscribeDepthRequest(market=MARKET, limit=levels)
            )
            first = await read(call)  # then never again
            assert len(first.bids) == len(first.asks) == levels and first.ByteSize() > 200_000
            # fill whatever the transport buffers, until the stream stops producing
            last = -1
            for _ in range(100):
                await change_and_wait(10)
                if produced["n"] == last:
                    break
                last = produced["n"]
            else:
                raise AssertionError(f"the stream never stopped producing: {produced}")
            stalled = dict(produced)
            await change_and_wait(100)
            assert produced == stalled, "a suspended stream must not compute or queue more messages"
            assert stalled["bytes"] < 64 << 20
            call.cancel()
        finally:
            await ch.close()
            servicer.hub.close()
            await server.stop(0.5)

    asyncio.run(main())


def test_merge_off_a_coarse_tick_is_price_not_on_tick() -> None:
    from services.common.errors import InvalidArgument, Reason
    from services.common.markets import MarketCatalog
    from services.market.service import parse_merge

    catalog = MarketCatalog.from_dict(
        {
            "assets": {"BTC": {"decimals": 8}, "USDT": {"decimals": 8}},
            "markets": [
                {
                    "symbol": "BTC_USDT",
                    "base": "BTC",
                    "quote": "USDT",
                    "price_tick": "0.05",
                    "lot_size": "0.001",
                }
            ],
        }
    )
    spec = catalog.market("BTC_USDT")
    assert parse_merge(spec, "0.5") == 10
    with pytest.raises(InvalidArgument) as info:
        parse_merge(spec, "0.07")
    assert info.value.reason == Reason.PRICE_NOT_ON_TICK and "0.05" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        parse_merge(spec, "0.071")
    assert info.value.reason == Reason.INVALID_DECIMAL
