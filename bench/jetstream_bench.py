"""Journal backends side by side in one run: the file journal, JetStream R1 (the local NATS) and
JetStream R3 (a 3-node cluster this bench starts on ports 24301-24303), and failover timings.

    python bench/jetstream_bench.py [--out FILE] [--seconds S] [--parts append,host,failover]
        [--host-rounds 3] [--rounds 3]

1. append: one write_after of B records (~100 bytes each) then sync(), repeated for --seconds, for B in
   1, 100, 500: durable records/s and the latency of one append+sync (p50/p99). With JetStream one
   write_after is one stream message (a batch), acknowledged by the stream (R3: by a quorum).
2. pipelined: 8 batches of 100 appended (pipelined publishes), then one sync, repeated: records/s.
3. host: services.common.host.StateMachineHost over a trivial machine (one command record and one
   event per command) on each backend, 64 clients awaiting submit() and 4 clients awaiting
   submit_batch(100), for --seconds each: commands/s and latency p50/p99. Closed loops: every client
   waits in the one batch in flight, so these measure the round trip (R3's quorum acknowledgement
   against an fdatasync). "host_feed": one feeder like accounts' Forwarder into a matching shard
   (batches of 200 submitted without waiting, up to 20,000 unanswered): commands keep arriving
   while batches are in flight, so with JetStream several batches' publishes are pipelined
   (HostOptions.pipelined_inflight_batches, 8) and "host_feed_inflight2" shows the same with at most
   2 in flight. These are the figures to set against the file journal (issue 11's target: R3 at >=
   50% of it; ratios in <backend>_vs_file). Also with the command journal on R3 and the event log
   in a local file journal (services.cluster.journals.RoutedJournals: events regenerated per
   replica), "r3_commands_file_events", the cluster mode's layout. Each host scenario runs
   --host-rounds times with the backends alternating; the median run is reported (with every
   round's rate): the machine's other load shifts single runs by 2x and more.
4. failover (needs ZooKeeper): two services.cluster.contender processes for a shard with a 2 s
   session (the leader appends heartbeats to the shard's journal on R1): time from SIGKILL, then from
   SIGSTOP, of the leader until the other is elected (rounds each); and the R3 stream: time from
   SIGKILL of the stream leader until a fenced append is acknowledged again.
Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import emit  # noqa: E402
from services.cluster.journals import RoutedJournals  # noqa: E402
from services.cluster.servers import NatsCluster, ZooKeeper, port_open  # noqa: E402
from services.common.host import HostOptions, StateMachineHost  # noqa: E402
from services.common.journal import FileJournals, JournalFactory  # noqa: E402
from services.common.journal.jetstream import JetStreamJournals  # noqa: E402
from services.common.statemachine import CodecSpec, Outcome  # noqa: E402

PAYLOAD = b"x" * 100
FEED_BATCH = 200
FEED_WINDOW = 20_000


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def append_sync(factory: JournalFactory, name: str, batch: int, seconds: float) -> dict[str, float]:
    j = factory.open(name)
    recs = [PAYLOAD] * batch
    lat: list[float] = []
    n = 0
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        j.write_after(j.last_seq, recs)
        j.sync()
        lat.append(time.perf_counter() - t0)
        n += batch
    elapsed = time.perf_counter() - started
    j.close()
    return {
        "records_per_s": round(n / elapsed),
        "latency_ms_p50": round(statistics.median(lat) * 1e3, 3),
        "latency_ms_p99": round(pct(lat, 0.99) * 1e3, 3),
    }


def pipelined(factory: JournalFactory, name: str, seconds: float) -> dict[str, float]:
    j = factory.open(name)
    recs = [PAYLOAD] * 100
    n = 0
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(8):
            j.write_after(j.last_seq, recs)
            n += 100
        j.sync()
    elapsed = time.perf_counter() - started
    j.close()
    return {"records_per_s": round(n / elapsed)}


class _Echo:
    def __init__(self, applied: int = 0, events: int = 0) -> None:
        self._applied = applied
        self._events = events

    @property
    def applied_seq(self) -> int:
        return self._applied

    @property
    def event_seq(self) -> int:
        return self._events

    def apply(self, seq: int, time_us: int, command: bytes) -> Outcome:
        self._applied = seq
        self._events += 1
        return Outcome(result=seq, events=(command,))

    def snapshot(self) -> bytes:
        return b"%d,%d" % (self._applied, self._events)

    def state_hash(self) -> str:
        return self.snapshot().decode()

    @classmethod
    def restore(cls, data: bytes | None) -> _Echo:
        if data is None:
            return cls()
        a, e = data.split(b",")
        return cls(int(a), int(e))


_CODEC: CodecSpec[bytes] = CodecSpec(encode=lambda c, t: c, decode=lambda r: (r, 0))


async def _host_run(
    d: Path, journals: JournalFactory, clients: int, batch: int, seconds: float
) -> dict[str, float]:
    host: StateMachineHost[bytes, _Echo] = StateMachineHost(
        "bench",
        d,
        restore=_Echo.restore,
        codec=_CODEC,
        options=HostOptions(snapshot_every=0, fork_snapshots=False),
        journals=journals,
    )
    await host.start()
    commands = [PAYLOAD] * batch
    lat: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if batch == 1:
                await host.submit(PAYLOAD)
            else:
                await host.submit_batch(commands)
            lat.append(time.perf_counter() - t0)
            done += batch

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await host.stop(snapshot=False)
    return {
        "commands_per_s": round(done / elapsed),
        "latency_ms_p50": round(statistics.median(lat) * 1e3, 3),
        "latency_ms_p99": round(pct(lat, 0.99) * 1e3, 3),
    }


async def _host_feed(
    d: Path, journals: JournalFactory, seconds: float, inflight: int | None = None
) -> dict[str, float]:
    """A feeder like accounts' Forwarder into a matching shard: batches of FEED_BATCH commands
    submitted without waiting for their answers, up to FEED_WINDOW commands unanswered, so commands
    keep arriving while earlier batches are being made durable (what pipelined publishes are for)."""
    options = HostOptions(snapshot_every=0, fork_snapshots=False)
    if inflight is not None:
        options.pipelined_inflight_batches = inflight
    host: StateMachineHost[bytes, _Echo] = StateMachineHost(
        "bench", d, restore=_Echo.restore, codec=_CODEC, options=options, journals=journals
    )
    await host.start()
    commands = [PAYLOAD] * FEED_BATCH
    lat: list[float] = []
    done = 0
    unanswered = 0
    room = asyncio.Event()
    deadline = time.perf_counter() + seconds

    def answered(t0: float, _: asyncio.Future[list[Any]]) -> None:
        nonlocal done, unanswered
        lat.append(time.perf_counter() - t0)
        done += FEED_BATCH
        unanswered -= FEED_BATCH
        room.set()

    started = time.perf_counter()
    while time.perf_counter() < deadline:
        if unanswered + FEED_BATCH > FEED_WINDOW:
            room.clear()
            await room.wait()
            continue
        fut = host.submit_batch(commands)
        unanswered += FEED_BATCH
        fut.add_done_callback(partial(answered, time.perf_counter()))
        await asyncio.sleep(0)
    while unanswered:
        room.clear()
        await room.wait()
    elapsed = time.perf_counter() - started
    await host.stop(snapshot=False)
    return {
        "commands_per_s": round(done / elapsed),
        "batch_latency_ms_p50": round(statistics.median(lat) * 1e3, 3),
        "batch_latency_ms_p99": round(pct(lat, 0.99) * 1e3, 3),
    }


def backends(base: Path, r3_urls: list[str]) -> dict[str, Callable[[str], JournalFactory]]:
    tag = f"bench-{os.getpid()}"
    return {
        "file": lambda sub: FileJournals(base / sub),
        "jetstream_r1": lambda sub: JetStreamJournals(service=f"{tag}-r1-{sub}", replicas=1),
        "jetstream_r3": lambda sub: JetStreamJournals(r3_urls, service=f"{tag}-r3-{sub}", replicas=3),
        # host only: the command journal on R3, the event log regenerated locally (file)
        "r3_commands_file_events": lambda sub: RoutedJournals(
            {"commands": JetStreamJournals(r3_urls, service=f"{tag}-r3c-{sub}", replicas=3)},
            FileJournals(base / f"r3c-{sub}"),
        ),
    }


def _cleanup(factory: JournalFactory) -> None:
    if isinstance(factory, RoutedJournals):
        for f in factory.routes.values():
            _cleanup(f)
    if isinstance(factory, JetStreamJournals):
        factory.delete_streams()
        factory.close()


HOST_SCENARIOS = ("host_submit_c64", "host_batch100_c4", "host_feed", "host_feed_inflight2")


def _host_scenario(hl: str, d: Path, f: JournalFactory, seconds: float) -> dict[str, float]:
    if hl == "host_submit_c64":
        return asyncio.run(_host_run(d, f, 64, 1, seconds))
    if hl == "host_batch100_c4":
        return asyncio.run(_host_run(d, f, 4, 100, seconds))
    return asyncio.run(_host_feed(d, f, seconds, 2 if hl == "host_feed_inflight2" else None))


def _median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run with the median rate (its latencies with it), and every round's rate."""
    ranked = sorted(runs, key=lambda r: r["commands_per_s"])
    return {**ranked[len(ranked) // 2], "rounds_commands_per_s": [r["commands_per_s"] for r in runs]}


def journal_parts(
    base: Path, r3_urls: list[str], seconds: float, parts: set[str], host_rounds: int = 1
) -> dict[str, Any]:
    makers = backends(base, r3_urls)
    out: dict[str, Any] = {label: {} for label in makers}
    if "append" in parts:
        for label, make in makers.items():
            if label == "r3_commands_file_events":
                continue
            res = out[label]
            for b in (1, 100, 500):
                f = make(f"a{b}")
                res[f"append_sync_b{b}"] = append_sync(f, "commands", b, seconds)
                _cleanup(f)
            f = make("pipe")
            res["pipelined_8x100"] = pipelined(f, "commands", seconds)
            _cleanup(f)
    if "host" in parts:
        # Each scenario runs host_rounds times, the backends alternating within a round (the
        # machine's other load then weighs on all of them alike); the median run is reported.
        for hl in HOST_SCENARIOS:
            labels = [x for x in makers if not (hl == "host_feed_inflight2" and x == "file")]
            runs: dict[str, list[dict[str, float]]] = {x: [] for x in labels}
            for r in range(host_rounds):
                for label in labels:
                    f = makers[label](f"{hl}-{r}")
                    runs[label].append(_host_scenario(hl, base / f"{label}-{hl}-{r}", f, seconds))
                    _cleanup(f)
            for label in labels:
                out[label][hl] = _median_run(runs[label])
        for hl in ("host_submit_c64", "host_batch100_c4", "host_feed"):
            file_rate = out["file"][hl]["commands_per_s"]
            for other in ("jetstream_r3", "r3_commands_file_events"):
                ratio = round(out[other][hl]["commands_per_s"] / file_rate, 3)
                out.setdefault(f"{other}_vs_file", {})[hl] = ratio
    return out


def _contender(zk: str, shard: str, member: str) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cluster.contender",
            "--zk",
            zk,
            "--nats",
            "nats://127.0.0.1:4222",
            "--shard",
            shard,
            "--member",
            member,
            "--address",
            f"127.0.0.1:0{member}",
            "--session-timeout",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"},
    )
    events: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return proc, events


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def election_failover(zk: str, how: int, rounds: int) -> dict[str, Any]:
    times: list[float] = []
    for r in range(rounds):
        shard = f"bench-{os.getpid()}-{how}-{r}"
        a, ea = _contender(zk, shard, "1")
        try:
            _wait(lambda ea=ea: any(e["event"] == "appended" for e in ea), 20)
            b, eb = _contender(zk, shard, "2")
            try:
                _wait(lambda eb=eb: any(e["event"] == "contending" for e in eb), 20)
                time.sleep(0.3)
                t0 = time.time()
                a.send_signal(how)
                if _wait(lambda eb=eb: any(e["event"] == "elected" for e in eb), 20):
                    times.append(next(e["t"] for e in eb if e["event"] == "elected") - t0)
            finally:
                b.terminate()
                b.wait(15)
        finally:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.wait()
            f = JetStreamJournals(service=shard)
            f.delete_streams()
            f.close()
    return {
        "rounds": rounds,
        "handover_s": [round(t, 3) for t in times],
        "handover_s_max": round(max(times), 3) if times else None,
        "target_s": 2.5,
    }


def stream_leader_loss(cluster: NatsCluster) -> dict[str, Any]:
    f = JetStreamJournals(cluster.urls, service=f"bench-{os.getpid()}-loss", replicas=3)
    j = f.open("commands")
    for _ in range(10):
        j.write_after(j.last_seq, [PAYLOAD] * 100)
    j.sync()

    async def leader() -> str:
        info = await f.client.js.stream_info(f.stream("commands"))
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader

    victim = cluster.node_named(f.client.call(leader()))
    victim.kill()
    t0 = time.perf_counter()
    j.write_after(j.last_seq, [PAYLOAD] * 100)
    j.sync()
    resumed = time.perf_counter() - t0
    out = {"killed": victim.name, "resumed_s": round(resumed, 3), "new_leader": f.client.call(leader())}
    victim.start()
    _wait(lambda: port_open(victim.port), 30)
    cluster.wait_jetstream()
    j.close()
    f.delete_streams()
    f.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--parts", default="append,host,failover")
    parser.add_argument("--rounds", type=int, default=3, help="failover rounds per signal")
    parser.add_argument("--host-rounds", type=int, default=3, help="runs of each host scenario per backend")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    base = Path(tempfile.mkdtemp(prefix="jetstream-bench-"))
    cluster = NatsCluster(base / "nats", nodes=3, port=24301, cluster_port=26301)
    result: dict[str, Any] = {"bench": "jetstream", "seconds": args.seconds, "payload_bytes": len(PAYLOAD)}
    zk: ZooKeeper | None = None
    try:
        cluster.start()
        if parts & {"append", "host"}:
            result["journals"] = journal_parts(
                base / "files", cluster.urls, args.seconds, parts, args.host_rounds
            )
        if "failover" in parts:
            zk = ZooKeeper(base / "zk", nodes=1, port=24181, peer_port=24888, election_port=25888)
            zk.start()
            result["failover"] = {
                "sigkill": election_failover(zk.hosts, signal.SIGKILL, args.rounds),
                "sigstop": election_failover(zk.hosts, signal.SIGSTOP, args.rounds),
                "r3_stream_leader_kill": stream_leader_loss(cluster),
            }
    finally:
        cluster.stop()
        if zk is not None:
            zk.stop()
        shutil.rmtree(base, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
