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
  (as fast as they go, or paced at --ws-rate orders/s: the orders/s reached is reported); delay =
  receive wall time - the time in the message (trade T, gateway E), p50/p99/max; drops = connections
  closed by the gateway, trade messages a connection missed, depth U/u gaps. --only-ws skips the HTTP
  parts. The receivers (--ws-receiver) are lean asyncio protocols that parse frames themselves, or
  aiohttp's client (which costs the receivers more CPU, on the same cores as the gateway).

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


# Paced: each connection waits this long (ms, wrk's delay hook) before each request.
WRK_PACE = """
delay = function() return %d end
"""


def wrk(
    url: str,
    clients: int,
    seconds: float,
    *,
    paths: list[str] | None = None,
    key: str = "",
    rate: float = 0.0,
) -> dict[str, Any]:
    """wrk (one thread, `clients` connections) for `seconds` against `url`; with `paths`, POSTs each path
    once, in order; with `rate`, at most about `rate` requests/s (each connection paced)."""
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "bench.lua"
        script.write_text(WRK_SCRIPT + (WRK_PACE % round(clients * 1000 / rate) if rate else ""))
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
# The receivers run niced: on a machine shared with the gateway, a receiver woken by each message would
# otherwise preempt the gateway in the middle of a fan-out (what a remote client cannot do).
RECEIVER_NICE = 10
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
    os.nice(RECEIVER_NICE)

    trade_t: dict[int, int] = {}
    trade_e: dict[int, int] = {}
    depth_e: dict[int, int] = {}
    counts: list[int] = []
    state = {"gaps": 0, "dropped": 0, "connect_failed": 0}
    reasons: dict[str, int] = {}

    async def client(session: aiohttp.ClientSession, connected: asyncio.Event, n: list[int]) -> None:
        try:
            ws = await session.ws_connect(
                f"{base.replace('http', 'ws')}/stream?streams={STREAMS}",
                timeout=aiohttp.ClientWSTimeout(ws_close=30.0),
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


def _raw_receiver(base: str, clients: int, stop_at: Any, ready: Any, results: Any) -> None:
    """As _receiver, with a lean client: each connection is an asyncio protocol that parses the frames
    itself (no task or await per message), so the receivers' own CPU time adds less to the delays they
    measure. Each chunk read from a socket is stamped once, when it is read."""
    import asyncio
    import base64

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    os.nice(RECEIVER_NICE)

    trade_t: dict[int, int] = {}
    trade_e: dict[int, int] = {}
    depth_e: dict[int, int] = {}
    counts: list[int] = []
    state = {"gaps": 0, "dropped": 0, "connect_failed": 0}
    reasons: dict[str, int] = {}
    host, _, port = base.removeprefix("http://").rpartition(":")
    request = (
        f"GET /stream?streams={STREAMS} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    )

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.open: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.last_rx = time.time()
            self.last_u = 0
            self.trades = 0
            self.finished = False
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            key = base64.b64encode(os.urandom(16)).decode()
            transport.write(f"{request}{key}\r\n\r\n".encode())

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.open.done():
                self.open.set_result(False)
            self.finish()

        def finish(self) -> None:
            if not self.finished:
                self.finished = True
                counts.append(self.trades)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            now_s = time.time()
            now = int(now_s * 1000)
            self.last_rx = now_s
            buf = self.buf
            buf += data
            if not self.open.done():
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.open.set_result(buf.startswith(b"HTTP/1.1 101"))
                del buf[: end + 4]
            pos, n = 0, len(buf)
            while n - pos >= 2:
                op, size, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
                if size == 126:
                    if n - pos < 4:
                        break
                    size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
                elif size == 127:
                    if n - pos < 10:
                        break
                    size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                if n - pos < head + size:
                    break
                payload = bytes(buf[pos + head : pos + head + size])
                pos += head + size
                if op == 1 and not self.finished:
                    self.message(payload, now)
                elif op == 9:  # ping: a client's pong is masked (an all-zero mask keeps the bytes)
                    self.transport.write(bytes((0x8A, 0x80 | len(payload), 0, 0, 0, 0)) + payload)
                elif op == 8:
                    if not self.finished:
                        state["dropped"] += 1
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                        key = f"{code} {payload[2:].decode(errors='replace')}"[:80]
                        reasons[key] = reasons.get(key, 0) + 1
                    self.finish()
                    return
            del buf[:pos]

        def message(self, payload: bytes, now: int) -> None:
            d = json.loads(payload)["data"]
            if d["e"] == "trade":
                self.trades += 1
                a, b = now - d["T"], now - d["E"]
                trade_t[a] = trade_t.get(a, 0) + 1
                trade_e[b] = trade_e.get(b, 0) + 1
            else:
                c = now - d["E"]
                depth_e[c] = depth_e.get(c, 0) + 1
                if self.last_u and d["U"] != self.last_u + 1:
                    state["gaps"] += 1
                self.last_u = d["u"]

    async def connect(loop: asyncio.AbstractEventLoop) -> Client | None:
        try:
            _, proto = await loop.create_connection(Client, host, int(port))
            if await asyncio.wait_for(proto.open, 30):
                return proto
            proto.finish()
        except Exception:
            pass
        state["connect_failed"] += 1
        return None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pending = []
        for _ in range(clients):
            pending.append(asyncio.create_task(connect(loop)))
            await asyncio.sleep(0.002)  # do not flood the accept queue
        conns = [c for c in await asyncio.gather(*pending) if c is not None]
        ready.put(len(conns))
        # After the load: until a connection is quiet for QUIET_S (what was sent has arrived), at most
        # DRAIN_S.
        while any(not c.finished for c in conns):
            await asyncio.sleep(0.1)
            stop, now = stop_at.value, time.time()
            if not stop or now < stop:
                continue
            for c in conns:
                if not c.finished and (now > stop + DRAIN_S or now - c.last_rx > QUIET_S):
                    c.finish()

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fan_out(
    base: str, clients: int, procs: int, load: Any, *, receiver: str = "raw", gateway_pid: int = 0
) -> dict[str, Any]:
    """`clients` WebSocket connections (over `procs` receiver processes) on btcusdt@trade and
    btcusdt@depth@100ms while `load()` crosses orders. Drops: connections the gateway closed (slow
    consumer), and trade messages a connection missed (fewer than the connection that got the most)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stop_at = ctx.Value("d", 0.0)
    ready = ctx.Queue()
    results = ctx.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    target = _raw_receiver if receiver == "raw" else _receiver
    workers = [ctx.Process(target=target, args=(base, n, stop_at, ready, results)) for n in shares if n]
    for w in workers:
        w.start()
    connected = sum(ready.get(timeout=300) for _ in workers)
    time.sleep(1.0)
    cpu0 = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    load()
    stop_at.value = time.time()  # the receivers drain what was sent during the load, then stop
    parts = [results.get(timeout=300) for _ in workers]
    gateway_cpu = cpu_seconds(gateway_pid) - cpu0 if gateway_pid else 0.0
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
    delivered = sum(sum(p[k].values()) for p in parts for k in ("trade_t", "depth_e"))
    reasons: dict[str, int] = {}
    for p in parts:
        for k, v in p["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    return {
        "clients": clients,
        "receiver": receiver,
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
        # The gateway's CPU time from the start of the load until the receivers drained (order entry
        # included), and per message delivered to a connection.
        "gateway_cpu_s": round(gateway_cpu, 2),
        "gateway_cpu_us_per_message": round(gateway_cpu * 1e6 / delivered, 2) if delivered else None,
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
    ap.add_argument(
        "--ws-receiver",
        choices=("raw", "aiohttp"),
        default="raw",
        help="fan-out clients: asyncio protocols parsing frames themselves, or aiohttp's client",
    )
    ap.add_argument(
        "--ws-rate",
        type=float,
        default=0.0,
        help="orders/s of the crossing load, both sides together (0 = as fast as they go)",
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
                cpu0 = cpu_seconds(c.procs["gateway"].pid)
                r = wrk(base, level, args.seconds, paths=[u for u, _ in urls], key=key[0])
                cpu = cpu_seconds(c.procs["gateway"].pid) - cpu0
                # The gateway's own CPU time per accepted order: what the machine's other load (the
                # exchange, wrk, other users of the cores) does not change much.
                r["gateway_cpu_s"] = round(cpu, 2)
                r["gateway_cpu_us_per_ok"] = round(cpu * 1e6 / r["ok"], 1) if r["ok"] else None
                entry.append(r)
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
                                rate=args.ws_rate / 2,
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
                        rate=args.ws_rate / 2,
                    )
                    t.join()
                    result["ws_load_rate_asked"] = args.ws_rate
                    result["ws_load_orders_per_s"] = round(
                        out["sell"]["ok_per_s"] + out["buy"]["ok_per_s"], 1
                    )

                result["ws_fan_out"] = fan_out(
                    base,
                    args.ws_clients,
                    args.ws_procs,
                    load,
                    receiver=args.ws_receiver,
                    gateway_pid=c.procs["gateway"].pid,
                )
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
