"""Matching engine benchmark (in process, no I/O): commands/s and per-command latency.

    python bench/engine_bench.py [--commands N] [--pairs K] [--out FILE]

Three measurements over the same generated flow (see bench/flow.py), each on freshly filled books:
1. single pair, OrderBook methods called directly (the core's raw speed);
2. K pairs with Pareto-weighted activity through MatchingEngine.apply (per-source dedupe, dispatch);
3. latency: every command timed alone (perf_counter_ns), p50/p99/p99.9 per command kind, and the share
   of the total time each kind takes (where the time goes).
Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flow import generate
from bench.output import emit
from services.common.markets import MarketCatalog, MarketSpec
from services.matching.book import OrderBook
from services.matching.engine import MatchingEngine
from services.matching.model import (
    CancelOrder,
    Command,
    Event,
    MoveOrder,
    PlaceOrder,
)

ROOT = Path(__file__).resolve().parent.parent


def load_specs(pairs: int) -> list[MarketSpec]:
    with open(ROOT / "deploy" / "exchange.toml", "rb") as f:
        catalog = MarketCatalog.from_dict(tomllib.load(f))
    specs = list(catalog.markets.values())
    while len(specs) < pairs:  # synthesize more pairs shaped like the first one
        base = specs[len(specs) % len(catalog.markets)]
        specs.append(
            MarketSpec.create(
                f"X{len(specs)}_{base.quote.symbol}",
                base.base,
                base.quote,
                price_tick=base.price_tick,
                lot_size=base.lot_size,
                maker_fee_rate="0.001",
                taker_fee_rate="0.002",
            )
        )
    return specs[:pairs]


def run_book(
    spec: MarketSpec, fill: list[tuple[str, Command]], steady: list[tuple[str, Command]]
) -> dict[str, float]:
    book = OrderBook(spec)
    out: list[Event] = []
    for _, cmd in fill:
        book.place(cmd, 0, out)  # type: ignore[arg-type]
    out.clear()
    cmds = [c for _, c in steady]
    place, cancel, move, reduce = book.place, book.cancel, book.move, book.reduce
    events = 0
    gc.disable()
    t0 = time.perf_counter()
    for cmd in cmds:
        t = type(cmd)
        if t is PlaceOrder:
            place(cmd, 0, out)  # type: ignore[arg-type]
        elif t is CancelOrder:
            cancel(cmd.order_id, cmd.user_id, 0, out)  # type: ignore[union-attr]
        elif t is MoveOrder:
            move(cmd.order_id, cmd.user_id, cmd.new_price, 0, out)  # type: ignore[union-attr]
        else:
            reduce(cmd.order_id, cmd.user_id, cmd.new_amount, 0, out)  # type: ignore[union-attr]
        if len(out) > 4096:
            events += len(out)
            out.clear()
    elapsed = time.perf_counter() - t0
    gc.enable()
    events += len(out)
    return {
        "commands": len(cmds),
        "seconds": round(elapsed, 4),
        "commands_per_s": round(len(cmds) / elapsed),
        "events": events,
        "book_orders_after": len(book),
    }


def run_engine(
    specs: list[MarketSpec],
    fill: list[tuple[str, Command]],
    steady: list[tuple[str, Command]],
    *,
    timed: bool,
) -> dict[str, object]:
    engine = MatchingEngine("bench", specs)
    seq = 0
    for _, cmd in fill:
        seq += 1
        engine.apply("gen", seq, 0, cmd)
    apply = engine.apply
    gc.disable()
    if not timed:
        t0 = time.perf_counter()
        for _, cmd in steady:
            seq += 1
            apply("gen", seq, 0, cmd)
        elapsed = time.perf_counter() - t0
        gc.enable()
        return {
            "commands": len(steady),
            "seconds": round(elapsed, 4),
            "commands_per_s": round(len(steady) / elapsed),
            "events": engine.event_seq,
        }
    clock = time.perf_counter_ns
    per_kind: dict[str, list[int]] = {}
    for _, cmd in steady:
        seq += 1
        t0 = clock()
        apply("gen", seq, 0, cmd)
        dt = clock() - t0
        kind = type(cmd).__name__
        if isinstance(cmd, PlaceOrder):
            kind = "Market" if cmd.type == 2 else ("LimitIOC" if cmd.tif == 2 else "Limit")
        per_kind.setdefault(kind, []).append(dt)
    gc.enable()
    total = sum(sum(v) for v in per_kind.values())
    all_lat = sorted(x for v in per_kind.values() for x in v)

    def pct(xs: list[int], q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] / 1000, 2)

    kinds = {}
    for kind, xs in sorted(per_kind.items()):
        xs.sort()
        kinds[kind] = {
            "count": len(xs),
            "mean_us": round(sum(xs) / len(xs) / 1000, 2),
            "p50_us": pct(xs, 0.5),
            "p99_us": pct(xs, 0.99),
            "p999_us": pct(xs, 0.999),
            "share_of_time": round(sum(xs) / total, 3),
        }
    return {
        "p50_us": pct(all_lat, 0.5),
        "p99_us": pct(all_lat, 0.99),
        "p999_us": pct(all_lat, 0.999),
        "max_us": round(all_lat[-1] / 1000, 1),
        "by_kind": kinds,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steady-size", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the throughput runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    specs = load_specs(args.pairs)
    t = time.perf_counter()
    single = generate(
        specs[:1], commands=args.commands, steady_size=args.steady_size, users=args.users, seed=7
    )
    multi = generate(specs, commands=args.commands, steady_size=args.steady_size, users=args.users, seed=11)
    gen_s = time.perf_counter() - t

    book_runs = [run_book(specs[0], single.fill, single.steady) for _ in range(args.repeat)]
    engine_runs = [run_engine(specs, multi.fill, multi.steady, timed=False) for _ in range(args.repeat)]
    latency = run_engine(specs, multi.fill, multi.steady, timed=True)
    best_book = max(book_runs, key=lambda r: r["commands_per_s"])
    best_engine = max(engine_runs, key=lambda r: r["commands_per_s"])  # type: ignore[arg-type,return-value]
    result = {
        "benchmark": "matching-engine",
        "python": platform.python_version(),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "flow": {
            "commands": args.commands,
            "steady_book_orders_per_pair": args.steady_size,
            "users": args.users,
            "pairs": [s.symbol for s in specs],
            "single_pair_mix": single.counts,
            "multi_pair_mix": multi.counts,
            "generation_seconds": round(gen_s, 1),
        },
        "single_pair_book": {**best_book, "runs_commands_per_s": [r["commands_per_s"] for r in book_runs]},
        "multi_pair_engine": {
            **best_engine,
            "runs_commands_per_s": [r["commands_per_s"] for r in engine_runs],
        },
        "latency_multi_pair_engine": latency,
        "target_commands_per_s": 500_000,
        "target_met_single_pair": best_book["commands_per_s"] >= 500_000,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
