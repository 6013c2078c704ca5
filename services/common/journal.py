"""Append-only, segmented, CRC-checked record log (like Redis AOF) with group commit.

Used by the deterministic state machines for their command journal and their event log.

Layout: a directory of segment files named by the sequence of their first record
(`00000000000000000001.seg`), so lexical order is sequence order. A record is

    u32 payload length | u32 crc32(payload) | u64 sequence | payload      (little endian)

`append` writes a whole batch with one write() on a raw file descriptor; `sync` makes everything
appended before it durable with one fdatasync per touched file (group commit). On open the last
segment is verified record by record and a torn or corrupt tail is cut off (it was never durable, so it
was never acknowledged). Corruption inside an older segment is reported on read, never skipped.

Thread safety: the owner appends and reads from one thread while another thread may run `sync`.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIQ")
SUFFIX = ".seg"
INDEX_EVERY = 64  # sparse index: one (seq, offset) entry per this many records


class JournalError(Exception):
    pass


class JournalGapError(JournalError):
    """The requested sequence was pruned."""


class Journal(Protocol):
    """The backend-neutral interface (local segment files here; a JetStream backend can follow)."""

    @property
    def first_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def durable_seq(self) -> int: ...

    def append(self, payloads: Sequence[bytes]) -> int: ...

    def sync(self) -> int: ...

    def read(
        self, from_seq: int, max_records: int = 1000, max_bytes: int = 4 << 20
    ) -> list[tuple[int, bytes]]: ...

    def prune_before(self, seq: int) -> int: ...

    def truncate_after(self, seq: int) -> int: ...

    def close(self) -> None: ...


def _crc(seq: int, payload: bytes) -> int:
    # The sequence is checked for continuity on its own; the CRC covers the payload.
    return zlib.crc32(payload)


class _Segment:
    __slots__ = ("first", "index", "indexed", "last", "path", "size")

    def __init__(self, path: Path, first: int) -> None:
        self.path = path
        self.first = first
        self.last = first - 1
        self.size = 0
        self.index: list[tuple[int, int]] = []  # (seq, offset), sparse, ascending
        self.indexed = True


def _scan(path: Path, first: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Verify a segment record by record; cut a torn or corrupt tail. Returns (last, size, index)."""
    data = path.read_bytes()
    pos = 0
    expected = first
    index: list[tuple[int, int]] = []
    n = len(data)
    while pos + HEADER.size <= n:
        length, crc, seq = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if seq != expected or end > n or _crc(seq, data[pos + HEADER.size : end]) != crc:
            break
        if (seq - first) % INDEX_EVERY == 0:
            index.append((seq, pos))
        pos = end
        expected += 1
    if pos != n:
        log.warning(
            "journal tail repaired", extra={"file": str(path), "offset": pos, "dropped_bytes": n - pos}
        )
        with open(path, "r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
    return expected - 1, pos, index


class FileJournal:
    def __init__(
        self, directory: str | os.PathLike[str], *, segment_bytes: int = 64 << 20, start_seq: int = 1
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments = [
            _Segment(p, int(p.stem)) for p in sorted(self.dir.glob(f"*{SUFFIX}")) if p.stem.isdigit()
        ]
        for i, seg in enumerate(self._segments):
            if i == len(self._segments) - 1:
                seg.last, seg.size, seg.index = _scan(seg.path, seg.first)
            else:
                seg.last = self._segments[i + 1].first - 1
                seg.size = seg.path.stat().st_size
                seg.indexed = False  # built on first read: startup stays fast with many segments
        if not self._segments:
            self._segments.append(self._new_segment(start_seq))
        self._last = self._segments[-1].last
        self._durable = self._last
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._unsynced: list[int] = []  # fds of segments rolled over since the last sync
        self._dirty = False
        self._closed = False

    def _new_segment(self, first: int) -> _Segment:
        path = self.dir / f"{first:020d}{SUFFIX}"
        path.touch()
        _fsync_dir(self.dir)
        return _Segment(path, first)

    # --- properties ----------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        return self._segments[0].first

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def durable_seq(self) -> int:
        return self._durable

    # --- writing -------------------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append records numbered last_seq + 1... with one write(); durable only after sync()."""
        if not payloads:
            return self._last
        with self._lock:
            seg = self._segments[-1]
            if seg.size >= self.segment_bytes and seg.last >= seg.first:
                self._roll()
                seg = self._segments[-1]
            seq = self._last
            parts: list[bytes] = []
            offset = seg.size
            pack = HEADER.pack
            first = seg.first
            for payload in payloads:
                seq += 1
                if (seq - first) % INDEX_EVERY == 0:
                    seg.index.append((seq, offset))
                parts.append(pack(len(payload), _crc(seq, payload), seq))
                parts.append(payload)
                offset += HEADER.size + len(payload)
            view = memoryview(b"".join(parts))
            while view:
                view = view[os.write(self._fd, view) :]
            seg.size = offset
            seg.last = seq
            self._last = seq
            self._dirty = True
            return seq

    def _roll(self) -> None:
        """Start a new segment (under the lock); the old fd is synced and closed by the next sync."""
        self._unsynced.append(self._fd)
        seg = self._new_segment(self._last + 1)
        self._segments.append(seg)
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def sync(self) -> int:
        """Make everything appended before this call durable (one fdatasync per touched file)."""
        with self._lock:
            target = self._last
            old_fds, self._unsynced = self._unsynced, []
            fd = self._fd
            dirty, self._dirty = self._dirty, False
        for old in old_fds:
            os.fdatasync(old)
            os.close(old)
        if dirty or old_fds:
            os.fdatasync(fd)
        with self._lock:
            self._durable = max(self._durable, target)
            return self._durable

    # --- reading -------------------------------------------------------------------------------

    def read(
        self, from_seq: int, max_records: int = 1000, max_bytes: int = 4 << 20
    ) -> list[tuple[int, bytes]]:
        """Records from from_seq on (at least one if any exists, even beyond max_bytes)."""
        with self._lock:
            if from_seq > self._last:
                return []
            if from_seq < self._segments[0].first:
                raise JournalGapError(f"sequence {from_seq} was pruned (oldest is {self._segments[0].first})")
            firsts = [s.first for s in self._segments]
            segments = self._segments[bisect_right(firsts, from_seq) - 1 :]
            for seg in segments:
                if not seg.indexed:
                    seg.index = _index_of(seg)
                    seg.indexed = True
            views = [(seg.path, seg.first, seg.last, list(seg.index)) for seg in segments]
        out: list[tuple[int, bytes]] = []
        size = 0
        unpack = HEADER.unpack
        for path, first, last, index in views:
            if last < from_seq:
                continue
            start_seq, offset = first, 0
            j = bisect_right(index, (from_seq, 1 << 62)) - 1
            if j >= 0:
                start_seq, offset = index[j]
            with open(path, "rb", buffering=1 << 20) as f:
                f.seek(offset)
                seq = start_seq
                while seq <= last:
                    header = f.read(HEADER.size)
                    if len(header) < HEADER.size:
                        raise JournalError(f"{path}: file ends before sequence {seq}")
                    length, crc, rseq = unpack(header)
                    if rseq != seq:
                        raise JournalError(f"{path}: expected sequence {seq}, found {rseq}")
                    if seq < from_seq:
                        f.seek(length, os.SEEK_CUR)
                        seq += 1
                        continue
                    payload = f.read(length)
                    if len(payload) != length or _crc(seq, payload) != crc:
                        raise JournalError(f"{path}: bad record for sequence {seq}")
                    out.append((seq, payload))
                    size += length
                    if len(out) >= max_records or size >= max_bytes:
                        return out
                    seq += 1
            from_seq = last + 1
        return out

    # --- maintenance ---------------------------------------------------------------------------

    def prune_before(self, seq: int) -> int:
        """Delete whole segments whose records are all below seq (never the active one)."""
        removed = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].last < seq and self._segments[1].first <= seq:
                seg = self._segments.pop(0)
                removed += seg.last - seg.first + 1
                seg.path.unlink(missing_ok=True)
        if removed:
            _fsync_dir(self.dir)
        return removed

    def truncate_after(self, seq: int) -> int:
        """Drop every record after seq (recovery only: they were never made durable together with the
        commands that produced them). Returns how many were dropped."""
        with self._lock:
            if seq >= self._last:
                return 0
            dropped = self._last - seq
            while len(self._segments) > 1 and self._segments[-1].first > seq + 1:
                os.close(self._fd)
                gone = self._segments.pop()
                gone.path.unlink(missing_ok=True)
                self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND, 0o644)
            seg = self._segments[-1]
            data = seg.path.read_bytes()
            pos = 0
            cur = seg.first
            index: list[tuple[int, int]] = []
            while cur <= seq:
                length, _, _ = HEADER.unpack_from(data, pos)
                if (cur - seg.first) % INDEX_EVERY == 0:
                    index.append((cur, pos))
                pos += HEADER.size + length
                cur += 1
            os.truncate(seg.path, pos)
            os.fsync(self._fd)
            seg.size = pos
            seg.last = seq
            seg.index = index
            self._last = seq
            self._durable = min(self._durable, seq)
            return dropped

    def close(self) -> None:
        if self._closed:
            return
        self.sync()
        with self._lock:
            os.close(self._fd)
            self._closed = True


def _index_of(seg: _Segment) -> list[tuple[int, int]]:
    """Sparse index of a complete older segment (headers only; payloads are verified on read)."""
    index: list[tuple[int, int]] = []
    with open(seg.path, "rb", buffering=1 << 20) as f:
        pos = 0
        for seq in range(seg.first, seg.last + 1):
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                raise JournalError(f"{seg.path}: file ends before sequence {seq}")
            length, _, rseq = HEADER.unpack(header)
            if rseq != seq:
                raise JournalError(f"{seg.path}: expected sequence {seq}, found {rseq}")
            if (seq - seg.first) % INDEX_EVERY == 0:
                index.append((seq, pos))
            f.seek(length, os.SEEK_CUR)
            pos += HEADER.size + length
    return index


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
