"""The memory backend: a Journal held in a Python list (tests; a follower's scratch copy).

MemoryJournals is its factory. It keeps each named journal's records for as long as the factory
lives, so closing and opening again (a host restart inside one test) finds them, with the model of a
store that outlives its writers: opening a journal while an earlier handle is still open (a crash,
or a new leader) keeps only what was durable, and the earlier handle can then only append with the
right expected last sequence (fencing, like a replicated stream). Nothing survives the process.

Thread safe: every operation takes the store's lock; followers may wait on any event loop.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

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
    Record,
    follow_durable,
    read_held,
)


class _Store:
    """A journal's records, shared by the handles opened on it."""

    def __init__(self, start_seq: int) -> None:
        self.lock = threading.Lock()
        self.first = start_seq  # sequence of records[0]
        self.records: list[bytes] = []
        self.durable = start_seq - 1
        self.signals: list[DurableSignal] = []  # of the open handles: woken on every advance

    @property
    def last(self) -> int:
        return self.first + len(self.records) - 1


class MemoryJournal:
    """Journal in memory. `MemoryJournal()` stands alone; MemoryJournals.open shares a store."""

    def __init__(
        self,
        start_seq: int = 1,
        *,
        name: str = "memory",
        _store: _Store | None = None,
        _created: bool = True,
    ) -> None:
        if start_seq < 1:
            raise ValueError(f"start_seq must be at least 1, not {start_seq}")
        self.name = name
        self.created = _created
        self._store = _store if _store is not None else _Store(start_seq)
        self._signal = DurableSignal()
        self._closed = False
        with self._store.lock:
            self._store.signals.append(self._signal)

    # --- positions -----------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        return self._store.first

    @property
    def last_seq(self) -> int:
        return self._store.last

    @property
    def durable_seq(self) -> int:
        return self._store.durable

    # --- writing -------------------------------------------------------------------------------

    def write_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        store = self._store
        with store.lock:
            if self._closed:
                raise JournalError(f"{self.name}: journal is closed")
            last = store.last
            if expected_last_seq != last:
                raise FencedError.refused(self.name, expected_last_seq, last)
            store.records.extend(bytes(p) for p in payloads)
            return range(last + 1, store.last + 1)

    async def append_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        return self.write_after(expected_last_seq, payloads)

    def append(self, payloads: Sequence[bytes]) -> int:
        """Unfenced append (tools and tests); returns the new last_seq."""
        with self._store.lock:
            last = self._store.last
        return self.write_after(last, payloads).stop - 1

    def sync(self) -> int:
        store = self._store
        with store.lock:
            if store.durable < store.last:
                store.durable = store.last
            durable = store.durable
            signals = list(store.signals)
        for signal in signals:
            signal.notify()
        return durable

    async def flush(self) -> int:
        return self.sync()

    # --- reading -------------------------------------------------------------------------------

    def read(
        self, from_seq: int, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[Record]:
        return read_held(self._store, self.name, from_seq, max_records, max_bytes)

    def follow(
        self, from_seq: int, *, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> AsyncIterator[list[Record]]:
        return follow_durable(self, self._signal, from_seq, max_records, max_bytes)

    # --- maintenance ---------------------------------------------------------------------------

    def prune_before(self, seq: int) -> int:
        store = self._store
        with store.lock:
            if self._closed:
                raise JournalError(f"{self.name}: journal is closed")
            n = max(0, min(seq, store.last + 1) - store.first)
            del store.records[:n]
            store.first += n
            return n

    def truncate_after(self, seq: int) -> int:
        store = self._store
        with store.lock:
            if self._closed:
                raise JournalError(f"{self.name}: journal is closed")
            last = store.last
            if seq >= last:
                return 0
            if seq < store.first - 1:
                raise JournalGapError.truncate_pruned(self.name, seq, store.first, last)
            del store.records[seq - store.first + 1 :]
            store.durable = min(store.durable, seq)
            return last - seq

    def close(self) -> None:
        if self._closed:
            return
        self.sync()
        with self._store.lock:
            self._closed = True
            if self._signal in self._store.signals:
                self._store.signals.remove(self._signal)
        self._signal.notify(close=True)


class MemoryJournals:
    """JournalFactory of MemoryJournals; the records of each name live as long as the factory."""

    def __init__(self) -> None:
        self._stores: dict[str, _Store] = {}
        self.quarantined: dict[str, list[list[Record]]] = {}  # the records moved aside, per name

    def open(self, name: str, *, start_seq: int = 1, durable_through: int = 0) -> MemoryJournal:
        if start_seq < 1:
            raise ValueError(f"start_seq must be at least 1, not {start_seq}")
        store = self._stores.get(name)
        if store is None:
            store = _Store(start_seq)
            if durable_through > start_seq - 1:
                raise self._damaged(name, store.last, durable_through, "there is no journal")
            self._stores[name] = store
            return MemoryJournal(name=self.location(name), _store=store, _created=True)
        with store.lock:
            # What was never made durable does not survive its writer (a crash, or a new leader).
            kept = store.durable
            if kept < durable_through:
                raise self._damaged(name, kept, durable_through, f"the journal ends at record {kept}")
            del store.records[kept - store.first + 1 :]
        return MemoryJournal(name=self.location(name), _store=store, _created=False)

    def _damaged(self, name: str, kept: int, needed: int, problem: str) -> JournalDamagedError:
        where = self.location(name)
        return JournalDamagedError.lost(where, location=where, kept=kept, needed=needed, problem=problem)

    def location(self, name: str) -> str:
        return f"memory:{name}"

    def quarantine(self, name: str) -> str:
        store = self._stores.pop(name, None)
        moved = self.quarantined.setdefault(name, [])
        if store is not None:
            with store.lock:
                moved.append([(store.first + i, p) for i, p in enumerate(store.records)])
        return f"{self.location(name)} (quarantined set {len(moved)})"


if TYPE_CHECKING:  # mypy checks that the memory backend implements the interface
    _journal: Journal = MemoryJournal()
    _factory: JournalFactory = MemoryJournals()
