"""End to end: the real services with their command journals on R3 JetStream against the file
journal, side by side in one run (issue 11: throughput with R3 at >= 50% of the file-journal figure).

    python bench/cluster_bench.py [--rounds 2] [--seconds 10] [--modes file,r3,r3_all]
        [--batch 500] [--streams 2] [--window 4] [--users 1000] [--paced-rate 3000] [--out FILE]

Starts a 3-node NATS JetStream cluster (ports 24501-24503, routes 26501-26503) and one ZooKeeper
server (port 24581) in a temporary directory, then alternates --rounds times the modes, each a fresh
exchange of real processes (testkit.cluster: accounts-0 and one matching shard matching-0):

- "file": both on their file command journals (the default single-process mode);
- "r3": matching in cluster mode (python -m services.matching --zk --nats --member a
  --stream-replicas 3, services.matching.replica), the one replica and so the leader of its shard:
  its command journal is the shard's R3 stream (a command is answered once a quorum of the three
  NATS servers stored it), its event log a local file journal; accounts on its file journal;
- "r3_all": accounts in cluster mode too (python -m services.accounts --zk --nats ...: its command
  journal the R3 stream of accounts-0).

Each exchange runs bench/e2e_bench.py's streaming flow twice (SubmitOrders batches of --batch
orders over --streams streams with --window unanswered each, 10 % crossing orders, three markets),
for --seconds each, with its probe process (a crossing IOC order every 20 ms timed from PlaceOrder
to its UserFill event):
1. saturated (as fast as it goes): accepted orders/s, fills/s, CPU per service and of the three
   NATS servers (their place->fill latency is mostly queueing, reported as saturated_...);
2. paced at --paced-rate orders/s: the place->fill latency p50/p99 with the pipeline not queued up,
   and the hop that holds matching's journal (matching_journal_event).
Reported per run, as the median per mode, and the ratios <mode>_vs_file of the medians (orders/s:
target >= 0.5; the place->fill p50 added). After each run its streams are deleted; each R3 run
elects under a ZooKeeper root of its own. Prints one JSON object (--out also writes it to a file).
Timing is noisy while other work shares the machine's cores: the modes alternate for that reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.e2e_bench import MARKETS, cpu_seconds, fund_with_ask_wall, run_mode, use_credentials  # noqa: E402
from bench.output import emit  # noqa: E402
from services.clients import AccountsClient  # noqa: E402
from services.cluster.servers import NatsCluster, ZooKeeper, port_open  # noqa: E402
from services.common.journal.jetstream import JetStreamJournals  # noqa: E402
from testkit.cluster import Cluster  # noqa: E402

SHARD = "matching-0"
ACCOUNTS = "accounts-0"
NATS_PORT, NATS_ROUTE_PORT, ZK_PORT = 24501, 26501, 24581


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


MODES = ("file", "r3", "r3_all")
R3_SERVICES = {"file": (), "r3": (SHARD,), "r3_all": (SHARD, ACCOUNTS)}


def make_cluster(directory: Path, mode: str, nats: NatsCluster, zk: ZooKeeper, round_no: int) -> Cluster:
    """An exchange whose R3_SERVICES[mode] run in cluster mode: each the one replica (so the leader)
    of its shard, its command journal the shard's R3 stream."""
    service_args: dict[str, list[str]] = {}
    for name in R3_SERVICES[mode]:
        service_args[name] = [
            "--zk",
            zk.hosts,
            "--nats",
            ",".join(nats.urls),
            "--member",
            "a",
            "--stream-replicas",
            "3",
            "--zk-root",
            f"/cluster-bench-{os.getpid()}-{mode}-{round_no}",
        ]
    return Cluster(directory, accounts_options={"max_outbox_lag": 1_000_000}, service_args=service_args)


def delete_streams(nats: NatsCluster, mode: str) -> None:
    """Delete the run's streams (the next run starts from empty ones); a failure is only reported."""
    for name in R3_SERVICES[mode]:
        f = JetStreamJournals(nats.urls, service=name)
        try:
            f.delete_streams()
        except Exception as exc:  # cleanup: say so and go on
            print(f"could not delete the streams of {name}: {exc!r}", file=sys.stderr)
        finally:
            f.close()


async def one_run(c: Cluster, args: argparse.Namespace, nats: NatsCluster) -> dict[str, Any]:
    """Saturation (as fast as the streams go) for orders/s, then a paced run at --paced-rate for the
    place->fill latency with the pipeline not queued up, on the same exchange."""
    async with AccountsClient.at(c.addresses["accounts-0"]) as accounts:
        await fund_with_ask_wall(accounts, args.users)
    out: dict[str, Any] = {}
    for phase, rate in (("saturated", 0), ("paced", args.paced_rate)):
        pids = [n.pid for n in nats.members]
        cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.monotonic()
        run = await run_mode(
            c, "stream", args.seconds, args.users, args.batch, args.streams, args.window, rate
        )
        run["nats_cpu_cores_used"] = round(
            (sum(cpu_seconds(p) for p in pids) - cpu0) / (time.monotonic() - t0), 2
        )
        out[phase] = run
    return out


def summary(runs: dict[str, Any]) -> dict[str, Any]:
    sat, paced = runs["saturated"], runs["paced"]
    return {
        "accepted_orders_per_s": sat["accepted_orders_per_s"],
        "sustained_min_orders_per_s": sat["sustained_min_orders_per_s"],
        "fills_per_s": sat["fills_per_s"],
        "saturated_place_to_fill_ms_p50": sat["place_to_fill_latency_ms"]["p50"],
        "cpu_cores_used": {**sat["cpu_cores_used"], "nats (3 servers)": sat["nats_cpu_cores_used"]},
        "paced_orders_per_s": paced["accepted_orders_per_s"],
        "place_to_fill_ms_p50": paced["place_to_fill_latency_ms"]["p50"],
        "place_to_fill_ms_p99": paced["place_to_fill_latency_ms"]["p99"],
        "place_to_fill_samples": paced["place_to_fill_latency_ms"]["samples"],
        "matching_journal_event_ms_p50": paced["hop_latency_ms"]["matching_journal_event"]["p50"],
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("accepted_orders_per_s", "fills_per_s", "place_to_fill_ms_p50", "place_to_fill_ms_p99")
    return {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}


def run_all(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    nats = NatsCluster(base / "nats", nodes=3, port=NATS_PORT, cluster_port=NATS_ROUTE_PORT)
    zk = ZooKeeper(base / "zk", nodes=1, port=ZK_PORT, peer_port=ZK_PORT + 300, election_port=ZK_PORT + 1300)
    result: dict[str, Any] = {
        "benchmark": "cluster: command journals on R3 JetStream (matching; matching and accounts) vs file",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "markets": list(MARKETS),
        "flow": {
            "entry": "stream",
            "seconds": args.seconds,
            "batch": args.batch,
            "streams": args.streams,
            "window": args.window,
            "users": args.users,
        },
        "runs": [],
    }
    busy = [
        p
        for p in (*range(NATS_PORT, NATS_PORT + 3), *range(NATS_ROUTE_PORT, NATS_ROUTE_PORT + 3), ZK_PORT)
        if port_open(p)
    ]
    if busy:  # servers of another run would answer in place of ours
        raise SystemExit(f"ports in use: {busy} (another cluster_bench running, or its servers left over)")
    try:
        nats.start()
        zk.start()
        for r in range(args.rounds):
            for mode in args.modes.split(","):
                directory = base / f"{mode}-{r}"
                c = make_cluster(directory, mode, nats, zk, r)
                try:
                    c.start(timeout=120)
                    for name in R3_SERVICES[mode]:
                        wait_for(lambda c=c, n=name: '"msg":"leading"' in c.log(n), 60, f"{name} leads")
                    use_credentials(str(c.config_path))
                    run = asyncio.run(one_run(c, args, nats))
                finally:
                    c.stop()
                    delete_streams(nats, mode)
                    shutil.rmtree(directory, ignore_errors=True)
                result["runs"].append({"mode": mode, "round": r, **summary(run), "detail": run})
                print(f"{mode} round {r}: {summary(run)}", file=sys.stderr, flush=True)
    finally:
        zk.stop()
        nats.stop()
    modes = [m for m in MODES if any(x["mode"] == m for x in result["runs"])]
    by_mode = {m: medians([x for x in result["runs"] if x["mode"] == m]) for m in modes}
    result["median"] = by_mode
    base_rate = by_mode.get("file", {}).get("accepted_orders_per_s")
    for m in modes:
        if m == "file" or not base_rate:
            continue
        ratio = round(by_mode[m]["accepted_orders_per_s"] / base_rate, 3)
        fills = by_mode["file"]["fills_per_s"]
        result[f"{m}_vs_file"] = {
            "orders_per_s": ratio,
            "fills_per_s": round(by_mode[m]["fills_per_s"] / fills, 3) if fills else None,
            "place_to_fill_p50_ms_added": round(
                by_mode[m]["place_to_fill_ms_p50"] - by_mode["file"]["place_to_fill_ms_p50"], 2
            ),
            "target_orders_per_s_ratio": 0.5,
            "target_met": ratio >= 0.5,
        }
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="runs per mode, the modes alternating")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--paced-rate", type=int, default=3000, help="orders/s of the latency run")
    ap.add_argument("--modes", default=",".join(MODES), help="which of file,r3,r3_all, in this order")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        result = run_all(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
