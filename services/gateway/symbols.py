"""The exchange's markets under Binance's names, and exchangeInfo built from the market specs.

A market BASE_QUOTE is the Binance symbol BASEQUOTE (BTC_USDT <-> BTCUSDT); two markets that would get
the same name are a configuration error. Filters come from the specs: PRICE_FILTER (tick), LOT_SIZE
(lot and minimum amount), NOTIONAL (minimum order value, applied to market orders too); their maxima are
the largest values the exchange's 64-bit integers hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.common.markets import ConfigError, MarketCatalog, MarketSpec
from services.common.units import INT64_MAX, format_units
from services.gateway.errors import BAD_SYMBOL, ApiError

ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET"]
STP_MODES = ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"]


def binance_symbol(market: str) -> str:
    return market.replace("_", "")


class Symbols:
    def __init__(self, catalog: MarketCatalog) -> None:
        self.catalog = catalog
        self.by_symbol: dict[str, MarketSpec] = {}
        for spec in catalog.markets.values():
            name = binance_symbol(spec.symbol)
            if name in self.by_symbol:
                raise ConfigError(f"markets {spec.symbol} and {self.by_symbol[name].symbol} are both {name}")
            self.by_symbol[name] = spec

    def spec(self, symbol: str) -> MarketSpec:
        """The market of a Binance symbol (upper-cased); -1121 for one the exchange does not list."""
        spec = self.by_symbol.get(symbol.upper()) if len(symbol) <= 40 else None
        if spec is None:
            raise ApiError(400, BAD_SYMBOL, "Invalid symbol.", reason="UNKNOWN_MARKET")
        return spec

    def specs(self) -> Iterable[MarketSpec]:
        return self.by_symbol.values()


def max_price(spec: MarketSpec) -> str:
    return spec.format_price(INT64_MAX // max(1, spec.quote_units_per_tick_lot))


def max_qty(spec: MarketSpec) -> str:
    return spec.format_amount(INT64_MAX // max(1, spec.base_units_per_lot))


def symbol_info(spec: MarketSpec) -> dict[str, Any]:
    min_notional = format_units(spec.min_notional_units, spec.quote.decimals)
    return {
        "symbol": binance_symbol(spec.symbol),
        "status": "TRADING",
        "baseAsset": spec.base.symbol,
        "baseAssetPrecision": spec.base.decimals,
        "quoteAsset": spec.quote.symbol,
        "quotePrecision": spec.quote.decimals,
        "quoteAssetPrecision": spec.quote.decimals,
        "baseCommissionPrecision": spec.base.decimals,
        "quoteCommissionPrecision": spec.quote.decimals,
        "orderTypes": ORDER_TYPES,
        "icebergAllowed": False,
        "ocoAllowed": False,
        "otoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,
        "cancelReplaceAllowed": False,
        "amendAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": spec.price_tick,
                "maxPrice": max_price(spec),
                "tickSize": spec.price_tick,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": spec.format_amount(spec.min_amount_lots),
                "maxQty": max_qty(spec),
                "stepSize": spec.lot_size,
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": min_notional,
                "applyMinToMarket": True,
                "maxNotional": format_units(INT64_MAX, spec.quote.decimals),
                "applyMaxToMarket": False,
                "avgPriceMins": 0,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": STP_MODES,
        # Beyond Binance: the exchange's own name and fee rates.
        "market": spec.symbol,
        "makerFeeRate": format_units(spec.maker_fee_ppm, 6),
        "takerFeeRate": format_units(spec.taker_fee_ppm, 6),
    }


def exchange_info(
    symbols: Symbols, server_time_ms: int, rate_limits: list[dict[str, Any]], only: Iterable[str] = ()
) -> dict[str, Any]:
    wanted = [symbols.spec(s) for s in only] if only else list(symbols.specs())
    return {
        "timezone": "UTC",
        "serverTime": server_time_ms,
        "rateLimits": rate_limits,
        "exchangeFilters": [],
        "symbols": [symbol_info(s) for s in wanted],
    }
