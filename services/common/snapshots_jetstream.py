"""Snapshots in a JetStream object store: where every replica of a shard can load them.

A cluster's replicas run on different machines, so a snapshot on one replica's disk does not help a
new or lagging replica. The command journal is already a JetStream stream (services.common.journal.
jetstream); its snapshots go to the same servers, in an object store bucket with the same replica
count, `<PREFIX>_<service>_snapshots`: a replica that starts (or becomes leader after a long absence)
loads the latest snapshot from there and replays the stream after it. (Object store rather than a
stream of its own: snapshots are large, chunked, content-checked by the server (SHA-256 digest), and
replaced by name.)

Objects are named by the sequence they were taken at (20 digits), and hold the same bytes as the file
store (services.common.snapshots.encode_snapshot: header with magic, version, sequence, length and
crc32): an object that fails the check is skipped in favour of the next older one, as on files. A put
is durable once acknowledged (for an R3 bucket: by a quorum); then older objects beyond `keep` are
deleted.

The interface is synchronous (the host's snapshot thread calls it): calls run on the NATS client loop
of the JetStreamJournals factory the store is opened from, one connection per process. It is not
fork_safe: the host then writes snapshots from a thread of its own process, not a forked child.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from services.common.journal.jetstream import JetStreamJournals
from services.common.snapshots import decode_snapshot, encode_snapshot

if TYPE_CHECKING:
    from services.common.snapshots import Snapshots

log = logging.getLogger(__name__)

_NAME = re.compile(r"^\d{20}$")


def bucket_name(prefix: str, service: str, name: str = "snapshots") -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{prefix.upper()}_{service}_{name}")


class JetStreamSnapshotStore:
    """The Snapshots interface on a JetStream object store bucket (see the module docstring)."""

    fork_safe = False

    def __init__(
        self, journals: JetStreamJournals, *, keep: int = 3, name: str = "snapshots", timeout_s: float = 60.0
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.keep = keep
        self.timeout_s = timeout_s
        self.bucket = bucket_name(journals.prefix, journals.service, name)
        self._client = journals.client
        self._store: ObjectStore = self._client.call(self._open(journals.replicas), timeout=timeout_s)

    @property
    def location(self) -> str:
        return f"nats-object-store:{self.bucket}"

    async def _open(self, replicas: int) -> ObjectStore:
        js = self._client.js
        try:
            return await js.object_store(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = ObjectStoreConfig(
                bucket=self.bucket,
                description="state-machine snapshots by sequence (ostrakon)",
                storage=StorageType.FILE,
                replicas=replicas,
            )
            return await js.create_object_store(self.bucket, config=config)

    def list(self) -> builtins.list[int]:
        """Sequences of the stored snapshots (valid or not), ascending."""
        return self._client.call(self._list(), timeout=self.timeout_s)

    async def _list(self) -> builtins.list[int]:
        try:
            infos = await self._store.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:  # an empty bucket
            return []
        return sorted(int(i.name) for i in infos if i.name and _NAME.match(i.name) and not i.deleted)

    def save(self, seq: int, data: bytes) -> None:
        """Store data as the snapshot at seq (acknowledged = durable), then keep the newest `keep`."""
        self.put(seq, data)

    def put(self, seq: int, data: bytes) -> builtins.list[int]:
        """save(), returning the sequences the bucket keeps afterwards (ascending)."""
        if seq < 0:
            raise ValueError(f"a snapshot sequence cannot be negative: {seq}")
        return self._client.call(self._save(seq, data), timeout=self.timeout_s)

    async def _save(self, seq: int, data: bytes) -> builtins.list[int]:
        await self._store.put(f"{seq:020d}", encode_snapshot(seq, data))
        seqs = await self._list()
        for old in seqs[: -self.keep]:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._store.delete(f"{old:020d}")
        return seqs[-self.keep :]

    def latest(self) -> tuple[int, bytes] | None:
        """The newest valid snapshot as (seq, data); None when there is none."""
        return self.newest_of(self.list())

    def newest_of(self, seqs: builtins.list[int]) -> tuple[int, bytes] | None:
        """The newest valid snapshot among the stored sequences `seqs` (ascending, from list())."""
        return self._client.call(self._newest(seqs), timeout=self.timeout_s)

    async def _newest(self, seqs: builtins.list[int]) -> tuple[int, bytes] | None:
        for seq in reversed(seqs):
            name = f"{seq:020d}"
            try:
                result = await self._store.get(name)
                raw = bytes(result.data or b"")
            except (nats.js.errors.Error, nats.errors.Error) as exc:  # missing chunks, bad digest
                log.warning("snapshot %s/%s unreadable: %s", self.bucket, name, exc)
                continue
            data, problem = decode_snapshot(raw, seq)
            if data is None:
                log.warning("snapshot %s/%s is corrupt (%s); using an older one", self.bucket, name, problem)
                continue
            return seq, data
        return None

    def delete_bucket(self) -> None:
        """Remove the bucket and every snapshot in it (tests; an operator retiring a shard)."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            self._client.call(self._client.js.delete_object_store(self.bucket), timeout=self.timeout_s)


if TYPE_CHECKING:  # mypy checks that the store implements the interface
    _store: Snapshots = JetStreamSnapshotStore(JetStreamJournals(service=""))
