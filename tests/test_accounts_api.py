"""The accounts API through gRPC against real processes: amends are all or nothing and see every
command before them (also inside one SubmitOrders batch), client_order_id reuse, edge bounds, messages
with decimals."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common.rpc import error_reason
from tests.cluster import Cluster, assert_invariants

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL
LIMIT = types_pb2.ORDER_TYPE_LIMIT
OK = 0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("accounts-api"))
    c.start()
    yield c
    c.stop()


def deposit(c: Cluster, user: int, asset: str, amount: str, tx: str) -> None:
    c.accounts.Deposit(
        apb.DepositRequest(user_id=user, asset=asset, amount=amount, business="chain", business_id=tx)
    )


def limit(
    user: int, side: int, price: str, amount: str, cid: str = "", market: str = "BTC_USDT"
) -> apb.PlaceOrderRequest:
    return apb.PlaceOrderRequest(
        user_id=user, market=market, side=side, type=LIMIT, price=price, amount=amount, client_order_id=cid
    )


def refusal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo")


def book_order(c: Cluster, order_id: int, side: int) -> tuple[int, int] | None:
    """(price ticks, remaining lots) in matching's book (BTC_USDT: tick 0.01, lot 0.00001)."""
    orders = (
        c.matching()
        .ListBookOrders(mpb.ListBookOrdersRequest(market="BTC_USDT", side=side, page_size=1000))
        .orders
    )
    for o in orders:
        if o.order_id == order_id:
            return o.price_ticks, o.remaining_lots
    return None


def test_amend_is_all_or_nothing(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 1001, "USDT", "20000", "a1")
    o = c.accounts.PlaceOrder(limit(1001, BUY, "30000", "0.5")).order
    c.wait_quiet()
    before = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True))
    err = refusal(
        lambda: c.accounts.AmendOrder(
            apb.AmendOrderRequest(user_id=1001, order_id=o.order_id, new_amount="0.4", new_price="50000")
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert error_reason(err) == "INSUFFICIENT_BALANCE"
    assert "USDT" in err.details() and "0000000000" not in err.details()  # type: ignore[attr-defined]
    after = c.wait_quiet()
    assert (
        after.applied_sequence,
        c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True)).state_hash,
    ) == (
        before.applied_sequence,
        before.state_hash,
    )
    got = c.accounts.GetOrder(apb.GetOrderRequest(user_id=1001, order_id=o.order_id)).order
    assert (got.amount, got.price) == ("0.5", "30000")
    assert book_order(c, o.order_id, BUY) == (3_000_000, 50_000)
    # Both at once, affordable: reduced and moved.
    c.accounts.AmendOrder(
        apb.AmendOrderRequest(user_id=1001, order_id=o.order_id, new_amount="0.4", new_price="31000")
    )
    st = c.wait_quiet()
    assert_invariants(st)
    assert book_order(c, o.order_id, BUY) == (3_100_000, 40_000)
    got = c.accounts.GetOrder(apb.GetOrderRequest(user_id=1001, order_id=o.order_id)).order
    assert (got.amount, got.price) == ("0.4", "31000")
    assert st.quarantined_events == 0


def test_amend_and_cancel_see_orders_placed_earlier_in_the_same_batch(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 1002, "USDT", "100000", "a2")
    amend = apb.AmendOrderRequest
    cmds = [
        apb.OrderCommand(place_order=limit(1002, BUY, "20000", "1", "b-1")),
        apb.OrderCommand(amend_order=amend(user_id=1002, client_order_id="b-1", new_amount="0.6")),
        apb.OrderCommand(place_order=limit(1002, BUY, "20000", "1", "b-2")),
        apb.OrderCommand(cancel_order=apb.CancelOrderRequest(user_id=1002, client_order_id="b-2")),
        apb.OrderCommand(place_order=limit(1002, BUY, "20000", "1", "b-3")),
        apb.OrderCommand(
            amend_order=amend(user_id=1002, client_order_id="b-3", new_amount="0.5", new_price="21000")
        ),
        apb.OrderCommand(
            amend_order=amend(user_id=1002, client_order_id="b-4", new_price="1")
        ),  # no such order
        apb.OrderCommand(place_order=limit(1002, BUY, "20000", "1", "b-5")),
        apb.OrderCommand(
            amend_order=amend(user_id=1002, client_order_id="b-5", market="BTC_USDT", new_amount="0.9")
        ),
    ]
    (resp,) = list(
        c.accounts.SubmitOrders(iter([apb.SubmitOrdersRequest(batch_id=1, commands=cmds, full_orders=True)]))
    )
    codes = [(r.code, r.reason) for r in resp.results]
    assert (
        codes == [(OK, "")] * 6 + [(grpc.StatusCode.NOT_FOUND.value[0], "ORDER_NOT_FOUND")] + [(OK, "")] * 2
    )
    assert resp.results[1].order.client_order_id == "b-1"
    c.wait_quiet()

    def order(cid: str) -> types_pb2.Order:
        return c.accounts.GetOrder(apb.GetOrderRequest(user_id=1002, client_order_id=cid)).order

    assert order("b-1").amount == "0.6" and order("b-5").amount == "0.9"
    assert order("b-2").status == types_pb2.ORDER_STATUS_CANCELED
    assert (order("b-3").amount, order("b-3").price) == ("0.5", "21000")
    assert book_order(c, order("b-3").order_id, BUY) == (2_100_000, 50_000)
    assert_invariants(c.wait_quiet())


def test_a_reused_client_order_id_with_other_parameters_is_refused(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 1003, "USDT", "100000", "a3")
    first = c.accounts.PlaceOrder(limit(1003, BUY, "20000", "0.1", "same")).order
    again = c.accounts.PlaceOrder(limit(1003, BUY, "20000", "0.1", "same"))
    assert again.duplicate and again.order.order_id == first.order_id
    err = refusal(lambda: c.accounts.PlaceOrder(limit(1003, BUY, "20001", "0.1", "same")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS  # type: ignore[attr-defined]
    info = error_info(err)
    assert info.reason == "DUPLICATE_CLIENT_ORDER_ID" and info.metadata["order_id"] == str(first.order_id)


@pytest.mark.parametrize("user", [2**63, 2**64 - 1])
def test_user_ids_beyond_int64_are_refused(cluster: Cluster, user: int) -> None:
    c = cluster
    calls = [
        lambda: c.accounts.Deposit(
            apb.DepositRequest(user_id=user, asset="USDT", amount="1", business="b", business_id="x")
        ),
        lambda: c.accounts.Withdraw(
            apb.WithdrawRequest(user_id=user, asset="USDT", amount="1", business="b", business_id="x")
        ),
        lambda: c.accounts.PlaceOrder(limit(user, BUY, "1", "1")),
        lambda: c.accounts.GetBalances(apb.GetBalancesRequest(user_id=user)),
        lambda: c.accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=user)),
    ]
    before = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True))
    for call in calls:
        err = refusal(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert error_reason(err) == "VALUE_OUT_OF_RANGE"
    after = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True))
    assert after.state_hash == before.state_hash


def test_a_megabyte_client_order_id_gets_a_short_message(cluster: Cluster) -> None:
    c = cluster
    huge = "x" * (1 << 20)
    for call in (
        lambda: c.accounts.PlaceOrder(limit(1, BUY, "30000", "0.1", huge)),
        lambda: c.accounts.CancelOrder(apb.CancelOrderRequest(user_id=1, client_order_id=huge)),
        lambda: c.accounts.GetOrder(apb.GetOrderRequest(user_id=1, client_order_id=huge)),
    ):
        err = refusal(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert error_reason(err) == "FIELD_TOO_LONG"
        assert len(err.details()) < 200  # type: ignore[attr-defined]


def test_errors_show_decimals_with_the_symbol(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 1004, "USDT", "94000", "a4")
    err = refusal(
        lambda: c.accounts.Withdraw(
            apb.WithdrawRequest(user_id=1004, asset="USDT", amount="1000000", business="w", business_id="w1")
        )
    )
    assert error_reason(err) == "INSUFFICIENT_BALANCE"
    assert err.details() == "insufficient USDT: available 94000 USDT, needed 1000000 USDT"  # type: ignore[attr-defined]


def test_list_open_orders_clamps_the_page_size(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 1005, "USDT", "1000000", "a5")
    cmds = [apb.OrderCommand(place_order=limit(1005, BUY, str(10000 + i), "0.001")) for i in range(1001)]
    (resp,) = list(c.accounts.SubmitOrders(iter([apb.SubmitOrdersRequest(batch_id=1, commands=cmds)])))
    assert all(r.code == OK for r in resp.results)
    c.wait_quiet()
    page = c.accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=1005, page_size=100_000))
    assert len(page.orders) == 1000 and page.next_page_token
    rest = c.accounts.ListOpenOrders(
        apb.ListOpenOrdersRequest(user_id=1005, page_size=100_000, page_token=page.next_page_token)
    )
    assert len(rest.orders) == 1 and not rest.next_page_token
    assert len(c.accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=1005)).orders) == 100
    err = refusal(lambda: c.accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=1005, page_token="zz")))
    assert error_reason(err) == "INVALID_PAGE_TOKEN"
    (cancel,) = list(
        c.accounts.SubmitOrders(
            iter(
                [
                    apb.SubmitOrdersRequest(
                        commands=[
                            apb.OrderCommand(cancel_all_orders=apb.CancelAllOrdersRequest(user_id=1005))
                        ]
                    )
                ]
            )
        )
    )
    assert cancel.results[0].order_count == 1001
    assert_invariants(c.wait_quiet())
