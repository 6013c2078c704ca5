"""The launcher's health probe on a TLS exchange: it dials each service's advertise address with the
exchange's transport (services.clients.sync_channel after rpc.configure), so a TLS cluster comes up
"ready" and a typed client reaches it over TLS."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb

from tests.cluster import Cluster
from tests.test_launcher import Launcher

pytestmark = pytest.mark.slow


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[tuple[Cluster, Launcher]]:
    cluster = Cluster(tmp_path / "exchange", transport="tls", with_history=True, with_market=True)
    launcher = Launcher(cluster.config_path)
    try:
        yield cluster, launcher
    finally:
        launcher.close()


def test_a_tls_exchange_is_probed_healthy_and_reached_by_the_clients(
    launched: tuple[Cluster, Launcher],
) -> None:
    cluster, launcher = launched
    launcher.expect(r"exchange ready", timeout=120)
    assert set(launcher.pids) == {"matching-0", "accounts-0", "history", "market", "quantizer-0", "gateway"}
    # The gateway's line is followed by the address people open (its HTTP listen), not only the probed one.
    assert any(re.match(r"^\s+http://\S+/ \(web page", line) for line in launcher.lines), launcher.lines
    assert cluster.security().transport == "tls"

    async def ask() -> apb.GetAccountsStatusResponse:
        async with cluster.client("accounts-0") as accounts:
            status: apb.GetAccountsStatusResponse = await accounts.get_accounts_status()
            return status

    assert asyncio.run(ask()).source == "accounts-0"
