"""python -m services.history --config deploy/exchange.toml

Runs the migrations to head, follows every matching shard and accounts, serves HistoryService (with
health and reflection) on [history] listen; SIGINT/SIGTERM stop it cleanly. Page tokens are signed
with the key of services.history.keys.page_token_key (the exchange's generated secrets)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.config import load_config
from services.common.logs import setup_logging
from services.common.rpc import configure, run_until_signal
from services.common.security import process_security
from services.history.app import HistoryApp
from services.history.keys import page_token_key

log = logging.getLogger("services.history")


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m services.history",
        description="History: finished orders, trades and balance changes in SQL, from the event streams.",
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    ap.add_argument("--database-url", default="", help="overrides [history] database_url")
    args = ap.parse_args()
    setup_logging("history")
    config = load_config(args.config)
    configure(process_security(config, "history"))
    try:
        key = page_token_key(config)
    except (OSError, ValueError) as exc:
        log.error("history cannot start: no page-token key", extra={"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None

    async def run(stop: asyncio.Event) -> None:
        app = HistoryApp(config, page_token_key=key, database_url=args.database_url or None)
        try:
            await app.start()
        except Exception as exc:
            log.error(
                "history cannot start",
                extra={"database": app.database, "error": f"{type(exc).__name__}: {exc}"},
                exc_info=True,
            )
            await app.stop()
            raise SystemExit(1) from None
        assert app.server is not None
        checkpoints = await asyncio.to_thread(app.store.checkpoints)
        log.info(
            "history ready",
            extra={
                "listen": config.history.listen,
                "port": app.server.port,
                "database": app.database,
                "sources": ",".join(f"{c.source}@{c.address}" for c in app.consumers),
                "checkpoints": ",".join(f"{k}={v}" for k, v in sorted(checkpoints.items())),
            },
        )
        await stop.wait()
        log.info("stopping")
        await app.stop()
        log.info(
            "stopped", extra={"checkpoints": ",".join(f"{c.source}={c.checkpoint}" for c in app.consumers)}
        )

    run_until_signal(run)


if __name__ == "__main__":
    main()
