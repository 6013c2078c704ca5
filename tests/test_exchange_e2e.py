"""The single-instance exchange through gRPC: real accounts and matching processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from tests.cluster import Cluster, assert_invariants

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("e2e"))
    c.start()
    yield c
    c.stop()


def deposit(c: Cluster, user: int, asset: str, amount: str, tx: str) -> apb.DepositResponse:
    return c.accounts.Deposit(
        apb.DepositRequest(user_id=user, asset=asset, amount=amount, business="chain", business_id=tx)
    )


def balances(c: Cluster, user: int) -> dict[str, tuple[str, str]]:
    resp = c.accounts.GetBalances(apb.GetBalancesRequest(user_id=user))
    return {b.asset: (b.available, b.frozen) for b in resp.balances}


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return,attr-defined]


def test_order_lifecycle_through_grpc(cluster: Cluster) -> None:
    c = cluster
    assert deposit(c, 101, "USDT", "100000", "t1").balance.available == "100000"
    assert deposit(c, 101, "USDT", "100000", "t1").duplicate
    deposit(c, 102, "BTC", "2", "t2")
    sell = c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=102,
            market="BTC_USDT",
            side=SELL,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="30000",
            amount="1",
        )
    )
    assert sell.order.status == types_pb2.ORDER_STATUS_PENDING and sell.order.order_id > 0
    buy = c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=101,
            market="BTC_USDT",
            side=BUY,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="30010",
            amount="0.25",
            client_order_id="my-1",
        )
    )
    st = c.wait_quiet()
    assert_invariants(st)
    order = c.accounts.GetOrder(apb.GetOrderRequest(user_id=101, order_id=buy.order.order_id)).order
    assert order.status == types_pb2.ORDER_STATUS_FILLED
    assert order.filled_amount == "0.25" and order.filled_quote == "7500"
    assert order.fee == "0.0005" and order.fee_asset == "BTC"
    assert balances(c, 101)["USDT"] == ("92500", "0")
    assert balances(c, 101)["BTC"] == ("0.2495", "0")
    assert balances(c, 102)["BTC"] == ("1", "0.75")
    depth = c.matching().GetDepth(mpb.GetDepthRequest(market="BTC_USDT"))
    assert [(lv.price, lv.amount) for lv in depth.asks] == [("30000", "0.75")]
    # Repeated client order id (same parameters): the original comes back.
    again = c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=101,
            market="BTC_USDT",
            side=BUY,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="30010",
            amount="0.25",
            client_order_id="my-1",
        )
    )
    assert again.duplicate and again.order.order_id == buy.order.order_id
    # Cancel the rest of the sell order.
    c.accounts.CancelOrder(apb.CancelOrderRequest(user_id=102, order_id=sell.order.order_id))
    st = c.wait_quiet()
    assert_invariants(st)
    assert balances(c, 102)["BTC"] == ("1.75", "0")
    assert balances(c, 102)["USDT"] == ("7492.5", "0")
    assert balances(c, 0)["USDT"] == ("7.5", "0")  # the fee account
    assert c.matching().GetDepth(mpb.GetDepthRequest(market="BTC_USDT")).asks == []


def test_bad_input_gets_precise_status_and_changes_nothing(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 201, "USDT", "1000", "t201")
    before = c.accounts.GetAccountsStatus(
        apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True)
    ).state_hash

    def place(**kw: object) -> object:
        base: dict[str, object] = {
            "user_id": 201,
            "market": "BTC_USDT",
            "side": BUY,
            "type": types_pb2.ORDER_TYPE_LIMIT,
            "price": "30000",
            "amount": "0.01",
        }
        base.update(kw)
        return lambda: c.accounts.PlaceOrder(apb.PlaceOrderRequest(**base))  # type: ignore[arg-type]

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(place(market="NOPE_USDT")) == grpc.StatusCode.NOT_FOUND
    assert code_of(place(price="NaN")) == invalid
    assert code_of(place(price="-30000")) == invalid
    assert code_of(place(price="3e4")) == invalid
    assert code_of(place(price="30000.001")) == invalid  # not a multiple of the tick
    assert code_of(place(amount="0.000001")) == invalid  # not a multiple of the lot
    assert code_of(place(amount="0.00001")) == invalid  # below min amount
    assert code_of(place(price="100", amount="0.001")) == invalid  # below min notional
    assert code_of(place(amount="1")) == grpc.StatusCode.FAILED_PRECONDITION  # insufficient balance
    assert code_of(place(user_id=0)) == invalid
    assert code_of(place(side=0)) == invalid
    assert code_of(lambda: c.accounts.CancelOrder(apb.CancelOrderRequest(user_id=201, order_id=424242))) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert code_of(
        lambda: c.accounts.Withdraw(
            apb.WithdrawRequest(
                user_id=201, asset="USDT", amount="1000.00000001", business="w", business_id="w1"
            )
        )
    ) == (grpc.StatusCode.FAILED_PRECONDITION)
    assert code_of(lambda: c.accounts.GetBalances(apb.GetBalancesRequest(user_id=201, assets=["XYZ"]))) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert (
        code_of(lambda: c.matching().GetDepth(mpb.GetDepthRequest(market="BTC_USDT", merge="0.001")))
        == invalid
    )
    after = c.accounts.GetAccountsStatus(
        apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True)
    ).state_hash
    assert before == after


def test_batched_streaming_entry(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 301, "USDT", "1000000", "t301")
    deposit(c, 302, "BTC", "100", "t302")

    def requests() -> Iterator[apb.SubmitOrdersRequest]:
        for batch in range(5):
            cmds = []
            for i in range(200):
                user, side, price = (301, BUY, 29000 + i) if i % 2 == 0 else (302, SELL, 31000 + i)
                cmds.append(
                    apb.OrderCommand(
                        place_order=apb.PlaceOrderRequest(
                            user_id=user,
                            market="BTC_USDT",
                            side=side,
                            type=types_pb2.ORDER_TYPE_LIMIT,
                            price=str(price),
                            amount="0.001",
                        )
                    )
                )
            cmds.append(
                apb.OrderCommand(
                    place_order=apb.PlaceOrderRequest(
                        user_id=301,
                        market="BTC_USDT",
                        side=BUY,
                        type=types_pb2.ORDER_TYPE_LIMIT,
                        price="NaN",
                        amount="1",
                    )
                )
            )
            yield apb.SubmitOrdersRequest(batch_id=batch, commands=cmds)

    responses = list(c.accounts.SubmitOrders(requests()))
    assert [r.batch_id for r in responses] == [0, 1, 2, 3, 4]
    for r in responses:
        assert len(r.results) == 201
        assert all(x.code == 0 and x.order.order_id for x in r.results[:200])
        assert r.results[200].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    st = c.wait_quiet()
    assert_invariants(st)
    open_orders = c.accounts.ListOpenOrders(
        apb.ListOpenOrdersRequest(user_id=301, market="BTC_USDT", page_size=1000)
    )
    assert len(open_orders.orders) == 500
    cancel = apb.SubmitOrdersRequest(
        batch_id=9,
        commands=[
            apb.OrderCommand(cancel_all_orders=apb.CancelAllOrdersRequest(user_id=301)),
            apb.OrderCommand(cancel_all_orders=apb.CancelAllOrdersRequest(user_id=302)),
        ],
    )
    (resp,) = list(c.accounts.SubmitOrders(iter([cancel])))
    assert [r.order_count for r in resp.results] == [500, 500]
    st = c.wait_quiet()
    assert_invariants(st)
    assert balances(c, 301)["USDT"] == ("1000000", "0")


def test_user_event_stream_sees_order_lifecycle(cluster: Cluster) -> None:
    c = cluster
    dep = deposit(c, 401, "USDT", "5000", "t401")
    placed = c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=401,
            market="ETH_USDT",
            side=BUY,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="2000",
            amount="1",
        )
    )
    c.accounts.CancelOrder(apb.CancelOrderRequest(user_id=401, order_id=placed.order.order_id))
    c.wait_quiet()
    stream = c.accounts.StreamUserEvents(apb.StreamUserEventsRequest(user_id=401, from_sequence=dep.sequence))
    seen: list[str] = []
    deadline = time.monotonic() + 10
    for resp in stream:
        for e in resp.events:
            assert e.user_id == 401
            kind = e.WhichOneof("event")
            if kind == "order_updated":
                seen.append(f"order:{e.order_updated.status}")
            elif kind == "balance_changed":
                seen.append(f"balance:{e.balance_changed.business}")
        if "order:5" in seen or time.monotonic() > deadline:
            break
    stream.cancel()
    assert seen[:2] == ["balance:1", "balance:3"]  # deposit, freeze
    assert "balance:4" in seen and seen[-1] == "order:5"  # unfreeze, canceled
    # Open (order:2) is there unless matching's acceptance and cancel were settled in one batch: an
    # order update carries the order's state after each settlement batch (StreamUserEvents).
    assert [k for k in seen if k.startswith("order:")] in (["order:2", "order:5"], ["order:5"]), seen


def test_two_shards_split_the_markets(tmp_path: Path) -> None:
    c = Cluster(
        tmp_path,
        shards={"matching-0": ["BTC_USDT", "ETH_BTC"], "matching-1": ["ETH_USDT", "SOL_USDT", "DOGE_USDT"]},
    )
    c.start()
    try:
        deposit(c, 1, "USDT", "100000", "a")
        deposit(c, 2, "BTC", "10", "b")
        deposit(c, 2, "ETH", "100", "c")
        for market, side, user, price, amount in [
            ("BTC_USDT", SELL, 2, "30000", "1"),
            ("BTC_USDT", BUY, 1, "30000", "0.5"),
            ("ETH_USDT", SELL, 2, "2000", "10"),
            ("ETH_USDT", BUY, 1, "2001", "4"),
        ]:
            c.accounts.PlaceOrder(
                apb.PlaceOrderRequest(
                    user_id=user,
                    market=market,
                    side=side,
                    type=types_pb2.ORDER_TYPE_LIMIT,
                    price=price,
                    amount=amount,
                )
            )
        st = c.wait_quiet()
        assert_invariants(st)
        assert set(st.settled_sequences) == {"matching-0", "matching-1"}
        s0 = c.matching("matching-0").GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True))
        s1 = c.matching("matching-1").GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True))
        assert {m.market for m in s0.markets} == {"BTC_USDT", "ETH_BTC"}
        assert {m.market for m in s1.markets} == {"ETH_USDT", "SOL_USDT", "DOGE_USDT"}
        assert balances(c, 1)["BTC"] == ("0.499", "0") and balances(c, 1)["ETH"] == ("3.992", "0")
        with pytest.raises(grpc.RpcError) as info:
            c.matching("matching-0").GetDepth(mpb.GetDepthRequest(market="ETH_USDT"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        c.stop()


def test_gtd_orders_are_killed_by_the_shard_timer(cluster: Cluster) -> None:
    c = cluster
    deposit(c, 501, "USDT", "10000", "t501")
    expire = int(time.time() * 1_000_000) + 1_500_000
    placed = c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=501,
            market="SOL_USDT",
            side=BUY,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="20",
            amount="10",
            time_in_force=types_pb2.TIME_IN_FORCE_GTD,
            expire_time_us=expire,
        )
    )
    c.wait_quiet()
    assert balances(c, 501)["USDT"] == ("9800", "200")
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        status = c.accounts.GetOrder(
            apb.GetOrderRequest(user_id=501, order_id=placed.order.order_id)
        ).order.status
        if status == types_pb2.ORDER_STATUS_EXPIRED:
            break
        time.sleep(0.2)
    assert status == types_pb2.ORDER_STATUS_EXPIRED
    assert time.time() * 1_000_000 >= expire
    c.wait_quiet()
    assert balances(c, 501)["USDT"] == ("10000", "0")


def test_oversized_batch_is_refused(cluster: Cluster) -> None:
    c = cluster
    cmd = apb.OrderCommand(cancel_all_orders=apb.CancelAllOrdersRequest(user_id=1))
    req = apb.SubmitOrdersRequest(batch_id=1, commands=[cmd] * 10_001)
    with pytest.raises(grpc.RpcError) as info:
        list(c.accounts.SubmitOrders(iter([req])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_backpressure_answers_unavailable_with_retry_info(tmp_path: Path) -> None:
    """With the shard down, accepted orders wait in the outbox; past its bound new orders are refused
    with UNAVAILABLE and a retry delay, and nothing grows without bound."""
    from services.common.rpc import retry_after_ms

    c = Cluster(tmp_path, accounts_options={"max_outbox_lag": 20})
    c.start()
    try:
        deposit(c, 1, "USDT", "100000", "x")
        c.kill("matching-0")
        codes = []
        for i in range(40):
            try:
                c.accounts.PlaceOrder(
                    apb.PlaceOrderRequest(
                        user_id=1,
                        market="BTC_USDT",
                        side=BUY,
                        type=types_pb2.ORDER_TYPE_LIMIT,
                        price=str(20000 + i),
                        amount="0.01",
                    ),
                    timeout=5,
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                last = exc
        assert codes[:20] == [grpc.StatusCode.OK] * 20
        assert set(codes[20:]) == {grpc.StatusCode.UNAVAILABLE}
        assert retry_after_ms(last) == 500  # type: ignore[arg-type]
        st = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True))
        assert st.outbox_pending["matching-0"] == 20
        c.start(["matching-0"])
        st = c.wait_quiet()
        assert_invariants(st)
        assert st.outbox_pending["matching-0"] == 0
        assert (
            len(
                c.matching()
                .ListBookOrders(mpb.ListBookOrdersRequest(market="BTC_USDT", side=BUY, page_size=100))
                .orders
            )
            == 20
        )
    finally:
        c.stop()
