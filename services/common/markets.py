"""Assets and market specifications: the integer scales every other module relies on.

A market BASE_QUOTE quotes prices in `price_tick` steps of quote per one base and amounts in `lot_size`
steps of base. Inside the exchange a price is an integer count of ticks and an amount an integer count
of lots; money is an integer count of the asset's smallest unit. For that to be exact, one tick times one
lot must be a whole number of quote units and one lot a whole number of base units; loading checks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from services.common.units import (
    AmountError,
    AmountNotOnLot,
    PriceNotOnTick,
    decimals_of,
    format_units,
    parse_rate_ppm,
    parse_units,
)

FEE_SCALE = 1_000_000  # fee rates are integers in parts per million

_SYMBOL = re.compile(r"[A-Z0-9]{1,16}")


class ConfigError(ValueError):
    """The market or asset configuration is inconsistent."""


@dataclass(frozen=True, slots=True)
class Asset:
    symbol: str
    decimals: int

    def parse(self, text: str, *, field: str = "amount", allow_zero: bool = False) -> int:
        return parse_units(text, self.decimals, field=field, allow_zero=allow_zero)

    def format(self, units: int) -> str:
        return format_units(units, self.decimals)


@dataclass(frozen=True, slots=True)
class MarketSpec:
    symbol: str
    base: Asset
    quote: Asset
    price_tick: str
    lot_size: str
    min_amount: str
    min_notional: str
    maker_fee_ppm: int
    taker_fee_ppm: int
    shard: str = "matching-0"
    # Derived scales (filled by MarketSpec.create).
    price_decimals: int = 0
    tick_scaled: int = 1  # the tick in units of 10**-price_decimals
    amount_decimals: int = 0
    lot_scaled: int = 1  # the lot in units of 10**-amount_decimals
    base_units_per_lot: int = 1
    quote_units_per_tick_lot: int = 1
    min_amount_lots: int = 1
    min_notional_units: int = 0

    @staticmethod
    def create(
        symbol: str,
        base: Asset,
        quote: Asset,
        *,
        price_tick: str,
        lot_size: str,
        min_amount: str | None = None,
        min_notional: str = "0",
        maker_fee_rate: str = "0",
        taker_fee_rate: str = "0",
        shard: str = "matching-0",
    ) -> MarketSpec:
        try:
            price_decimals = decimals_of(price_tick)
            tick_scaled = parse_units(price_tick, price_decimals, field="price_tick")
            amount_decimals = decimals_of(lot_size)
            lot_scaled = parse_units(lot_size, amount_decimals, field="lot_size")
            maker_ppm = parse_rate_ppm(maker_fee_rate, field="maker_fee_rate")
            taker_ppm = parse_rate_ppm(taker_fee_rate, field="taker_fee_rate")
            min_amount = min_amount if min_amount is not None else lot_size
            min_amount_value = Fraction(min_amount) if _is_decimal(min_amount) else None
            if min_amount_value is None:
                raise ConfigError(f"{symbol}: min_amount {min_amount!r} is not a decimal")
            min_notional_units = parse_units(
                min_notional, quote.decimals, field="min_notional", allow_zero=True
            )
        except AmountError as exc:
            raise ConfigError(f"{symbol}: {exc}") from exc
        if maker_ppm >= FEE_SCALE or taker_ppm >= FEE_SCALE:
            raise ConfigError(f"{symbol}: fee rates must be below 1")
        tick = Fraction(price_tick)
        lot = Fraction(lot_size)
        base_per_lot = lot * 10**base.decimals
        quote_per_tick_lot = tick * lot * 10**quote.decimals
        if base_per_lot.denominator != 1:
            raise ConfigError(
                f"{symbol}: lot_size {lot_size} is finer than {base.symbol}'s {base.decimals} decimals"
            )
        if quote_per_tick_lot.denominator != 1:
            raise ConfigError(
                f"{symbol}: price_tick x lot_size = {tick * lot} is finer than "
                f"{quote.symbol}'s {quote.decimals} decimals"
            )
        min_lots = max(1, -(-min_amount_value // lot))  # ceil
        return MarketSpec(
            symbol=symbol,
            base=base,
            quote=quote,
            price_tick=price_tick,
            lot_size=lot_size,
            min_amount=min_amount,
            min_notional=min_notional,
            maker_fee_ppm=maker_ppm,
            taker_fee_ppm=taker_ppm,
            shard=shard,
            price_decimals=price_decimals,
            tick_scaled=tick_scaled,
            amount_decimals=amount_decimals,
            lot_scaled=lot_scaled,
            base_units_per_lot=int(base_per_lot),
            quote_units_per_tick_lot=int(quote_per_tick_lot),
            min_amount_lots=int(min_lots),
            min_notional_units=min_notional_units,
        )

    # --- conversions at the API edge -------------------------------------------------------------

    def parse_price(self, text: str, *, field: str = "price") -> int:
        """Decimal price -> ticks; must be a positive multiple of the tick."""
        units = parse_units(text, self.price_decimals, field=field)
        ticks, rest = divmod(units, self.tick_scaled)
        if rest:
            raise PriceNotOnTick(f"{field}: {text!r} is not a multiple of the price tick {self.price_tick}")
        return ticks

    def parse_amount(self, text: str, *, field: str = "amount") -> int:
        """Decimal base amount -> lots; must be a positive multiple of the lot size."""
        units = parse_units(text, self.amount_decimals, field=field)
        lots, rest = divmod(units, self.lot_scaled)
        if rest:
            raise AmountNotOnLot(f"{field}: {text!r} is not a multiple of the lot size {self.lot_size}")
        return lots

    def parse_quote(self, text: str, *, field: str = "quote_amount") -> int:
        return parse_units(text, self.quote.decimals, field=field)

    def format_price(self, ticks: int) -> str:
        return format_units(ticks * self.tick_scaled, self.price_decimals)

    def format_amount(self, lots: int) -> str:
        return format_units(lots * self.lot_scaled, self.amount_decimals)

    def format_quote(self, units: int) -> str:
        return format_units(units, self.quote.decimals)

    def format_base(self, units: int) -> str:
        return format_units(units, self.base.decimals)

    # --- integer arithmetic used by risk and matching --------------------------------------------

    def notional(self, price_ticks: int, lots: int) -> int:
        """price x amount in quote units."""
        return price_ticks * lots * self.quote_units_per_tick_lot

    def base_units(self, lots: int) -> int:
        return lots * self.base_units_per_lot


def fee(units: int, rate_ppm: int) -> int:
    """Fee on `units` at `rate_ppm`, rounded up to the next unit (never more than units)."""
    return -((-units * rate_ppm) // FEE_SCALE)


def _is_decimal(text: str) -> bool:
    try:
        decimals_of(text)
    except AmountError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class MarketCatalog:
    """The assets and markets of one exchange, as configured."""

    assets: Mapping[str, Asset]
    markets: Mapping[str, MarketSpec]
    shards: tuple[str, ...] = field(default=())

    def market(self, symbol: str) -> MarketSpec:
        return self.markets[symbol]

    def markets_of_shard(self, shard: str) -> list[MarketSpec]:
        return [m for m in self.markets.values() if m.shard == shard]

    @staticmethod
    def from_dict(data: Mapping[str, Any], *, default_shard: str = "matching-0") -> MarketCatalog:
        """Build from the parsed TOML: an [assets] table and a [[markets]] array.

        [assets]
        BTC = { decimals = 8 }
        [[markets]]
        symbol = "BTC_USDT"  base = "BTC"  quote = "USDT"  price_tick = "0.01"  lot_size = "0.00001"
        min_amount = "0.0001"  min_notional = "5"  maker_fee_rate = "0.001"  taker_fee_rate = "0.002"
        shard = "matching-0"   # optional
        """
        raw_assets = data.get("assets")
        if not isinstance(raw_assets, Mapping) or not raw_assets:
            raise ConfigError("config needs an [assets] table")
        assets: dict[str, Asset] = {}
        for symbol, spec in raw_assets.items():
            if not _SYMBOL.fullmatch(symbol):
                raise ConfigError(f"asset symbol {symbol!r} must be 1-16 upper-case letters or digits")
            decimals = spec.get("decimals") if isinstance(spec, Mapping) else None
            # bool is an int subclass: `decimals = true` must not pass as 1
            if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 18:
                raise ConfigError(f"asset {symbol}: decimals must be an integer in 0..18")
            assets[symbol] = Asset(symbol, decimals)
        raw_markets = data.get("markets")
        if not isinstance(raw_markets, list) or not raw_markets:
            raise ConfigError("config needs a [[markets]] array")
        markets: dict[str, MarketSpec] = {}
        for raw in raw_markets:
            if not isinstance(raw, Mapping):
                raise ConfigError("each [[markets]] entry must be a table")
            symbol = str(raw.get("symbol", ""))
            base = assets.get(str(raw.get("base", "")))
            quote = assets.get(str(raw.get("quote", "")))
            if base is None or quote is None:
                raise ConfigError(f"market {symbol!r}: base and quote must be configured assets")
            if base == quote:
                raise ConfigError(f"market {symbol}: base and quote must differ")
            if symbol != f"{base.symbol}_{quote.symbol}":
                raise ConfigError(f"market {symbol!r} must be named {base.symbol}_{quote.symbol}")
            if symbol in markets:
                raise ConfigError(f"market {symbol} configured twice")
            for key in ("price_tick", "lot_size"):
                if not isinstance(raw.get(key), str):
                    raise ConfigError(f"market {symbol}: {key} must be a decimal string")
            markets[symbol] = MarketSpec.create(
                symbol,
                base,
                quote,
                price_tick=raw["price_tick"],
                lot_size=raw["lot_size"],
                min_amount=_opt_str(raw, "min_amount", symbol),
                min_notional=_opt_str(raw, "min_notional", symbol) or "0",
                maker_fee_rate=_opt_str(raw, "maker_fee_rate", symbol) or "0",
                taker_fee_rate=_opt_str(raw, "taker_fee_rate", symbol) or "0",
                shard=str(raw.get("shard", default_shard)),
            )
        shards = tuple(sorted({m.shard for m in markets.values()}))
        return MarketCatalog(assets=assets, markets=markets, shards=shards)

    def with_shards(self, assignment: Mapping[str, Iterable[str]]) -> MarketCatalog:
        """A copy where each listed shard owns the listed markets (others keep theirs)."""
        owner: dict[str, str] = {}
        for shard, symbols in assignment.items():
            for symbol in symbols:
                if symbol not in self.markets:
                    raise ConfigError(f"shard {shard}: unknown market {symbol}")
                if symbol in owner:
                    raise ConfigError(f"market {symbol} assigned to both {owner[symbol]} and {shard}")
                owner[symbol] = shard
        markets = {s: _replace_shard(m, owner[s]) if s in owner else m for s, m in self.markets.items()}
        shards = tuple(sorted({m.shard for m in markets.values()}))
        return MarketCatalog(assets=self.assets, markets=markets, shards=shards)


def _replace_shard(spec: MarketSpec, shard: str) -> MarketSpec:
    from dataclasses import replace

    return replace(spec, shard=shard)


def _opt_str(raw: Mapping[str, Any], key: str, symbol: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"market {symbol}: {key} must be a decimal string")
    return value
