"""The page-token key: generated once per exchange with its credentials (32 random bytes in the 0600
credentials file), the same for every process and restart, never a constant of the source."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from services.common.config import ExchangeConfig, config_from_dict
from services.history.keys import page_token_key
from testkit.cluster import DEFAULT_MARKETS


def config_in(directory: Path) -> ExchangeConfig:
    import tomllib

    return config_from_dict(
        tomllib.loads('data_dir = "data"\n[assets]' + DEFAULT_MARKETS), base_dir=directory
    )


def test_generated_once_private_and_stable(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    key = page_token_key(config)
    path = tmp_path / "data" / "secrets" / "credentials.json"
    assert len(key) == 32 and bytes.fromhex(json.loads(path.read_text())["page_token_key"]) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert page_token_key(config) == key
    assert page_token_key(config_in(tmp_path / "other")) != key


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def get() -> None:
        barrier.wait()
        keys.append(page_token_key(config))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_a_damaged_credentials_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    path = tmp_path / "data" / "secrets" / "credentials.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"version": 99}')
    with pytest.raises(ValueError, match="version"):
        page_token_key(config)
    assert path.read_text() == '{"version": 99}'
