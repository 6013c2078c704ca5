"""python -m services.market --config deploy/exchange.toml"""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.config import load_config
from services.common.logs import setup_logging
from services.common.rpc import configure, run_until_signal
from services.common.security import process_security
from services.market.app import MarketDataApp

log = logging.getLogger("services.market")


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m services.market",
        description="Market data: K-lines, tickers, recent trades and depth from the matching events.",
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    args = ap.parse_args()
    setup_logging("market")
    config = load_config(args.config)
    configure(process_security(config, "market"))

    async def run(stop: asyncio.Event) -> None:
        app = MarketDataApp(config)
        await app.start()
        assert app.server is not None
        log.info(
            "market data ready",
            extra={
                "listen": config.market.listen,
                "port": app.server.port,
                "shards": ",".join(sorted(config.shards)),
                "markets": ",".join(sorted(config.catalog.markets)),
                "checkpoints": ",".join(f"{k}={v}" for k, v in sorted(app.state.checkpoints.items())),
            },
        )
        await stop.wait()
        log.info("stopping")
        await app.stop()
        log.info("stopped", extra={"applied": app.state.applied})

    run_until_signal(run)


if __name__ == "__main__":
    main()
