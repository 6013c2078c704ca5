"""One market's order book: price-time priority, trades at the maker's price.

Data layout (chosen for speed in pure Python):
- each side is a dict price -> Level plus a heap of prices for the best price (lazy: a price whose
  level is gone is dropped when it reaches the top);
- a Level keeps its orders in a deque in time order; a cancel marks the order dead and fixes the level
  totals in O(1) (dead orders are skipped and dropped when they reach the front, and the deque is
  compacted when it holds mostly dead orders);
- orders by id and by user for O(1) cancel and for cancel-all.

Every method takes the command time `now` (microseconds) and appends events to `out`. Nothing here
reads a clock, draws random numbers or does I/O: the same commands give the same events.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from heapq import heapify, heappop, heappush
from typing import Any

from services.common.enums import (
    BUY,
    DETAIL_CANCEL_ALL,
    DETAIL_EXPIRE_TIME,
    DETAIL_FOK_NOT_FILLABLE,
    DETAIL_INVALID,
    DETAIL_IOC_REMAINDER,
    DETAIL_NO_LIQUIDITY,
    DETAIL_NONE,
    DETAIL_POST_ONLY_WOULD_TAKE,
    DETAIL_REDUCED_TO_ZERO,
    DETAIL_SELF_TRADE,
    DETAIL_USER_CANCEL,
    DONE_CANCELED,
    DONE_EXPIRED,
    DONE_FILLED,
    DONE_REJECTED,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MARKET,
    REJECT_INVALID,
    REJECT_NOT_OWNER,
    REJECT_ORDER_NOT_FOUND,
    REJECT_POST_ONLY_WOULD_TAKE,
    SELL,
    STP_CANCEL_BOTH,
    STP_CANCEL_TAKER,
)
from services.common.markets import FEE_SCALE, MarketSpec
from services.matching.model import (
    CommandRejected,
    Event,
    Order,
    OrderAccepted,
    OrderAmended,
    OrderDone,
    PlaceOrder,
    TradeExecuted,
)

SNAPSHOT_VERSION = 1


class Level:
    __slots__ = ("count", "orders", "price", "total")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: deque[Order] = deque()
        self.total = 0  # live remaining lots
        self.count = 0  # live orders


class _Side:
    """One side of the book. `key` maps a price to its heap key (-price for bids)."""

    __slots__ = ("heap", "in_heap", "is_bid", "levels")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.levels: dict[int, Level] = {}
        self.heap: list[int] = []
        self.in_heap: set[int] = set()

    def best(self) -> int | None:
        heap = self.heap
        levels = self.levels
        while heap:
            key = heap[0]
            price = -key if self.is_bid else key
            if price in levels:
                return price
            heappop(heap)
            self.in_heap.discard(price)
        return None

    def level_for(self, price: int) -> Level:
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = Level(price)
            if price not in self.in_heap:
                self.in_heap.add(price)
                heappush(self.heap, -price if self.is_bid else price)
                if len(self.heap) > 2 * len(self.levels) + 64:
                    self._rebuild_heap()
        return level

    def _rebuild_heap(self) -> None:
        prices = list(self.levels)
        self.in_heap = set(prices)
        self.heap = [-p for p in prices] if self.is_bid else prices
        heapify(self.heap)

    def sorted_prices(self) -> list[int]:
        """Prices best first."""
        return sorted(self.levels, reverse=self.is_bid)


class OrderBook:
    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.bids = _Side(True)
        self.asks = _Side(False)
        self.orders: dict[int, Order] = {}
        self.expiries: list[tuple[int, int]] = []  # (expire_at, order_id), may hold stale entries
        self.next_trade_id = 1
        self._qptl = spec.quote_units_per_tick_lot
        self._bpl = spec.base_units_per_lot

    # --- queries -------------------------------------------------------------------------------

    def best_bid(self) -> int | None:
        return self.bids.best()

    def best_ask(self) -> int | None:
        return self.asks.best()

    def depth(
        self, limit: int = 20, merge: int = 1
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """L2 depth: (price ticks, lots, order count) per level, best first, at most `limit` levels.

        With merge > 1 prices are bucketed to multiples of `merge` ticks (bids down, asks up).
        """
        return self._side_depth(self.bids, limit, merge), self._side_depth(self.asks, limit, merge)

    @staticmethod
    def _side_depth(side: _Side, limit: int, merge: int) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        for price in side.sorted_prices():
            level = side.levels[price]
            if merge > 1:
                price = (price // merge) * merge if side.is_bid else -((-price) // merge) * merge
            if out and out[-1][0] == price:
                p, lots, n = out[-1]
                out[-1] = (p, lots + level.total, n + level.count)
            else:
                if len(out) == limit:
                    break
                out.append((price, level.total, level.count))
        return out

    def iter_orders(self, side: int) -> Iterator[Order]:
        """L3: the live orders of one side in priority order."""
        book_side = self.bids if side == BUY else self.asks
        for price in book_side.sorted_prices():
            for order in book_side.levels[price].orders:
                if order.live:
                    yield order

    def user_orders(self, user_id: int) -> list[Order]:
        """A user's open orders, by order id (a scan: the book keeps no per-user index, which would
        cost every placement and cancel; cancel-all and per-user listings are rare)."""
        return sorted((o for o in self.orders.values() if o.user_id == user_id), key=lambda o: o.order_id)

    def __len__(self) -> int:
        return len(self.orders)

    # --- commands ------------------------------------------------------------------------------

    def place(self, cmd: PlaceOrder, now: int, out: list[Event]) -> None:
        if self.expiries and self.expiries[0][0] <= now:
            self.expire(now, out)
        out.append(OrderAccepted(cmd))
        orders = self.orders
        if cmd.order_id in orders:
            out.append(CommandRejected(cmd.order_id, cmd.user_id, REJECT_INVALID, "duplicate order id"))
            return
        order = Order(cmd, now)
        tif = cmd.tif
        # Fast path: a plain GTC limit order (most of the flow); anything else is checked in full.
        if not (
            cmd.type == LIMIT
            and tif == GTC
            and cmd.price > 0
            and cmd.amount > 0
            and cmd.expire_at == 0
            and (cmd.side == BUY or cmd.side == SELL)
        ) and not self._valid(cmd, now):
            if tif == GTD and 0 < cmd.expire_at <= now:
                out.append(OrderDone(order, DONE_EXPIRED, DETAIL_EXPIRE_TIME))
            else:
                out.append(OrderDone(order, DONE_REJECTED, DETAIL_INVALID))
            return
        buy = order.side == BUY
        if cmd.type == MARKET:
            if self._match(order, out):
                return  # canceled by self-trade prevention
            if order.filled == 0:
                out.append(OrderDone(order, DONE_CANCELED, DETAIL_NO_LIQUIDITY))
            elif self._market_exhausted(order):
                out.append(OrderDone(order, DONE_FILLED, DETAIL_NONE))
            else:
                out.append(OrderDone(order, DONE_CANCELED, DETAIL_IOC_REMAINDER))
            return
        price = order.price
        opposite = self.asks if buy else self.bids
        best = opposite.best()
        if best is not None and (price >= best if buy else price <= best):
            if cmd.post_only:
                out.append(OrderDone(order, DONE_REJECTED, DETAIL_POST_ONLY_WOULD_TAKE))
                return
            if tif == FOK and not self._fillable(order):
                out.append(OrderDone(order, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE))
                return
            if self._match(order, out):
                return  # canceled by self-trade prevention
            if order.remaining == 0:
                out.append(OrderDone(order, DONE_FILLED, DETAIL_NONE))
                return
        if tif == IOC:
            out.append(OrderDone(order, DONE_CANCELED, DETAIL_IOC_REMAINDER))
            return
        if tif == FOK:
            out.append(OrderDone(order, DONE_REJECTED, DETAIL_FOK_NOT_FILLABLE))
            return
        # Rest (inlined _rest: this is the hot path).
        side = self.bids if buy else self.asks
        level = side.levels.get(price)
        if level is None:
            level = side.level_for(price)
        level.orders.append(order)
        level.total += order.remaining
        level.count += 1
        orders[order.order_id] = order
        if cmd.expire_at:
            heappush(self.expiries, (cmd.expire_at, order.order_id))

    def cancel(self, order_id: int, user_id: int, now: int, out: list[Event]) -> None:
        if self.expiries and self.expiries[0][0] <= now:
            self.expire(now, out)
        order = self.orders.get(order_id)
        if order is None:
            out.append(CommandRejected(order_id, user_id, REJECT_ORDER_NOT_FOUND, "order not open"))
        elif order.user_id != user_id:
            out.append(CommandRejected(order_id, user_id, REJECT_NOT_OWNER, "order belongs to another user"))
        else:
            self._remove(order)
            out.append(OrderDone(order, DONE_CANCELED, DETAIL_USER_CANCEL))

    def cancel_all(self, user_id: int, side: int, now: int, out: list[Event]) -> None:
        if self.expiries and self.expiries[0][0] <= now:
            self.expire(now, out)
        for order in self.user_orders(user_id):
            if side and order.side != side:
                continue
            self._remove(order)
            out.append(OrderDone(order, DONE_CANCELED, DETAIL_CANCEL_ALL))

    def reduce(self, order_id: int, user_id: int, new_amount: int, now: int, out: list[Event]) -> None:
        if self.expiries and self.expiries[0][0] <= now:
            self.expire(now, out)
        order = self._owned(order_id, user_id, out)
        if order is None:
            return
        if new_amount >= order.amount or new_amount < 0:
            out.append(CommandRejected(order_id, user_id, REJECT_INVALID, "new amount must be lower"))
            return
        new_remaining = new_amount - order.filled
        if new_remaining <= 0:
            self._remove(order)
            out.append(OrderDone(order, DONE_CANCELED, DETAIL_REDUCED_TO_ZERO))
            return
        side = self.bids if order.side == BUY else self.asks
        side.levels[order.price].total -= order.remaining - new_remaining
        old_remaining = order.remaining
        order.remaining = new_remaining
        order.amount = new_amount
        out.append(
            OrderAmended(
                order_id,
                user_id,
                order.side,
                order.price,
                new_amount,
                new_remaining,
                order.price,
                old_remaining,
                True,
            )
        )

    def move(self, order_id: int, user_id: int, new_price: int, now: int, out: list[Event]) -> None:
        if self.expiries and self.expiries[0][0] <= now:
            self.expire(now, out)
        order = self._owned(order_id, user_id, out)
        if order is None:
            return
        if new_price <= 0:
            out.append(CommandRejected(order_id, user_id, REJECT_INVALID, "price must be positive"))
            return
        buy = order.side == BUY
        best = self.asks.best() if buy else self.bids.best()
        crosses = best is not None and (new_price >= best if buy else new_price <= best)
        if crosses and order.cmd.post_only:
            out.append(
                CommandRejected(order_id, user_id, REJECT_POST_ONLY_WOULD_TAKE, "post-only order would take")
            )
            return
        self._remove(order)
        old_price = order.price
        # A fresh object: the old one stays dead in its old level's queue.
        order = order.copy()
        order.price = new_price
        out.append(
            OrderAmended(
                order_id,
                user_id,
                order.side,
                new_price,
                order.amount,
                order.remaining,
                old_price,
                order.remaining,
                False,
            )
        )
        if crosses and self._match(order, out):
            return
        if order.remaining == 0:
            out.append(OrderDone(order, DONE_FILLED, DETAIL_NONE))
        else:
            self._rest(order)

    def expire(self, now: int, out: list[Event]) -> None:
        """Expire every GTD order with expire_at <= now, earliest first (ties by order id)."""
        expiries = self.expiries
        orders = self.orders
        while expiries and expiries[0][0] <= now:
            _, order_id = heappop(expiries)
            order = orders.get(order_id)
            if order is not None and 0 < order.cmd.expire_at <= now:
                self._remove(order)
                out.append(OrderDone(order, DONE_EXPIRED, DETAIL_EXPIRE_TIME))

    # --- internals -----------------------------------------------------------------------------

    @staticmethod
    def _valid(cmd: PlaceOrder, now: int) -> bool:
        if cmd.side != BUY and cmd.side != SELL:
            return False
        if cmd.type == LIMIT:
            if cmd.price <= 0 or cmd.amount <= 0:
                return False
            if cmd.tif == GTD:
                return cmd.expire_at > now
            return cmd.tif in (GTC, IOC, FOK) and cmd.expire_at == 0
        if cmd.type == MARKET:
            # A market order is immediate-or-cancel by nature (GTC, the command's default, reads as IOC);
            # FOK, GTD and unknown values are refused rather than silently run as IOC.
            if cmd.post_only or cmd.expire_at or (cmd.tif != IOC and cmd.tif != GTC):
                return False
            # A market buy always carries its budget (what accounts froze); an amount too bounds it.
            return cmd.quote_budget > 0 and cmd.amount >= 0 if cmd.side == BUY else cmd.amount > 0
        return False

    def _market_exhausted(self, order: Order) -> bool:
        """A market order used up: a sell has no amount left, a buy cannot afford a lot at the best ask
        (a buy by amount is used up only when its amount is filled: stopped by its budget first, the rest
        is canceled like any market remainder)."""
        if order.side == SELL or order.amount > 0:
            return order.remaining == 0
        best = self.asks.best()
        return order.budget == 0 or (best is not None and order.budget < best * self._qptl)

    def _owned(self, order_id: int, user_id: int, out: list[Event]) -> Order | None:
        order = self.orders.get(order_id)
        if order is None:
            out.append(CommandRejected(order_id, user_id, REJECT_ORDER_NOT_FOUND, "order not open"))
            return None
        if order.user_id != user_id:
            out.append(CommandRejected(order_id, user_id, REJECT_NOT_OWNER, "order belongs to another user"))
            return None
        return order

    def _rest(self, order: Order) -> None:
        side = self.bids if order.side == BUY else self.asks
        level = side.levels.get(order.price)
        if level is None:
            level = side.level_for(order.price)
        level.orders.append(order)
        level.total += order.remaining
        level.count += 1
        self.orders[order.order_id] = order
        if order.cmd.expire_at:
            heappush(self.expiries, (order.cmd.expire_at, order.order_id))

    def _remove(self, order: Order) -> None:
        """Take a resting order out of the book (it stays in its level's deque, dead)."""
        order.live = False
        side = self.bids if order.side == BUY else self.asks
        level = side.levels[order.price]
        level.count -= 1
        if level.count == 0:
            del side.levels[order.price]
        else:
            level.total -= order.remaining
            queue = level.orders
            if len(queue) > 2 * level.count + 32:
                live = [o for o in queue if o.live]
                queue.clear()  # in place: a matching loop may hold this deque
                queue.extend(live)
        del self.orders[order.order_id]

    def _fillable(self, order: Order) -> bool:
        """FOK check: can `order` fill completely right now, given self-trade prevention?"""
        need = order.remaining
        limit = order.price
        buy = order.side == BUY
        opposite = self.asks if buy else self.bids
        stp = order.cmd.stp
        stp_stops = stp == STP_CANCEL_TAKER or stp == STP_CANCEL_BOTH
        for price in opposite.sorted_prices():
            if (price > limit) if buy else (price < limit):
                return False
            for maker in opposite.levels[price].orders:
                if not maker.live:
                    continue
                if maker.user_id == order.user_id:
                    if stp_stops:
                        return False
                    continue
                need -= maker.remaining
                if need <= 0:
                    return True
        return False

    def _match(self, taker: Order, out: list[Event]) -> bool:
        """Trade `taker` against the opposite side. Returns True when self-trade prevention canceled
        the taker (its OrderDone is then already emitted)."""
        buy = taker.side == BUY
        opposite = self.asks if buy else self.bids
        levels = opposite.levels
        heap = opposite.heap
        in_heap = opposite.in_heap
        tcmd = taker.cmd
        is_market = tcmd.type == MARKET
        by_budget = is_market and buy
        # A market buy by amount: bounded by its amount and by its budget, whichever is reached first.
        by_amount = by_budget and taker.amount > 0
        limit = taker.price
        qptl = self._qptl
        bpl = self._bpl
        taker_id = taker.order_id
        taker_user = taker.user_id
        taker_side = taker.side
        taker_fee_rate = tcmd.taker_fee_ppm
        orders = self.orders
        affordable = 0
        while heap:
            key = heap[0]
            price = key if buy else -key
            level = levels.get(price)
            if level is None:
                heappop(heap)
                in_heap.discard(price)
                continue
            if not is_market and ((price > limit) if buy else (price < limit)):
                break
            if by_budget:
                affordable = taker.budget // (price * qptl)
                if by_amount and affordable > taker.remaining:
                    affordable = taker.remaining
                if affordable == 0:
                    break
            queue = level.orders
            while queue:
                maker = queue[0]
                if not maker.live:
                    queue.popleft()
                    continue
                if maker.user_id == taker_user:
                    stp = tcmd.stp
                    if stp == STP_CANCEL_TAKER or stp == STP_CANCEL_BOTH:
                        if stp == STP_CANCEL_BOTH:
                            self._remove(maker)
                            out.append(OrderDone(maker, DONE_CANCELED, DETAIL_SELF_TRADE))
                        out.append(OrderDone(taker, DONE_CANCELED, DETAIL_SELF_TRADE))
                        return True
                    self._remove(maker)
                    out.append(OrderDone(maker, DONE_CANCELED, DETAIL_SELF_TRADE))
                    if level.count == 0:
                        break
                    continue
                if by_budget:
                    lots = maker.remaining if maker.remaining < affordable else affordable
                else:
                    lots = maker.remaining if maker.remaining < taker.remaining else taker.remaining
                quote = price * lots * qptl
                base = lots * bpl
                maker_rate = maker.cmd.maker_fee_ppm
                if buy:
                    taker_fee = -((-base * taker_fee_rate) // FEE_SCALE) if taker_fee_rate else 0
                    maker_fee = -((-quote * maker_rate) // FEE_SCALE) if maker_rate else 0
                else:
                    taker_fee = -((-quote * taker_fee_rate) // FEE_SCALE) if taker_fee_rate else 0
                    maker_fee = -((-base * maker_rate) // FEE_SCALE) if maker_rate else 0
                maker.remaining -= lots
                maker.filled += lots
                maker.filled_quote += quote
                level.total -= lots
                taker.filled += lots
                taker.filled_quote += quote
                if by_budget:
                    taker.budget -= quote
                    affordable -= lots
                    if by_amount:
                        taker.remaining -= lots
                else:
                    taker.remaining -= lots
                trade_id = self.next_trade_id
                self.next_trade_id = trade_id + 1
                out.append(
                    TradeExecuted(
                        trade_id,
                        price,
                        lots,
                        quote,
                        base,
                        taker_side,
                        taker_id,
                        taker_user,
                        maker.order_id,
                        maker.user_id,
                        taker_fee,
                        maker_fee,
                        taker.remaining,
                        maker.remaining,
                        limit,
                        taker.budget,
                    )
                )
                if maker.remaining == 0:
                    maker.live = False
                    queue.popleft()
                    level.count -= 1
                    del orders[maker.order_id]
                    out.append(OrderDone(maker, DONE_FILLED, DETAIL_NONE))
                    if level.count == 0:
                        del levels[price]
                        break
                if affordable == 0 if by_budget else taker.remaining == 0:
                    break
            if by_budget:
                if affordable == 0 and price in levels:
                    break
            elif taker.remaining == 0:
                break
        return False

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The full state as plain data, in a canonical order (bids best first, asks best first,
        time order within a level), so equal books give equal snapshots."""
        return {
            "version": SNAPSHOT_VERSION,
            "market": self.symbol,
            "next_trade_id": self.next_trade_id,
            "bids": [o.state() for o in self.iter_orders(BUY)],
            "asks": [o.state() for o in self.iter_orders(SELL)],
        }

    @classmethod
    def restore(cls, spec: MarketSpec, data: dict[str, Any]) -> OrderBook:
        if data.get("version") != SNAPSHOT_VERSION or data.get("market") != spec.symbol:
            raise ValueError(f"snapshot is not a version {SNAPSHOT_VERSION} book of {spec.symbol}")
        book = cls(spec)
        book.next_trade_id = int(data["next_trade_id"])
        for key in ("bids", "asks"):
            for state in data[key]:
                book._rest(Order.from_state(tuple(state)))
        return book

    def state_hash(self) -> str:
        """SHA-256 over the canonical snapshot."""
        h = hashlib.sha256()
        h.update(f"{self.symbol}|{self.next_trade_id}".encode())
        for side in (BUY, SELL):
            h.update(b"|bids" if side == BUY else b"|asks")
            for order in self.iter_orders(side):
                h.update(repr(order.state()).encode())
        return h.hexdigest()
