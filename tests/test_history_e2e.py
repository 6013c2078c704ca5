"""History beside the real exchange: what accounts and matching did ends up in SQL exactly once."""

from __future__ import annotations

import stat
import time
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import history_service_pb2_grpc as hgrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.rpc import error_reason
from services.history.service import SERVICE_NAME
from tests.cluster import Cluster, assert_invariants

pytestmark = pytest.mark.slow

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL


def wait_history(c: Cluster, timeout: float = 60.0) -> hpb.GetHistoryStatusResponse:
    """Until history's checkpoints reached every source's last event."""
    history = hgrpc.HistoryServiceStub(c.channel("history"))
    st = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest())
    targets = {"accounts-0": st.event_sequence}
    for shard in c.shard_names:
        targets[shard] = c.matching(shard).GetMatchingStatus(mpb.GetMatchingStatusRequest()).event_sequence
    deadline = time.monotonic() + timeout
    while True:
        hs = history.GetHistoryStatus(hpb.GetHistoryStatusRequest())
        if all(hs.checkpoints.get(k, 0) >= v for k, v in targets.items()):
            return hs
        if time.monotonic() > deadline:
            raise TimeoutError(f"history at {dict(hs.checkpoints)}, sources at {targets}")
        time.sleep(0.1)


def test_history_records_the_exchange(tmp_path: Path) -> None:
    c = Cluster(tmp_path, with_history=True)
    c.start()
    try:
        history = hgrpc.HistoryServiceStub(c.channel("history"))
        c.accounts.Deposit(
            apb.DepositRequest(user_id=1, asset="USDT", amount="100000", business="chain", business_id="tx1")
        )
        c.accounts.Deposit(
            apb.DepositRequest(user_id=2, asset="BTC", amount="3", business="chain", business_id="tx2")
        )
        sells = [
            c.accounts.PlaceOrder(
                apb.PlaceOrderRequest(
                    user_id=2,
                    market="BTC_USDT",
                    side=SELL,
                    type=types_pb2.ORDER_TYPE_LIMIT,
                    price=str(30000 + 10 * i),
                    amount="0.1",
                )
            ).order.order_id
            for i in range(5)
        ]
        buy = c.accounts.PlaceOrder(
            apb.PlaceOrderRequest(
                user_id=1,
                market="BTC_USDT",
                side=BUY,
                type=types_pb2.ORDER_TYPE_LIMIT,
                price="30030",
                amount="0.35",
            )
        ).order.order_id
        c.accounts.CancelOrder(apb.CancelOrderRequest(user_id=2, order_id=sells[4]))
        st = c.wait_quiet()
        assert_invariants(st)
        wait_history(c)

        # The taker's trades, one per maker level it took, with both sides.
        trades = history.ListOrderTrades(hpb.ListOrderTradesRequest(order_id=buy)).trades
        assert sorted(Decimal(t.price) for t in trades) == [
            Decimal(30000),
            Decimal(30010),
            Decimal(30020),
            Decimal(30030),
        ]
        assert sum(Decimal(t.amount) for t in trades) == Decimal("0.35")
        assert {t.counter_user_id for t in trades} == {2}
        maker_side = history.ListUserTrades(hpb.ListUserTradesRequest(user_id=2, market="BTC_USDT")).trades
        assert len(maker_side) == 4 and all(t.role == "maker" for t in maker_side)
        # The same fills as accounts settled.
        order = c.accounts.GetOrder(apb.GetOrderRequest(user_id=1, order_id=buy)).order
        assert Decimal(order.filled_quote) == sum(Decimal(t.quote_amount) for t in trades)
        assert Decimal(order.fee) == sum(Decimal(t.fee) for t in trades)

        finished = history.ListFinishedOrders(hpb.ListFinishedOrdersRequest(user_id=2)).orders
        by_id = {o.order_id: o for o in finished}
        assert by_id[sells[0]].status == types_pb2.ORDER_STATUS_FILLED
        assert by_id[sells[4]].status == types_pb2.ORDER_STATUS_CANCELED
        open_one = history.GetOrderHistory(hpb.GetOrderHistoryRequest(order_id=sells[3])).order
        assert open_one.status == types_pb2.ORDER_STATUS_PARTIALLY_FILLED

        # Balance history: replaying user 1's USDT changes gives the balance accounts holds.
        entries = list(
            history.ListBalanceHistory(
                hpb.ListBalanceHistoryRequest(user_id=1, asset="USDT", page_size=1000)
            ).entries
        )
        entries.reverse()  # oldest first
        avail = sum(Decimal(e.available_change) for e in entries)
        frozen = sum(Decimal(e.frozen_change) for e in entries)
        last = entries[-1]
        assert (avail, frozen) == (Decimal(last.available), Decimal(last.frozen))
        bal = {b.asset: b for b in c.accounts.GetBalances(apb.GetBalancesRequest(user_id=1)).balances}
        assert Decimal(bal["USDT"].available) == avail and Decimal(bal["USDT"].frozen) == frozen
        assert entries[0].business == "deposit" and entries[0].business_id == "tx1"

        # Healthy: SERVING, nothing listed as unstorable.
        hs = history.GetHistoryStatus(hpb.GetHistoryStatusRequest())
        assert not hs.failed_sequences and not hs.failure_reasons
        health = health_pb2_grpc.HealthStub(c.channel("history"))
        check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING

        # Page tokens are signed with the exchange's generated key (0600), which survives a restart;
        # an altered token is refused.
        key_file = c.dir / "data" / "secrets" / "credentials.json"
        assert len(c.security().credentials.page_token_key) == 32
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        request = hpb.ListBalanceHistoryRequest(user_id=1, asset="USDT", page_size=2)
        first = history.ListBalanceHistory(request)
        second = history.ListBalanceHistory(
            hpb.ListBalanceHistoryRequest(
                user_id=1, asset="USDT", page_size=2, page_token=first.next_page_token
            )
        )
        assert first.next_page_token and second.entries
        c.restart("history")
        history = hgrpc.HistoryServiceStub(c.channel("history"))
        again = history.ListBalanceHistory(
            hpb.ListBalanceHistoryRequest(
                user_id=1, asset="USDT", page_size=2, page_token=first.next_page_token
            )
        )
        assert list(again.entries) == list(second.entries)
        token = first.next_page_token
        altered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
        with pytest.raises(grpc.RpcError) as info:
            history.ListBalanceHistory(
                hpb.ListBalanceHistoryRequest(user_id=1, asset="USDT", page_size=2, page_token=altered)
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert error_reason(info.value) == "INVALID_PAGE_TOKEN"  # type: ignore[arg-type]
    finally:
        c.stop()
