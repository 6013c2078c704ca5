"""Backtests through the real matching book, checked against hand computations, plus the CSV format,
the fill models, skipped ticks, timers, the command line and the optional extras."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.matching.model import BUY, SELL
from services.quantizer.backtest import (
    Backtest,
    main,
    read_trades_csv,
    run_backtest,
    write_equity_png,
    write_trades_csv,
)
from services.quantizer.core import Place, Strategy
from services.quantizer.dca import DcaParams, DcaStrategy, RecurringBuy, RecurringParams
from services.quantizer.grid import GridParams, GridStrategy
from services.quantizer.report import report_fields
from tests.quantizer.util import DAY, LOT, SECOND, SPEC, state

GRID = GridParams(lower=90, upper=110, intervals=4, invest_quote=100_000)

CSV = """time_us,price,amount,taker_side
0,100,10,buy
1000000,104,10,buy
2000000,105,10,buy
# a comment, then a blank line

3000000,101,10,sell
4000000,100,10,sell
5000000,95,10,sell
6000000,99,10,buy
7000000,100,10,buy
8000000,106,10,buy
"""


def write(tmp_path: Path, text: str = CSV) -> Path:
    path = tmp_path / "trades.csv"
    path.write_text(text)
    return path


def test_csv_is_read_into_ticks_and_lots(tmp_path: Path) -> None:
    trades = list(read_trades_csv(write(tmp_path), SPEC))
    assert trades[:3] == [(0, 100, 1000, BUY), (1_000_000, 104, 1000, BUY), (2_000_000, 105, 1000, BUY)]
    assert len(trades) == 9 and trades[3] == (3_000_000, 101, 1000, SELL)
    again = tmp_path / "again.csv"
    assert write_trades_csv(again, SPEC, trades) == 9
    assert list(read_trades_csv(again, SPEC)) == trades


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,price,amount,side\n", "the first line must be"),
        ("time_us,price,amount,taker_side\n0,100.5,1,buy\n", ":2: price"),
        ("time_us,price,amount,taker_side\n0,100,0.001,buy\n", ":2: amount"),
        ("time_us,price,amount,taker_side\n0,100,1,bid\n", ":2: taker_side must be buy or sell"),
        ("time_us,price,amount,taker_side\n-5,100,1,buy\n", ":2: time_us must be"),
        ("time_us,price,amount,taker_side\n\u00b2,100,1,buy\n", ":2: time_us must be"),
        ("time_us,price,amount,taker_side\n0,100,1\n", ":2: expected 4 fields"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        list(read_trades_csv(write(tmp_path, text), SPEC))
    assert message in err.value.message


def test_time_must_not_go_backwards() -> None:
    with pytest.raises(InvalidArgument, match="before the previous trade"):
        run_backtest(SPEC, GridStrategy(SPEC, 1, GRID), [(5, 100, 1, BUY), (4, 100, 1, BUY)])


def test_grid_backtest_on_a_small_csv_matches_the_hand_computation(tmp_path: Path) -> None:
    g = GridStrategy(SPEC, 7, GRID)
    result = run_backtest(SPEC, g, read_trades_csv(write(tmp_path), SPEC), equity_interval_us=2 * SECOND)
    r = result.report
    # start at 100: buys 258 lots at 95 and 90; 518 lots bought at 100 (taker, fee 10360 units) for the
    # sells at 105 and 110. Then, trade by trade (fills at the resting order's price):
    #   105 buy: the sell at 105 fills (258 lots) -> buy at 100;      pair 1: 27062 - 25826 = 1236
    #   100 sell: the buy at 100 fills -> sell at 105 (258 lots from 2_577_420 + 9640 dust)
    #   95 sell: the buy at 95 fills -> sell at 100 (258 lots, dust 4480 left)
    #   100 buy: the sell at 100 fills -> buy at 95;                  pair 2: 25774 - 24535 = 1239
    #   106 buy: the sell at 105 fills -> buy at 100;                 pair 3: 1236
    # (104 buy, 101 sell, 99 buy reach no order.)
    assert result.trades == 9 and result.counter_orders == 5
    assert r.fills == 6 and r.matched_pairs == 3 and r.realized_profit == 3711
    # quote: 100000 - 51800 + 27062 - 25800 - 24510 + 25774 + 27062 = 77788
    assert r.quote_held == 77_788
    assert r.base_held == 5_169_640 - 2_580_000 + 2 * 2_577_420 - 2 * 2_580_000 == 2_584_480
    assert (r.fees_base, r.fees_quote) == (10_360 + 2 * 2_580, 28 + 26 + 28)
    # value at 106: 77788 + floor(2_584_480 x 106 / 10_000) = 77788 + 27395
    assert r.current_value == 105_183 and r.investment == 100_000
    assert r.total_profit == 5183 and r.floating_profit == 5183 - 3711
    assert sorted((o.price, o.side, o.lots) for o in g.open_orders()) == [
        (90, BUY, 258),
        (95, BUY, 258),
        (100, BUY, 258),
        (110, SELL, 258),
    ]
    assert g.dust == 4480
    # annualized over 8 s: 5183 / 100000 x 31_536_000 s / 8 s = 204313.86
    fields = report_fields(SPEC, r)
    assert fields["annualized_return"] == "204313.860000"
    assert fields["realized_profit"] == "37.11" and fields["fees_paid"] == {"BTC": "0.01552", "USD": "0.82"}
    # the equity curve every 2 s of market time
    assert [t for t, _ in result.equity] == [0, 2 * SECOND, 4 * SECOND, 6 * SECOND, 8 * SECOND]
    assert result.equity[0] == (0, 48_200 + 5_169_640 * 100 // LOT)


def test_fill_model_through_needs_a_trade_beyond_the_price(tmp_path: Path) -> None:
    g = GridStrategy(SPEC, 7, GRID)
    r = run_backtest(SPEC, g, read_trades_csv(write(tmp_path), SPEC), fill_model="through").report
    # only the 106 buy goes through the sell at 105; the 100 and 95 sells only touch the buys
    assert r.matched_pairs == 1 and r.realized_profit == 1236 and r.fills == 2
    assert r.quote_held == 48_200 + 27_062


def test_one_trade_fills_several_levels_at_their_own_prices() -> None:
    g = GridStrategy(SPEC, 7, GRID)
    bt = Backtest(SPEC, g)
    bt.feed([(0, 100, 1, BUY)])
    bt.feed([(1, 89, 600, SELL)])  # sells 600 lots down to 89: 258 at 95, 258 at 90, 84 lots unfilled
    acct = g.account
    assert acct.fills == 3
    assert acct.quote == 100_000 - 51_800 - 258 * 95 - 258 * 90
    assert sorted((o.price, o.side) for o in g.open_orders()) == [
        (95, SELL),
        (100, SELL),
        (105, SELL),
        (110, SELL),
    ]
    assert bt.book.best_bid() is None and len(bt.book.orders) == 4


def test_dca_backtest_gives_the_scripted_deal() -> None:
    # the deal of tests/quantizer/test_dca.py, now through the book: the same prices and the same 639 profit
    p = DcaParams(
        base_quote=10_000,
        safety_quote=20_000,
        max_safety=2,
        max_active=1,
        deviation_ppm=20_000,
        take_profit_ppm=10_000,
        cooldown_us=10 * SECOND,
        max_deals=1,
        invest_quote=100_000,
    )
    d = DcaStrategy(SPEC, 3, p)
    trades = [
        (0, 100, 1, BUY),  # first price: the base order buys 100 lots at 100 (synthetic liquidity)
        (SECOND, 98, 100, SELL),  # 100 lots of safety order 1 at 98
        (2 * SECOND, 97, 104, SELL),  # the other 104
        (3 * SECOND, 101, 500, BUY),  # the take profit: 303 lots at 101
    ]
    r = run_backtest(SPEC, d, trades).report
    assert d.deals == [
        {
            "deal": 1,
            "start_time": 0,
            "close_time": 3 * SECOND,
            "reason": "take_profit",
            "safety_filled": 1,
            "profit": 639,
        }
    ]
    assert r.realized_profit == 639 and r.matched_pairs == 1 and d.status == "stopped"
    assert r.base_held == 5960 and d.orders == {}


def test_recurring_buys_in_a_backtest_use_the_previous_price_and_skip_without_one() -> None:
    t0 = 1_704_067_200_000_000
    p = RecurringParams(amount_quote=10_000, start_time=t0, interval_us=DAY, invest_quote=25_000)
    r = RecurringBuy(SPEC, 5, p)
    # the first trade comes an hour after run 0 is due: no price yet, run 0 gets no fill
    trades = [(t0 + 3600 * SECOND, 100, 1, BUY), (t0 + DAY + 5, 200, 1, BUY), (t0 + 2 * DAY + 5, 50, 1, SELL)]
    result = run_backtest(SPEC, r, trades, end_time_us=t0 + 3 * DAY)
    runs = [(x["run"], x["status"], x["reason"], x["quote"], x["base"]) for x in r.runs]
    assert runs == [
        (0, "skipped", "order canceled without a fill", 0, 0),
        # run 1 (due at t0 + 1 day) buys at the last price before it, 100: 100 lots, taker fee 2000 units
        (1, "bought", "", 10_000, 100 * LOT - 2000),
        # run 2 at the previous price 200: 50 lots
        (2, "bought", "", 10_000, 50 * LOT - 1000),
        # run 3 (end of the period): 5000 cents left
        (3, "skipped", "insufficient funds: 50 USD free", 0, 0),
    ]
    assert result.report.quote_held == 5000


class Emitter(Strategy):
    """A test strategy that emits whatever it is told (bypassing Strategy._place's checks)."""

    KIND = "emitter"

    def __init__(self, place: Place) -> None:
        super().__init__(SPEC, 1)
        self.place = place
        self.seen: list[Any] = []

    def apply(self, event: Any) -> list[Any]:
        self.seen.append(event)
        if len(self.seen) == 1:
            return [self.place]
        return []

    def _params_dict(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    "place",
    [
        Place("e1", BUY, 100, 5),  # 5 USD < 10 USD minimum notional
        Place("e1", BUY, 0, 0, 999),  # market buy below the minimum
        Place("e1", SELL, 100, 0),
    ],
)
def test_orders_the_exchange_would_refuse_are_rejected(place: Place) -> None:
    e = Emitter(place)
    bt = Backtest(SPEC, e)
    bt.feed([(0, 100, 1, BUY)])
    assert [type(x).__name__ for x in e.seen] == ["Tick", "Done"]
    assert e.seen[1].reason == 4 and len(bt.book.orders) == 0  # DONE_REJECTED


def _walk(seed: int, n: int) -> list[tuple[int, int, int, int]]:
    rnd = random.Random(seed)
    price = 100
    out = []
    for i in range(n):
        step = rnd.choice([-2, -1, 0, 1, 2])
        price = max(60, min(150, price + step))
        out.append((i * 600 * SECOND, price, rnd.randint(1, 400), BUY if step >= 0 else SELL))
    return out


def _without_clock(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    data.pop("last_price")
    data.pop("last_time")
    return data


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_skipping_ticks_inside_the_band_changes_nothing(seed: int) -> None:
    trades = _walk(seed, 3000)
    makers = [
        lambda: GridStrategy(SPEC, 1, replace(GRID, trailing_up=True, stop_loss=70)),
        lambda: GridStrategy(
            SPEC, 1, replace(GRID, spacing=2, trigger=98, take_profit=140, sell_on_stop=True)
        ),
        lambda: DcaStrategy(
            SPEC,
            2,
            DcaParams(
                base_quote=5000,
                safety_quote=5000,
                max_safety=3,
                max_active=2,
                deviation_ppm=30_000,
                take_profit_ppm=15_000,
                trailing_ppm=10_000,
                stop_loss_ppm=200_000,
                cooldown_us=3600 * SECOND,
                invest_quote=100_000,
            ),
        ),
        lambda: RecurringBuy(
            SPEC, 3, RecurringParams(amount_quote=2000, start_time=0, interval_us=DAY, invest_quote=50_000)
        ),
    ]
    for make in makers:
        a, b = make(), make()
        ra = run_backtest(SPEC, a, trades).report
        rb = run_backtest(SPEC, b, trades, every_tick=True).report
        assert ra == rb
        assert _without_clock(state(a)) == _without_clock(state(b))
        assert ra.fills > 0


def test_cli_runs_a_backtest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(
        """
[assets]
BTC = { decimals = 6 }
USD = { decimals = 2 }
[[markets]]
symbol = "BTC_USD"
base = "BTC"
quote = "USD"
price_tick = "1"
lot_size = "0.01"
min_notional = "10"
maker_fee_rate = "0.001"
taker_fee_rate = "0.002"
"""
    )
    strategy = tmp_path / "grid.json"
    strategy.write_text(
        json.dumps(
            {
                "kind": "grid",
                "lower_price": "90",
                "upper_price": "110",
                "intervals": 4,
                "investment": "1000",
                "initial_buy_slippage": "0",  # the reference grid's hand-computed 258 lots per level
            }
        )
    )
    args = [
        "--config",
        str(config),
        "--market",
        "BTC_USD",
        "--trades",
        str(write(tmp_path)),
        "--strategy",
        str(strategy),
    ]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["realized_profit"] == "37.11" and out["matched_pairs"] == 3 and out["trades"] == 9
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "realized 37.11 USD over 3 matched pairs" in text
    strategy.write_text(
        json.dumps(
            {"kind": "grid", "lower_price": "110", "upper_price": "90", "intervals": 4, "investment": "1000"}
        )
    )
    assert main(args) == 1
    assert "must be above lower price" in capsys.readouterr().err


def test_equity_png_without_matplotlib_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match="pip install matplotlib"):
        write_equity_png(tmp_path / "e.png", SPEC, [(0, 1), (1, 2)])


def test_equity_png_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    g = GridStrategy(SPEC, 7, GRID)
    result = run_backtest(SPEC, g, _walk(1, 500))
    path = tmp_path / "equity.png"
    write_equity_png(path, SPEC, result.equity)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_without_tqdm_still_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    g = GridStrategy(SPEC, 7, GRID)
    plain = run_backtest(SPEC, GridStrategy(SPEC, 7, GRID), _walk(2, 300)).report
    assert run_backtest(SPEC, g, _walk(2, 300), progress=True).report == plain
    assert "tqdm is not installed" in capsys.readouterr().err
