"""The journal contract: one test suite that every Journal backend passes.

A backend joins by subclassing JournalContract in a test module (see tests/test_journal_contract.py:
file and memory today; JetStream next) and providing `make_factory` plus the capabilities it has.
A test that needs a capability the backend lacks is skipped with the reason, so the report shows
what was not checked for which backend:

- `survives_crash`: records made durable by flush() are still there when the next process opens the
  journal after this one died without closing it (files, a replicated stream; not memory). The
  backend provides `crash`.
- `torn_tails`: a crash can leave a partial last record that the next open cuts (files). The backend
  provides `tear`.
- `shared_writers`: a second handle may open a journal while the first is still open, as a new leader
  would (memory, a replicated stream; not files: one process per journal directory), so fencing
  between two writers can be checked.

Covered: positions of a new journal, ordering and contiguous numbering, read limits, durability
after flush (reopen after close; after a crash where the backend survives one), torn tails, fencing
(a stale expected last sequence is refused and nothing is written; a deposed writer cannot append),
follow (a follower sees appends in order, only once durable, wakes on new ones, ends on close),
prune (reads before the prune point raise JournalGapError naming the oldest kept), truncate, close,
refusing to open a journal that lost durable records, and quarantine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from services.common.journal import (
    FencedError,
    Journal,
    JournalDamagedError,
    JournalError,
    JournalFactory,
    JournalGapError,
    JournalRangeError,
    Record,
)

T = TypeVar("T")

NAME = "commands"


def payload(seq: int) -> bytes:
    """Distinct, recognisable content per sequence, of varying size (0 to 40 bytes)."""
    n = (seq * 7) % 41
    return (f"<{seq}>".encode() * (n // 3 + 1))[:n]


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)  # a hang fails the test instead of blocking it

    return asyncio.run(main())


def read_all(j: Journal, from_seq: int | None = None) -> list[Record]:
    out: list[Record] = []
    seq = j.first_seq if from_seq is None else from_seq
    while True:
        got = j.read(seq, max_records=7, max_bytes=100)
        if not got:
            return out
        assert [s for s, _ in got] == list(range(seq, seq + len(got))), "contiguous, from from_seq"
        out.extend(got)
        seq = got[-1][0] + 1


def fill(j: Journal, n: int, batch: int = 3) -> list[Record]:
    """Append n records (fenced, in batches) after last_seq; returns them."""
    start = j.last_seq + 1
    recs = [(s, payload(s)) for s in range(start, start + n)]
    for i in range(0, n, batch):
        chunk = recs[i : i + batch]
        assert j.write_after(chunk[0][0] - 1, [p for _, p in chunk]) == range(chunk[0][0], chunk[-1][0] + 1)
    return recs


async def next_chunk(it: AsyncIterator[list[Record]], timeout: float = 10) -> list[Record]:
    return await asyncio.wait_for(it.__anext__(), timeout)


async def still_waiting(fut: Awaitable[Any]) -> bool:
    """True when fut has not completed after the event loop ran a while (the follower is waiting)."""
    task = asyncio.ensure_future(fut)
    await asyncio.sleep(0.05)
    return not task.done()


class JournalContract:
    survives_crash: ClassVar[bool] = False
    torn_tails: ClassVar[bool] = False
    shared_writers: ClassVar[bool] = False

    def make_factory(self, base: Path) -> JournalFactory:
        """A factory whose journals live under `base` (small segments, where the backend has them,
        so that rollover and pruning happen with a few hundred records)."""
        raise NotImplementedError

    def crash(self, journal: Journal, factory: JournalFactory, name: str, base: Path) -> JournalFactory:
        """survives_crash: what the next process finds if this one died now, `journal` still open
        (no flush, no close): a factory (over `base`, a fresh place) to open `name` from."""
        raise NotImplementedError

    def tear(self, factory: JournalFactory, name: str, how: str) -> None:
        """torn_tails: damage the closed journal `name` as a crash while writing its last record
        would: "cut" inside the last record, "junk" after it, "zeros" after it."""
        raise NotImplementedError

    @pytest.fixture
    def factory(self, tmp_path: Path) -> JournalFactory:
        return self.make_factory(tmp_path / "journals")

    def _require(self, capability: str, why: str) -> None:
        if not getattr(self, capability):
            pytest.skip(f"n/a for {type(self).__name__}: {why}")

    # --- positions and numbering -------------------------------------------------------------------

    def test_a_new_journal(self, factory: JournalFactory) -> None:
        j = factory.open(NAME)
        assert j.created
        assert (j.first_seq, j.last_seq, j.durable_seq) == (1, 0, 0)
        assert j.read(1) == []
        j.close()
        j = factory.open(NAME, start_seq=50)  # start_seq only numbers a new journal
        assert not j.created and (j.first_seq, j.last_seq) == (1, 0)
        j.close()
        k = factory.open("events", start_seq=101)
        assert k.created and (k.first_seq, k.last_seq, k.durable_seq) == (101, 100, 100)
        assert k.write_after(100, [b"a"]) == range(101, 102)
        k.close()
        k = factory.open("events")
        assert read_all(k) == [(101, b"a")]
        k.close()

    def test_numbering_is_contiguous_and_in_order(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            expected: list[Record] = []
            for i, size in enumerate([1, 3, 0, 10, 1, 40, 2, 0, 7]):
                after = j.last_seq
                batch = [payload(after + k + 1) for k in range(size)]
                if i % 2:
                    got = await j.append_after(after, batch)
                else:
                    got = j.write_after(after, batch)
                assert got == range(after + 1, after + size + 1)
                assert j.last_seq == after + size
                expected.extend(zip(got, batch, strict=True))
            assert read_all(j) == expected
            assert j.read(5, max_records=1) == [expected[4]]
            big = b"x" * 1000
            assert j.write_after(j.last_seq, [big, b"y"]) == range(len(expected) + 1, len(expected) + 3)
            assert j.read(len(expected) + 1, max_bytes=10) == [(len(expected) + 1, big)], "at least one"
            assert j.read(j.last_seq + 1) == []
            with pytest.raises(ValueError):
                j.read(1, max_records=0)
            j.close()

        run(scenario())

    # --- durability ---------------------------------------------------------------------------------

    def test_flush_and_sync_make_appends_durable(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            fill(j, 5)
            assert j.durable_seq <= j.last_seq == 5
            assert await j.flush() == 5 == j.durable_seq
            fill(j, 4)
            assert j.durable_seq <= j.last_seq
            assert await asyncio.to_thread(j.sync) == 9 == j.durable_seq  # from a worker thread
            assert await j.flush() == 9  # nothing new: nothing to do
            j.close()

        run(scenario())

    def test_durable_records_survive_close_and_reopen(self, factory: JournalFactory) -> None:
        j = factory.open(NAME)
        recs = fill(j, 200, batch=7)
        j.sync()
        recs += fill(j, 5)  # not flushed: close() flushes
        j.close()
        j = factory.open(NAME, durable_through=205)
        assert not j.created
        assert (j.first_seq, j.last_seq, j.durable_seq) == (1, 205, 205)
        assert read_all(j) == recs
        assert j.write_after(205, [b"next"]) == range(206, 207)
        j.close()

    def test_flushed_records_survive_a_crash(self, factory: JournalFactory, tmp_path: Path) -> None:
        self._require("survives_crash", "a memory journal does not outlive its process")
        j = factory.open(NAME)
        flushed = fill(j, 120, batch=11)
        j.sync()
        unflushed = fill(j, 30)
        after = self.crash(j, factory, NAME, tmp_path / "after-crash")
        j.close()
        r = after.open(NAME, durable_through=120)
        got = read_all(r)
        assert got[:120] == flushed
        assert got[120:] == unflushed[: len(got) - 120], "of what was not flushed, a prefix or nothing"
        assert r.durable_seq == r.last_seq == len(got)
        assert r.write_after(len(got), [b"on"]) == range(len(got) + 1, len(got) + 2)
        r.close()

    @pytest.mark.parametrize("how", ["cut", "junk", "zeros"])
    def test_a_torn_tail_is_cut_on_open(self, factory: JournalFactory, how: str) -> None:
        self._require("torn_tails", "appends reach the store whole or not at all")
        j = factory.open(NAME)
        recs = fill(j, 40)
        j.close()
        self.tear(factory, NAME, how)
        keep = 39 if how == "cut" else 40  # junk after a complete record 40 keeps it
        if how == "cut":
            with pytest.raises(JournalDamagedError) as err:  # record 40 was durable: refused, not cut
                factory.open(NAME, durable_through=40)
            assert (err.value.kept, err.value.needed) == (39, 40)
        j = factory.open(NAME, durable_through=keep)
        assert (j.last_seq, j.durable_seq) == (keep, keep)
        assert read_all(j) == recs[:keep]
        assert j.write_after(keep, [b"after"]) == range(keep + 1, keep + 2)
        j.close()
        j = factory.open(NAME)
        assert read_all(j) == [*recs[:keep], (keep + 1, b"after")]
        j.close()

    def test_opening_refuses_to_lose_durable_records(self, factory: JournalFactory) -> None:
        j = factory.open(NAME)
        recs = fill(j, 12)
        j.close()
        with pytest.raises(JournalDamagedError) as err:
            factory.open(NAME, durable_through=15)
        assert (err.value.kept, err.value.needed) == (12, 15)
        assert err.value.location == factory.location(NAME)
        assert "13..15" in str(err.value)
        j = factory.open(NAME, durable_through=12)  # nothing was changed by the refusal
        assert read_all(j) == recs
        j.close()

    # --- fencing ------------------------------------------------------------------------------------

    def test_a_stale_expected_last_seq_is_refused_and_nothing_written(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            recs = fill(j, 5)
            await j.flush()
            for stale in (4, 0, 6, 100):
                with pytest.raises(FencedError) as err:
                    j.write_after(stale, [b"x", b"y"])
                assert (err.value.expected, err.value.last) == (stale, 5)
                assert isinstance(err.value, JournalError)
                with pytest.raises(FencedError):
                    await j.append_after(stale, [b"x"])
                with pytest.raises(FencedError):
                    j.write_after(stale, [])  # an empty batch is fenced too
            assert (j.last_seq, j.durable_seq) == (5, 5)
            assert read_all(j) == recs
            assert await j.flush() == 5
            j.close()
            j = factory.open(NAME)
            assert read_all(j) == recs
            assert j.write_after(5, []) == range(6, 6)
            assert await j.append_after(5, [b"z"]) == range(6, 7)
            j.close()

        run(scenario())

    def test_a_deposed_writer_cannot_append(self, factory: JournalFactory) -> None:
        self._require(
            "shared_writers", "one process per journal: fencing between writers needs a shared store"
        )
        old = factory.open(NAME)
        recs = fill(old, 3)
        old.sync()
        new = factory.open(NAME)  # a new leader takes over while the old one still runs
        assert new.write_after(3, [b"new-4"]) == range(4, 5)
        with pytest.raises(FencedError):
            old.write_after(3, [b"old-4"])  # what the old writer believes it holds
        new.sync()
        assert read_all(new) == [*recs, (4, b"new-4")]
        new.close()
        old.close()

    # --- follow -------------------------------------------------------------------------------------

    def test_followers_see_durable_records_in_order_and_end_on_close(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            recs = fill(j, 3)
            await j.flush()
            fill(j, 1)  # record 4: appended, not durable
            a = j.follow(1)
            b = j.follow(2, max_records=2)
            assert await next_chunk(a) == recs
            assert await next_chunk(b) == recs[1:3]
            pending_a = asyncio.ensure_future(next_chunk(a))
            assert await still_waiting(asyncio.shield(pending_a)), "record 4 is not durable yet"
            await j.flush()
            assert await pending_a == [(4, payload(4))]
            assert await next_chunk(b) == [(4, payload(4))]
            # a sync in another thread wakes the followers on this loop
            more = fill(j, 5)
            pending_b = asyncio.ensure_future(next_chunk(b))
            await asyncio.to_thread(j.sync)
            seen_a: list[Record] = []
            while len(seen_a) < 5:
                chunk = await next_chunk(a)
                assert len(chunk) <= 1000
                seen_a.extend(chunk)
            assert seen_a == more
            seen_b = await pending_b
            while len(seen_b) < 5:
                chunk = await next_chunk(b)
                assert len(chunk) <= 2
                seen_b.extend(chunk)
            assert seen_b == more
            # waiting followers end when the journal closes, after the last durable record
            tail = fill(j, 2)
            waiting = asyncio.ensure_future(next_chunk(b))
            j.close()  # flushes records 10 and 11 first
            assert await waiting == tail
            for it in (a, b):
                rest: list[Record] = []
                async for chunk in it:
                    rest.extend(chunk)
                assert rest == ([] if it is b else tail)
            late = [r async for chunk in j.follow(8) for r in chunk]  # after close: what is there
            assert [s for s, _ in late] == [8, 9, 10, 11]

        run(scenario())

    def test_follow_from_the_end_waits_for_the_next_record(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME, start_seq=10)
            it = j.follow(10)  # empty journal: waits for record 10
            pending = asyncio.ensure_future(next_chunk(it))
            assert await still_waiting(asyncio.shield(pending))
            await j.append_after(9, [b"ten"])
            await j.flush()
            assert await pending == [(10, b"ten")]
            with pytest.raises(JournalRangeError) as err:
                await next_chunk(j.follow(12))  # past last_seq + 1
            assert not isinstance(err.value, JournalGapError)
            assert (err.value.requested, err.value.last_seq) == (12, 10)
            with pytest.raises(JournalGapError):
                await next_chunk(j.follow(9))  # before the first
            j.close()
            assert [c async for c in it] == []

        run(scenario())

    def test_many_concurrent_appends_reach_a_follower_exactly_once(self, factory: JournalFactory) -> None:
        """A writer on the loop, syncs in worker threads (the host's pattern), a follower reading."""

        async def scenario() -> None:
            j = factory.open(NAME)
            seen: list[Record] = []

            async def follower() -> None:
                async for chunk in j.follow(1, max_records=50):
                    seen.extend(chunk)

            task = asyncio.ensure_future(follower())
            expected: list[Record] = []
            flushes = []
            for _ in range(60):
                expected += fill(j, 7, batch=7)
                flushes.append(asyncio.ensure_future(j.flush()))
                await asyncio.sleep(0)
            await asyncio.gather(*flushes)
            j.close()
            await task
            assert seen == expected

        run(scenario())

    # --- prune, truncate, close ----------------------------------------------------------------------

    def test_prune_before(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            recs = fill(j, 300, batch=5)
            await j.flush()
            assert j.prune_before(1) == 0
            removed = j.prune_before(200)
            first = j.first_seq
            assert removed > 0 and first == 1 + removed and first <= 200
            assert read_all(j) == recs[first - 1 :], "every record >= the prune point is kept"
            with pytest.raises(JournalGapError) as err:
                j.read(first - 1)
            assert (err.value.requested, err.value.first_seq) == (first - 1, first)
            assert f"oldest is {first}" in str(err.value)
            with pytest.raises(JournalGapError):
                await next_chunk(j.follow(1))
            assert j.prune_before(first) == 0
            fill(j, 3)
            j.close()
            j = factory.open(NAME)  # pruning survives a reopen
            assert j.first_seq == first and j.last_seq == 303
            with pytest.raises(JournalGapError):
                j.read(1)
            j.close()

        run(scenario())

    def test_a_follower_behind_the_prune_point_gets_a_gap(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            fill(j, 300, batch=5)
            await j.flush()
            it = j.follow(1, max_records=10)
            assert [s for s, _ in await next_chunk(it)] == list(range(1, 11))
            assert j.prune_before(250) > 0
            with pytest.raises(JournalGapError):
                await next_chunk(it)
            j.close()

        run(scenario())

    def test_truncate_after(self, factory: JournalFactory) -> None:
        j = factory.open(NAME)
        recs = fill(j, 30)
        j.sync()
        assert j.truncate_after(30) == 0
        assert j.truncate_after(99) == 0
        assert j.truncate_after(20) == 10
        assert j.last_seq == 20 and j.durable_seq <= 20
        assert read_all(j) == recs[:20]
        with pytest.raises(FencedError):
            j.write_after(30, [b"x"])
        assert j.write_after(20, [b"21"]) == range(21, 22)
        j.close()
        j = factory.open(NAME)
        assert read_all(j) == [*recs[:20], (21, b"21")]
        assert j.truncate_after(0) == 21
        assert (j.first_seq, j.last_seq) == (1, 0)
        j.close()
        j = factory.open(NAME)
        fill(j, 300, batch=5)
        j.sync()
        j.prune_before(200)
        first = j.first_seq
        with pytest.raises(JournalGapError):
            j.truncate_after(first - 2)
        assert j.truncate_after(first - 1) == 300 - first + 1
        assert (j.first_seq, j.last_seq) == (first, first - 1)
        assert j.write_after(first - 1, [b"z"]) == range(first, first + 1)
        j.close()

    def test_close(self, factory: JournalFactory) -> None:
        async def scenario() -> None:
            j = factory.open(NAME)
            recs = fill(j, 4)
            j.close()
            j.close()  # idempotent
            assert j.durable_seq == j.last_seq == 4  # close flushed
            assert read_all(j) == recs  # reads keep working
            assert await j.flush() == 4 and j.sync() == 4
            with pytest.raises(JournalError) as err:
                j.write_after(4, [b"x"])
            assert not isinstance(err.value, FencedError), "closed, not fenced"
            with pytest.raises(JournalError) as err:
                await j.append_after(4, [b"x"])
            assert not isinstance(err.value, FencedError)
            with pytest.raises(JournalError):
                j.prune_before(2)
            assert j.last_seq == 4
            assert [c async for c in j.follow(2)] == [recs[1:]]

        run(scenario())

    def test_quarantine_moves_the_journal_aside(self, factory: JournalFactory) -> None:
        j = factory.open(NAME)
        fill(j, 10)
        j.close()
        where = factory.quarantine(NAME)
        assert where and factory.location(NAME) in where
        j = factory.open(NAME, start_seq=11)
        assert j.created and (j.first_seq, j.last_seq) == (11, 10)
        assert j.write_after(10, [b"eleven"]) == range(11, 12)
        j.close()

    def test_reads_run_concurrently_with_appends_and_syncs(self, factory: JournalFactory) -> None:
        j = factory.open(NAME)
        stop = threading.Event()
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    durable = j.durable_seq
                    got = j.read(max(j.first_seq, durable - 20), max_records=30) if durable else []
                    assert all(p == payload(s) for s, p in got)
                    j.sync()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=reader)
        t.start()
        try:
            recs = fill(j, 3000, batch=9)
        finally:
            stop.set()
            t.join()
        assert not errors, errors
        j.sync()
        assert read_all(j) == recs
        j.close()
