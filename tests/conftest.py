"""Test-wide setup: the in-process servers and clients of the tests authenticate like real ones.

Every test process gets its own generated credentials (in a temporary folder) and acts as "admin" for
in-process clients; servers started in-process (services.common.rpc.start_server) verify tokens
against the same file. Tests of real processes (tests/cluster.py) use the credentials of their
cluster's data directory instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common import rpc
from services.common.config import config_from_dict
from services.common.security import process_security


@pytest.fixture(autouse=True, scope="session")
def _process_security() -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="exchange-test-secrets-") as d:
        base = Path(d)
        config = config_from_dict(
            {
                "data_dir": str(base),
                "assets": {"USDT": {"decimals": 8}, "BTC": {"decimals": 8}},
                "markets": [
                    {
                        "symbol": "BTC_USDT",
                        "base": "BTC",
                        "quote": "USDT",
                        "price_tick": "0.01",
                        "lot_size": "0.00001",
                    }
                ],
            },
            base_dir=base,
        )
        rpc.configure(process_security(config, "admin"))
        yield
