"""python -m services.gateway --config deploy/exchange.toml"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os

from services.common.config import load_config
from services.common.logs import setup_logging
from services.common.rpc import configure, run_until_signal
from services.common.security import process_security
from services.gateway.app import GatewayApp

log = logging.getLogger("services.gateway")


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m services.gateway",
        description="HTTP and WebSocket gateway: a Binance-spot-compatible REST API with API keys.",
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    args = ap.parse_args()
    setup_logging("gateway")
    config = load_config(args.config)
    configure(process_security(config, "gateway"))

    async def run(stop: asyncio.Event) -> None:
        app = GatewayApp(config)
        await app.start()
        log.info(
            "gateway ready",
            extra={
                "http": config.gateway.listen,
                "http_port": app.http_port,
                "admin": config.gateway.admin_listen,
            },
        )
        await stop.wait()
        log.info("stopping")
        await app.stop()
        log.info("stopped")

    if os.environ.get("EXCHANGE_GATEWAY_UVLOOP", "1") == "1":
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    run_until_signal(run)


if __name__ == "__main__":
    main()
