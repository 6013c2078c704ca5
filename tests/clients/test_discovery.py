"""resolver_for: the configured addresses, or in cluster mode ([cluster] zookeeper) the leaders that
ZooKeeper names (real ZooKeeper), followed when they change, the file's addresses for every other
name."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc

from services.clients import Clients, StaticResolver
from services.clients.discovery import resolver_for
from services.clients.zk_resolver import ZooKeeperResolver
from services.cluster.election import LeaderInfo, connect, leader_path
from services.cluster.servers import ZooKeeper
from services.common.config import config_from_dict
from tests.clients.fakes import Script, ScriptedAccounts, serve
from tests.cluster_fixtures import zookeeper  # noqa: F401

ASSETS = {
    "assets": {"USDT": {"decimals": 8}, "BTC": {"decimals": 8}},
    "markets": [
        {"symbol": "BTC_USDT", "base": "BTC", "quote": "USDT", "price_tick": "0.01", "lot_size": "0.001"}
    ],
}
# Nothing listens on these: a client that dials the file's addresses fails.
FILE_ADDRESSES = {
    "accounts": {"listen": "127.0.0.1:9"},
    "shards": {"matching-0": {"listen": "127.0.0.1:11"}},
    "history": {"listen": "127.0.0.1:13"},
}


def test_without_a_cluster_table_the_resolver_is_the_files(tmp_path: Path) -> None:
    config = config_from_dict({**ASSETS, **FILE_ADDRESSES}, base_dir=tmp_path)
    r = resolver_for(config)
    assert isinstance(r, StaticResolver)
    assert r.address("accounts") == "127.0.0.1:9" and r.address("matching-0") == "127.0.0.1:11"


def _until(what: str, check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_clients_of_a_cluster_config_reach_the_leaders_zookeeper_names(
    zookeeper: ZooKeeper,  # noqa: F811
    tmp_path: Path,
) -> None:
    root = f"/discovery-{uuid.uuid4().hex[:8]}"
    config = config_from_dict(
        {**ASSETS, **FILE_ADDRESSES, "cluster": {"zookeeper": zookeeper.hosts, "zk_root": root}},
        base_dir=tmp_path,
    )
    writer = connect(zookeeper.hosts, 10.0)

    async def body() -> None:
        def status(source: str) -> Any:
            return ScriptedAccounts(GetAccountsStatus=Script(apb.GetAccountsStatusResponse(source=source)))

        a, a_address = await serve(agrpc.add_AccountsServiceServicer_to_server, status("replica-a"))
        b, b_address = await serve(agrpc.add_AccountsServiceServicer_to_server, status("replica-b"))
        node = leader_path(root, "accounts")
        writer.create(node, LeaderInfo("a", a_address).encode(), makepath=True)
        clients = Clients.from_config(config, timeout=5.0)
        resolver = clients.resolver
        try:
            assert isinstance(resolver, ZooKeeperResolver)
            _until("the leader node", lambda: resolver.address("accounts") == a_address)
            assert (await clients.accounts.get_accounts_status()).source == "replica-a"
            # A failover: ZooKeeper names another replica; the same client follows it.
            writer.set(node, LeaderInfo("b", b_address).encode())
            _until("the new leader", lambda: resolver.address("accounts") == b_address)
            assert (await clients.accounts.get_accounts_status()).source == "replica-b"
            # Names ZooKeeper does not hold come from the file.
            assert resolver.address("history") == "127.0.0.1:13"
            assert resolver.address("matching-0") == "127.0.0.1:11"
        finally:
            await clients.close()
            resolver.close()
            await a.stop(0)
            await b.stop(0)

    try:
        asyncio.run(body())
    finally:
        writer.delete(root, recursive=True)
        writer.stop()
        writer.close()
