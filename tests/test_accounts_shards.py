"""Accounts sharded by user, against real processes: 2 accounts shards x 2 matching shards (+ history).

Users with an even id belong to accounts-0, odd ones to accounts-1. Every accounts shard forwards to
every matching shard and settles its own users' side of every matching shard's events."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from services.clients.errors import status_details
from testkit.cluster import Cluster, assert_cross_shard_invariants

pytestmark = pytest.mark.slow

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL
LIMIT = types_pb2.ORDER_TYPE_LIMIT
SHARDS = {"matching-0": ["BTC_USDT"], "matching-1": ["ETH_USDT", "SOL_USDT", "DOGE_USDT"]}


@pytest.fixture(scope="module")
def shards2x2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One exchange for the module (its start is most of the time): 2 accounts x 2 matching shards,
    history, snapshots every 150 commands (so a restart is snapshot + journal)."""
    c = Cluster(
        tmp_path_factory.mktemp("shards"),
        shards=SHARDS,
        accounts_shards=2,
        with_history=True,
        accounts_options={"snapshot_every": 150},
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


def total_trades(c: Cluster) -> int:
    return sum(
        m.last_trade_id
        for shard in c.shard_names
        for m in c.matching(shard).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5).markets
    )


def balances(c: Cluster, user: int) -> dict[str, tuple[Decimal, Decimal]]:
    resp = c.accounts_of(user).GetBalances(apb.GetBalancesRequest(user_id=user), timeout=5)
    return {b.asset: (Decimal(b.available), Decimal(b.frozen)) for b in resp.balances}


def wait_history(c: Cluster, statuses: list[apb.GetAccountsStatusResponse], timeout: float = 30.0) -> Any:
    """Until history stored every event of every source (one checkpoint per source)."""
    from exchange.v1 import history_service_pb2_grpc as hgrpc

    want = {st.source: st.event_sequence for st in statuses}
    for name in c.shard_names:
        want[name] = (
            c.matching(name).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5).event_sequence
        )
    stub = hgrpc.HistoryServiceStub(c.channel("history"))
    deadline = time.monotonic() + timeout
    while True:
        st = stub.GetHistoryStatus(hpb.GetHistoryStatusRequest(), timeout=5)
        if all(st.checkpoints.get(k, 0) == v for k, v in want.items()):
            return stub
        if time.monotonic() > deadline:
            raise TimeoutError(f"history at {dict(st.checkpoints)}, want {want}")
        time.sleep(0.05)


def test_two_accounts_shards_by_two_matching_shards(
    shards2x2: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    c = shards2x2

    async def flow() -> list[Any]:
        async with c.clients() as clients:
            acc = clients.accounts  # routes every call by its user
            assert acc.shard_count == 2
            for user, asset, amount in (
                (1, "USDT", "100000"),
                (2, "BTC", "1"),
                (3, "ETH", "10"),
                (4, "USDT", "50000"),
            ):
                await acc.deposit(
                    apb.DepositRequest(
                        user_id=user, asset=asset, amount=amount, business="d", business_id=f"d{user}"
                    )
                )
            # BTC_USDT (matching-0): maker 2 (accounts-0) sells, taker 1 (accounts-1) buys.
            sell = await acc.place_order(
                apb.PlaceOrderRequest(
                    user_id=2, market="BTC_USDT", side=SELL, type=LIMIT, price="30000", amount="0.5"
                )
            )
            # Commands of two sources reach a matching shard in either order: the maker rests first.
            c.wait_quiet_all()
            await acc.place_order(
                apb.PlaceOrderRequest(
                    user_id=1, market="BTC_USDT", side=BUY, type=LIMIT, price="30000", amount="0.2"
                )
            )
            # ETH_USDT (matching-1): maker 3 (accounts-1) rests; then one batch over both shards:
            # taker 4 (accounts-0) and resting orders of 1 and 4; results come back in the batch's order.
            await acc.place_order(
                apb.PlaceOrderRequest(
                    user_id=3, market="ETH_USDT", side=SELL, type=LIMIT, price="2000", amount="4"
                )
            )
            c.wait_quiet_all()
            batch = apb.SubmitOrdersRequest(batch_id=7)
            for user, side, price, amount in (
                (4, BUY, "2000", "1.5"),
                (1, BUY, "1000", "1"),
                (4, BUY, "1500", "0.1"),
            ):
                batch.commands.add().place_order.CopyFrom(
                    apb.PlaceOrderRequest(
                        user_id=user, market="ETH_USDT", side=side, type=LIMIT, price=price, amount=amount
                    )
                )

            async def one() -> Any:
                yield batch

            answers = [r async for r in acc.submit_orders(one())]
            assert [r.batch_id for r in answers] == [7]
            assert [r.code for r in answers[0].results] == [0, 0, 0]
            ids = [r.order.order_id for r in answers[0].results]
            # Order ids of accounts-0 are odd, of accounts-1 even.
            assert [i % 2 for i in ids] == [1, 0, 1]
            await acc.cancel_order(apb.CancelOrderRequest(user_id=2, order_id=sell.order.order_id))
            return ids

    ids = asyncio.run(flow())
    statuses = c.wait_quiet_all()
    assert [s.source for s in statuses] == ["accounts-0", "accounts-1"]
    assert_cross_shard_invariants(statuses)
    cross = {(s.source, a.asset): Decimal(a.cross_shard) for s in statuses for a in s.audit}
    assert cross[("accounts-0", "BTC")] == Decimal("-0.2") and cross[("accounts-1", "BTC")] == Decimal("0.2")
    assert cross[("accounts-0", "ETH")] == Decimal("1.5") and cross[("accounts-1", "USDT")] == Decimal(
        "-3000"
    )

    # Each side settled once, fees to each shard's own fee account (maker 0.1%, taker 0.2%).
    assert balances(c, 1)["BTC"] == (Decimal("0.1996"), Decimal(0))
    assert balances(c, 1)["USDT"] == (Decimal("100000") - 6000 - 1000, Decimal("1000"))
    assert balances(c, 2)["USDT"] == (Decimal("5994"), Decimal(0))
    assert balances(c, 2)["BTC"] == (Decimal("0.8"), Decimal(0))  # the rest of the sell was canceled
    assert balances(c, 3)["USDT"] == (Decimal("2997"), Decimal(0))
    assert balances(c, 3)["ETH"] == (Decimal("6"), Decimal("2.5"))
    assert balances(c, 4)["ETH"] == (Decimal("1.497"), Decimal(0))
    fees = {
        s: {
            b.asset: Decimal(b.available)
            for b in c.accounts_shard(i).GetBalances(apb.GetBalancesRequest(user_id=0)).balances
        }
        for i, s in enumerate(("accounts-0", "accounts-1"))
    }
    assert fees["accounts-0"]["USDT"] == 6 and fees["accounts-0"]["ETH"] == Decimal("0.003")
    assert fees["accounts-1"]["BTC"] == Decimal("0.0004") and fees["accounts-1"]["USDT"] == 3

    # A shard refuses a user it does not own, naming the owner.
    with pytest.raises(grpc.RpcError) as err:
        c.accounts_shard(0).GetBalances(apb.GetBalancesRequest(user_id=3), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason, metadata, _ = status_details(err.value)
    assert reason == "USER_NOT_ON_SHARD" and metadata["shard"] == "accounts-1"
    with pytest.raises(grpc.RpcError) as err:
        c.accounts_shard(1).PlaceOrder(
            apb.PlaceOrderRequest(user_id=4, market="ETH_USDT", side=BUY, type=LIMIT, price="1", amount="10"),
            timeout=5,
        )
    assert status_details(err.value)[0] == "USER_NOT_ON_SHARD"

    # The CLI routes by user and audits across the shards.
    from services import cli

    capsys.readouterr()
    assert cli.main(["--config", str(c.config_path), "balance", "3"]) == 0
    assert "2997 USDT" in capsys.readouterr().out
    assert cli.main(["--config", str(c.config_path), "status", "accounts", "--audit"]) == 0
    text = capsys.readouterr().out
    assert "accounts-0 at" in text and "accounts-1 at" in text and "MISMATCH" not in text
    assert "audit across 2 accounts shards: balances = deposits - withdrawals" in text, text

    # History: both accounts sources with a checkpoint each; every user's trades and balance rows.
    history = wait_history(c, statuses)
    for user, n in ((1, 1), (2, 1), (3, 1), (4, 1)):
        trades = history.ListUserTrades(hpb.ListUserTradesRequest(user_id=user), timeout=5).trades
        assert len(trades) == n, (user, trades)
    rows = history.ListBalanceHistory(hpb.ListBalanceHistoryRequest(user_id=4), timeout=5).entries
    assert {r.business for r in rows} >= {"deposit", "order_freeze", "trade", "fee"}
    assert {ids[0], ids[2]} <= {int(r.business_id) for r in rows if r.business == "order_freeze"}


class CrossingLoad(threading.Thread):
    """Pairs of crossing orders between a user of each accounts shard, on both matching shards, each
    with a client order id; an order whose call failed (its shard down) is sent again with the same id
    until it is answered."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.acked: dict[str, tuple[int, int]] = {}  # client order id -> (user, order id)
        self.stop_flag = threading.Event()
        self.failures = 0

    def place(self, user: int, cid: str, side: Any, market: str) -> None:
        req = apb.PlaceOrderRequest(
            user_id=user,
            market=market,
            side=side,
            type=LIMIT,
            # (1900: no order the test above left resting on ETH_USDT crosses it)
            price="30000" if market == "BTC_USDT" else "1900",
            amount="0.01",
            client_order_id=cid,
        )
        while True:
            try:
                resp = self.c.accounts_of(user).PlaceOrder(req, timeout=5)
                self.acked[cid] = (user, resp.order.order_id)
                return
            except grpc.RpcError:
                self.failures += 1
                time.sleep(0.05)

    def run(self) -> None:
        n = 0
        while not self.stop_flag.is_set():
            n += 1
            maker, taker = (12, 13) if n % 2 else (15, 14)
            market = "ETH_USDT" if n % 3 == 0 else "BTC_USDT"
            self.place(maker, f"m{n}", SELL, market)
            self.place(taker, f"t{n}", BUY, market)


def test_kill_an_accounts_shard_mid_flow(shards2x2: Cluster) -> None:
    """Users 12..15 (of their own: the test runs on the cluster the test above used, or alone)."""
    c = shards2x2
    trades_before = total_trades(c)
    for user in (12, 13, 14, 15):
        c.accounts_of(user).Deposit(
            apb.DepositRequest(user_id=user, asset="USDT", amount="1000000", business="d", business_id="u")
        )
        for asset in ("BTC", "ETH"):
            c.accounts_of(user).Deposit(
                apb.DepositRequest(user_id=user, asset=asset, amount="100", business="d", business_id=asset)
            )
    load = CrossingLoad(c)
    load.start()
    time.sleep(1.0)
    c.kill("accounts-1", signal.SIGKILL)
    time.sleep(0.3)
    c.start(["accounts-1"])
    time.sleep(1.0)
    load.stop_flag.set()
    load.join(30)
    statuses = c.wait_quiet_all(timeout=60)
    assert_cross_shard_invariants(statuses)
    assert load.failures > 0, "the load should have met the killed shard"
    assert len(load.acked) > 50

    # Nothing lost or doubled: every acknowledged order is there once, under its client order id.
    for cid, (user, oid) in load.acked.items():
        got = c.accounts_of(user).GetOrder(apb.GetOrderRequest(user_id=user, client_order_id=cid), timeout=5)
        assert got.order.order_id == oid
    last_trade = total_trades(c) - trades_before
    pairs = len(load.acked) // 2
    assert last_trade == pairs, "each maker/taker pair traded exactly once"
    assert all(s.settled_sequences["matching-1"] > 0 for s in statuses)
    history = wait_history(c, statuses)
    trades = {
        u: history.ListUserTrades(hpb.ListUserTradesRequest(user_id=u, page_size=1000), timeout=5).trades
        for u in (12, 13, 14, 15)
    }
    assert sum(len(t) for t in trades.values()) == 2 * last_trade
    assert len({(t.market, t.trade_id, t.user_id) for ts in trades.values() for t in ts}) == 2 * last_trade
    # Every fill settled once on each side: each user's BTC and ETH moved by exactly its fills (the
    # buyers receive them less the fee of their role).
    for u, ts in trades.items():
        for base in ("BTC", "ETH"):
            mine = [t for t in ts if t.market == f"{base}_USDT"]
            held = sum(balances(c, u)[base])
            if u in (12, 15):
                expected = 100 - sum(Decimal(t.amount) for t in mine)
            else:
                expected = 100 + sum(Decimal(t.amount) - Decimal(t.fee) for t in mine)
            assert held == expected, (u, base, held, expected)
