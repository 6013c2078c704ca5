"""Accounts domain: balances (available / frozen) per user and asset, order holds, settlement.

exchange-core's risk split, in one deterministic object:
- pre-hold: placing an order freezes what it may spend (limit buy: price x amount of quote, sell: the
  base amount, market buy: its quote budget); moving a buy up freezes the difference first;
- settle: each matching event adjusts balances: a fill pays from the frozen hold and credits the
  proceeds net of fee (fees go to the fee account, user 0); when an order needs less (a fill at a
  better price, a reduce, a move down) or is done, the excess hold is released.

The hold of an order always equals what it still needs: for a limit buy the highest price it may be at
(its price, or a requested move not yet confirmed) x remaining x quote units per tick-lot; for a sell the
remaining base; for a market buy the unspent budget. Every mutation reports to a Sink; no clock, no I/O.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.markets import MarketCatalog, MarketSpec
from services.common.units import INT64_MAX

FEE_ACCOUNT = 0

# Numeric codes equal to the protobuf enums (exchange.v1).
BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
GTC, IOC, FOK, GTD = 1, 2, 3, 4
PENDING, OPEN, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED, REJECTED = 1, 2, 3, 4, 5, 6, 7
DONE_FILLED, DONE_CANCELED, DONE_EXPIRED, DONE_REJECTED = 1, 2, 3, 4
DEPOSIT, WITHDRAW, ORDER_FREEZE, ORDER_UNFREEZE, TRADE, FEE = 1, 2, 3, 4, 5, 6
MAKER, TAKER = 1, 2

_DONE_STATUS = {DONE_FILLED: FILLED, DONE_CANCELED: CANCELED, DONE_EXPIRED: EXPIRED, DONE_REJECTED: REJECTED}
FINAL = frozenset((FILLED, CANCELED, EXPIRED, REJECTED))
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_BUSINESS = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_BUSINESS_ID = re.compile(r"[A-Za-z0-9_.:#/\-]{1,128}")


class Sink(Protocol):
    """Where the ledger reports what it changed (the accounts event log)."""

    def balance(
        self,
        user: int,
        asset: str,
        business: int,
        business_id: str,
        d_avail: int,
        d_frozen: int,
        bal: list[int],
    ) -> None: ...

    def order(self, order: AccountOrder) -> None: ...

    def fill(
        self,
        user: int,
        trade_id: int,
        market: str,
        order_id: int,
        side: int,
        role: int,
        price: int,
        lots: int,
        quote: int,
        fee: int,
        fee_asset: str,
    ) -> None: ...


class AccountOrder:
    """An order as accounts tracks it: what it holds and what the user sees."""

    __slots__ = (
        "amount",
        "cancel_requested",
        "client_order_id",
        "created",
        "detail",
        "expire_at",
        "fee",
        "filled",
        "filled_quote",
        "hold",
        "maker_fee",
        "market",
        "moves",
        "order_id",
        "post_only",
        "price",
        "quote_budget",
        "side",
        "status",
        "stp",
        "taker_fee",
        "tif",
        "type",
        "updated",
        "user_id",
    )

    def __init__(
        self,
        *,
        order_id: int = 0,
        user_id: int = 0,
        market: str = "",
        side: int = 0,
        type: int = 0,
        tif: int = 0,
        post_only: bool = False,
        stp: int = 0,
        price: int = 0,
        amount: int = 0,
        quote_budget: int = 0,
        hold: int = 0,
        status: int = 0,
        client_order_id: str = "",
        created: int = 0,
        updated: int = 0,
        expire_at: int = 0,
        maker_fee: int = 0,
        taker_fee: int = 0,
    ) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self.market = market
        self.side = side
        self.type = type
        self.tif = tif
        self.post_only = post_only
        self.stp = stp
        self.price = price
        self.amount = amount
        self.quote_budget = quote_budget
        self.hold = hold
        self.status = status
        self.client_order_id = client_order_id
        self.created = created
        self.updated = updated
        self.expire_at = expire_at
        self.maker_fee = maker_fee
        self.taker_fee = taker_fee
        self.moves: dict[int, int] = {}  # accounts seq of a requested move -> its price (unconfirmed)
        self.cancel_requested = False
        self.fee = 0
        self.filled = 0
        self.filled_quote = 0
        self.detail = 0

    @property
    def remaining(self) -> int:
        return 0 if self.status in FINAL else self.amount - self.filled

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ORDER_FIELDS}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> AccountOrder:
        o = cls()
        for k, v in s.items():
            setattr(o, k, v)
        o.moves = {int(k): int(v) for k, v in dict(s["moves"]).items()}
        return o


_ORDER_FIELDS = AccountOrder.__slots__  # also when compiled (mypyc classes have no __slots__ at run time)


@dataclass(frozen=True)
class AdjustResult:
    duplicate: bool
    available: int
    frozen: int


class Ledger:
    def __init__(self, catalog: MarketCatalog, *, finished_keep: int = 100_000) -> None:
        self.catalog = catalog
        self.finished_keep = finished_keep
        self.balances: dict[int, dict[str, list[int]]] = {}
        self.orders: dict[int, AccountOrder] = {}  # open (pending, open, partially filled)
        self.user_orders: dict[int, dict[int, AccountOrder]] = {}  # open orders by user (derived)
        self.finished: OrderedDict[int, AccountOrder] = OrderedDict()  # most recent, bounded
        self.client_ids: dict[tuple[int, str], int] = {}
        self.adjustments: dict[tuple[int, str, str, str], int] = {}  # idempotency key -> change
        self.net_external: dict[str, int] = {}  # deposits - withdrawals per asset
        self.next_order_id = 1
        self.settled: dict[str, int] = {}  # last matching event settled, per shard

    # --- balances ------------------------------------------------------------------------------

    def balance(self, user: int, asset: str) -> list[int]:
        """[available, frozen] (a live reference; creates a zero balance)."""
        mine = self.balances.get(user)
        if mine is None:
            mine = self.balances[user] = {}
        bal = mine.get(asset)
        if bal is None:
            bal = mine[asset] = [0, 0]
        return bal

    def peek_balance(self, user: int, asset: str) -> tuple[int, int]:
        bal = self.balances.get(user, {}).get(asset)
        return (bal[0], bal[1]) if bal else (0, 0)

    def adjust(
        self, user: int, asset: str, change: int, business: str, business_id: str, sink: Sink
    ) -> AdjustResult:
        """Deposit (change > 0) or withdraw (change < 0), idempotent by (user, asset, business, id)."""
        if user < 1:
            raise InvalidArgument("user_id must be positive")
        if asset not in self.catalog.assets:
            raise NotFound(f"unknown asset {asset!r}")
        if change == 0:
            raise InvalidArgument("amount must be greater than zero")
        if not _BUSINESS.fullmatch(business):
            raise InvalidArgument("business must be 1-64 characters [A-Za-z0-9_.:-]")
        if not _BUSINESS_ID.fullmatch(business_id):
            raise InvalidArgument("business_id must be 1-128 characters [A-Za-z0-9_.:#/-]")
        key = (user, asset, business, business_id)
        previous = self.adjustments.get(key)
        if previous is not None:
            if previous != change:
                raise FailedPrecondition(
                    f"{business}/{business_id} was already applied with a different amount"
                )
            avail, frozen = self.peek_balance(user, asset)
            return AdjustResult(True, avail, frozen)
        bal = self.balance(user, asset)
        if change < 0 and bal[0] < -change:
            raise FailedPrecondition(f"insufficient {asset}: available {bal[0]}, asked {-change}")
        if bal[0] + change > INT64_MAX:
            raise InvalidArgument("balance would overflow")
        bal[0] += change
        self.adjustments[key] = change
        self.net_external[asset] = self.net_external.get(asset, 0) + change
        sink.balance(user, asset, DEPOSIT if change > 0 else WITHDRAW, business_id, change, 0, bal)
        return AdjustResult(False, bal[0], bal[1])

    # --- orders: pre-hold ----------------------------------------------------------------------

    def spec(self, market: str) -> MarketSpec:
        spec = self.catalog.markets.get(market)
        if spec is None:
            raise NotFound(f"unknown market {market!r}")
        return spec

    def lookup(self, user: int, order_id: int = 0, client_order_id: str = "") -> AccountOrder:
        if client_order_id:
            found = self.client_ids.get((user, client_order_id))
            if found is None:
                raise NotFound(f"no order with client_order_id {client_order_id!r}")
            order_id = found
        order = self.orders.get(order_id) or self.finished.get(order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        if order.user_id != user:
            raise NotFound(f"order {order_id} not found")  # do not reveal other users' order ids
        return order

    def place(
        self,
        *,
        user: int,
        market: str,
        side: int,
        type: int,
        tif: int,
        price: int,
        amount: int,
        quote_budget: int,
        post_only: bool,
        stp: int,
        expire_at: int,
        client_order_id: str,
        now: int,
        sink: Sink,
        order_id: int = 0,
    ) -> tuple[AccountOrder, bool]:
        """Validate, freeze and register a new order. Returns (order, duplicate)."""
        if user < 1:
            raise InvalidArgument("user_id must be positive")
        if client_order_id:
            if not _CLIENT_ID.fullmatch(client_order_id):
                raise InvalidArgument("client_order_id must be 1-64 characters [A-Za-z0-9_.:-]")
            known = self.client_ids.get((user, client_order_id))
            if known is not None:
                existing = self.orders.get(known) or self.finished.get(known)
                if existing is not None:
                    return existing, True
        spec = self.spec(market)
        if side not in (BUY, SELL):
            raise InvalidArgument("side must be SIDE_BUY or SIDE_SELL")
        if stp not in (0, 1, 2, 3):
            raise InvalidArgument("unknown self_trade_prevention")
        if type == LIMIT:
            tif = tif or GTC
            if tif not in (GTC, IOC, FOK, GTD):
                raise InvalidArgument("unknown time_in_force")
            if price <= 0:
                raise InvalidArgument("a limit order needs a price")
            if quote_budget:
                raise InvalidArgument("quote_amount is only for market buys")
            if post_only and tif not in (GTC, GTD):
                raise InvalidArgument("post_only needs GTC or GTD")
            if tif == GTD:
                if expire_at <= now:
                    raise InvalidArgument("expire_time_us must be in the future")
            elif expire_at:
                raise InvalidArgument("expire_time_us is only for GTD orders")
            if amount < spec.min_amount_lots:
                raise InvalidArgument(f"amount is below the minimum {spec.min_amount}")
            notional = price * amount * spec.quote_units_per_tick_lot
            if notional > INT64_MAX:
                raise InvalidArgument("order value is too large")
            if notional < spec.min_notional_units:
                raise InvalidArgument(
                    f"order value is below the minimum {spec.min_notional} {spec.quote.symbol}"
                )
            hold, hold_asset = (
                (notional, spec.quote.symbol)
                if side == BUY
                else (amount * spec.base_units_per_lot, spec.base.symbol)
            )
        elif type == MARKET:
            if tif not in (0, IOC):
                raise InvalidArgument("market orders are immediate-or-cancel")
            tif = IOC
            if price:
                raise InvalidArgument("a market order has no price")
            if post_only:
                raise InvalidArgument("a market order cannot be post-only")
            if expire_at:
                raise InvalidArgument("expire_time_us is only for GTD orders")
            if side == BUY:
                if amount:
                    raise InvalidArgument("a market buy spends quote_amount, not amount")
                if quote_budget < max(1, spec.min_notional_units):
                    raise InvalidArgument(f"quote_amount is below the minimum {spec.min_notional}")
                hold, hold_asset = quote_budget, spec.quote.symbol
            else:
                if quote_budget:
                    raise InvalidArgument("a market sell gives amount, not quote_amount")
                if amount < spec.min_amount_lots:
                    raise InvalidArgument(f"amount is below the minimum {spec.min_amount}")
                hold, hold_asset = amount * spec.base_units_per_lot, spec.base.symbol
        else:
            raise InvalidArgument("type must be ORDER_TYPE_LIMIT or ORDER_TYPE_MARKET")
        if hold > INT64_MAX:
            raise InvalidArgument("order value is too large")
        bal = self.balance(user, hold_asset)
        if bal[0] < hold:
            raise FailedPrecondition(f"insufficient {hold_asset}: available {bal[0]}, needed {hold}")
        if order_id and order_id != self.next_order_id:
            raise RuntimeError(
                f"journaled order id {order_id} differs from the ledger's {self.next_order_id}"
            )
        order_id = self.next_order_id
        self.next_order_id += 1
        order = AccountOrder(
            order_id=order_id,
            user_id=user,
            market=market,
            side=side,
            type=type,
            tif=tif,
            post_only=post_only,
            stp=stp,
            price=price,
            amount=amount,
            quote_budget=quote_budget,
            hold=hold,
            status=PENDING,
            client_order_id=client_order_id,
            created=now,
            updated=now,
            expire_at=expire_at,
            maker_fee=spec.maker_fee_ppm,
            taker_fee=spec.taker_fee_ppm,
        )
        bal[0] -= hold
        bal[1] += hold
        self.orders[order_id] = order
        self.user_orders.setdefault(user, {})[order_id] = order
        if client_order_id:
            self.client_ids[(user, client_order_id)] = order_id
        sink.balance(user, hold_asset, ORDER_FREEZE, str(order_id), -hold, hold, bal)
        # No order event yet: the caller gets the order (PENDING) in its answer, and the stream reports
        # it once matching has accepted it (OPEN) or decided its fate.
        return order, False

    def open_order(self, user: int, order_id: int, client_order_id: str = "") -> AccountOrder:
        order = self.lookup(user, order_id, client_order_id)
        if order.status in FINAL:
            raise FailedPrecondition(f"order {order.order_id} is already {_STATUS_NAMES[order.status]}")
        return order

    def request_cancel(
        self, user: int, order_id: int, client_order_id: str = "", market: str = ""
    ) -> tuple[AccountOrder, bool]:
        """Returns (order, first request). A repeated cancel is not forwarded again."""
        order = self.open_order(user, order_id, client_order_id)
        if market and order.market != market:
            raise NotFound(f"order {order.order_id} is not on market {market}")
        first = not order.cancel_requested
        order.cancel_requested = True
        return order, first

    def cancel_all_shards(self, user: int, market: str, side: int) -> tuple[dict[str, list[str]], int]:
        """Shards (and markets) holding the user's open orders to cancel, and how many orders."""
        if market:
            self.spec(market)
        if side not in (0, BUY, SELL):
            raise InvalidArgument("unknown side")
        shards: dict[str, list[str]] = {}
        count = 0
        for o in self.user_orders.get(user, {}).values():
            if (market and o.market != market) or (side and o.side != side):
                continue
            count += 1
            shard = self.catalog.markets[o.market].shard
            if o.market not in shards.setdefault(shard, []):
                shards[shard].append(o.market)
        return shards, count

    def request_reduce(self, user: int, order_id: int, client_order_id: str, new_amount: int) -> AccountOrder:
        order = self.open_order(user, order_id, client_order_id)
        if order.type != LIMIT:
            raise FailedPrecondition("only limit orders can be amended")
        if new_amount >= order.amount:
            raise InvalidArgument("new_amount must be lower than the current amount (use a new order to add)")
        if new_amount <= 0:
            raise InvalidArgument("new_amount must be greater than zero (use CancelOrder)")
        return order

    def request_move(
        self, user: int, order_id: int, client_order_id: str, new_price: int, seq: int, sink: Sink
    ) -> AccountOrder:
        """Freeze what the new price may need (for a buy) before the move is forwarded."""
        order = self.open_order(user, order_id, client_order_id)
        if order.type != LIMIT:
            raise FailedPrecondition("only limit orders can be amended")
        if new_price <= 0:
            raise InvalidArgument("new_price must be greater than zero")
        spec = self.spec(order.market)
        if order.side == BUY:
            remaining = order.amount - order.filled
            if new_price * remaining * spec.quote_units_per_tick_lot > INT64_MAX:
                raise InvalidArgument("order value is too large")
            needed = (
                max(order.price, new_price, *order.moves.values()) * remaining * spec.quote_units_per_tick_lot
            )
            extra = needed - order.hold
            if extra > 0:
                bal = self.balance(user, spec.quote.symbol)
                if bal[0] < extra:
                    raise FailedPrecondition(
                        f"insufficient {spec.quote.symbol}: available {bal[0]}, needed {extra} more"
                    )
                bal[0] -= extra
                bal[1] += extra
                order.hold += extra
                sink.balance(user, spec.quote.symbol, ORDER_FREEZE, str(order.order_id), -extra, extra, bal)
        order.moves[seq] = new_price
        return order

    # --- settlement ----------------------------------------------------------------------------

    def _needed(self, o: AccountOrder, spec: MarketSpec) -> int:
        if o.status in FINAL:
            return 0
        if o.side == SELL:
            return (o.amount - o.filled) * spec.base_units_per_lot
        if o.type == MARKET:
            return o.quote_budget - o.filled_quote
        price = max(o.price, *o.moves.values()) if o.moves else o.price
        return price * (o.amount - o.filled) * spec.quote_units_per_tick_lot

    def _release_excess(self, o: AccountOrder, spec: MarketSpec, sink: Sink) -> None:
        excess = o.hold - self._needed(o, spec)
        if excess < 0:
            raise RuntimeError(f"order {o.order_id} holds {o.hold}, less than it needs")
        if excess:
            asset = spec.quote.symbol if o.side == BUY else spec.base.symbol
            bal = self.balance(o.user_id, asset)
            bal[1] -= excess
            bal[0] += excess
            o.hold -= excess
            sink.balance(o.user_id, asset, ORDER_UNFREEZE, str(o.order_id), excess, -excess, bal)

    def on_accepted(self, order_id: int, now: int, touched: dict[int, AccountOrder]) -> None:
        o = self.orders.get(order_id)
        if o is not None and o.status == PENDING:
            o.status = OPEN
            o.updated = now
            touched[order_id] = o

    def on_trade(
        self,
        market: str,
        trade_id: int,
        price: int,
        lots: int,
        quote: int,
        base: int,
        taker_side: int,
        taker_order_id: int,
        maker_order_id: int,
        taker_fee: int,
        maker_fee: int,
        now: int,
        sink: Sink,
        touched: dict[int, AccountOrder],
    ) -> None:
        spec = self.catalog.markets[market]
        business_id = f"{market}#{trade_id}"
        for order_id, role, fee in ((taker_order_id, TAKER, taker_fee), (maker_order_id, MAKER, maker_fee)):
            o = self.orders.get(order_id)
            if o is None:
                raise RuntimeError(f"trade {business_id} for unknown open order {order_id}")
            side = taker_side if role == TAKER else (SELL if taker_side == BUY else BUY)
            if side == BUY:
                pay_asset, pay, get_asset, get = spec.quote.symbol, quote, spec.base.symbol, base
            else:
                pay_asset, pay, get_asset, get = spec.base.symbol, base, spec.quote.symbol, quote
            user = o.user_id
            bal = self.balance(user, pay_asset)
            bal[1] -= pay
            o.hold -= pay
            sink.balance(user, pay_asset, TRADE, business_id, 0, -pay, bal)
            bal = self.balance(user, get_asset)
            bal[0] += get
            sink.balance(user, get_asset, TRADE, business_id, get, 0, bal)
            if fee:
                bal[0] -= fee
                sink.balance(user, get_asset, FEE, business_id, -fee, 0, bal)
                fee_bal = self.balance(FEE_ACCOUNT, get_asset)
                fee_bal[0] += fee
                sink.balance(FEE_ACCOUNT, get_asset, FEE, business_id, fee, 0, fee_bal)
            o.filled += lots
            o.filled_quote += quote
            o.fee += fee
            o.status = PARTIALLY_FILLED
            o.updated = now
            self._release_excess(o, spec, sink)
            sink.fill(user, trade_id, market, order_id, side, role, price, lots, quote, fee, get_asset)
            touched[order_id] = o

    def on_amended(
        self,
        seq: int,
        order_id: int,
        price: int,
        amount: int,
        remaining: int,
        priority_kept: bool,
        now: int,
        sink: Sink,
        touched: dict[int, AccountOrder],
    ) -> None:
        o = self.orders.get(order_id)
        if o is None:
            raise RuntimeError(f"amend of unknown open order {order_id}")
        spec = self.catalog.markets[o.market]
        if not priority_kept:
            o.moves.pop(seq, None)
        o.price = price
        o.amount = amount
        if o.amount - o.filled != remaining:
            raise RuntimeError(
                f"order {order_id}: accounts sees {o.amount - o.filled} open, matching {remaining}"
            )
        o.updated = now
        self._release_excess(o, spec, sink)
        touched[order_id] = o

    def on_done(
        self, order_id: int, reason: int, detail: int, now: int, sink: Sink, touched: dict[int, AccountOrder]
    ) -> None:
        o = self.orders.pop(order_id, None)
        if o is None:
            raise RuntimeError(f"done for unknown open order {order_id}")
        mine = self.user_orders[o.user_id]
        del mine[order_id]
        if not mine:
            del self.user_orders[o.user_id]
        spec = self.catalog.markets[o.market]
        o.status = _DONE_STATUS[reason]
        o.detail = detail
        o.updated = now
        o.moves.clear()
        self._release_excess(o, spec, sink)
        touched[order_id] = o
        self.finished[order_id] = o
        while len(self.finished) > self.finished_keep:
            _, old = self.finished.popitem(last=False)
            if old.client_order_id:
                self.client_ids.pop((old.user_id, old.client_order_id), None)

    def on_rejected(self, seq: int, order_id: int, sink: Sink, touched: dict[int, AccountOrder]) -> None:
        """A forwarded cancel/reduce/move was refused by matching (e.g. the order was already done)."""
        o = self.orders.get(order_id)
        if o is None:
            return
        if seq in o.moves:
            del o.moves[seq]
            self._release_excess(o, self.catalog.markets[o.market], sink)
            touched[order_id] = o

    # --- audit ---------------------------------------------------------------------------------

    def iter_user_orders(self, user: int, market: str = "") -> Iterator[AccountOrder]:
        for o in self.user_orders.get(user, {}).values():
            if not market or o.market == market:
                yield o

    def audit(self) -> dict[str, dict[str, int]]:
        """Per asset: total of all balances (fee account included), deposits - withdrawals, frozen,
        and what open orders hold. A healthy ledger has total == external and frozen == held."""
        out: dict[str, dict[str, int]] = {
            a: {"total": 0, "external": self.net_external.get(a, 0), "frozen": 0, "held": 0}
            for a in self.catalog.assets
        }
        for assets in self.balances.values():
            for asset, (avail, frozen) in assets.items():
                out[asset]["total"] += avail + frozen
                out[asset]["frozen"] += frozen
        for o in self.orders.values():
            spec = self.catalog.markets[o.market]
            asset = spec.quote.symbol if o.side == BUY else spec.base.symbol
            out[asset]["held"] += o.hold
        return out

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "balances": sorted(
                (u, a, b[0], b[1]) for u, assets in self.balances.items() for a, b in assets.items()
            ),
            "orders": [self.orders[k].state() for k in sorted(self.orders)],
            "finished": [o.state() for o in self.finished.values()],
            "client_ids": sorted((u, c, oid) for (u, c), oid in self.client_ids.items()),
            "adjustments": sorted((*k, v) for k, v in self.adjustments.items()),
            "net_external": sorted(self.net_external.items()),
            "next_order_id": self.next_order_id,
            "settled": sorted(self.settled.items()),
        }

    @classmethod
    def restore(cls, catalog: MarketCatalog, data: dict[str, Any], *, finished_keep: int = 100_000) -> Ledger:
        led = cls(catalog, finished_keep=finished_keep)
        for u, a, avail, frozen in data["balances"]:
            led.balances.setdefault(u, {})[a] = [avail, frozen]
        for s in data["orders"]:
            o = AccountOrder.from_state(s)
            led.orders[o.order_id] = o
            led.user_orders.setdefault(o.user_id, {})[o.order_id] = o
        for s in data["finished"]:
            o = AccountOrder.from_state(s)
            led.finished[o.order_id] = o
        led.client_ids = {(u, c): oid for u, c, oid in data["client_ids"]}
        led.adjustments = {(u, a, b, i): v for u, a, b, i, v in data["adjustments"]}
        led.net_external = dict(data["net_external"])
        led.next_order_id = data["next_order_id"]
        led.settled = dict(data["settled"])
        return led


_STATUS_NAMES = {
    PENDING: "pending",
    OPEN: "open",
    PARTIALLY_FILLED: "partially filled",
    FILLED: "filled",
    CANCELED: "canceled",
    EXPIRED: "expired",
    REJECTED: "rejected",
}
