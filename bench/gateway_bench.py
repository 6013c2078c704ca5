"""Gateway benchmark: HTTP against the real services, driven by wrk (Debian's `wrk`: apt-get install wrk).

    python bench/gateway_bench.py [--seconds 5] [--out FILE]

Starts matching, accounts, history, market and the gateway as processes in a temporary directory
(rate limits raised out of the way), then measures:

- signed order entry (POST /api/v3/order, HMAC-signed, each request unique: its own timestamp and
  newClientOrderId, signed in advance, since the gateway refuses a replayed signature) at 1, 16 and 64
  connections: accepted orders/s (HTTP 200 answers per second), other answers, mean latency;
- public GET /api/v3/depth and /api/v3/ticker/24hr at 16 connections: requests/s.

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


async def fan_out(base: str, clients: int, seconds: float, load: Any) -> dict[str, Any]:
    """`clients` WebSocket connections on btcusdt@trade and btcusdt@depth@100ms while `load()` (in a
    thread) crosses orders: delay of each trade message from the trade's time (T) to its arrival, depth
    continuity (U = previous u + 1) per connection, connections dropped."""
    import asyncio

    import aiohttp

    delays: list[int] = []
    gaps = 0
    dropped = 0
    depth_messages = 0
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal gaps, dropped, depth_messages
        ws = await session.ws_connect(
            f"{base.replace('http', 'ws')}/stream?streams=btcusdt@trade/btcusdt@depth@100ms"
        )
        last_u = 0
        try:
            while not stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.5)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    dropped += 1
                    return
                now = int(time.time() * 1000)
                m = json.loads(msg.data)
                d = m["data"]
                if m["stream"].endswith("@trade"):
                    delays.append(now - d["T"])
                else:
                    depth_messages += 1
                    if last_u and d["U"] != last_u + 1:
                        gaps += 1
                    last_u = d["u"]
        finally:
            await ws.close()

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(load)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    delays.sort()

    def pct(q: float) -> int | None:
        return delays[min(len(delays) - 1, int(q * len(delays)))] if delays else None

    return {
        "clients": clients,
        "trade_messages": len(delays),
        "trade_delay_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": delays[-1] if delays else None},
        "depth_messages": depth_messages,
        "depth_gaps": gaps,
        "dropped_connections": dropped,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--levels", default="1,16,64", help="connection counts for signed order entry")
    ap.add_argument("--ws-clients", type=int, default=200, help="WebSocket fan-out clients (0 = skip)")
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
            gateway_options={"weight_per_minute_ip": 1_000_000_000, "weight_per_minute_key": 1_000_000_000},
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
            for run, level in enumerate(int(x) for x in args.levels.split(",")):
                key = keys[run % len(keys)]
                # Enough unique requests for the run at well above the rate reached.
                urls = signed_order_urls(base, [key], int(args.seconds * 8000) + 1000, run)
                entry.append(wrk(base, level, args.seconds, paths=[u for u, _ in urls], key=key[0]))
                time.sleep(1.0)
            result["signed_order_entry"] = entry
            if not args.no_consumers:
                result["public"] = {
                    "depth": wrk(f"{base}/api/v3/depth?symbol=BTCUSDT&limit=100", 16, args.seconds),
                    "ticker_24hr": wrk(f"{base}/api/v3/ticker/24hr?symbol=BTCUSDT", 16, args.seconds),
                    "ping": wrk(f"{base}/api/v3/ping", 16, args.seconds),
                }
                if args.ws_clients:
                    import asyncio

                    seller, buyer = keys[-1], keys[-2]
                    c.accounts.Deposit(
                        apb.DepositRequest(
                            user_id=USERS, asset="BTC", amount="1000", business="bench", business_id="btc"
                        )
                    )
                    n = int(args.seconds * 300)
                    sells = signed_order_urls(base, [seller], n, 90, side="SELL", price="20000")
                    buys = signed_order_urls(base, [buyer], n, 91, side="BUY", price="20000")

                    def load() -> None:
                        import threading

                        out: dict[str, Any] = {}
                        t = threading.Thread(
                            target=lambda: out.setdefault(
                                "sell", wrk(base, 4, args.seconds, paths=[u for u, _ in sells], key=seller[0])
                            )
                        )
                        t.start()
                        out["buy"] = wrk(base, 4, args.seconds, paths=[u for u, _ in buys], key=buyer[0])
                        t.join()
                        result["ws_load_orders_per_s"] = round(
                            out["sell"]["ok_per_s"] + out["buy"]["ok_per_s"], 1
                        )

                    result["ws_fan_out"] = asyncio.run(fan_out(base, args.ws_clients, args.seconds, load))
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
