"""Unary order entry measured by a C load generator (h2load), beside the same server's health Check.

    python bench/unary_bench.py [--seconds 10] [--clients 64] [--repeat 2] [--root DIR] [--out FILE]

Starts accounts and one matching shard (durable journals) in a temporary directory, funds one user,
then runs h2load (Debian's nghttp2-client) against the accounts server, side by side in one run:
- grpc.health.v1.Health/Check (the transport's own cost: no authentication, no journal);
- AccountsService/GetBalances with the bearer token (authentication and an ordinary read handler:
  what a call of ours costs before any journal);
- AccountsService/PlaceOrder with the bearer token (authenticated, journaled, fsynced, forwarded),
  at c=1 (latency) and c=--clients (throughput).
h2load cannot read gRPC trailers, so successes are counted by the exchange itself: the orders accepted
(last order id) must equal the requests h2load completed.

The runs alternate (Check, GetBalances, PlaceOrder, Check, ... --repeat times at each concurrency),
so a neighbour's load on a shared machine hits every side alike; the report gives every run, the best
and the median ratio, the CPU each service spent per request (from /proc: accounts and matching, every
thread; for accounts also by thread group: event loop, gRPC's C-core threads, the other Python
threads), the commands per journal batch of each host (its Prometheus counters), and the two targets
of issue 12: PlaceOrder at c=--clients >= 0.8x Check, and PlaceOrder's c=1 mean latency <= Check's +
2 fdatasyncs (an fdatasync measured in the same directory, same minute).

h2load comes from Debian's nghttp2-client (`apt-get install -y nghttp2-client`); --install-h2load
runs that when it is missing.

--root runs the same measurement against another checkout (e.g. a commit before authentication: the
token is then simply ignored), so "before" and "after" come from the same script on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--seconds", type=float, default=10.0)
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--repeat", type=int, default=2, help="alternating Check/PlaceOrder pairs per concurrency")
ap.add_argument("--install-h2load", action="store_true", help="apt-get install nghttp2-client if missing")
ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
ap.add_argument("--out", type=Path)
ARGS = ap.parse_args()
ROOT = ARGS.root.resolve()
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), os.environ.get("PYTHONPATH", "")])

from exchange.v1 import accounts_service_pb2 as apb  # noqa: E402
from exchange.v1 import types_pb2  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402
from h2load import h2load  # noqa: E402  (bench/h2load.py, beside this script)

from testkit.cluster import Cluster  # noqa: E402


def frame(message: Any) -> bytes:
    body: bytes = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time so far of a process's threads, in three groups: the event loop (the main thread,
    where every handler, the host's writer and the links run), gRPC's C-core threads (event_engine,
    timers: the transport's own work) and the other Python threads (gRPC's completion-queue poller,
    the host's journal thread: Python does not name them to the OS)."""
    out = {"event_loop": 0.0, "grpc_core_threads": 0.0, "other_python_threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if int(task.name) == pid:
            out["event_loop"] += seconds
        elif name.startswith(("event_engine", "grpc_", "lifeguard")):
            out["grpc_core_threads"] += seconds
        else:
            out["other_python_threads"] += seconds
    return out


def host_counters(port: int) -> dict[str, float]:
    """The host's Prometheus counters (commands journaled, journal batches, events) of one process."""
    import urllib.request

    wanted = {
        "exchange_host_commands_total": "commands",
        "exchange_host_batch_seconds_count": "batches",
        "exchange_host_events_total": "events",
    }
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                out[wanted[name]] = out.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def fdatasync_ms(directory: Path, n: int = 200) -> float:
    """Median latency of appending a small record and fdatasyncing it, in `directory`."""
    path = directory / "fdatasync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        times = []
        for _ in range(n):
            os.write(fd, b"x" * 128)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return round(statistics.median(times) * 1000, 3)


def latency_ms(text: str) -> float:
    """h2load's mean latency ("605us", "2.41ms", "1.2s") in milliseconds."""
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * scale, 3)
    return float("nan")


def ensure_h2load(install: bool) -> bool:
    if shutil.which("h2load") is not None:
        return True
    if install and shutil.which("apt-get") is not None:
        print("h2load not found: installing nghttp2-client", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], check=False)
        return shutil.which("h2load") is not None
    print(
        "h2load not found: apt-get install -y nghttp2-client (or run with --install-h2load)",
        file=sys.stderr,
    )
    return False


def _with_clients(c: Any, fund: Any) -> Callable[[], int]:
    """Funds the user as the wallet and returns a counter of accepted orders (typed clients)."""

    async def deposit() -> None:
        async with c.client("accounts-0", "wallet") as accounts:
            await accounts.deposit(fund, timeout=10)

    async def last() -> int:
        async with c.client("accounts-0", "admin") as accounts:
            st = await accounts.get_accounts_status(timeout=10)
            return int(st.last_order_id)

    asyncio.run(deposit())
    return lambda: asyncio.run(last())


def _with_stubs(c: Any, fund: Any, has_auth: bool) -> Callable[[], int]:
    """The same with the generated stubs (an older checkout without services.clients)."""
    from exchange.v1 import accounts_service_pb2_grpc as agrpc

    wallet = c.channel("accounts-0", "wallet") if has_auth else c.channel("accounts-0")
    agrpc.AccountsServiceStub(wallet).Deposit(fund, timeout=10)
    status = agrpc.AccountsServiceStub(
        c.channel("accounts-0", "admin") if has_auth else c.channel("accounts-0")
    )
    return lambda: int(status.GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=10).last_order_id)


def main() -> int:
    if not ensure_h2load(ARGS.install_h2load):
        return 2
    with tempfile.TemporaryDirectory(prefix="unary-bench-") as tmp:
        from testkit.cluster import free_port

        metrics = {"accounts-0": free_port(), "matching-0": free_port()}
        c = Cluster(
            Path(tmp),
            accounts_options={
                "max_outbox_lag": 10_000_000,
                "metrics_listen": f"127.0.0.1:{metrics['accounts-0']}",
            },
            shard_options={"metrics_listen": f"127.0.0.1:{metrics['matching-0']}"},
        )
        c.start()
        try:
            has_auth = hasattr(c, "token")
            token = c.token("trader") if has_auth else "none"
            fund = apb.DepositRequest(
                user_id=1, asset="USDT", amount="10000000000", business="bench", business_id="u1"
            )
            if hasattr(c, "client"):  # a checkout with services.clients: typed clients, as the wallet
                last_order = _with_clients(c, fund)
            else:  # an older checkout (--root): its own stubs
                last_order = _with_stubs(c, fund, has_auth)
            order = apb.PlaceOrderRequest(
                user_id=1,
                market="BTC_USDT",
                side=types_pb2.SIDE_BUY,
                type=types_pb2.ORDER_TYPE_LIMIT,
                price="5000",
                amount="0.001",
            )
            files = Path(tmp)
            (files / "check.bin").write_bytes(frame(health_pb2.HealthCheckRequest()))
            (files / "order.bin").write_bytes(frame(order))
            read = apb.GetBalancesRequest(user_id=1, assets=["USDT"])
            (files / "read.bin").write_bytes(frame(read))
            base = f"http://{c.addresses['accounts-0']}"
            auth = [f"authorization: Bearer {token}"]

            pids = {name: proc.pid for name, proc in c.procs.items()}
            runs: dict[str, list[dict[str, Any]]] = {}
            fsync_ms: list[float] = []
            for clients in (1, ARGS.clients):
                for _ in range(ARGS.repeat):
                    for kind, path, data in (
                        ("check", "/grpc.health.v1.Health/Check", "check.bin"),
                        ("get_balances", "/exchange.v1.AccountsService/GetBalances", "read.bin"),
                        ("place_order", "/exchange.v1.AccountsService/PlaceOrder", "order.bin"),
                    ):
                        before = last_order()
                        counters0 = {n: host_counters(port) for n, port in metrics.items()}
                        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
                        threads0 = thread_cpu_seconds(pids["accounts-0"])
                        result = h2load(base + path, files / data, clients, ARGS.seconds, auth)
                        cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()}
                        threads1 = thread_cpu_seconds(pids["accounts-0"])
                        done = max(1, result["requests_done"])
                        result["cpu_us_per_request"] = {
                            n: round((cpu1[n] - cpu0[n]) * 1e6 / done) for n in pids
                        }
                        result["accounts_cpu_us_per_request_by_thread"] = {
                            g: round((threads1[g] - threads0[g]) * 1e6 / done) for g in threads1
                        }
                        time.sleep(0.5)  # settlement of the last orders, for the batch counters
                        for n, port in metrics.items():
                            c1 = host_counters(port)
                            commands = c1.get("commands", 0) - counters0[n].get("commands", 0)
                            batches = c1.get("batches", 0) - counters0[n].get("batches", 0)
                            if commands:
                                result.setdefault("journal", {})[n] = {
                                    "commands": int(commands),
                                    "batches": int(batches),
                                    "commands_per_batch": round(commands / max(1, batches), 2),
                                }
                        result["mean_latency_ms"] = latency_ms(result["mean_latency"])
                        if kind == "place_order":
                            result["orders_accepted"] = last_order() - before
                        runs.setdefault(f"{kind}_c{clients}", []).append(result)
                    fsync_ms.append(fdatasync_ms(files))
        finally:
            c.stop()
    n = ARGS.clients
    ratios = [
        p["requests_per_s"] / ch["requests_per_s"]
        for ch, p in zip(runs[f"check_c{n}"], runs[f"place_order_c{n}"], strict=True)
    ]
    c1_excess = [
        p["mean_latency_ms"] - ch["mean_latency_ms"]
        for ch, p in zip(runs["check_c1"], runs["place_order_c1"], strict=True)
    ]
    fsync = statistics.median(fsync_ms)

    def median_cpu(key: str) -> dict[str, int]:
        return {
            n: round(statistics.median(r["cpu_us_per_request"][n] for r in runs[key]))
            for n in runs[key][0]["cpu_us_per_request"]
        }

    report = {
        "benchmark": "unary order entry (h2load)",
        "root": str(ROOT),
        "authenticated": has_auth,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds_per_run": ARGS.seconds,
        "runs": runs,
        "place_over_check_ratio": round(statistics.median(ratios), 3),
        "place_over_check_ratio_best": round(max(ratios), 3),
        "place_over_check_ratio_target": 0.8,
        "c1_place_minus_check_ms": round(statistics.median(c1_excess), 3),
        "fdatasync_ms": fsync,
        "c1_target_ms": round(2 * fsync, 3),
        # Median CPU per request of each service (every thread): Check is gRPC's own per-call cost,
        # GetBalances adds authentication and an ordinary handler, PlaceOrder the journal, forward and
        # settlement.
        "median_cpu_us_per_request": {key: median_cpu(key) for key in sorted(runs)},
        "targets_met": {
            f"place_over_check_c{n}": statistics.median(ratios) >= 0.8,
            "c1_mean_within_check_plus_2_fdatasyncs": statistics.median(c1_excess) <= 2 * fsync,
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if ARGS.out:
        ARGS.out.parent.mkdir(parents=True, exist_ok=True)
        ARGS.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
