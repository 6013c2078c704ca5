"""python -m services.gateway --config deploy/exchange.toml"""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.config import load_config
from services.common.logs import setup_logging
from services.common.rpc import configure, run_until_signal
from services.common.security import process_security
from services.gateway.app import GatewayApp
from services.gateway.shared import SharedState
from services.gateway.workers import Workers, install_uvloop

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

    n = config.gateway.workers

    async def run(stop: asyncio.Event) -> None:
        # Several workers: worker 0 (this process) binds the port first, starts the others on it, and
        # serves health once they are all ready (services.gateway.workers).
        shared = SharedState.create() if n > 1 else None
        app = GatewayApp(config, shared=shared)
        await app.start_http()
        workers = Workers(config, app.shared, app.http_port) if n > 1 else None
        try:
            if workers is not None:
                await workers.start()
            await app.start_admin()
            log.info(
                "gateway ready",
                extra={
                    "http": config.gateway.listen,
                    "http_port": app.http_port,
                    "admin": config.gateway.admin_listen,
                    "workers": n,
                },
            )
            await stop.wait()
            log.info("stopping")
        finally:
            if workers is not None:
                await workers.stop()
            await app.stop()
        log.info("stopped")

    install_uvloop()
    run_until_signal(run)


if __name__ == "__main__":
    main()
