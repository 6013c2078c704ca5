"""History ingest benchmark: rows/s into SQLite, PostgreSQL and MariaDB.

    python bench/history_bench.py [--orders 20000] [--batches 500,2000,5000]
                                  [--backends sqlite,postgresql,mariadb] [--process]
                                  [--e2e SECONDS] [--replay SECONDS [--rate N]] [--out FILE]

The events come from the real accounts and matching state machines (testkit.history_sim: random limit,
market and IOC orders on three markets over two shards, cancels and amends, 40 users), so the mix is the
real one: per order about 2.7 matching events and 11 accounts events (7-8 balance changes, including the
fee account's, ~2 order states, ~1.5 user fills).

"store" runs: HistoryStore.ingest_* in process, each source cut into batches of `batch_events` and
written round-robin as the consumers would (one transaction per batch, with its checkpoint) into a fresh
database. Reported: events/s, rows/s (trades + balance rows + order upserts) and the equivalent orders/s.

--e2e SECONDS runs the real exchange (testkit.cluster.Cluster: matching, accounts and history processes)
under bench/e2e_bench.py's streaming order flow for that long and samples, every second, how far
history's checkpoints are behind the accounts and matching event sequences: a lag that stays flat means
history keeps up with the matching rate.

--replay SECONDS [--rate 10000] separates history's own pace from the CPU it takes from the exchange
on this 2-core machine: it first runs accounts + matching alone (durable journals) under the same paced
streaming flow and reads back every event they logged, then feeds those events to a real
`python -m services.history` process at the pace they were produced (each released when its source time
stamp comes round again) and samples, every 50 ms, how long the oldest released but unstored event has
waited: the lag history would show behind that load.

--process also runs `python -m services.history` as a real process against in-process fake upstream
gRPC streams serving the same events, and reports the end-to-end events/s from the first stored event
to the last (startup excluded); this includes gRPC transport and parsing, on the same 2 cores.

PostgreSQL / MariaDB (postgresql+psycopg://postgres@127.0.0.1:5432/test, mysql+pymysql://root@
127.0.0.1:3306/test; override with HISTORY_BENCH_POSTGRES_URL / HISTORY_BENCH_MARIADB_URL) get a fresh
database per run, dropped afterwards; an unreachable server is reported as skipped.
Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.output import emit  # noqa: E402
from services.history.store import HistoryStore, create_history_engine, migrate  # noqa: E402
from testkit.history_sim import ACCOUNTS, Flow, generate  # noqa: E402

SERVERS = {
    "postgresql": os.environ.get(
        "HISTORY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("HISTORY_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh database URL of `backend`, removed afterwards."""
    if backend == "sqlite":
        d = tempfile.mkdtemp(prefix="history-bench-")
        try:
            yield f"sqlite:///{d}/history.sqlite"
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    name = f"history_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        yield make_url(SERVERS[backend]).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as conn:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        finally:
            admin.dispose()


def batches(flow: Flow, size: int) -> list[tuple[str, list[Any]]]:
    """Every source cut into `size`-event batches, interleaved round-robin."""
    per_source: dict[str, list[Any]] = {name: list(events) for name, events in flow.matching.items()}
    per_source[ACCOUNTS] = flow.accounts
    cursors = dict.fromkeys(per_source, 0)
    out: list[tuple[str, list[Any]]] = []
    while any(cursors[s] < len(e) for s, e in per_source.items()):
        for s, events in per_source.items():
            i = cursors[s]
            if i < len(events):
                out.append((s, events[i : i + size]))
                cursors[s] = i + size
    return out


def store_run(backend: str, flow: Flow, size: int) -> dict[str, Any]:
    with database(backend) as url:
        engine = create_history_engine(url)
        try:
            migrate(engine)
            store = HistoryStore(engine)
            work = batches(flow, size)
            rows = {"trades": 0, "balance_history": 0, "orders": 0}
            t0 = time.perf_counter()
            for source, events in work:
                if source == ACCOUNTS:
                    r = store.ingest_accounts(source, events)
                else:
                    r = store.ingest_matching(source, events)
                rows["trades"] += r.trades
                rows["balance_history"] += r.balances
                rows["orders"] += r.orders
            seconds = time.perf_counter() - t0
            assert store.checkpoints() == flow.sources
            writer = store.writer.name
        finally:
            engine.dispose()
    total_rows = sum(rows.values())
    return {
        "backend": backend,
        "mode": "store",
        "bulk_write": writer,
        "batch_events": size,
        "transactions": len(work),
        "seconds": round(seconds, 3),
        "events_per_s": round(flow.event_count / seconds),
        "rows_per_s": round(total_rows / seconds),
        "orders_per_s_equivalent": round(flow.orders_placed / seconds),
        "rows": rows,
    }


def process_run(backend: str, flow: Flow) -> dict[str, Any]:
    """`python -m services.history` against fake upstreams: first stored event -> last."""
    from testkit.fake_upstream import FakeUpstreams

    with (
        database(backend) as url,
        FakeUpstreams(flow, per_response=2000, resend=0) as fakes,
        history_process(fakes, url) as (_, wait),
    ):
        t0 = time.perf_counter()
        fakes.set(paused=False)
        wait(lambda cps: cps == flow.sources)
        seconds = time.perf_counter() - t0
    events = flow.event_count
    return {
        "backend": backend,
        "mode": "process",
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "orders_per_s_equivalent": round(flow.orders_placed * events / flow.event_count / seconds),
    }


def e2e_run(backend: str, seconds: float) -> dict[str, Any]:
    """The real services under the e2e benchmark's streaming flow; history's lag sampled each second."""
    import asyncio

    from exchange.v1 import accounts_service_pb2 as apb
    from exchange.v1 import history_service_pb2 as hpb
    from exchange.v1 import matching_service_pb2 as mpb

    from bench.e2e_bench import fund, run_mode, use_credentials
    from services.clients import AccountsClient
    from testkit.cluster import Cluster

    async def main(url: str | None) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="history-bench-e2e-") as tmp:
            c = Cluster(
                Path(tmp), with_history=True, history_url=url, accounts_options={"max_outbox_lag": 1_000_000}
            )
            c.start()
            try:
                use_credentials(str(c.config_path))  # this process acts as admin (services.clients)
                async with AccountsClient.at(c.addresses["accounts-0"]) as accounts:
                    await fund(accounts, 1000)
                samples: list[dict[str, Any]] = []
                load_done = asyncio.Event()

                async def sample() -> None:
                    async with c.clients() as clients:
                        h, a, m = clients.history, clients.accounts, clients.matching("matching-0")
                        t0 = time.monotonic()
                        while True:
                            hs = await h.get_history_status(hpb.GetHistoryStatusRequest())
                            cps = dict(hs.checkpoints)
                            acc = (await a.get_accounts_status(apb.GetAccountsStatusRequest())).event_sequence
                            mat = (await m.get_matching_status(mpb.GetMatchingStatusRequest())).event_sequence
                            s = {
                                "t": round(time.monotonic() - t0, 1),
                                "accounts_lag": acc - cps.get("accounts-0", 0),
                                "matching_lag": mat - cps.get("matching-0", 0),
                                "accounts_events": acc,
                                "matching_events": mat,
                            }
                            samples.append(s)
                            if load_done.is_set() and s["accounts_lag"] == 0 and s["matching_lag"] == 0:
                                return
                            await asyncio.sleep(1.0)

                sampler = asyncio.create_task(sample())
                run = await run_mode(c, "stream", seconds, 1000, 500, 2, 4)
                load_done.set()
                t_end = time.monotonic()
                loaded = len(samples)  # samples taken while the load ran
                await asyncio.wait_for(sampler, 120)
                caught_up_s = time.monotonic() - t_end
            finally:
                c.stop()
        during = samples[:loaded]
        # upstream event rate while orders flowed: from the first sample that moved to the last one
        total = [s["accounts_events"] + s["matching_events"] for s in during]
        moving = [i for i in range(1, len(total)) if total[i] > total[i - 1]]
        rate = None
        if len(moving) >= 2:
            a, b = moving[0], moving[-1]
            rate = (total[b] - total[a]) / (during[b]["t"] - during[a]["t"])
        return {
            "backend": backend,
            "mode": "e2e",
            "seconds": seconds,
            "accepted_orders_per_s": run["accepted_orders_per_s"],
            "fills_per_s": run["fills_per_s"],
            "upstream_events_per_s": round(rate) if rate else None,
            "max_lag_events": {
                "accounts": max((s["accounts_lag"] for s in during), default=0),
                "matching": max((s["matching_lag"] for s in during), default=0),
            },
            "caught_up_after_run_s": round(caught_up_s, 1),
            "lag_samples": samples,
        }

    if backend == "sqlite":
        return asyncio.run(main(None))
    with database(backend) as url:
        return asyncio.run(main(url))


def record_run(seconds: float, rate: int) -> tuple[Flow, dict[str, Any]]:
    """Run accounts + one matching shard (no history) under e2e_bench's paced streaming flow and read back
    every event they logged, with their source time stamps."""
    import asyncio

    from exchange.v1 import events_pb2 as ev

    from bench.e2e_bench import fund, run_mode, use_credentials
    from services.clients import AccountsClient
    from services.common.journal import FileJournal
    from testkit.cluster import Cluster

    async def load(c: Cluster) -> dict[str, Any]:
        use_credentials(str(c.config_path))  # this process acts as admin (services.clients)
        async with AccountsClient.at(c.addresses["accounts-0"]) as accounts:
            await fund(accounts, 1000)
        return await run_mode(c, "stream", seconds, 1000, 200, 2, 8, rate)

    def read_all(directory: Path, parse: Any) -> list[Any]:
        journal = FileJournal(directory)
        out: list[Any] = []
        seq = journal.first_seq
        while seq <= journal.last_seq:
            records = journal.read(seq, max_records=20_000)
            out.extend(parse(p) for _, p in records)
            seq = records[-1][0] + 1
        journal.close()
        return out

    with tempfile.TemporaryDirectory(prefix="history-bench-record-") as tmp:
        c = Cluster(Path(tmp), accounts_options={"max_outbox_lag": 1_000_000})
        c.start()
        try:
            run = asyncio.run(load(c))
        finally:
            c.stop()
        data = Path(tmp) / "data"
        flow = Flow(
            matching={"matching-0": read_all(data / "matching-0" / "events", ev.MatchingEvent.FromString)},
            accounts=read_all(data / "accounts-0" / "events", ev.AccountEvent.FromString),
            orders_placed=run["accepted_orders"],
        )
    return flow, run


def replay_run(backend: str, flow: Flow, recorded: dict[str, Any]) -> dict[str, Any]:
    """`python -m services.history` fed the recorded events at the pace they were produced (each event
    released when its source time stamp comes round again); its lag sampled every 50 ms."""
    import bisect

    from exchange.v1 import history_service_pb2 as pb

    from testkit.fake_upstream import FakeUpstreams

    streams: list[list[Any]] = [*flow.matching.values(), flow.accounts]
    origin = min(events[0].time_us for events in streams)
    with database(backend) as url, FakeUpstreams(flow, raw=True, per_response=2000, resend=0) as fakes:
        release = {name: [(e.time_us - origin) / 1e6 for e in f.events] for name, f in fakes.feeds.items()}
        for name, feed in fakes.feeds.items():
            feed.release_s = release[name]
        with history_process(fakes, url, {"matching-0": []}, batch_size=None) as (stub, _):
            t0 = time.monotonic()
            fakes.set(started_at=t0, paused=False)
            end = max(r[-1] for r in release.values())
            lag_by_second: dict[int, float] = {}
            while True:
                cps = dict(stub.GetHistoryStatus(pb.GetHistoryStatusRequest(), timeout=5).checkpoints)
                now = time.monotonic() - t0
                lag = 0.0
                for name, rel in release.items():
                    stored = cps.get(name, 0)
                    released = bisect.bisect_right(rel, now)
                    if stored < released:  # the oldest event not stored yet: how long it waited
                        lag = max(lag, now - rel[stored])
                second = int(now)
                lag_by_second[second] = max(lag_by_second.get(second, 0.0), lag)
                if now > end and cps == flow.sources:
                    break
                if now > end + 300:
                    raise TimeoutError("history did not catch up")
                time.sleep(0.05)
            caught_up_s = time.monotonic() - t0 - end
    # the load window: the seconds in which orders were accepted at the recorded pace
    accounts_per_s = _per_second(release["accounts-0"])
    matching_per_s = _per_second(release["matching-0"])
    busy = [s for s, n in accounts_per_s.items() if n > 0.5 * max(accounts_per_s.values())]
    window = range(min(busy), max(busy) + 1)
    lags = [lag_by_second.get(s, 0.0) for s in window]
    return {
        "backend": backend,
        "mode": "replay",
        "recorded": {
            "accepted_orders_per_s": recorded["accepted_orders_per_s"],
            "accepted_orders_per_second_timeline": recorded["accepted_orders_per_second_timeline"],
            "seconds": recorded["seconds"],
            "fills_per_s": recorded["fills_per_s"],
        },
        "events": flow.sources,
        "replayed_events_per_s_under_load": {
            "accounts": round(sum(accounts_per_s.get(s, 0) for s in window) / len(window)),
            "matching": round(sum(matching_per_s.get(s, 0) for s in window) / len(window)),
        },
        "lag_seconds_per_second_under_load": [round(x, 2) for x in lags],
        "max_lag_seconds_under_load": round(max(lags), 2),
        "caught_up_after_last_event_s": round(caught_up_s, 2),
    }


def _per_second(release: list[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in release:
        out[int(t)] = out.get(int(t), 0) + 1
    return out


@contextmanager
def history_process(
    fakes: Any, url: str, shards: dict[str, list[str]] | None = None, **toml: Any
) -> Iterator[tuple[Any, Any]]:
    """`python -m services.history` against `fakes` (their streams held until the caller lets them go)
    and `url`, started and answering; yields its stub and `wait(done)`, which polls its checkpoints until
    done(checkpoints). Stopped with SIGTERM afterwards."""
    from exchange.v1 import history_service_pb2 as pb
    from exchange.v1 import history_service_pb2_grpc as pbg

    from services.clients import sync_channel
    from services.common.config import load_config
    from services.common.security import process_security
    from testkit.cluster import DEFAULT_MARKETS, free_port

    with tempfile.TemporaryDirectory(prefix="history-bench-") as d:
        address = f"127.0.0.1:{free_port()}"
        config = Path(d) / "exchange.toml"
        config.write_text(fakes.config_toml(address, url, DEFAULT_MARKETS, shards, **toml))
        fakes.set(paused=True)  # hold the streams until the process is up
        # The credentials the process will find in its data directory, generated first: the bench
        # reads history's status as admin.
        security = process_security(load_config(config), "admin", create=True)
        with open(Path(d) / "history.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.history", "--config", str(config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            with sync_channel(address, security=security) as ch:
                stub = pbg.HistoryServiceStub(ch)

                def wait(done: Any) -> dict[str, int]:
                    return _wait_status(stub, pb, done, proc, d)

                wait(lambda cps: True)
                yield stub, wait
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _wait_status(stub: Any, pb: Any, done: Any, proc: subprocess.Popen[bytes], d: str) -> dict[str, int]:
    import grpc

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((Path(d) / "history.log").read_text()[-3000:])
        try:
            cps = dict(stub.GetHistoryStatus(pb.GetHistoryStatusRequest(), timeout=2).checkpoints)
        except grpc.RpcError:
            time.sleep(0.05)
            continue
        if done(cps):
            return cps
        time.sleep(0.01)
    raise TimeoutError("history did not catch up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--batches", default="500,2000,5000", help="events per transaction (store runs)")
    ap.add_argument("--backends", default="sqlite,postgresql,mariadb")
    ap.add_argument("--process", action="store_true", help="also run the real process end to end")
    ap.add_argument(
        "--e2e", type=float, default=0.0, help="seconds of the real exchange with history (0 = off)"
    )
    ap.add_argument(
        "--replay",
        type=float,
        default=0.0,
        help="seconds of paced load to record from accounts + matching, then replay into history (0 = off)",
    )
    ap.add_argument("--rate", type=int, default=10_000, help="orders/s of the recorded load (--replay)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    e2e_runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if args.e2e > 0:  # first, in a small process: the generated flow below would slow the load clients
        for backend in backends:
            try:
                run = e2e_run(backend, args.e2e)
            except Exception as exc:
                if backend == "sqlite":
                    raise
                skipped[backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            e2e_runs.append(run)
            print(
                json.dumps({k: v for k, v in run.items() if k != "lag_samples"}), file=sys.stderr, flush=True
            )
    if args.replay > 0:  # also before the generated flow, for the same reason
        recorded, load = record_run(args.replay, args.rate)
        print(json.dumps({k: load[k] for k in ("accepted_orders_per_s", "fills_per_s")}), file=sys.stderr)
        for backend in backends:
            try:
                run = replay_run(backend, recorded, load)
            except Exception as exc:
                if backend == "sqlite":
                    raise
                skipped[backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            e2e_runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
        del recorded
    t0 = time.perf_counter()
    flow = generate(args.orders, seed=1)
    generated_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "benchmark": "history-ingest",
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "flow": {
            "orders": flow.orders_placed,
            "events": flow.event_count,
            "events_per_source": flow.sources,
            "kinds": flow.kinds(),
            "events_per_order": round(flow.event_count / flow.orders_placed, 2),
            "generated_in_s": round(generated_s, 1),
        },
        "runs": [],
        "skipped": skipped,
    }
    sizes = [int(s) for s in args.batches.split(",") if s]
    for backend in backends:
        if backend in skipped:
            continue
        try:
            for size in sizes:
                run = store_run(backend, flow, size)
                result["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
            if args.process:
                run = process_run(backend, flow)
                result["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
        except Exception as exc:  # an unreachable server: report and go on
            if backend == "sqlite":
                raise
            result["skipped"][backend] = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
    result["runs"].extend(e2e_runs)
    emit(result, args.out)


if __name__ == "__main__":
    main()
