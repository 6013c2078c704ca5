"""The journal contract (tests/journal_contract.py) run against every backend: file and memory."""

from __future__ import annotations

import os
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


# --- JetStream: the local single node (R1) and a 3-node cluster (R3) --------------------------------

from collections.abc import Iterator  # noqa: E402
from itertools import count  # noqa: E402

import pytest  # noqa: E402

from services.cluster.servers import NatsCluster  # noqa: E402
from services.common.journal.jetstream import JetStreamJournals  # noqa: E402
from tests.cluster_fixtures import nats_local, nats_r3  # noqa: E402, F401

_streams = count(1)


class TestJetStreamJournal(JournalContract):
    """Against the local NATS (R1). torn_tails n/a: a publish reaches the stream whole or not at all
    (the backend's messages are whole batches, never partial records)."""

    survives_crash: ClassVar[bool] = True
    torn_tails: ClassVar[bool] = False
    shared_writers: ClassVar[bool] = True
    replicas: ClassVar[int] = 1

    servers: list[str]
    _service: str

    @pytest.fixture(autouse=True)
    def _servers(self, nats_local: list[str]) -> None:  # noqa: F811
        self.servers = nats_local

    @pytest.fixture
    def factory(self, tmp_path: Path) -> Iterator[JournalFactory]:  # type: ignore[override]
        made: list[JetStreamJournals] = []
        self._made = made
        self._service = f"contract-{os.getpid()}-{next(_streams)}"
        f = self.make_factory(tmp_path / "journals")
        try:
            yield f
        finally:
            made[0].delete_streams()
            for m in made:
                m.close()

    def make_factory(self, base: Path) -> JetStreamJournals:
        f = JetStreamJournals(
            self.servers, service=self._service, replicas=self.replicas, max_message_bytes=200
        )
        self._made.append(f)
        return f

    def crash(self, journal: Journal, factory: JournalFactory, name: str, base: Path) -> JetStreamJournals:
        """The stream as the next process finds it: a new connection (the old one still open)."""
        return self.make_factory(base)


class TestJetStreamJournalR3(TestJetStreamJournal):
    """The same contract on R3 streams of a 3-node cluster started by services.cluster.servers."""

    replicas: ClassVar[int] = 3

    @pytest.fixture(autouse=True)
    def _servers(self, nats_r3: NatsCluster) -> None:  # type: ignore[override]  # noqa: F811
        self.servers = nats_r3.urls
