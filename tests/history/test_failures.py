"""History against events it cannot store: no silent spin. The source stops at that event (the events
before it are stored), HistoryService reports NOT_SERVING, GetHistoryStatus and
exchange_history_store_failed name the source, the event and why, ONE log line says so (then a short
reminder at most every reminder_s), and history retries slowly and resumes by itself once the event
can be stored. Transient database errors keep the fast backoff and never change the health."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import history_service_pb2 as pb
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from services.clients import HistoryClient
from services.common.config import ExchangeConfig, config_from_dict
from services.history import schema
from services.history.app import HistoryApp
from services.history.service import SERVICE_NAME
from testkit.cluster import DEFAULT_MARKETS
from testkit.fake_upstream import FakeUpstreams, sources_of
from testkit.history_sim import (
    ACCOUNTS,
    Flow,
    expected_balances,
    expected_orders,
    expected_trades,
    table_rows,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CONSUMER_LOG = "services.history.consumer"


def make_config(fakes: FakeUpstreams, tmp_path: Path, db_url: str) -> ExchangeConfig:
    text = fakes.config_toml("127.0.0.1:0", db_url, DEFAULT_MARKETS)
    return config_from_dict(tomllib.loads(text), base_dir=tmp_path)


def middle_event(events: list[Any], kind: str) -> int:
    """The sequence of an event of `kind` past the middle of `events`."""
    return next(e.sequence for e in events[len(events) // 2 :] if e.WhichOneof("event") == kind)


def spoil(event: Any, how: str) -> Any:
    bad = type(event)()
    bad.CopyFrom(event)
    if how == "user_id 2**63":
        bad.user_id = 2**63
    elif how == "maker_user_id 2**64-1":
        bad.trade_executed.maker_user_id = 2**64 - 1
    elif how == "gap":
        bad.sequence = event.sequence + 1000
    elif how == "foreign source":
        bad.source = "accounts-9"
    else:  # pragma: no cover
        raise AssertionError(how)
    return bad


async def until(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Probe:
    """The app's health, status and metric, as a client (services.clients) and Prometheus see them."""

    def __init__(self, app: HistoryApp) -> None:
        assert app.server is not None
        self.app = app
        self.client = HistoryClient.at(f"127.0.0.1:{app.server.port}", timeout=5)

    async def health_of(self, service: str = SERVICE_NAME) -> int:
        return await self.client.health(service)

    async def status(self) -> pb.GetHistoryStatusResponse:
        return await self.client.get_history_status()

    async def close(self) -> None:
        await self.client.close()

    async def checkpoint(self, source: str) -> int:
        return int((await self.status()).checkpoints.get(source, 0))


def failed_gauge(source: str) -> float | None:
    return REGISTRY.get_sample_value("exchange_history_store_failed", {"source": source})


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the exchange's own loggers (grpc logs the fakes' unimplemented status calls)."""
    return [r for r in caplog.records if r.name.startswith("services.")]


def records(caplog: pytest.LogCaptureFixture, message: str, source: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage().startswith(message) and getattr(r, "source", None) == source
    ]


async def check_stops_then_resumes(
    app: HistoryApp,
    fakes: FakeUpstreams,
    source: str,
    seq: int,
    reason_fragment: str,
    fix: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = Probe(app)
    try:
        others = {s: n for s, n in sources_of(fakes.feeds).items() if s != source}
        await until(lambda: _eq(probe, source, seq - 1), "the events before the bad one stored")
        await until(lambda: _has_failure(app, source), "the failure")
        # every other source goes on to its end; this one stops right before the bad event
        for other, n in others.items():
            await until(lambda o=other, n=n: _eq(probe, o, n), f"{other} at its end")  # type: ignore[misc]
        assert await probe.health_of() == NOT_SERVING
        assert await probe.health_of("") == SERVING  # the process itself runs (and answers queries)
        status = await probe.status()
        assert dict(status.failed_sequences) == {source: seq}
        reason = status.failure_reasons[source]
        assert reason_fragment in reason and "\n" not in reason and len(reason) <= 300
        assert failed_gauge(source) == 1
        # it keeps retrying slowly from its checkpoint, and says so once: nothing more at INFO or above
        requests = len(fakes.feeds[source].requests)
        mark = len(caplog.records)
        await until(lambda: _more_requests(fakes, source, requests + 3), "three more retries")
        assert set(fakes.feeds[source].requests[requests:]) == {seq}
        later = [
            r for r in caplog.records[mark:] if r.name.startswith("services.") and r.levelno >= logging.INFO
        ]
        assert [r for r in later if getattr(r, "source", None) == source] == []
        assert await probe.checkpoint(source) == seq - 1
        assert len(records(caplog, "cannot store an event", source)) == 1
        assert not [r for r in ours(caplog) if r.exc_info], "no traceback for an unstorable event"
        errors = [r for r in ours(caplog) if r.levelno >= logging.ERROR]
        assert errors == records(caplog, "cannot store an event", source)
        # fixed (upstream corrected, database or code fixed): it resumes by itself
        fix()
        want = sources_of(fakes.feeds)
        await until(lambda: _all_at(probe, want), "every source at its end")
        await until(lambda: _health_is(probe, SERVING), "SERVING again")
        status = await probe.status()
        assert not status.failed_sequences and not status.failure_reasons
        assert failed_gauge(source) == 0
        assert len(records(caplog, "stored the event that could not be stored", source)) == 1
    finally:
        await probe.close()


async def _eq(probe: Probe, source: str, value: int) -> bool:
    return await probe.checkpoint(source) == value


async def _has_failure(app: HistoryApp, source: str) -> bool:
    return source in app.failures()


async def _more_requests(fakes: FakeUpstreams, source: str, n: int) -> bool:
    return len(fakes.feeds[source].requests) >= n


async def _all_at(probe: Probe, want: dict[str, int]) -> bool:
    return dict((await probe.status()).checkpoints) == want


async def _health_is(probe: Probe, status: int) -> bool:
    return await probe.health_of() == status


def run_app(
    config: ExchangeConfig, body: Callable[[HistoryApp], Awaitable[None]], *, retry_s: float = 0.1
) -> None:
    async def main() -> None:
        app = HistoryApp(config, page_token_key=os.urandom(32))
        for c in app.consumers:
            c.store_failed_retry_s = retry_s
        await app.start()
        try:
            await body(app)
        finally:
            await app.stop()

    asyncio.run(main())


def assert_exact(engine: Engine, flow: Flow) -> None:
    assert table_rows(engine, schema.trades) == expected_trades(flow)
    assert table_rows(engine, schema.orders) == expected_orders(flow)
    assert table_rows(engine, schema.balance_history) == expected_balances(flow)


def test_user_id_2_63_stops_accounts_reports_and_resumes_when_fixed(
    tmp_path: Path, db_url: str, engine: Engine, small_flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    """The field report: a Deposit for user 2**63 made history spin on OverflowError forever."""
    seq = middle_event(small_flow.accounts, "balance_changed")
    with FakeUpstreams(small_flow, per_response=97) as fakes:
        feed = fakes.feeds[ACCOUNTS]
        feed.events[seq - 1] = spoil(feed.events[seq - 1], "user_id 2**63")

        def fix() -> None:
            feed.events[seq - 1] = small_flow.accounts[seq - 1]

        config = make_config(fakes, tmp_path, db_url)
        with caplog.at_level(logging.INFO, logger="services.history"):
            run_app(
                config,
                lambda app: check_stops_then_resumes(
                    app, fakes, ACCOUNTS, seq, "balance_history.user_id = 9223372036854775808", fix, caplog
                ),
            )
    assert_exact(engine, small_flow)


@pytest.mark.parametrize(
    ("how", "source", "kind", "fragment"),
    [
        ("maker_user_id 2**64-1", "matching-1", "trade_executed", "trades.maker_user_id"),
        ("gap", ACCOUNTS, "order_updated", "GapError: accounts-0: expected event"),
        ("foreign source", "matching-0", "order_done", "SourceMismatch"),
    ],
)
def test_other_unstorable_events_stop_report_and_resume(
    tmp_path: Path,
    small_flow: Flow,
    caplog: pytest.LogCaptureFixture,
    how: str,
    source: str,
    kind: str,
    fragment: str,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    events = small_flow.accounts if source == ACCOUNTS else small_flow.matching[source]
    seq = middle_event(events, kind)
    with FakeUpstreams(small_flow, per_response=61) as fakes:
        feed = fakes.feeds[source]
        feed.events[seq - 1] = spoil(feed.events[seq - 1], how)

        def fix() -> None:
            feed.events[seq - 1] = events[seq - 1]

        config = make_config(fakes, tmp_path, db_url)
        with caplog.at_level(logging.INFO, logger="services.history"):
            run_app(
                config, lambda app: check_stops_then_resumes(app, fakes, source, seq, fragment, fix, caplog)
            )
    from services.history.store import create_history_engine

    engine = create_history_engine(db_url)
    try:
        assert_exact(engine, small_flow)
    finally:
        engine.dispose()


def test_a_database_error_on_one_event_is_isolated_reminded_and_resumes(
    tmp_path: Path, small_flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails for one event with an error no pre-check knows (here the OverflowError of the
    field report): the batch is split until that event is found, the events before it are stored, one
    line is logged and then a short reminder every reminder_s; once the store stops failing, history
    resumes by itself."""
    db_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    seq = middle_event(small_flow.accounts, "balance_changed")
    broken = {"on": True}
    calls = {"n": 0}

    with FakeUpstreams(small_flow, per_response=400) as fakes:
        config = make_config(fakes, tmp_path, db_url)

        async def body(app: HistoryApp) -> None:
            real_insert = app.store.writer.insert

            def insert(conn: Any, table: Any, columns: Any, rows: Any) -> None:
                calls["n"] += 1
                if broken["on"] and table is schema.balance_history and any(r[-1] == seq for r in rows):
                    raise OverflowError("Python int too large to convert to SQLite INTEGER")
                real_insert(conn, table, columns, rows)

            app.store.writer.insert = insert  # type: ignore[method-assign]
            for c in app.consumers:
                c.reminder_s = 0.3
            probe = Probe(app)
            try:
                await until(lambda: _has_failure(app, ACCOUNTS), "the failure")
                assert await probe.checkpoint(ACCOUNTS) == seq - 1  # everything before it is stored
                failure = app.failures()[ACCOUNTS]
                assert failure.sequence == seq
                assert failure.reason == "OverflowError: Python int too large to convert to SQLite INTEGER"
                assert await probe.health_of() == NOT_SERVING
                t0 = time.monotonic()
                await asyncio.sleep(1.5)
                elapsed = time.monotonic() - t0
                reminders = records(caplog, "still cannot store an event", ACCOUNTS)
                assert 2 <= len(reminders) <= elapsed / 0.3 + 1
                assert len(records(caplog, "cannot store an event", ACCOUNTS)) == 1
                assert not [r for r in ours(caplog) if r.exc_info]
                assert await probe.checkpoint(ACCOUNTS) == seq - 1
                broken["on"] = False  # the database (or the code) is fixed
                want = sources_of(fakes.feeds)
                await until(lambda: _all_at(probe, want), "every source at its end")
                await until(lambda: _health_is(probe, SERVING), "SERVING again")
                assert failed_gauge(ACCOUNTS) == 0
            finally:
                await probe.close()

        with caplog.at_level(logging.INFO, logger="services.history"):
            run_app(config, body)
    from services.history.store import create_history_engine

    engine = create_history_engine(db_url)
    try:
        assert_exact(engine, small_flow)
    finally:
        engine.dispose()


def test_transient_database_errors_keep_the_fast_retries_and_the_health(
    tmp_path: Path, small_flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    db_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    lost = {"left": 4}

    with FakeUpstreams(small_flow, per_response=300) as fakes:
        config = make_config(fakes, tmp_path, db_url)

        async def body(app: HistoryApp) -> None:
            real_insert = app.store.writer.insert
            dbapi = app.engine.dialect.loaded_dbapi

            def insert(conn: Any, table: Any, columns: Any, rows: Any) -> None:
                if lost["left"] > 0:
                    lost["left"] -= 1
                    raise sa_exc.OperationalError("INSERT", {}, dbapi.OperationalError("disk I/O error"))
                real_insert(conn, table, columns, rows)

            app.store.writer.insert = insert  # type: ignore[method-assign]
            changes: list[str] = []
            for c in app.consumers:
                c.store_failed_retry_s = 60.0  # a transient error must not wait this long

                async def note(c: Any = c) -> None:
                    changes.append(c.source)

                c.on_failure_change = note
            probe = Probe(app)
            try:
                await until(lambda: _all_at(probe, sources_of(fakes.feeds)), "every source at its end", 20)
                assert lost["left"] == 0 and changes == [] and app.failures() == {}
                assert await probe.health_of() == SERVING
            finally:
                await probe.close()

        with caplog.at_level(logging.INFO, logger="services.history"):
            run_app(config, body)
    errors = [r for r in ours(caplog) if r.getMessage() == "history database error; retrying"]
    assert len(errors) == 4
    assert all("disk I/O error" in str(getattr(r, "error", "")) for r in errors)


def test_status_lists_no_failures_when_all_is_well(tmp_path: Path, small_flow: Flow) -> None:
    db_url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    with FakeUpstreams(small_flow) as fakes:
        config = make_config(fakes, tmp_path, db_url)

        async def body(app: HistoryApp) -> None:
            probe = Probe(app)
            try:
                await until(lambda: _all_at(probe, sources_of(fakes.feeds)), "every source at its end")
                status = await probe.status()
                assert not status.failed_sequences and not status.failure_reasons
                assert await probe.health_of() == SERVING
                for source in sources_of(fakes.feeds):
                    assert failed_gauge(source) == 0
            finally:
                await probe.close()

        run_app(config, body)
