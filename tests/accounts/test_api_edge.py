"""Every integer and string field of every AccountsService request is bounded at the edge
(services.accounts.views with services.common.limits): INVALID_ARGUMENT with a precise reason, and a
message that quotes at most a short prefix of what was sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2 as apb

from services.accounts import views
from services.common.errors import ExchangeError, InvalidArgument, Reason
from services.common.limits import MAX_PAGE_SIZE
from testkit.accounts_sim import default_catalog

CATALOG = default_catalog()
TOO_BIG_USERS = [2**63, 2**64 - 1]
MB = "x" * (1 << 20)


def place(**kw: Any) -> apb.PlaceOrderRequest:
    base: dict[str, Any] = {
        "user_id": 1,
        "market": "BTC_USDT",
        "side": 1,
        "type": 1,
        "price": "30000",
        "amount": "1",
    }
    return apb.PlaceOrderRequest(**{**base, **kw})


def deposit(user: int = 1, **kw: Any) -> Any:
    base = {"asset": "USDT", "amount": "1", "business": "chain", "business_id": "tx1"}
    a = {**base, **kw}
    return lambda sign: views.adjust_command(
        user, a["asset"], a["amount"], a["business"], a["business_id"], CATALOG, sign
    )


def refused(call: Callable[[], Any], reason: Reason) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        call()
    err = info.value
    assert err.reason == reason, (err.reason, err.message)
    assert len(err.message) < 200, err.message
    return err


@pytest.mark.parametrize("user", TOO_BIG_USERS)
def test_user_ids_beyond_int64_are_refused_everywhere(user: int) -> None:
    for sign in (1, -1):  # Deposit, Withdraw
        err = refused(lambda: deposit(user)(sign), Reason.VALUE_OUT_OF_RANGE)  # noqa: B023
        assert isinstance(err, InvalidArgument)
    refused(lambda: views.place_command(place(user_id=user), CATALOG), Reason.VALUE_OUT_OF_RANGE)
    refused(
        lambda: views.balances_request(apb.GetBalancesRequest(user_id=user), CATALOG),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.user_stream_request(apb.StreamUserEventsRequest(user_id=user)),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.cancel_command(apb.CancelOrderRequest(user_id=user, order_id=1)),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.cancel_all_command(apb.CancelAllOrdersRequest(user_id=user), CATALOG),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.check_amend_request(apb.AmendOrderRequest(user_id=user, order_id=1, new_price="1")),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.check_order_request(apb.GetOrderRequest(user_id=user, order_id=1)),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.open_orders_request(apb.ListOpenOrdersRequest(user_id=user), CATALOG),
        Reason.VALUE_OUT_OF_RANGE,
    )


def test_the_largest_user_id_and_the_fee_account() -> None:
    top = 2**63 - 1
    assert views.place_command(place(user_id=top), CATALOG).place_order.order.user_id == top
    assert deposit(top)(1).adjust_balance.user_id == top
    assert views.balances_request(apb.GetBalancesRequest(user_id=0), CATALOG)[0] == 0  # fee account
    assert views.user_stream_request(apb.StreamUserEventsRequest(user_id=0, from_sequence=5)) == (0, 5)
    refused(lambda: deposit(0)(1), Reason.VALUE_OUT_OF_RANGE)
    refused(lambda: views.place_command(place(user_id=0), CATALOG), Reason.VALUE_OUT_OF_RANGE)
    refused(
        lambda: views.user_stream_request(apb.StreamUserEventsRequest(user_id=1, from_sequence=2**63)),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.account_stream_request(apb.StreamAccountEventsRequest(from_sequence=2**64 - 1)),
        Reason.VALUE_OUT_OF_RANGE,
    )


def test_a_megabyte_client_order_id_is_refused_with_a_short_message() -> None:
    calls: list[Callable[[], Any]] = [
        lambda: views.place_command(place(client_order_id=MB), CATALOG),
        lambda: views.cancel_command(apb.CancelOrderRequest(user_id=1, client_order_id=MB)),
        lambda: views.check_amend_request(
            apb.AmendOrderRequest(user_id=1, client_order_id=MB, new_price="1")
        ),
        lambda: views.check_order_request(apb.GetOrderRequest(user_id=1, client_order_id=MB)),
    ]
    for call in calls:
        err = refused(call, Reason.FIELD_TOO_LONG)
        assert "client_order_id" in err.message and "1048576 characters" in err.message


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: views.place_command(place(market="A" * 33), CATALOG), "market"),
        (lambda: views.place_command(place(price="1" * 65), CATALOG), "price"),
        (lambda: views.place_command(place(amount=MB), CATALOG), "amount"),
        (lambda: views.place_command(place(quote_amount=MB), CATALOG), "quote_amount"),
        (lambda: deposit(asset=MB)(1), "asset"),
        (lambda: deposit(amount=MB)(1), "amount"),
        (lambda: deposit(business="b" * 65)(1), "business"),
        (lambda: deposit(business_id="b" * 129)(-1), "business_id"),
        (lambda: views.cancel_command(apb.CancelOrderRequest(user_id=1, order_id=1, market=MB)), "market"),
        (
            lambda: views.cancel_all_command(apb.CancelAllOrdersRequest(user_id=1, market=MB), CATALOG),
            "market",
        ),
        (
            lambda: views.check_amend_request(apb.AmendOrderRequest(user_id=1, order_id=1, new_price=MB)),
            "new_price",
        ),
        (
            lambda: views.check_amend_request(apb.AmendOrderRequest(user_id=1, order_id=1, new_amount=MB)),
            "new_amount",
        ),
        (
            lambda: views.check_amend_request(apb.AmendOrderRequest(user_id=1, order_id=1, market=MB)),
            "market",
        ),
        (lambda: views.balances_request(apb.GetBalancesRequest(user_id=1, assets=[MB]), CATALOG), "asset"),
        (
            lambda: views.open_orders_request(apb.ListOpenOrdersRequest(user_id=1, market=MB), CATALOG),
            "market",
        ),
        (
            lambda: views.open_orders_request(apb.ListOpenOrdersRequest(user_id=1, page_token=MB), CATALOG),
            "page_token",
        ),
    ],
)
def test_every_string_field_is_bounded(call: Callable[[], Any], field: str) -> None:
    err = refused(call, Reason.FIELD_TOO_LONG)
    assert err.message.startswith(field)


@pytest.mark.parametrize("order_id", [2**63, 2**64 - 1])
def test_order_ids_beyond_int64_are_refused(order_id: int) -> None:
    refused(
        lambda: views.cancel_command(apb.CancelOrderRequest(user_id=1, order_id=order_id)),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.check_amend_request(apb.AmendOrderRequest(user_id=1, order_id=order_id, new_price="1")),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.check_order_request(apb.GetOrderRequest(user_id=1, order_id=order_id)),
        Reason.VALUE_OUT_OF_RANGE,
    )


def test_expire_times_and_decimals() -> None:
    refused(lambda: views.place_command(place(expire_time_us=-1), CATALOG), Reason.VALUE_OUT_OF_RANGE)
    refused(lambda: views.place_command(place(price="30000.001"), CATALOG), Reason.PRICE_NOT_ON_TICK)
    refused(lambda: views.place_command(place(amount="0.000001"), CATALOG), Reason.AMOUNT_NOT_ON_LOT)
    refused(lambda: views.place_command(place(price="1e5"), CATALOG), Reason.INVALID_DECIMAL)
    refused(lambda: views.place_command(place(price="9" * 40), CATALOG), Reason.INVALID_DECIMAL)  # > int64
    refused(lambda: views.place_command(place(market="NOPE_USDT"), CATALOG), Reason.UNKNOWN_MARKET)
    refused(lambda: deposit(asset="NOPE")(1), Reason.UNKNOWN_ASSET)
    refused(lambda: deposit(business="bad id")(1), Reason.INVALID_FIELD)
    refused(lambda: deposit(amount="99999999999999999999")(1), Reason.INVALID_DECIMAL)
    # Long decimals are quoted by a short prefix only.
    err = refused(lambda: views.place_command(place(price="1e" + "5" * 62), CATALOG), Reason.INVALID_DECIMAL)
    assert "…" in err.message and "5" * 40 not in err.message
    err = refused(
        lambda: views.place_command(place(price="1." + "1" * 62), CATALOG), Reason.PRICE_NOT_ON_TICK
    )
    assert "…" in err.message and "1" * 40 not in err.message


def test_page_size_uses_the_one_paging_rule() -> None:
    def size(n: int) -> int:
        return views.open_orders_request(apb.ListOpenOrdersRequest(user_id=1, page_size=n), CATALOG)[2]

    assert (size(0), size(7), size(1000), size(100_000)) == (100, 7, MAX_PAGE_SIZE, MAX_PAGE_SIZE)


@pytest.mark.parametrize("token", ["zz", "-1", "0x10", " 1f", "1_0", "F", "1" * 17, "8000000000000000"])
def test_malformed_page_tokens(token: str) -> None:
    refused(
        lambda: views.open_orders_request(apb.ListOpenOrdersRequest(user_id=1, page_token=token), CATALOG),
        Reason.INVALID_PAGE_TOKEN,
    )


def test_page_tokens_round_trip() -> None:
    token = views.page_token(2**63 - 1)
    assert (
        views.open_orders_request(apb.ListOpenOrdersRequest(user_id=1, page_token=token), CATALOG)[3]
        == 2**63 - 1
    )


def test_get_balances_bounds_the_asset_list() -> None:
    refused(
        lambda: views.balances_request(apb.GetBalancesRequest(user_id=1, assets=["BTC"] * 1001), CATALOG),
        Reason.VALUE_OUT_OF_RANGE,
    )
    refused(
        lambda: views.balances_request(apb.GetBalancesRequest(user_id=1, assets=["NOPE"]), CATALOG),
        Reason.UNKNOWN_ASSET,
    )


@pytest.mark.parametrize(
    "kw",
    [{"side": 0}, {"side": 3}, {"type": 0}, {"type": 3}, {"time_in_force": 5}, {"self_trade_prevention": 4}],
)
def test_enum_values_outside_the_api_are_refused(kw: dict[str, int]) -> None:
    refused(lambda: views.place_command(place(**kw), CATALOG), Reason.INVALID_ORDER)


def test_cancel_all_checks_its_side() -> None:
    refused(
        lambda: views.cancel_all_command(apb.CancelAllOrdersRequest(user_id=1, side=3), CATALOG),
        Reason.INVALID_FIELD,  # type: ignore[arg-type]
    )
