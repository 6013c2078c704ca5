"""Exactly once under kill -9: `python -m services.history` as a real process against fake upstreams
serving ~200k events, SIGKILLed at random points mid-ingest several times and restarted; after each kill
the database holds exactly the rows of the events up to its checkpoints, each restart resumes at
checkpoint + 1, and in the end every row is there exactly once (SQLite and PostgreSQL)."""

from __future__ import annotations

import bisect
import random
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import history_service_pb2 as pb
from exchange.v1 import history_service_pb2_grpc as pbg
from sqlalchemy import Engine, func, select

from services.common.config import load_config
from services.common.security import process_security
from services.history import schema
from services.history.store import create_history_engine
from testkit.cluster import DEFAULT_MARKETS, free_port
from testkit.fake_upstream import FakeUpstreams, sources_of
from testkit.history_sim import (
    ACCOUNTS,
    Flow,
    expected_balances,
    expected_orders,
    expected_trades,
    generate,
    table_rows,
)
from testkit.service_process import ServiceProcess
from tests.history.conftest import ServerDatabases, backend_url

pytestmark = pytest.mark.slow

KILLS = 4
TARGET_EVENTS = 200_000


@pytest.fixture(scope="session")
def big_flow() -> Flow:
    flow = generate(TARGET_EVENTS // 14, seed=5, users=200)
    assert flow.event_count >= TARGET_EVENTS * 0.9, flow.event_count
    return flow


class HistoryProcess(ServiceProcess):
    def __init__(self, directory: Path, config_text: str, address: str) -> None:
        super().__init__(directory, "services.history", config_text, address)

    def channel(self) -> grpc.Channel:
        """A channel authenticated as admin with the credentials of the process's data directory."""
        creds = process_security(load_config(self.config), "admin").channel_credentials()
        return grpc.secure_channel(self.address, creds)


def checkpoints(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            str(s): int(q)
            for s, q in conn.execute(select(schema.checkpoints.c.source, schema.checkpoints.c.sequence))
        }


def counts_by_source(engine: Engine, table: Any) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.source, func.count()).group_by(table.c.source))
        return {str(s): int(n) for s, n in rows}


def sequences_of(events: list[Any], kind: str) -> list[int]:
    return [e.sequence for e in events if e.WhichOneof("event") == kind]


@pytest.mark.parametrize("crash_backend", ["sqlite", "postgresql"])
def test_kill_9_mid_ingest_keeps_every_row_exactly_once(
    crash_backend: str, tmp_path: Path, server_databases: ServerDatabases, big_flow: Flow
) -> None:
    db_url = backend_url(crash_backend, tmp_path, server_databases)
    rnd = random.Random(crash_backend)
    trade_seqs = {name: sequences_of(events, "trade_executed") for name, events in big_flow.matching.items()}
    balance_seqs = sequences_of(big_flow.accounts, "balance_changed")
    total = big_flow.event_count
    engine = create_history_engine(db_url)
    address = f"127.0.0.1:{free_port()}"
    with FakeUpstreams(big_flow, per_response=1000, resend=20) as fakes:
        want = sources_of(fakes.feeds)
        proc = HistoryProcess(tmp_path, fakes.config_toml(address, db_url, DEFAULT_MARKETS), address)
        try:
            targets = sorted(rnd.uniform(0.05, 0.9) * total for _ in range(KILLS))
            for target in targets:
                before = {name: len(f.requests) for name, f in fakes.feeds.items()}
                stored_before = checkpoints(engine) if proc.proc is not None else {}
                proc.start()
                # progress = events stored over all sources; kill once past the target
                deadline = time.monotonic() + 60
                while True:
                    cps = checkpoints(engine) if proc.proc is not None and _has_tables(engine) else {}
                    if sum(cps.values()) >= target:
                        break
                    assert proc.proc is not None and proc.proc.poll() is None, proc.log()[-3000:]
                    assert time.monotonic() < deadline, f"stuck at {cps}:\n{proc.log()[-3000:]}"
                    time.sleep(0.005)
                time.sleep(rnd.uniform(0, 0.03))
                assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
                cps = checkpoints(engine)
                assert sum(cps.values()) < total, "the kill came after the end; nothing to resume"
                # the restarted process resumed each source right after its stored checkpoint
                for name, feed in fakes.feeds.items():
                    resumed = feed.requests[before[name] :]
                    if resumed:
                        assert resumed[0] == stored_before.get(name, 0) + 1, (name, resumed, stored_before)
                # the rows are exactly those of the events up to the checkpoints
                assert counts_by_source(engine, schema.trades) == {
                    name: bisect.bisect_right(seqs, cps.get(name, 0))
                    for name, seqs in trade_seqs.items()
                    if bisect.bisect_right(seqs, cps.get(name, 0))
                }
                stored_balances = bisect.bisect_right(balance_seqs, cps.get(ACCOUNTS, 0))
                assert counts_by_source(engine, schema.balance_history) == (
                    {ACCOUNTS: stored_balances} if stored_balances else {}
                )

            # last run: to the end, then a clean stop
            proc.start()
            proc.wait_ready()
            ready = [e for e in proc.log_entries() if e.get("msg") == "history ready"]
            assert ready and ready[-1]["port"] == int(address.rsplit(":", 1)[1])
            with proc.channel() as ch:
                stub = pbg.HistoryServiceStub(ch)
                deadline = time.monotonic() + 90
                while True:
                    st = stub.GetHistoryStatus(pb.GetHistoryStatusRequest(), timeout=5)
                    if dict(st.checkpoints) == want:
                        break
                    assert time.monotonic() < deadline, (
                        f"{dict(st.checkpoints)} != {want}:\n{proc.log()[-3000:]}"
                    )
                    time.sleep(0.05)
            assert proc.signal(signal.SIGTERM) == 0
            assert any(e.get("msg") == "stopped" for e in proc.log_entries())
        finally:
            proc.kill()
    try:
        assert checkpoints(engine) == want
        assert table_rows(engine, schema.trades) == expected_trades(big_flow)
        assert table_rows(engine, schema.balance_history) == expected_balances(big_flow)
        assert table_rows(engine, schema.orders) == expected_orders(big_flow)
    finally:
        engine.dispose()


def _has_tables(engine: Engine) -> bool:
    from sqlalchemy import inspect

    return schema.checkpoints.name in inspect(engine).get_table_names()
