"""Realistic event streams for the history tests and benchmark: the real accounts and matching state
machines (testkit.accounts_sim.MiniExchange) driven by random orders, cancels and amends, plus what the
history database should hold afterwards."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from exchange.v1 import events_pb2 as ev
from sqlalchemy import Engine, Table, select

from services.common.errors import ExchangeError
from services.common.units import AmountError
from services.history.store import HistoryStore, balance_row, order_row, trade_row
from testkit.accounts_sim import MiniExchange, default_catalog

ACCOUNTS = "accounts-0"
SHARDS = {"matching-0": ["BTC_USDT", "ETH_BTC"], "matching-1": ["ETH_USDT", "SOL_USDT", "DOGE_USDT"]}
MIDS = {  # integer price (in quote) around which orders are placed, and the amount format
    "BTC_USDT": (30_000, "0.{:03d}"),
    "ETH_USDT": (2_000, "0.{:03d}"),
    "SOL_USDT": (150, "{}"),
}
MARKETS = list(MIDS)


@dataclass
class Flow:
    """Every event of one simulated run, per source."""

    matching: dict[str, list[ev.MatchingEvent]] = field(default_factory=dict)
    accounts: list[ev.AccountEvent] = field(default_factory=list)
    orders_placed: int = 0

    @property
    def sources(self) -> dict[str, int]:
        out = {name: len(events) for name, events in self.matching.items()}
        out[ACCOUNTS] = len(self.accounts)
        return out

    @property
    def event_count(self) -> int:
        return sum(self.sources.values())

    def trades(self) -> list[ev.MatchingEvent]:
        return [
            e
            for events in self.matching.values()
            for e in events
            if e.WhichOneof("event") == "trade_executed"
        ]

    def balance_changes(self) -> list[ev.AccountEvent]:
        return [e for e in self.accounts if e.WhichOneof("event") == "balance_changed"]

    def final_orders(self) -> dict[int, ev.AccountEvent]:
        """order_id -> the event holding its last state."""
        out: dict[int, ev.AccountEvent] = {}
        for e in self.accounts:
            if e.WhichOneof("event") == "order_updated":
                out[e.order_updated.order_id] = e
        return out

    def kinds(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for events in self.matching.values():
            c.update("matching." + str(e.WhichOneof("event")) for e in events)
        c.update("accounts." + str(e.WhichOneof("event")) for e in self.accounts)
        return dict(sorted(c.items()))


def generate(orders: int, *, seed: int = 7, users: int = 40, time_us: int = 1_700_000_000_000_000) -> Flow:
    """Run `orders` order placements (plus cancels and amends in between) through a MiniExchange."""
    rnd = random.Random(seed)
    mini = MiniExchange(catalog=default_catalog(SHARDS), time_us=time_us)
    for u in range(1, users + 1):
        mini.deposit(u, "USDT", "100000000")
        mini.deposit(u, "BTC", "10000")
        mini.deposit(u, "ETH", "100000")
        mini.deposit(u, "SOL", "10000000")
    open_orders: list[tuple[int, int, str]] = []
    placed = 0
    while placed < orders:
        r = rnd.random()
        user = rnd.randint(1, users)
        try:
            if r < 0.12 and open_orders:
                oid, owner, _ = open_orders.pop(rnd.randrange(len(open_orders)))
                mini.cancel(owner, order_id=oid)
                continue
            if r < 0.15 and open_orders:
                oid, owner, market = open_orders[rnd.randrange(len(open_orders))]
                mid, amount_fmt = MIDS[market]
                if rnd.random() < 0.5:
                    mini.amend(owner, oid, new_amount=amount_fmt.format(1))
                else:
                    mini.amend(owner, oid, new_price=str(mid + rnd.randint(-20, 20)))
                continue
            if r < 0.16:
                mini.withdraw(user, "USDT", "1")
                continue
            market = rnd.choice(MARKETS)
            mid, amount_fmt = MIDS[market]
            side = rnd.choice((1, 2))
            amount = amount_fmt.format(rnd.randint(1, 120))
            placed += 1
            if r < 0.24:
                if side == 1:
                    res = mini.place(user, market, side, type=2, quote_amount=str(mid // 10))
                else:
                    res = mini.place(user, market, side, type=2, amount=amount)
            else:
                price = mid + rnd.randint(-20, 20)
                tif = 2 if r > 0.93 else 1  # some IOC
                res = mini.place(user, market, side, price=str(price), amount=amount, time_in_force=tif)
            order = getattr(res, "order", None)
            if order is not None and order.status in (1, 2, 3):
                open_orders.append((order.order_id, user, market))
        except (ExchangeError, AmountError):
            pass
        if len(open_orders) > 400:
            open_orders = open_orders[-200:]
    flow = Flow(orders_placed=placed)
    flow.matching = {name: list(events) for name, events in mini.matching_events.items()}
    flow.accounts = list(mini.account_events)
    return flow


def load(store: HistoryStore, flow: Flow, chunk: int = 700) -> None:
    """Ingest a whole flow, source by source, in chunks."""
    for source, events in flow.matching.items():
        for i in range(0, len(events), chunk):
            store.ingest_matching(source, events[i : i + chunk])
    for i in range(0, len(flow.accounts), chunk):
        store.ingest_accounts(ACCOUNTS, flow.accounts[i : i + chunk])


def table_rows(engine: Engine, table: Table, *, without: tuple[str, ...] = ("id",)) -> list[tuple[Any, ...]]:
    """Every row of `table` (minus surrogate columns), sorted."""
    cols = [c for c in table.columns if c.name not in without]
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(*cols)))


def expected_trades(flow: Flow) -> list[tuple[Any, ...]]:
    return sorted(
        trade_row(e, name)
        for name, events in flow.matching.items()
        for e in events
        if e.WhichOneof("event") == "trade_executed"
    )


def expected_balances(flow: Flow) -> list[tuple[Any, ...]]:
    return sorted(balance_row(e, ACCOUNTS) for e in flow.balance_changes())


def expected_orders(flow: Flow) -> list[tuple[Any, ...]]:
    return sorted(order_row(e) for e in flow.final_orders().values())
