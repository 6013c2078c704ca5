"""Ingest: batches of events of one source -> rows, plus that source's checkpoint, in ONE transaction.

    engine = create_history_engine(config.history_url())
    migrate(engine)                               # alembic upgrade head
    store = HistoryStore(engine)
    store.ingest_matching("matching-0", events)   # TradeExecuted -> trades
    store.ingest_accounts("accounts-0", events)   # BalanceChanged -> balance_history,
                                                  # OrderState -> orders (upsert by order_id)

Exactly once: each call reads the source's checkpoint (locked for update where the database can), drops
the events at or below it (a resend after a reconnect), checks the rest follow it without a gap, writes
their rows in bulk (one executemany per table and batch; on PostgreSQL a binary COPY, see BulkWriter) and
moves the checkpoint to the last event, all in one transaction. A crash before the commit loses the whole
batch, and the consumer asks again from the stored checkpoint; a replay of anything already stored is
ignored.

Nothing is stored that a column cannot hold exactly: before any insert every value is checked against
its column (signed 64-bit BIGINT, 16-bit SMALLINT, VARCHAR length, no NUL character, which PostgreSQL
text cannot hold), so SQLite, PostgreSQL and MariaDB all refuse such an event the same way: with
UnstorableEvent naming the event's sequence, the column and the value, and nothing written. GapError,
SourceMismatch and UnstorableEvent are IngestRefused: retrying the same events cannot succeed.
`is_transient` tells the database errors a retry can fix by itself (connection lost, lock timeout)
from the rest.

Calls are blocking: the consumers run them in one worker thread (see services.history.consumer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from exchange.v1 import events_pb2 as ev
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Engine,
    Integer,
    SmallInteger,
    String,
    Table,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from services.common.enums import FINAL_STATUSES
from services.common.errors import quote
from services.history.schema import VERSION_TABLE, balance_history, checkpoints, orders, trades

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

ROWS = Counter("exchange_history_rows_written_total", "Rows written to the history database", ["table"])
EVENTS = Counter("exchange_history_events_ingested_total", "Events stored (checkpoint moved)", ["source"])
SKIPPED = Counter(
    "exchange_history_events_skipped_total", "Events at or below the checkpoint (resends)", ["source"]
)
CHECKPOINT = Gauge("exchange_history_checkpoint", "Last event stored per source", ["source"])
BATCH_SECONDS = Histogram(
    "exchange_history_ingest_batch_seconds",
    "Time to write one ingest transaction",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_EVENTS = Histogram(
    "exchange_history_ingest_batch_events",
    "Events per ingest transaction",
    ["source"],
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)

E = TypeVar("E", ev.MatchingEvent, ev.AccountEvent)


class IngestRefused(Exception):
    """The batch cannot be stored as it is, however often it is retried; nothing of it was written.
    `sequence` is the first event that cannot be stored (the events before it can)."""

    def __init__(self, message: str, sequence: int) -> None:
        super().__init__(message)
        self.sequence = sequence


class GapError(IngestRefused):
    """Events do not follow the stored checkpoint (a sequence is missing or out of order); `sequence`
    is the one expected."""


class SourceMismatch(IngestRefused):
    """An event carries another source than the stream it was read from."""


class UnstorableEvent(IngestRefused):
    """An event holds a value its column cannot hold (out of the column's integer range, text longer
    than the column or with a NUL character)."""


@dataclass(frozen=True)
class IngestResult:
    source: str
    checkpoint: int
    events: int  # new events stored (checkpoint moved by this much)
    skipped: int  # events at or below the previous checkpoint
    trades: int = 0
    orders: int = 0  # order rows upserted (one per order per batch: the latest state)
    balances: int = 0


# --- engine ----------------------------------------------------------------------------------------


def create_history_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for the history database.

    SQLite: the file's directory is created; WAL journal (64 MiB between checkpoints), synchronous=NORMAL
    and a busy timeout are set on each connection, and SQLAlchemy emits BEGIN itself so reads and DDL
    are transactional too.
    MariaDB/MySQL: connections are recycled hourly (the server drops idle ones)."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        database = u.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _sqlite_setup(engine)
        return engine
    if backend in ("mysql", "mariadb"):
        kwargs.setdefault("pool_recycle", 3600)
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    return engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # sqlite3 must not BEGIN on its own; see _on_begin
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache: the indexes stay in memory
            # Checkpoint the WAL into the database every 16384 pages (64 MiB) instead of 1000: the hot
            # index pages are copied once per checkpoint, not once per few transactions (ingest ~1.3x).
            cur.execute("PRAGMA wal_autocheckpoint=16384")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def describe_url(engine: Engine) -> str:
    """The database URL without its password (for logs and GetHistoryStatus)."""
    return str(engine.url.render_as_string(hide_password=True))


# --- migrations ------------------------------------------------------------------------------------


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """alembic upgrade to `revision` (default: head). Safe to run on every start."""
    from alembic import command

    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """alembic downgrade to `revision` ("base" drops every history table)."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        rev = ctx.get_current_revision()
        return None if rev is None else str(rev)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return str(head)


# --- rows ------------------------------------------------------------------------------------------
# Rows are tuples in these column orders (cheaper to build and to bind than dicts; see _BulkWriter).

TRADE_COLUMNS = (
    "market",
    "trade_id",
    "time_us",
    "price_ticks",
    "amount_lots",
    "quote_units",
    "base_units",
    "taker_side",
    "taker_order_id",
    "taker_user_id",
    "maker_order_id",
    "maker_user_id",
    "taker_fee",
    "maker_fee",
    "source",
    "sequence",
)
ORDER_COLUMNS = (
    "order_id",
    "user_id",
    "client_order_id",
    "market",
    "side",
    "type",
    "time_in_force",
    "post_only",
    "self_trade_prevention",
    "price_ticks",
    "amount_lots",
    "quote_budget",
    "filled_lots",
    "filled_quote_units",
    "remaining_lots",
    "fee_units",
    "status",
    "done_detail",
    "created_time_us",
    "updated_time_us",
    "expire_time_us",
    "maker_fee_ppm",
    "taker_fee_ppm",
    "finished_time_us",
    "sequence",
)
BALANCE_COLUMNS = (
    "user_id",
    "asset",
    "business",
    "business_id",
    "available_delta",
    "frozen_delta",
    "available",
    "frozen",
    "time_us",
    "source",
    "sequence",
)

Row = tuple[Any, ...]


def trade_row(e: ev.MatchingEvent, source: str) -> Row:
    t = e.trade_executed
    return (
        e.market,
        t.trade_id,
        e.time_us,
        t.price_ticks,
        t.amount_lots,
        t.quote_units,
        t.base_units,
        t.taker_side,
        t.taker_order_id,
        t.taker_user_id,
        t.maker_order_id,
        t.maker_user_id,
        t.taker_fee,
        t.maker_fee,
        source,
        e.sequence,
    )


def order_row(e: ev.AccountEvent) -> Row:
    s = e.order_updated
    status = s.status
    updated = s.updated_time_us or e.time_us
    return (
        s.order_id,
        e.user_id,
        s.client_order_id,
        s.market,
        s.side,
        s.type,
        s.time_in_force,
        s.post_only,
        s.self_trade_prevention,
        s.price_ticks,
        s.amount_lots,
        s.quote_budget,
        s.filled_lots,
        s.filled_quote_units,
        s.remaining_lots,
        s.fee_units,
        status,
        s.done_detail,
        s.created_time_us or e.time_us,
        updated,
        s.expire_time_us,
        s.maker_fee_ppm,
        s.taker_fee_ppm,
        updated if status in FINAL_STATUSES else None,
        e.sequence,
    )


def balance_row(e: ev.AccountEvent, source: str) -> Row:
    b = e.balance_changed
    return (
        e.user_id,
        b.asset,
        b.business,
        b.business_id,
        b.available_delta,
        b.frozen_delta,
        b.available,
        b.frozen,
        e.time_us,
        source,
        e.sequence,
    )


# --- the store -------------------------------------------------------------------------------------


class HistoryStore:
    """Writes (ingest_*) and checkpoint reads. Not thread-safe for writes: call from one thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.writer = bulk_writer(engine)
        self.checker = RowChecker()
        dbapi = engine.dialect.loaded_dbapi
        self._transient_driver_errors: tuple[type[BaseException], ...] = tuple(
            getattr(dbapi, name)
            for name in ("OperationalError", "InterfaceError", "InternalError")
            if isinstance(getattr(dbapi, name, None), type)
        )

    def is_transient(self, exc: BaseException) -> bool:
        """A database error that retrying can fix without anybody's help: the connection was lost or
        refused, a lock wait timed out, the pool was exhausted (DB-API OperationalError, InterfaceError,
        InternalError, as SQLAlchemy wraps them or as the bulk writers get them from the driver).
        Anything else an ingest raises (a value out of range, a broken constraint, a malformed event,
        IngestRefused) fails again on every retry."""
        if isinstance(exc, IngestRefused):
            return False
        if isinstance(exc, sa_exc.DBAPIError):
            return bool(exc.connection_invalidated) or isinstance(
                exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError)
            )
        if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError, ConnectionError, TimeoutError)):
            return True
        return isinstance(exc, self._transient_driver_errors)

    # checkpoints

    def checkpoint(self, source: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(checkpoints.c.sequence).where(checkpoints.c.source == source)
            ).scalar_one_or_none()
        return int(value or 0)

    def checkpoints(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(checkpoints.c.source, checkpoints.c.sequence)).all()
        return {str(s): int(q) for s, q in rows}

    # ingest

    def ingest_matching(self, source: str, events: Sequence[ev.MatchingEvent]) -> IngestResult:
        """Store a batch of one matching shard's events (trades; the rest only moves the checkpoint)."""
        return self._ingest(source, events, self._write_matching)

    def ingest_accounts(self, source: str, events: Sequence[ev.AccountEvent]) -> IngestResult:
        """Store a batch of the accounts events (balance changes; orders' latest states)."""
        return self._ingest(source, events, self._write_accounts)

    def _ingest(
        self,
        source: str,
        events: Sequence[E],
        write: Callable[[Connection, str, Sequence[E]], dict[str, int]],
    ) -> IngestResult:
        """One transaction: the events after the stored checkpoint, written by `write` (which returns
        the rows it wrote per table), and the new checkpoint."""
        t0 = time.perf_counter()
        with self.engine.begin() as conn:
            cp = self._locked_checkpoint(conn, source)
            new = _new_events(source, cp, events)
            if not new:
                return IngestResult(source, cp, 0, len(events))
            rows = write(conn, source, new)
            last = new[-1].sequence
            self._write_checkpoint(conn, source, cp, last)
        skipped = len(events) - len(new)
        self._observe(source, t0, last, len(new), skipped, rows)
        return IngestResult(
            source,
            last,
            len(new),
            skipped,
            trades=rows.get("trades", 0),
            orders=rows.get("orders", 0),
            balances=rows.get("balance_history", 0),
        )

    def _write_matching(
        self, conn: Connection, source: str, new: Sequence[ev.MatchingEvent]
    ) -> dict[str, int]:
        rows = [trade_row(e, source) for e in new if e.WhichOneof("event") == "trade_executed"]
        if rows:
            bad = self.checker.first_bad(trades, TRADE_COLUMNS, rows)
            if bad is not None:
                raise bad
            self.writer.insert(conn, trades, TRADE_COLUMNS, rows)
        return {"trades": len(rows)}

    def _write_accounts(
        self, conn: Connection, source: str, new: Sequence[ev.AccountEvent]
    ) -> dict[str, int]:
        balances: list[Row] = []
        add_balance = balances.append
        latest: dict[int, ev.AccountEvent] = {}  # order_id -> its last state in this batch
        for e in new:
            kind = e.WhichOneof("event")
            if kind == "balance_changed":
                add_balance(balance_row(e, source))
            elif kind == "order_updated":
                latest[e.order_updated.order_id] = e
        order_rows = [order_row(e) for e in latest.values()]
        bad = _lowest(
            self.checker.first_bad(balance_history, BALANCE_COLUMNS, balances),
            self.checker.first_bad(orders, ORDER_COLUMNS, order_rows),
        )
        if bad is not None:
            raise bad
        if balances:
            self.writer.insert(conn, balance_history, BALANCE_COLUMNS, balances)
        if order_rows:
            self.writer.upsert_orders(conn, order_rows)
        return {"balance_history": len(balances), "orders": len(latest)}

    # internals

    def _locked_checkpoint(self, conn: Connection, source: str) -> int:
        q = select(checkpoints.c.sequence).where(checkpoints.c.source == source)
        if self.dialect != "sqlite":  # SQLite has one writer anyway
            q = q.with_for_update()
        value = conn.execute(q).scalar_one_or_none()
        return -1 if value is None else int(value)

    def _write_checkpoint(self, conn: Connection, source: str, old: int, new: int) -> None:
        now = time.time_ns() // 1000
        if old < 0:
            conn.execute(checkpoints.insert(), [{"source": source, "sequence": new, "updated_time_us": now}])
            return
        res = conn.execute(
            update(checkpoints)
            .where(checkpoints.c.source == source, checkpoints.c.sequence == old)
            .values(sequence=new, updated_time_us=now)
        )
        if res.rowcount != 1:
            raise RuntimeError(f"checkpoint of {source} moved under us (another writer?)")

    def _observe(
        self, source: str, t0: float, last: int, stored: int, skipped: int, rows: Mapping[str, int]
    ) -> None:
        BATCH_SECONDS.labels(source).observe(time.perf_counter() - t0)
        BATCH_EVENTS.labels(source).observe(stored + skipped)
        EVENTS.labels(source).inc(stored)
        if skipped:
            SKIPPED.labels(source).inc(skipped)
        CHECKPOINT.labels(source).set(last)
        for table, n in rows.items():
            if n:
                ROWS.labels(table).inc(n)


def _lowest(*errors: UnstorableEvent | None) -> UnstorableEvent | None:
    found = [e for e in errors if e is not None]
    return min(found, key=lambda e: e.sequence) if found else None


def _new_events(source: str, checkpoint: int, events: Sequence[E]) -> Sequence[E]:
    """The events after `checkpoint` (-1 = none stored yet), checked to follow it without a gap and to
    come from `source`."""
    floor = max(checkpoint, 0)
    start = 0
    n = len(events)
    while start < n and events[start].sequence <= floor:
        start += 1
    new = events[start:] if start else events
    if not new:
        return new
    sequences = [e.sequence for e in new]
    if sequences != list(range(floor + 1, floor + 1 + len(new))):
        expected = floor + 1
        for q in sequences:
            if q != expected:
                break
            expected += 1
        raise GapError(f"{source}: expected event {expected}, got {q} (checkpoint {floor})", expected)
    if len(source) > SOURCE_CHARS or "\x00" in source:
        raise UnstorableEvent(
            f"the source name {quote(source)} is not a text of at most {SOURCE_CHARS} characters",
            new[0].sequence,
        )
    if new[-1].sequence > INT64[1]:
        first = next(e for e in new if e.sequence > INT64[1])
        raise UnstorableEvent(
            f"event {first.sequence}: the sequence is out of the checkpoint's range 0..{INT64[1]}",
            first.sequence,
        )
    sources = {e.source for e in new}
    sources.discard("")
    if sources - {source}:
        first = next(e for e in new if e.source not in ("", source))
        raise SourceMismatch(
            f"event {first.sequence} of the stream of {source!r} comes from {quote(first.source)}",
            first.sequence,
        )
    return new


# --- column checks ---------------------------------------------------------------------------------

SOURCE_CHARS = int(getattr(checkpoints.c.source.type, "length", 0) or 0)  # of every "source" column
INT16 = (-(1 << 15), (1 << 15) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True, slots=True)
class _Check:
    index: int  # in the row tuple
    column: str
    kind: str  # "int" or "str"
    low: int  # int: the range; str: 0..max length (0 = unbounded)
    high: int
    nullable: bool


def _checks(table: Table, columns: tuple[str, ...]) -> tuple[tuple[_Check, ...], int]:
    """What each column of `columns` can hold, and the index of the "sequence" column."""
    out: list[_Check] = []
    for i, name in enumerate(columns):
        col = table.c[name]
        t = col.type
        nullable = bool(col.nullable)
        if isinstance(t, Boolean):
            continue
        if isinstance(t, SmallInteger):
            out.append(_Check(i, name, "int", *INT16, nullable))
        elif isinstance(t, BigInteger):  # also the Id variant (SQLite INTEGER is 64-bit too)
            out.append(_Check(i, name, "int", *INT64, nullable))
        elif isinstance(t, Integer):
            out.append(_Check(i, name, "int", *INT32, nullable))
        elif isinstance(t, String):
            out.append(_Check(i, name, "str", 0, t.length or 0, nullable))
        else:  # pragma: no cover - a column type this module does not know
            raise NotImplementedError(f"no range check for {table.name}.{name} ({t})")
    return tuple(out), columns.index("sequence")


# The columns whose values can be out of their column's range: ids and sequences come from uint64
# fields (up to 2**64-1; the columns are signed 64-bit), enums from int32 fields (SMALLINT columns), text
# from strings of any length. Every other integer column comes from an int64 field, which fits BIGINT
# by construction, so it is not checked again (tests/history/test_store.py checks this list against the
# protobuf descriptors). The "source" columns hold the stream's name and "sequence" the event's,
# both checked once per batch (_new_events: one source, sequences following the checkpoint up to
# INT64_MAX).
CHECKED_COLUMNS: dict[str, frozenset[str]] = {
    "trades": frozenset(
        (
            "market",
            "trade_id",
            "taker_side",
            "taker_order_id",
            "taker_user_id",
            "maker_order_id",
            "maker_user_id",
        )
    ),
    "orders": frozenset(
        (
            "order_id",
            "user_id",
            "client_order_id",
            "market",
            "side",
            "type",
            "time_in_force",
            "self_trade_prevention",
            "status",
            "done_detail",
        )
    ),
    "balance_history": frozenset(("user_id", "asset", "business", "business_id")),
}


class RowChecker:
    """Checks rows against their table's columns before they are written (the CHECKED_COLUMNS of the
    table), a column at a time over the whole batch (min/max/len, in C); only a batch with a bad value
    is searched row by row for the event holding it."""

    def __init__(self) -> None:
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[tuple[_Check, ...], int]] = {}

    def first_bad(
        self, table: Table, columns: tuple[str, ...], rows: Sequence[Row]
    ) -> UnstorableEvent | None:
        """The bad value of the lowest event sequence in `rows` (None when every value fits)."""
        if not rows:
            return None
        key = (table.name, columns)
        plan = self._plans.get(key)
        if plan is None:
            checks, seq_index = _checks(table, columns)
            wanted = CHECKED_COLUMNS[table.name]
            plan = self._plans[key] = (tuple(c for c in checks if c.column in wanted), seq_index)
        checks, seq_index = plan
        worst: UnstorableEvent | None = None
        for c in checks:
            values: list[Any] = list(map(itemgetter(c.index), rows))
            if c.nullable:
                values = [v for v in values if v is not None]
                if not values:
                    continue
            try:
                if c.kind == "int":
                    if min(values) >= c.low and max(values) <= c.high:
                        continue
                elif (not c.high or max(map(len, values)) <= c.high) and "\x00" not in "".join(values):
                    continue
            except TypeError:  # not all of one type: looked at row by row
                pass
            found = _find_bad(table, c, rows, seq_index)
            if found is not None and (worst is None or found.sequence < worst.sequence):
                worst = found
        return worst


def _find_bad(table: Table, c: _Check, rows: Sequence[Row], seq_index: int) -> UnstorableEvent | None:
    bad: tuple[int, str] | None = None
    for r in rows:
        v = r[c.index]
        if v is None:
            continue
        if c.kind == "int":
            if type(v) is int and c.low <= v <= c.high:
                continue
            shown = v if type(v) is int else quote(v)
            why = f"{table.name}.{c.column} = {shown} is out of the column's range {c.low}..{c.high}"
        elif c.high and len(v) > c.high:
            why = f"{table.name}.{c.column} is {len(v)} characters long, more than its {c.high}: {quote(v)}"
        elif "\x00" in v:
            why = f"{table.name}.{c.column} holds a NUL character: {quote(v)}"
        else:
            continue
        seq = int(r[seq_index])
        if bad is None or seq < bad[0]:
            bad = (seq, why)
    return None if bad is None else UnstorableEvent(f"event {bad[0]}: {bad[1]}", bad[0])


# --- bulk writes per dialect ---------------------------------------------------------------------


class BulkWriter:
    """Bulk inserts and the orders upsert: one executemany per table and batch, through the
    SQLAlchemy connection (so inside its transaction). The statements are compiled once by SQLAlchemy
    for the engine's dialect and handed to the driver with the row tuples as they are."""

    name = "executemany"

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect
        self._sql: dict[str, tuple[str, tuple[str, ...]]] = {}
        _orders_upsert(self.dialect.name)  # fails early for an unsupported database

    def _compile(self, stmt: Any, columns: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        compiled = stmt.compile(dialect=self.dialect, column_keys=list(columns))
        keys = tuple(compiled.positiontup or ()) if self.dialect.positional else ()
        if keys and keys != columns:
            raise RuntimeError(f"unexpected parameter order {keys} for {columns}")
        return str(compiled.string), keys

    def _params(self, keys: tuple[str, ...], columns: tuple[str, ...], rows: list[Row]) -> Any:
        if keys:
            return rows
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def insert(self, conn: Connection, table: Table, columns: tuple[str, ...], rows: list[Row]) -> None:
        entry = self._sql.get(table.name)
        if entry is None:
            entry = self._sql[table.name] = self._compile(table.insert(), columns)
        sql, keys = entry
        conn.exec_driver_sql(sql, self._params(keys, columns, rows))

    def upsert_orders(self, conn: Connection, rows: list[Row]) -> None:
        """Insert or replace by order_id (each order_id at most once in `rows`)."""
        # Compiled on first use, once connected: MySQL and MariaDB differ in ON DUPLICATE KEY syntax.
        entry = self._sql.get("orders upsert")
        if entry is None:
            entry = self._sql["orders upsert"] = self._compile(
                _orders_upsert(self.dialect.name), ORDER_COLUMNS
            )
        sql, keys = entry
        conn.exec_driver_sql(sql, self._params(keys, ORDER_COLUMNS, rows))


class PostgresCopyWriter(BulkWriter):
    """PostgreSQL: binary COPY (psycopg 3) for the append-only tables, and COPY into a temporary table
    followed by one INSERT ... SELECT ... ON CONFLICT for orders. Per-row pipelined executemany costs
    several times more client CPU."""

    name = "copy"

    _TYPES = {BigInteger: "int8", SmallInteger: "int2", String: "text", Boolean: "bool"}

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._types = {t.name: self._column_types(t) for t in (trades, orders, balance_history)}
        self._orders_types = [self._types["orders"][c] for c in ORDER_COLUMNS]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS if c != "order_id")
        cols = ", ".join(ORDER_COLUMNS)
        self._orders_merge = (
            f"INSERT INTO orders ({cols}) SELECT {cols} FROM orders_incoming "
            f"ON CONFLICT (order_id) DO UPDATE SET {updates}"
        )

    def _column_types(self, table: Table) -> dict[str, str]:
        out = {}
        for c in table.columns:
            for py, pg in self._TYPES.items():
                if isinstance(c.type, py):
                    out[c.name] = pg
                    break
        return out

    @staticmethod
    def _copy(cursor: Any, table: str, columns: tuple[str, ...], types: list[str], rows: list[Row]) -> None:
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            write = copy.write_row
            for r in rows:
                write(r)

    def insert(self, conn: Connection, table: Table, columns: tuple[str, ...], rows: list[Row]) -> None:
        types = [self._types[table.name][c] for c in columns]
        with _driver(conn).cursor() as cur:
            self._copy(cur, table.name, columns, types, rows)

    def upsert_orders(self, conn: Connection, rows: list[Row]) -> None:
        with _driver(conn).cursor() as cur:
            cur.execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS orders_incoming "
                "(LIKE orders INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._copy(cur, "orders_incoming", ORDER_COLUMNS, self._orders_types, rows)
            cur.execute(self._orders_merge)


class MySQLValuesWriter(BulkWriter):
    """MariaDB/MySQL through PyMySQL: the multi-row INSERT text is built here, a column at a time by
    its type (integers as digits, strings escaped by the connection, NULL), and sent in statements of
    about 1 MB. PyMySQL's executemany escapes every value through several Python calls and costs about
    five times more client CPU."""

    name = "values"
    STATEMENT_BYTES = 1 << 20

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._templates: dict[str, tuple[str, str, list[int], list[int]]] = {}

    def _template(
        self, key: str, stmt: Any, table: Table, columns: tuple[str, ...]
    ) -> tuple[str, str, list[int], list[int]]:
        """The statement's text before and after its VALUES row, and which columns hold text and
        booleans (the rest are integers)."""
        entry = self._templates.get(key)
        if entry is None:
            sql, _ = self._compile(stmt, columns)
            row = "(" + ", ".join(f"%({c})s" for c in columns) + ")"
            head, found, tail = sql.partition(row)
            if not found:
                raise RuntimeError(f"unexpected statement text for {key}: {sql}")
            text_cols = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, String)]
            bool_cols = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, Boolean)]
            entry = self._templates[key] = (head, tail, text_cols, bool_cols)
        return entry

    def _write(
        self, conn: Connection, table: Table, columns: tuple[str, ...], rows: list[Row], key: str, stmt: Any
    ) -> None:
        head, tail, text_cols, bool_cols = self._template(key, stmt, table, columns)
        raw = _driver(conn)
        quote = _mysql_quote(raw)
        with raw.cursor() as cur:
            parts: list[str] = []
            size = 0
            for r in rows:
                vals: list[Any] = list(r)
                for i in text_cols:
                    v = vals[i]
                    if v is not None:
                        vals[i] = quote(v)
                for i in bool_cols:
                    v = vals[i]
                    if v is not None:
                        vals[i] = 1 if v else 0
                if None in vals:
                    vals = ["NULL" if v is None else v for v in vals]
                part = "(" + ",".join(map(str, vals)) + ")"
                parts.append(part)
                size += len(part) + 1
                if size >= self.STATEMENT_BYTES:
                    cur.execute(head + ",".join(parts) + tail)
                    parts.clear()
                    size = 0
            if parts:
                cur.execute(head + ",".join(parts) + tail)

    def insert(self, conn: Connection, table: Table, columns: tuple[str, ...], rows: list[Row]) -> None:
        self._write(conn, table, columns, rows, table.name, table.insert())

    def upsert_orders(self, conn: Connection, rows: list[Row]) -> None:
        self._write(conn, orders, ORDER_COLUMNS, rows, "orders upsert", _orders_upsert(self.dialect.name))


def _mysql_quote(raw: Any) -> Callable[[str], str]:
    """A string literal for this PyMySQL connection (as PyMySQL escapes it: backslash escapes unless
    the server runs with NO_BACKSLASH_ESCAPES)."""
    from pymysql.constants import SERVER_STATUS
    from pymysql.converters import escape_string

    if raw.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        return lambda v: "'" + v.replace("'", "''") + "'"
    return lambda v: "'" + escape_string(v) + "'"


def _driver(conn: Connection) -> Any:
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


def bulk_writer(engine: Engine) -> BulkWriter:
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresCopyWriter(engine)
    if engine.dialect.name in ("mysql", "mariadb") and engine.dialect.driver == "pymysql":
        return MySQLValuesWriter(engine)
    return BulkWriter(engine)


def _orders_upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT/DUPLICATE KEY UPDATE of every column but order_id."""
    if dialect in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        ins: Any = sqlite.insert(orders) if dialect == "sqlite" else postgresql.insert(orders)
        return ins.on_conflict_do_update(
            index_elements=[orders.c.order_id],
            set_={name: ins.excluded[name] for name in ORDER_COLUMNS if name != "order_id"},
        )
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        mins = mysql_insert(orders)
        return mins.on_duplicate_key_update(
            {name: mins.inserted[name] for name in ORDER_COLUMNS if name != "order_id"}
        )
    raise NotImplementedError(f"history does not support {dialect} (SQLite, PostgreSQL, MariaDB/MySQL)")
