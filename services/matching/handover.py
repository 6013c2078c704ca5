"""A market's book handed from one matching shard to another (services.cluster.operator moves pairs).

The book travels as an exchange.v1.MarketBook: every resting order (the PlaceOrderCommand that placed
it and what changed since: price and amount after a move or a reduce, remaining, budget, filled,
created time) in priority order, bids and asks best price first and time order within a price, the
market's next trade id, and the book's state hash. `book_from_proto` rebuilds an equal OrderBook
(same priority, same state hash) and refuses a book whose hash does not match.

The protocol, each step journaled where it changes state (services.matching.machine and
services.accounts.machine):

1. each accounts shard journals RouteMarket(halted) and, in its command chain to the old shard, a
   HaltMarketCommand: it refuses the market's orders from then on (UNAVAILABLE, MARKET_MOVING) and the
   old shard knows that nothing more of that source comes for the market;
2. the old shard journals ExportMarketCommand once every source halted the market: the book leaves
   it, and the result is the MarketBook with export_sequence = its last event before the export;
3. the new shard journals ImportMarketCommand with that book: the market trades there;
4. the shard map switches (ZooKeeper, services.cluster.pairmap; the config-mode file otherwise);
5. once every accounts shard has settled the old shard's events up to export_sequence (the operator
   waits for all of them: a fill on the new shard caused by one accounts shard's order may concern a
   resting order of another's, whose older fills on the old shard come first), each journals
   RouteMarket(to the new shard), which checks its own settlement once more, and the market's orders
   flow again, to the new shard.
"""

from __future__ import annotations

from typing import Any

from exchange.v1 import events_pb2 as ev

from services.common.enums import BUY, SELL
from services.common.errors import FailedPrecondition, Reason
from services.common.markets import MarketSpec
from services.matching.book import OrderBook
from services.matching.convert import place_from_proto, place_to_proto
from services.matching.model import Order


def order_to_proto(o: Order) -> ev.RestingOrder:
    return ev.RestingOrder(
        placed=place_to_proto(o.cmd),
        price_ticks=o.price,
        amount_lots=o.amount,
        remaining_lots=o.remaining,
        remaining_budget=o.budget,
        filled_lots=o.filled,
        filled_quote_units=o.filled_quote,
        created_time_us=o.created,
    )


def order_from_proto(r: ev.RestingOrder) -> Order:
    o = Order(place_from_proto(r.placed), r.created_time_us)
    o.price = r.price_ticks
    o.amount = r.amount_lots
    o.remaining = r.remaining_lots
    o.budget = r.remaining_budget
    o.filled = r.filled_lots
    o.filled_quote = r.filled_quote_units
    return o


def book_to_proto(book: OrderBook, *, from_shard: str, to_shard: str, export_sequence: int) -> ev.MarketBook:
    return ev.MarketBook(
        market=book.symbol,
        from_shard=from_shard,
        to_shard=to_shard,
        export_sequence=export_sequence,
        next_trade_id=book.next_trade_id,
        bids=[order_to_proto(o) for o in book.iter_orders(BUY)],
        asks=[order_to_proto(o) for o in book.iter_orders(SELL)],
        state_hash=book.state_hash(),
    )


# Orders per ImportMarket part: one journal record each, well under a JetStream message (~150 bytes
# an order).
PART_ORDERS = 2000


def book_parts(book: ev.MarketBook, max_orders: int = PART_ORDERS) -> list[ev.MarketBook]:
    """The book in parts of at most `max_orders` orders (bids, then asks, in priority order), each
    with the book's header; one part (the book) when it is small."""
    orders = [(True, o) for o in book.bids] + [(False, o) for o in book.asks]
    if len(orders) <= max_orders:
        return [book]
    parts = []
    for start in range(0, len(orders), max_orders):
        part = ev.MarketBook()
        part.CopyFrom(book)
        del part.bids[:]
        del part.asks[:]
        for is_bid, o in orders[start : start + max_orders]:
            (part.bids if is_bid else part.asks).append(o)
        parts.append(part)
    return parts


def book_from_proto(spec: MarketSpec, m: ev.MarketBook) -> OrderBook:
    """The OrderBook of a handed-over book; FailedPrecondition when it is not a book of `spec`'s
    market or its orders do not give its state hash (nothing is built)."""
    if m.market != spec.symbol:
        raise FailedPrecondition(f"the book is of {m.market}, not of {spec.symbol}", Reason.INVALID_FIELD)
    state: dict[str, Any] = {
        "version": 1,
        "market": spec.symbol,
        "next_trade_id": m.next_trade_id,
        "bids": [order_from_proto(r).state() for r in m.bids],
        "asks": [order_from_proto(r).state() for r in m.asks],
    }
    for key, side in (("bids", BUY), ("asks", SELL)):
        for s in state[key]:
            if s[2] != side or s[17] != spec.symbol:  # (side, market): Order.state's fields
                raise FailedPrecondition(
                    f"an order of the {key} of {m.market} is not one", Reason.INVALID_FIELD
                )
    book = OrderBook.restore(spec, state)
    if book.state_hash() != m.state_hash:
        raise FailedPrecondition(
            f"the book of {m.market} does not match its state hash", Reason.STATE_INCONSISTENT
        )
    return book
