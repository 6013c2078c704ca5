"""Real NATS and ZooKeeper for tests (session-scoped): the local NATS node (127.0.0.1:4222), a 3-node
JetStream cluster (R3) and a ZooKeeper server started by services.cluster.servers (the code behind
scripts/nats-cluster and scripts/zookeeper). With CI=true a server that is missing or does not come
up is a failure, not a skip.

Import the fixtures into a test module: `from tests.cluster_fixtures import nats_local, nats_r3, zookeeper`.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cluster.servers import NatsCluster, ServerMissing, ZooKeeper, port_open

LOCAL_NATS = "nats://127.0.0.1:4222"
R3_PORT = 14301  # client ports 14301-14303, routes 16301-16303


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(why: str) -> None:
    """Skip, except in CI, where a missing server fails the test."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required server unavailable in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def nats_local() -> Iterator[list[str]]:
    """The machine's NATS (single node, JetStream), started by our script on 4222 when not running
    (and stopped after the session)."""
    if port_open(4222):
        yield [LOCAL_NATS]
        return
    try:
        started = NatsCluster(Path(tempfile.mkdtemp(prefix="nats-local-")), nodes=1, port=4222)
        started.start()
    except (ServerMissing, TimeoutError, OSError) as exc:
        unavailable(f"no NATS on 127.0.0.1:4222 and none could be started: {exc}")
    try:
        yield [LOCAL_NATS]
    finally:
        started.stop()


@pytest.fixture(scope="session")
def nats_r3() -> Iterator[NatsCluster]:
    """Three nats-server processes forming a JetStream cluster (R3 streams)."""
    base = Path(tempfile.mkdtemp(prefix="nats-r3-"))
    try:
        cluster = NatsCluster(base, nodes=3, port=R3_PORT, cluster_port=16301)
        cluster.start()
    except (ServerMissing, TimeoutError, OSError) as exc:
        unavailable(f"the NATS R3 cluster could not be started: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ZooKeeper]:
    base = Path(tempfile.mkdtemp(prefix="zk-"))
    # Always free ports: a fixed one that looked free could be taken by another test session's
    # server between the check and the start (our server then fails to bind, start() sees the other
    # one serve, and it stops under us when that session ends: seen as every ZooKeeper session of a
    # failover test lost at once).
    try:
        zk = ZooKeeper(base, nodes=1, port=free_port(), peer_port=free_port(), election_port=free_port())
        zk.start()
    except (ServerMissing, TimeoutError, OSError) as exc:
        unavailable(f"ZooKeeper could not be started: {exc}")
    try:
        yield zk
    finally:
        zk.stop()


@pytest.fixture(scope="session")
def zookeeper_ensemble() -> Iterator[ZooKeeper]:
    """A 3-node ZooKeeper ensemble (client ports 22281-22283)."""
    base = Path(tempfile.mkdtemp(prefix="zk3-"))
    try:
        zk = ZooKeeper(base, nodes=3, port=22281, peer_port=22981, election_port=23981)
        zk.start()
    except (ServerMissing, TimeoutError, OSError) as exc:
        unavailable(f"the ZooKeeper ensemble could not be started: {exc}")
    try:
        yield zk
    finally:
        zk.stop()
