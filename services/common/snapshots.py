"""Snapshots of a state machine, keyed by the sequence they were taken at.

File: magic, format version, sequence, length and CRC32, then the data. Written to a temporary file,
fsynced, renamed into place and the directory fsynced, so a crash leaves either the old set or the new
one. A corrupt newest snapshot is skipped (with a warning) in favour of the next older one.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"EXSNAP01"
HEAD = struct.Struct("<8sIQQI")  # magic, version, seq, length, crc
VERSION = 1
SUFFIX = ".snap"


class SnapshotStore:
    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}{SUFFIX}"

    def list(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob(f"*{SUFFIX}") if p.stem.isdigit())

    def save(self, seq: int, data: bytes) -> None:
        tmp = self.dir / f".{seq:020d}.tmp"
        with open(tmp, "wb") as f:
            f.write(HEAD.pack(MAGIC, VERSION, seq, len(data), zlib.crc32(data)))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(seq))
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for old in self.list()[: -self.keep]:
            self._path(old).unlink(missing_ok=True)

    def latest(self) -> tuple[int, bytes] | None:
        for seq in reversed(self.list()):
            data = self._load(seq)
            if data is not None:
                return seq, data
        return None

    def _load(self, seq: int) -> bytes | None:
        path = self._path(seq)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            log.warning("snapshot unreadable", extra={"file": str(path), "error": str(exc)})
            return None
        if len(raw) < HEAD.size:
            log.warning("snapshot truncated", extra={"file": str(path)})
            return None
        magic, version, stored_seq, length, crc = HEAD.unpack_from(raw)
        data = raw[HEAD.size :]
        if (
            magic != MAGIC
            or version != VERSION
            or stored_seq != seq
            or len(data) != length
            or zlib.crc32(data) != crc
        ):
            log.warning("snapshot corrupt, using an older one", extra={"file": str(path)})
            return None
        return data
