"""Fail-stop: a host whose writer cannot write fails every caller at once, refuses new commands and
calls its failure hooks; a service process then turns NOT_SERVING and exits non-zero.

Unit level: the journal's own write and fsync paths are made to fail (EPERM / EIO) under a live host.
Process level: `chattr +i` on the active command segment of a real accounts process (as root).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import Reason, Unavailable
from services.common.failstop import EXIT_WRITER_FAILED, FailStop
from services.common.host import StateMachineHost
from services.common.journal import JournalError
from services.common.journal import file as jmod
from services.common.rpc import error_reason
from services.common.statemachine import Outcome
from tests.cluster import Cluster
from tests.test_host_recovery import CODEC, Tally, assert_consistent, run, started


def eperm(*args: Any) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


def assert_writer_failed(exc: BaseException | Any) -> None:
    assert isinstance(exc, Unavailable), exc
    assert exc.reason == Reason.WRITER_FAILED
    assert "tally" in exc.message


class Hooked:
    def __init__(self, host: StateMachineHost[int, Tally]) -> None:
        self.calls: list[BaseException] = []
        host.on_failure.append(self.calls.append)


async def collect(host: StateMachineHost[int, Tally], from_seq: int) -> tuple[list[int], BaseException]:
    seen: list[int] = []
    try:
        async for chunk in host.follow_events(from_seq):
            seen.extend(s for s, _ in chunk)
    except Unavailable as exc:
        return seen, exc
    raise AssertionError("the stream ended without an error")


async def after_failure(host: StateMachineHost[int, Tally], hook: Hooked, durable: int) -> None:
    """What every failure leaves behind: a failed host that refuses at once, ended streams, hooks
    called once, no snapshot at stop."""
    assert host.failure is not None
    assert len(hook.calls) == 1
    assert host.commands.durable_seq == durable
    with pytest.raises(Unavailable) as err:
        host.submit_nowait(4)  # refused synchronously, nothing queued
    assert_writer_failed(err.value)
    with pytest.raises(Unavailable):
        host.submit_batch([4, 5])
    with pytest.raises(Unavailable):
        host.enqueue_internal(4)
    with pytest.raises(Unavailable):
        await host.snapshot_now()
    assert host.queue_depth == 0
    seen, exc = await collect(host, 1)  # durable events are still served, then the stream ends
    assert seen == list(range(1, host.durable_event_seq + 1))
    assert_writer_failed(exc)
    snaps = host.snapshots.list()
    await host.stop()  # no final snapshot: the machine may be ahead of the journal
    assert host.snapshots.list() == snaps
    assert len(hook.calls) == 1


async def recovered(d: Path, applied: int) -> None:
    host = await started(d)
    assert host.machine.applied_seq == applied
    assert_consistent(host)
    assert await host.submit(7) == applied + 1
    await host.stop()


def test_failed_append_fails_every_caller_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "d"

    async def scenario() -> None:
        host = await started(d)
        hook = Hooked(host)
        for v in (4, 5):
            await host.submit(v)
        monkeypatch.setattr(jmod, "_pwrite_all", eperm)  # the next write is refused (like chattr +i)
        single = [host.submit_nowait(v) for v in (7, 8, 10)]  # one batch fails; the rest queued
        batch = host.submit_batch([11, -1, 13])
        results = await asyncio.gather(*single, batch, return_exceptions=True)
        for r in results:
            assert_writer_failed(r)
        assert isinstance(hook.calls[0], JournalError)
        await after_failure(host, hook, 2)

    run(scenario())
    monkeypatch.undo()
    run(recovered(d, 2))  # the refused batch was not journaled


def test_failed_fsync_fails_the_caller_while_the_writer_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fsync runs in the pipelined _finish task; nothing else is submitted afterwards, so only
    fail-stop can answer the caller (it used to wait forever)."""
    d = tmp_path / "d"

    async def scenario() -> None:
        host = await started(d)
        hook = Hooked(host)
        await host.submit(4)

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(jmod, "_datasync", eio)
        with pytest.raises(Unavailable) as err:
            await host.submit(5)
        assert_writer_failed(err.value)
        assert "fsync" in err.value.message
        await after_failure(host, hook, 1)

    run(scenario())
    monkeypatch.undo()

    # Command 2 reached the file but its fsync failed: it may or may not be there after a restart;
    # either way the journal and the machine agree.
    async def check() -> None:
        host = await started(d)
        assert host.machine.applied_seq in (1, 2)
        assert_consistent(host)
        await host.stop()

    run(check())


def test_a_bug_in_apply_fails_stop(tmp_path: Path) -> None:
    class Buggy(Tally):
        def apply(self, seq: int, time_us: int, command: int) -> Outcome:
            if command == 13:
                raise KeyError("bug")
            return super().apply(seq, time_us, command)

    async def scenario() -> None:
        host: StateMachineHost[int, Tally] = StateMachineHost(
            "tally",
            tmp_path / "d",
            restore=lambda data: Buggy(),
            codec=CODEC,
        )
        await host.start()
        hook = Hooked(host)
        await host.submit(4)
        futs = [host.submit_nowait(v) for v in (5, 13, 7)]
        for r in await asyncio.gather(*futs, return_exceptions=True):
            assert_writer_failed(r)
        assert isinstance(hook.calls[0], KeyError)
        await after_failure(host, hook, 1)

    run(scenario())


@pytest.mark.parametrize("fork", [False, True])
def test_failed_snapshot_bookkeeping_fails_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    if fork and not hasattr(os, "fork"):
        pytest.skip("no fork")
    d = tmp_path / "d"

    async def scenario() -> None:
        host = await started(d, snapshot_every=3, fork_snapshots=fork)
        hook = Hooked(host)
        monkeypatch.setattr(host.commands, "prune_before", eperm)
        for v in (4, 5, 7):  # the third triggers a snapshot at 3, then its bookkeeping fails
            await host.submit(v)
        for _ in range(500):
            if host.failure is not None:
                break
            await asyncio.sleep(0.01)
        assert host.failure is not None and "snapshot" in host.failure
        with pytest.raises(Unavailable):
            await host.submit(8)
        await after_failure(host, hook, 3)

    run(scenario())
    run(recovered(d, 3))


def test_failstop_hook_sets_not_serving_stops_and_exits(tmp_path: Path) -> None:
    class Server:
        def __init__(self) -> None:
            self.serving: list[bool] = []

        async def set_serving(self, serving: bool) -> None:
            self.serving.append(serving)

    async def scenario() -> tuple[FailStop, Server]:
        host = await started(tmp_path / "d")
        stop = asyncio.Event()
        fs = FailStop("tally", grace_s=60)
        fs.arm(host, stop)
        server = Server()
        fs.set_server(server)
        await host.submit(4)
        assert not stop.is_set() and not fs.failed
        host.commands.write_after = eperm  # type: ignore[method-assign,assignment]
        with pytest.raises(Unavailable):
            await host.submit(5)
        await asyncio.wait_for(stop.wait(), 10)
        await asyncio.sleep(0)
        await host.stop()
        return fs, server

    fs, server = run(scenario())
    assert server.serving == [False]
    assert fs.failed
    assert fs._watchdog is not None
    fs._watchdog.cancel()  # this test process must not be ended by it
    with pytest.raises(SystemExit) as err:
        fs.exit_if_failed()
    assert err.value.code == EXIT_WRITER_FAILED


# --- a real accounts process ---------------------------------------------------------------------


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def _can_chattr(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        return False
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    try:
        _chattr("+i", probe)
    except subprocess.CalledProcessError:
        return False
    _chattr("-i", probe)
    return True


@pytest.mark.slow
def test_accounts_with_an_unwritable_journal_answers_unavailable_and_exits(tmp_path: Path) -> None:
    if not _can_chattr(tmp_path):
        pytest.skip("needs root and a filesystem with chattr +i")
    c = Cluster(tmp_path)
    c.start(["accounts-0"])
    frozen: Path | None = None
    try:
        c.accounts.Deposit(
            apb.DepositRequest(user_id=1, asset="USDT", amount="5", business="d", business_id="1"), timeout=10
        )
        commands = tmp_path / "data" / "accounts-0" / "commands"
        frozen = sorted(commands.glob("*.seg"))[-1]
        _chattr("+i", frozen)
        deadline = 30.0
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            c.accounts.Deposit(
                apb.DepositRequest(user_id=1, asset="USDT", amount="7", business="d", business_id="2"),
                timeout=deadline,
            )
        elapsed = time.monotonic() - t0
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert error_reason(err.value) == "WRITER_FAILED"
        assert elapsed < deadline / 2, "answered at once, not at the client's deadline"
        # Health turns NOT_SERVING (or the process is already gone), then the process exits non-zero.
        proc = c.procs["accounts-0"]
        health = health_pb2_grpc.HealthStub(c.channel("accounts-0"))
        statuses = []
        while proc.poll() is None and health_pb2.HealthCheckResponse.NOT_SERVING not in statuses:
            try:
                statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
            except grpc.RpcError:
                time.sleep(0.02)  # the server is stopping: it may refuse before the process is gone
            assert time.monotonic() - t0 < 60, f"still up and answering {statuses}"
        code = proc.wait(timeout=30)
        assert code == EXIT_WRITER_FAILED, c.log("accounts-0")[-3000:]
        log = c.log("accounts-0")
        assert "writer failed" in log and "NOT_SERVING" in log
        c.procs.pop("accounts-0")
        _chattr("-i", frozen)
        frozen = None
        # Restarted, it has the first deposit only; the failed one can simply be sent again.
        c.start(["accounts-0"])
        again = c.accounts.Deposit(
            apb.DepositRequest(user_id=1, asset="USDT", amount="7", business="d", business_id="2"), timeout=10
        )
        assert not again.duplicate
        assert again.balance.available.startswith("12")
    finally:
        if frozen is not None:
            _chattr("-i", frozen)
        c.stop()
