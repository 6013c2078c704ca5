"""History test fixtures: the backends (SQLite file, PostgreSQL, MariaDB) and realistic event flows.

`db_url` is parametrized over the three backends. PostgreSQL (postgresql+psycopg://postgres@127.0.0.1:5432/
test) and MariaDB (mysql+pymysql://root@127.0.0.1:3306/test) get one freshly created, uniquely named
database per test session (dropped at the end); each test starts from an empty one (every table dropped).
A server that cannot be reached skips its tests locally and fails them when CI=true.
Override the server URLs with HISTORY_TEST_POSTGRES_URL / HISTORY_TEST_MARIADB_URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url

from services.history.store import HistoryStore, create_history_engine, migrate
from testkit.history_sim import Flow, generate

BACKENDS = ["sqlite", "postgresql", "mariadb"]
SERVER_URLS = {
    "postgresql": os.environ.get(
        "HISTORY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("HISTORY_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
IN_CI = os.environ.get("CI") == "true"


def unavailable(backend: str, reason: str) -> None:
    message = f"{backend} not reachable at {SERVER_URLS.get(backend, '')}: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing database server is a failure)")
    pytest.skip(message)


class ServerDatabases:
    """One fresh database per server backend for the session, created on first use."""

    def __init__(self) -> None:
        self.tag = f"history_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.urls: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def url(self, backend: str) -> str:
        if backend in self.errors:
            unavailable(backend, self.errors[backend])
        if backend not in self.urls:
            try:
                self.urls[backend] = self._create(backend)
            except Exception as exc:
                self.errors[backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                unavailable(backend, self.errors[backend])
        return self.urls[backend]

    def _admin(self, backend: str) -> Engine:
        args = {"connect_timeout": 3}
        return create_engine(SERVER_URLS[backend], isolation_level="AUTOCOMMIT", connect_args=args)

    def _create(self, backend: str) -> str:
        admin = self._admin(backend)
        try:
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {self.tag}"))
        finally:
            admin.dispose()
        return make_url(SERVER_URLS[backend]).set(database=self.tag).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for backend in self.urls:
            admin = self._admin(backend)
            try:
                with admin.connect() as conn:
                    force = " WITH (FORCE)" if backend == "postgresql" else ""
                    conn.execute(text(f"DROP DATABASE IF EXISTS {self.tag}{force}"))
            except Exception as exc:  # pragma: no cover - best effort
                print(f"could not drop {backend} database {self.tag}: {exc}")
            finally:
                admin.dispose()


@pytest.fixture(scope="session")
def server_databases() -> Iterator[ServerDatabases]:
    dbs = ServerDatabases()
    yield dbs
    dbs.drop_all()


def empty_database(url: str) -> None:
    engine = create_engine(url)
    try:
        md = MetaData()
        md.reflect(engine)
        md.drop_all(engine)
    finally:
        engine.dispose()


def backend_url(backend: str, tmp_path: Path, server_databases: ServerDatabases) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    url = server_databases.url(backend)
    empty_database(url)
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, server_databases: ServerDatabases) -> str:
    """An empty database of the parametrized backend."""
    return backend_url(backend, tmp_path, server_databases)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = create_history_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def store(engine: Engine) -> HistoryStore:
    migrate(engine)
    return HistoryStore(engine)


@pytest.fixture(scope="session")
def small_flow() -> Flow:
    """~600 orders: a few thousand events of three sources."""
    return generate(600, seed=11, users=12)
