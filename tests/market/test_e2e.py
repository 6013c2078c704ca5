"""The market-data process inside a real exchange: its depth equals matching's, its trades are the fills."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import market_service_pb2 as pb
from exchange.v1 import market_service_pb2_grpc as pbg
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from testkit.cluster import Cluster
from tests.market.sim import kiv

pytestmark = pytest.mark.slow

MARKET = "BTC_USDT"


def test_market_data_follows_a_real_exchange(tmp_path: Path) -> None:
    c = Cluster(tmp_path, with_market=True)
    c.start()
    try:
        for user in range(1, 5):
            c.accounts.Deposit(
                apb.DepositRequest(
                    user_id=user, asset="USDT", amount="1000000", business="t", business_id="u"
                )
            )
            c.accounts.Deposit(
                apb.DepositRequest(user_id=user, asset="BTC", amount="20", business="t", business_id="b")
            )
        market = pbg.MarketServiceStub(c.channel("market"))
        sub = market.SubscribeDepth(pb.SubscribeDepthRequest(market=MARKET, limit=10))
        first = next(sub)
        assert list(first.bids) == [] and list(first.asks) == []
        rng = random.Random(1)
        for _ in range(150):
            side = rng.choice((types_pb2.SIDE_BUY, types_pb2.SIDE_SELL))
            offset = rng.randrange(-5, 40)
            price = 30000 - offset if side == types_pb2.SIDE_BUY else 30000 + offset
            c.accounts.PlaceOrder(
                apb.PlaceOrderRequest(
                    user_id=rng.randrange(1, 5),
                    market=MARKET,
                    side=side,
                    type=types_pb2.ORDER_TYPE_LIMIT,
                    price=str(price),
                    amount=f"0.{rng.randrange(1, 99):02d}",
                )
            )
        c.wait_quiet()
        shard = c.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = market.GetMarketDataStatus(pb.GetMarketDataStatusRequest())
            if st.checkpoints.get("matching-0", 0) == shard.event_sequence:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"market data stuck at {st.checkpoints}, shard at {shard.event_sequence}")
        for merge in ("", "0.05", "10"):
            want = c.matching().GetDepth(mpb.GetDepthRequest(market=MARKET, limit=50, merge=merge))
            got = market.GetMarketDepth(pb.GetMarketDepthRequest(market=MARKET, limit=50, merge=merge))
            assert list(got.bids) == list(want.bids) and list(got.asks) == list(want.asks), merge
            assert got.sequence == want.sequence
        ticker = market.GetTicker(pb.GetTickerRequest(market=MARKET)).ticker
        last_market = next(m for m in shard.markets if m.market == MARKET)
        assert ticker.trade_count == last_market.last_trade_id > 0
        klines = market.GetKlines(pb.GetKlinesRequest(market=MARKET, interval=kiv(1), limit=5))
        assert sum(k.trade_count for k in klines.klines) == ticker.trade_count
        # The depth subscription caught up with the same view.
        want = c.matching().GetDepth(mpb.GetDepthRequest(market=MARKET, limit=10))
        msg = next(sub)
        while (list(msg.bids), list(msg.asks)) != (list(want.bids), list(want.asks)):
            msg = next(sub)
        sub.cancel()
    finally:
        c.stop()
