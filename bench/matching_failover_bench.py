"""Failover of a matching shard under load: two replica processes (python -m services.matching in
cluster mode: leader + hot follower, services.matching.replica) on a JetStream command journal
(R3 by default: a 3-node NATS cluster this bench starts on ports 25301-25303) and a ZooKeeper server
(port 25181), 2 s session.

    python bench/matching_failover_bench.py [--out FILE] [--signals kill,stop] [--batch 200]
        [--before 3] [--after 4] [--stream-replicas 3]

For each signal (SIGKILL, SIGSTOP) of the leader: one source (accounts-0) sends its chain of place
orders in batches of --batch commands through the client library (MatchingClient.submit_commands,
resolved by the ZooKeeperResolver; each batch acknowledged before the next) for --before seconds,
then the leader gets the signal and the load goes on for --after seconds after the new leader's
first acknowledgement. Reported:
- recovery_s: from the signal to the acknowledgement of the first batch the old leader cannot have
  answered (the one after the batch in flight at the signal);
- commands/s before (the --before window), during (the first second after the signal) and after
  (from 0.5 s after recovery to the end);
- checks: every acknowledged command is applied once by the new leader (its source sequence and
  applied sequence equal the last acknowledged: nothing_lost_nothing_twice), and for SIGSTOP the
  woken old leader exited 70, and how it learned (its append fenced by the stream, or deposed by
  ZooKeeper first).
One client, one source: batches are sequential (each acknowledged before the next), so the rates
are one chain's, not the shard's maximum.
Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exchange.v1 import events_pb2 as ev  # noqa: E402
from exchange.v1 import matching_service_pb2 as mpb  # noqa: E402
from exchange.v1 import types_pb2  # noqa: E402

from bench.output import emit  # noqa: E402
from services.clients.matching import MatchingClient  # noqa: E402
from services.clients.zk_resolver import ZooKeeperResolver  # noqa: E402
from services.cluster.servers import NatsCluster, ZooKeeper, port_open  # noqa: E402
from services.common.config import load_config  # noqa: E402
from services.common.journal.jetstream import JetStreamJournals  # noqa: E402
from services.common.security import Security, process_security  # noqa: E402
from testkit.cluster import free_port  # noqa: E402
from testkit.replicas import replica_argv, write_shard_config  # noqa: E402

SOURCE = "accounts-0"
SESSION_S = 2.0
READY = '"msg":"matching replica ready"'


def place(seq: int) -> ev.MatchingCommand:
    cmd = ev.MatchingCommand(source=SOURCE, source_sequence=seq, previous_sequence=seq - 1)
    o = cmd.place_order
    o.order_id = seq
    o.user_id = 1 + seq % 2
    o.market = "BTC_USDT"
    o.side = types_pb2.SIDE_BUY if seq % 2 else types_pb2.SIDE_SELL
    o.type = types_pb2.ORDER_TYPE_LIMIT
    o.time_in_force = types_pb2.TIME_IN_FORCE_GTC
    o.price_ticks = 3_000_000 + (seq % 7) * 100
    o.amount_lots = 100 + seq % 3
    return cmd


class Replica:
    def __init__(self, name: str, directory: Path, argv: list[str]) -> None:
        self.name = name
        self.directory = directory
        self.argv = argv
        self.address = argv[argv.index("--listen") + 1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        p = self.directory.with_suffix(".log")
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> None:
        out = open(self.directory.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


async def status(address: str, security: Security) -> mpb.GetMatchingStatusResponse:
    async with MatchingClient.at(address, security=security) as c:
        return await c.get_matching_status(mpb.GetMatchingStatusRequest(with_state_hash=True))


def leader_and_follower(
    resolver: ZooKeeperResolver, name: str, replicas: dict[str, Replica]
) -> tuple[Replica, Replica]:
    """Once ZooKeeper names a leader of `name` among the two `replicas` and it says it leads: (the
    leader, the other one)."""

    def leader() -> Replica | None:
        info = resolver.leader(name)
        found = [r for r in replicas.values() if info is not None and r.address == info.address]
        return found[0] if found and '"msg":"leading"' in found[0].log else None

    wait(lambda: leader() is not None, 30, "a leader")
    old = leader()
    assert old is not None and old.proc is not None
    return old, next(r for r in replicas.values() if r is not old)


def rate(acks: list[tuple[int, float, int]], t0: float, t1: float) -> float:
    n = sum(size for _, at, size in acks if t0 < at <= t1)
    return round(n / (t1 - t0), 1) if t1 > t0 else 0.0


def one_failover(
    base: Path, sig: int, zk_hosts: str, nats: list[str], stream_replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    shard = f"matching-bench-{sig}-{int(time.time())}"
    work = base / shard
    work.mkdir(parents=True)
    addresses = {m: f"127.0.0.1:{free_port()}" for m in ("a", "b")}
    config_path = write_shard_config(work / "exchange.toml", shard, addresses["a"])
    admin = process_security(load_config(config_path), "admin")
    writer = admin.as_principal(SOURCE)
    replicas: dict[str, Replica] = {}
    for m, address in addresses.items():
        argv = replica_argv(
            config_path,
            shard,
            m,
            address,
            work / m,
            zk_hosts=zk_hosts,
            nats=nats,
            session_s=SESSION_S,
            extra=["--stream-replicas", str(stream_replicas)],
        )
        replicas[m] = Replica(m, work / m, argv)
    resolver = ZooKeeperResolver(zk_hosts, session_timeout_s=5)
    try:
        for r in replicas.values():
            r.start()
        for r in replicas.values():
            wait(lambda r=r: READY in r.log, 60, f"replica {r.name}")

        old, new = leader_and_follower(resolver, shard, replicas)

        async def scenario() -> dict[str, Any]:
            acks: list[tuple[int, float, int]] = []  # (last sequence of the batch, ack time, size)
            state: dict[str, float] = {}
            stop = asyncio.Event()

            async def load() -> None:
                async with MatchingClient.resolve(resolver, shard, security=writer, timeout=20) as c:
                    seq = 0
                    while not stop.is_set():
                        batch = [place(i) for i in range(seq + 1, seq + 1 + args.batch)]
                        await c.submit_commands(SOURCE, batch)
                        seq += args.batch
                        acks.append((seq, time.monotonic(), args.batch))

            task = asyncio.create_task(load())
            t_start = time.monotonic()
            await asyncio.sleep(args.before)
            before = acks[-1][0] if acks else 0
            t_signal = time.monotonic()
            old.proc.send_signal(sig)  # type: ignore[union-attr]
            while not any(s > before + args.batch for s, _, _ in acks):
                if task.done():
                    await task
                await asyncio.sleep(0.01)
            t_recovered = next(at for s, at, _ in acks if s > before + args.batch)
            await asyncio.sleep(args.after)
            stop.set()
            await task
            t_end = acks[-1][1]
            state.update(t_signal=t_signal, t_recovered=t_recovered)
            last = acks[-1][0]
            lead = await status(new.address, admin)
            woken: dict[str, Any] = {}
            if sig == signal.SIGSTOP:
                old.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                code = await asyncio.to_thread(old.proc.wait, 30)  # type: ignore[union-attr]
                woken = {
                    "exit_code": code,
                    "fenced": "FencedError" in old.log,
                    "deposed": "deposed as leader" in old.log,
                }
            return {
                "signal": signal.Signals(sig).name,
                "batch": args.batch,
                "recovery_s": round(t_recovered - t_signal, 3),
                "commands_per_s": {
                    "before": rate(acks, t_start, t_signal),
                    "during_first_second": rate(acks, t_signal, t_signal + 1.0),
                    "after": rate(acks, t_recovered + 0.5, t_end),
                },
                "acknowledged": last,
                "new_leader": {
                    "applied_sequence": lead.applied_sequence,
                    "source_sequence": lead.source_sequences[SOURCE],
                    "event_sequence": lead.event_sequence,
                },
                "nothing_lost_nothing_twice": lead.applied_sequence == last == lead.source_sequences[SOURCE],
                **({"woken_old_leader": woken} if woken else {}),
            }

        return asyncio.run(scenario())
    finally:
        resolver.close()
        for r in replicas.values():
            r.stop()
        cleanup = JetStreamJournals(nats, service=shard)
        cleanup.delete_streams()
        cleanup.close()


OneFailover = Callable[[Path, int, str, list[str], int, argparse.Namespace], dict[str, Any]]


def run_failover_bench(
    name: str, doc: str | None, one_failover: OneFailover, *, batched: str, zk_port: int, nats_port: int
) -> None:
    """The command line and the servers of a failover bench (this one and
    bench/accounts_failover_bench.py): a ZooKeeper server on zk_port, an R3 NATS cluster from nats_port
    (or the local node), then `one_failover` per signal; one JSON object."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--signals", default="kill,stop")
    parser.add_argument("--batch", type=int, default=200, help=f"{batched} per acknowledged batch")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of load before the signal")
    parser.add_argument("--after", type=float, default=4.0, help="seconds of load after the recovery")
    parser.add_argument("--stream-replicas", type=int, default=3, choices=(1, 3))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--zk-tick-ms", type=int, default=200, help="ZooKeeper tickTime (sessions expire per tick)"
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix=f"{name.replace('_', '-')}-bench-"))
    cluster: NatsCluster | None = None
    zk = ZooKeeper(
        base / "zk",
        nodes=1,
        port=zk_port,
        peer_port=zk_port + 707,
        election_port=zk_port + 1707,
        tick_ms=args.zk_tick_ms,
    )
    result: dict[str, Any] = {
        "bench": name,
        "session_timeout_s": SESSION_S,
        "zk_tick_ms": args.zk_tick_ms,
        "stream_replicas": args.stream_replicas,
    }
    try:
        zk.start()
        if args.stream_replicas == 3:
            cluster = NatsCluster(base / "nats", nodes=3, port=nats_port, cluster_port=nats_port + 2000)
            cluster.start()
            nats = cluster.urls
        else:
            if not port_open(4222):
                raise SystemExit(
                    "--stream-replicas 1 uses the local NATS on 127.0.0.1:4222, which is not running"
                )
            nats = ["nats://127.0.0.1:4222"]
        sigs = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
        result["runs"] = [
            one_failover(base, sigs[s], zk.hosts, nats, args.stream_replicas, args)
            for s in args.signals.split(",")
        ]
    finally:
        if cluster is not None:
            cluster.stop()
        zk.stop()
        if args.keep:
            print(f"work directory: {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    emit(result, args.out)


def main() -> None:
    run_failover_bench(
        "matching_failover", __doc__, one_failover, batched="commands", zk_port=25181, nats_port=25301
    )


if __name__ == "__main__":
    main()
