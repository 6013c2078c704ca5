"""Errors people read show decimals with the asset symbol (never raw integer units), and every raise
site of the accounts service carries a precise reason."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import ExchangeError, Reason
from testkit.accounts_sim import MiniExchange

BUY, SELL = 1, 2
ACCOUNTS = Path(__file__).resolve().parents[2] / "services" / "accounts"


def funded() -> MiniExchange:
    x = MiniExchange()
    x.deposit(1, "USDT", "94000", "d1")
    x.deposit(2, "BTC", "1", "d2")
    return x


CASES: list[tuple[str, Callable[[MiniExchange], Any], Reason, str]] = [
    (
        "withdraw",
        lambda x: x.withdraw(1, "USDT", "1000000"),
        Reason.INSUFFICIENT_BALANCE,
        "insufficient USDT: available 94000 USDT, needed 1000000 USDT",
    ),
    (
        "buy",
        lambda x: x.place(1, "BTC_USDT", BUY, price="30000", amount="10"),
        Reason.INSUFFICIENT_BALANCE,
        "insufficient USDT: available 94000 USDT, needed 300000 USDT",
    ),
    (
        "sell",
        lambda x: x.place(1, "BTC_USDT", SELL, price="30000", amount="0.5"),
        Reason.INSUFFICIENT_BALANCE,
        "insufficient BTC: available 0 BTC, needed 0.5 BTC",
    ),
    (
        "min amount",
        lambda x: x.place(1, "BTC_USDT", BUY, price="30000", amount="0.00001"),
        Reason.BELOW_MIN_AMOUNT,
        "amount 0.00001 BTC is below the minimum 0.0001 BTC",
    ),
    (
        "min notional",
        lambda x: x.place(1, "BTC_USDT", BUY, price="1", amount="0.001"),
        Reason.BELOW_MIN_NOTIONAL,
        "order value 0.001 USDT is below the minimum 5 USDT",
    ),
    (
        "too large",
        lambda x: x.place(1, "BTC_USDT", BUY, price="90000000000", amount="90000000"),
        Reason.VALUE_TOO_LARGE,
        "order value 8100000000000000000 USDT is too large",
    ),
    (
        "market budget",
        lambda x: x.place(1, "BTC_USDT", BUY, type=2, quote_amount="1"),
        Reason.BELOW_MIN_NOTIONAL,
        "quote_amount 1 USDT is below the minimum 5 USDT",
    ),
    (
        "key reused",
        lambda x: x.deposit(1, "USDT", "5", "d1"),
        Reason.IDEMPOTENCY_KEY_REUSED,
        "(deposit of 94000 USDT)",
    ),
    (
        "unknown market",
        lambda x: x.place(1, "XRP_USDT", BUY, price="1", amount="1"),
        Reason.UNKNOWN_MARKET,
        "XRP",
    ),
    ("unknown asset", lambda x: x.deposit(1, "XRP", "1"), Reason.UNKNOWN_ASSET, "XRP"),
    (
        "post only IOC",
        lambda x: x.place(1, "BTC_USDT", BUY, price="1", amount="1", post_only=True, time_in_force=2),
        Reason.INVALID_ORDER,
        "post_only",
    ),
]


@pytest.mark.parametrize(("name", "call", "reason", "text"), CASES, ids=[c[0] for c in CASES])
def test_messages_show_decimals_and_symbols(
    name: str, call: Callable[[MiniExchange], Any], reason: Reason, text: str
) -> None:
    x = funded()
    with pytest.raises(ExchangeError) as info:
        call(x)
    assert info.value.reason == reason
    assert text in info.value.message, info.value.message
    assert "9400000000000" not in info.value.message  # 94000 USDT in raw units


def test_order_errors_name_the_state() -> None:
    x = funded()
    o = x.place(2, "BTC_USDT", SELL, price="30000", amount="0.5").order
    x.cancel(2, o.order_id)
    with pytest.raises(ExchangeError) as info:
        x.cancel(2, o.order_id)
    assert info.value.reason == Reason.ORDER_ALREADY_DONE and "canceled" in info.value.message
    with pytest.raises(ExchangeError) as info:
        x.cancel(2, 424242)
    assert info.value.reason == Reason.ORDER_NOT_FOUND
    o = x.place(2, "BTC_USDT", SELL, price="30000", amount="0.5").order
    with pytest.raises(ExchangeError) as info:
        x.amend(2, o.order_id, new_amount="0.7")
    assert info.value.reason == Reason.ORDER_NOT_AMENDABLE
    assert "new amount 0.7 BTC must be lower than the current amount 0.5 BTC" in info.value.message
    x.deposit(1, "USDT", "1", "d9")
    b = x.place(1, "BTC_USDT", BUY, price="20000", amount="3").order
    with pytest.raises(ExchangeError) as info:
        x.amend(1, b.order_id, new_price="35000")
    assert info.value.reason == Reason.INSUFFICIENT_BALANCE
    assert (
        "available 34001 USDT, needed 45000 USDT more to move the order to 35000 USDT" in info.value.message
    )


_DOMAIN_ERRORS = {
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "AlreadyExists",
    "OutOfRange",
    "PermissionDenied",
    "Internal",
    "Unavailable",
}


def _raise_sites() -> list[tuple[str, int, ast.Call]]:
    sites = []
    for path in sorted(ACCOUNTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if name in _DOMAIN_ERRORS:
                    sites.append((f"{path.name}:{node.lineno}", name, node.exc))
    return sites  # type: ignore[return-value]


def test_every_raise_site_gives_a_reason() -> None:
    sites = _raise_sites()
    assert len(sites) > 40
    missing = []
    for where, name, call in sites:  # type: ignore[misc]
        position = 2 if name == "Unavailable" else 1  # Unavailable(message, retry_after_ms, reason)
        has = len(call.args) > position or any(k.arg == "reason" for k in call.keywords)
        if not has:
            missing.append(where)
    assert not missing, missing
