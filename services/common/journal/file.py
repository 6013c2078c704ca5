"""The file backend: an append-only, segmented, CRC-checked record log (like Redis AOF) with group
commit. FileJournal implements services.common.journal.Journal; FileJournals is its factory (one
directory per named journal under a service directory).

Layout: a directory of segment files named by the sequence of their first record
(`00000000000000000001.seg`), so lexical order is sequence order. A segment file is

    segment header (40 bytes): magic "EXJS" | u16 version | u16 flags | u64 first seq | u32 crc32
                               | seal: u64 last seq | u64 file size | u32 crc32   (zeros while active)
    records:                   u32 payload length | u32 crc32(seq || payload) | u64 seq | payload

all little endian. The header is written together with the first batch, so a segment file may also
be empty (0 bytes). A new segment starts before a batch that would take the active one past
`segment_bytes` (a single larger batch makes one oversized segment); a record never spans two files.

`write_after` (and `append_after`, its async form) writes a whole batch with one pwrite() on a raw
file descriptor at the offset the journal keeps (so a failed write can be cut off again instead of
leaving junk between records), after checking the writer's expected last sequence (FencedError when
it is not the journal's last: nothing is written); `sync` (and `flush`, which runs it in a worker
thread) makes everything appended before it durable with one fdatasync per touched file (group
commit), and only then advances `durable_seq` and wakes the followers (`follow`). A segment that was
rolled over is fdatasynced by the next sync and then *sealed*: its last sequence and size are written
into its header, which tells a later open that the segment is complete and durable.

Recovery on open: segments up to the last sealed one are trusted (their record counts follow from the
file names; their records are CRC-checked when read). Everything after - the active segment, plus any
rolled-over segment whose sync never finished - is the *tail*: it is verified record by record and cut
right before the first partial, corrupt or out-of-sequence record (its bytes were never made durable,
so they were never acknowledged), with a warning; segments after a cut are deleted. Corruption in the
trusted part raises JournalError on open (a damaged header) or on read (a damaged record), never skipped.

A caller that knows records up to some sequence were durable (the host: a snapshot covers them) says
so with `durable_through`. A tail repair that would cut any of those records - they were acknowledged,
so this is damage, not a torn write - and a journal that simply ends before them both raise
JournalDamagedError on open, and the files are left exactly as they were: nothing is cut or deleted.
What to do then is the caller's decision (refuse to start; or, on an operator's explicit order, move
the damaged segments aside with `quarantine_segments` and start a new journal after the snapshot).

Reads use a sparse per-segment index of (seq, offset) entries (one every INDEX_RECORDS records or
INDEX_BYTES bytes), maintained while appending and scanning and extended lazily for older segments,
so a read seeks close to the requested record instead of scanning the segment.

Thread safety: one owner appends (usually the event-loop thread) while another thread runs `sync`
(`await journal.flush()`); `read` may run on any thread at the same time, and followers on any event
loop. All
methods are safe to call concurrently: bookkeeping is under a short lock that is never held across an
fsync, and syncs are serialized among themselves. The directory is not locked against a second
process: only one process may open a journal directory at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
import threading
import zlib
from array import array
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from services.common.journal.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    DurableSignal,
    FencedError,
    Journal,
    JournalDamagedError,
    JournalError,
    JournalFactory,
    JournalGapError,
    Record,
    follow_durable,
)

log = logging.getLogger(__name__)

RECORD = struct.Struct("<IIQ")  # payload length, crc32(seq || payload), seq
_SEQ = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_SEG_HEAD = struct.Struct("<4sHHQ")  # magic, version, flags, first seq; then u32 crc32 of these 16 bytes
_SEAL = struct.Struct("<QQ")  # last seq, file size; then u32 crc32(first seq || these 16 bytes)
SEG_MAGIC = b"EXJS"
SEG_VERSION = 1
HEAD_SIZE = _SEG_HEAD.size + 4  # 20
SEAL_OFFSET = HEAD_SIZE
SEAL_SIZE = _SEAL.size + 4  # 20
DATA_START = HEAD_SIZE + SEAL_SIZE  # 40: offset of the first record
SUFFIX = ".seg"
MAX_PAYLOAD = 0xFFFFFFFF

INDEX_RECORDS = 16  # sparse index: an entry at least every this many records ...
INDEX_BYTES = 64 << 10  # ... and at least every this many bytes
READ_CHUNK_MIN = 16 << 10  # bytes fetched by a read's first pread() (tailing reads stay small) ...
READ_CHUNK = 256 << 10  # ... doubling per pread() up to this
SCAN_CHUNK = 4 << 20  # bytes fetched per pread() while verifying a segment

_datasync: Callable[[int], None] = os.fdatasync if hasattr(os, "fdatasync") else os.fsync


DAMAGED_PREFIX = "damaged-"


def quarantine_segments(directory: str | os.PathLike[str]) -> Path:
    """Move every segment file of the (closed) journal in `directory` into a new sub-folder
    `damaged-<n>` (n one more than any such folder already there), durably; returns the folder. The
    journal directory is then empty: a FileJournal opened on it starts at its `start_seq`."""
    base = Path(directory)
    taken = [
        int(e.name[len(DAMAGED_PREFIX) :])
        for e in os.scandir(base)
        if e.is_dir() and e.name.startswith(DAMAGED_PREFIX) and e.name[len(DAMAGED_PREFIX) :].isdigit()
    ]
    folder = base / f"{DAMAGED_PREFIX}{max(taken, default=0) + 1}"
    folder.mkdir()
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.name.endswith(SUFFIX) and entry.name[: -len(SUFFIX)].isdigit() and entry.is_file():
            os.rename(entry.path, folder / entry.name)
    fsync_dir(folder)
    fsync_dir(base)
    return folder


def _crc(seq: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))


def _segment_header(first: int) -> bytes:
    head = _SEG_HEAD.pack(SEG_MAGIC, SEG_VERSION, 0, first)
    return head + _U32.pack(zlib.crc32(head)) + bytes(SEAL_SIZE)


def _seal(first: int, last: int, size: int) -> bytes:
    body = _SEAL.pack(last, size)
    return body + _U32.pack(zlib.crc32(body, zlib.crc32(_SEQ.pack(first))))


def _seal_of(raw: bytes, first: int, size: int) -> int | None:
    """The last sequence a valid seal in header bytes `raw` records for a file of `size`, else None."""
    if len(raw) < DATA_START:
        return None
    body = raw[SEAL_OFFSET : SEAL_OFFSET + _SEAL.size]
    (crc,) = _U32.unpack_from(raw, SEAL_OFFSET + _SEAL.size)
    last, sealed_size = _SEAL.unpack(body)
    if crc != zlib.crc32(body, zlib.crc32(_SEQ.pack(first))) or sealed_size != size or last < first:
        return None
    return int(last)


class _Segment:
    __slots__ = ("first", "gen", "last", "offs", "path", "seqs", "size")

    def __init__(self, path: Path, first: int, last: int, size: int) -> None:
        self.path = path
        self.first = first
        self.last = last  # first - 1 while empty
        self.size = size  # bytes of complete records (plus the header), i.e. where the next write goes
        self.gen = 0  # bumped when the segment is cut (index entries computed before are stale)
        # Sparse index: seqs[i] starts at file offset offs[i]; ascending; always begins with the first
        # record. Complete for the active segment; for older ones a prefix, extended by reads.
        self.seqs = array("Q")
        self.offs = array("Q")
        if last >= first:
            self.seqs.append(first)
            self.offs.append(DATA_START)


class _Scan(NamedTuple):
    last: int  # last good sequence (first - 1 if none)
    end: int  # offset right after the last good record
    seqs: array[int]
    offs: array[int]
    problem: str | None  # why the scan stopped before `size`, if it did


def _scan(fd: int, first: int, size: int, stop_after: int | None = None) -> _Scan:
    """Verify records (length, sequence, CRC) from DATA_START up to `size` or sequence stop_after,
    stopping at the first bad one; builds the sparse index on the way."""
    seqs: array[int] = array("Q")
    offs: array[int] = array("Q")
    hsize = RECORD.size
    unpack = RECORD.unpack_from
    crc32 = zlib.crc32
    pos = DATA_START
    seq = first
    buf = b""
    mv = memoryview(buf)
    base = pos  # buf holds the file bytes [base, base + len(buf))
    problem: str | None = None
    while pos < size:
        if stop_after is not None and seq > stop_after:
            break
        off = pos - base
        if off + hsize > len(buf):
            if pos + hsize > size:
                problem = f"partial record header at offset {pos}"
                break
            buf = os.pread(fd, min(SCAN_CHUNK, size - pos), pos)
            mv = memoryview(buf)
            base, off = pos, 0
            if len(buf) < hsize:
                problem = f"file ends at offset {pos + len(buf)}"
                break
        length, crc, rseq = unpack(buf, off)
        if rseq != seq:
            problem = f"sequence {rseq} at offset {pos} where {seq} was expected"
            break
        end = pos + hsize + length
        if end > size:
            problem = f"partial record {seq} at offset {pos}"
            break
        if off + hsize + length > len(buf):
            buf = os.pread(fd, max(min(SCAN_CHUNK, size - pos), hsize + length), pos)
            mv = memoryview(buf)
            base, off = pos, 0
            if len(buf) < hsize + length:
                problem = f"file ends at offset {pos + len(buf)}"
                break
        if crc32(mv[off + hsize : off + hsize + length], crc32(mv[off + 8 : off + 16])) != crc:
            problem = f"CRC mismatch in record {seq} at offset {pos}"
            break
        if not seqs or seq - seqs[-1] >= INDEX_RECORDS or pos - offs[-1] >= INDEX_BYTES:
            seqs.append(seq)
            offs.append(pos)
        pos = end
        seq += 1
    return _Scan(seq - 1, pos, seqs, offs, problem)


def _header_state(path: Path, raw: bytes, first: int, size: int) -> str:
    """'empty', 'ok' or 'torn' (a header that was never completely written); JournalError for a file
    that is not a segment of this format."""
    if size == 0:
        return "empty"
    expected = _segment_header(first)[:HEAD_SIZE]
    head = raw[:HEAD_SIZE]
    if head == expected[: len(head)]:
        return "ok" if size >= DATA_START else "torn"
    if not any(head):
        return "torn"  # zeros: the size was extended but the data never reached the disk
    if head[:4] == SEG_MAGIC:
        raise JournalError(
            f"{path}: segment header does not match (version, first sequence {first} or CRC); "
            "the journal is damaged or was written by another format version"
        )
    raise JournalError(f"{path}: not a journal segment of this format (no {SEG_MAGIC!r} header)")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[n:]
        offset += n


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (files created, renamed or deleted in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileJournal:
    """Journal on local segment files. See the module docstring for format, recovery and threads."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        start_seq: int = 1,
        durable_through: int = 0,
    ) -> None:
        """Open (verifying and repairing the tail) or create the journal in `directory`; a new one
        numbers its first record `start_seq`. Records up to `durable_through` are known to have been
        durable: JournalDamagedError (and no change on disk) if opening would lose any of them."""
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        if start_seq < 1:
            raise ValueError(f"start_seq must be at least 1, not {start_seq}")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # bookkeeping; never held across an fsync
        self._sync_lock = threading.Lock()  # serializes sync / close / truncate_after
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []  # segments' first sequences, for bisect
        self._fd = -1  # the active (last) segment, O_RDWR; we keep the write offset ourselves
        self._rolled: list[tuple[int, _Segment]] = []  # rolled-over segments the next sync must seal
        self._dir_dirty = False  # segment files created or deleted since the last sync
        self._failed: BaseException | None = None
        self._closed = False
        self._signal = DurableSignal()  # wakes followers
        self.created = False  # True when this open created the journal (no segment was there)
        try:
            self._open(start_seq, durable_through)
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise
        self._last = self._segments[-1].last
        self._durable = self._last  # _open made everything it kept durable

    # --- opening -------------------------------------------------------------------------------

    def _path(self, first: int) -> Path:
        return self._dir / f"{first:020d}{SUFFIX}"

    def _damaged(
        self, kept: int, needed: int, problem: str, path: Path | None, files: Sequence[Path]
    ) -> JournalDamagedError:
        return JournalDamagedError.lost(
            str(path if path is not None else self._dir),
            location=str(self._dir),
            kept=kept,
            needed=needed,
            problem=problem,
            unchanged="the files were left unchanged",
            path=path,
            files=files,
        )

    def _open(self, start_seq: int, durable_through: int = 0) -> None:
        found: dict[int, Path] = {}
        for entry in os.scandir(self._dir):
            stem = entry.name[: -len(SUFFIX)]
            if entry.name.endswith(SUFFIX) and stem.isdigit() and entry.is_file():
                first = int(stem)
                if first in found:
                    raise JournalError(f"{self._dir}: two segment files start at {first}")
                found[first] = Path(entry.path)
        if not found:
            path = self._path(start_seq)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fsync_dir(self._dir)
            self._install([_Segment(path, start_seq, start_seq - 1, 0)])
            self.created = True
            return
        firsts = sorted(found)
        paths = [found[f] for f in firsts]
        sizes: list[int] = []
        heads: list[bytes] = []
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                sizes.append(os.fstat(fd).st_size)
                heads.append(os.pread(fd, DATA_START, 0))
            finally:
                os.close(fd)
        n = len(paths)
        seals = [_seal_of(heads[i], firsts[i], sizes[i]) for i in range(n)]
        states = [_header_state(paths[i], heads[i], firsts[i], sizes[i]) for i in range(n)]
        # The trusted part: every segment up to the last sealed one (the active one never counts).
        trusted = max((i for i in range(n - 1) if seals[i] is not None), default=-1)
        segments: list[_Segment] = []
        for i in range(trusted + 1):
            last = firsts[i + 1] - 1
            if states[i] != "ok":
                raise JournalError(f"{paths[i]}: damaged header in the sealed part of the journal")
            sealed = seals[i]
            if sealed is not None and sealed != last:
                raise JournalError(
                    f"{paths[i]}: sealed with records up to {sealed} but the next segment starts at "
                    f"{firsts[i + 1]}; segments are missing or misnamed"
                )
            if last < firsts[i]:
                raise JournalError(f"{paths[i]}: an older segment without records")
            segments.append(_Segment(paths[i], firsts[i], last, sizes[i]))
        # The tail: verify record by record (reading only), decide where to cut, check that the cut
        # keeps every record known to be durable, and only then change files.
        plan: list[tuple[int, _Scan]] = []  # the tail segments kept; the last one becomes active
        for i in range(trusted + 1, n):
            path, first, size = paths[i], firsts[i], sizes[i]
            stop_after = None if i == n - 1 else firsts[i + 1] - 1
            if states[i] == "ok":
                fd = os.open(path, os.O_RDONLY)
                try:
                    scan = _scan(fd, first, size, stop_after)
                finally:
                    os.close(fd)
            else:
                problem = "torn segment header" if states[i] == "torn" else None
                scan = _Scan(first - 1, 0, array("Q"), array("Q"), problem)
            plan.append((i, scan))
            if stop_after is None or scan.last != stop_after:
                break  # the last segment, or one that ends early: everything after it goes
        k, final = plan[-1]
        cut = final.end != sizes[k] or k != n - 1
        why = final.problem or f"records missing before the next segment (after offset {final.end})"
        if final.last < durable_through:
            if cut:
                raise self._damaged(final.last, durable_through, why, paths[k], paths)
            raise self._damaged(
                final.last, durable_through, f"the journal ends at record {final.last}", None, paths
            )
        for i, scan in plan:
            path, first, size = paths[i], firsts[i], sizes[i]
            fd = os.open(path, os.O_RDWR)
            try:
                if i != k:
                    # A complete rolled-over segment whose sync never finished: make it durable, seal it.
                    if scan.end != size:
                        log.warning(
                            "journal: %s has %d bytes of junk after its last record; cut",
                            path,
                            size - scan.end,
                            extra={"file": str(path), "offset": scan.end},
                        )
                        os.ftruncate(fd, scan.end)
                    _datasync(fd)
                    _pwrite_all(fd, _seal(first, scan.last, scan.end), SEAL_OFFSET)
                    _datasync(fd)
                    os.close(fd)
                    segments.append(self._scanned(path, first, scan))
                    continue
                if cut:
                    dropped = paths[i + 1 :]
                    log.warning(
                        "journal tail repaired: %s cut at offset %d (%d bytes dropped: %s); "
                        "%d later segment(s) deleted",
                        path,
                        scan.end,
                        size - scan.end,
                        why,
                        len(dropped),
                        extra={"file": str(path), "offset": scan.end, "dropped_bytes": size - scan.end},
                    )
                    os.ftruncate(fd, scan.end)
                    for p in dropped:
                        p.unlink(missing_ok=True)
                if scan.end >= DATA_START and any(heads[i][SEAL_OFFSET:DATA_START]):
                    _pwrite_all(fd, bytes(SEAL_SIZE), SEAL_OFFSET)  # a stale seal on the active segment
                _datasync(fd)  # what a crashed process left in the page cache is durable from now on
                segments.append(self._scanned(path, first, scan))
                self._fd = fd
            except BaseException:
                if self._fd != fd:
                    os.close(fd)
                raise
        fsync_dir(self._dir)
        self._install(segments)

    @staticmethod
    def _scanned(path: Path, first: int, scan: _Scan) -> _Segment:
        seg = _Segment(path, first, scan.last, scan.end)
        seg.seqs, seg.offs = scan.seqs, scan.offs
        return seg

    def _install(self, segments: list[_Segment]) -> None:
        self._segments = segments
        self._firsts = [s.first for s in segments]

    # --- properties ----------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def first_seq(self) -> int:
        return self._segments[0].first

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def durable_seq(self) -> int:
        return self._durable

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalError(f"{self._dir}: journal is closed")
        if self._failed is not None:
            raise JournalError(
                f"{self._dir}: an earlier write or sync failed ({self._failed}); reopen the journal"
            ) from self._failed

    # --- writing -------------------------------------------------------------------------------

    def write_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        """Append records numbered expected_last_seq + 1... with one write; returns their sequences.
        Durable only after sync(). FencedError, writing nothing, when expected_last_seq is not
        last_seq."""
        last = self._write(payloads, expected_last_seq)
        return range(expected_last_seq + 1, last + 1)

    async def append_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        """write_after for async callers (the page-cache write does not wait for the disk)."""
        return self.write_after(expected_last_seq, payloads)

    def append(self, payloads: Sequence[bytes]) -> int:
        """Unfenced append for tools and tests (one writer, no fencing needed): records numbered
        last_seq + 1...; returns the new last_seq. Durable only after sync()."""
        return self._write(payloads, None)

    def _write(self, payloads: Sequence[bytes], expected: int | None) -> int:
        with self._lock:
            self._check_usable()
            if expected is not None and expected != self._last:
                raise FencedError.refused(str(self._dir), expected, self._last)
            if not payloads:
                return self._last
            seg = self._segments[-1]
            batch = 0
            for p in payloads:
                if len(p) > MAX_PAYLOAD:
                    raise ValueError(f"a record holds at most {MAX_PAYLOAD} bytes, not {len(p)}")
                batch += RECORD.size + len(p)
            if seg.last >= seg.first and seg.size + batch > self.segment_bytes:
                self._roll()
                seg = self._segments[-1]
            parts: list[bytes] = []
            start = seg.size
            pos = start
            if pos == 0:
                parts.append(_segment_header(seg.first))
                pos = DATA_START
            seq = self._last
            new_seqs: list[int] = []
            new_offs: list[int] = []
            iseq = seg.seqs[-1] if seg.seqs else -INDEX_RECORDS
            ioff = seg.offs[-1] if seg.offs else -INDEX_BYTES
            pack = RECORD.pack
            pack_seq = _SEQ.pack
            crc32 = zlib.crc32
            for payload in payloads:
                seq += 1
                if seq - iseq >= INDEX_RECORDS or pos - ioff >= INDEX_BYTES:
                    iseq, ioff = seq, pos
                    new_seqs.append(seq)
                    new_offs.append(pos)
                parts.append(pack(len(payload), crc32(payload, crc32(pack_seq(seq))), seq))
                parts.append(payload)
                pos += RECORD.size + len(payload)
            try:
                _pwrite_all(self._fd, b"".join(parts), start)
            except OSError as exc:
                self._failed = exc  # fail-stop: the caller must reopen (and so re-verify) the journal
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)  # do not leave part of a batch that was refused
                raise JournalError(f"{seg.path}: append failed: {exc}") from exc
            seg.seqs.extend(new_seqs)
            seg.offs.extend(new_offs)
            seg.size = pos
            seg.last = seq
            self._last = seq
            return seq

    def _roll(self) -> None:
        """Start a new segment (under the lock). The old one is fdatasynced and sealed by the next sync
        (which may be one that is already running: it keeps the old descriptor until it is done)."""
        first = self._last + 1
        path = self._path(first)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise JournalError(f"{path}: cannot start a new segment: {exc}") from exc
        self._rolled.append((self._fd, self._segments[-1]))
        self._fd = fd
        self._segments.append(_Segment(path, first, first - 1, 0))
        self._firsts.append(first)
        self._dir_dirty = True

    def sync(self) -> int:
        """Make everything appended before this call durable (one fdatasync per touched file);
        returns durable_seq. After close() it just returns durable_seq. Blocks: call it in a thread."""
        with self._sync_lock:
            return self._sync_locked()

    async def flush(self) -> int:
        """sync() in a worker thread."""
        return await asyncio.to_thread(self.sync)

    def _sync_locked(self) -> int:
        with self._lock:
            if self._closed:
                return self._durable
            self._check_usable()
            target = self._last
            if target == self._durable and not self._rolled and not self._dir_dirty:
                return self._durable
            rolled, self._rolled = self._rolled, []
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            fd = self._fd  # stays open until this sync ends even if append rolls over meanwhile
        try:
            for rfd, _ in rolled:
                _datasync(rfd)
            if dir_dirty:
                fsync_dir(self._dir)
            _datasync(fd)
            for rfd, seg in rolled:  # complete and durable: record that in the header
                _pwrite_all(rfd, _seal(seg.first, seg.last, seg.size), SEAL_OFFSET)
                _datasync(rfd)
        except OSError as exc:
            with self._lock:
                self._failed = exc  # after a failed fsync the page cache cannot be trusted
            raise JournalError(f"{self._dir}: sync failed; reopen the journal: {exc}") from exc
        finally:
            for rfd, _ in rolled:
                os.close(rfd)
        with self._lock:
            if target > self._durable:
                self._durable = target
            durable = self._durable
        self._signal.notify()
        return durable

    # --- reading -------------------------------------------------------------------------------

    def read(
        self, from_seq: int, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[Record]:
        """Records from from_seq on, in order: at most max_records, and no more than max_bytes of
        payload unless the first record alone is larger (at least one record when any exists).
        [] when from_seq > last_seq; JournalGapError when from_seq < first_seq. Appended records are
        readable before they are durable (filter with durable_seq where that matters)."""
        if max_records < 1:
            raise ValueError(f"max_records must be positive, not {max_records}")
        with self._lock:
            if from_seq > self._last:
                return []
            if from_seq < self._segments[0].first:
                raise JournalGapError.pruned(str(self._dir), from_seq, self._segments[0].first, self._last)
            i = bisect_right(self._firsts, from_seq) - 1
            plan = [(s, s.gen, s.last, s.size) for s in self._segments[i:] if s.last >= s.first]
            seg0 = plan[0][0]
            j = bisect_right(seg0.seqs, from_seq) - 1
            start = (seg0.seqs[j], seg0.offs[j])
            known = seg0.seqs[-1]
        out: list[Record] = []
        total = 0
        for k, (seg, gen, last, end) in enumerate(plan):
            seq, pos = start if k == 0 else (seg.first, DATA_START)
            known_upto = known if k == 0 else seg.first
            total, done = self._read_segment(
                seg, gen, seq, pos, last, end, from_seq, known_upto, out, max_records, max_bytes, total
            )
            if done:
                break
        return out

    def follow(
        self, from_seq: int, *, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> AsyncIterator[list[Record]]:
        """Durable records from from_seq on, then new ones as sync() makes them durable; ends after
        close() (see services.common.journal.JournalReader.follow)."""
        return follow_durable(self, self._signal, from_seq, max_records, max_bytes)

    def _read_segment(
        self,
        seg: _Segment,
        gen: int,
        seq: int,
        pos: int,
        last: int,
        end: int,
        from_seq: int,
        known: int,
        out: list[Record],
        max_records: int,
        max_bytes: int,
        total: int,
    ) -> tuple[int, bool]:
        """Read records of one segment from (seq, pos) - an index entry - up to `last` (at offset
        `end`), collecting those >= from_seq into out. Index entries past `known` are added to the
        segment's index. Returns (payload bytes so far, whether a limit was reached)."""
        try:
            fd = os.open(seg.path, os.O_RDONLY)
        except FileNotFoundError:
            if seg.last < self.first_seq:
                raise JournalGapError(
                    f"{seg.path}: pruned while reading (oldest is now {self.first_seq})",
                    requested=from_seq,
                    first_seq=self.first_seq,
                    last_seq=self._last,
                ) from None
            raise JournalError(f"{seg.path}: segment file is missing") from None
        hsize = RECORD.size
        unpack = RECORD.unpack_from
        crc32 = zlib.crc32
        new_seqs: list[int] = []
        new_offs: list[int] = []
        iseq, ioff = seq, pos
        done = False
        chunk = READ_CHUNK_MIN
        try:
            buf = b""
            mv = memoryview(buf)
            base = pos
            while seq <= last:
                off = pos - base
                if off + hsize > len(buf):
                    buf = os.pread(fd, min(chunk, end - pos), pos)
                    chunk = min(chunk * 2, READ_CHUNK)
                    mv = memoryview(buf)
                    base, off = pos, 0
                    if len(buf) < hsize:
                        raise JournalError(f"{seg.path}: file ends at offset {pos} before record {seq}")
                length, crc, rseq = unpack(buf, off)
                if rseq != seq:
                    raise JournalError(f"{seg.path}: record {rseq} at offset {pos} where {seq} was expected")
                rend = pos + hsize + length
                if rend > end:
                    raise JournalError(f"{seg.path}: record {seq} at offset {pos} runs past the segment end")
                if seq - iseq >= INDEX_RECORDS or pos - ioff >= INDEX_BYTES:
                    iseq, ioff = seq, pos
                    if seq > known:
                        new_seqs.append(seq)
                        new_offs.append(pos)
                if seq >= from_seq:
                    if out and total + length > max_bytes:
                        done = True
                        break
                    if off + hsize + length > len(buf):
                        buf = os.pread(fd, max(min(chunk, end - pos), hsize + length), pos)
                        chunk = min(chunk * 2, READ_CHUNK)
                        mv = memoryview(buf)
                        base, off = pos, 0
                        if len(buf) < hsize + length:
                            raise JournalError(f"{seg.path}: file ends inside record {seq}")
                    payload = buf[off + hsize : off + hsize + length]
                    if crc32(payload, crc32(mv[off + 8 : off + 16])) != crc:
                        raise JournalError(f"{seg.path}: CRC mismatch in record {seq} at offset {pos}")
                    out.append((seq, payload))
                    total += length
                    if len(out) >= max_records:
                        done = True
                        break
                pos = rend
                seq += 1
        finally:
            os.close(fd)
        if new_seqs:
            with self._lock:
                if seg.gen == gen:
                    for s, o in zip(new_seqs, new_offs, strict=True):
                        if s > seg.seqs[-1]:
                            seg.seqs.append(s)
                            seg.offs.append(o)
        return total, done

    # --- maintenance ---------------------------------------------------------------------------

    def prune_before(self, seq: int) -> int:
        """Delete whole segments whose records are all below seq (never the active one); returns how
        many records were removed. first_seq moves up accordingly; records >= seq are all kept."""
        with self._lock:
            self._check_usable()
            gone: list[_Segment] = []
            while len(self._segments) > 1 and self._segments[1].first <= seq:
                gone.append(self._segments.pop(0))
                self._firsts.pop(0)
            if gone:
                self._dir_dirty = True  # the next sync makes the deletions durable
        for seg in gone:
            seg.path.unlink(missing_ok=True)
        return sum(seg.last - seg.first + 1 for seg in gone)

    def truncate_after(self, seq: int) -> int:
        """Drop every record after seq (recovery only: e.g. events that were never made durable
        together with the commands that produced them). Returns how many were dropped; the next
        append continues at seq + 1. Everything kept is synced first."""
        with self._sync_lock:
            self._sync_locked()
            with self._lock:
                self._check_usable()
                if seq >= self._last:
                    return 0
                if seq < self._segments[0].first - 1:
                    raise JournalGapError.truncate_pruned(
                        str(self._dir), seq, self._segments[0].first, self._last
                    )
                k = max(bisect_right(self._firsts, seq) - 1, 0)
                keep = self._segments[k]
                doomed = self._segments[k + 1 :]
                fd = self._fd if keep is self._segments[-1] else os.open(keep.path, os.O_RDWR)
                try:
                    if seq < keep.first:
                        scan = _Scan(keep.first - 1, 0, array("Q"), array("Q"), None)
                    else:
                        scan = _scan(fd, keep.first, keep.size, stop_after=seq)
                        if scan.last != seq or scan.problem is not None:
                            raise JournalError(
                                f"{keep.path}: cannot truncate after {seq}: {scan.problem or 'short segment'}"
                            )
                    os.ftruncate(fd, scan.end)
                    if scan.end >= DATA_START:
                        _pwrite_all(fd, bytes(SEAL_SIZE), SEAL_OFFSET)  # it is the active segment again
                    _datasync(fd)
                except BaseException:
                    if fd != self._fd:
                        os.close(fd)
                    raise
                if fd != self._fd:
                    os.close(self._fd)
                    self._fd = fd
                for rfd, _ in self._rolled:  # only if appends raced with this recovery step
                    os.close(rfd)
                self._rolled = []
                for seg in doomed:
                    seg.path.unlink(missing_ok=True)
                fsync_dir(self._dir)
                keep.last, keep.size, keep.seqs, keep.offs = scan.last, scan.end, scan.seqs, scan.offs
                keep.gen += 1
                del self._segments[k + 1 :]
                del self._firsts[k + 1 :]
                dropped = self._last - seq
                self._last = seq
                self._durable = min(self._durable, seq)
                return dropped

    def close(self) -> None:
        """Sync and release the files. Idempotent. read() keeps working afterwards; append does not;
        followers end after the last durable record."""
        with self._sync_lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self._sync_locked()
            finally:
                with self._lock:
                    self._closed = True
                    for rfd, _ in self._rolled:
                        os.close(rfd)
                    self._rolled = []
                    os.close(self._fd)
                    self._fd = -1
                self._signal.notify(close=True)

    def __enter__(self) -> FileJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FileJournals:
    """JournalFactory of FileJournals: journal `name` lives in the directory `base / name`."""

    def __init__(self, base: str | os.PathLike[str], *, segment_bytes: int = 64 << 20) -> None:
        self.base = Path(base)
        self.segment_bytes = segment_bytes

    def open(self, name: str, *, start_seq: int = 1, durable_through: int = 0) -> FileJournal:
        return FileJournal(
            self.base / name,
            segment_bytes=self.segment_bytes,
            start_seq=start_seq,
            durable_through=durable_through,
        )

    def location(self, name: str) -> str:
        return str(self.base / name)

    def quarantine(self, name: str) -> str:
        return str(quarantine_segments(self.base / name))


if TYPE_CHECKING:  # mypy checks that the file backend implements the interface
    _journal: Journal = FileJournal("")
    _factory: JournalFactory = FileJournals("")
