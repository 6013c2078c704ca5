"""python -m services.exporter --config deploy/exchange.toml

Exports every source's events to the brokers of [exporter] (nats_url: JetStream, kafka_bootstrap: Kafka);
serves gRPC health on [exporter] listen (NOT_SERVING while a broker refuses). SIGINT/SIGTERM stop it."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.config import load_config
from services.common.logs import setup_logging
from services.common.rpc import configure, run_until_signal
from services.common.security import process_security
from services.exporter.app import ExporterApp

log = logging.getLogger("services.exporter")

PRINCIPAL = "reader"  # read-only: the event streams


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m services.exporter", description="Event export to NATS JetStream and Kafka topics."
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    args = ap.parse_args()
    setup_logging("exporter")
    config = load_config(args.config)
    configure(process_security(config, PRINCIPAL))

    async def run(stop: asyncio.Event) -> None:
        try:
            app = ExporterApp(config)
        except ValueError as exc:
            log.error("exporter cannot start", extra={"error": str(exc)})
            raise SystemExit(1) from None
        await app.start()
        log.info(
            "exporter ready",
            extra={
                "listen": config.exporter.listen,
                "sinks": ",".join(sorted({s.name for s in app.sinks})),
                "sources": ",".join(sorted({e.source for e in app.exports})),
                "format": config.exporter.format,
            },
        )
        await stop.wait()
        log.info("stopping")
        await app.stop()
        log.info(
            "stopped", extra={"exported": ",".join(f"{e.tracker.source}={e.exported}" for e in app.exports)}
        )

    run_until_signal(run)


if __name__ == "__main__":
    main()
