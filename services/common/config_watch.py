"""Noticing a changed configuration file while running: shards and markets added to a running exchange.

The operator adds a matching shard or a market to a running exchange by adding its table to the
configuration, then running `exchange cluster add-shard` / `add-market` (services.cluster.operator).
Accounts and matching learn of it through their journals; the downstream readers of the event streams
(history, market data) learn of it here: ConfigWatch checks the file every `interval_s` (its size and
modification time: one stat) and, when it changed and still loads, hands the new ExchangeConfig to
`on_change`, which starts following the new shards and takes in the new markets. A file that no longer
loads is logged once per change and ignored (the running configuration stays). Only additions are
taken: a shard or market removed from the file goes on being followed until a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

from services.common.config import ExchangeConfig, load_config
from services.common.markets import ConfigError

log = logging.getLogger(__name__)


class ConfigWatch:
    def __init__(
        self, path: Path, on_change: Callable[[ExchangeConfig], None], *, interval_s: float = 2.0
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.interval_s = interval_s
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def check(self) -> ExchangeConfig | None:
        """The new configuration when the file changed since the last check and loads, else None."""
        stamp = self._read_stamp()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            return load_config(self.path)
        except (OSError, ConfigError, tomllib.TOMLDecodeError) as exc:
            log.error(
                "configuration changed but does not load; kept the running one",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            config = self.check()
            if config is not None:
                log.info("configuration reloaded", extra={"path": str(self.path)})
                self.on_change(config)
