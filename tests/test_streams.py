"""services.common.streams.Pipeline: a reader task pipelined with the answers of a bidirectional stream."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import FailedPrecondition, Reason
from services.common.streams import Pipeline


def test_items_come_in_order_and_the_reader_error_after_them() -> None:
    async def main() -> tuple[list[int], BaseException | None]:
        async def read(p: Pipeline[int]) -> None:
            for i in range(5):
                await p.put(i)
            raise FailedPrecondition("gap", Reason.SEQUENCE_GAP)

        got: list[int] = []
        try:
            async for item in Pipeline(read, maxsize=2):
                got.append(item)
        except FailedPrecondition as exc:
            return got, exc
        return got, None

    got, err = asyncio.run(main())
    assert got == [0, 1, 2, 3, 4]
    assert isinstance(err, FailedPrecondition) and err.reason == Reason.SEQUENCE_GAP


def test_the_reader_waits_while_maxsize_items_are_unanswered() -> None:
    async def main() -> list[tuple[str, int]]:
        log: list[tuple[str, int]] = []

        async def read(p: Pipeline[int]) -> None:
            for i in range(4):
                await p.put(i)
                log.append(("put", i))

        async for item in Pipeline(read, maxsize=1):
            await asyncio.sleep(0.01)  # the answer takes a while: the reader is held back
            log.append(("answered", item))
        return log

    log = asyncio.run(main())
    # Never more than maxsize + 1 (the one being answered) read ahead of the answers.
    for n, (what, i) in enumerate(log):
        if what == "put":
            answered = sum(1 for w, _ in log[:n] if w == "answered")
            assert i <= answered + 1, log
    assert [i for w, i in log if w == "answered"] == [0, 1, 2, 3]


def test_has_next_tells_whether_the_next_item_is_already_queued() -> None:
    async def main() -> list[tuple[int, bool]]:
        release = asyncio.Event()

        async def read(p: Pipeline[int]) -> None:
            await p.put(0)
            await p.put(1)
            await release.wait()
            await p.put(2)

        seen: list[tuple[int, bool]] = []
        pipeline = Pipeline(read, maxsize=8)
        async for item in pipeline:
            seen.append((item, pipeline.has_next()))
            if item == 1:
                release.set()
        return seen

    assert asyncio.run(main()) == [(0, True), (1, False), (2, False)]


def test_leaving_the_iteration_cancels_the_reader() -> None:
    async def main() -> bool:
        cancelled = asyncio.Event()

        async def read(p: Pipeline[int]) -> None:
            await p.put(1)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def consume() -> None:
            async for _ in Pipeline(read, maxsize=4):
                raise RuntimeError("the call ended")

        with pytest.raises(RuntimeError):
            await consume()
        await asyncio.wait_for(cancelled.wait(), 5)
        return cancelled.is_set()

    assert asyncio.run(main())
