"""History consumes every source of the exchange: each matching shard and each accounts shard (accounts
sharded by user: "accounts-0", "accounts-1", ...), each with its own checkpoint."""

from __future__ import annotations

import tomllib
from pathlib import Path

from services.common.config import config_from_dict
from services.history.app import HistoryApp
from testkit.cluster import ROOT


def test_one_consumer_per_accounts_shard_and_matching_shard(tmp_path: Path) -> None:
    raw = tomllib.loads((ROOT / "deploy" / "exchange.toml").read_text())
    raw["accounts"] = {"listen": "127.0.0.1:7051", "shards": 3}
    raw["shards"] = {"matching-0": {"listen": "127.0.0.1:7061"}}
    config = config_from_dict(raw, base_dir=tmp_path)
    app = HistoryApp(config, page_token_key=b"k" * 32, database_url=f"sqlite:///{tmp_path}/h.sqlite")
    try:
        got = [(c.source, c.kind, c.connection.address) for c in app.consumers]
        assert got == [
            ("matching-0", "matching", "127.0.0.1:7061"),
            ("accounts-0", "accounts", "127.0.0.1:7051"),
            ("accounts-1", "accounts", "127.0.0.1:7052"),
            ("accounts-2", "accounts", "127.0.0.1:7053"),
        ]
        # Each consumer follows its own shard's stream (not the first shard's).
        assert [c.follower.source.name for c in app.consumers[1:]] == [
            "accounts-0",
            "accounts-1",
            "accounts-2",
        ]
    finally:
        app.engine.dispose()
