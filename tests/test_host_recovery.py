"""StateMachineHost recovery: the journals and the restored machine never disagree on numbering.

A small deterministic machine records, for every command it applies, the sequence it applied it as,
and numbers its events itself; the tests damage the command journal and the event log (a flipped
byte in a payload or a record header, a cut inside a record, a cut at a record boundary) at every one
of the last records, with a snapshot before, inside or after the damaged range, and check after the
restart and after new commands that record n of the journal is the command the machine applied as n
and event n of the log is the machine's event n. A snapshot covering lost records must refuse to
start (naming the lost sequences, changing nothing on disk) unless the operator accepts the snapshot.

Also: pluggable storage (the host on memory journals and snapshots: restarts, snapshots, damage),
fenced appends, the command reads the forwarder uses, and the event-stream range check
(from_sequence past the end + 1, or pruned), against the host and against real accounts and matching
processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import matching_service_pb2 as mpb

from services.common.errors import FailedPrecondition, OutOfRange, Reason, Unavailable
from services.common.host import HostOptions, RecoveryError, StateMachineHost
from services.common.journal import (
    DATA_START,
    RECORD,
    FencedError,
    JournalError,
    JournalGapError,
    JournalReader,
    MemoryJournals,
)
from services.common.limits import MAX_SEQUENCE
from services.common.rpc import error_reason
from services.common.snapshots import MemorySnapshotStore
from services.common.statemachine import CodecSpec, Outcome
from tests.cluster import Cluster

T = TypeVar("T")


class Tally:
    """Command = an int v: refused when negative, ignored (not journaled) when 0, else adds v to
    the total and emits v % 3 events `e<n>:c<seq>:v<v>` (n = its own event number)."""

    def __init__(self, applied_seq: int = 0, event_seq: int = 0, log: list[list[int]] | None = None) -> None:
        self._applied_seq = applied_seq
        self._event_seq = event_seq
        self.log: list[list[int]] = log or []  # [seq, value] of every command applied

    @property
    def applied_seq(self) -> int:
        return self._applied_seq

    @property
    def event_seq(self) -> int:
        return self._event_seq

    def apply(self, seq: int, time_us: int, command: int) -> Outcome:
        if command < 0:
            raise FailedPrecondition("negative", Reason.INVALID_FIELD)
        if command == 0:
            return Outcome(result=0, journal=False)
        events = []
        for _ in range(command % 3):
            self._event_seq += 1
            events.append(f"e{self._event_seq}:c{seq}:v{command}".encode())
        self._applied_seq = seq
        self.log.append([seq, command])
        return Outcome(result=seq, events=events)

    def snapshot(self) -> bytes:
        return json.dumps([self._applied_seq, self._event_seq, self.log]).encode()

    @classmethod
    def restore(cls, data: bytes | None) -> Tally:
        if data is None:
            return cls()
        applied, events, log = json.loads(data)
        return cls(applied, events, log)

    def state_hash(self) -> str:
        return str(self.snapshot())


CODEC: CodecSpec[int] = CodecSpec(
    encode=lambda c, t: f"{c},{t}".encode(),
    decode=lambda r: (int(r.split(b",")[0]), int(r.split(b",")[1])),
)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 60)  # a hang fails the test instead of blocking it

    return asyncio.run(main())


def make_host(
    d: Path, retention_floor: Callable[[], int] | None = None, **options: Any
) -> StateMachineHost[int, Tally]:
    opts = {"snapshot_every": 0, "fork_snapshots": False, **options}
    return StateMachineHost(
        "tally",
        d,
        restore=Tally.restore,
        codec=CODEC,
        options=HostOptions(**opts),
        retention_floor=retention_floor,
    )


async def started(
    d: Path, retention_floor: Callable[[], int] | None = None, **options: Any
) -> StateMachineHost[int, Tally]:
    host = make_host(d, retention_floor, **options)
    await host.start()
    return host


def read_all(j: JournalReader) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    seq = j.first_seq
    while seq <= j.last_seq:
        recs = j.read(seq, max_records=1000)
        out.extend(recs)
        seq = recs[-1][0] + 1
    return out


def assert_consistent(host: StateMachineHost[int, Tally]) -> None:
    """Record n of the command journal is what the machine applied as n; event n of the event log is
    the machine's event n; both journals end where the machine is."""
    m = host.machine
    assert host.commands.last_seq == m.applied_seq
    assert host.events.last_seq == m.event_seq
    assert host.durable_event_seq == m.event_seq
    applied = {seq: value for seq, value in m.log}
    for seq, payload in read_all(host.commands):
        assert applied.get(seq) == CODEC.decode(payload)[0], f"journal record {seq}"
    for seq, payload in read_all(host.events):
        n, c, v = payload.decode().split(":")
        assert n == f"e{seq}", f"event {seq} holds {payload!r}"
        assert applied.get(int(c[1:])) == int(v[1:]), f"event {seq} names command {c}"


VALUES = [4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20]  # each one or two events: none without


async def build(d: Path, snapshot_after: int | None) -> None:
    """Journal VALUES (one command per batch), snapshot after command `snapshot_after`, stop
    without a final snapshot (as a crash would leave it)."""
    host = await started(d)
    for i, v in enumerate(VALUES, 1):
        assert await host.submit(v) == i
        if i == snapshot_after:
            assert await host.snapshot_now() == i
    await host.stop(snapshot=False)


def segment(d: Path, log: str = "commands") -> Path:
    (seg,) = sorted((d / log).glob("*.seg"))
    return seg


def records(path: Path) -> list[tuple[int, int, int]]:
    data = path.read_bytes()
    out, pos = [], DATA_START
    while pos < len(data):
        length, _, seq = RECORD.unpack_from(data, pos)
        out.append((seq, pos, RECORD.size + length))
        pos += RECORD.size + length
    return out


def damage(path: Path, seq: int, how: str) -> None:
    data = bytearray(path.read_bytes())
    _, off, length = next(r for r in records(path) if r[0] == seq)
    if how == "flip_payload":
        data[off + RECORD.size] ^= 0x01
    elif how == "flip_header":
        data[off + 4] ^= 0x80  # the CRC
    elif how == "cut_inside":
        del data[off + length // 2 :]
    elif how == "cut_before":  # a clean end: the file just stops before this record
        del data[off:]
    path.write_bytes(bytes(data))


def tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


DAMAGES = ["flip_payload", "flip_header", "cut_inside", "cut_before"]
N = len(VALUES)
LAST = range(N - 4, N + 1)  # the damaged record: each of the last five


async def cut_tail_case(d: Path, bad: int) -> None:
    """A damaged record after the snapshot: it is cut as a torn tail and numbering stays intact."""
    host = await started(d)
    assert host.machine.applied_seq == bad - 1
    assert_consistent(host)
    assert await host.submit(99) == bad  # the next record is numbered as the machine applies it
    assert_consistent(host)
    await host.stop()
    host = await started(d)
    assert host.machine.applied_seq == bad
    assert_consistent(host)
    await host.stop()


async def accepted_case(d: Path, snap: int, **options: Any) -> None:
    """After accepting the snapshot: numbering continues after it, and stays so on later restarts."""
    host = await started(d, accept_snapshot_beyond_journal=True, **options)
    assert host.machine.applied_seq == snap
    assert (host.commands.first_seq, host.commands.last_seq) == (snap + 1, snap)
    assert_consistent(host)
    assert await host.submit(99) == snap + 1
    assert await host.submit(22) == snap + 2
    assert_consistent(host)
    await host.stop(snapshot=False)
    host = await started(d, **options)  # and from then on without the option: nothing is missing
    assert host.machine.applied_seq == snap + 2
    assert_consistent(host)
    await host.stop()


def critical_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.CRITICAL]


@pytest.mark.parametrize("snapshot_after", [None, N - 5, N - 2, N])
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_command_journal_tail(
    tmp_path: Path, how: str, snapshot_after: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    run(build(src, snapshot_after))
    snap = snapshot_after or 0
    name = segment(src).name
    for bad in LAST:
        d = _copy(src, tmp_path / f"bad{bad}")
        damage(segment(d), bad, how)
        if bad > snap:
            run(cut_tail_case(d, bad))
            continue
        # The snapshot holds commands bad..snap that the journal lost: refuse, name them, touch nothing.
        before = tree(d)
        caplog.clear()
        with (
            caplog.at_level(logging.CRITICAL, logger="services.common.host"),
            pytest.raises(RecoveryError) as err,
        ):
            run(started(d))
        lost = f"{bad}..{snap}" if bad < snap else f"{snap}"
        message = str(err.value)
        assert f"command{'s' if bad < snap else ''} {lost}" in message, message
        assert "--accept-snapshot-beyond-journal" in message and "backup" in message
        assert str(segment(d)) in message
        assert tree(d) == before, "a refused start changes nothing on disk"
        (line,) = critical_lines(caplog)
        assert lost in line.getMessage()
        assert (line.__dict__["lost_first"], line.__dict__["lost_last"]) == (bad, snap)
        # The operator accepts the snapshot: the journal continues after it, the damage is kept aside.
        caplog.clear()
        with caplog.at_level(logging.CRITICAL, logger="services.common.host"):
            run(accepted_case(d, snap))
        assert any("damaged-1" in r.getMessage() for r in critical_lines(caplog))
        kept = d / "commands" / "damaged-1" / name
        assert kept.read_bytes() == before[f"commands/{name}"], "the damaged segment, as it was"


@pytest.mark.parametrize("snapshot_after", [N - 5, N])
def test_every_byte_of_the_last_records(tmp_path: Path, snapshot_after: int) -> None:
    """A flipped byte at every offset of the last three records, and a cut at every offset: with
    the snapshot after them a refusal naming exactly the lost commands, before them a torn tail cut
    with the numbering intact."""
    src = tmp_path / "src"
    run(build(src, snapshot_after))
    name = segment(src).name
    original = (src / "commands" / name).read_bytes()
    spans = [r for r in records(src / "commands" / name) if r[0] > N - 3]
    d = tmp_path / "d"
    for seq, off, length in spans:
        for pos in range(off, off + length):
            for how in ("flip", "cut"):
                data = bytearray(original)
                if how == "flip":
                    data[pos] ^= 0xFF
                else:
                    del data[pos:]
                _copy(src, d)
                (d / "commands" / name).write_bytes(bytes(data))
                if snapshot_after >= seq:
                    with pytest.raises(RecoveryError) as err:
                        run(started(d))
                    lost = f"{seq}..{N}" if seq < N else f"{N}"
                    assert f"lost acknowledged command{'s' if seq < N else ''} {lost}:" in str(err.value)
                    assert (d / "commands" / name).read_bytes() == bytes(data)
                else:
                    run(cut_tail_case(d, seq))
                shutil.rmtree(d)


async def regenerated_case(d: Path, original: dict[int, bytes]) -> None:
    host = await started(d)
    assert host.machine.applied_seq == N
    assert_consistent(host)
    assert dict(read_all(host.events)) == original
    assert await host.submit(5) == N + 1
    assert_consistent(host)
    await host.stop()


async def accepted_events_case(d: Path, covered: int) -> None:
    host = await started(d, accept_snapshot_beyond_journal=True)
    assert host.events.first_seq == covered + 1
    assert host.machine.applied_seq == N
    assert_consistent(host)
    assert await host.submit(5) == N + 1
    assert_consistent(host)
    await host.stop(snapshot=False)
    host = await started(d)
    assert_consistent(host)
    await host.stop()


async def event_log_of(d: Path) -> tuple[dict[int, bytes], int]:
    host = await started(d)
    events = dict(read_all(host.events))
    await host.stop(snapshot=False)
    return events, host.machine.event_seq


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_event_log_tail(tmp_path: Path, how: str) -> None:
    """Events the snapshot covers are needed (their commands are not replayed); later ones are
    regenerated by the replay."""
    src = tmp_path / "src"
    snap = N - 3
    run(build(src, snap))
    original, last_event = run(event_log_of(_copy(src, tmp_path / "probe")))
    covered = max(s for s, p in original.items() if int(p.decode().split(":")[1][1:]) <= snap)
    assert covered < last_event - 1
    for bad in range(last_event - 5, last_event + 1):
        d = _copy(src, tmp_path / f"bad{bad}")
        damage(segment(d, "events"), bad, how)
        if bad > covered:
            run(regenerated_case(d, original))
            continue
        before = tree(d)
        with pytest.raises(RecoveryError) as err:
            run(started(d))
        lost = f"{bad}..{covered}" if bad < covered else f"{covered}"
        assert f"event{'s' if bad < covered else ''} {lost}" in str(err.value), str(err.value)
        assert tree(d) == before
        run(accepted_events_case(d, covered))
        assert (d / "events" / "damaged-1" / segment(src, "events").name).exists()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_answered_once_the_commands_are_durable_the_event_log_behind_and_regenerated(
    tmp_path: Path,
) -> None:
    """Callers are answered, and events published, once the command records are fsynced; the event
    log is fsynced behind (here: not at all until the snapshot). A crash that loses every event the
    log had not synced gives the same events back on restart (the replay regenerates them, same
    numbers, same bytes), and a snapshot never covers events the log could still lose."""
    d = tmp_path / "d"

    async def scenario() -> dict[int, bytes]:
        host = await started(d, event_sync_interval_s=3600.0)
        published: list[int] = []
        host.on_events.append(lambda first, recs, keys: published.extend(range(first, first + len(recs))))
        for v in (4, 5, 7, 8):  # 1, 2, 1 and 2 events
            seq = await host.submit(v)
            assert host.commands.durable_seq >= seq  # durable before it is answered
        assert published == list(range(1, 7)) and host.durable_event_seq == 6
        assert host.events.last_seq == 6 and host.events.durable_seq == 0  # written, not yet synced
        _copy(d, tmp_path / "crashed")  # the disk as a power cut would leave it: no event synced
        original = dict(read_all(host.events))
        await host.snapshot_now()
        assert host.events.durable_seq == 6  # synced before the snapshot covers them
        await host.stop()
        return original

    original = run(scenario())
    crashed = tmp_path / "crashed"
    seg = segment(crashed, "events")
    with seg.open("r+b") as f:
        f.truncate(0)  # nothing of the event log reached the disk
    assert not [f for f in (crashed / "snapshots").glob("*") if f.is_file()]  # taken before the snapshot

    async def restarted() -> None:
        host = await started(crashed)
        assert host.machine.applied_seq == 4
        assert dict(read_all(host.events)) == original  # regenerated, byte for byte
        assert_consistent(host)
        await host.stop()

    run(restarted())


def test_live_followers_get_the_log_from_memory_and_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Followers caught up are served the latest batches' events from memory, older ones from the log:
    either way exactly the log's records, in order, in whole batches, within max_records."""
    from services.common import host as host_module

    monkeypatch.setattr(host_module, "TAIL_RECORDS", 10)  # only the last few batches stay in memory

    async def scenario() -> None:
        host = await started(tmp_path / "d")
        live: list[tuple[int, bytes]] = []
        chunks: list[int] = []

        async def follow() -> None:
            async for chunk in host.follow_events(1, max_records=3):
                chunks.append(len(chunk))
                live.extend(chunk)
                if chunk[-1][0] >= host.machine.event_seq and len(live) >= 40:
                    return

        follower = asyncio.create_task(follow())
        for v in range(1, 60):
            await host.submit(v)
        late = [c async for c in _chunks(host, 1, 25)]  # a late reader: the start is only in the log
        await asyncio.wait_for(follower, 10)
        log = read_all(host.events)
        assert live == log[: len(live)] and len(live) >= 40
        assert max(chunks) <= 3
        flat = [r for c in late for r in c]
        assert flat == log[: len(flat)] and len(flat) >= 25 and max(len(c) for c in late) <= 4
        await host.stop()

    run(scenario())


async def _chunks(host: StateMachineHost[int, Tally], from_seq: int, until: int) -> Any:
    async for chunk in host.follow_events(from_seq, max_records=4):
        yield chunk
        if chunk[-1][0] >= until:
            return


def test_journal_lost_whole_segments_under_the_snapshot(tmp_path: Path) -> None:
    """Several segments; the newest ones vanish (no torn record at all): still a refusal."""
    d = tmp_path / "d"

    async def build_many() -> None:
        host = await started(d, lambda: 0, segment_bytes=64)  # keeps every segment
        for v in VALUES:
            await host.submit(v)
        await host.snapshot_now()
        await host.stop(snapshot=False)

    run(build_many())
    segs = sorted((d / "commands").glob("*.seg"))
    assert len(segs) > 3
    segs[-1].unlink()
    segs[-2].unlink()
    first_missing = int(segs[-2].stem)
    before = tree(d)
    with pytest.raises(RecoveryError) as err:
        run(started(d, segment_bytes=64))
    assert f"commands {first_missing}..{N}" in str(err.value)
    assert tree(d) == before, "not even a seal is rewritten"
    run(accepted_case(d, N, segment_bytes=64))
    assert len(list((d / "commands" / "damaged-1").glob("*.seg"))) == len(segs) - 2


def test_second_accept_uses_a_new_damaged_folder(tmp_path: Path) -> None:
    d = tmp_path / "d"
    run(build(d, N))

    async def damaged_again(k: int) -> int:
        host = await started(d, accept_snapshot_beyond_journal=True)
        seq = await host.submit(8)
        await host.snapshot_now()
        await host.stop(snapshot=False)
        return seq

    for k in (1, 2):
        damage(segment(d), max(s for s, _, _ in records(segment(d))), "flip_payload")
        assert run(damaged_again(k)) == N + k
        assert (d / "commands" / f"damaged-{k}").is_dir()

    async def final() -> None:
        host = await started(d)
        assert host.machine.applied_seq == N + 2
        assert_consistent(host)
        await host.stop()

    run(final())


def test_clean_restarts_keep_numbering(tmp_path: Path) -> None:
    """No damage: stop with and without the final snapshot; refused and ignored commands take no
    number."""
    d = tmp_path / "d"
    run(build(d, 5))

    async def once(final: bool) -> None:
        host = await started(d)
        assert_consistent(host)
        with pytest.raises(FailedPrecondition):
            await host.submit(-1)
        assert await host.submit(0) == 0  # not journaled
        nxt = host.machine.applied_seq + 1
        assert await host.submit(4) == nxt
        assert_consistent(host)
        await host.stop(snapshot=final)

    for final in (False, True, False):
        run(once(final))


# --- pluggable storage, fencing, reads for the forwarder -------------------------------------------


class MemoryStorage:
    """Memory journals and snapshots that outlive the hosts opened on them (restarts in one test)."""

    def __init__(self) -> None:
        self.journals = MemoryJournals()
        self.snapshots = MemorySnapshotStore()

    async def started(
        self, d: Path, retention_floor: Callable[[], int] | None = None, **options: Any
    ) -> StateMachineHost[int, Tally]:
        opts = {"snapshot_every": 0, "fork_snapshots": False, **options}
        host = StateMachineHost(
            "tally",
            d,
            restore=Tally.restore,
            codec=CODEC,
            options=HostOptions(**opts),
            retention_floor=retention_floor,
            journals=self.journals,
            snapshots=lambda: self.snapshots,
        )
        await host.start()
        return host


def test_host_on_memory_storage_restarts_and_snapshots(tmp_path: Path) -> None:
    """Nothing touches the directory; periodic snapshots are taken inline although fork_snapshots is
    set (a forked child's save would stay in the child's memory, and the journal would then be
    pruned before a snapshot the parent does not have)."""
    storage = MemoryStorage()
    d = tmp_path / "unused"

    async def first() -> None:
        host = await storage.started(d, snapshot_every=5, fork_snapshots=True)
        for i, v in enumerate(VALUES, 1):
            assert await host.submit(v) == i
        await host.stop(snapshot=False)
        assert storage.snapshots.list() == [5, 10]
        assert host.commands.first_seq == 11  # pruned up to the snapshot

    async def second() -> None:
        host = await storage.started(d)
        assert (host.snapshot_seq, host.machine.applied_seq) == (10, N)
        assert_consistent(host)
        assert await host.submit(22) == N + 1
        assert_consistent(host)
        await host.stop()
        assert storage.snapshots.latest() is not None and storage.snapshots.list()[-1] == N + 1

    run(first())
    run(second())
    assert not d.exists()


def test_memory_journal_below_the_snapshot_is_refused_then_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host's damage path through the factory interface, on another backend than files."""
    storage = MemoryStorage()
    d = tmp_path / "unused"

    async def build_it() -> None:
        host = await storage.started(d, lambda: 0)  # keeps every command
        for v in VALUES:
            await host.submit(v)
        await host.snapshot_now()
        await host.stop(snapshot=False)

    run(build_it())
    lost = storage.journals.open("commands")  # the store loses commands 10..12 (say a bad restore)
    assert lost.truncate_after(9) == 3
    lost.close()
    with pytest.raises(RecoveryError) as err:
        run(storage.started(d))
    assert f"lost acknowledged commands 10..{N}" in str(err.value)
    assert "memory:commands" in str(err.value)

    async def accepted() -> None:
        host = await storage.started(d, accept_snapshot_beyond_journal=True)
        assert (host.commands.first_seq, host.machine.applied_seq) == (N + 1, N)
        assert await host.submit(4) == N + 1
        assert_consistent(host)
        await host.stop()

    with caplog.at_level(logging.CRITICAL, logger="services.common.host"):
        run(accepted())
    assert any("quarantined set 1" in r.getMessage() for r in critical_lines(caplog))
    assert [s for s, _ in storage.journals.quarantined["commands"][0]] == list(range(1, 10))


def test_an_append_behind_the_hosts_back_is_fenced(tmp_path: Path) -> None:
    """Another writer appended to the command journal: the host's next batch is refused before any
    of it is written (the writer stops), so the journal never holds two writers' records under one
    numbering."""
    d = tmp_path / "d"

    async def scenario() -> None:
        host = await started(d)
        failures: list[BaseException] = []
        host.on_failure.append(failures.append)
        assert await host.submit(4) == 1
        host.commands.write_after(1, [CODEC.encode(5, 0)])  # the intruder's record 2
        with pytest.raises(Unavailable) as err:
            await host.submit(7)
        assert err.value.reason == Reason.WRITER_FAILED
        assert host.commands.last_seq == 2, "nothing of the refused batch was written"
        assert host.events.last_seq == 1  # nor its events
        assert isinstance(failures[0], FencedError)
        assert (failures[0].expected, failures[0].last) == (1, 2)
        assert [CODEC.decode(p)[0] for _, p in read_all(host.commands)] == [4, 5]
        await host.stop()

    run(scenario())


def test_read_commands_serves_durable_commands_only(tmp_path: Path) -> None:
    storage = MemoryStorage()

    async def scenario() -> None:
        host = await storage.started(tmp_path / "unused")
        for v in (4, 5, 7):
            await host.submit(v)
        assert host.durable_command_seq == 3
        got = host.read_commands(1)
        assert [(s, CODEC.decode(p)[0]) for s, p in got] == [(1, 4), (2, 5), (3, 7)]
        assert host.read_commands(2, max_records=1) == got[1:2]
        assert host.read_commands(4) == []
        await host.snapshot_now()  # prunes the commands before 4
        assert await host.submit(8) == 4
        with pytest.raises(JournalGapError) as err:
            host.read_commands(1)
        assert isinstance(err.value, JournalError) and err.value.first_seq == 4
        host.commands.write_after(4, [CODEC.encode(10, 0)])  # appended, not durable yet
        assert host.durable_command_seq == 4
        assert [s for s, _ in host.read_commands(4)] == [4]
        host.commands.sync()
        assert [s for s, _ in host.read_commands(4)] == [4, 5]

    run(scenario())


def test_follow_events_before_the_prune_point_is_out_of_range(tmp_path: Path) -> None:
    storage = MemoryStorage()

    async def scenario() -> None:
        host = await storage.started(tmp_path / "unused", event_retention=3)
        for v in VALUES:
            await host.submit(v)
        await host.snapshot_now()
        first = host.events.first_seq
        assert first == host.machine.event_seq - 3 + 1
        with pytest.raises(OutOfRange) as err:
            await _first_chunk(host, first - 1)
        assert err.value.reason == Reason.SEQUENCE_OUT_OF_RANGE
        assert f"the oldest kept is {first}" in err.value.message
        assert (await _first_chunk(host, first))[0][0] == first
        await host.stop()

    run(scenario())


# --- event streams: from_sequence past the end ---------------------------------------------------


async def _first_chunk(host: StateMachineHost[int, Tally], from_seq: int) -> list[tuple[int, bytes]]:
    async for chunk in host.follow_events(from_seq):
        return chunk
    raise AssertionError("stream ended")


def test_follow_events_past_the_end_is_out_of_range(tmp_path: Path) -> None:
    async def scenario() -> None:
        host = await started(tmp_path / "d")
        for v in (4, 5, 7):  # events 1..4
            await host.submit(v)
        last = host.durable_event_seq
        assert last == 4
        for bad in (last + 2, last + 1000, 2**64 - 1):
            with pytest.raises(OutOfRange) as err:
                await _first_chunk(host, bad)
            assert err.value.reason == Reason.SEQUENCE_OUT_OF_RANGE
            assert str(last) in err.value.message
            with pytest.raises(OutOfRange):
                host.check_event_from(bad)
        host.check_event_from(last + 1)
        assert (await _first_chunk(host, last))[0][0] == last
        # last + 1 is valid: it waits for the next event.
        waiter = asyncio.ensure_future(_first_chunk(host, last + 1))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await host.submit(4)
        chunk = await waiter
        assert chunk[0][0] == last + 1
        await host.stop()

    run(scenario())


def _stream_error(call: Callable[[], Any]) -> grpc.RpcError:
    started_at = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        for _ in call():
            pass
    assert time.monotonic() - started_at < 20, "answered at the deadline, not at once"
    return err.value


@pytest.mark.slow
def test_streams_refuse_from_sequence_past_the_end(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.start()
    try:
        c.accounts.Deposit(
            apb.DepositRequest(user_id=1, asset="USDT", amount="100", business="d", business_id="1")
        )
        st = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest())
        a_last = st.event_sequence
        assert a_last >= 1
        m_last = c.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest()).event_sequence
        for forged, code, reason in (
            (a_last + 2, grpc.StatusCode.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE"),
            (MAX_SEQUENCE, grpc.StatusCode.OUT_OF_RANGE, "SEQUENCE_OUT_OF_RANGE"),
            # beyond the API edge's bound (services.common.limits.check_sequence): not a sequence at all
            (2**64 - 1, grpc.StatusCode.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE"),
        ):
            for call in (
                lambda f=forged: c.accounts.StreamAccountEvents(
                    apb.StreamAccountEventsRequest(from_sequence=f), timeout=30
                ),
                lambda f=forged: c.accounts.StreamUserEvents(
                    apb.StreamUserEventsRequest(user_id=1, from_sequence=f), timeout=30
                ),
            ):
                e = _stream_error(call)
                assert e.code() == code, e
                assert error_reason(e) == reason
        for forged in (m_last + 2, 2**64 - 1):
            e = _stream_error(
                lambda f=forged: c.matching().StreamEvents(
                    mpb.StreamEventsRequest(from_sequence=f), timeout=30
                )
            )
            assert e.code() == grpc.StatusCode.OUT_OF_RANGE, e
            assert error_reason(e) == "SEQUENCE_OUT_OF_RANGE"
        # last + 1 is valid: the stream waits (here until its deadline) instead of refusing.
        for call in (
            lambda: c.accounts.StreamAccountEvents(
                apb.StreamAccountEventsRequest(from_sequence=a_last + 1), timeout=1
            ),
            lambda: c.accounts.StreamUserEvents(
                apb.StreamUserEventsRequest(user_id=1, from_sequence=a_last + 1), timeout=1
            ),
            lambda: c.matching().StreamEvents(mpb.StreamEventsRequest(from_sequence=m_last + 1), timeout=1),
        ):
            with pytest.raises(grpc.RpcError) as err:
                for _ in call():
                    pass
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        c.stop()


# --- the field case, end to end: a real accounts process --------------------------------------


@pytest.mark.slow
def test_accounts_refuses_a_snapshot_beyond_its_journal_and_accepts_it_on_request(tmp_path: Path) -> None:
    c = Cluster(tmp_path, accounts_options={"snapshot_every": 5})
    c.start(["accounts-0"])
    try:
        for i in range(5):  # the fifth command triggers a snapshot at 5
            c.accounts.Deposit(
                apb.DepositRequest(user_id=1, asset="USDT", amount="1", business="d", business_id=str(i))
            )
        c.kill("accounts-0", signal.SIGTERM)  # a clean stop: final snapshot at 5 as well
        data = tmp_path / "data" / "accounts-0"
        seg = segment(data)
        assert records(seg)[-1][0] == 5
        damage(seg, 5, "flip_payload")  # "CRC mismatch in record 5", under the snapshot at 5
        with pytest.raises(RuntimeError, match="exited"):
            c.start(["accounts-0"], timeout=60)
        log = c.log("accounts-0")
        assert "lost acknowledged command 5" in log and "--accept-snapshot-beyond-journal" in log
        c.procs.pop("accounts-0", None)
        c.services = [
            (n, [*a, "--accept-snapshot-beyond-journal"] if n == "accounts-0" else a) for n, a in c.services
        ]
        c.start(["accounts-0"])
        resp = c.accounts.Deposit(
            apb.DepositRequest(user_id=1, asset="USDT", amount="1", business="d", business_id="next")
        )
        assert resp.sequence == 6  # the journal's next record is the snapshot's next command
        assert (data / "commands" / "damaged-1" / seg.name).exists()
        bal = c.accounts.GetBalances(apb.GetBalancesRequest(user_id=1, assets=["USDT"])).balances[0]
        assert bal.available.startswith("6")
    finally:
        c.stop()
