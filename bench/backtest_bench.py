"""Backtest benchmark: historical trades per second through the quantizer's backtest.

    python bench/backtest_bench.py [--trades N] [--levels L] [--seed S] [--csv] [--out FILE]

Generates deterministic trade streams (seeded, mean-reverting random walks of BTC_USDT prices from
deploy/exchange.toml starting at 30000, the taker side following the step; see SCENARIOS: "calm" with
small steps and trades, "busy" with 10x larger steps and trades), and for each measures:
1. a grid of L intervals (default 20) over +-3 % of the start, through services.quantizer.backtest
   (the real matching book; compiled when the mypyc build is usable, see services/__init__.py), with the
   strategy's tick band (ticks that change nothing are skipped) and with every tick delivered;
2. a DCA strategy on the same stream;
3. with --csv (calm stream): the CSV written and read back through read_trades_csv + the grid.
Prints one JSON object (trades/s, fills, matched pairs, whether the compiled core was used); --out also
writes it to a file. The target is >= 100k trades/s for the grid.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import services
from bench.output import emit
from services.common.markets import MarketCatalog, MarketSpec
from services.matching.model import BUY, SELL
from services.quantizer.backtest import Trade, read_trades_csv, run_backtest, write_trades_csv
from services.quantizer.dca import DcaParams, DcaStrategy
from services.quantizer.grid import GridParams, GridStrategy

ROOT = Path(__file__).resolve().parent.parent


def load_spec(symbol: str = "BTC_USDT") -> MarketSpec:
    with open(ROOT / "deploy" / "exchange.toml", "rb") as f:
        return MarketCatalog.from_dict(tomllib.load(f)).markets[symbol]


SCENARIOS = {
    # name: (step unit in ppm of the start price, largest trade in lots)
    "calm": (10, 200),  # steps of up to 0.003 %: a level is crossed every few thousand trades
    "busy": (100, 2_000),  # steps of up to 0.03 %, 10x larger trades: many more fills per trade
}


def generate(n: int, seed: int, start: int, unit_ppm: int = 10, max_lots: int = 200) -> list[Trade]:
    """A mean-reverting random walk around `start` ticks: steps of -3..+3 units of `unit_ppm` of the
    start, pulled back once the price leaves +-2.5 % (so it stays inside the grid's +-3 %)."""
    rnd = random.Random(seed)
    price = start
    t = 1_700_000_000_000_000
    out: list[Trade] = []
    unit = max(1, start * unit_ppm // 1_000_000)
    band = start * 25 // 1000
    for _ in range(n):
        step = rnd.randint(-3, 3) * unit
        if price > start + band:
            step -= unit
        elif price < start - band:
            step += unit
        price += step
        t += rnd.randint(1, 400_000)
        side = BUY if step > 0 or (step == 0 and rnd.random() < 0.5) else SELL
        out.append((t, price, rnd.randint(1, max_lots), side))
    return out


def grid_range(trades: list[Trade]) -> tuple[int, int]:
    """+-3 % around the first price."""
    start = trades[0][1]
    return start * 97 // 100, start * 103 // 100


def bench_grid(
    spec: MarketSpec, trades: list[Trade], levels: int, every_tick: bool = False
) -> dict[str, object]:
    low, high = grid_range(trades)
    params = GridParams(
        lower=low,
        upper=high,
        intervals=levels,
        invest_quote=spec.parse_quote("100000"),
    )
    grid = GridStrategy(spec, 1, params)
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    result = run_backtest(spec, grid, trades, every_tick=every_tick)
    elapsed = time.perf_counter() - t0
    gc.enable()
    r = result.report
    return {
        "intervals": levels,
        "lower": spec.format_price(low),
        "upper": spec.format_price(high),
        "trades": result.trades,
        "seconds": round(elapsed, 3),
        "trades_per_s": int(result.trades / elapsed),
        "counter_orders": result.counter_orders,
        "fills": r.fills,
        "matched_pairs": r.matched_pairs,
        "realized_profit": spec.format_quote(r.realized_profit),
        "total_profit": spec.format_quote(r.total_profit),
    }


def bench_dca(spec: MarketSpec, trades: list[Trade]) -> dict[str, object]:
    q = spec.parse_quote
    params = DcaParams(
        base_quote=q("100"),
        safety_quote=q("100"),
        max_safety=5,
        max_active=2,
        deviation_ppm=3_000,
        take_profit_ppm=4_000,
        step_scale_ppm=1_200_000,
        volume_scale_ppm=1_300_000,
        cooldown_us=60_000_000,
        invest_quote=q("100000"),
    )
    dca = DcaStrategy(spec, 2, params)
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    result = run_backtest(spec, dca, trades)
    elapsed = time.perf_counter() - t0
    gc.enable()
    r = result.report
    return {
        "trades": result.trades,
        "seconds": round(elapsed, 3),
        "trades_per_s": int(result.trades / elapsed),
        "fills": r.fills,
        "deals_closed": r.extra["deals_closed"],
        "realized_profit": spec.format_quote(r.realized_profit),
    }


def bench_csv(spec: MarketSpec, trades: list[Trade], levels: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trades.csv"
        write_trades_csv(path, spec, trades)
        low, high = grid_range(trades)
        grid = GridStrategy(
            spec,
            1,
            GridParams(lower=low, upper=high, intervals=levels, invest_quote=spec.parse_quote("100000")),
        )
        t0 = time.perf_counter()
        result = run_backtest(spec, grid, read_trades_csv(path, spec))
        elapsed = time.perf_counter() - t0
    return {
        "trades": result.trades,
        "seconds": round(elapsed, 3),
        "trades_per_s": int(result.trades / elapsed),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--levels", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--csv", action="store_true", help="also measure CSV writing + reading (calm stream)")
    ap.add_argument("--out")
    args = ap.parse_args()
    spec = load_spec()
    start = spec.parse_price("30000")
    report: dict[str, object] = {
        "benchmark": "backtest",
        "python": platform.python_version(),
        "compiled_core": services.USING_COMPILED,
        "market": spec.symbol,
        "seed": args.seed,
    }
    for name, (unit_ppm, max_lots) in SCENARIOS.items():
        trades = generate(args.trades, args.seed, start, unit_ppm, max_lots)
        scenario: dict[str, object] = {
            "step_unit_ppm": unit_ppm,
            "max_trade_lots": max_lots,
            "grid": bench_grid(spec, trades, args.levels),
            "grid_every_tick": bench_grid(spec, trades, args.levels, every_tick=True),
            "dca": bench_dca(spec, trades),
        }
        if args.csv and name == "calm":
            scenario["csv_grid"] = bench_csv(spec, trades, args.levels)
        report[name] = scenario
        del trades
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
