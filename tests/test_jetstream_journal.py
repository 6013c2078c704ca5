"""The JetStream journal beyond the contract (tests/test_journal_contract.py runs that on R1 and R3):
the message format, fencing between two writer processes by the server, a follower's hot reader in
another connection, and losing the R3 stream leader.

Also run as a program: `python -m tests.test_jetstream_journal writer SERVERS SERVICE` is the other
writer process of the fencing test (it reads commands from stdin, one per line).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest

from services.cluster.journals import RoutedJournals
from services.cluster.servers import NatsCluster, port_open
from services.common.journal import FencedError, FileJournals, JournalError
from services.common.journal.jetstream import (
    JetStreamJournals,
    decode_message,
    encode_message,
    split_batch,
)
from tests.cluster_fixtures import nats_local, nats_r3  # noqa: F401
from tests.test_jetstream_host import make_host

ROOT = Path(__file__).resolve().parents[1]
_ids = count(1)


def service_name(tag: str) -> str:
    return f"t-{tag}-{os.getpid()}-{next(_ids)}"


@pytest.fixture
def factories() -> Iterator[list[JetStreamJournals]]:
    made: list[JetStreamJournals] = []
    yield made
    if made:
        with_errors = made[0]
        try:
            with_errors.delete_streams()
        finally:
            for f in made:
                f.close()


def test_message_format_round_trips_and_splits() -> None:
    recs = [b"", b"a", b"x" * 300, bytes(range(256))]
    assert decode_message(encode_message(41, recs)) == (41, recs)
    assert decode_message(encode_message(7, [])) == (7, [])
    with pytest.raises(JournalError):
        decode_message(encode_message(1, [b"abc"])[:-1])
    with pytest.raises(JournalError):
        decode_message(b"XX" + encode_message(1, [b"abc"])[2:])
    parts = split_batch([b"a" * 40] * 10 + [b"b" * 500], 120)
    assert [len(p) for p in parts] == [2, 2, 2, 2, 2, 1]
    assert b"".join(b"".join(p) for p in parts) == b"a" * 400 + b"b" * 500


def test_a_record_over_the_server_limit_is_refused_whole(
    nats_local: list[str],  # noqa: F811
    factories: list[JetStreamJournals],
) -> None:
    f = JetStreamJournals(nats_local, service=service_name("big"), max_message_bytes=1000)
    factories.append(f)
    j = f.open("commands")
    j.write_after(0, [b"a"])
    with pytest.raises(JournalError, match="exceeds the server's message limit"):
        j.write_after(1, [b"b", b"x" * f.client.max_payload])
    assert j.last_seq == 1
    # a batch larger than one message is split, numbered per record, and reads back whole
    batch = [bytes([65 + i % 26]) * 300 for i in range(50)]
    assert j.write_after(1, batch) == range(2, 52)
    assert j.sync() == 51
    j.close()
    g = JetStreamJournals(nats_local, service=f.service)
    factories.append(g)
    assert [p for _, p in g.open("commands").read(1)] == [b"a", *batch]


def _writer_main(servers: str, service: str) -> None:
    """The other writer: `append N` (write N records after its last and sync), `quit`."""
    f = JetStreamJournals(servers.split(","), service=service)
    j = f.open("commands")
    print(json.dumps({"opened": j.last_seq}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "append":
            n = int(cmd[1])
            try:
                start = j.last_seq
                j.write_after(start, [f"w1-{start + i + 1}".encode() for i in range(n)])
                print(json.dumps({"durable": j.sync()}), flush=True)
            except FencedError as exc:
                print(
                    json.dumps({"fenced": str(exc), "expected": exc.expected, "last": exc.last}), flush=True
                )
            except JournalError as exc:
                print(json.dumps({"error": str(exc)}), flush=True)
        elif cmd[0] == "quit":
            break
    with __import__("contextlib").suppress(JournalError):
        j.close()
    f.close()


class Writer:
    def __init__(self, servers: list[str], service: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_jetstream_journal", "writer", ",".join(servers), service],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen'}"},
        )

    def answer(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the writer process died"
        out: dict[str, object] = json.loads(line)
        return out

    def send(self, line: str) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(20)


def test_a_deposed_writer_process_is_fenced_by_the_stream(
    nats_local: list[str],  # noqa: F811
    factories: list[JetStreamJournals],
) -> None:
    service = service_name("fence")
    setup = JetStreamJournals(nats_local, service=service)
    factories.append(setup)
    setup.open("commands").close()  # the stream exists before both writers open it
    old = Writer(nats_local, service)
    try:
        assert old.answer() == {"opened": 0}
        assert old.send("append 5") == {"durable": 5}
        # A new leader in this process opens the journal (it loads the stream to its end) and appends.
        new_f = JetStreamJournals(nats_local, service=service)
        factories.append(new_f)
        new = new_f.open("commands")
        assert new.last_seq == 5
        assert new.write_after(5, [b"new-6", b"new-7"]) == range(6, 8)
        assert new.sync() == 7
        # The old leader still believes the journal ends at 5: the server refuses its append.
        got = old.send("append 3")
        assert "fenced" in got, got
        assert got["expected"] == 5 and got["last"] == 7
        again = old.send("append 1")  # deposed for good
        assert "fenced" in again
        # Nothing of the old writer's batches was stored; the new one goes on.
        assert new.write_after(7, [b"new-8"]) == range(8, 9)
        new.sync()
        check = JetStreamJournals(nats_local, service=service)
        factories.append(check)
        j = check.open("commands", durable_through=8)
        assert [p for _, p in j.read(1)] == [
            *(f"w1-{i}".encode() for i in range(1, 6)),
            b"new-6",
            b"new-7",
            b"new-8",
        ]
    finally:
        old.close()


def test_a_follower_reader_stays_hot(nats_local: list[str], factories: list[JetStreamJournals]) -> None:  # noqa: F811
    service = service_name("follow")
    wf = JetStreamJournals(nats_local, service=service)
    rf = JetStreamJournals(nats_local, service=service)
    factories.extend([wf, rf])
    w = wf.open("events", start_seq=101)
    w.write_after(100, [b"a", b"b"])
    w.sync()
    reader = rf.open_reader("events")
    assert (reader.first_seq, reader.last_seq, reader.durable_seq) == (101, 102, 102)

    async def scenario() -> list[tuple[int, bytes]]:
        seen: list[tuple[int, bytes]] = []
        it = reader.follow(101)
        seen.extend(await asyncio.wait_for(it.__anext__(), 10))
        for i in range(5):
            await w.append_after(w.last_seq, [f"r{i}-{k}".encode() for k in range(50)])
            await w.flush()
        while len(seen) < 252:
            seen.extend(await asyncio.wait_for(it.__anext__(), 10))
        return seen

    seen = asyncio.run(scenario())
    assert [s for s, _ in seen] == list(range(101, 353))
    assert seen[2] == (103, b"r0-0") and seen[-1] == (352, b"r4-49")
    reader.close()
    w.close()


def _servers(request: pytest.FixtureRequest, where: str) -> list[str]:
    if where == "r3":
        cluster: NatsCluster = request.getfixturevalue("nats_r3")
        return cluster.urls
    local: list[str] = request.getfixturevalue("nats_local")
    return local


@pytest.mark.parametrize("where", ["local", "r3"])
def test_when_durable_calls_back_in_order_once_acknowledged(
    request: pytest.FixtureRequest, where: str, factories: list[JetStreamJournals]
) -> None:
    servers = _servers(request, where)
    replicas = 3 if where == "r3" else 1
    service = service_name("whendurable")
    f = JetStreamJournals(servers, service=service, replicas=replicas, max_message_bytes=2000)
    factories.append(f)
    j = f.open("commands")
    calls: list[tuple[int, int, int, BaseException | None]] = []  # (target, seq, durable then, error)
    done = threading.Event()
    batches = 12

    def callback(target: int) -> Callable[[int, BaseException | None], None]:
        def cb(seq: int, error: BaseException | None) -> None:
            calls.append((target, seq, j.durable_seq, error))
            if len(calls) == batches:
                done.set()

        return cb

    written: list[bytes] = []
    for b in range(batches):  # pipelined: nothing waits between the batches (several messages each)
        batch = [f"b{b}-{k}".encode() * 20 for k in range(30)]
        j.write_after(j.last_seq, batch)
        written += batch
        j.when_durable(j.last_seq, callback(j.last_seq))
    assert done.wait(30), calls
    assert [c[0] for c in calls] == [30 * (b + 1) for b in range(batches)]  # in order
    assert all(err is None and seq >= target and durable >= target for target, seq, durable, err in calls)
    # a target already durable is called back at once
    late = threading.Event()
    j.when_durable(30, lambda seq, err: late.set() if err is None and seq >= 30 else None)
    assert late.wait(10)
    # what was called back durable is in the stream: a fresh connection reads it all
    g = JetStreamJournals(servers, service=service, replicas=replicas)
    factories.append(g)
    r = g.open("commands", durable_through=30 * batches)
    assert [p for _, p in r.read(1, max_records=5000)] == written


@pytest.mark.parametrize("where", ["local", "r3"])
def test_a_deposed_writers_pipelined_messages_are_all_refused(
    request: pytest.FixtureRequest, where: str, factories: list[JetStreamJournals]
) -> None:
    """The old writer's batch goes out as several pipelined messages right after a new writer fenced
    the stream: the first is refused by its expected sequence, and the next ones, whose expected
    sequences the new writer's messages now hold, by the chained message id: nothing of the old
    writer lands on top of the new one, and the new one carries on."""
    servers = _servers(request, where)
    replicas = 3 if where == "r3" else 1
    service = service_name("pipefence")
    old_f = JetStreamJournals(servers, service=service, replicas=replicas, max_message_bytes=1000)
    new_f = JetStreamJournals(servers, service=service, replicas=replicas)
    factories.extend([old_f, new_f])
    old = old_f.open("commands")
    old.write_after(0, [b"old-1"])
    assert old.sync() == 1
    new = new_f.open("commands")
    new.fence()  # one empty message: the stream's last sequence moves one past the old one's view
    outcome: list[BaseException | None] = []
    called = threading.Event()
    stale = [f"stale-{k}".encode() * 30 for k in range(12)]  # ~4 messages of at most 1000 bytes
    old.write_after(1, stale)
    old.when_durable(old.last_seq, lambda seq, err: (outcome.append(err), called.set()))
    assert called.wait(30)
    assert isinstance(outcome[0], FencedError), outcome
    with pytest.raises(FencedError):
        old.sync()
    with pytest.raises(FencedError):
        old.write_after(old.last_seq, [b"again"])
    assert new.write_after(1, [b"new-2", b"new-3"]) == range(2, 4)
    assert new.sync() == 3
    check = JetStreamJournals(servers, service=service, replicas=replicas)
    factories.append(check)
    r = check.open("commands", durable_through=3)
    assert [p for _, p in r.read(1)] == [b"old-1", b"new-2", b"new-3"]


def test_a_host_on_r3_answers_pipelined_batches_in_order_once_acknowledged(
    nats_r3: NatsCluster,  # noqa: F811
    factories: list[JetStreamJournals],
    tmp_path: Path,
) -> None:
    """The host's journal thread hands batches to the stream without waiting (when_durable): fed
    without waiting for answers, as accounts feeds a matching shard, every batch is answered in
    order and only once the stream acknowledged its records (and all before them)."""
    service = service_name("hostpipe")
    stream = JetStreamJournals(nats_r3.urls, service=service, replicas=3)
    factories.append(stream)
    journals = RoutedJournals({"commands": stream}, FileJournals(tmp_path / "events"))
    answers: list[tuple[int, int, int]] = []  # (batch, last result, stream durable at the answer)
    most_in_flight = 0

    async def scenario() -> None:
        nonlocal most_in_flight
        host = make_host(tmp_path / "host", journals)
        await host.start()
        futures = []
        for b in range(40):
            fut = host.submit_batch([b"1"] * 50)
            fut.add_done_callback(
                lambda f, b=b: answers.append((b, f.result()[-1], host.commands.durable_seq))
            )
            futures.append(fut)
            most_in_flight = max(most_in_flight, len(host._unanswered))
            await asyncio.sleep(0.0003)  # commands keep arriving while earlier batches are in flight
        await asyncio.gather(*futures)
        await host.stop(snapshot=False)

    asyncio.run(scenario())
    assert [b for b, _, _ in answers] == list(range(40))
    assert all(total == 50 * (b + 1) and durable >= total for b, total, durable in answers), answers
    check = JetStreamJournals(nats_r3.urls, service=service, replicas=3)
    factories.append(check)
    assert len(check.open("commands", durable_through=2000).read(1, max_records=5000)) == 2000
    print(f"at most {most_in_flight} batches unanswered at once")


@pytest.mark.slow
def test_killing_the_r3_stream_leader_keeps_acked_records_and_appends_resume(
    nats_r3: NatsCluster,  # noqa: F811
    factories: list[JetStreamJournals],
) -> None:
    service = service_name("r3kill")
    f = JetStreamJournals(nats_r3.urls, service=service, replicas=3)
    factories.append(f)
    j = f.open("commands")
    acked: list[bytes] = []
    for b in range(20):
        batch = [f"before-{b}-{k}".encode() for k in range(100)]
        j.write_after(j.last_seq, batch)
        acked += batch
    assert j.sync() == 2000

    async def leader() -> str:
        info = await f.client.js.stream_info(f.stream("commands"))
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader

    follower_f = JetStreamJournals(nats_r3.urls, service=service, replicas=3)
    factories.append(follower_f)
    follower = follower_f.open_reader("commands")  # a follower's hot copy, through the loss
    assert follower.durable_seq == 2000
    name = f.client.call(leader())
    victim = nats_r3.node_named(name)
    assert victim.alive
    victim.kill()
    assert not victim.alive
    try:
        started = time.monotonic()
        batch = [f"after-{k}".encode() for k in range(100)]
        j.write_after(2000, batch)  # fenced on 2000, as before the loss
        assert j.sync() == 2100, "appends resume once the stream has a new leader"
        resumed = time.monotonic() - started
        acked += batch
        new_leader = f.client.call(leader())
        assert new_leader != name
        # A fresh process (new connection) finds every acknowledged record.
        g = JetStreamJournals([u for u in nats_r3.urls if not u.endswith(str(victim.port))], service=service)
        factories.append(g)
        r = g.open("commands", durable_through=2100)
        assert [p for _, p in r.read(1, max_records=5000)] == acked
        # and fencing still holds: the first handle is deposed once the new one appends
        r.write_after(2100, [b"new-leader"])
        r.sync()
        j.write_after(2100, [b"stale"])
        with pytest.raises(FencedError):
            j.sync()
        # the follower's consumer carried on (or was recreated) and got everything, in order
        deadline = time.monotonic() + 30
        while follower.durable_seq < 2101 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for _, p in follower.read(1, max_records=5000)] == [*acked, b"new-leader"]
        follower.close()
        print(f"appends resumed {resumed:.2f} s after SIGKILL of stream leader {name}")
    finally:
        victim.start()  # the session's cluster gets its third node back
        deadline = time.monotonic() + 30
        while not port_open(victim.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        nats_r3.wait_jetstream()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "writer":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _writer_main(sys.argv[2], sys.argv[3])
