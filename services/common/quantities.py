"""The exchange's integer quantities as distinct types for signatures (NewTypes of int: free at run
time, checked by mypy). Which scale a number is in is the first thing to get wrong with integers:

- Ticks: a price, in multiples of its market's price tick;
- Lots: an amount of the base asset, in multiples of its market's lot size;
- Units: money, in the smallest unit of an asset (its `decimals`).

price x amount x MarketSpec.quote_units_per_tick_lot is Units of the quote asset, amount x
base_units_per_lot Units of the base asset (services.common.markets).
"""

from __future__ import annotations

from typing import NewType

Ticks = NewType("Ticks", int)
Lots = NewType("Lots", int)
Units = NewType("Units", int)
