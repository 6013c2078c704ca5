"""The budget of a MARKET BUY by base `quantity` (what ccxt's createOrder('market', 'buy', amount) sends
without a price).

The exchange runs such an order as "buy up to `amount`, spending at most `quote_amount`": accounts
freezes the budget before matching (it cannot know the fill price), each fill pays from it and the
rest comes back when the order is done. Binance's API has no budget field, so the gateway computes one
from its view of the book, with a price protection:

    budget = min(ceil(best ask x (1 + cap)) x quantity, the user's available quote)

with `cap` = GatewayConfig.market_buy_price_cap_bps (basis points; 500 = 5 %). What this guarantees:
the order never gets more than `quantity` and never spends more than `quantity` would cost at best ask
x (1 + cap). It fills `quantity` unless that costs more (the book is too thin near the best ask) or the
user cannot pay for it: then it fills what the budget buys (at the book's next prices: the bound is on
the total spent, not on each level's price) and the rest is canceled (status EXPIRED, as Binance
reports a market order's unfilled rest). The best ask is the market data service's (it may lag the
book by a moment: the cap absorbs that). Integer arithmetic only: ticks, lots and quote units. (A hard
limit on each fill's price is what an IOC LIMIT order is for.)

Refused before anything is sent: no ask at all (NO_MARKET_PRICE, -2010), no quote available
(INSUFFICIENT_BALANCE, -2010). Anything else (minimums, lot size) accounts checks as for every order.
"""

from __future__ import annotations

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import market_service_pb2 as kpb

from services.common.errors import Reason
from services.common.markets import MarketSpec
from services.gateway.context import Gateway
from services.gateway.errors import NEW_ORDER_REJECTED, ApiError, for_reason

BPS = 10_000


def protected_budget(
    spec: MarketSpec, best_ask_ticks: int, lots: int, cap_bps: int, available_units: int
) -> int:
    """Quote units: ceil(best ask x (1 + cap)) ticks x lots, at most what is available."""
    cap_ticks = -((-best_ask_ticks * (BPS + cap_bps)) // BPS)
    return min(cap_ticks * lots * spec.quote_units_per_tick_lot, available_units)


async def market_buy_budget(gw: Gateway, spec: MarketSpec, user_id: int, quantity: str) -> str:
    """The quote_amount (a decimal) to send with a MARKET BUY of `quantity`."""
    lots = spec.parse_amount(quantity, field="quantity")
    depth = await gw.market.get_market_depth(kpb.GetMarketDepthRequest(market=spec.symbol, limit=1))
    if not depth.asks or depth.asks[0].price_ticks <= 0:
        raise ApiError(
            400,
            NEW_ORDER_REJECTED,
            "A MARKET BUY by quantity needs an ask to price its budget: the book has none.",
            reason=str(Reason.NO_MARKET_PRICE),
        )
    quote = spec.quote.symbol
    balances = await gw.accounts.get_balances(apb.GetBalancesRequest(user_id=user_id, assets=[quote]))
    available = sum(spec.parse_quote(b.available) for b in balances.balances if b.asset == quote)
    if available <= 0:
        raise for_reason(str(Reason.INSUFFICIENT_BALANCE), f"no {quote} available")
    budget = protected_budget(
        spec, depth.asks[0].price_ticks, lots, gw.config.market_buy_price_cap_bps, available
    )
    return spec.format_quote(budget)
