"""An L3 mirror of one market's book (order id -> side, price, remaining), kept from the matching events,
with L2 levels (price -> total lots, order count) maintained alongside for depth queries.

After each whole command it equals the matching shard's book; L2 views then equal
MatchingService.GetDepth, merged or not (bids bucket down, asks bucket up to multiples of the merge).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from services.common.depth import Level
from services.common.enums import BUY, SELL


class DepthMirror:
    __slots__ = ("ask_prices", "asks", "bid_prices", "bids", "orders")

    def __init__(self) -> None:
        self.orders: dict[int, list[int]] = {}  # order id -> [side, price, remaining]
        self.bids: dict[int, list[int]] = {}  # price -> [total lots, order count]
        self.asks: dict[int, list[int]] = {}
        self.bid_prices: list[int] = []  # ascending
        self.ask_prices: list[int] = []  # ascending

    def __len__(self) -> int:
        return len(self.orders)

    def __contains__(self, order_id: int) -> bool:
        return order_id in self.orders

    # --- changes -------------------------------------------------------------------------------

    def add(self, order_id: int, side: int, price: int, remaining: int) -> None:
        """A new resting order (or the taker of a place/move, which rests unless done)."""
        if side != BUY and side != SELL:
            return
        if order_id in self.orders:
            self.remove(order_id)
        if remaining <= 0:
            return
        self.orders[order_id] = [side, price, remaining]
        self._level_add(side, price, remaining, 1)

    def set_remaining(self, order_id: int, remaining: int) -> None:
        """The order now has `remaining` lots open (a trade or a reduce); 0 removes it."""
        o = self.orders.get(order_id)
        if o is None:
            return
        if remaining <= 0:
            self.remove(order_id)
            return
        delta = remaining - o[2]
        if delta:
            o[2] = remaining
            self._level_add(o[0], o[1], delta, 0)

    def move(self, order_id: int, price: int, remaining: int) -> None:
        o = self.orders.get(order_id)
        if o is None:
            return
        side = o[0]
        self.remove(order_id)
        self.add(order_id, side, price, remaining)

    def remove(self, order_id: int) -> None:
        o = self.orders.pop(order_id, None)
        if o is not None:
            self._level_add(o[0], o[1], -o[2], -1)

    def _level_add(self, side: int, price: int, lots: int, count: int) -> None:
        levels = self.bids if side == BUY else self.asks
        level = levels.get(price)
        if level is None:
            levels[price] = [lots, count]
            insort(self.bid_prices if side == BUY else self.ask_prices, price)
            return
        level[0] += lots
        level[1] += count
        if level[1] <= 0:
            del levels[price]
            prices = self.bid_prices if side == BUY else self.ask_prices
            del prices[bisect_left(prices, price)]

    # --- queries -------------------------------------------------------------------------------

    def best_bid(self) -> int | None:
        return self.bid_prices[-1] if self.bid_prices else None

    def best_ask(self) -> int | None:
        return self.ask_prices[0] if self.ask_prices else None

    def depth(self, limit: int = 20, merge: int = 1) -> tuple[list[Level], list[Level]]:
        """L2: (price ticks, lots, order count) per level, best first, at most `limit` levels per side.
        With merge > 1, prices are bucketed to multiples of `merge` ticks (bids down, asks up)."""
        return (
            _side(self.bids, reversed(self.bid_prices), limit, merge, True),
            _side(self.asks, iter(self.ask_prices), limit, merge, False),
        )

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> list[tuple[int, int, int, int]]:
        return [(oid, o[0], o[1], o[2]) for oid, o in sorted(self.orders.items())]

    @classmethod
    def restore(cls, data: Any) -> DepthMirror:
        m = cls()
        for oid, side, price, remaining in data:
            m.add(int(oid), int(side), int(price), int(remaining))
        return m


def _side(levels: dict[int, list[int]], prices: Any, limit: int, merge: int, is_bid: bool) -> list[Level]:
    out: list[Level] = []
    if limit <= 0:
        return out
    for price in prices:
        total, count = levels[price]
        if merge > 1:
            price = (price // merge) * merge if is_bid else -((-price) // merge) * merge
        if out and out[-1][0] == price:
            p, lots, n = out[-1]
            out[-1] = (p, lots + total, n + count)
        else:
            if len(out) == limit:
                break
            out.append((price, total, count))
    return out
