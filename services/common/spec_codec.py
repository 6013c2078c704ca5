"""A market spec from its API message (exchange.v1.MarketSpec), for the markets added while the
exchange runs (journaled with their spec: services.matching.machine, services.accounts.machine). The
other direction is services.accounts.views.market_spec_message."""

from __future__ import annotations

from collections.abc import Mapping

from exchange.v1 import types_pb2

from services.common.errors import InvalidArgument, NotFound, Reason
from services.common.markets import Asset, ConfigError, MarketSpec


def spec_from_message(m: types_pb2.MarketSpec, assets: Mapping[str, Asset]) -> MarketSpec:
    """The MarketSpec a message describes, between configured assets (a pure function: a replay
    rebuilds the same). NotFound for an unknown asset, InvalidArgument for a spec that does not hold."""
    for symbol in (m.base, m.quote):
        if symbol not in assets:
            raise NotFound(f"unknown asset {symbol!r}", Reason.UNKNOWN_ASSET)
    if m.symbol != f"{m.base}_{m.quote}" or not m.shard:
        raise InvalidArgument("a market is named BASE_QUOTE and names its shard", Reason.INVALID_FIELD)
    try:
        return MarketSpec.create(
            m.symbol,
            assets[m.base],
            assets[m.quote],
            price_tick=m.price_tick,
            lot_size=m.lot_size,
            min_amount=m.min_amount or None,
            min_notional=m.min_notional or "0",
            maker_fee_rate=m.maker_fee_rate or "0",
            taker_fee_rate=m.taker_fee_rate or "0",
            shard=m.shard,
        )
    except (ConfigError, ValueError, ArithmeticError) as exc:
        raise InvalidArgument(f"market {m.symbol}: {exc}", Reason.INVALID_FIELD) from None
