"""Time for a new replica of a matching shard to recover: from the shard's shared snapshot against a
replay of the whole command stream, side by side in one run (issue 11: "time to recover"; snapshots
where every replica can load them, services.cluster.snapshots).

    python bench/replica_join_bench.py [--commands 200000] [--batch 500] [--snapshot-every 50000]
        [--rounds 1] [--stream-replicas 1] [--out FILE]

Per round and mode, a fresh shard (python -m services.matching in cluster mode, ZooKeeper on port
25281, the JetStream command journal on the local NATS or, with --stream-replicas 3, on a 3-node
cluster this bench starts on ports 25401-25403):
- "shared": `snapshot_every = --snapshot-every`: the leader shares its snapshots in the shard's object
  store bucket and prunes the stream below the second-newest one;
- "replay": `snapshot_every = 0`: no snapshots, the stream holds every command.
The leader gets --commands place-order commands (a chain of crossing orders, batches of --batch
through the client library), then a second replica starts with an empty data directory. Reported:
join_s (its start to "matching replica ready": restore + replay), caught_up_s (to its applied
sequence being the leader's, state hash equal), the records the stream still held, the joiner's
resident memory once caught up (its in-memory copy of the stream is part of it), and the ratio
replay/shared of join_s. Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.matching_failover_bench import READY, SOURCE, Replica, place, status, wait  # noqa: E402
from bench.output import emit  # noqa: E402
from services.clients.matching import MatchingClient  # noqa: E402
from services.cluster.servers import NatsCluster, ZooKeeper, port_open  # noqa: E402
from services.common.config import load_config  # noqa: E402
from services.common.journal.jetstream import JetStreamJournals, decode_message  # noqa: E402
from services.common.security import process_security  # noqa: E402
from testkit.cluster import free_port  # noqa: E402
from testkit.replicas import replica_argv, write_shard_config  # noqa: E402

ZK_PORT, NATS_PORT = 25281, 25401


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def stream_first_record(journals: JetStreamJournals) -> int:
    js, stream = journals.client.js, journals.stream("commands")
    info = journals.client.call(js.stream_info(stream))
    msg = journals.client.call(js.get_msg(stream, info.state.first_seq))
    first, _ = decode_message(msg.data or b"")  # (the opening marker names the first record too)
    return first


def one_run(
    base: Path, mode: str, zk_hosts: str, nats: list[str], round_: int, args: argparse.Namespace
) -> dict[str, Any]:
    name = f"matching-join-{mode}-{round_}"
    work = base / name
    work.mkdir()
    every = args.snapshot_every if mode == "shared" else 0
    addresses = {m: f"127.0.0.1:{free_port()}" for m in ("a", "j")}
    config = write_shard_config(
        work / "exchange.toml", name, addresses["a"], settings=[f"snapshot_every = {every}"]
    )
    security = process_security(load_config(config), "admin")
    writer = security.as_principal(SOURCE)
    replicas: dict[str, Replica] = {}
    for m, address in addresses.items():
        extra = [
            "--zk-root",
            f"/{name}",
            "--stream-replicas",
            str(args.stream_replicas),
            "--metrics-listen",
            "",
        ]
        argv = replica_argv(config, name, m, address, work / m, zk_hosts=zk_hosts, nats=nats, extra=extra)
        replicas[m] = Replica(m, work / m, argv)
    leader, joiner = replicas["a"], replicas["j"]
    journals = JetStreamJournals(nats, service=name)
    try:
        leader.start()
        wait(lambda: '"msg":"leading"' in leader.log, 30, "the leader")

        async def load() -> float:
            started = time.monotonic()
            async with MatchingClient.at(leader.address, security=writer, timeout=30) as c:
                for seq in range(1, args.commands + 1, args.batch):
                    batch = [place(i) for i in range(seq, min(seq + args.batch, args.commands + 1))]
                    await c.submit_commands(SOURCE, batch)
            return time.monotonic() - started

        load_s = asyncio.run(load())
        if every:  # the last periodic snapshot shared (the leader logs "shared": true for each)
            wanted = args.commands // every
            wait(lambda: leader.log.count('"shared":true') >= wanted, 120, "the leader's snapshots")
        lead = asyncio.run(status(leader.address, security))
        held_from = stream_first_record(journals)

        started = time.monotonic()
        joiner.start()
        wait(lambda: READY in joiner.log, 300, "the new replica")
        join_s = time.monotonic() - started

        async def caught_up() -> Any:
            while True:
                got = await status(joiner.address, security)
                if got.applied_sequence >= lead.applied_sequence:
                    return got
                await asyncio.sleep(0.01)

        got = asyncio.run(caught_up())
        caught_up_s = time.monotonic() - started
        assert joiner.proc is not None
        return {
            "mode": mode,
            "round": round_,
            "commands": args.commands,
            "snapshot_every": every,
            "load_commands_per_s": round(args.commands / load_s),
            "stream_holds_records": lead.applied_sequence - held_from + 1,
            "restored_shared_snapshot": '"msg":"restoring the shared snapshot"' in joiner.log,
            "join_s": round(join_s, 3),
            "caught_up_s": round(caught_up_s, 3),
            "joiner_rss_mib": rss_mib(joiner.proc.pid),
            "equal_state": got.state_hash == lead.state_hash,
        }
    finally:
        for r in replicas.values():
            r.stop()
        journals.delete_streams()
        journals.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--snapshot-every", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--stream-replicas", type=int, default=1, choices=(1, 3))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="replica-join-bench-"))
    zk = ZooKeeper(base / "zk", nodes=1, port=ZK_PORT, peer_port=ZK_PORT + 707, election_port=ZK_PORT + 1707)
    cluster: NatsCluster | None = None
    result: dict[str, Any] = {"bench": "replica_join", "stream_replicas": args.stream_replicas}
    try:
        zk.start()
        if args.stream_replicas == 3:
            cluster = NatsCluster(base / "nats", nodes=3, port=NATS_PORT, cluster_port=NATS_PORT + 2000)
            cluster.start()
            nats = cluster.urls
        else:
            if not port_open(4222):
                raise SystemExit("--stream-replicas 1 uses the local NATS on 127.0.0.1:4222: not running")
            nats = ["nats://127.0.0.1:4222"]
        runs = [
            one_run(base, mode, zk.hosts, nats, r, args)
            for r in range(args.rounds)
            for mode in ("shared", "replay")
        ]
        result["runs"] = runs
        median = {
            mode: {
                k: statistics.median(run[k] for run in runs if run["mode"] == mode)
                for k in ("join_s", "caught_up_s", "joiner_rss_mib", "stream_holds_records")
            }
            for mode in ("shared", "replay")
        }
        result["median"] = median
        result["replay_vs_shared_join"] = round(median["replay"]["join_s"] / median["shared"]["join_s"], 2)
        result["all_equal"] = all(run["equal_state"] for run in runs)
    finally:
        if cluster is not None:
            cluster.stop()
        zk.stop()
        shutil.rmtree(base, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
