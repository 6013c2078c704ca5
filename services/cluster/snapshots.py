"""ReplicaSnapshots: a cluster replica's snapshot store, its own files plus the shard's shared bucket.

Where and why (issue 11): every replica of a shard keeps its snapshots as files in its own data
directory (services.common.snapshots.FileSnapshotStore: written by the host's forked child, so a
periodic snapshot never stalls the live service), and the leader also puts each one into the shard's
JetStream object store bucket (services.common.snapshots_jetstream.JetStreamSnapshotStore,
`<PREFIX>_<source>_snapshots`, as many copies as the command stream): on the same servers as the
command journal, so wherever a replica can read the stream it can read the snapshots. A new replica on
a new machine (empty data directory), or one that was away while the stream was pruned, loads the
newest snapshot of either place and replays the stream after it.

Pruning: the leader prunes the command stream only below the second-newest shared snapshot
(`prune_floor`), never below the newest: a follower that lags by less than one snapshot interval still
finds every record it has not applied, and a replica that starts finds the newest shared snapshot plus
the whole stream after it. A follower releases its in-memory copy of the stream below its own latest
snapshot (services.common.journal.jetstream.JetStreamReader.release_before); a leader's copy shrinks
when it prunes.

Sharing is the leader's (`share`, called by the host after a snapshot it took as leader): a share
that fails (NATS unreachable) is logged and retried with the next snapshot; the stream is then simply
not pruned past what is shared, so nothing a replica needs is ever removed.
"""

from __future__ import annotations

import builtins
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.journal.jetstream import JetStreamJournals
from services.common.snapshots import FileSnapshotStore
from services.common.snapshots_jetstream import JetStreamSnapshotStore

if TYPE_CHECKING:
    from services.common.snapshots import SharedSnapshots

log = logging.getLogger(__name__)


class ReplicaSnapshots:
    """The Snapshots interface over this replica's files and the shard's shared bucket."""

    fork_safe = True  # save() writes the local file only (the forked child's part)

    def __init__(self, directory: str | Path, shared: JetStreamSnapshotStore, *, keep: int = 3) -> None:
        self.local = FileSnapshotStore(directory, keep=keep)
        self.shared = shared
        self.shared_seqs: builtins.list[int] = []  # what the bucket held when last looked at
        self._sharing = threading.Lock()  # one share at a time (a forked and an inline snapshot)

    @classmethod
    def open(cls, directory: str | Path, stream: JetStreamJournals, *, keep: int = 3) -> ReplicaSnapshots:
        """The replica's store: files in `directory`, the bucket next to the shard's `stream`."""
        return cls(directory, JetStreamSnapshotStore(stream, keep=keep), keep=keep)

    @property
    def location(self) -> str:
        return f"{self.local.dir} + {self.shared.location}"

    def save(self, seq: int, data: bytes) -> None:
        self.local.save(seq, data)

    def share(self, seq: int) -> bool:
        """Put the local snapshot at seq into the shared bucket (acknowledged: durable there). False,
        with an error logged, when it could not (the next snapshot tries again)."""
        with self._sharing:
            if self.shared_seqs and self.shared_seqs[-1] >= seq:
                return True  # a newer one is shared already
            data = self.local.load(seq)
            if data is None:
                log.error("snapshot %d to share is not in %s", seq, self.local.dir)
                return False
            return self._put(seq, data)

    def _put(self, seq: int, data: bytes) -> bool:
        try:
            self.shared_seqs = self.shared.put(seq, data)
        except Exception as exc:  # NATS unreachable, timeout: the stream is not pruned past the shared
            log.error(
                "sharing snapshot %d in %s failed: %s", seq, self.shared.location, exc, extra={"seq": seq}
            )
            return False
        return True

    def prune_floor(self) -> int:
        """The command stream may be pruned below this sequence: one past the second-newest shared
        snapshot (0: nothing may be pruned yet)."""
        seqs = self.shared_seqs
        return seqs[-2] + 1 if len(seqs) >= 2 else 0

    def latest(self) -> tuple[int, bytes] | None:
        """The newest valid snapshot of the two places (the bucket is read only when it holds a newer
        one than the files)."""
        local = self.local.latest()
        try:
            self.shared_seqs = self.shared.list()
            newer = [s for s in self.shared_seqs if s > (local[0] if local else -1)]
            shared = self.shared.newest_of(newer) if newer else None
        except Exception as exc:
            log.warning("shared snapshots in %s unreadable: %s", self.shared.location, exc)
            shared = None
        if shared is not None and (local is None or shared[0] > local[0]):
            log.info("restoring the shared snapshot", extra={"seq": shared[0], "store": self.shared.location})
            return shared
        return local

    def list(self) -> builtins.list[int]:
        """Sequences of the snapshots in either place, ascending."""
        return sorted(set(self.local.list()) | set(self.shared.list()))


if TYPE_CHECKING:  # mypy checks that the store implements the interface
    _store: SharedSnapshots = ReplicaSnapshots("", JetStreamSnapshotStore(JetStreamJournals(service="")))
