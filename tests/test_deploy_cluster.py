"""`deploy/cluster start|status|stop` for real (services.cluster.deploy): a small description on free
ports (a 3-node ZooKeeper ensemble and a 3-node NATS JetStream cluster started by the command, one
matching shard x 2 replicas, accounts sharded by user: 2 accounts shards x 2 replicas, PostgreSQL
history, market, quantizer, gateway).

It waits for "cluster ready", reads `status --json` (leaders, followers, zero lag, the pair map, the
servers' members, every accounts shard's leader and follower), trades through the client library as
the generated config's clients do (their leaders from ZooKeeper): a maker of accounts-0 (user 2) and
a taker of accounts-1 (user 1), the fill settled on both shards and in the PostgreSQL history.
It SIGKILLs the matching leader and sees status name the other replica as leader (and the killed one
back as a follower, caught up), trades again through the new leader, then `stop`s it and checks that
no process of it is left. With CI=true a missing server is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import types_pb2

from services.clients import AccountsClient, HistoryClient
from services.clients.discovery import resolver_for
from services.clients.zk_resolver import ZooKeeperResolver
from services.cluster.servers import ServerMissing, nats_server_binary, zookeeper_classpath
from services.common.config import load_config
from services.common.security import process_security
from tests.cluster_fixtures import unavailable
from tests.test_deploy import (
    MARKETS,
    POSTGRES,
    drop_database,
    local_description,
    postgres_or_skip,
    write_description,
)

ROOT = Path(__file__).resolve().parents[1]


def deploy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cluster.deploy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(path: Path) -> dict[str, Any]:
    done = deploy("status", str(path), "--json", "--timeout", "2")
    assert done.returncode in (0, 1), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    result["exit"] = done.returncode
    return result


def wait_for(what: str, cond: Callable[[], Any], timeout: float, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def processes_under(directory: Path) -> list[int]:
    """Pids of processes whose command line names `directory` (what the cluster started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if str(directory) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"
                ):
                    pids.append(int(entry.name))
    return pids


@contextlib.asynccontextmanager
async def clients(config_path: Path) -> Any:
    """An accounts and a history client as the config's clients are: the leaders from ZooKeeper."""
    config = load_config(config_path)
    security = process_security(config, "admin", create=False)
    resolver = await asyncio.to_thread(resolver_for, config)
    assert isinstance(resolver, ZooKeeperResolver)  # [cluster] zookeeper in the generated config
    try:
        async with (
            AccountsClient.resolve(resolver, security=security) as accounts,
            HistoryClient.resolve(resolver, security=security) as history,
        ):
            assert accounts.shard_count == 2
            yield accounts, history
    finally:
        await asyncio.to_thread(resolver.close)


def resolved(config_path: Path, *names: str) -> dict[str, str]:
    """Where the generated config's clients dial `names` (the resolver for it: ZooKeeper's leaders)."""
    resolver = resolver_for(load_config(config_path))
    try:
        return {name: resolver.address(name) for name in names}
    finally:
        if isinstance(resolver, ZooKeeperResolver):
            resolver.close()


async def buy(config_path: Path, *, first: bool) -> tuple[int, int]:
    """A crossing buy of 0.25 BTC by user 1 (accounts-1) against user 2's (accounts-0) resting sell of
    1 BTC at 30000 (placed, with both deposits, the first time); the buy's and the sell's order ids
    (0 for the sell when not first)."""
    limit = types_pb2.ORDER_TYPE_LIMIT
    sell_id = 0
    async with clients(config_path) as (accounts, _):
        if first:
            for user, asset, amount in ((1, "USDT", "100000"), (2, "BTC", "2")):
                await accounts.deposit(
                    apb.DepositRequest(
                        user_id=user, asset=asset, amount=amount, business="t", business_id=asset
                    )
                )
            sell = await accounts.place_order(
                apb.PlaceOrderRequest(
                    user_id=2,
                    market="BTC_USDT",
                    side=types_pb2.SIDE_SELL,
                    type=limit,
                    price="30000",
                    amount="1",
                )
            )
            sell_id = sell.order.order_id
        placed = await accounts.place_order(
            apb.PlaceOrderRequest(
                user_id=1,
                market="BTC_USDT",
                side=types_pb2.SIDE_BUY,
                type=limit,
                price="30010",
                amount="0.25",
            )
        )
        return placed.order.order_id, sell_id


async def settled(config_path: Path, buy_id: int, sell_id: int, trades: int) -> bool:
    """The buy filled (accounts-1 settled matching's trade), the sell filled by 0.25 per trade
    (accounts-0 settled it), and user 1 has `trades` trades in the PostgreSQL history."""
    async with clients(config_path) as (accounts, history):
        order = (await accounts.get_order(apb.GetOrderRequest(user_id=1, order_id=buy_id))).order
        sell = (await accounts.get_order(apb.GetOrderRequest(user_id=2, order_id=sell_id))).order
        if order.status != types_pb2.ORDER_STATUS_FILLED or order.filled_quote != "7500":
            return False
        if sell.status != types_pb2.ORDER_STATUS_PARTIALLY_FILLED or sell.filled_quote != str(7500 * trades):
            return False
        found = await history.list_user_trades(hpb.ListUserTradesRequest(user_id=1))
        return len(found.trades) == trades


def replicas_of(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["member"]: r for r in group["replicas"]}


@pytest.mark.slow
def test_start_status_failover_stop(tmp_path: Path) -> None:
    try:
        nats_server_binary()
        zookeeper_classpath()
    except ServerMissing as exc:
        unavailable(str(exc))
    postgres_or_skip()
    from sqlalchemy.engine import make_url

    database = f"deploy_e2e_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = make_url(POSTGRES).set(database=database).render_as_string(hide_password=False)
    data = local_description(
        {"matching-0": (MARKETS, ["a", "b"])}, accounts=("a", "b"), accounts_shards=2, database_url=url
    )
    path = write_description(tmp_path, data)
    config_path = tmp_path / "data" / "exchange.toml"
    out = tmp_path / "start.out"
    t0 = time.monotonic()
    with open(out, "w") as log:
        start = subprocess.Popen(
            [sys.executable, "-m", "services.cluster.deploy", "start", str(path)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            "cluster ready",
            lambda: "cluster ready" in out.read_text() or start.poll() is not None,
            timeout=90,
            interval=0.5,
        )
        assert start.poll() is None, out.read_text()
        ready_s = time.monotonic() - t0
        assert f"created the history database of {url}" in out.read_text()

        st = status(path)
        assert st["exit"] == 0 and st["healthy"], json.dumps(st, indent=1)
        assert st["running"] == start.pid
        assert sorted(m["mode"] for m in st["zookeeper"]["members"]) == ["follower", "follower", "leader"]
        assert [m["up"] for m in st["nats"]["members"]] == [True, True, True]
        assert st["pair_map"] == {m: "matching-0" for m in MARKETS}
        (shard,) = st["shards"]
        assert shard["pairs"] == sorted(MARKETS) and shard["served_pairs"] == sorted(MARKETS)
        leader = shard["leader"]["member"]
        other = "b" if leader == "a" else "a"
        assert shard["followers"] == [other]
        assert shard["stream"]["replicas"] == 3 and len(shard["stream"]["peers"]) == 2
        assert {m: r["role"] for m, r in replicas_of(shard).items()} == {leader: "leader", other: "follower"}
        # (what each process reports of itself agrees with the election)
        assert {m: r["reported_role"] for m, r in replicas_of(shard).items()} == {
            leader: "leader",
            other: "follower",
        }
        # Each accounts shard: its own election (leader + follower) and its own command stream.
        assert [g["name"] for g in st["accounts"]] == ["accounts-0", "accounts-1"]
        for g in st["accounts"]:
            assert g["leader"] is not None and len(g["followers"]) == 1, g
            assert {r["member"] for r in g["replicas"]} == {"a", "b"}
            assert sorted(r["reported_role"] for r in g["replicas"]) == ["follower", "leader"], g
            assert g["stream"]["stream"] == f"OSTRAKON_{g['name']}_commands" and g["stream"]["replicas"] == 3
        p0 = int(data["accounts"]["replicas"][0]["listen"].rpartition(":")[2])  # accounts-1: p0 + 2, + 3
        at = {"accounts-0": (p0, p0 + 1), "accounts-1": (p0 + 2, p0 + 3)}
        for g in st["accounts"]:
            assert g["leader"]["address"] in [f"127.0.0.1:{p}" for p in at[g["name"]]]
        # the clients of the generated config dial each accounts shard's leader (ZooKeeper)
        assert resolved(config_path, "accounts", "accounts-1") == {
            "accounts": st["accounts"][0]["leader"]["address"],
            "accounts-1": st["accounts"][1]["leader"]["address"],
        }
        assert {s["name"] for s in st["services"]} == {"history", "market", "quantizer-0", "gateway"}
        text = deploy("status", str(path)).stdout
        for g in st["accounts"]:
            member = g["leader"]["member"]
            assert f"accounts {g['name']}  leader {member} at {g['leader']['address']}  followers " in text

        buy_id, sell_id = asyncio.run(buy(config_path, first=True))
        wait_for(
            "the buy filled, in history",
            lambda: asyncio.run(settled(config_path, buy_id, sell_id, 1)),
            timeout=20,
        )

        def caught_up(st: dict[str, Any], group: str = "shard") -> bool:
            gs = [st["shards"][0]] if group == "shard" else st["accounts"]
            lasts = [g["stream"].get("last_sequence", 0) for g in gs]
            return all(
                last > 0 and all(r.get("applied_sequence") == last and r["lag"] == 0 for r in g["replicas"])
                for g, last in zip(gs, lasts, strict=True)
            )

        st = wait_for(
            "both matching replicas applied the stream",
            lambda: (s := status(path)) and caught_up(s) and s,
            15,
        )
        assert caught_up(st, "accounts")
        before = st["shards"][0]["stream"]["last_sequence"]
        assert before >= 2  # the two orders

        # SIGKILL the matching leader: the follower leads; the supervisor restarts the killed one, a follower.
        children = json.loads((tmp_path / "data" / "deploy.json").read_text())["children"]
        os.kill(children[f"matching-0/{leader}"], signal.SIGKILL)
        killed_at = time.monotonic()

        def failed_over() -> dict[str, Any] | None:
            s = status(path)
            sh = s["shards"][0]
            roles = {m: (r["role"], r["health"]) for m, r in replicas_of(sh).items()}
            done = roles == {other: ("leader", "SERVING"), leader: ("follower", "SERVING")} and caught_up(s)
            return s if done else None

        st = wait_for("status names the new matching leader", failed_over, timeout=25)
        failover_s = time.monotonic() - killed_at
        shard = st["shards"][0]
        assert shard["leader"]["member"] == other and shard["followers"] == [leader]
        assert (
            shard["leader"]["address"]
            == data["shards"]["matching-0"]["replicas"]["ab".index(other)]["listen"]
        )
        assert shard["stream"]["last_sequence"] == before  # nothing lost, nothing added
        assert shard["served_pairs"] == sorted(MARKETS) and st["healthy"] and st["exit"] == 0
        assert f"matching-0/{leader} exited with -9 (SIGKILL)" in out.read_text()

        # Orders flow on to the new leader: accounts' links follow it.
        buy_id, _ = asyncio.run(buy(config_path, first=False))
        wait_for(
            "a buy after the failover filled",
            lambda: asyncio.run(settled(config_path, buy_id, sell_id, 2)),
            20,
        )
        st = wait_for("both replicas applied it", lambda: (s := status(path)) and caught_up(s) and s, 15)
        assert st["shards"][0]["stream"]["last_sequence"] == before + 1

        stopping = time.monotonic()
        stop = deploy("stop", str(path), timeout=120)
        stop_s = time.monotonic() - stopping
        assert stop.returncode == 0 and f"stopped pid {start.pid}" in stop.stdout, stop.stdout + stop.stderr
        assert start.wait(30) == 0
        text = out.read_text()
        assert "keeps crashing" not in text and text.rstrip().endswith("stopped")
        assert processes_under(tmp_path) == []
        assert not (tmp_path / "data" / "deploy.json").exists()
        print(
            f"ready in {ready_s:.1f} s; new leader in status {failover_s:.1f} s after SIGKILL;",
            f"stop {stop_s:.1f} s",
        )
    finally:
        if start.poll() is None:
            start.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                start.wait(60)
        for pid in processes_under(tmp_path):  # only what this test's cluster started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        drop_database(url)
