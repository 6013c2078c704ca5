"""The state-machine host (services.common.host) on JetStream journals, unchanged: its journal thread
uses write_after + sync, recovery reads and replays in a worker thread, stop closes on the loop.
A host whose journal was taken over by a newer one fail-stops on FencedError."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest

from services.common.host import HostOptions, StateMachineHost
from services.common.journal import FencedError
from services.common.journal.jetstream import JetStreamJournals
from services.common.snapshots import Snapshots
from services.common.statemachine import CodecSpec, Outcome
from tests.cluster_fixtures import nats_local  # noqa: F401

_ids = count(1)


class Summer:
    """Adds the integer of each command; every command emits the running sum as one event."""

    def __init__(self, applied: int = 0, events: int = 0, total: int = 0) -> None:
        self._applied = applied
        self._events = events
        self.total = total

    @property
    def applied_seq(self) -> int:
        return self._applied

    @property
    def event_seq(self) -> int:
        return self._events

    def apply(self, seq: int, time_us: int, command: bytes) -> Outcome:
        self._applied = seq
        self.total += int(command)
        self._events += 1
        return Outcome(result=self.total, events=(str(self.total).encode(),))

    def snapshot(self) -> bytes:
        return f"{self._applied},{self._events},{self.total}".encode()

    def state_hash(self) -> str:
        return self.snapshot().decode()

    @classmethod
    def restore(cls, data: bytes | None) -> Summer:
        if data is None:
            return cls()
        a, e, t = (int(x) for x in data.split(b","))
        return cls(a, e, t)


CODEC: CodecSpec[bytes] = CodecSpec(encode=lambda c, t: c, decode=lambda r: (r, 0))


def make_host(
    directory: Path, journals: JetStreamJournals, snapshots: Callable[[], Snapshots] | None = None
) -> StateMachineHost[bytes, Summer]:
    return StateMachineHost(
        "js-host",
        directory,
        restore=Summer.restore,
        codec=CODEC,
        options=HostOptions(snapshot_every=0, fork_snapshots=False),
        journals=journals,
        snapshots=snapshots,
    )


def test_the_host_runs_and_recovers_on_jetstream(nats_local: list[str], tmp_path: Path) -> None:  # noqa: F811
    service = f"host-{os.getpid()}-{next(_ids)}"
    first = JetStreamJournals(nats_local, service=service)
    try:

        async def run_first() -> int:
            host = make_host(tmp_path, first)
            await host.start()
            results = [await host.submit(b"1") for _ in range(50)]
            batch = await host.submit_batch([b"2"] * 400)
            many = await asyncio.gather(*(host.submit(b"3") for _ in range(200)))
            assert results[-1] == 50 and batch[-1] == 850 and max(many) == 1450
            assert host.durable_command_seq == 650
            await host.stop(snapshot=False)
            return host.machine.total

        assert asyncio.run(run_first()) == 1450
        first.close()

        async def run_second() -> None:
            again = JetStreamJournals(nats_local, service=service)  # a new process: replay the stream
            host = make_host(tmp_path, again)
            await host.start()
            assert (host.machine.applied_seq, host.machine.event_seq, host.machine.total) == (650, 650, 1450)
            assert await host.submit(b"5") == 1455
            assert host.events.read(651) == [(651, b"1455")]
            await host.stop(snapshot=False)
            again.close()

        asyncio.run(run_second())
    finally:
        cleanup = JetStreamJournals(nats_local, service=service)
        cleanup.delete_streams()
        cleanup.close()


def test_a_host_whose_journal_was_taken_over_fail_stops(nats_local: list[str], tmp_path: Path) -> None:  # noqa: F811
    service = f"host-{os.getpid()}-{next(_ids)}"
    fa = JetStreamJournals(nats_local, service=service)
    fb = JetStreamJournals(nats_local, service=service)
    try:

        async def scenario() -> None:
            old = make_host(tmp_path / "a", fa)
            failures: list[BaseException] = []
            old.on_failure.append(failures.append)
            await old.start()
            assert await old.submit(b"1") == 1
            new = make_host(tmp_path / "b", fb)  # a new leader recovers from the stream and writes
            await new.start()
            assert new.machine.total == 1
            assert await new.submit(b"10") == 11
            with pytest.raises(Exception):  # noqa: B017 - the old leader's write is refused
                await old.submit(b"100")
            for _ in range(100):
                if failures:
                    break
                await asyncio.sleep(0.05)
            assert failures and isinstance(failures[0], FencedError), failures
            assert await new.submit(b"1") == 12
            await new.stop(snapshot=False)
            await old.stop(snapshot=False)

        asyncio.run(scenario())
        check = JetStreamJournals(nats_local, service=service)
        j = check.open("commands")
        assert [p for _, p in j.read(1)] == [b"1", b"10", b"1"]
        check.close()
    finally:
        fa.delete_streams()
        fa.close()
        fb.close()
