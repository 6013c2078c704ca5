"""Journals: sequence-numbered, append-only record logs, one writer each, behind one interface.

The deterministic state machines keep their command journal and their event log in journals (see
services.common.host). The interface (base.py):

- `Journal` (a JournalReader that can also write): positions `first_seq` / `last_seq` /
  `durable_seq`; fenced appends `append_after(expected_last_seq, payloads)` (async) and
  `write_after(...)` (its synchronous form), which return the sequences assigned and refuse with
  FencedError, writing nothing, when expected_last_seq is not the journal's last; `flush()` (async)
  and `sync()` (blocking) make everything appended before them durable (group commit: appends may
  be buffered); `read(from_seq, max_records, max_bytes)`; `follow(from_seq)`, an async iterator of
  durable records that wakes on new ones and ends on close; `prune_before`, `truncate_after`
  (recovery only), `close`.
- `JournalFactory`: opens a service's named journals ("commands", "events") with the sequence a new
  one starts at and the sequence known durable (`durable_through`: opening refuses with
  JournalDamagedError rather than lose any of those), says where they live, and moves a damaged
  one aside (`quarantine`) on the operator's order.

Backends: `FileJournal` / `FileJournals` (file.py: segment files with CRCs, torn tails repaired on
open, one fdatasync per batch) and `MemoryJournal` / `MemoryJournals` (memory.py: tests, followers'
scratch copies). tests/journal_contract.py is the one contract test suite every backend runs.

A replicated backend (NATS JetStream, next) maps onto the same interface:
- one stream per journal (subject `<service>.<name>`), journal sequence = stream sequence (a new
  journal that starts after a snapshot at s sets the stream's first sequence to s + 1);
- the leader's `write_after(e, batch)` publishes record i with header
  `Nats-Expected-Last-Sequence: e + i` (pipelined; the batch is fenced by the server, so a deposed
  leader can never append after a new one) and returns range(e + 1, e + len(batch) + 1) at once;
  `flush()` awaits the PubAcks (acknowledged = stored on a quorum of replicas = durable) and raises
  FencedError when the server refused an expected sequence (then every later append is refused);
  `sync()` is flush() run on the client's event loop from a thread;
- `read()` is served from a local copy (the leader's own recent records, or a local FileJournal
  the follower fills), since it runs on the event loop and must not wait on the network;
  `follow()` is an ordered push consumer from `from_seq` (DeliverByStartSequence), yielding what
  the stream acknowledged; followers that keep a local copy append it with write_after so numbering
  is checked on their side too;
- `prune_before(s)` purges the stream up to s (`purge` with `seq=s`); `truncate_after` is needed
  only where appends reach the store before they are durable (the file journal); a backend whose
  appends are durable when acknowledged raises JournalError for anything but a no-op;
- `JournalDamagedError` covers a stream that lost acknowledged records (say after a restore);
  `quarantine` renames the stream aside.
"""

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
    JournalRangeError,
    JournalReader,
    Record,
    follow_durable,
)
from services.common.journal.file import (
    DAMAGED_PREFIX,
    DATA_START,
    HEAD_SIZE,
    INDEX_BYTES,
    INDEX_RECORDS,
    MAX_PAYLOAD,
    RECORD,
    SEAL_OFFSET,
    SEAL_SIZE,
    SEG_MAGIC,
    SEG_VERSION,
    SUFFIX,
    FileJournal,
    FileJournals,
    fsync_dir,
    quarantine_segments,
)
from services.common.journal.memory import MemoryJournal, MemoryJournals

__all__ = [
    "DAMAGED_PREFIX",
    "DATA_START",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RECORDS",
    "HEAD_SIZE",
    "INDEX_BYTES",
    "INDEX_RECORDS",
    "MAX_PAYLOAD",
    "RECORD",
    "SEAL_OFFSET",
    "SEAL_SIZE",
    "SEG_MAGIC",
    "SEG_VERSION",
    "SUFFIX",
    "DurableSignal",
    "FencedError",
    "FileJournal",
    "FileJournals",
    "Journal",
    "JournalDamagedError",
    "JournalError",
    "JournalFactory",
    "JournalGapError",
    "JournalRangeError",
    "JournalReader",
    "MemoryJournal",
    "MemoryJournals",
    "Record",
    "follow_durable",
    "fsync_dir",
    "quarantine_segments",
]

_JETSTREAM = ("JetStreamJournal", "JetStreamJournals", "JetStreamReader")


def __getattr__(name: str) -> object:
    """The JetStream backend (jetstream.py), imported on first use: importing nats-py costs every
    process that keeps file journals. For types, import from services.common.journal.jetstream."""
    if name in _JETSTREAM:
        from services.common.journal import jetstream

        return getattr(jetstream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
