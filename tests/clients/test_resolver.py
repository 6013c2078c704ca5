"""Addresses: the config's advertise addresses (default: listen, a wildcard host as 127.0.0.1), the
resolver's names and aliases, and a connection that dials the new address once told of a change."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc

from services.clients import (
    AccountsClient,
    Clients,
    HistoryClient,
    MarketClient,
    MatchingClient,
    StaticResolver,
    UnknownService,
    advertise_address,
)
from services.clients.channels import Connection
from services.common.config import config_from_dict
from tests.clients.fakes import Script, ScriptedAccounts, serve

ASSETS = {
    "assets": {"USDT": {"decimals": 8}, "BTC": {"decimals": 8}},
    "markets": [
        {"symbol": "BTC_USDT", "base": "BTC", "quote": "USDT", "price_tick": "0.01", "lot_size": "0.001"}
    ],
}


def test_advertise_defaults_to_listen_with_a_wildcard_host_as_loopback() -> None:
    assert advertise_address("0.0.0.0:50051") == "127.0.0.1:50051"
    assert advertise_address("[::]:50061") == "127.0.0.1:50061"
    assert advertise_address(":50071") == "127.0.0.1:50071"
    assert advertise_address("10.1.2.3:50081") == "10.1.2.3:50081"
    assert advertise_address("[::1]:50081") == "[::1]:50081"
    assert advertise_address("0.0.0.0:50051", "accounts.internal:50051") == "accounts.internal:50051"


def test_the_config_resolver(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            **ASSETS,
            "accounts": {"listen": "0.0.0.0:6001"},
            "shards": {
                "matching-0": {"listen": "[::]:6002", "advertise": "m0.internal:6002"},
                "matching-1": {"listen": "10.0.0.9:6003", "markets": []},
            },
            "history": {"listen": "127.0.0.1:6004", "advertise": "h.internal:7004"},
        },
        base_dir=tmp_path,
    )
    assert config.accounts.advertise == "" and config.shards["matching-0"].advertise == "m0.internal:6002"
    r = StaticResolver.from_config(config)
    assert r.address("accounts") == r.address("accounts-0") == "127.0.0.1:6001"
    assert r.address("matching-0") == "m0.internal:6002"
    assert r.address("matching-1") == "10.0.0.9:6003"
    assert r.address("history") == "h.internal:7004"
    assert r.address("market") == "127.0.0.1:50081"  # the default section
    assert sorted(r.names()) == ["accounts", "history", "market", "matching-0", "matching-1"]
    with pytest.raises(UnknownService) as info:
        r.address("matching-7")
    assert "matching-7" in str(info.value) and "matching-1" in str(info.value)
    clients = Clients(r)
    assert isinstance(clients.accounts, AccountsClient) and clients.accounts.address == "127.0.0.1:6001"
    assert clients.client("accounts-0") is clients.accounts
    assert isinstance(clients.matching("matching-1"), MatchingClient)
    assert isinstance(clients.history, HistoryClient) and isinstance(clients.market, MarketClient)
    with pytest.raises(TypeError):
        clients.matching("history")
    with pytest.raises(UnknownService):
        clients.matching("matching-7")


def test_watchers_hear_of_changes() -> None:
    r = StaticResolver({"accounts": "127.0.0.1:1"}, {"accounts-0": "accounts"})
    heard: list[tuple[str, str]] = []
    stop = r.watch(lambda name, address: heard.append((name, address)))
    r.set("accounts-0", "127.0.0.1:2")
    r.set("accounts", "127.0.0.1:2")  # no change: not told
    stop()
    r.set("accounts", "127.0.0.1:3")
    assert heard == [("accounts", "127.0.0.1:2")]


def test_a_connection_dials_the_new_address_after_a_change() -> None:
    async def body() -> None:
        def status(source: str) -> Any:
            return ScriptedAccounts(GetAccountsStatus=Script(apb.GetAccountsStatusResponse(source=source)))

        old, old_address = await serve(agrpc.add_AccountsServiceServicer_to_server, status("old"))
        new, new_address = await serve(agrpc.add_AccountsServiceServicer_to_server, status("new"))
        r = StaticResolver({"accounts": old_address})
        accounts = AccountsClient(Connection("accounts", r), owns_connection=True)
        try:
            assert (await accounts.get_accounts_status()).source == "old"
            r.set("accounts", new_address)  # e.g. ZooKeeper moved it
            assert accounts.address == new_address
            assert (await accounts.get_accounts_status()).source == "new"
        finally:
            await accounts.close()
            await old.stop(0)
            await new.stop(0)

    asyncio.run(body())
