"""Gateway benchmark: HTTP against the real services, driven by wrk (Debian's `wrk`: apt-get install wrk).

    python bench/gateway_bench.py [--seconds 5] [--workers 1,2] [--accounts-shards 1] [--out FILE]

For each value of --workers (`[gateway] workers`: gateway processes on one port), one after another in
the same run, starts matching, accounts (--accounts-shards), history, market and the gateway as
processes in a temporary directory (rate limits raised out of the way), then measures:

- signed order entry (POST /api/v3/order, HMAC-signed, each request unique: its own timestamp and
  newClientOrderId, signed in advance, since the gateway refuses a replayed signature) at 1, 16 and 64
  connections: accepted orders/s (HTTP 200 answers per second), other answers, latency, and the CPU
  time of every process per accepted order (the gateway with its workers, accounts, matching, history,
  market, wrk), the machine's busy cores and what other processes of the machine took meanwhile;
- public GET /api/v3/depth and /api/v3/ticker/24hr at 16 connections: requests/s.
- WebSocket fan-out (--ws-clients, default 1,000, spread over --ws-procs receiver processes): every
  client on btcusdt@trade + btcusdt@depth@100ms while two wrk runs cross signed orders at one price
  (as fast as they go, or paced at --ws-rate orders/s: the orders/s reached is reported); delay =
  receive wall time - the time in the message (trade T, gateway E), p50/p99/max; drops = connections
  closed by the gateway, trade messages a connection missed, depth U/u gaps; the CPU of the gateway
  and of the receivers per message delivered. --only-ws skips the HTTP parts. The receivers
  (--ws-receiver) are lean asyncio protocols that parse frames themselves and read the few integers
  they need from the bytes, or aiohttp's client (which costs the receivers more CPU, on the same cores
  as the gateway).

The orders are passive limit buys of many users (funded first), so they rest in the book. Everything
runs on this 2-core machine: the load generator, the gateway and the exchange share the cores (and
whatever else runs there: see others_cpu_s). Prints one JSON object (bench/output.py): `side_by_side`
has the figures of each worker count next to each other, `runs` the details.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import gateway_service_pb2 as gpb
from exchange.v1 import gateway_service_pb2_grpc as ggrpc

from bench.output import emit
from services.gateway.signing import sign
from testkit.cluster import Cluster

USERS = 64


# wrk's script: each request takes the next line of a file of paths (each signed request is unique),
# and the summary is printed as one JSON line.
WRK_SCRIPT = r"""
local paths = {}
local keys = {}
local i = 0
local key = ""
init = function(args)
  if args[1] then for line in io.lines(args[1]) do paths[#paths + 1] = line end end
  for n, line in ipairs(paths) do  -- "KEY PATH": each request with its own user's key
    local k, p = line:match("^(%S+) (.+)$")
    if k then keys[n] = k; paths[n] = p end
  end
  key = args[2] or ""
end
request = function()
  if #paths == 0 then return wrk.request() end
  i = i + 1
  local n = paths[i] and i or #paths
  return wrk.format("POST", paths[n], {["X-MBX-APIKEY"] = keys[n] or key}, "")
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
    once, in order (a line "KEY PATH" is sent with that API key, else with `key`); with `rate`, at most
    about `rate` requests/s (each connection paced)."""
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
QUIET_S = 3.0  # longer than the worst delays seen under foreign load: a late message is not a miss
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


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class _Tally:
    """What one receiver process measures: delay histograms in ms (trade: by T and by E; depth: by
    E), trades per connection, gaps, drops, failed connects, close reasons; cpu_ready is its own CPU
    time once every connection is up."""

    trade_t: dict[int, int] = field(default_factory=dict)
    trade_e: dict[int, int] = field(default_factory=dict)
    depth_e: dict[int, int] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=lambda: {"gaps": 0, "dropped": 0, "connect_failed": 0})
    reasons: dict[str, int] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        return {
            "trade_t": self.trade_t,
            "trade_e": self.trade_e,
            "depth_e": self.depth_e,
            "counts": self.counts,
            "reasons": self.reasons,
            **self.state,
            "cpu_s": _own_cpu() - self.state.get("cpu_ready", 0),
        }


def _start_receiver() -> _Tally:
    """A receiver process's setup (uvloop when installed, a lower priority than the exchange's) and
    its empty tally."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    os.nice(RECEIVER_NICE)
    return _Tally()


def _receiver(base: str, clients: int, stop_at: Any, ready: Any, results: Any) -> None:
    """One receiver process: `clients` connections on btcusdt@trade + btcusdt@depth@100ms until the wall
    time in `stop_at` (a shared double, set by the parent once the load is over). Delays are the
    receive wall time minus the time in the message (trade: T, the trade's time, and E, when the gateway
    made the message; depth: E), kept as histograms in ms. Once the load is over, a connection stops
    after QUIET_S without a message."""
    import asyncio

    import aiohttp

    tally = _start_receiver()
    trade_t, trade_e, depth_e, counts = tally.trade_t, tally.trade_e, tally.depth_e, tally.counts
    state, reasons = tally.state, tally.reasons

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
            state["cpu_ready"] = _own_cpu()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    results.put(tally.result())


def _raw_receiver(base: str, clients: int, stop_at: Any, ready: Any, results: Any) -> None:
    """As _receiver, with a lean client: each connection is an asyncio protocol that parses the frames
    itself (no task or await per message), so the receivers' own CPU time adds less to the delays they
    measure. Each chunk read from a socket is stamped once, when it is read."""
    import asyncio
    import base64

    tally = _start_receiver()
    trade_t, trade_e, depth_e, counts = tally.trade_t, tally.trade_e, tally.depth_e, tally.counts
    state, reasons = tally.state, tally.reasons
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
            self.seen = 0
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
            # The few integers needed, found in the bytes (json.loads of every message cost the
            # receivers more CPU than the gateway spent sending it). Every 64th message is parsed
            # whole, as a check that the scanning reads what json does.
            trade = payload.find(b'"e":"trade"') >= 0
            e = _int_at(payload, b'"E":')
            if trade:
                self.trades += 1
                t = _int_at(payload, b'"T":')
                trade_t[now - t] = trade_t.get(now - t, 0) + 1
                trade_e[now - e] = trade_e.get(now - e, 0) + 1
            else:
                depth_e[now - e] = depth_e.get(now - e, 0) + 1
                first, last = _int_at(payload, b'"U":'), _int_at(payload, b'"u":')
                if self.last_u and first != self.last_u + 1:
                    state["gaps"] += 1
                self.last_u = last
            self.seen += 1
            if self.seen % 64 == 0:
                d = json.loads(payload)["data"]
                assert d["E"] == e and (d["T"] == t if trade else d["u"] == last), payload[:200]

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
        state["cpu_ready"] = _own_cpu()
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
    results.put(tally.result())


def _int_at(payload: bytes, tag: bytes) -> int:
    """The integer after `tag` (e.g. b'"E":') in a JSON message's bytes, where a comma follows it (as
    for every field read here: none is the last of its object)."""
    i = payload.find(tag) + len(tag)
    return int(payload[i : payload.find(b",", i)])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fan_out(
    base: str,
    clients: int,
    procs: int,
    load: Any,
    *,
    receiver: str = "raw",
    gateway_pids: Any = None,
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
    pids = gateway_pids() if gateway_pids else []
    cpu0 = sum(cpu_seconds(p) for p in pids)
    load()
    stop_at.value = time.time()  # the receivers drain what was sent during the load, then stop
    parts = [results.get(timeout=300) for _ in workers]
    gateway_cpu = sum(cpu_seconds(p) for p in pids) - cpu0
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
        # What the receivers themselves cost (separate processes, niced, on the same 2 cores), from
        # the end of their connecting until they drained.
        "receivers_cpu_s": round(sum(p["cpu_s"] for p in parts), 2),
        "receivers_cpu_us_per_message": (
            round(sum(p["cpu_s"] for p in parts) * 1e6 / delivered, 2) if delivered else None
        ),
    }


def _tree(pid: int) -> list[int]:
    """`pid` and the worker processes it started (the gateway's workers; not multiprocessing's
    resource tracker, which does nothing here)."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(int(k))
        except OSError:
            pass
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every process, ours or not: /proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of every process of the exchange (the gateway with its workers), of the load
    generators this process waited for (wrk), and of the whole machine, between `start` and `stop`."""

    def __init__(self, c: Cluster) -> None:
        self.c = c

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self.c.procs.items():
            total = 0.0
            for pid in _tree(proc.pid):
                with contextlib.suppress(OSError):
                    total += cpu_seconds(pid)
            out[name] = total
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["load generator (wrk)"] = kids.ru_utime + kids.ru_stime
        out["machine"] = machine_busy_s()
        return out

    def start(self) -> None:
        self.t0, self.before = time.monotonic(), self._read()

    def stop(self, per: int = 0) -> dict[str, Any]:
        after = self._read()
        wall = time.monotonic() - self.t0
        used = {k: round(after[k] - self.before.get(k, 0.0), 2) for k in after}
        machine = used.pop("machine")
        ours = sum(used.values())
        out: dict[str, Any] = {
            "wall_s": round(wall, 2),
            "cpu_s": used,
            "machine_busy_cores": round(machine / wall, 2),
            # what the machine spent outside this benchmark's processes (other users of the cores)
            "others_cpu_s": round(max(0.0, machine - ours), 2),
        }
        if per:
            out["cpu_us_per_order"] = {k: round(v * 1e6 / per, 1) for k, v in used.items() if v}
            # The ceiling of this machine for this pipeline: every core busy with these processes only.
            out["orders_per_s_if_all_cores_did_this"] = (
                round((os.cpu_count() or 1) * per / ours) if ours else None
            )
        return out


def run_exchange(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """Everything measured against one exchange whose gateway has `workers` worker processes."""
    result: dict[str, Any] = {"gateway_workers": workers, "accounts_shards": args.accounts_shards}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as d:
        where = Path(args.keep) / f"workers-{workers}" if args.keep else Path(d)
        c = Cluster(
            where,
            with_history=not args.no_consumers,
            with_market=not args.no_consumers,
            with_gateway=True,
            accounts_shards=args.accounts_shards,
            gateway_options={
                "weight_per_minute_ip": 1_000_000_000,
                "weight_per_minute_key": 1_000_000_000,
                "ws_connections_per_ip": 100_000,
                "workers": workers,
            },
        )
        c.start()
        meter = CpuMeter(c)
        try:
            admin = ggrpc.GatewayAdminServiceStub(c.channel("gateway"))
            keys = []
            # One key per user; each signed order is sent with the key of its user.
            for user in range(1, USERS + 1):
                c.accounts_of(user).Deposit(
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
                # Enough unique requests for the run at well above the rate reached, each of the next
                # of USERS users (with several accounts shards: spread over them).
                urls = signed_order_urls(base, keys, int(args.seconds * 12000) + 1000, run)
                meter.start()
                r = wrk(base, level, args.seconds, paths=[f"{k} {u}" for u, k in urls])
                r["cpu"] = meter.stop(r["ok"])
                entry.append(r)
                time.sleep(1.0)
            if entry:
                result["signed_order_entry"] = entry
            if not args.no_consumers and not args.only_ws:
                result["public"] = {
                    "depth": wrk(f"{base}/api/v3/depth?symbol=BTCUSDT&limit=100", 16, args.seconds),
                    "ticker_24hr": wrk(f"{base}/api/v3/ticker/24hr?symbol=BTCUSDT", 16, args.seconds),
                    "ping": wrk(f"{base}/api/v3/ping", 16, args.seconds),
                }
            if not args.no_consumers and args.ws_clients:
                seller, buyer = keys[-1], keys[-2]
                c.accounts_of(USERS).Deposit(
                    apb.DepositRequest(
                        user_id=USERS, asset="BTC", amount="1000", business="bench", business_id="btc"
                    )
                )
                n = int(args.seconds * 6000)  # per side: more than this machine reaches
                sells = signed_order_urls(base, [seller], n, 90, side="SELL", price="20000")
                buys = signed_order_urls(base, [buyer], n, 91, side="BUY", price="20000")

                def load() -> None:
                    import threading

                    out: dict[str, Any] = {}
                    meter.start()
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
                    orders = out["sell"]["ok"] + out["buy"]["ok"]
                    result["ws_load_rate_asked"] = args.ws_rate
                    result["ws_load_orders_per_s"] = round(
                        out["sell"]["ok_per_s"] + out["buy"]["ok_per_s"], 1
                    )
                    result["ws_load_cpu"] = meter.stop(orders)

                result["ws_fan_out"] = fan_out(
                    base,
                    args.ws_clients,
                    args.ws_procs,
                    load,
                    receiver=args.ws_receiver,
                    gateway_pids=lambda: _tree(c.procs["gateway"].pid),
                )
            result["orders_in_accounts"] = sum(
                c.accounts_shard(i).GetAccountsStatus(apb.GetAccountsStatusRequest()).last_order_id
                for i in range(args.accounts_shards)
            )
        finally:
            c.stop()
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of each run side by side (by gateway workers)."""
    out: dict[str, Any] = {}
    for r in runs:
        w = f"workers={r['gateway_workers']}"
        row: dict[str, Any] = {}
        for e in r.get("signed_order_entry", []):
            row[f"signed_entry_ok_per_s_c{e['connections']}"] = e["ok_per_s"]
        if "ws_fan_out" in r:
            f = r["ws_fan_out"]
            row["ws_load_orders_per_s"] = r.get("ws_load_orders_per_s")
            row["ws_trade_delay_p50_ms"] = f["trade_delay_from_trade_time_ms"]["p50"]
            row["ws_trade_delay_p99_ms"] = f["trade_delay_from_trade_time_ms"]["p99"]
            row["ws_depth_delay_p99_ms"] = f["depth_delay_from_gateway_event_ms"]["p99"]
            row["ws_drops"] = (
                f["dropped_connections"] + f["missed_trade_messages"] + f["depth_gaps"] + f["connect_failed"]
            )
        out[w] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--levels", default="1,16,64", help="connection counts for signed order entry")
    ap.add_argument(
        "--workers",
        default="1,2",
        help="gateway worker processes: one exchange per value, run one after another",
    )
    ap.add_argument("--accounts-shards", type=int, default=1, help="accounts shards behind the gateway")
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
    ap.add_argument("--keep", default="", help="run the exchanges in this directory and keep it (logs)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "bench": "gateway",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": args.seconds,
        "targets": {"signed_entry_ok_per_s_c64": 6800, "ws_delay_p99_ms": 100, "ws_drops": 0},
    }
    runs = [run_exchange(args, int(w)) for w in args.workers.split(",") if w]
    result["side_by_side"] = summary(runs)
    result["runs"] = runs
    emit(result, args.out or None)


if __name__ == "__main__":
    main()
