"""FileJournal benchmark: durable append throughput by batch size, group commit, reads, reopen.

    python bench/journal_bench.py [--out FILE] [--dir DIR] [--seconds S]

On a fresh temporary directory (under --dir if given, so the file system under test can be chosen;
fsync on tmpfs is free and says nothing), with ~100-byte payloads:
1. append+sync: one append() of B records followed by sync(), repeated for --seconds, for B in
   1, 10, 100, 1000: durable records/s and the latency of one append+sync (p50/p99);
2. group commit: the owner appends batches of 10 while a worker thread syncs in a loop (what the
   state-machine host does with asyncio.to_thread): records/s that became durable;
3. append only (no sync): the CPU cost of framing + CRC + write;
4. reads: sequential read of the whole journal (read(max_records=1000)) after a reopen, in records/s
   and MB/s, and the latency of a tailing read of the last 10 records;
5. reopen: time to open a journal whose last segment is full (the tail is verified record by record);
6. host: a StateMachineHost over a trivial machine (one ~100-byte command record and one event per
   command, fsynced journals in the same directory) for --seconds each: one client awaiting submit()
   in a loop (commands/s, latency p50/p99), 64 such clients (group commit), and 4 clients awaiting
   submit_batch() of 100 commands. The host's own cost around the journal: compare before and after a
   change to the host or the journal interface.
`--parts journal,host` selects the sections (default both).
Prints one JSON object; --out also writes it to a file.
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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.output import emit
from services.common.host import HostOptions, StateMachineHost
from services.common.journal import FileJournal
from services.common.statemachine import CodecSpec, Outcome

PAYLOAD = 100


def fs_type(path: Path) -> str:
    """The file system type of the mount holding path (Linux /proc/mounts), or 'unknown'."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) <= len(best):
            continue
        if target == fields[1] or target.startswith(fields[1].rstrip("/") + "/"):
            best, kind = fields[1], fields[2]
    return kind


def payloads(n: int) -> list[bytes]:
    return [(b"%08d" % i) + bytes(PAYLOAD - 8) for i in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def append_sync(base: Path, batch: int, seconds: float) -> dict[str, float]:
    d = base / f"append_sync_{batch}"
    records = payloads(batch)
    lat: list[float] = []
    with FileJournal(d) as j:
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            t0 = time.perf_counter()
            j.append(records)
            j.sync()
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            if t1 >= deadline:
                break
        elapsed = time.perf_counter() - started
        total = j.durable_seq
    shutil.rmtree(d)
    return {
        "records_per_s": round(total / elapsed),
        "batches_per_s": round(len(lat) / elapsed, 1),
        "latency_us_p50": round(statistics.median(lat) * 1e6, 1),
        "latency_us_p99": round(pct(lat, 0.99) * 1e6, 1),
    }


def group_commit(base: Path, seconds: float) -> dict[str, float]:
    """The host's pattern: the owner appends; a worker thread syncs whatever is pending, so one
    fdatasync covers every batch appended while the previous one ran."""
    d = base / "group_commit"
    records = payloads(10)
    syncs = 0
    with FileJournal(d) as j:
        stop = threading.Event()
        pending = threading.Event()

        def syncer() -> None:
            nonlocal syncs
            while not stop.is_set():
                if pending.wait(0.1):
                    pending.clear()
                    j.sync()
                    syncs += 1

        t = threading.Thread(target=syncer)
        started = time.perf_counter()
        t.start()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            j.append(records)
            pending.set()
            time.sleep(0)  # yield the GIL between batches, as an event loop serving clients would
        stop.set()
        t.join()
        elapsed = time.perf_counter() - started
        durable = j.durable_seq
        appended = j.last_seq
    shutil.rmtree(d)
    return {
        "durable_records_per_s": round(durable / elapsed),
        "appended_records_per_s": round(appended / elapsed),
        "fsyncs_per_s": round(syncs / elapsed, 1),
        "records_per_fsync": round(durable / max(syncs, 1), 1),
    }


def append_only(base: Path, total: int, segment_bytes: int) -> tuple[Path, dict[str, float]]:
    d = base / "read"
    records = payloads(1000)
    with FileJournal(d, segment_bytes=segment_bytes) as j:
        started = time.perf_counter()
        for _ in range(total // 1000):
            j.append(records)
        elapsed = time.perf_counter() - started
        j.sync()
    return d, {"records_per_s": round(total / elapsed), "batch": 1000, "records": total}


def reads(d: Path, segment_bytes: int) -> dict[str, float]:
    t0 = time.perf_counter()
    j = FileJournal(d, segment_bytes=segment_bytes)
    reopen = time.perf_counter() - t0
    try:
        started = time.perf_counter()
        seq = j.first_seq
        count = 0
        nbytes = 0
        while True:
            got = j.read(seq, max_records=1000)
            if not got:
                break
            count += len(got)
            nbytes += sum(len(p) for _, p in got)
            seq = got[-1][0] + 1
        elapsed = time.perf_counter() - started
        assert count == j.last_seq
        tail: list[float] = []
        for _ in range(2000):
            t1 = time.perf_counter()
            j.read(j.last_seq - 9)
            tail.append(time.perf_counter() - t1)
        middle: list[float] = []
        for i in range(2000):
            s = 1 + (i * 7919) % (j.last_seq - 10)
            t1 = time.perf_counter()
            j.read(s, max_records=10)
            middle.append(time.perf_counter() - t1)
        segments = len(list(d.glob("*.seg")))
    finally:
        j.close()
    return {
        "sequential_records_per_s": round(count / elapsed),
        "sequential_mb_per_s": round(nbytes / elapsed / 1e6, 1),
        "tail_read_10_us_p50": round(statistics.median(tail) * 1e6, 1),
        "random_read_10_us_p50": round(statistics.median(middle) * 1e6, 1),
        "records": count,
        "segments": segments,
        "reopen_s": round(reopen, 3),
    }


class _Echo:
    """The cheapest deterministic machine: every command is journaled and emits itself as one event."""

    def __init__(self) -> None:
        self._applied = 0
        self._events = 0

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
        m = cls()
        if data is not None:
            applied, events = data.split(b",")
            m._applied, m._events = int(applied), int(events)
        return m


_ECHO_CODEC: CodecSpec[bytes] = CodecSpec(encode=lambda c, t: c, decode=lambda r: (r, 0))


async def _host_run(d: Path, clients: int, batch: int, seconds: float) -> dict[str, float]:
    host: StateMachineHost[bytes, _Echo] = StateMachineHost(
        "bench",
        d,
        restore=_Echo.restore,
        codec=_ECHO_CODEC,
        options=HostOptions(snapshot_every=0, fork_snapshots=False),
    )
    await host.start()
    command = payloads(1)[0]
    commands = [command] * batch
    lat: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if batch == 1:
                await host.submit(command)
            else:
                await host.submit_batch(commands)
            lat.append(time.perf_counter() - t0)
            done += batch

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    await host.stop(snapshot=False)
    assert host.machine.applied_seq == done
    return {
        "commands_per_s": round(done / elapsed),
        "latency_us_p50": round(statistics.median(lat) * 1e6, 1),
        "latency_us_p99": round(pct(lat, 0.99) * 1e6, 1),
    }


def host_bench(base: Path, seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label, clients, batch in (("submit_c1", 1, 1), ("submit_c64", 64, 1), ("batch100_c4", 4, 100)):
        d = base / f"host_{label}"
        out[label] = asyncio.run(_host_run(d, clients, batch, seconds))
        shutil.rmtree(d)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--dir", type=Path, help="parent of the temporary directory (default: system temp)")
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each timed append run")
    parser.add_argument("--records", type=int, default=400_000, help="records written for the read test")
    parser.add_argument(
        "--parts", default="journal,host", help="sections to run: journal, host (comma-separated)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"journal", "host"}:
        parser.error(f"--parts takes journal and/or host, not {args.parts!r}")

    base = Path(tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir))
    started = time.perf_counter()
    try:
        result: dict[str, object] = {
            "bench": "journal",
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "directory": str(base),
            "filesystem": fs_type(base),
            "payload_bytes": PAYLOAD,
        }
        if "journal" in parts:
            result["append_sync"] = {str(b): append_sync(base, b, args.seconds) for b in (1, 10, 100, 1000)}
            result["group_commit_batch10"] = group_commit(base, args.seconds)
            segment_bytes = 16 << 20
            d, only = append_only(base, args.records, segment_bytes)
            result["append_only"] = only
            result["read"] = reads(d, segment_bytes)
        if "host" in parts:
            result["host"] = host_bench(base, args.seconds)
        result["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
