"""Snapshots of a state machine, keyed by the sequence they were taken at.

`Snapshots` is the interface the host uses (save atomically, the latest valid one, the list); the
file implementation is FileSnapshotStore (also known by its old name SnapshotStore), the one for tests
MemorySnapshotStore; shared storage every replica of a cluster can read is JetStreamSnapshotStore
(services.common.snapshots_jetstream, a JetStream object store). File and object store keep the same
bytes: `encode_snapshot` / `decode_snapshot`.

FileSnapshotStore: file `<seq, 20 digits>.snap`: a 32-byte header - magic "EXSNAP01", u32 format
version, u64 sequence, u64 data length, u32 crc32(data), little endian - then the data. Written to a
temporary file (`.<seq>.<pid>.<thread>.tmp`), fsynced, renamed into place and the directory fsynced,
so a crash leaves either the old set or the new one, never a partial snapshot under a snapshot name.
A corrupt or truncated newest snapshot is skipped (with a warning) in favour of the next older valid
one.

Safe to use from several threads and from a forked child (temporary names are unique per process and
thread); temporary files left by processes that no longer exist are removed when a store is opened.
"""

from __future__ import annotations

import builtins
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from services.common.journal.file import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"EXSNAP01"
HEAD = struct.Struct("<8sIQQI")  # magic, version, seq, length, crc32(data)
VERSION = 1
SUFFIX = ".snap"
TMP_SUFFIX = ".tmp"


def encode_snapshot(seq: int, data: bytes) -> bytes:
    """The stored form: the header (magic, version, seq, length, crc32) and the data."""
    return HEAD.pack(MAGIC, VERSION, seq, len(data), zlib.crc32(data)) + data


def decode_snapshot(raw: bytes, seq: int) -> tuple[bytes | None, str]:
    """(data, "") for a valid stored snapshot at seq; (None, what is wrong) otherwise."""
    if len(raw) < HEAD.size:
        return None, f"truncated ({len(raw)} bytes)"
    magic, version, stored_seq, length, crc = HEAD.unpack_from(raw)
    data = raw[HEAD.size :]
    if magic != MAGIC:
        return None, "bad magic"
    if version != VERSION:
        return None, f"format version {version}, expected {VERSION}"
    if stored_seq != seq:
        return None, f"holds sequence {stored_seq}"
    if len(data) != length:
        return None, f"{len(data)} data bytes where the header says {length}"
    if zlib.crc32(data) != crc:
        return None, "CRC mismatch"
    return data, ""


class Snapshots(Protocol):
    """A state machine's snapshots by sequence."""

    # save() may run in a forked child (the host's background snapshots) and the parent then sees the
    # result: true for files; false for a store that lives in the process's memory (or that holds
    # connections a child must not share).
    fork_safe: bool

    def save(self, seq: int, data: bytes) -> None:
        """Store data as the snapshot at seq, atomically (all or nothing) and durably; then keep only
        the newest `keep` (a save older than those is therefore removed again at once)."""
        ...

    def latest(self) -> tuple[int, bytes] | None:
        """The newest valid snapshot as (seq, data); None when there is none."""
        ...

    def list(self) -> builtins.list[int]:
        """Sequences of the stored snapshots (valid or not), ascending."""
        ...


@runtime_checkable
class SharedSnapshots(Snapshots, Protocol):
    """A store that also shares a leader's snapshots with the other replicas of a cluster shard
    (services.cluster.snapshots.ReplicaSnapshots): the host shares each snapshot it took as leader
    before it prunes the command journal, and prunes only below `prune_floor`."""

    def share(self, seq: int) -> bool:
        """Make the stored snapshot at seq loadable by every replica; False when it could not."""
        ...

    def prune_floor(self) -> int:
        """The command journal may be pruned below this sequence (0: not at all yet)."""
        ...


class FileSnapshotStore:
    """Snapshots as files in one directory (see the module docstring)."""

    fork_safe = True

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._remove_stale_tmp()

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}{SUFFIX}"

    def list(self) -> builtins.list[int]:
        """Sequences of the stored snapshots (valid or not), ascending."""
        seqs: builtins.list[int] = []
        for entry in os.scandir(self.dir):
            stem = entry.name[: -len(SUFFIX)]
            if entry.name.endswith(SUFFIX) and stem.isdigit():
                seqs.append(int(stem))
        return sorted(seqs)

    def save(self, seq: int, data: bytes) -> None:
        """Store data as the snapshot at seq, atomically and durably; then keep only the newest
        `keep` snapshots (a save older than those is therefore removed again at once)."""
        if seq < 0:
            raise ValueError(f"a snapshot sequence cannot be negative: {seq}")
        tmp = self.dir / f".{seq:020d}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(encode_snapshot(seq, data))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path(seq))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.dir)
        for old in self.list()[: -self.keep]:
            self._path(old).unlink(missing_ok=True)

    def latest(self) -> tuple[int, bytes] | None:
        """The newest valid snapshot as (seq, data); None when there is none."""
        for seq in reversed(self.list()):
            data = self.load(seq)
            if data is not None:
                return seq, data
        return None

    def load(self, seq: int) -> bytes | None:
        """The data of the snapshot at seq; None (with a warning) when it is missing or corrupt."""
        path = self._path(seq)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            log.warning("snapshot %s unreadable: %s", path, exc, extra={"file": str(path)})
            return None
        data, problem = decode_snapshot(raw, seq)
        if data is None:
            log.warning(
                "snapshot %s is corrupt (%s); using an older one", path, problem, extra={"file": str(path)}
            )
        return data

    def _remove_stale_tmp(self) -> None:
        """Delete temporary files whose writing process is gone (a crash during save)."""
        for entry in os.scandir(self.dir):
            if not entry.name.endswith(TMP_SUFFIX):
                continue
            parts = entry.name.split(".")  # ['', seq, pid, thread, 'tmp']
            if len(parts) != 5 or not parts[2].isdigit():
                continue
            pid = int(parts[2])
            if pid == os.getpid() or _alive(pid):
                continue  # another store of this process, or a snapshot child still writing
            Path(entry.path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SnapshotStore = FileSnapshotStore  # the name its importers know


class MemorySnapshotStore:
    """Snapshots in a dict (tests). Not fork_safe: a forked child's save would stay in the child."""

    fork_safe = False

    def __init__(self, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.keep = keep
        self._snaps: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def save(self, seq: int, data: bytes) -> None:
        if seq < 0:
            raise ValueError(f"a snapshot sequence cannot be negative: {seq}")
        with self._lock:
            self._snaps[seq] = bytes(data)
            for old in sorted(self._snaps)[: -self.keep]:
                del self._snaps[old]

    def latest(self) -> tuple[int, bytes] | None:
        with self._lock:
            if not self._snaps:
                return None
            seq = max(self._snaps)
            return seq, self._snaps[seq]

    def list(self) -> builtins.list[int]:
        with self._lock:
            return sorted(self._snaps)


if TYPE_CHECKING:  # mypy checks that both stores implement the interface
    _file_store: Snapshots = FileSnapshotStore("")
    _memory_store: Snapshots = MemorySnapshotStore()
