"""The journal contract (tests/journal_contract.py) run against every backend: file and memory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from services.common.journal import FileJournals, Journal, JournalFactory, MemoryJournals
from tests.journal_contract import JournalContract


class TestFileJournal(JournalContract):
    survives_crash: ClassVar[bool] = True
    torn_tails: ClassVar[bool] = True
    shared_writers: ClassVar[bool] = False  # one process per journal directory

    SEGMENT_BYTES = 256  # a few records per segment: rollovers and pruning with few records

    def make_factory(self, base: Path) -> FileJournals:
        return FileJournals(base, segment_bytes=self.SEGMENT_BYTES)

    def crash(self, journal: Journal, factory: JournalFactory, name: str, base: Path) -> FileJournals:
        """The files as they are now (every written byte, synced or not; no seal, no close)."""
        assert isinstance(factory, FileJournals)
        shutil.copytree(factory.base / name, base / name)
        return self.make_factory(base)

    def tear(self, factory: JournalFactory, name: str, how: str) -> None:
        assert isinstance(factory, FileJournals)
        last = sorted((factory.base / name).glob("*.seg"))[-1]
        data = last.read_bytes()
        if how == "cut":
            data = data[:-3]  # inside the last record's payload
        elif how == "junk":
            data += b"\x17" * 10  # part of a record header
        elif how == "zeros":
            data += bytes(64)  # the size grew but the data never reached the disk
        last.write_bytes(data)


class TestMemoryJournal(JournalContract):
    survives_crash: ClassVar[bool] = False
    torn_tails: ClassVar[bool] = False
    shared_writers: ClassVar[bool] = True

    def make_factory(self, base: Path) -> MemoryJournals:
        return MemoryJournals()
