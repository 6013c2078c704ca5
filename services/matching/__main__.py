"""python -m services.matching --config deploy/exchange.toml --shard matching-0"""

from __future__ import annotations

import argparse
import asyncio
import logging

from exchange.v1 import matching_service_pb2

from services.common.config import DEFAULT_SHARD, load_config
from services.common.failstop import FailStop
from services.common.host import HostOptions, StateMachineHost
from services.common.logs import setup_logging
from services.common.rpc import configure, register_service, run_until_signal, start_metrics, start_server
from services.common.security import process_security
from services.matching.intake import ExpiryTimer
from services.matching.machine import CODEC, MatchingMachine
from services.matching.service import MatchingServicer

log = logging.getLogger("services.matching")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m services.matching", description="Run one matching shard.")
    ap.add_argument("--config", default="deploy/exchange.toml")
    ap.add_argument("--shard", default=DEFAULT_SHARD)
    ap.add_argument(
        "--accept-snapshot-beyond-journal",
        action="store_true",
        help="after journal damage: take the latest snapshot as the truth and continue after it",
    )
    args = ap.parse_args()
    setup_logging(args.shard)
    failstop = FailStop(args.shard)
    config = load_config(args.config)
    configure(process_security(config, ""))
    shard_cfg = config.shard(args.shard)
    markets = {m.symbol: m for m in config.catalog.markets_of_shard(args.shard)}

    async def run(stop: asyncio.Event) -> None:
        host: StateMachineHost[object, MatchingMachine] = StateMachineHost(
            args.shard,
            config.service_dir(args.shard),
            restore=lambda data: MatchingMachine.restore(args.shard, markets, data),
            codec=CODEC,  # type: ignore[arg-type]
            options=HostOptions(
                snapshot_every=shard_cfg.snapshot_every,
                max_queue=shard_cfg.max_queue,
                accept_snapshot_beyond_journal=args.accept_snapshot_beyond_journal,
            ),
        )
        await host.start()
        failstop.arm(host, stop)
        servicer = MatchingServicer(host, config.catalog, args.shard)  # type: ignore[arg-type]
        service = matching_service_pb2.DESCRIPTOR.services_by_name["MatchingService"]
        server = await start_server(
            shard_cfg.listen,
            [(lambda s, srv: register_service(srv, service, s, raw_responses=["StreamEvents"]), servicer)],
            [service.full_name],
        )
        failstop.set_server(server)
        start_metrics(shard_cfg.metrics_listen)
        timer = asyncio.create_task(ExpiryTimer(host, args.shard).run(shard_cfg.expiry_interval_ms / 1000))
        log.info(
            "matching shard ready",
            extra={"shard": args.shard, "port": server.port, "markets": ",".join(sorted(markets))},
        )
        await stop.wait()
        log.info("stopping")
        timer.cancel()
        await server.stop(grace=1.0)
        await host.stop()
        log.info("stopped", extra={"applied_seq": host.machine.applied_seq})

    run_until_signal(run)
    failstop.exit_if_failed()


if __name__ == "__main__":
    main()
