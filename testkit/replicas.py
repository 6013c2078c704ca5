"""A matching shard's replica processes in cluster mode, as the tests and benches start them: the
shard's configuration file (every market of deploy/exchange.toml on the one shard) and a replica's
command line (python -m services.matching --zk ... --nats ... --member ...)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from services.common.config import load_config
from testkit.cluster import DEFAULT_MARKETS, ROOT

MARKETS = sorted(load_config(ROOT / "deploy" / "exchange.toml").catalog.markets)


def write_shard_config(path: Path, shard: str, listen: str, *, settings: Iterable[str] = ()) -> Path:
    """The exchange configuration of one matching shard `shard` (configured address `listen`, local
    credentials), `settings` added to its [shards] table (say "snapshot_every = 50")."""
    path.write_text(
        "\n".join(
            [
                'data_dir = "data"',
                "[security]",
                'transport = "local"',
                f'[shards."{shard}"]',
                f'listen = "{listen}"',
                "markets = [" + ", ".join(f'"{m}"' for m in MARKETS) + "]",
                *settings,
                "",
                "[assets]" + DEFAULT_MARKETS,
            ]
        )
    )
    return path


def replica_argv(
    config: Path,
    shard: str,
    member: str,
    listen: str,
    directory: Path,
    *,
    zk_hosts: str,
    nats: Sequence[str],
    session_s: float = 2.0,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of replica `member` of `shard`, serving at `listen`, its data in `directory`."""
    argv = [sys.executable, "-m", "services.matching", "--config", str(config), "--shard", shard]
    argv += ["--zk", zk_hosts, "--nats", ",".join(nats), "--member", member, "--listen", listen]
    argv += ["--data-dir", str(directory), "--session-timeout", str(session_s), *extra]
    return argv
