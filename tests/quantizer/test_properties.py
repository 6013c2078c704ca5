"""Property tests (hypothesis) of the quantizer.

- geometric levels equal the real-valued formula rounded to the nearest tick (computed with 60-digit
  decimals), arithmetic levels are strictly increasing from lower to upper;
- on random price paths through the real book, after every trade: a grid never has more orders than
  levels, never two at one level, never one outside its range; a DCA deal never has more than
  max_active safety orders or more than one take profit; base and quote, held and free, are never
  negative; the book holds exactly the strategy's open orders with the remaining amounts it expects
  (what live reconciliation will compare); realized + floating = total profit;
- snapshot -> JSON -> restore at any point and continuing gives the same intents and the same state as
  running straight through.
"""

from __future__ import annotations

import itertools
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.matching.model import BUY, SELL
from services.quantizer.backtest import STRATEGY_USER, Backtest
from services.quantizer.core import Strategy
from services.quantizer.dca import SAFETY, TAKE, DcaParams, DcaStrategy
from services.quantizer.grid import ARITHMETIC, GEOMETRIC, GridParams, GridStrategy, grid_levels, level_price
from services.quantizer.params import restore_strategy
from services.quantizer.report import build_report
from tests.quantizer.util import SECOND, SPEC, state

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(
    lower=st.integers(1, 10**7),
    ratio_permille=st.integers(1001, 5000),
    n=st.integers(1, 40),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_geometric_levels_are_the_rounded_real_levels(
    lower: int, ratio_permille: int, n: int, data: Any
) -> None:
    upper = lower * ratio_permille // 1000 + 1
    i = data.draw(st.integers(0, n + 3))
    with localcontext() as ctx:
        ctx.prec = 60
        exact = (Decimal(lower).ln() * (n - i) / n + Decimal(upper).ln() * i / n).exp()
        frac = exact - int(exact)
        if abs(frac - Decimal("0.5")) < Decimal("1e-40"):
            return  # a tie closer than the 60-digit computation can tell
        expected = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert level_price(lower, upper, n, GEOMETRIC, i) == expected


@given(lower=st.integers(1, 10**9), width=st.integers(1, 10**6), n=st.integers(1, 200))
def test_arithmetic_levels_span_the_range(lower: int, width: int, n: int) -> None:
    levels = grid_levels(lower, lower + width, n, ARITHMETIC)
    assert levels[0] == lower and levels[-1] == lower + width and len(levels) == n + 1
    assert all(b >= a for a, b in itertools.pairwise(levels))
    if width >= n:
        assert all(b > a for a, b in itertools.pairwise(levels))


paths = st.lists(
    st.tuples(st.integers(-4, 4), st.integers(1, 600), st.booleans()),
    min_size=10,
    max_size=250,
)


def trades_of(path: list[tuple[int, int, bool]], start: int = 100) -> list[tuple[int, int, int, int]]:
    price = start
    out = []
    for k, (step, lots, flip) in enumerate(path):
        price = max(50, min(180, price + step))
        side = BUY if (step > 0) != flip else SELL
        out.append((k * 300 * SECOND, price, lots, side))
    return out


def check_common(bt: Backtest, s: Strategy) -> None:
    a = s.account
    assert a.base >= 0 and a.quote >= 0
    assert s.free_base() >= 0 and s.free_quote() >= 0
    # the book holds exactly the strategy's open orders, with the remaining amounts it expects
    in_book = {
        bt.cid_of[o.order_id]: o.remaining for o in bt.book.orders.values() if o.user_id == STRATEGY_USER
    }
    expected = {o.cid: o.remaining for o in s.orders.values() if o.price}
    assert in_book == expected
    assert not any(o.price == 0 for o in s.orders.values())  # market orders are done at once here
    r = build_report(s, bt.price, bt.time)
    assert r.realized_profit + r.floating_profit == r.total_profit


@given(
    path=paths,
    intervals=st.integers(2, 12),
    geometric=st.booleans(),
    trailing=st.booleans(),
    stop=st.sampled_from([0, 60, 75]),
    invest=st.integers(20_000, 500_000),
)
@SETTINGS
def test_grid_invariants_on_random_paths(
    path: list[tuple[int, int, bool]], intervals: int, geometric: bool, trailing: bool, stop: int, invest: int
) -> None:
    params = GridParams(
        lower=80,
        upper=130,
        intervals=intervals,
        spacing=GEOMETRIC if geometric else ARITHMETIC,
        invest_quote=invest,
        stop_loss=stop,
        sell_on_stop=True,
        trailing_up=trailing,
    )
    g = GridStrategy(SPEC, 1, params)
    bt = Backtest(SPEC, g)
    for trade in trades_of(path):
        bt.feed([trade])
        grid_orders = [o for o in g.orders.values() if o.tag in ("b", "s")]
        assert len(grid_orders) <= intervals
        levels = [o.level for o in grid_orders]
        assert len(levels) == len(set(levels))
        assert all(g.bottom <= lv <= g.top for lv in levels)
        assert all(o.price == g.price_at(o.level) for o in grid_orders)
        assert all((o.side == BUY) == (o.tag == "b") for o in grid_orders)
        check_common(bt, g)


@given(
    path=paths,
    max_safety=st.integers(0, 5),
    active=st.integers(1, 5),
    trailing=st.sampled_from([0, 5_000]),
    stop=st.sampled_from([0, 300_000]),
)
@SETTINGS
def test_dca_invariants_on_random_paths(
    path: list[tuple[int, int, bool]], max_safety: int, active: int, trailing: int, stop: int
) -> None:
    params = DcaParams(
        base_quote=3_000,
        safety_quote=3_000,
        max_safety=max_safety,
        max_active=min(active, max_safety) if max_safety else 0,
        deviation_ppm=20_000,
        take_profit_ppm=10_000,
        step_scale_ppm=1_200_000,
        volume_scale_ppm=1_300_000,
        trailing_ppm=trailing,
        stop_loss_ppm=stop,
        cooldown_us=600 * SECOND,
        invest_quote=200_000,
    )
    d = DcaStrategy(SPEC, 1, params)
    bt = Backtest(SPEC, d)
    for trade in trades_of(path):
        bt.feed([trade])
        assert sum(1 for o in d.orders.values() if o.tag == SAFETY) <= params.max_active
        assert sum(1 for o in d.orders.values() if o.tag == TAKE) <= 1
        if trailing:
            assert not any(o.tag == TAKE for o in d.orders.values())
        check_common(bt, d)


class Recorder:
    """Wraps a strategy's apply to record what it received and what it answered."""

    def __init__(self, strategy: Strategy) -> None:
        self.log: list[tuple[Any, list[Any]]] = []
        inner = strategy.apply

        def apply(event: Any) -> list[Any]:
            out = inner(event)
            self.log.append((event, list(out)))
            return out

        strategy.apply = apply  # type: ignore[method-assign]


@given(path=paths, cut=st.floats(0, 1), kind=st.sampled_from(["grid", "dca"]))
@SETTINGS
def test_restore_at_any_point_continues_like_the_straight_run(
    path: list[tuple[int, int, bool]], cut: float, kind: str
) -> None:
    def make() -> Strategy:
        if kind == "grid":
            return GridStrategy(
                SPEC, 1, GridParams(lower=80, upper=130, intervals=6, invest_quote=100_000, trailing_up=True)
            )
        return DcaStrategy(
            SPEC,
            1,
            DcaParams(
                base_quote=3000,
                safety_quote=3000,
                max_safety=3,
                max_active=2,
                deviation_ppm=20_000,
                take_profit_ppm=10_000,
                invest_quote=100_000,
            ),
        )

    straight = make()
    rec = Recorder(straight)
    Backtest(SPEC, straight, every_tick=True).feed(trades_of(path))
    k = int(len(rec.log) * cut)
    replay = make()
    for event, _ in rec.log[:k]:
        replay.apply(event)
    replay = restore_strategy(SPEC, state(replay))
    for event, intents in rec.log[k:]:
        assert replay.apply(event) == intents
    assert state(replay) == state(straight)
