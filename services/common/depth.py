"""L2 depth at the API edge, the same for the matching shard (GetDepth) and market data
(GetMarketDepth, SubscribeDepth): the `merge` request field parsed into ticks, and levels as
exchange.v1.DepthLevel messages."""

from __future__ import annotations

from exchange.v1 import types_pb2

from services.common import limits
from services.common.errors import InvalidArgument, Reason, quote
from services.common.markets import MarketSpec
from services.common.units import AmountError, PriceNotOnTick

Level = tuple[int, int, int]  # (price ticks, lots, order count)


def parse_merge(spec: MarketSpec, merge: str) -> int:
    """Merge size in ticks (1 = none); InvalidArgument unless a positive multiple of the tick."""
    if not merge:
        return 1
    limits.check_str(merge, "merge", limits.MAX_DECIMAL)
    try:
        return spec.parse_price(merge, field="merge")
    except PriceNotOnTick:
        raise InvalidArgument(
            f"merge {quote(merge)} is not a multiple of the price tick {spec.price_tick}",
            Reason.PRICE_NOT_ON_TICK,
        ) from None
    except AmountError:
        raise InvalidArgument(
            f"merge {quote(merge)} must be a positive decimal price, a multiple of the price tick "
            f"{spec.price_tick}",
            Reason.INVALID_DECIMAL,
        ) from None


def depth_levels(spec: MarketSpec, levels: list[Level]) -> list[types_pb2.DepthLevel]:
    return [
        types_pb2.DepthLevel(
            price=spec.format_price(p),
            amount=spec.format_amount(lots),
            price_ticks=p,
            amount_lots=lots,
            order_count=n,
        )
        for p, lots, n in levels
    ]
