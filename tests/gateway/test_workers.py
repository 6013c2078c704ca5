"""`[gateway] workers = 2`: two processes serve one HTTP port (SO_REUSEPORT), and what must hold across
them does: a key created or revoked through the admin service, the per-key request weight, the replay
guard, listen keys (created through one worker, streamed and deleted through others). Real processes;
every request below opens a connection of its own, which the kernel gives to either worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from exchange.v1 import gateway_service_pb2 as gpb

from services.gateway.signing import sign
from testkit.cluster import Cluster
from tests.gateway.conftest import Env, new_user, wait_for

pytestmark = pytest.mark.slow

TRIES = 24  # fresh connections: all on one worker by chance with probability 2^-23


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    c = Cluster(
        Path(tmp_path_factory.mktemp("workers")),
        with_gateway=True,
        gateway_options={"workers": 2, "weight_per_minute_key": 30, "weight_per_minute_ip": 100_000},
    )
    c.start()
    try:
        yield Env(c)
    finally:
        c.stop()


def _children(pid: int) -> list[int]:
    """The worker processes the gateway started (multiprocessing's, not its resource tracker)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(int(child))
    return out


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie waiting to be reaped has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _sockets(port: int, state: str) -> set[int]:
    """Inodes of the IPv4 TCP sockets on local `port` in `state` ("0A" listening, "01" established)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state:
            out.add(int(f[9]))
    return out


def _owners(pids: list[int], inodes: set[int]) -> dict[int, int]:
    """How many of `inodes` each pid holds."""
    held = {}
    for pid in pids:
        n = 0
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # gone meanwhile
            fds = []
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                n += 1
        held[pid] = n
    return held


def _port(env: Env) -> int:
    return int(env.cluster.gateway_http.rsplit(":", 1)[1])


def test_two_workers_listen_on_the_port_and_both_serve(two: Env) -> None:
    primary = two.cluster.procs["gateway"].pid
    workers = [primary, *_children(primary)]
    port = _port(two)
    listening = _owners(workers, _sockets(port, "0A"))
    assert sorted(listening.values())[-2:] == [1, 1], listening  # two processes, one socket each

    async def run() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            socks = [await s.ws_connect(f"{two.base.replace('http', 'ws')}/ws") for _ in range(TRIES)]
            held = _owners(workers, _sockets(port, "01"))
            assert sum(1 for n in held.values() if n) == 2, held  # the connections are on both
            assert sum(held.values()) == TRIES
            for ws in socks:  # and both answer
                await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 7})
                assert (await ws.receive_json(timeout=5)) == {"result": [], "id": 7}
                await ws.close()

    asyncio.run(run())


def test_a_created_then_revoked_key_holds_on_every_worker_at_once(two: Env) -> None:
    user = new_user()
    r = two.rest(*two.key(user))
    answers = [r.signed("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}).status for _ in range(4)]
    assert answers == [200] * 4  # no wait for the other worker's periodic re-read
    two.admin().RevokeApiKey(gpb.RevokeApiKeyRequest(api_key=r.key))
    refused = [r.signed("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}) for _ in range(TRIES)]
    assert {(a.status, a.body["code"]) for a in refused} == {(401, -2015)}


def test_the_key_weight_limit_is_one_limit_across_workers(two: Env) -> None:
    """30 per minute per key (a limit of 30 / 2 per worker would refuse at 16, two limits of 30 at 61)."""
    r = two.rest(*two.key(new_user()))
    second = time.time() % 60
    if second > 45:  # not across two windows
        time.sleep(61 - second)
    weights = 0
    statuses = []
    while weights < 30:  # DELETE order weighs 1: an unknown order is refused, but counted
        statuses.append(r.signed("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1}).status)
        weights += 1
    assert 429 not in statuses
    over = r.signed("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1})
    assert (over.status, over.body["code"]) == (429, -1003) and "API key" in over.body["msg"]


def test_a_replay_is_refused_by_every_worker(two: Env) -> None:
    r = two.rest(*two.key(new_user()))
    params = {"symbol": "BTCUSDT", "timestamp": int(time.time() * 1000), "recvWindow": 60_000}
    query = urlencode(params)
    signed = {**params, "signature": sign(r.secret, query)}
    answers = [
        r.call("GET", "/api/v3/openOrders", signed, headers={"X-MBX-APIKEY": r.key}) for _ in range(TRIES)
    ]
    assert [a.status for a in answers].count(200) == 1, [a.body for a in answers]
    assert all("replay" in a.body["msg"] for a in answers if a.status != 200)


def test_a_listen_key_works_and_dies_on_every_worker(two: Env) -> None:
    r = two.rest(*two.key(new_user()))
    path = "/api/v3/userDataStream"
    listen_key = r.call("POST", path, headers={"X-MBX-APIKEY": r.key}).body["listenKey"]
    base = two.base.replace("http", "ws")
    port = _port(two)
    primary = two.cluster.procs["gateway"].pid

    async def run() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            streams = [await s.ws_connect(f"{base}/ws/{listen_key}") for _ in range(12)]
            held = _owners([primary, *_children(primary)], _sockets(port, "01"))
            assert sum(1 for n in held.values() if n) == 2, held  # streams on both workers
            for _ in range(4):  # keepalive through either worker
                ok = await asyncio.to_thread(
                    r.call, "PUT", path, {"listenKey": listen_key}, headers={"X-MBX-APIKEY": r.key}
                )
                assert ok.status == 200, ok.body
            gone = await asyncio.to_thread(
                r.call, "DELETE", path, {"listenKey": listen_key}, headers={"X-MBX-APIKEY": r.key}
            )
            assert gone.status == 200
            t0 = time.monotonic()
            for ws in streams:
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE and str(msg.extra) == "listen key deleted"
            assert time.monotonic() - t0 < 1.0  # at once, not at the next periodic sweep

    asyncio.run(run())


def test_a_killed_worker_is_restarted(two: Env) -> None:
    primary = two.cluster.procs["gateway"].pid
    (worker,) = _children(primary)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: [w for w in _children(primary) if w != worker and _running(w)], timeout=30)
    port = _port(two)
    wait_for(lambda: sum(_owners([primary, *_children(primary)], _sockets(port, "0A")).values()) == 2, 30)
    assert all(two.rest().get("/api/v3/ping").status == 200 for _ in range(TRIES))


def test_the_workers_stop_with_a_killed_first_worker_and_come_back_with_it(two: Env) -> None:
    primary = two.cluster.procs["gateway"].pid
    workers = _children(primary)
    assert len(workers) == 1
    two.cluster.kill("gateway", signal.SIGKILL)  # no chance to stop them: they watch their parent
    wait_for(lambda: not any(_running(w) for w in workers), timeout=10)
    two.cluster.start(["gateway"])  # the same port again, both workers
    port = _port(two)
    primary = two.cluster.procs["gateway"].pid
    assert sum(_owners([primary, *_children(primary)], _sockets(port, "0A")).values()) == 2
    assert two.rest().get("/api/v3/ping").status == 200
