"""The quantizer over accounts sharded by user (2 accounts shards): one feed per shard, each with its
own checkpoint; a strategy's sub-account lands on its owner's shard, its fills come from that shard's
stream and the trade prices from whichever shard holds the taker. Grids of owners on both shards run
against scripted counter-orders, including trades whose two sides are on different shards; stopping
returns every fund and the balance invariant holds summed over the shards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import quantizer_service_pb2 as qpb

from testkit.cluster import assert_cross_shard_invariants
from tests.quantizer.live import BUY, MAKER, MARKET, SELL, TAKER, Live, new_cluster, wait_for

pytestmark = pytest.mark.slow

SHARDS = 2
# MAKER (2) is on shard 0, TAKER (3) on shard 1; the owners: one on each shard
OWNERS = (4, 5)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    cluster = new_cluster(Path(tmp_path_factory.mktemp("q-shards")) / "exchange", accounts_shards=SHARDS)
    try:
        cluster.start()
        lv = Live(cluster)
        lv.deposit(MAKER, "BTC", "10")
        lv.deposit(TAKER, "USDT", "1000000")
        lv.deposit(TAKER, "BTC", "10")
        for owner in OWNERS:
            lv.deposit(owner, "USDT", "2000")
        lv.order(MAKER, SELL, "30000", "1")  # the grids' initial purchases buy from this offer
        lv.order(TAKER, BUY, "30000", "0.001", ioc=True)  # the first price, a cross-shard trade
        cluster.wait_quiet_all()
        yield lv
    finally:
        cluster.stop()


def test_grids_of_owners_on_both_shards_trade_and_return_their_funds(live: Live) -> None:
    strategies = [live.create(client_id=f"grid-{owner}", user=owner) for owner in OWNERS]
    for s, owner in zip(strategies, OWNERS, strict=True):
        assert s.trading_user_id % SHARDS == owner % SHARDS  # the sub-account is on its owner's shard
    started = [live.settled(s.strategy_id, fills=1) for s in strategies]  # purchases from MAKER
    live.accounts_of(MAKER).CancelAllOrders(
        apb.CancelAllOrdersRequest(user_id=MAKER, market=MARKET), timeout=10
    )
    live.cluster.wait_quiet_all()
    # TAKER (shard 1) sells into both grids' buys at 29500, then buys both sells at 30000 back: one
    # strategy trades within shard 1, the other across shards
    for price, side, fills in (("29500", SELL, 2), ("30000", BUY, 3)):
        for s in started:
            live.step(s.trading_user_id, side, price)
        for s in started:
            got = live.settled(s.strategy_id, fills=fills)
            assert got.report.fills == fills
    for s in started:
        r = live.strategy(s.strategy_id).report
        assert r.matched_pairs == 1 and r.last_price == "30000"
        live.quantizer.StopStrategy(
            qpb.StopStrategyRequest(strategy_id=s.strategy_id, mode=qpb.STOP_MODE_CANCEL_ORDERS), timeout=10
        )
    for s, owner in zip(started, OWNERS, strict=True):
        wait_for("funds returned", lambda sid=s.strategy_id: live.strategy(sid).funds_returned)
        assert not live.open_orders(s.trading_user_id)
        assert all(sum(v) == 0 for v in live.balances(s.trading_user_id).values())
        back = live.balances(owner)  # the quote left and the base bought came back to the owner
        assert back["BTC"][0] > 0 and back["USDT"][0] > live.spec.quote.parse("1000")
        assert back["BTC"][1] == back["USDT"][1] == 0
    assert_cross_shard_invariants(live.cluster.wait_quiet_all())
