"""The quantizer machine in-process (no processes): commands and feed items in, effects out; replay
and snapshot give the same state; a fill is applied once whatever the feed resends; fills wait for
their order's state and prices for the fills; paused strategies hold their events; a rejected command
changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.common.markets import MarketCatalog
from services.quantizer.core import Cancel, Place
from services.quantizer.machine import (
    CODEC,
    FundEffect,
    Limits,
    OrderEffect,
    QuantizerMachine,
    ReturnEffect,
)
from tests.quantizer.util import SPEC

CATALOG = MarketCatalog(assets={"BTC": SPEC.base, "USD": SPEC.quote}, markets={SPEC.symbol: SPEC})
GRID = {
    "kind": "grid",
    "lower_price": "29000",
    "upper_price": "31000",
    "intervals": 4,
    "spacing": "GRID_SPACING_ARITHMETIC",
    "investment": "10000",
}
SUB = (1 << 62) + 1
T0 = 1_800_000_000_000_000


class Driver:
    """Applies commands as the host does (sequence, time, journal of what changed)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.m = QuantizerMachine(CATALOG, limits)
        self.journal: list[bytes] = []
        self.time = T0
        self.seq = 0  # accounts event sequence of the feed items

    def run(self, command: dict[str, Any]) -> tuple[Any, list[Any]]:
        self.time += 1000
        out = self.m.apply(self.m.applied_seq + 1, self.time, command)
        if out.journal:
            self.journal.append(CODEC.encode(dict(command), self.time))
        return out.result, list(out.effects)

    def feed(self, *items: list[Any], last: int = 0) -> list[Any]:
        return self.run({"t": "feed", "last": last or self.seq, "items": list(items)})[1]

    def item(self, kind: str, *fields: Any) -> list[Any]:
        self.seq += 1
        return [kind, self.seq, *fields]

    def start_grid(self) -> tuple[int, list[Any]]:
        self.feed(self.item("k", SPEC.symbol, 30000, 1, self.time))
        (sid, dup), effects = self.run(
            {
                "t": "create",
                "user": 7,
                "client_id": "g",
                "market": SPEC.symbol,
                "config": GRID,
                "price": 30000,
            }
        )
        assert not dup and effects == [FundEffect(sid)]
        _, effects = self.run({"t": "funded", "sid": sid, "trading_user": SUB})
        return sid, effects


def places(effects: list[Any]) -> list[Place]:
    return [e.intent for e in effects if isinstance(e, OrderEffect) and isinstance(e.intent, Place)]


def replayed(d: Driver) -> QuantizerMachine:
    m = QuantizerMachine(CATALOG, d.m.limits)
    for seq, record in enumerate(d.journal, start=1):
        command, time_us = CODEC.decode(record)
        m.apply(seq, time_us, command)
    return m


def test_grid_lifecycle_fill_once_and_replay() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    first = places(effects)
    assert [p.cid for p in first] == [f"q{sid}-1-b1", f"q{sid}-2-b0", f"q{sid}-3-i"]
    buy = first[0]
    # accounts: the order's state (OPEN) names its client id, then a fill of it (maker)
    d.feed(d.item("o", SUB, 101, buy.cid, 2, d.time))
    fill = d.item("f", SUB, 101, 55, 1, 1, 29500, buy.lots, 29500 * buy.lots, 10, d.time)
    done = d.item("o", SUB, 101, buy.cid, 4, d.time)
    effects = d.feed(fill, done)
    assert [p.cid for p in places(effects)] == [f"q{sid}-4-s2"]  # the counter sell one level up
    e = d.m.entries[sid]
    assert e.strategy.account.fills == 1
    # the same items again (a resend overlapping the checkpoint) change nothing
    _, again = d.run({"t": "feed", "last": d.seq, "items": [fill, done]})
    assert again == [] and e.strategy.account.fills == 1
    # replay of the journal and the snapshot give the same state
    assert replayed(d).state_hash() == d.m.state_hash()
    assert QuantizerMachine.restore(CATALOG, None, d.m.snapshot()).state_hash() == d.m.state_hash()


def test_fills_wait_for_their_order_state_and_prices_for_fills() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    initial = places(effects)[2]  # the market buy
    assert initial.is_market and initial.quote_budget
    lots = initial.quote_budget // 30000
    # accounts emits the fills of a settlement before the order states: the fill waits, and so does
    # the trade's price
    fill = d.item("f", SUB, 103, 60, 1, 2, 30000, lots, 30000 * lots, 600, d.time)
    tick = d.item("k", SPEC.symbol, 30000, 60, d.time)
    effects = d.feed(fill, tick)
    assert d.m.pending and d.m.deferred and effects == []
    effects = d.feed(d.item("o", SUB, 103, initial.cid, 4, d.time))
    assert not d.m.pending and not d.m.deferred
    sells = places(effects)
    assert [p.cid for p in sells] == [f"q{sid}-4-s3", f"q{sid}-5-s4"]
    assert d.m.entries[sid].strategy.account.fills == 1


def test_pause_holds_events_until_resume() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    buy = places(effects)[0]
    d.feed(d.item("o", SUB, 101, buy.cid, 2, d.time))
    d.run({"t": "pause", "sid": sid})
    effects = d.feed(
        d.item("f", SUB, 101, 70, 1, 1, 29500, buy.lots, 29500 * buy.lots, 10, d.time),
        d.item("o", SUB, 101, buy.cid, 4, d.time),
    )
    assert effects == [] and len(d.m.entries[sid].held) == 2
    assert d.m.state_name(d.m.entries[sid]) == "paused"
    _, effects = d.run({"t": "resume", "sid": sid})
    assert d.m.entries[sid].strategy.account.fills == 1 and not d.m.entries[sid].held


def test_stop_cancels_then_returns_funds() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    placed = sorted(p.cid for p in places(effects))
    _, effects = d.run({"t": "stop", "sid": sid, "mode": 2})
    cancels = [e.intent.cid for e in effects if isinstance(e, OrderEffect) and isinstance(e.intent, Cancel)]
    assert sorted(cancels) == placed  # the two buys and the initial purchase
    for i, cid in enumerate(sorted(cancels)):
        effects = d.feed(d.item("o", SUB, 200 + i, cid, 5, d.time))
    assert ReturnEffect(sid) in effects
    assert d.m.state_name(d.m.entries[sid]) == "stopped"
    d.run({"t": "returned", "sid": sid})
    assert d.m.entries[sid].returned
    with pytest.raises(FailedPrecondition):
        d.run({"t": "resume", "sid": sid})


def test_a_keep_orders_stop_returns_the_kept_orders_funds_once_they_are_done() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    buys = places(effects)[:2]
    for i, p in enumerate(buys):
        d.feed(d.item("o", SUB, 101 + i, p.cid, 2, d.time))
    _, effects = d.run({"t": "stop", "sid": sid, "mode": 1})  # keep orders
    e = d.m.entries[sid]
    assert effects == [ReturnEffect(sid)] and e.kept  # round 0: what is free now
    d.run({"t": "returned", "sid": sid, "round": 0})
    assert e.returned and not e.funds_returned  # the kept orders still hold funds
    # one kept buy fills: booked, nothing placed, nothing returned yet (the other is still open)
    b = buys[0]
    fill = d.item("f", SUB, 101, 80, 1, 1, 29500, b.lots, 29500 * b.lots, 10, d.time)
    assert d.feed(fill, d.item("o", SUB, 101, b.cid, 4, d.time)) == []
    assert e.strategy.account.fills == 1
    # the owner releases the rest with a cancel stop: once the last kept order is done, round 1
    rest = [buys[1].cid, f"q{sid}-3-i"]  # the other buy and the initial purchase
    _, effects = d.run({"t": "stop", "sid": sid, "mode": 2})
    assert sorted(x.intent.cid for x in effects if isinstance(x, OrderEffect)) == rest
    assert d.feed(d.item("o", SUB, 102, rest[0], 5, d.time)) == []
    effects = d.feed(d.item("o", SUB, 103, rest[1], 5, d.time))
    assert effects == [ReturnEffect(sid, round=1)]
    d.run({"t": "returned", "sid": sid, "round": 1})
    assert e.funds_returned
    journaled = len(d.journal)
    d.run({"t": "returned", "sid": sid, "round": 1})  # a repeat changes nothing
    assert len(d.journal) == journaled
    assert replayed(d).state_hash() == d.m.state_hash()
    assert QuantizerMachine.restore(CATALOG, None, d.m.snapshot()).state_hash() == d.m.state_hash()


def test_kept_orders_done_before_the_first_return_go_back_in_a_second_round() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    cids = sorted(p.cid for p in places(effects))
    d.run({"t": "stop", "sid": sid, "mode": 1})
    d.run({"t": "stop", "sid": sid, "mode": 2})  # released before round 0 of the return is done
    for i, cid in enumerate(cids):
        assert d.feed(d.item("o", SUB, 300 + i, cid, 5, d.time)) == []
    _, effects = d.run({"t": "returned", "sid": sid, "round": 0})
    assert effects == [ReturnEffect(sid, round=1)] and not d.m.entries[sid].funds_returned


def test_rejected_commands_change_nothing() -> None:
    d = Driver(Limits(max_strategies=1))
    sid, _ = d.start_grid()
    before = d.m.state_hash()
    bad = [
        {
            "t": "create",
            "user": 7,
            "client_id": "g",
            "market": SPEC.symbol,
            "config": {**GRID, "intervals": 5},
        },
        {"t": "create", "user": 7, "client_id": "h", "market": SPEC.symbol, "config": GRID},  # over the limit
        {
            "t": "create",
            "user": 8,
            "client_id": "",
            "market": SPEC.symbol,
            "config": {**GRID, "upper_price": "1"},
        },
        {"t": "stop", "sid": sid, "mode": 9},
        {"t": "nonsense"},
    ]
    for command in bad:
        with pytest.raises((AlreadyExists, FailedPrecondition, InvalidArgument)):
            d.m.apply(d.m.applied_seq + 1, d.time, command)
        assert d.m.state_hash() == before
    # the same create again is a duplicate: not journaled
    out = d.m.apply(
        d.m.applied_seq + 1,
        d.time,
        {"t": "create", "user": 7, "client_id": "g", "market": SPEC.symbol, "config": GRID},
    )
    assert out.result == (sid, True) and not out.journal


def test_capped_market_sell_price_is_journaled_state() -> None:
    d = Driver()
    sid, _ = d.start_grid()
    e = d.m.entries[sid]
    e.slippage_ppm = 20_000  # 2 %
    e.strategy.account.base += 5 * SPEC.base_units_per_lot  # base to sell (as after the initial buy)
    _, effects = d.run({"t": "stop", "sid": sid, "mode": 3, "slippage_ppm": 20_000})
    for i, cid in enumerate(sorted(e.strategy.orders)):
        effects = d.feed(d.item("o", SUB, 300 + i, cid, 5, d.time))
    sells = [x for x in effects if isinstance(x, OrderEffect) and isinstance(x.intent, Place)]
    assert len(sells) == 1 and sells[0].intent.is_market
    assert sells[0].limit_price == 30000 * 98 // 100 == e.limits[sells[0].intent.cid]


def test_refused_placement_and_refused_funding() -> None:
    d = Driver()
    sid, effects = d.start_grid()
    buy = places(effects)[0]
    d.run({"t": "rejected", "sid": sid, "cid": buy.cid, "why": "INSUFFICIENT_BALANCE: ..."})
    s = d.m.entries[sid].strategy
    assert buy.cid not in s.orders and s.rejected_orders == 1
    # a second strategy whose transfer is refused fails with nothing placed, and nothing to return
    (sid2, _), _ = d.run(
        {"t": "create", "user": 8, "client_id": "x", "market": SPEC.symbol, "config": GRID, "price": 30000}
    )
    _, effects = d.run({"t": "fund_failed", "sid": sid2, "why": "funding the sub-account failed"})
    e = d.m.entries[sid2]
    assert effects == [] and d.m.state_name(e) == "failed" and e.returned and not e.strategy.orders
    assert replayed(d).state_hash() == d.m.state_hash()


@pytest.mark.parametrize("seed", range(5))
def test_band_index_gives_what_every_tick_gives(seed: int) -> None:
    """Ticks the band index does not deliver change nothing but the last price: the machine's grids
    end exactly as grids fed every tick."""
    import random

    from services.quantizer.core import Tick
    from services.quantizer.params import strategy_from_config

    rng = random.Random(seed)
    d = Driver(Limits(max_strategies=100))
    configs = [
        {**GRID, "stop_loss_price": "28500", "take_profit_price": "31500"},
        {**GRID, "trigger_price": "29800"},
        {**GRID, "trailing_up": True},
    ]
    d.feed(d.item("k", SPEC.symbol, 30000, 1, d.time))
    refs = []
    for i, config in enumerate(configs):
        (sid, _), _ = d.run(
            {
                "t": "create",
                "user": 7,
                "client_id": f"c{i}",
                "market": SPEC.symbol,
                "config": config,
                "price": 30000,
            }
        )
        d.run({"t": "funded", "sid": sid, "trading_user": SUB + i})
        ref = strategy_from_config(SPEC, sid, config)
        ref.apply(Tick(30000, d.time))
        refs.append((sid, ref))
    price = 30000
    for _ in range(400):
        price = max(28000, min(32000, price + rng.choice((-150, -40, -1, 0, 1, 40, 150))))
        t = d.time + 1000
        d.feed(d.item("k", SPEC.symbol, price, 1, t))
        for _, ref in refs:
            ref.apply(Tick(price, t))
    assert replayed(d).state_hash() == d.m.state_hash()
    for sid, ref in refs:
        e = d.m.entries[sid]
        d.m._catch_up(e)  # (what its next event would do first)
        mine, theirs = e.strategy.snapshot(), ref.snapshot()
        assert mine["last_time"] >= theirs["last_time"] - 1000
        mine.pop("last_time"), theirs.pop("last_time")
        assert mine == theirs
