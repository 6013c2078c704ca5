"""A pair moved to a new matching shard under a steady order load, against real processes: 2 accounts
shards, matching-0 owning every market and matching-1 added while everything runs (accounts starts
without it in its configuration), the pair map in a real ZooKeeper (services.cluster.operator, the code
of `exchange cluster add-shard` and `move-pair`).

While traders keep placing crossing and resting BTC_USDT orders (and ETH_USDT orders), BTC_USDT moves
from matching-0 to matching-1. Checked: every order is either accepted or
refused with UNAVAILABLE, MARKET_MOVING and accepted when resent (none lost, none refused otherwise);
the resting orders keep their priority on the new shard and their later fills settle once; market
data's depth of the pair equals the new shard's book and history stored every event of both shards,
the new shard's trades included, without a restart; after
restarts of both shards and of an accounts shard, accounts and the books agree on every open order
and the balance invariant holds over both accounts shards."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import history_service_pb2_grpc as hgrpc
from exchange.v1 import market_service_pb2 as kpb
from exchange.v1 import market_service_pb2_grpc as kgrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from services.clients import NO_RETRY, AccountsClient, ClientError
from services.cluster.operator import Operator
from services.cluster.pairmap import PairEntry, ZooKeeperPairMap
from services.cluster.servers import ZooKeeper
from services.common.config import load_config
from services.common.errors import Reason
from testkit.cluster import Cluster, assert_cross_shard_invariants
from tests.cluster_fixtures import zookeeper

pytestmark = pytest.mark.slow
__all__ = ["zookeeper"]

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL
LIMIT = types_pb2.ORDER_TYPE_LIMIT
SHARDS: dict[str, list[str]] = {"matching-0": [], "matching-1": []}  # matching-1 owns nothing at first
MARKET = "BTC_USDT"
TRADERS = list(range(1, 9))  # even users on accounts-0, odd ones on accounts-1
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Cluster]:
    accounts_config = tmp_path / "accounts.toml"
    args = ["--config", str(accounts_config)]
    c = Cluster(
        tmp_path,
        shards=SHARDS,
        accounts_shards=2,
        service_args={name: args for name in ("accounts-0", "accounts-1", "history", "market")},
        with_history=True,
        with_market=True,
    )
    # Accounts, history and market start with a configuration that does not have matching-1 yet.
    full = c.config_path.read_text()
    head, _, tail = full.partition('[shards."matching-1"]')
    accounts_config.write_text(head + tail.split("\n", 2)[2])
    assert "matching-1" not in accounts_config.read_text()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _levels(depth: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return [(x.price, x.amount) for x in depth.bids], [(x.price, x.amount) for x in depth.asks]


def _until(what: str, check: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def book(c: Cluster, shard: str, side: int) -> list[mpb.BookOrder]:
    out: list[mpb.BookOrder] = []
    token = ""
    while True:
        resp = c.matching(shard).ListBookOrders(
            mpb.ListBookOrdersRequest(market=MARKET, side=side, page_size=500, page_token=token), timeout=5
        )
        out.extend(resp.orders)
        token = resp.next_page_token
        if not token:
            return out


def open_orders(c: Cluster, user: int) -> set[int]:
    resp = c.accounts_of(user).ListOpenOrders(
        apb.ListOpenOrdersRequest(user_id=user, market=MARKET, page_size=500), timeout=5
    )
    assert not resp.next_page_token
    return {o.order_id for o in resp.orders}


def trader_order(user: int, n: int, rng: random.Random) -> apb.PlaceOrderRequest:
    """A trader's order n: three in four on the moving market (around 30,000), one on ETH_USDT, either
    side, crossing often; client_order_id u<user>-<n>."""
    market = MARKET if n % 4 else "ETH_USDT"
    side = BUY if rng.random() < 0.5 else SELL
    if market == MARKET:
        price, amount = str(29_990 + rng.randrange(0, 21)), "0.001"
    else:
        price, amount = str(1_995 + rng.randrange(0, 11)), "0.01"
    return apb.PlaceOrderRequest(
        user_id=user,
        market=market,
        side=side,
        type=LIMIT,
        price=price,
        amount=amount,
        client_order_id=f"u{user}-{n}",
    )


async def place_until_accepted(
    accounts: AccountsClient, req: apb.PlaceOrderRequest, reasons: tuple[str, ...]
) -> tuple[apb.PlaceOrderResponse, list[str]]:
    """Place `req` (no client-side retry), sending it again after each refusal until it is accepted:
    every refusal must be UNAVAILABLE with one of `reasons` and a RetryInfo delay, which is waited.
    The answer, and the reasons of the refusals on the way."""
    refusals: list[str] = []
    while True:
        try:
            return await accounts.place_order(req, retry=NO_RETRY, timeout=10), refusals
        except ClientError as err:
            assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason in reasons, err
            wait_ms = err.retry_after_ms
            assert wait_ms is not None and wait_ms > 0, err
            refusals.append(err.reason)
            await asyncio.sleep(wait_ms / 1000)


class Load:
    """Traders placing BTC_USDT limit orders around 30000 (half of them crossing) and ETH_USDT orders,
    each resent with its client order id when refused as MARKET_MOVING."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.accepted: dict[str, int] = {}  # client order id -> order id
        self.refused_moving = 0
        self.other_market = 0
        self.stop = asyncio.Event()

    async def trader(self, clients: Any, user: int, seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not self.stop.is_set():
            n += 1
            req = trader_order(user, n, rng)
            cid = req.client_order_id
            resp, refusals = await place_until_accepted(clients.accounts, req, (Reason.MARKET_MOVING,))
            self.refused_moving += len(refusals)
            self.accepted[cid] = resp.order.order_id
            if req.market != MARKET:
                self.other_market += 1
            await asyncio.sleep(0.005)


def test_a_pair_moves_under_load_and_nothing_is_lost(exchange: Cluster, zookeeper: ZooKeeper) -> None:
    c = exchange
    for user in [*TRADERS, 20, 21, 23]:
        for asset, amount in (("USDT", "10000000"), ("BTC", "100"), ("ETH", "1000"), ("SOL", "1000")):
            c.accounts_of(user).Deposit(
                apb.DepositRequest(user_id=user, asset=asset, amount=amount, business="d", business_id=asset),
                timeout=5,
            )
    # Resting orders far from the traded band, in a known time order at one price on each side.
    rest_bids, rest_asks = [], []
    for i, user in enumerate([20, 21, 20, 21, 20]):
        for side, price, ids in ((BUY, "28000", rest_bids), (SELL, "32000", rest_asks)):
            r = c.accounts_of(user).PlaceOrder(
                apb.PlaceOrderRequest(
                    user_id=user, market=MARKET, side=side, type=LIMIT, price=price, amount=f"0.0{i + 1}"
                ),
                timeout=5,
            )
            ids.append(r.order.order_id)
    c.wait_quiet_all()
    assert [o.order_id for o in book(c, "matching-0", BUY) if o.price_ticks == 2_800_000] == rest_bids
    pairs = ZooKeeperPairMap(zookeeper.hosts, root=f"/pair-move-{time.time_ns()}")
    # The operator adds the new shard: its table in the configuration, the process (running), add-shard.
    (c.dir / "accounts.toml").write_text(c.config_path.read_text())

    async def run() -> tuple[Any, Load]:
        load = Load(c)
        clients = c.clients()
        try:
            traders = [asyncio.create_task(load.trader(clients, u, u)) for u in TRADERS]
            await asyncio.sleep(1.5)
            before = len(load.accepted)
            operator = Operator(clients, c.config, pairs, part_orders=50)  # the book in parts
            assert await operator.add_shard("matching-1") and pairs.shards() == ["matching-1"]
            report = await operator.move_pair(MARKET, "matching-1")
            await asyncio.sleep(1.5)
            load.stop.set()
            await asyncio.gather(*traders)
            assert len(load.accepted) > before + 20  # the load went on through the move
            return report, load
        finally:
            await clients.close()

    report, load = asyncio.run(run())
    assert report.from_shard == "matching-0" and report.to_shard == "matching-1" and report.orders >= 10
    assert report.parts == -(-report.orders // 50)
    print(
        f"\nmove: {report}; orders accepted {len(load.accepted)}, refused while moving {load.refused_moving}"
    )
    assert pairs.get(MARKET) == PairEntry("matching-1", "", 2)
    assert load.refused_moving > 0  # orders sent during the move were refused (retryably) and resent

    # The old shard no longer holds the market; the new one holds the resting orders in their priority.
    st0 = c.matching("matching-0").GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
    assert st0.moved_out == {MARKET: "matching-1"} and MARKET not in {m.market for m in st0.markets}
    with pytest.raises(grpc.RpcError) as gone:
        c.matching("matching-0").GetDepth(mpb.GetDepthRequest(market=MARKET), timeout=5)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    c.wait_quiet_all()
    assert [o.order_id for o in book(c, "matching-1", BUY) if o.price_ticks == 2_800_000] == rest_bids
    assert [o.order_id for o in book(c, "matching-1", SELL) if o.price_ticks == 3_200_000] == rest_asks
    # Downstream, without a restart: market data shows the pair's book as the new shard holds it (the
    # old shard's events up to the export, then the new shard's), and history stored the trades of both.
    depth = c.matching("matching-1").GetDepth(mpb.GetDepthRequest(market=MARKET, limit=5000), timeout=5)
    market = kgrpc.MarketServiceStub(c.channel("market"))

    def market_depth() -> Any:
        return market.GetMarketDepth(kpb.GetMarketDepthRequest(market=MARKET, limit=5000), timeout=5)

    _until("market data's depth of the moved pair", lambda: _levels(market_depth()) == _levels(depth))
    history = hgrpc.HistoryServiceStub(c.channel("history"))
    last = {
        s: c.matching(s).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5).event_sequence
        for s in ("matching-0", "matching-1")
    }

    def stored() -> dict[str, int]:
        st = history.GetHistoryStatus(hpb.GetHistoryStatusRequest(), timeout=5)
        assert not st.failed_sequences, st
        return {s: st.checkpoints.get(s, 0) for s in last}

    _until("history's checkpoints of both shards", lambda: stored() == last)
    moved_trades = _trades_after(c, "matching-1", 0)
    assert moved_trades  # the pair traded on its new shard
    for t in moved_trades:
        got = history.ListOrderTrades(hpb.ListOrderTradesRequest(order_id=t.maker_order_id), timeout=5)
        assert t.trade_id in {x.trade_id for x in got.trades}, t

    # A market added without a restart: its table in the operator's configuration, then add-market.
    with_sol = c.dir / "with-sol.toml"
    with_sol.write_text(c.config_path.read_text() + SOL_BTC)
    op_config = load_config(with_sol)
    (c.dir / "accounts.toml").write_text(with_sol.read_text())  # what history and market read

    async def add() -> tuple[str, bool]:
        clients = c.clients()
        try:
            return await Operator(clients, op_config, pairs).add_market("SOL_BTC")
        finally:
            await clients.close()

    cli = [sys.executable, "-m", "services.cli", "--config", str(with_sol), "cluster"]
    zk = ["--zk", zookeeper.hosts, "--zk-root", pairs.root]
    added = subprocess.run(
        [*cli, "add-market", "SOL_BTC", *zk], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert added.returncode == 0 and "SOL_BTC added: trades on matching-1" in added.stdout, added
    assert asyncio.run(add()) == ("matching-1", False)  # a repeat changes nothing
    assert pairs.get("SOL_BTC") == PairEntry("matching-1", "", 1)
    sol_ask = _place(c, 20, "SOL_BTC", SELL, "0.0015", "3")
    _place(c, 21, "SOL_BTC", BUY, "0.0015", "1")

    def sol_trades() -> list[Any]:
        req = kpb.ListRecentTradesRequest(market="SOL_BTC")
        return list(market.ListRecentTrades(req, timeout=5).trades)

    _until("market data of the added market", lambda: len(sol_trades()) == 1)
    sol_depth = market.GetMarketDepth(kpb.GetMarketDepthRequest(market="SOL_BTC"), timeout=5)
    assert _levels(sol_depth) == ([], [("0.0015", "2")]), sol_depth  # every event of it was applied

    # Restarts replay the move and the new market from the journals (and snapshots).
    for name in ("matching-0", "matching-1", "accounts-1", "accounts-0"):
        c.restart(name)
    st = c.accounts_shard(1).GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=5)
    assert st.market_routes == {MARKET: "matching-1"} and not st.halted_markets
    _place(c, 21, "SOL_BTC", BUY, "0.0015", "2")  # after the restarts: fills the rest of the ask
    c.wait_quiet_all()
    o = c.accounts_of(20).GetOrder(apb.GetOrderRequest(user_id=20, order_id=sol_ask), timeout=5).order
    assert o.status == types_pb2.ORDER_STATUS_FILLED, o

    # Fill the resting bids after the move (user 23 sells them all): their fills come from the new
    # shard and settle once.
    status_before = c.matching("matching-1").GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
    c.accounts_of(23).PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=23,
            market=MARKET,
            side=SELL,
            type=LIMIT,
            price="28000",
            amount=str(sum(_lots_of(o) for o in book(c, "matching-1", BUY))),
            time_in_force=types_pb2.TIME_IN_FORCE_IOC,
        ),
        timeout=5,
    )
    statuses = c.wait_quiet_all()
    assert_cross_shard_invariants(statuses)
    assert all(st.quarantined_events == 0 for st in statuses)
    for oid, user in zip(rest_bids, [20, 21, 20, 21, 20], strict=True):
        o = c.accounts_of(user).GetOrder(apb.GetOrderRequest(user_id=user, order_id=oid), timeout=5).order
        assert o.status == types_pb2.ORDER_STATUS_FILLED, o
    fills = _trades_after(c, "matching-1", status_before.event_sequence)
    at_28000 = [t.maker_order_id for t in fills if t.price_ticks == 2_800_000]
    assert at_28000 == rest_bids  # in their old priority
    assert len({(t.trade_id) for t in fills}) == len(fills)

    # No acknowledged order is lost: every BTC_USDT order open in accounts rests on the new shard,
    # and every order resting there is open in accounts.
    in_book = {o.order_id for side in (BUY, SELL) for o in book(c, "matching-1", side)}
    in_accounts = set().union(*(open_orders(c, u) for u in [*TRADERS, 20, 21, 23]))
    assert in_book == in_accounts
    for cid, oid in list(load.accepted.items())[:: max(1, len(load.accepted) // 50)]:
        user = int(cid[1:].split("-")[0])
        o = c.accounts_of(user).GetOrder(apb.GetOrderRequest(user_id=user, order_id=oid), timeout=5).order
        assert o.status != types_pb2.ORDER_STATUS_PENDING, o

    # The operator's view of the pair map (the CLI, with the same ZooKeeper map).
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "--config",
            str(c.config_path),
            "cluster",
            "pairs",
            "--zk",
            zookeeper.hosts,
            "--zk-root",
            pairs.root,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert any(line.split()[:2] == [MARKET, "matching-1"] for line in out.stdout.splitlines()), out.stdout
    depth = subprocess.run(
        [sys.executable, "-m", "services.cli", "--config", str(c.config_path), "depth", MARKET, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert depth.returncode == 0 and '"market": "BTC_USDT"' in depth.stdout, depth.stderr  # from matching-1

    # And back, with the command line (config mode for the shards, the ZooKeeper pair map).
    back = subprocess.run(
        [*cli, "move-pair", MARKET, "--to", "matching-0", *zk],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert back.returncode == 0 and f"{MARKET} moved from matching-1 to matching-0" in back.stdout, back
    bid = _place(c, 20, MARKET, BUY, "27000", "0.01")
    statuses = c.wait_quiet_all()
    assert_cross_shard_invariants(statuses)
    assert bid in {o.order_id for o in book(c, "matching-0", BUY)}
    assert pairs.get(MARKET) == PairEntry("matching-0", "", 4)
    pairs.close()


SOL_BTC = """
[[markets]]
symbol = "SOL_BTC"
base = "SOL"
quote = "BTC"
price_tick = "0.000001"
lot_size = "0.01"
min_amount = "0.01"
min_notional = "0.0001"
maker_fee_rate = "0.001"
taker_fee_rate = "0.002"
shard = "matching-1"
"""


def _place(c: Cluster, user: int, market: str, side: int, price: str, amount: str) -> int:
    r = c.accounts_of(user).PlaceOrder(
        apb.PlaceOrderRequest(user_id=user, market=market, side=side, type=LIMIT, price=price, amount=amount),
        timeout=5,
    )
    return int(r.order.order_id)


def _lots_of(o: mpb.BookOrder) -> Decimal:
    return Decimal(o.remaining_lots) * Decimal("0.00001")  # BTC_USDT's lot size


def _trades_after(c: Cluster, shard: str, after: int) -> list[ev.TradeExecuted]:
    stub = c.matching(shard)
    out: list[ev.TradeExecuted] = []
    end = stub.GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5).event_sequence
    call = stub.StreamEvents(mpb.StreamEventsRequest(from_sequence=after + 1), timeout=10)
    last = after
    for resp in call:
        for e in resp.events:
            if e.market == MARKET and e.WhichOneof("event") == "trade_executed":
                out.append(e.trade_executed)
            last = e.sequence
        if last >= end:
            call.cancel()
            break
    return out


def test_the_zookeeper_pair_map_is_compare_and_set_and_watched(zookeeper: ZooKeeper) -> None:
    pairs = ZooKeeperPairMap(zookeeper.hosts, root=f"/pair-map-{time.time_ns()}")
    seen: list[tuple[str, PairEntry | None]] = []
    try:
        pairs.watch(lambda market, entry: seen.append((market, entry)))
        assert pairs.get(MARKET) is None
        assert pairs.put(MARKET, "matching-0", "matching-1") == PairEntry("matching-0", "matching-1", 1)
        assert pairs.put(MARKET, "matching-1") == PairEntry("matching-1", "", 2)
        assert pairs.put(MARKET, "matching-1").epoch == 2  # already so
        assert pairs.entries() == {MARKET: PairEntry("matching-1", "", 2)}
        assert pairs.add_shard("matching-1") and not pairs.add_shard("matching-1")
        assert pairs.shards() == ["matching-1"]
        deadline = time.monotonic() + 5
        while (MARKET, PairEntry("matching-1", "", 2)) not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (MARKET, PairEntry("matching-1", "", 2)) in seen
    finally:
        pairs.close()
