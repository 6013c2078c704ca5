"""The journal interface every backend implements, its errors, and the follow() machinery they share.

See the package docstring (services.common.journal) for the model and for how a replicated backend
maps onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol

Record = tuple[int, bytes]  # (sequence, payload)

DEFAULT_MAX_RECORDS = 1000
DEFAULT_MAX_BYTES = 4 << 20


class JournalError(Exception):
    pass


class JournalRangeError(JournalError):
    """A read or follow asked for a sequence the journal does not hold: below `first_seq` (then it is
    the subclass JournalGapError) or past `last_seq + 1`."""

    def __init__(self, message: str, *, requested: int, first_seq: int, last_seq: int) -> None:
        super().__init__(message)
        self.requested = requested
        self.first_seq = first_seq  # the oldest sequence still held
        self.last_seq = last_seq


class JournalGapError(JournalRangeError):
    """The requested sequence was pruned (it is older than first_seq)."""

    def __init__(self, message: str, *, requested: int = 0, first_seq: int = 0, last_seq: int = 0) -> None:
        super().__init__(message, requested=requested, first_seq=first_seq, last_seq=last_seq)

    @classmethod
    def pruned(cls, where: str, requested: int, first_seq: int, last_seq: int) -> JournalGapError:
        """A read or follow of `requested`, older than the journal `where` still holds."""
        return cls(
            f"{_prefix(where)}sequence {requested} was pruned (oldest is {first_seq})",
            requested=requested,
            first_seq=first_seq,
            last_seq=last_seq,
        )

    @classmethod
    def truncate_pruned(cls, where: str, seq: int, first_seq: int, last_seq: int) -> JournalGapError:
        """truncate_after(seq) where records up to seq were pruned already."""
        return cls(
            f"{_prefix(where)}cannot truncate after {seq}: records before {first_seq} were pruned",
            requested=seq,
            first_seq=first_seq,
            last_seq=last_seq,
        )


class FencedError(JournalError):
    """An append named an expected last sequence that is not the journal's last: another writer
    appended (this one is deposed) or the caller's numbering is wrong. Nothing of the batch was
    written. Raised by the append itself when the backend knows its last sequence locally (file,
    memory); a replicated backend whose server does the check may raise it from flush(), and then
    refuses every later append (the writer is deposed for good)."""

    def __init__(self, message: str, *, expected: int, last: int) -> None:
        super().__init__(message)
        self.expected = expected  # what the writer said the last sequence was
        self.last = last  # what it was

    @classmethod
    def refused(cls, where: str, expected: int, last: int) -> FencedError:
        """The append after `expected` to the journal `where`, whose last record is `last`."""
        return cls(
            f"{_prefix(where)}append after {expected} refused: the journal's last record is {last}",
            expected=expected,
            last=last,
        )


class JournalDamagedError(JournalError):
    """Opening would lose records known to be durable (see `durable_through`): the journal holds good
    records only up to `kept` where records up to `needed` were durable. Nothing was changed."""

    def __init__(
        self,
        message: str,
        *,
        location: str,
        kept: int,
        needed: int,
        problem: str,
        path: Path | None = None,
        files: Sequence[Path] = (),
    ) -> None:
        super().__init__(message)
        self.location = location  # where the journal lives (its directory, a stream name)
        self.kept = kept  # last good record (first_seq - 1 when none)
        self.needed = needed  # records up to here were durable (acknowledged)
        self.problem = problem  # what is wrong, for people
        self.path = path  # the damaged file, when there is one
        self.files = list(files)  # every file of the journal, untouched (none for other backends)

    @classmethod
    def lost(
        cls,
        where: str,
        *,
        location: str,
        kept: int,
        needed: int,
        problem: str,
        unchanged: str = "nothing was changed",
        path: Path | None = None,
        files: Sequence[Path] = (),
    ) -> JournalDamagedError:
        """Opening the journal at `location` (`where`: it, or its damaged file) would lose the durable
        records kept + 1..needed because of `problem`; `unchanged` says what was left as it was."""
        lost = f"record {needed}" if kept + 1 == needed else f"records {kept + 1}..{needed}"
        return cls(
            f"{_prefix(where)}{problem}: the journal holds good records only up to {kept}, but {lost} "
            f"had been made durable; {unchanged}",
            location=location,
            kept=kept,
            needed=needed,
            problem=problem,
            path=path,
            files=files,
        )


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


class JournalReader(Protocol):
    """What a follower needs: positions, bounded reads, and a live tail of durable records."""

    @property
    def first_seq(self) -> int:
        """Oldest sequence still stored (last_seq + 1 when empty)."""
        ...

    @property
    def last_seq(self) -> int:
        """Last appended sequence (start_seq - 1 when empty). Appended is not yet durable."""
        ...

    @property
    def durable_seq(self) -> int:
        """Last sequence known durable (<= last_seq); never moves back except by truncate_after."""
        ...

    def read(
        self, from_seq: int, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[Record]:
        """Records from from_seq on, in order: at most max_records, and no more than max_bytes of
        payload unless the first record alone is larger (at least one record when any exists).
        [] when from_seq > last_seq; JournalGapError when from_seq < first_seq. Appended records are
        readable before they are durable (filter with durable_seq where that matters). Called on the
        event loop (streams, the forwarder): it must not block for long, so a networked backend
        serves it from a local copy. Keeps working after close()."""
        ...

    def follow(
        self, from_seq: int, *, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> AsyncIterator[list[Record]]:
        """Durable records from from_seq on, in chunks (bounded like read), then new ones as they
        become durable, in order, without gaps or repeats; ends once the journal is closed and every
        durable record was yielded. JournalGapError when from_seq (or, later, the next record) was
        pruned; JournalRangeError when from_seq > last_seq + 1 (last_seq + 1 waits for the next)."""
        ...


class Journal(JournalReader, Protocol):
    """A sequence-numbered, append-only record log with one writer.

    Writing is fenced: every append names the last sequence the writer believes the journal holds
    (`expected_last_seq`) and is refused with FencedError, writing nothing, when that is not the
    journal's last. Appends may be buffered; flush()/sync() makes everything appended before it
    durable (group commit) and advances durable_seq.
    """

    created: bool  # True when this open found no journal and started a new one

    async def append_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        """Append the batch as expected_last_seq + 1...; returns the sequences assigned. Durable after
        flush() (a backend may return before the batch reached its store). FencedError (nothing
        written) when expected_last_seq != last_seq; JournalError when closed or failed."""
        ...

    def write_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        """The synchronous form of append_after (the host's writer on the event loop, recovery in a
        thread): never waits for durability."""
        ...

    async def flush(self) -> int:
        """Make everything appended before the call durable; returns durable_seq. Does not block the
        event loop (the file journal fsyncs in a worker thread)."""
        ...

    def sync(self) -> int:
        """The blocking form of flush (call it from a thread, not the event loop)."""
        ...

    def prune_before(self, seq: int) -> int:
        """Drop stored records below seq as far as the backend's granularity allows (whole segments
        for files); never a record >= seq. Returns how many; first_seq moves up by as many."""
        ...

    def truncate_after(self, seq: int) -> int:
        """Recovery only, before anyone follows: drop every record after seq; returns how many. The
        next append is seq + 1. JournalGapError when records <= seq were pruned already."""
        ...

    def close(self) -> None:
        """Flush and release. Idempotent. read() keeps working; appends raise JournalError; followers
        end after the last durable record."""
        ...


class JournalFactory(Protocol):
    """Opens a service's named journals ("commands", "events") where that service keeps them."""

    def open(self, name: str, *, start_seq: int = 1, durable_through: int = 0) -> Journal:
        """Open (verifying and repairing a torn tail) or create journal `name`; a new one numbers its
        first record start_seq. Records up to durable_through are known to have been durable:
        JournalDamagedError (nothing changed) if opening would lose any of them."""
        ...

    def location(self, name: str) -> str:
        """Where journal `name` lives, for people (a directory, a stream)."""
        ...

    def quarantine(self, name: str) -> str:
        """Move every record of the closed journal `name` aside, keeping them (after damage, on the
        operator's order); returns where they went. `name` is then empty: the next open starts it at
        its start_seq."""
        ...


# --- shared machinery ----------------------------------------------------------------------------


class DurableSignal:
    """Wakes asyncio waiters (on any event loop) when a journal's durable sequence advances or it is
    closed. notify() may be called from any thread (the file journal syncs in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self, *, close: bool = False) -> None:
        with self._lock:
            if close:
                self._closed = True
            if not self._waiters:
                return
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_wake, fut)

    async def wait_past(self, seq: int, durable: Callable[[], int]) -> None:
        """Return once durable() > seq or the journal is closed."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:  # checked and registered under the lock notify() takes: no lost wakeup
                if self._closed or durable() > seq:
                    return
                fut: asyncio.Future[None] = loop.create_future()
                entry = (loop, fut)
                self._waiters.append(entry)
            try:
                await fut
            finally:
                if not fut.done():  # cancelled
                    with self._lock, contextlib.suppress(ValueError):
                        self._waiters.remove(entry)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def follow_durable(
    journal: JournalReader,
    signal: DurableSignal,
    from_seq: int,
    max_records: int,
    max_bytes: int,
) -> AsyncIterator[list[Record]]:
    """JournalReader.follow on top of read() and a DurableSignal the backend notifies."""
    if max_records < 1:
        raise ValueError(f"max_records must be positive, not {max_records}")
    first, last = journal.first_seq, journal.last_seq
    if from_seq < first:
        raise JournalGapError.pruned("", from_seq, first, last)
    if from_seq > last + 1:
        raise JournalRangeError(
            f"sequence {from_seq} is past the end of the journal (last {last}; the next is {last + 1})",
            requested=from_seq,
            first_seq=first,
            last_seq=last,
        )
    nxt = from_seq
    while True:
        closed = signal.closed  # read before durable_seq: a close after this still yields the rest
        durable = journal.durable_seq
        if nxt <= durable:
            records = journal.read(nxt, max_records=max_records, max_bytes=max_bytes)
            if records and records[-1][0] > durable:
                records = [r for r in records if r[0] <= durable]
            if records:
                nxt = records[-1][0] + 1
                yield records
                continue
        if closed:
            return
        await signal.wait_past(nxt - 1, lambda: journal.durable_seq)


class HeldRecords(Protocol):
    """Records held in memory (the memory backend's store, the JetStream backend's local copy):
    `records[0]` has sequence `first`; read and changed under `lock`."""

    lock: threading.Lock
    first: int
    records: list[bytes]

    @property
    def last(self) -> int: ...


def read_held(
    store: HeldRecords, where: str, from_seq: int, max_records: int, max_bytes: int
) -> list[Record]:
    """`JournalReader.read` over records held in memory: from `from_seq`, at most `max_records` and,
    past the first record, at most `max_bytes` of payload."""
    if max_records < 1:
        raise ValueError(f"max_records must be positive, not {max_records}")
    with store.lock:
        last = store.last
        if from_seq > last:
            return []
        if from_seq < store.first:
            raise JournalGapError.pruned(where, from_seq, store.first, last)
        out: list[Record] = []
        total = 0
        i = from_seq - store.first
        for payload in store.records[i : i + max_records]:
            if out and total + len(payload) > max_bytes:
                break
            out.append((from_seq + len(out), payload))
            total += len(payload)
        return out
