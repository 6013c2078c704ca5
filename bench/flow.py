"""Generated order flow modelled on exchange-core's benchmark generator.

Thousands of users; several pairs with Pareto-weighted activity; each book is first filled to a steady
size (~10k resting orders), then the flow is mostly passive orders, cancels, moves and reduces, with a
few percent of crossing limit orders and market orders. The generator drives a real book while it
generates, so every cancel or move targets an order that is really open at that point; the recorded
command list can then be replayed (timed) on fresh books and gives exactly the same results.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.markets import MarketSpec
from services.matching.book import OrderBook
from services.matching.model import (
    BUY,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    CancelOrder,
    Command,
    Event,
    MoveOrder,
    PlaceOrder,
    ReduceOrder,
)


@dataclass(frozen=True)
class FlowMix:
    """Shares of the steady-phase commands (the rest are passive limit orders)."""

    cancel: float = 0.36
    move: float = 0.14
    reduce: float = 0.05
    crossing_limit: float = 0.03
    market: float = 0.02


@dataclass
class GeneratedFlow:
    fill: list[tuple[str, Command]]  # commands that build the steady book (not timed)
    steady: list[tuple[str, Command]]  # the timed flow
    counts: dict[str, int]


class _PairGenerator:
    def __init__(
        self, spec: MarketSpec, rng: random.Random, users: int, next_id: list[int], mix: FlowMix
    ) -> None:
        self.spec = spec
        self.book = OrderBook(spec)
        self.rng = rng
        self.users = users
        self.next_id = next_id
        self.mix = mix
        self.mid = 3_000_000
        self.ids: list[int] = []
        self.out: list[Event] = []

    def _user(self) -> int:
        # Pareto-ish: a few users are very active.
        return 1 + min(
            self.users - 1, int(self.rng.paretovariate(1.2)) - 1 + self.rng.randrange(self.users) // 8
        )

    def _new_id(self) -> int:
        self.next_id[0] += 1
        return self.next_id[0]

    def _passive(self) -> PlaceOrder:
        rng = self.rng
        side = BUY if rng.random() < 0.5 else SELL
        offset = 1 + int(rng.expovariate(1 / 60))
        price = self.mid - offset if side == BUY else self.mid + offset
        oid = self._new_id()
        self.ids.append(oid)
        return PlaceOrder(
            oid,
            self._user(),
            self.spec.symbol,
            side,
            LIMIT,
            GTC,
            price,
            rng.randint(1, 200),
            maker_fee_ppm=self.spec.maker_fee_ppm,
            taker_fee_ppm=self.spec.taker_fee_ppm,
        )

    def _live_id(self) -> int | None:
        ids = self.ids
        orders = self.book.orders
        while ids:
            i = self.rng.randrange(len(ids))
            oid = ids[i]
            if oid in orders:
                return oid
            ids[i] = ids[-1]
            ids.pop()
        return None

    def step(self, steady_size: int) -> Command:
        rng = self.rng
        mix = self.mix
        size = len(self.book)
        r = rng.random()
        # Keep the book near its steady size: fewer cancels when small, more when large.
        bias = (size - steady_size) / max(steady_size, 1) * 0.3
        cmd: Command
        oid = self._live_id() if size else None
        if r < mix.cancel + bias and oid is not None:
            order = self.book.orders[oid]
            cmd = CancelOrder(oid, order.user_id, self.spec.symbol)
        elif r < mix.cancel + mix.move + bias and oid is not None:
            order = self.book.orders[oid]
            step = rng.choice((-3, -2, -1, 1, 2, 3))
            new_price = order.price + step
            # Never move across the spread: moves stay passive, like exchange-core's.
            if order.side == BUY:
                new_price = min(new_price, self.mid - 1)
            else:
                new_price = max(new_price, self.mid + 1)
            cmd = MoveOrder(oid, order.user_id, self.spec.symbol, max(1, new_price))
        elif r < mix.cancel + mix.move + mix.reduce + bias and oid is not None:
            order = self.book.orders[oid]
            if order.amount - order.filled > 1:
                cmd = ReduceOrder(oid, order.user_id, self.spec.symbol, order.amount - 1)
            else:
                cmd = CancelOrder(oid, order.user_id, self.spec.symbol)
        elif r > 1 - mix.market:
            side = BUY if rng.random() < 0.5 else SELL
            oid = self._new_id()
            if side == BUY:
                budget = self.mid * rng.randint(50, 400) * self.spec.quote_units_per_tick_lot
                cmd = PlaceOrder(
                    oid,
                    self._user(),
                    self.spec.symbol,
                    BUY,
                    MARKET,
                    IOC,
                    quote_budget=budget,
                    taker_fee_ppm=self.spec.taker_fee_ppm,
                )
            else:
                cmd = PlaceOrder(
                    oid,
                    self._user(),
                    self.spec.symbol,
                    SELL,
                    MARKET,
                    IOC,
                    amount=rng.randint(50, 400),
                    taker_fee_ppm=self.spec.taker_fee_ppm,
                )
        elif r > 1 - mix.market - mix.crossing_limit:
            side = BUY if rng.random() < 0.5 else SELL
            oid = self._new_id()
            through = rng.randint(0, 5)
            price = self.mid + through if side == BUY else self.mid - through
            tif = IOC if rng.random() < 0.5 else GTC
            if tif == GTC:
                self.ids.append(oid)
            cmd = PlaceOrder(
                oid,
                self._user(),
                self.spec.symbol,
                side,
                LIMIT,
                tif,
                price,
                rng.randint(50, 400),
                maker_fee_ppm=self.spec.maker_fee_ppm,
                taker_fee_ppm=self.spec.taker_fee_ppm,
            )
        else:
            cmd = self._passive()
        self.apply(cmd)
        # The mid price drifts slowly, like a random walk.
        if rng.random() < 0.001:
            self.mid += rng.choice((-1, 1)) * rng.randint(1, 5)
        return cmd

    def apply(self, cmd: Command) -> None:
        out = self.out
        book = self.book
        if isinstance(cmd, PlaceOrder):
            book.place(cmd, 0, out)
        elif isinstance(cmd, CancelOrder):
            book.cancel(cmd.order_id, cmd.user_id, 0, out)
        elif isinstance(cmd, MoveOrder):
            book.move(cmd.order_id, cmd.user_id, cmd.new_price, 0, out)
        elif isinstance(cmd, ReduceOrder):
            book.reduce(cmd.order_id, cmd.user_id, cmd.new_amount, 0, out)
        out.clear()


def pareto_weights(n: int, alpha: float = 1.16) -> list[float]:
    """Activity shares of n pairs, Zipf/Pareto shaped (the first pair is the busiest)."""
    raw = [1 / (i + 1) ** alpha for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def generate(
    specs: Sequence[MarketSpec],
    *,
    commands: int,
    steady_size: int = 10_000,
    users: int = 2_000,
    seed: int = 1,
    mix: FlowMix | None = None,
) -> GeneratedFlow:
    rng = random.Random(seed)
    mix = mix or FlowMix()
    next_id = [0]
    gens = {s.symbol: _PairGenerator(s, rng, users, next_id, mix) for s in specs}
    fill: list[tuple[str, Command]] = []
    for gen in gens.values():
        for _ in range(steady_size):
            cmd = gen._passive()
            gen.apply(cmd)
            fill.append((gen.spec.symbol, cmd))
    weights = pareto_weights(len(specs))
    symbols = [s.symbol for s in specs]
    steady: list[tuple[str, Command]] = []
    counts: dict[str, int] = {}
    picks = rng.choices(symbols, weights, k=commands)
    for symbol in picks:
        cmd = gens[symbol].step(steady_size)
        steady.append((symbol, cmd))
        name = type(cmd).__name__
        if isinstance(cmd, PlaceOrder):
            name = "Market" if cmd.type == MARKET else ("LimitIOC" if cmd.tif == IOC else "Limit")
        counts[name] = counts.get(name, 0) + 1
    return GeneratedFlow(fill, steady, counts)
