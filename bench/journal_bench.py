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
5. reopen: time to open a journal whose last segment is full (the tail is verified record by record).
Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
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

from services.common.journal import FileJournal

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--dir", type=Path, help="parent of the temporary directory (default: system temp)")
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each timed append run")
    parser.add_argument("--records", type=int, default=400_000, help="records written for the read test")
    args = parser.parse_args()

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
            "append_sync": {str(b): append_sync(base, b, args.seconds) for b in (1, 10, 100, 1000)},
            "group_commit_batch10": group_commit(base, args.seconds),
        }
        segment_bytes = 16 << 20
        d, only = append_only(base, args.records, segment_bytes)
        result["append_only"] = only
        result["read"] = reads(d, segment_bytes)
        result["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
