"""End-to-end benchmark: orders through the real services with durable journals.

    python bench/e2e_bench.py [--seconds 20] [--mode stream|unary|both] [--out FILE]

Starts accounts and one matching shard (plus history and market with --with-history) as separate
processes in a temporary directory, funds many users, then drives a flow over several markets: mostly
passive limit orders around a mid price, with a share of crossing orders so that fills happen. Orders
are pre-built and pre-serialized so the load generator costs little CPU on this 2-core machine.

Reports, per entry mode: accepted orders/s (sustained, and per second), fills/s (trades counted by the
shard), and the latency from PlaceOrder to the fill event seen on the user's event stream (probe orders
that cross the book every 20 ms, measured on the unary path and as part of a streaming batch).

The unary load comes from h2load (Debian's nghttp2-client) when it is installed: 64 connections, paced
with --unary-rate (h2load's --rps per connection), 7 in 8 of them placing passive limit orders and 1 in
8 crossing IOC orders that fill against a resting ask wall, so a 2k orders/s load costs the load
generator little of this 2-core machine (Python gRPC clients top out near a thousand calls a second
per process; `--unary-load python` still uses them). h2load cannot read gRPC trailers: accepted orders
are counted by the exchange (the accounts' last order id).

`--root DIR` runs the same measurement against another checkout (its services, client library and
testkit), so before and after come from one script in the same minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _root() -> Path:
    """--root DIR (read before the imports below, which come from that checkout)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    return Path(pre.parse_known_args()[0].root).resolve()


ROOT = _root()
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), os.environ.get("PYTHONPATH", "")])

import grpc  # noqa: E402
from exchange.v1 import accounts_service_pb2 as apb  # noqa: E402
from exchange.v1 import events_pb2 as ev  # noqa: E402
from exchange.v1 import history_service_pb2 as hpb  # noqa: E402
from exchange.v1 import matching_service_pb2 as mpb  # noqa: E402
from exchange.v1 import types_pb2  # noqa: E402

from services.clients import AccountsClient, HistoryClient, MatchingClient  # noqa: E402
from services.clients.channels import Connection  # noqa: E402
from services.common import rpc  # noqa: E402
from services.common.config import load_config  # noqa: E402
from services.common.security import process_security  # noqa: E402
from testkit.cluster import Cluster  # noqa: E402

MARKETS = {"BTC_USDT": 30000, "ETH_USDT": 2000, "SOL_USDT": 20}
BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL


def use_credentials(config_path: str) -> None:
    """This process calls the cluster's services as "admin" (services.clients attach the token)."""
    rpc.configure(process_security(load_config(config_path), "admin", create=False))


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_cpu(c: Cluster) -> dict[str, float]:
    return {name: cpu_seconds(proc.pid) for name, proc in c.procs.items()}


def spread(xs: list[float]) -> dict[str, Any]:
    return {
        "samples": len(xs),
        "p50": percentile(xs, 0.5),
        "p99": percentile(xs, 0.99),
        "p99.9": percentile(xs, 0.999),
        "max": round(max(xs), 2) if xs else None,
    }


def make_orders(rng: random.Random, users: int, n: int, crossing: float) -> list[apb.OrderCommand]:
    out = []
    markets = list(MARKETS)
    weights = [0.6, 0.3, 0.1]
    for _ in range(n):
        market = rng.choices(markets, weights)[0]
        mid = MARKETS[market]
        side = BUY if rng.random() < 0.5 else SELL
        user = rng.randint(1, users)
        if rng.random() < crossing:
            price = mid * (1.002 if side == BUY else 0.998)
        else:
            off = 1 + rng.randint(1, 200) / 10000
            price = mid / off if side == BUY else mid * off
        tick = 0.01 if market != "SOL_USDT" else 0.001
        price_s = f"{round(price / tick) * tick:.{2 if tick == 0.01 else 3}f}"
        amount = {"BTC_USDT": "0.001", "ETH_USDT": "0.01", "SOL_USDT": "1"}[market]
        out.append(
            apb.OrderCommand(
                place_order=apb.PlaceOrderRequest(
                    user_id=user,
                    market=market,
                    side=side,
                    type=types_pb2.ORDER_TYPE_LIMIT,
                    price=price_s,
                    amount=amount,
                    time_in_force=types_pb2.TIME_IN_FORCE_GTC,
                )
            )
        )
    return out


async def fund(accounts: AccountsClient, users: int) -> None:
    """Deposits for every user (idempotent by business id: a BUSY answer is retried by the client)."""
    sem = asyncio.Semaphore(64)

    async def one(user: int, asset: str, amount: str) -> None:
        async with sem:
            await accounts.deposit(
                apb.DepositRequest(
                    user_id=user, asset=asset, amount=amount, business="bench", business_id=f"{user}-{asset}"
                ),
                timeout=30,
            )

    await asyncio.gather(
        *[
            one(u, a, amt)
            for u in range(1, users + 2)
            for a, amt in (("USDT", "100000000"), ("BTC", "10000"), ("ETH", "100000"), ("SOL", "10000000"))
        ]
    )


async def fund_with_ask_wall(accounts: AccountsClient, users: int) -> None:
    """fund, then liquidity for the probes: a deep ask wall far from the flow's crossing prices."""
    await fund(accounts, users)
    await accounts.place_order(
        apb.PlaceOrderRequest(
            user_id=1,
            market="BTC_USDT",
            side=SELL,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="30150",
            amount="1000",
        )
    )


async def shard_counters(c: Cluster) -> tuple[int, int]:
    async with MatchingClient.at(c.addresses["matching-0"]) as matching:
        st = await matching.get_matching_status(mpb.GetMatchingStatusRequest())
        return sum(m.last_trade_id for m in st.markets), st.event_sequence


def probe_process(
    config_path: str, accounts: str, matching: str, history: str, user: int, seconds: float, out: Any
) -> None:
    """Runs in its own process (so the load generator's busy event loop does not distort it):
    every 20 ms a crossing IOC buy by `user`, timed from PlaceOrder to the UserFill event on the
    user's stream; and once a second, the exchange's own counters (orders, fills, pipeline lag)."""
    use_credentials(config_path)
    out.put(asyncio.run(_probe(accounts, matching, history, user, seconds)))


HOPS = ("accounts_journal", "forward", "matching_journal_event", "settlement", "user_stream")


def _us() -> int:
    return time.time_ns() // 1000


async def _probe(accounts: str, matching: str, history: str, user: int, seconds: float) -> dict[str, Any]:
    """Per probe order, six points in time: sent, answered, seen on the shard's event stream (in
    this process), and received as UserFill on the user stream, all from this process's clock; and
    the two stamps the services journal themselves: the matching command's time_us (the shard's
    commit) and the UserFill event's time_us (the accounts commit of the settlement). The services
    stamp with the wall clock (time.time_ns, the only clock a journal record carries), so the probe
    reads the wall clock too: one clock for every process on one machine (valid as long as it is not
    stepped during the run; intervals measured inside the probe alone would be no better)."""
    sent: dict[int, int] = {}
    answered: dict[int, int] = {}
    matched: dict[int, tuple[int, int]] = {}  # order id -> (shard's stamp, seen on the shard stream)
    latencies: list[float] = []
    hops: dict[str, list[float]] = {h: [] for h in HOPS}
    samples: list[dict[str, Any]] = []
    async with (
        AccountsClient.at(accounts) as stub,
        MatchingClient.at(matching) as mstub,
        HistoryClient.at(history or "127.0.0.1:1") as hstub,
    ):
        st0 = await mstub.get_matching_status(mpb.GetMatchingStatusRequest())

        async def follow_shard() -> None:
            request = mpb.StreamEventsRequest(from_sequence=st0.event_sequence + 1)
            async for resp in mstub.stream_events(request):
                now = _us()
                for e in resp.events:
                    if e.WhichOneof("event") == "trade_executed":
                        t = e.trade_executed
                        if t.taker_user_id == user and t.taker_order_id not in matched:
                            matched[t.taker_order_id] = (e.time_us, now)

        early: dict[int, tuple[int, int]] = {}  # fills seen before their order's answer

        def record(oid: int, settled_us: int, now: int) -> None:
            if oid not in sent:
                early[oid] = (settled_us, now)
                return
            t0 = sent.pop(oid)
            latencies.append((now - t0) / 1000)
            t1 = answered.pop(oid, None)
            shard = matched.pop(oid, None)
            if t1 is None or shard is None:
                return
            stamp, seen = shard
            hops["accounts_journal"].append((t1 - t0) / 1000)
            hops["forward"].append((stamp - t1) / 1000)
            hops["matching_journal_event"].append((seen - stamp) / 1000)
            hops["settlement"].append((settled_us - seen) / 1000)
            hops["user_stream"].append((now - settled_us) / 1000)

        async def follow() -> None:
            async for resp in stub.stream_user_events(apb.StreamUserEventsRequest(user_id=user)):
                now = _us()
                for e in resp.events:
                    if e.WhichOneof("event") == "user_fill" and e.user_fill.role == ev.LIQUIDITY_ROLE_TAKER:
                        record(e.user_fill.order_id, e.time_us, now)

        async def place() -> None:
            while time.monotonic() < until:
                t0 = _us()
                resp = await stub.place_order(
                    apb.PlaceOrderRequest(
                        user_id=user,
                        market="BTC_USDT",
                        side=BUY,
                        type=types_pb2.ORDER_TYPE_LIMIT,
                        price="30200",
                        amount="0.001",
                        time_in_force=types_pb2.TIME_IN_FORCE_IOC,
                    )
                )
                t1 = _us()
                oid = resp.order.order_id
                sent[oid] = t0
                answered[oid] = t1
                if oid in early:
                    record(oid, *early.pop(oid))
                await asyncio.sleep(0.02)

        async def sample() -> None:
            while time.monotonic() < until + 0.5:
                t = time.monotonic()
                st = await stub.get_accounts_status(apb.GetAccountsStatusRequest())
                ms = await mstub.get_matching_status(mpb.GetMatchingStatusRequest())
                extra: dict[str, Any] = {}
                if history:
                    hs = await hstub.get_history_status(hpb.GetHistoryStatusRequest())
                    extra = {
                        "history_lag_matching_events": ms.event_sequence
                        - hs.checkpoints.get("matching-0", 0),
                        "history_lag_accounts_events": st.event_sequence
                        - hs.checkpoints.get("accounts-0", 0),
                        "matching_events": ms.event_sequence,
                        "accounts_events": st.event_sequence,
                    }
                samples.append(
                    {
                        **extra,
                        "t": round(t - start, 2),
                        "orders": st.last_order_id,
                        "fills": sum(m.last_trade_id for m in ms.markets),
                        "accounts_queue": st.queue_depth,
                        "outbox": st.outbox_pending.get("matching-0", 0),
                        "unsettled_events": ms.event_sequence - st.settled_sequences.get("matching-0", 0),
                    }
                )
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))

        start = time.monotonic()
        until = start + seconds
        followers = [asyncio.create_task(follow()), asyncio.create_task(follow_shard())]
        await asyncio.sleep(0.2)  # both streams open before the first probe
        await asyncio.gather(place(), sample())
        await asyncio.sleep(1.0)
        for f in followers:
            f.cancel()
    return {"latencies_ms": latencies, "hops_ms": hops, "unmatched": len(sent), "samples": samples}


async def drive_stream(
    c: Cluster, batches: list[bytes], until: float, window: int, counter: list[int], interval: float = 0.0
) -> None:
    """One SubmitOrders stream sending pre-serialized batches, at most `window` unanswered; with an
    interval, one batch per interval at most (a paced, open-loop-like rate instead of saturation)."""
    conn = Connection.at(c.addresses["accounts-0"])
    try:
        ch = conn.channel()
        call = ch.stream_stream(
            "/exchange.v1.AccountsService/SubmitOrders",
            request_serializer=lambda b: b,
            response_deserializer=apb.SubmitOrdersResponse.FromString,
        )()
        inflight = asyncio.Semaphore(window)
        errors = [0]

        async def reader() -> None:
            async for resp in call:
                ok = sum(1 for r in resp.results if r.code == 0)
                counter[0] += ok
                errors[0] += len(resp.results) - ok
                inflight.release()

        rtask = asyncio.create_task(reader())
        i = 0
        next_at = time.monotonic()
        while time.monotonic() < until:
            if interval:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await inflight.acquire()
            await call.write(batches[i % len(batches)])
            i += 1
        await call.done_writing()
        await rtask
        counter[1] += errors[0]
    finally:
        await conn.close()


def unary_client_process(
    config_path: str,
    address: str,
    payloads: list[bytes],
    seconds: float,
    concurrency: int,
    rate: float,
    out: Any,
) -> None:
    """One unary client process (a Python gRPC client tops out near a thousand calls a second, so the
    unary load comes from several processes); with a rate, calls start at that pace (orders/s)."""
    use_credentials(config_path)
    out.put(asyncio.run(_unary_client(address, payloads, seconds, concurrency, rate)))


async def _unary_client(
    address: str, payloads: list[bytes], seconds: float, concurrency: int, rate: float = 0.0
) -> tuple[int, int]:
    counter = [0, 0]
    until = time.monotonic() + seconds
    next_at = [time.monotonic()]
    conn = Connection.at(address)  # pre-serialized requests on the library's channel
    try:
        call = conn.channel().unary_unary(
            "/exchange.v1.AccountsService/PlaceOrder",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        idx = [0]

        async def worker() -> None:
            while time.monotonic() < until:
                if rate:
                    slot = next_at[0] = max(next_at[0] + 1.0 / rate, time.monotonic() - 0.05)
                    await asyncio.sleep(max(0.0, slot - time.monotonic()))
                req = payloads[idx[0] % len(payloads)]
                idx[0] += 1
                try:
                    await call(req)
                    counter[0] += 1
                except grpc.aio.AioRpcError:
                    counter[1] += 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    finally:
        await conn.close()
    return counter[0], counter[1]


async def drive_unary(
    c: Cluster,
    orders: list[apb.PlaceOrderRequest],
    until: float,
    concurrency: int,
    counter: list[int],
    processes: int = 3,
    rate: int = 0,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    payloads = [o.SerializeToString() for o in orders]
    seconds = until - time.monotonic()
    procs = [
        ctx.Process(
            target=unary_client_process,
            args=(
                str(c.config_path),
                c.addresses["accounts-0"],
                payloads[k::processes],
                seconds,
                concurrency // processes,
                rate / processes,
                queue,
            ),
        )
        for k in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ok, failed = await asyncio.to_thread(queue.get, True, seconds + 60)
        counter[0] += ok
        counter[1] += failed
    for p in procs:
        p.join(10)


def _frame(message: Any) -> bytes:
    body: bytes = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def _h2load_paced(url: str, data: Path, clients: int, seconds: float, rps: float, token: str) -> int:
    """h2load POSTing the gRPC-framed request in `data` from `clients` connections for `seconds`, each
    at `rps` requests/s (0 = as fast as it goes); returns the requests it completed."""
    cmd = ["h2load", "-c", str(clients), "-m", "1", "-t", "1", "-D", str(max(1, round(seconds)))]
    if rps:
        cmd += [f"--rps={rps:g}"]
    cmd += ["-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    cmd += ["-H", f"authorization: Bearer {token}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", proc.stdout + proc.stderr)
    if done is None:
        raise RuntimeError(f"unexpected h2load output:\n{proc.stdout}{proc.stderr}")
    return int(done.group(1))


async def last_order_id(c: Cluster) -> int:
    async with AccountsClient.at(c.addresses["accounts-0"]) as accounts:
        st = await accounts.get_accounts_status(apb.GetAccountsStatusRequest())
        return int(st.last_order_id)


async def drive_unary_h2load(
    c: Cluster, directory: Path, until: float, concurrency: int, counter: list[int], rate: int = 0
) -> None:
    """The unary load from h2load (see the module docstring): 1 in 8 connections send a crossing IOC
    buy (user 2, against the ask wall user 1 keeps at 30150), the others a passive limit buy (user 1)."""
    passive = apb.PlaceOrderRequest(
        user_id=1, market="BTC_USDT", side=BUY, type=types_pb2.ORDER_TYPE_LIMIT, price="29700", amount="0.001"
    )
    crossing = apb.PlaceOrderRequest(
        user_id=2,
        market="BTC_USDT",
        side=BUY,
        type=types_pb2.ORDER_TYPE_LIMIT,
        price="30200",
        amount="0.001",
        time_in_force=types_pb2.TIME_IN_FORCE_IOC,
    )
    (directory / "passive.bin").write_bytes(_frame(passive))
    (directory / "crossing.bin").write_bytes(_frame(crossing))
    url = f"http://{c.addresses['accounts-0']}/exchange.v1.AccountsService/PlaceOrder"
    token = c.token("trader")
    crossers = max(1, concurrency // 8)
    per_client = rate / concurrency if rate else 0.0
    seconds = until - time.monotonic()
    before = await last_order_id(c)
    done = await asyncio.gather(
        asyncio.to_thread(
            _h2load_paced, url, directory / "passive.bin", concurrency - crossers, seconds, per_client, token
        ),
        asyncio.to_thread(
            _h2load_paced, url, directory / "crossing.bin", crossers, seconds, per_client, token
        ),
    )
    # Orders the probe placed meanwhile are counted by the caller from its own report.
    accepted = await last_order_id(c) - before
    counter[0] += accepted
    counter[1] += max(0, sum(done) - accepted)


def history_lag(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """How far history's checkpoints trail the sources, in events and in seconds of the source's rate."""
    if not samples or "history_lag_matching_events" not in samples[0]:
        return {}
    per_second = []
    worst = 0.0
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        m_rate = max(1.0, (b["matching_events"] - a["matching_events"]) / dt)
        a_rate = max(1.0, (b["accounts_events"] - a["accounts_events"]) / dt)
        lag_s = max(b["history_lag_matching_events"] / m_rate, b["history_lag_accounts_events"] / a_rate)
        worst = max(worst, lag_s)
        per_second.append(
            {
                "matching_events": b["history_lag_matching_events"],
                "accounts_events": b["history_lag_accounts_events"],
                "seconds": round(lag_s, 2),
            }
        )
    return {"history_lag_per_second": per_second, "history_max_lag_seconds": round(worst, 2)}


async def run_mode(
    c: Cluster,
    mode: str,
    seconds: float,
    users: int,
    batch: int,
    streams: int,
    window: int,
    rate: int = 0,
    unary_load: str = "h2load",
) -> dict[str, Any]:
    rng = random.Random(42)
    counter = [0, 0]
    trades0, events0 = await shard_counters(c)
    if mode == "stream":
        orders = make_orders(rng, users, 200_000, crossing=0.1)
        batches = [
            apb.SubmitOrdersRequest(
                batch_id=i, commands=orders[i * batch : (i + 1) * batch]
            ).SerializeToString()
            for i in range(len(orders) // batch)
        ]
    elif mode == "unary":
        requests = [cmd.place_order for cmd in make_orders(rng, users, 50_000, crossing=0.1)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    probe = ctx.Process(
        target=probe_process,
        args=(
            str(c.config_path),
            c.addresses["accounts-0"],
            c.addresses["matching-0"],
            c.addresses.get("history", ""),
            users + 1,
            seconds,
            queue,
        ),
    )
    probe.start()
    cpu0 = service_cpu(c)
    start = time.monotonic()
    until = start + seconds
    if mode == "stream":
        interval = streams * batch / rate if rate else 0.0
        load = [
            drive_stream(c, batches[k::streams], until, window, counter, interval) for k in range(streams)
        ]
    elif mode == "unary" and unary_load == "h2load":
        load = [drive_unary_h2load(c, c.dir, until, 64, counter, rate=rate)]
    elif mode == "unary":
        load = [drive_unary(c, requests, until, 64, counter, rate=rate)]
    else:  # idle: the probes alone
        load = [asyncio.sleep(seconds)]
    await asyncio.gather(*load)
    elapsed = time.monotonic() - start
    report = queue.get(timeout=60)
    probe.join(10)
    if mode == "unary" and unary_load == "h2load":  # the exchange counted the probe's orders too
        counter[0] = max(0, counter[0] - len(report["latencies_ms"]) - report["unmatched"])
    # Wait for matching and settlement to finish what was accepted.
    t_drain = time.monotonic()
    c.wait_quiet(timeout=300)
    drain = time.monotonic() - t_drain
    cpu1 = service_cpu(c)
    orders_done = counter[0] + len(report["latencies_ms"])
    trades1, events1 = await shard_counters(c)
    samples = report["samples"]
    per_second = [
        round((b["orders"] - a["orders"]) / (b["t"] - a["t"])) for a, b in itertools.pairwise(samples)
    ]
    fills_per_second = [
        round((b["fills"] - a["fills"]) / (b["t"] - a["t"])) for a, b in itertools.pairwise(samples)
    ]
    steady = per_second[2:-1] if len(per_second) > 4 else per_second
    lat = report["latencies_ms"]
    return {
        "entry": mode,
        "seconds": round(elapsed, 1),
        "accepted_orders": counter[0],
        "rejected_or_failed": counter[1],
        "accepted_orders_per_s": round(counter[0] / elapsed),
        "accepted_orders_per_second_timeline": per_second,
        "sustained_min_orders_per_s": min(steady) if steady else 0,
        "fills": trades1 - trades0,
        "fills_per_second_timeline": fills_per_second,
        "fills_per_s": round((trades1 - trades0) / (elapsed + drain)),
        "matching_events": events1 - events0,
        "drain_seconds_after_load": round(drain, 2),
        "cpu_us_per_order": {
            name: round((cpu1[name] - cpu0[name]) * 1e6 / max(1, orders_done)) for name in cpu0
        },
        "cpu_cores_used": {name: round((cpu1[name] - cpu0[name]) / (elapsed + drain), 2) for name in cpu0},
        "place_to_fill_latency_ms": {
            "what": "unary PlaceOrder of a crossing IOC order -> its UserFill event, under the load",
            **spread(lat),
            "probes_without_fill": report["unmatched"],
        },
        "hop_latency_ms": {
            "what": (
                "per probe: accounts_journal = PlaceOrder sent -> answered (durable); forward = answered "
                "-> the shard's commit stamp; matching_journal_event = that stamp -> the trade seen on "
                "the shard's event stream; settlement = seen -> the accounts commit stamp of the "
                "settlement; user_stream = that stamp -> UserFill received (includes the settlement's "
                "fsync). One wall clock for every process of this machine."
            ),
            **{hop: spread(xs) for hop, xs in report["hops_ms"].items()},
        },
        "pipeline_lag_per_second": [
            {k: v for k, v in s.items() if k in ("accounts_queue", "outbox", "unsettled_events")}
            for s in samples
        ],
        **history_lag(samples),
        "target_rate_orders_per_s": rate,
        "batch_size": batch if mode == "stream" else 1,
        "streams": streams if mode == "stream" else 0,
        "unary_concurrency": 64 if mode == "unary" else 0,
        "unary_load_generator": unary_load if mode == "unary" else "",
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "end-to-end",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "users": args.users,
        "markets": list(MARKETS),
        "root": str(ROOT),
        "durable": "every command fsynced (group commit) before it is answered",
        "runs": [],
    }
    modes = ["stream", "unary"] if args.mode == "both" else [args.mode]
    unary_load = args.unary_load
    if unary_load == "h2load" and shutil.which("h2load") is None:
        print(
            "h2load not found (apt-get install -y nghttp2-client): unary load from Python clients",
            file=sys.stderr,
        )
        unary_load = "python"
    results["unary_load_generator"] = unary_load
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
            c = Cluster(
                Path(tmp),
                with_history=args.with_history,
                with_market=args.with_market,
                accounts_options={"max_outbox_lag": 1_000_000},
            )
            c.start()
            use_credentials(str(c.config_path))
            try:
                async with AccountsClient.at(c.addresses["accounts-0"]) as accounts:
                    await fund_with_ask_wall(accounts, args.users)
                results["runs"].append(
                    await run_mode(
                        c,
                        mode,
                        args.seconds,
                        args.users,
                        args.batch,
                        args.streams,
                        args.window,
                        args.unary_rate if mode == "unary" else args.rate,
                        unary_load,
                    )
                )
            finally:
                c.stop()
    stream = next((r for r in results["runs"] if r["entry"] == "stream"), None)
    if stream:
        results["target_orders_per_s"] = 10_000
        results["target_met"] = stream["sustained_min_orders_per_s"] >= 10_000
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--mode", choices=["stream", "unary", "both", "idle"], default="both")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--rate", type=int, default=0, help="target orders/s (0 = as fast as it goes)")
    ap.add_argument("--unary-rate", type=int, default=0, help="unary: target orders/s (0 = closed loop)")
    ap.add_argument("--unary-load", choices=["h2load", "python"], default="h2load")
    ap.add_argument("--root", type=Path, default=ROOT, help="run another checkout (see the docstring)")
    ap.add_argument("--with-history", action="store_true")
    ap.add_argument("--with-market", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
