"""Gateway benchmark: HTTP against the real services, driven by wrk (Debian's `wrk`: apt-get install wrk).

    python bench/gateway_bench.py [--seconds 5] [--out FILE]

Starts matching, accounts, history, market and the gateway as processes in a temporary directory
(rate limits raised out of the way), then measures:

- signed order entry (POST /api/v3/order, HMAC-signed, each request unique: its own timestamp and
  newClientOrderId, signed in advance, since the gateway refuses a replayed signature) at 1, 16 and 64
  connections: accepted orders/s (HTTP 200 answers per second), other answers, mean latency;
- public GET /api/v3/depth and /api/v3/ticker/24hr at 16 connections: requests/s.
- WebSocket fan-out (--ws-clients, default 1,000, spread over --ws-procs receiver processes): every
  client on btcusdt@trade + btcusdt@depth@100ms while two wrk runs cross signed orders at one price
  (as fast as they go: the orders/s reached is reported); delay = receive wall time - the time in the
  message (trade T, gateway E), p50/p99/max; drops = connections closed by the gateway, trade messages
  a connection missed, depth U/u gaps. --only-ws skips the HTTP parts.

The orders are passive limit buys of many users (funded first), so they rest in the book. Everything
runs on this 2-core machine: the load generator, the gateway and the exchange share the cores. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import gateway_service_pb2 as gpb
from exchange.v1 import gateway_service_pb2_grpc as ggrpc

from services.gateway.signing import sign
from testkit.cluster import Cluster

USERS = 64


# wrk's script: each request takes the next line of a file of paths (each signed request is unique),
# and the summary is printed as one JSON line.
WRK_SCRIPT = r"""
local paths = {}
local i = 0
local key = ""
init = function(args)
  if args[1] then for line in io.lines(args[1]) do paths[#paths + 1] = line end end
  key = args[2] or ""
end
request = function()
  if #paths == 0 then return wrk.request() end
  i = i + 1
  local p = paths[i] or paths[#paths]
  return wrk.format("POST", p, {["X-MBX-APIKEY"] = key}, "")
end
done = function(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_ms": %.2f, "p99_ms": %.2f, "mean_ms": %.2f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000))
end
"""


def wrk(
    url: str, clients: int, seconds: float, *, paths: list[str] | None = None, key: str = ""
) -> dict[str, Any]:
    """wrk (one thread, `clients` connections) for `seconds` against `url`; with `paths`, POSTs each path
    once, in order."""
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "bench.lua"
        script.write_text(WRK_SCRIPT)
        cmd = [
            "wrk",
            "-t",
            "1",
            "-c",
            str(clients),
            "-d",
            f"{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        if paths:
            listing = Path(d) / "paths"
            listing.write_text("\n".join(paths) + "\n")
            cmd += ["--", str(listing), key]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    out = proc.stdout + proc.stderr
    m = re.search(r"RESULT (\{.*\})", out)
    if m is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    r = json.loads(m.group(1))
    seconds_run = r["duration_us"] / 1e6
    ok = r["requests"] - r["non_2xx"]
    return {
        "connections": clients,
        "requests_per_s": round(r["requests"] / seconds_run, 1),
        "ok_per_s": round(ok / seconds_run, 1),
        "ok": ok,
        "non_2xx": r["non_2xx"],
        "socket_errors": r["socket_errors"],
        "latency_ms": {"mean": r["mean_ms"], "p50": r["p50_ms"], "p99": r["p99_ms"]},
    }


def signed_order_urls(
    base: str, keys: list[tuple[str, str]], count: int, run: int, *, side: str = "BUY", price: str = ""
) -> list[tuple[str, str]]:
    """(url, api key) of `count` unique signed limit orders, spread over the keys (passive buys at many
    prices, or all at `price`)."""
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        key, secret = keys[i % len(keys)]
        params = {
            "symbol": "BTCUSDT",
            "side": side,
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": "0.001",
            "price": price or f"{10000 + (i % 5000) * 0.01:.2f}",
            "newClientOrderId": f"b{run}-{side[0]}-{i}",
            "newOrderRespType": "ACK",
            "recvWindow": 60000,
            "timestamp": now,
        }
        query = urlencode(params)
        out.append((f"/api/v3/order?{query}&signature={sign(secret, query)}", key))
    return out


STREAMS = "btcusdt@trade/btcusdt@depth@100ms"
QUIET_S = 1.0
DRAIN_S = 60.0


def _histogram_pct(hist: dict[int, int], q: float) -> int | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = min(total - 1, int(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > rank:
            return value
    return max(hist)


def _receiver(base: str, clients: int, stop_at: Any, ready: Any, results: Any) -> None:
    """One receiver process: `clients` connections on btcusdt@trade + btcusdt@depth@100ms until the wall
    time in `stop_at` (a shared double, set by the parent once the load is over). Delays are the
    receive wall time minus the time in the message (trade: T, the trade's time, and E, when the gateway
    made the message; depth: E), kept as histograms in ms. Once the load is over, a connection stops
    after QUIET_S without a message."""
    import asyncio

    import aiohttp

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    trade_t: dict[int, int] = {}
    trade_e: dict[int, int] = {}
    depth_e: dict[int, int] = {}
    counts: list[int] = []
    state = {"gaps": 0, "dropped": 0, "connect_failed": 0}
    reasons: dict[str, int] = {}

    async def client(session: aiohttp.ClientSession, connected: asyncio.Event, n: list[int]) -> None:
        try:
            ws = await session.ws_connect(
                f"{base.replace('http', 'ws')}/stream?streams={STREAMS}", timeout=30
            )
        except Exception:
            state["connect_failed"] += 1
            n[0] += 1
            if n[0] == clients:
                connected.set()
            return
        n[0] += 1
        if n[0] == clients:
            connected.set()
        last_u = 0
        trades = 0
        try:
            while True:
                # After the load: until this connection is quiet for QUIET_S (what was sent has arrived),
                # at most DRAIN_S.
                if stop_at.value and time.time() > stop_at.value + DRAIN_S:
                    break
                try:
                    msg = await ws.receive(timeout=QUIET_S)
                except TimeoutError:
                    if stop_at.value and time.time() > stop_at.value:
                        break
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    state["dropped"] += 1
                    key = f"{ws.close_code} {msg.extra}"[:80]
                    reasons[key] = reasons.get(key, 0) + 1
                    return
                now = time.time_ns() // 1_000_000
                m = json.loads(msg.data)
                d = m["data"]
                if d["e"] == "trade":
                    trades += 1
                    a, b = now - d["T"], now - d["E"]
                    trade_t[a] = trade_t.get(a, 0) + 1
                    trade_e[b] = trade_e.get(b, 0) + 1
                else:
                    c = now - d["E"]
                    depth_e[c] = depth_e.get(c, 0) + 1
                    if last_u and d["U"] != last_u + 1:
                        state["gaps"] += 1
                    last_u = d["u"]
            counts.append(trades)
        finally:
            await ws.close()

    async def run() -> None:
        connected = asyncio.Event()
        n = [0]
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            tasks = []
            for _ in range(clients):
                tasks.append(asyncio.create_task(client(session, connected, n)))
                await asyncio.sleep(0.002)  # do not flood the accept queue
            await connected.wait()
            ready.put(clients - state["connect_failed"])
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    results.put(
        {
            "trade_t": trade_t,
            "trade_e": trade_e,
            "depth_e": depth_e,
            "counts": counts,
            "reasons": reasons,
            **state,
        }
    )


def fan_out(base: str, clients: int, procs: int, load: Any) -> dict[str, Any]:
    """`clients` WebSocket connections (over `procs` receiver processes) on btcusdt@trade and
    btcusdt@depth@100ms while `load()` crosses orders. Drops: connections the gateway closed (slow
    consumer), and trade messages a connection missed (fewer than the connection that got the most)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stop_at = ctx.Value("d", 0.0)
    ready = ctx.Queue()
    results = ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=_receiver, args=(base, n, stop_at, ready, results)) for n in shares if n]
    for w in workers:
        w.start()
    connected = sum(ready.get(timeout=300) for _ in workers)
    time.sleep(1.0)
    load()
    stop_at.value = time.time()  # the receivers drain what was sent during the load, then stop
    parts = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=30)

    def merge(key: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for p in parts:
            for k, v in p[key].items():
                out[k] = out.get(k, 0) + v
        return out

    def summary(hist: dict[int, int]) -> dict[str, Any]:
        return {
            "messages": sum(hist.values()),
            "p50": _histogram_pct(hist, 0.5),
            "p99": _histogram_pct(hist, 0.99),
            "max": max(hist) if hist else None,
        }

    counts = [c for p in parts for c in p["counts"]]
    most = max(counts) if counts else 0
    reasons: dict[str, int] = {}
    for p in parts:
        for k, v in p["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    return {
        "clients": clients,
        "receiver_processes": len(workers),
        "connected": connected,
        "connect_failed": sum(p["connect_failed"] for p in parts),
        "trade_delay_from_trade_time_ms": summary(merge("trade_t")),
        "trade_delay_from_gateway_event_ms": summary(merge("trade_e")),
        "depth_delay_from_gateway_event_ms": summary(merge("depth_e")),
        "trades_per_connection_max": most,
        "missed_trade_messages": sum(most - c for c in counts),
        "depth_gaps": sum(p["gaps"] for p in parts),
        "dropped_connections": sum(p["dropped"] for p in parts),
        "drop_reasons": reasons,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--levels", default="1,16,64", help="connection counts for signed order entry")
    ap.add_argument("--ws-clients", type=int, default=1000, help="WebSocket fan-out clients (0 = skip)")
    ap.add_argument("--ws-procs", type=int, default=3, help="receiver processes of the fan-out clients")
    ap.add_argument(
        "--ws-load-connections", type=int, default=8, help="wrk connections per side of the crossing load"
    )
    ap.add_argument("--only-ws", action="store_true", help="skip order entry and public requests")
    ap.add_argument(
        "--no-consumers",
        action="store_true",
        help="without history and market (order entry only: what their event consumption costs)",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "bench": "gateway",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": args.seconds,
    }
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as d:
        c = Cluster(
            Path(d),
            with_history=not args.no_consumers,
            with_market=not args.no_consumers,
            with_gateway=True,
            gateway_options={
                "weight_per_minute_ip": 1_000_000_000,
                "weight_per_minute_key": 1_000_000_000,
                "ws_connections_per_ip": 100_000,
            },
        )
        c.start()
        try:
            admin = ggrpc.GatewayAdminServiceStub(c.channel("gateway"))
            keys = []
            # One key per user: h2load sends one header set, so each run uses one key (one user).
            for user in range(1, USERS + 1):
                c.accounts.Deposit(
                    apb.DepositRequest(
                        user_id=user,
                        asset="USDT",
                        amount="100000000",
                        business="bench",
                        business_id=str(user),
                    )
                )
                resp = admin.CreateApiKey(
                    gpb.CreateApiKeyRequest(user_id=user, permissions=[gpb.API_KEY_PERMISSION_TRADE])
                )
                keys.append((resp.key.api_key, resp.secret))
            base = f"http://{c.gateway_http}"
            entry = []
            for run, level in enumerate(
                int(x) for x in ("" if args.only_ws else args.levels).split(",") if x
            ):
                key = keys[run % len(keys)]
                # Enough unique requests for the run at well above the rate reached.
                urls = signed_order_urls(base, [key], int(args.seconds * 8000) + 1000, run)
                entry.append(wrk(base, level, args.seconds, paths=[u for u, _ in urls], key=key[0]))
                time.sleep(1.0)
            result["signed_order_entry"] = entry
            if not args.no_consumers and not args.only_ws:
                result["public"] = {
                    "depth": wrk(f"{base}/api/v3/depth?symbol=BTCUSDT&limit=100", 16, args.seconds),
                    "ticker_24hr": wrk(f"{base}/api/v3/ticker/24hr?symbol=BTCUSDT", 16, args.seconds),
                    "ping": wrk(f"{base}/api/v3/ping", 16, args.seconds),
                }
            if not args.no_consumers and args.ws_clients:
                seller, buyer = keys[-1], keys[-2]
                c.accounts.Deposit(
                    apb.DepositRequest(
                        user_id=USERS, asset="BTC", amount="1000", business="bench", business_id="btc"
                    )
                )
                n = int(args.seconds * 5000)  # per side: more than this machine reaches
                sells = signed_order_urls(base, [seller], n, 90, side="SELL", price="20000")
                buys = signed_order_urls(base, [buyer], n, 91, side="BUY", price="20000")

                def load() -> None:
                    import threading

                    out: dict[str, Any] = {}
                    t = threading.Thread(
                        target=lambda: out.setdefault(
                            "sell",
                            wrk(
                                base,
                                args.ws_load_connections,
                                args.seconds,
                                paths=[u for u, _ in sells],
                                key=seller[0],
                            ),
                        )
                    )
                    t.start()
                    out["buy"] = wrk(
                        base,
                        args.ws_load_connections,
                        args.seconds,
                        paths=[u for u, _ in buys],
                        key=buyer[0],
                    )
                    t.join()
                    result["ws_load_orders_per_s"] = round(
                        out["sell"]["ok_per_s"] + out["buy"]["ok_per_s"], 1
                    )

                result["ws_fan_out"] = fan_out(base, args.ws_clients, args.ws_procs, load)
            status = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest())
            result["orders_in_accounts"] = status.last_order_id
        finally:
            c.stop()
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
