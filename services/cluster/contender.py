"""A contender process for a shard (tests and benches of election and fencing; an operator's smoke
test of a ZooKeeper + NATS setup):

    python -m services.cluster.contender --zk HOSTS --nats URLS --shard matching-0 --member a \\
        --address 127.0.0.1:50061 [--session-timeout 2] [--interval 0.05]

While it leads it appends one record per interval to the shard's JetStream command journal (opened
after it was elected, so it continues after the previous leader's last acknowledged record), each
made durable before the next. It prints one JSON object per line on stdout, with `time.time()`:
`{"event": "elected"|"appended"|"fenced"|"deposed"|"error", ...}`; "appended" only every 20th record.
A leader that was frozen (SIGSTOP) past its session and wakes appends with a stale expected last
sequence: the journal refuses (FencedError) and it steps down.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from services.cluster.election import ShardElection
from services.common.journal import FencedError, JournalError
from services.common.journal.jetstream import JetStreamJournals

_out = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _out:
        print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="contender", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--zk", required=True)
    p.add_argument("--nats", required=True, help="comma-separated NATS URLs")
    p.add_argument("--shard", required=True)
    p.add_argument("--member", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--session-timeout", type=float, default=2.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument(
        "--keep-leading",
        action="store_true",
        help="keep appending after ZooKeeper deposed it (only the journal's fencing stops it): "
        "the frozen leader that wakes, made certain",
    )
    args = p.parse_args(argv)
    journals = JetStreamJournals(args.nats.split(","), service=args.shard, replicas=args.replicas)
    done = threading.Event()

    def lead(election: ShardElection) -> None:
        emit("elected", member=args.member, term=election.terms)
        try:
            j = journals.open("commands")
        except JournalError as exc:
            emit("error", member=args.member, error=str(exc))
            return
        n = 0
        try:
            while (args.keep_leading or election.leading.is_set()) and not done.is_set():
                last = j.last_seq
                try:
                    j.write_after(last, [f"{args.member}:{n}".encode()])
                    j.sync()
                except FencedError as exc:
                    emit("fenced", member=args.member, expected=exc.expected, last=exc.last, error=str(exc))
                    return
                n += 1
                if n % 20 == 1:
                    emit("appended", member=args.member, seq=last + 1)
                time.sleep(args.interval)
        finally:
            journals.forget("commands")

    def deposed(_: ShardElection, why: str) -> None:
        emit("deposed", member=args.member, why=why)

    election = ShardElection(
        args.zk,
        args.shard,
        args.member,
        args.address,
        session_timeout_s=args.session_timeout,
        on_elected=lead,
        on_deposed=deposed,
    ).start()
    emit("contending", member=args.member)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    election.stop()
    journals.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
