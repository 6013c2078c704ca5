"""Shared helpers of the quantizer tests.

SPEC is a market chosen so hand computations stay readable: BTC has 6 decimals, USD 2, the tick is
1 USD and the lot 0.01 BTC, so one lot is 10_000 base units, notional(price, lots) = price x lots cents
(one quote unit per tick and lot), the minimum notional is 10 USD (1000 cents), maker fee 0.1 %, taker
fee 0.2 %.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.markets import Asset, MarketSpec, fee
from services.matching.model import BUY, DONE_CANCELED, DONE_FILLED, SELL
from services.quantizer.core import Cancel, Done, Event, Fill, Intent, Place, Strategy
from services.quantizer.params import restore_strategy

SPEC = MarketSpec.create(
    "BTC_USD",
    Asset("BTC", 6),
    Asset("USD", 2),
    price_tick="1",
    lot_size="0.01",
    min_amount="0.01",
    min_notional="10",
    maker_fee_rate="0.001",
    taker_fee_rate="0.002",
)
LOT = SPEC.base_units_per_lot  # 10_000
assert LOT == 10_000 and SPEC.quote_units_per_tick_lot == 1 and SPEC.min_notional_units == 1000

SECOND = 1_000_000
DAY = 86_400 * SECOND


class Exchange:
    """Hands a strategy the fills a real exchange would send for its orders, with trade ids of its own;
    fees by the engine's rule (the asset received, rounded up)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.trade_id = 0
        self.time = 0
        self.placed: dict[str, Place] = {}

    def apply(self, event: Event) -> list[Intent]:
        intents = self.strategy.apply(event)
        for i in intents:
            if isinstance(i, Place):
                self.placed[i.cid] = i
        return intents

    def fill(
        self, cid: str, lots: int, price: int = 0, *, maker: bool = True, trade_id: int = 0
    ) -> list[Intent]:
        """A fill of `lots` of order `cid` (at its limit price unless given)."""
        place = self.placed[cid]
        price = price or place.price
        if not trade_id:
            self.trade_id += 1
            trade_id = self.trade_id
        rate = SPEC.maker_fee_ppm if maker else SPEC.taker_fee_ppm
        quote = SPEC.notional(price, lots)
        base = lots * LOT
        fee_units = fee(base, rate) if place.side == BUY else fee(quote, rate)
        return self.apply(
            Fill(cid, trade_id, place.side, price, lots, quote, base, fee_units, self.time, maker)
        )

    def done(self, cid: str, reason: int = DONE_FILLED) -> list[Intent]:
        return self.apply(Done(cid, reason, self.time))

    def cancel_all(self, intents: list[Intent]) -> list[Intent]:
        """Answer every Cancel in `intents` with Done(canceled); returns the intents that follow."""
        out: list[Intent] = []
        for i in intents:
            if isinstance(i, Cancel):
                out += self.done(i.cid, DONE_CANCELED)
        return out


def places(intents: list[Intent]) -> list[tuple[str, int, int, int, int]]:
    """(cid, side, price, lots, quote_budget) of the placements."""
    return [(i.cid, i.side, i.price, i.lots, i.quote_budget) for i in intents if isinstance(i, Place)]


def cancels(intents: list[Intent]) -> list[str]:
    return [i.cid for i in intents if isinstance(i, Cancel)]


def roundtrip(strategy: Strategy) -> Strategy:
    """snapshot -> JSON -> restore."""
    return restore_strategy(strategy.spec, json.loads(json.dumps(strategy.snapshot())))


def state(strategy: Strategy) -> Any:
    return json.loads(json.dumps(strategy.snapshot()))


__all__ = [
    "BUY",
    "DAY",
    "LOT",
    "SECOND",
    "SELL",
    "SPEC",
    "Exchange",
    "cancels",
    "places",
    "roundtrip",
    "state",
]
