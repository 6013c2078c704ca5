"""FileJournal in detail: numbering, reads and limits, rollover, pruning, torn-tail repair, corruption,
reopen, concurrent sync, and a property test over random batches and reopen points. What every backend
must do (fencing, follow, ...) is the contract in tests/journal_contract.py, run for files too."""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.journal import (
    DATA_START,
    RECORD,
    FileJournal,
    Journal,
    JournalDamagedError,
    JournalError,
    JournalGapError,
    quarantine_segments,
)
from services.common.journal import file as jmod

BIG = 1 << 40


def payload(seq: int, size: int | None = None) -> bytes:
    """Distinct, recognisable content per sequence (size varies with seq unless given)."""
    n = (seq * 7) % 50 if size is None else size
    return (f"<{seq}>".encode() * (n // 3 + 1))[:n]


def read_all(j: Journal, from_seq: int | None = None) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    seq = j.first_seq if from_seq is None else from_seq
    while True:
        got = j.read(seq, max_records=257, max_bytes=10_000)
        if not got:
            return out
        assert got[0][0] == seq
        out.extend(got)
        seq = got[-1][0] + 1


def fill(j: FileJournal, n: int, batch: int = 3) -> list[tuple[int, bytes]]:
    """Append n records (in batches) numbered from last_seq + 1; returns them."""
    start = j.last_seq + 1
    recs = [(s, payload(s)) for s in range(start, start + n)]
    for i in range(0, n, batch):
        chunk = recs[i : i + batch]
        assert j.append([p for _, p in chunk]) == chunk[-1][0]
    return recs


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def record_offsets(path: Path) -> list[tuple[int, int, int]]:
    """(seq, offset, total length) of every record in a well-formed segment file."""
    data = path.read_bytes()
    pos = DATA_START
    out = []
    while pos < len(data):
        length, _, seq = RECORD.unpack_from(data, pos)
        out.append((seq, pos, RECORD.size + length))
        pos += RECORD.size + length
    return out


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


# --- basics ------------------------------------------------------------------------------------


def test_empty_journal(jdir: Path) -> None:
    with FileJournal(jdir) as j:
        assert (j.first_seq, j.last_seq, j.durable_seq) == (1, 0, 0)
        assert j.read(1) == []
        assert j.append([]) == 0
        assert j.sync() == 0
        with pytest.raises(JournalGapError):
            j.read(0)


def test_append_read_round_trip(jdir: Path) -> None:
    with FileJournal(jdir) as j:
        assert j.append([b"a", b"", b"ccc"]) == 3
        assert j.append([b"d" * 1000]) == 4
        assert j.read(1) == [(1, b"a"), (2, b""), (3, b"ccc"), (4, b"d" * 1000)]
        assert j.read(3) == [(3, b"ccc"), (4, b"d" * 1000)]
        assert j.read(5) == []
        assert j.sync() == 4


def test_sequences_consecutive_across_rollover(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=300) as j:
        recs = fill(j, 500, batch=2)
        assert j.last_seq == 500
        assert read_all(j) == recs
        files = segments(jdir)
        assert len(files) > 20
        for path in files:  # named by the first record; every segment but an oversized batch fits
            offs = record_offsets(path)
            assert offs[0][0] == int(path.stem)
            assert [s for s, _, _ in offs] == list(range(offs[0][0], offs[0][0] + len(offs)))
            assert path.stat().st_size <= 300 or len(offs) <= 2
        firsts = [int(p.stem) for p in files]
        assert firsts == sorted(firsts) and firsts[0] == 1


def test_reads_from_the_middle_and_the_edges(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=2000) as j:
        recs = fill(j, 1000, batch=7)
        for start in (1, 2, 63, 64, 65, 129, 500, 998, 999, 1000):
            got = j.read(start, max_records=5)
            assert got == recs[start - 1 : start + 4]
        assert j.read(1001) == []
        assert j.read(10**9) == []
        # a read spanning many segments
        assert j.read(10, max_records=900, max_bytes=BIG) == recs[9:909]


def test_read_limits(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=1000) as j:
        j.append([bytes([i]) * 100 for i in range(30)])
        assert len(j.read(1, max_records=3)) == 3
        got = j.read(1, max_bytes=250)
        assert [s for s, _ in got] == [1, 2]  # a third record would pass 250 bytes
        assert [s for s, _ in j.read(1, max_bytes=300)] == [1, 2, 3]
        assert [s for s, _ in j.read(5, max_bytes=1)] == [5]  # at least one record
        assert [s for s, _ in j.read(29, max_records=10)] == [29, 30]
        with pytest.raises(ValueError):
            j.read(1, max_records=0)
        j.append([b"x" * 5000])  # a record larger than max_bytes comes alone
        assert j.read(31, max_bytes=100) == [(31, b"x" * 5000)]


def test_reopen_continues_numbering(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=500) as j:
        recs = fill(j, 100)
    with FileJournal(jdir, segment_bytes=500) as j:
        assert (j.first_seq, j.last_seq, j.durable_seq) == (1, 100, 100)
        assert read_all(j) == recs
        recs += fill(j, 50)
        assert j.last_seq == 150
    with FileJournal(jdir, segment_bytes=500, start_seq=77) as j:  # start_seq ignored: not empty
        assert read_all(j) == recs


def test_start_seq_on_an_empty_directory(jdir: Path) -> None:
    with FileJournal(jdir, start_seq=101) as j:
        assert (j.first_seq, j.last_seq, j.durable_seq) == (101, 100, 100)
        assert j.read(101) == []
        with pytest.raises(JournalGapError):
            j.read(100)
    with FileJournal(jdir, start_seq=5) as j:  # remembered without any record
        assert (j.first_seq, j.last_seq) == (101, 100)
        assert j.append([b"a", b"b"]) == 102
    with FileJournal(jdir) as j:
        assert j.read(101) == [(101, b"a"), (102, b"b")]
    with pytest.raises(ValueError):
        FileJournal(jdir / "other", start_seq=0)


def test_read_after_prune_raises_gap(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=300) as j:
        recs = fill(j, 200)
        removed = j.prune_before(100)
        assert removed == j.first_seq - 1 > 0
        assert j.first_seq <= 100
        with pytest.raises(JournalGapError):
            j.read(j.first_seq - 1)
        assert read_all(j) == recs[j.first_seq - 1 :]


def test_prune_keeps_every_record_at_or_above_seq_and_the_active_segment(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=400) as j:
        recs = fill(j, 300)
        total = 0
        for seq in (1, 5, 50, 51, 120, 250, 299, 300):
            total += j.prune_before(seq)
            assert j.first_seq <= seq
            assert total == j.first_seq - 1
            assert read_all(j) == recs[j.first_seq - 1 :]
        active_first = int(segments(jdir)[-1].stem)
        total += j.prune_before(10**9)  # everything that is not active
        assert segments(jdir) == [jdir / f"{active_first:020d}.seg"]
        assert j.first_seq == active_first and total == active_first - 1
        assert read_all(j) == recs[active_first - 1 :]
        assert j.prune_before(10**9) == 0
        more = fill(j, 10)
        assert read_all(j) == recs[active_first - 1 :] + more
    with FileJournal(jdir, segment_bytes=400) as j:  # pruning survives a reopen
        assert j.first_seq == active_first
        assert read_all(j) == recs[active_first - 1 :] + more


def test_prune_after_truncate(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=100) as j:
        j.append([b"x" * 90])
        j.append([b"y" * 90])  # rolls over: segment 2 holds record 2
        j.truncate_after(1)  # back to one segment
        j.append([b"z" * 90])
        assert j.prune_before(2) == 1
        assert (j.first_seq, j.last_seq) == (2, 2)
        assert j.read(2) == [(2, b"z" * 90)]


# --- torn tails and corruption -------------------------------------------------------------------


def _clone(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def test_torn_last_record_at_every_offset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with FileJournal(src, segment_bytes=10_000) as j:
        recs = fill(j, 20)
        j.append([b"L" * 40])
    last = segments(src)[-1]
    seq, offset, length = record_offsets(last)[-1]
    assert seq == 21
    full = last.read_bytes()
    for cut in range(offset, offset + length):
        d = _clone(src, tmp_path / "cut")
        (d / last.name).write_bytes(full[:cut])
        with FileJournal(d) as j:
            assert (j.last_seq, j.durable_seq) == (20, 20), cut
            assert read_all(j) == recs
            assert (d / last.name).stat().st_size == offset  # cut right before the torn record
            assert j.append([b"again"]) == 21
        with FileJournal(d) as j:
            assert read_all(j) == [*recs, (21, b"again")]


def test_torn_first_record_of_a_new_segment_at_every_offset(tmp_path: Path) -> None:
    """The last segment holds one record: cuts inside its header too (the segment header is written
    with the first batch)."""
    src = tmp_path / "src"
    with FileJournal(src, segment_bytes=200) as j:
        recs = fill(j, 10, batch=1)
        j.append([b"N" * 150])  # rolls over into a segment of its own
    last = segments(src)[-1]
    assert last.stem == f"{11:020d}"
    full = last.read_bytes()
    for cut in range(len(full)):
        d = _clone(src, tmp_path / "cut")
        (d / last.name).write_bytes(full[:cut])
        with FileJournal(d, segment_bytes=200) as j:
            assert j.last_seq == 10, cut
            assert read_all(j) == recs
            assert j.append([b"x"]) == 11
        with FileJournal(d) as j:
            assert read_all(j) == [*recs, (11, b"x")]


def test_zeroed_tail_is_torn(tmp_path: Path) -> None:
    """A file extended with zeros (size reached the disk, data did not)."""
    d = tmp_path / "j"
    with FileJournal(d, segment_bytes=200) as j:
        recs = fill(j, 10, batch=1)
        j.append([b"N" * 150])
    last = segments(d)[-1]
    last.write_bytes(bytes(last.stat().st_size))
    with FileJournal(d) as j:
        assert read_all(j) == recs
        assert last.stat().st_size == 0


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00",
        b"\xff" * 7,
        random.Random(3).randbytes(100),
        RECORD.pack(5, 0, 21) + b"abcde",  # the next sequence, a wrong CRC
        RECORD.pack(5, 0, 99) + b"abcde",  # a wrong sequence
        RECORD.pack(1000, 0, 21) + b"short",  # longer than the file
    ],
)
def test_garbage_at_the_tail_is_cut(jdir: Path, junk: bytes) -> None:
    with FileJournal(jdir) as j:
        recs = fill(j, 20)
    last = segments(jdir)[-1]
    good = last.stat().st_size
    with last.open("ab") as f:
        f.write(junk)
    with FileJournal(jdir) as j:
        assert read_all(j) == recs
        assert last.stat().st_size == good
        assert j.append([b"next"]) == 21
    with FileJournal(jdir) as j:
        assert read_all(j) == [*recs, (21, b"next")]


def test_flipped_bit_in_the_last_record_is_repaired_as_torn_tail(
    jdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FileJournal(jdir) as j:
        recs = fill(j, 20)
    last = segments(jdir)[-1]
    _, offset, length = record_offsets(last)[-1]
    assert length > RECORD.size + 1
    flip_bit(last, offset + RECORD.size + 1)  # inside the payload
    with caplog.at_level("WARNING", logger="services.common.journal"), FileJournal(jdir) as j:
        assert j.last_seq == 19
        assert read_all(j) == recs[:-1]
    assert any("tail repaired" in r.getMessage() for r in caplog.records)


def test_flipped_bit_in_an_older_segment_raises_on_read(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=500) as j:
        recs = fill(j, 200)
    first = segments(jdir)[0]
    seq, offset, _ = record_offsets(first)[2]
    flip_bit(first, offset + RECORD.size)  # payload of the third record
    with FileJournal(jdir, segment_bytes=500) as j:  # opening does not scan sealed segments
        assert j.last_seq == 200
        assert j.read(1, max_records=2) == recs[:2]  # records before it are fine
        with pytest.raises(JournalError):
            j.read(1, max_records=10)
        with pytest.raises(JournalError):
            j.read(seq)
        later = int(segments(jdir)[1].stem)
        assert read_all(j, later) == recs[later - 1 :]  # other segments are unaffected


def test_flipped_bit_in_an_older_segments_header_raises_on_read(jdir: Path) -> None:
    """A damaged length field breaks the record chain: an error on read, never a silent skip."""
    with FileJournal(jdir, segment_bytes=500) as j:
        fill(j, 200)
    first = segments(jdir)[0]
    _, offset, _ = record_offsets(first)[3]
    flip_bit(first, offset)  # the length field
    with FileJournal(jdir, segment_bytes=500) as j, pytest.raises(JournalError):
        read_all(j)


def test_damaged_segment_header_in_the_sealed_part_raises_on_open(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=500) as j:
        fill(j, 200)
    flip_bit(segments(jdir)[1], 9)  # the first-sequence field
    with pytest.raises(JournalError):
        FileJournal(jdir)


def test_missing_middle_segment_raises_on_open(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=500) as j:
        fill(j, 200)
    segments(jdir)[2].unlink()
    with pytest.raises(JournalError, match="missing"):
        FileJournal(jdir)


def test_foreign_files_are_refused_not_repaired(jdir: Path) -> None:
    jdir.mkdir()
    # the previous format: records without a segment header
    path = jdir / f"{1:020d}.seg"
    path.write_bytes(RECORD.pack(3, 0, 1) + b"abc")
    with pytest.raises(JournalError, match="format"):
        FileJournal(jdir)
    assert path.stat().st_size == RECORD.size + 3  # untouched
    (jdir / "notes.txt").write_text("ignored")
    path.unlink()
    with FileJournal(jdir) as j:
        assert j.last_seq == 0


def test_clean_reopen_scans_only_the_active_segment(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileJournal(jdir, segment_bytes=500) as j:
        recs = fill(j, 300)
    scanned: list[int] = []
    real_scan = jmod._scan

    def spy(fd: int, first: int, size: int, stop_after: int | None = None) -> jmod._Scan:
        scanned.append(first)
        return real_scan(fd, first, size, stop_after)

    monkeypatch.setattr(jmod, "_scan", spy)
    with FileJournal(jdir, segment_bytes=500) as j:
        assert scanned == [int(segments(jdir)[-1].stem)]  # older segments are sealed: trusted
        assert read_all(j) == recs


def _crash_copy(j: FileJournal, dst: Path) -> Path:
    """What a disk holds after the process dies now, if every written byte reached it: the files as
    they are, without the sync and seal that close() would do."""
    return _clone(j.directory, dst)


def test_unsynced_rolled_over_segments_are_verified_and_sealed_on_open(tmp_path: Path) -> None:
    with FileJournal(tmp_path / "j", segment_bytes=400) as j:
        durable = fill(j, 30)
        j.sync()
        recs = durable + fill(j, 200)  # several rollovers, never synced
        crash = _crash_copy(j, tmp_path / "crash")
    with FileJournal(crash, segment_bytes=400) as j:
        assert read_all(j) == recs
    scanned: list[int] = []
    real_scan = jmod._scan

    def spy(fd: int, first: int, size: int, stop_after: int | None = None) -> jmod._Scan:
        scanned.append(first)
        return real_scan(fd, first, size, stop_after)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jmod, "_scan", spy)
        with FileJournal(crash, segment_bytes=400) as j:
            assert len(scanned) == 1  # the first open sealed them
            assert read_all(j) == recs


def test_torn_unsynced_middle_segment_cuts_everything_after_it(tmp_path: Path) -> None:
    with FileJournal(tmp_path / "j", segment_bytes=400) as j:
        durable = fill(j, 30)
        j.sync()
        recs = durable + fill(j, 200)
        crash = _crash_copy(j, tmp_path / "crash")
    files = segments(crash)
    unsealed = [p for p in files if int(p.stem) > 30]
    victim = unsealed[1]  # an unsealed segment that is not the last
    assert victim != files[-1]
    seq, offset, _ = record_offsets(victim)[2]
    with victim.open("r+b") as f:
        f.truncate(offset + 5)
    with FileJournal(crash, segment_bytes=400) as j:
        assert j.last_seq == seq - 1
        assert read_all(j) == recs[: seq - 1]
        assert segments(crash)[-1] == victim
        assert j.append([b"after"]) == seq
    with FileJournal(crash) as j:
        assert read_all(j) == [*recs[: seq - 1], (seq, b"after")]


# --- records known to be durable (durable_through) ----------------------------------------------


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_durable_through_refuses_to_cut_durable_records_and_changes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with FileJournal(src) as j:
        recs = fill(j, 20)
    last = segments(src)[-1]
    offsets = record_offsets(last)
    for seq, offset, length in offsets[-4:]:
        variants: list[tuple[Path, bool]] = []  # (damaged copy, whether a damaged file is named)
        # Cut at the record (a clean end), inside its header, inside its payload; a flipped bit.
        for cut in (offset, offset + 1, offset + length - 1):
            d = _clone(src, tmp_path / f"cut{cut}")
            (d / last.name).write_bytes(last.read_bytes()[:cut])
            variants.append((d, cut > offset))
        flip = _clone(src, tmp_path / f"flip{seq}")
        flip_bit(flip / last.name, offset + RECORD.size - 1)  # inside the sequence number
        variants.append((flip, True))
        for damaged, names_file in variants:
            before = _files(damaged)
            for needed in (seq, 20):
                with pytest.raises(JournalDamagedError) as err:
                    FileJournal(damaged, durable_through=needed)
                e = err.value
                assert (e.kept, e.needed) == (seq - 1, needed)
                assert e.files == [damaged / last.name]
                assert e.path == (damaged / last.name if names_file else None)
                lost = f"record {needed}" if needed == seq else f"records {seq}..{needed}"
                assert lost in str(e), str(e)
                assert _files(damaged) == before, "nothing cut, nothing deleted"
            with FileJournal(damaged, durable_through=seq - 1) as j:  # the cut loses nothing durable
                assert read_all(j) == recs[: seq - 1]


def test_durable_through_keeps_later_segments_of_a_torn_middle_segment(tmp_path: Path) -> None:
    with FileJournal(tmp_path / "j", segment_bytes=400) as j:
        fill(j, 30)
        j.sync()
        fill(j, 200)
        crash = _crash_copy(j, tmp_path / "crash")
    victim = [p for p in segments(crash) if int(p.stem) > 30][1]
    seq, offset, _ = record_offsets(victim)[2]
    with victim.open("r+b") as f:
        f.truncate(offset + 5)
    before = _files(crash)
    with pytest.raises(JournalDamagedError) as err:
        FileJournal(crash, segment_bytes=400, durable_through=seq)
    assert err.value.path == victim and err.value.kept == seq - 1
    assert _files(crash) == before  # the unsealed segments before it were not sealed either
    with FileJournal(crash, segment_bytes=400, durable_through=seq - 1) as j:
        assert j.last_seq == seq - 1


def test_durable_through_a_journal_that_ends_early(tmp_path: Path) -> None:
    """Whole segments gone at the end: no torn record anywhere, still refused; the stale seal of the
    segment that would become the active one is not rewritten."""
    d = tmp_path / "j"
    with FileJournal(d, segment_bytes=200) as j:
        recs = fill(j, 40, batch=1)
    files = segments(d)
    assert len(files) > 3
    files[-1].unlink()
    files[-2].unlink()
    end = int(files[-2].stem) - 1
    before = _files(d)
    with pytest.raises(JournalDamagedError) as err:
        FileJournal(d, segment_bytes=200, durable_through=40)
    assert (err.value.kept, err.value.needed, err.value.path) == (end, 40, None)
    assert f"the journal ends at record {end}" in str(err.value)
    assert _files(d) == before
    with FileJournal(d, segment_bytes=200, durable_through=end) as j:
        assert read_all(j) == recs[:end]
        assert not j.created


def test_durable_through_on_a_new_journal(tmp_path: Path) -> None:
    with FileJournal(tmp_path / "j", start_seq=8, durable_through=7) as j:
        assert j.created and (j.first_seq, j.last_seq) == (8, 7)
        assert j.append([b"x"]) == 8


def test_quarantine_segments(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with FileJournal(d, segment_bytes=200) as j:
        fill(j, 30)
    before = _files(d)
    folder = quarantine_segments(d)
    assert folder == d / "damaged-1"
    assert segments(d) == []
    assert {f"damaged-1/{k}": v for k, v in before.items()} == _files(d)
    with FileJournal(d, start_seq=50) as j:  # the folder is not mistaken for segments
        assert j.created and j.first_seq == 50
        j.append([b"fifty"])
    assert quarantine_segments(d) == d / "damaged-2"
    assert [p.name for p in (d / "damaged-2").iterdir()] == [f"{50:020d}.seg"]
    with FileJournal(d, start_seq=51) as j:
        assert j.first_seq == 51 and read_all(j) == []


# --- sync and durability -------------------------------------------------------------------------


def test_durable_seq_advances_only_with_sync(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=300) as j:
        for i in range(50):
            j.append([payload(i)] * (i % 4 + 1))
            assert j.durable_seq <= j.last_seq
            if i % 5 == 0:
                assert j.sync() == j.last_seq == j.durable_seq
        assert j.durable_seq < j.last_seq
        assert j.sync() == j.last_seq


def test_sync_concurrent_with_appends(jdir: Path) -> None:
    j = FileJournal(jdir, segment_bytes=64 << 10)
    stop = threading.Event()
    errors: list[BaseException] = []
    syncs = [0]

    def hammer() -> None:
        try:
            while not stop.is_set():
                durable = j.durable_seq
                last = j.last_seq
                assert durable <= last
                assert j.sync() >= durable
                syncs[0] += 1
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    rng = random.Random(5)
    recs: list[tuple[int, bytes]] = []
    try:
        while len(recs) < 10_000:
            n = rng.randint(1, 20)
            start = j.last_seq + 1
            batch = [payload(s, rng.randint(0, 120)) for s in range(start, start + n)]
            assert j.append(batch) == start + n - 1
            recs.extend(zip(range(start, start + n), batch, strict=True))
            if rng.random() < 0.05:
                j.read(max(1, start - 50), max_records=60)  # reads race with syncs too
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert syncs[0] > 0
    assert j.sync() == j.durable_seq == j.last_seq == len(recs)
    crash = _crash_copy(j, jdir.parent / "crash")  # everything synced is there without close()
    j.close()
    assert len(segments(jdir)) > 5
    for d in (crash, jdir):
        with FileJournal(d) as r:
            assert r.last_seq == len(recs)
            assert read_all(r) == recs


def test_sync_started_before_a_rollover_still_syncs_the_old_segment(
    jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = FileJournal(jdir, segment_bytes=300)
    j.append([b"a" * 100])
    synced: list[str] = []
    entered = threading.Event()
    release = threading.Event()
    real = jmod._datasync

    def slow_datasync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        real(fd)
        synced.append(Path(name).stem)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    monkeypatch.setattr(jmod, "_datasync", slow_datasync)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(j.sync()))
    t.start()
    assert entered.wait(10)  # the sync is inside fdatasync of segment 1 ...
    j.append([b"b" * 100])  # ... when record 2 lands in segment 1 too (it fits)
    j.append([b"c" * 150])  # and this one rolls over to segment 3
    assert [p.stem for p in segments(jdir)] == [f"{1:020d}", f"{3:020d}"]
    assert j.durable_seq == 0
    release.set()
    t.join()
    assert result == [1]  # what was appended before that sync began
    assert j.durable_seq == 1
    synced.clear()
    assert j.sync() == 3
    assert f"{1:020d}" in synced  # the old segment's record 2 is made durable by the next sync
    assert f"{3:020d}" in synced
    j.close()
    raw = (jdir / f"{1:020d}.seg").read_bytes()
    assert jmod._seal_of(raw[:DATA_START], 1, len(raw)) == 2  # and sealed


def test_a_failed_sync_poisons_the_journal(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = FileJournal(jdir)
    j.append([b"a"])

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(jmod, "_datasync", failing)
    with pytest.raises(JournalError):
        j.sync()
    assert j.durable_seq == 0
    with pytest.raises(JournalError):
        j.append([b"b"])
    with pytest.raises(JournalError):
        j.sync()
    j.close()  # releases the files without syncing
    monkeypatch.undo()
    with FileJournal(jdir) as j:
        assert j.read(1) == [(1, b"a")]


def test_close_then_use(jdir: Path) -> None:
    j = FileJournal(jdir)
    j.append([b"a", b"b"])
    j.close()
    j.close()
    assert j.durable_seq == 2
    assert j.sync() == 2
    assert j.read(1) == [(1, b"a"), (2, b"b")]
    with pytest.raises(JournalError):
        j.append([b"c"])


# --- truncate_after (recovery) -------------------------------------------------------------------


def test_truncate_after(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=300) as j:
        recs = fill(j, 100)
        j.sync()
        assert j.truncate_after(100) == 0
        assert j.truncate_after(90) == 10
        assert (j.last_seq, j.durable_seq) == (90, 90)
        assert read_all(j) == recs[:90]
        boundary = int(segments(jdir)[3].stem) - 1  # exactly the end of a segment
        assert j.truncate_after(boundary) == 90 - boundary
        assert read_all(j) == recs[:boundary]
        assert int(segments(jdir)[-1].stem) <= boundary
        j.truncate_after(17)
        assert j.last_seq == 17 and int(segments(jdir)[-1].stem) <= 17
        more = fill(j, 40)
        assert read_all(j) == recs[:17] + more
    with FileJournal(jdir, segment_bytes=300) as j:
        assert read_all(j) == recs[:17] + more
        j.prune_before(30)
        first = j.first_seq
        with pytest.raises(JournalGapError):
            j.truncate_after(first - 2)
        last = j.last_seq
        assert j.truncate_after(first - 1) == last - first + 1
        assert (j.first_seq, j.last_seq) == (first, first - 1)
        assert j.append([b"z"]) == first
    with FileJournal(jdir) as j:
        assert read_all(j) == [(first, b"z")]


# --- the index -----------------------------------------------------------------------------------


def test_tail_reads_do_not_scan_the_segment(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FileJournal(jdir) as j:
        recs = fill(j, 20_000, batch=100)  # one segment of ~0.8 MB
        read_bytes = [0]
        real = os.pread

        def counting(fd: int, n: int, off: int) -> bytes:
            data = real(fd, n, off)
            read_bytes[0] += len(data)
            return data

        monkeypatch.setattr(os, "pread", counting)
        assert j.read(19_990) == recs[19_989:]
        assert j.read(10_001, max_records=3) == recs[10_000:10_003]
        assert read_bytes[0] < 40 << 10


def test_lazy_index_of_older_segments(jdir: Path) -> None:
    with FileJournal(jdir, segment_bytes=50_000) as j:
        recs = fill(j, 5000, batch=50)
    rng = random.Random(1)
    with FileJournal(jdir, segment_bytes=50_000) as j:
        for _ in range(300):
            start = rng.randint(1, 5000)
            n = rng.randint(1, 300)
            assert j.read(start, max_records=n, max_bytes=BIG) == recs[start - 1 : start - 1 + n]
        seg = j._segments[0]
        assert len(seg.seqs) > 1  # the index of an old segment grew with the reads
        assert list(seg.seqs) == sorted(seg.seqs)


# --- property test -------------------------------------------------------------------------------

batches = st.lists(st.lists(st.integers(0, 300), min_size=0, max_size=12), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.tuples(batches, st.booleans(), st.booleans()), min_size=1, max_size=5),
    segment_bytes=st.sampled_from([64, 500, 4096, 1 << 20]),
    start_seq=st.integers(1, 10**12),
)
def test_property_reopen_anywhere_reads_back_everything(
    plan: list[tuple[list[list[int]], bool, bool]], segment_bytes: int, start_seq: int
) -> None:
    """Random batch and payload sizes, random syncs, reopen after each phase (with or without a
    clean close): reading everything back equals what was appended."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "j"
        expected: list[tuple[int, bytes]] = []
        rng = random.Random(len(plan))
        for phase_batches, sync_each, clean in plan:
            j = FileJournal(d, segment_bytes=segment_bytes, start_seq=start_seq)
            assert j.first_seq == start_seq and j.last_seq == start_seq + len(expected) - 1
            for sizes in phase_batches:
                base = j.last_seq + 1
                batch = [rng.randbytes(n) for n in sizes]
                assert j.append(batch) == base + len(batch) - 1
                expected.extend(zip(range(base, base + len(batch)), batch, strict=True))
                if sync_each:
                    assert j.sync() == j.last_seq
            assert read_all(j) == expected
            if clean:
                j.close()
            else:  # a crash: the files as they are (all written bytes, unsynced ones too), unsealed
                crash = _crash_copy(j, Path(tmp) / "crash")
                j.close()
                shutil.rmtree(d)
                crash.rename(d)
        with FileJournal(d, segment_bytes=segment_bytes) as j:
            assert read_all(j) == expected


@pytest.fixture(autouse=True)
def _no_leaked_fds() -> Iterator[None]:
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) <= before + 2  # tolerate the test runner's own files
