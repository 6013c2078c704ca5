"""Quantizer benchmark: many hosted grids in one quantizer process under a fill flow.

    python bench/quantizer_bench.py [--strategies N] [--rate FILLS_PER_S] [--phases P] [--out FILE]

Starts a real exchange (testkit Cluster: matching, accounts and the quantizer as processes, file
journals with fsync, sub-accounts) and creates N identical grids (BTC_USDT 29000..31000, 4 intervals,
1000 USDT each, owners of 100 strategies each) started at 30000. Then P phases of N taker IOC orders
of one user, paced at --rate orders per second: even phases sell at 29500 (each fills one strategy's
buy, which places its counter sell at 30000), odd phases buy at 30000 (each fills one of those sells,
which places a buy at 29500 again). Every taker order fills exactly one strategy order.

Measured from the accounts event stream (one clock: the accounts host's batch times): fill -> reverse
order placed = the time of a strategy's fill event to the time of the next new order of the same
sub-account (its first state, OPEN, once matching accepted it), p50 / p99 / max; the fills per second
achieved; and the quantizer process's CPU time (user + system, from /proc) per fill during the flow.
Per hop (the quantizer's histograms, services.quantizer.timing, read from its metrics endpoint before
and after the flow; p50 / p99 are bucket upper bounds): accounts event -> feed (event_age), feed ->
journal durable and applied (journal), effect -> worker (queued), worker -> SubmitOrders batch sent
(stream_wait), batch sent -> accounts answered (answered).
Prints one JSON object. The target (issue 10): p99 <= 50 ms at 500 fills/s with 1,000 strategies.
The machine it runs on (cores shared by every process of the exchange and the load driver) is part of
the result: see "cpus".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import quantizer_service_pb2 as qpb

from services.clients.follow import follow_events
from testkit.cluster import Cluster

SUB_BASE = 1 << 62
MAKER, TAKER = 2, 3
PER_OWNER = 100
GRID = qpb.GridConfig(
    lower_price="29000",
    upper_price="31000",
    intervals=4,
    spacing=qpb.GRID_SPACING_ARITHMETIC,
    investment="1000",
)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


HOPS = {
    "event_age": "quantizer_event_age_seconds",
    "journal": "quantizer_journal_seconds",
    "queued": "quantizer_effect_queued_seconds",
    "stream_wait": "quantizer_order_stream_wait_seconds",
    "answered": "quantizer_order_answered_seconds",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts per histogram: name -> {upper bound: count}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if "_bucket{" not in line:
            continue
        name, rest = line.split("_bucket{", 1)
        le = rest.split('le="', 1)[1].split('"', 1)[0]
        out.setdefault(name, {})[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(buckets: list[float], counts: list[float], p: float) -> str:
    total = counts[-1] if counts else 0.0
    for le, c in zip(buckets, counts, strict=True):
        if total and c >= p * total:
            return f"<= {le * 1000:g} ms" if le != float("inf") else "> 2000 ms"
    return "-"


def hop_table(before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for hop, name in HOPS.items():
        b, a = before.get(name, {}), after.get(name, {})
        buckets = sorted(a)
        counts = [a[le] - b.get(le, 0.0) for le in buckets]
        table[hop] = {
            "count": int(counts[-1]) if counts else 0,
            "p50": quantile(buckets, counts, 0.5),
            "p99": quantile(buckets, counts, 0.99),
        }
    return table


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class Watch:
    """Strategy fills and the next new order of the same sub-account, from the accounts events."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}  # sub-account -> time of its fill
        self.known: set[int] = set()  # order ids seen
        self.latencies_ms: list[float] = []
        self.fills = 0
        self.placed = 0

    def apply(self, events: Any) -> None:
        for e in events:
            kind = e.WhichOneof("event")
            if e.user_id < SUB_BASE:
                continue
            if kind == "user_fill":
                self.fills += 1
                self.pending.setdefault(e.user_id, e.time_us)
            elif kind == "order_updated":
                o = e.order_updated
                oid = o.order_id
                # a new order's first state is OPEN with nothing filled (later states, and the states
                # of orders placed before the flow, are not new orders)
                if oid in self.known or o.status != 2 or o.filled_lots:
                    continue
                self.known.add(oid)
                since = self.pending.pop(e.user_id, None)
                if since is not None:
                    self.placed += 1
                    self.latencies_ms.append((e.time_us - since) / 1000)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="quantizer-bench-"))
    metrics_port = free_port()
    cluster = Cluster(
        tmp / "exchange",
        with_quantizer=True,
        quantizer_options={
            "max_strategies_per_user": 100_000,
            "order_stream": not args.unary,
            "metrics_listen": f"127.0.0.1:{metrics_port}",
        },
    )
    n = args.strategies
    cluster.start()
    try:
        accounts = cluster.client("accounts-0")
        quantizer = cluster.quantizer_client(timeout=60)
        owners = [1000 + i for i in range((n + PER_OWNER - 1) // PER_OWNER)]
        for o in owners:
            await accounts.deposit(
                apb.DepositRequest(
                    user_id=o, asset="USDT", amount=str(1000 * PER_OWNER), business="b", business_id=f"o{o}"
                )
            )
        await accounts.deposit(
            apb.DepositRequest(user_id=MAKER, asset="BTC", amount=str(n), business="b", business_id="m")
        )
        await accounts.deposit(
            apb.DepositRequest(
                user_id=TAKER, asset="USDT", amount="100000000", business="b", business_id="t1"
            )
        )
        await accounts.deposit(
            apb.DepositRequest(user_id=TAKER, asset="BTC", amount=str(n), business="b", business_id="t2")
        )

        def order(user: int, side: int, price: str, amount: str, tif: int = 1) -> apb.PlaceOrderRequest:
            return apb.PlaceOrderRequest(
                user_id=user,
                market="BTC_USDT",
                side=side,
                type=1,
                time_in_force=tif,
                price=price,
                amount=amount,  # type: ignore[arg-type]
            )

        await accounts.place_order(order(MAKER, 2, "30000", str(round(0.02 * n + 1, 5))))
        await accounts.place_order(order(TAKER, 1, "30000", "0.001"))
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        gate = asyncio.Semaphore(16)
        sids: list[int] = []

        async def create(i: int) -> None:
            async with gate:
                owner = owners[i // PER_OWNER]
                r = await quantizer.create_strategy(
                    qpb.CreateStrategyRequest(
                        user_id=owner, market="BTC_USDT", grid=GRID, client_strategy_id=f"b{i}"
                    )
                )
                sids.append(r.strategy.strategy_id)

        await asyncio.gather(*(create(i) for i in range(n)))
        create_s = time.perf_counter() - started

        async def ready() -> int:
            count = 0
            for o in owners:
                token = ""
                while True:
                    page = await quantizer.list_strategies(
                        qpb.ListStrategiesRequest(user_id=o, page_size=1000, page_token=token)
                    )
                    count += sum(
                        1 for s in page.strategies if s.report.open_orders == 4 and s.report.fills == 1
                    )
                    token = page.next_page_token
                    if not token:
                        break
            return count

        deadline = time.monotonic() + 300
        while await ready() < n:
            if time.monotonic() > deadline:
                raise TimeoutError("the strategies did not all start")
            await asyncio.sleep(0.5)
        await accounts.cancel_all_orders(apb.CancelAllOrdersRequest(user_id=MAKER, market="BTC_USDT"))
        status = await accounts.get_accounts_status()
        watch = Watch()

        async def follow() -> None:
            async for batch in follow_events(
                accounts.account_events(), from_sequence=status.event_sequence + 1
            ):
                watch.apply(batch.events)

        follower = asyncio.create_task(follow())
        qpid = cluster.procs["quantizer-0"].pid
        cpu0 = cpu_seconds(qpid)
        hops0 = scrape(metrics_port)
        flow_start = time.perf_counter()
        sent = 0
        for phase in range(args.phases):
            side, price = (2, "29500") if phase % 2 == 0 else (1, "30000")
            amount = ""
            for sid in sids[:50]:
                sub = (
                    await quantizer.get_strategy(qpb.GetStrategyRequest(strategy_id=sid))
                ).strategy.trading_user_id
                mine = await accounts.list_open_orders(
                    apb.ListOpenOrdersRequest(user_id=sub, market="BTC_USDT")
                )
                amount = next((o.remaining_amount for o in mine.orders if o.price == price), "")
                if amount:
                    break
            if not amount:
                raise RuntimeError(f"phase {phase}: no strategy order at {price}")
            target = watch.fills + n
            t0 = time.perf_counter()
            tasks = []
            for k in range(n):
                delay = t0 + k / args.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(
                    asyncio.create_task(accounts.place_order(order(TAKER, side, price, amount, tif=2)))
                )
                sent += 1
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + 120
            while watch.fills < target or watch.pending:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            print(
                f"phase {phase}: {watch.fills} fills, {watch.placed} reverse orders, "
                f"{len(watch.pending)} pending, {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        flow_s = time.perf_counter() - flow_start
        cpu = cpu_seconds(qpid) - cpu0
        hops = hop_table(hops0, scrape(metrics_port))
        follower.cancel()
        await quantizer.close()
        await accounts.close()
        lat = watch.latencies_ms
        return {
            "benchmark": "quantizer",
            "strategies": n,
            "order_entry": "unary" if args.unary else "SubmitOrders stream",
            "create_seconds": round(create_s, 2),
            "target_rate_fills_per_s": args.rate,
            "taker_orders": sent,
            "fills": watch.fills,
            "reverse_orders": watch.placed,
            "achieved_fills_per_s": round(watch.fills / flow_s, 1),
            "fill_to_reverse_ms": {
                "p50": round(percentile(lat, 50), 2),
                "p99": round(percentile(lat, 99), 2),
                "max": round(max(lat, default=0.0), 2),
            },
            "quantizer_cpu_ms_per_fill": round(1000 * cpu / max(1, watch.fills), 3),
            "hops": hops,
            "cpus": os.cpu_count(),
            "target": "p99 <= 50 ms at 500 fills/s",
        }
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500.0, help="taker orders (= fills) per second")
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--unary", action="store_true", help="the executor places with unary PlaceOrder calls")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
