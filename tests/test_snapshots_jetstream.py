"""Snapshots in a JetStream object store (services.common.snapshots_jetstream): the Snapshots
interface, corrupt objects skipped, and a host on another machine (another directory, another
connection) recovering from the shared snapshot + the JetStream command journal after it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from services.common.host import StateMachineHost
from services.common.journal.jetstream import JetStreamJournals
from services.common.snapshots import encode_snapshot
from services.common.snapshots_jetstream import JetStreamSnapshotStore
from tests.cluster_fixtures import nats_local  # noqa: F401
from tests.test_jetstream_host import Summer, make_host

_ids = count(1)


@pytest.fixture
def journals(nats_local: list[str]) -> Iterator[JetStreamJournals]:  # noqa: F811
    factory = JetStreamJournals(nats_local, service=f"snap-{os.getpid()}-{next(_ids)}")
    try:
        yield factory
    finally:
        JetStreamSnapshotStore(factory).delete_bucket()
        factory.delete_streams()
        factory.close()


def test_the_snapshots_interface_on_the_object_store(journals: JetStreamJournals) -> None:
    store = JetStreamSnapshotStore(journals, keep=2)
    assert store.latest() is None and store.list() == []
    store.save(5, b"five")
    assert store.latest() == (5, b"five")
    store.save(3, b"three")
    assert store.list() == [3, 5]
    store.save(9, b"")
    assert store.list() == [5, 9] and store.latest() == (9, b"")
    store.save(1, b"old")  # older than the kept ones
    assert store.list() == [5, 9]
    big = os.urandom(3 << 20)  # several object-store chunks
    store.save(9, big)  # the same sequence again replaces it
    assert store.latest() == (9, big)
    with pytest.raises(ValueError):
        store.save(-1, b"x")
    with pytest.raises(ValueError):
        JetStreamSnapshotStore(journals, keep=0)
    assert store.fork_safe is False
    # another process (its own connection) sees the same snapshots
    other = JetStreamJournals(journals.servers, service=journals.service)
    try:
        assert JetStreamSnapshotStore(other).latest() == (9, big)
    finally:
        other.close()


def test_a_corrupt_newest_object_is_skipped_for_an_older_one(journals: JetStreamJournals) -> None:
    store = JetStreamSnapshotStore(journals)
    store.save(4, b"four")
    store.save(7, b"seven")
    # written by something else: a wrong crc, then a header naming another sequence
    raw = bytearray(encode_snapshot(8, b"eight"))
    raw[-1] ^= 0xFF
    journals.client.call(store._store.put(f"{8:020d}", bytes(raw)))
    journals.client.call(store._store.put(f"{9:020d}", encode_snapshot(2, b"two")))
    assert store.list() == [4, 7, 8, 9]
    assert store.latest() == (7, b"seven")


def test_a_replica_elsewhere_recovers_from_the_shared_snapshot_and_the_stream(
    journals: JetStreamJournals, tmp_path: Path
) -> None:
    def host(directory: Path, factory: JetStreamJournals) -> StateMachineHost[bytes, Summer]:
        return make_host(directory, factory, lambda: JetStreamSnapshotStore(factory))

    async def first() -> None:
        h = host(tmp_path / "machine-a", journals)
        await h.start()
        await h.submit_batch([b"1"] * 300)
        await h.stop(snapshot=True)  # the snapshot at 300 goes to the object store

    asyncio.run(first())
    assert JetStreamSnapshotStore(journals).list() == [300]

    elsewhere = JetStreamJournals(journals.servers, service=journals.service)  # its own connection

    async def second() -> None:
        h = host(tmp_path / "machine-b", elsewhere)  # nothing on this disk
        await h.start()
        assert h.snapshot_seq == 300  # restored from the shared snapshot, not a replay from 1
        assert (h.machine.applied_seq, h.machine.total) == (300, 300)
        assert await h.submit(b"5") == 305
        await h.stop(snapshot=False)

    try:
        asyncio.run(second())
    finally:
        elsewhere.close()
    assert not (tmp_path / "machine-b" / "snapshots").exists()
