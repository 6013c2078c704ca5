"""python -m services.matching --config deploy/exchange.toml --shard matching-0

With --zk and --nats: cluster mode, one replica of the shard (leader or hot follower, see
services.matching.replica); --member names it, --listen / --advertise / --data-dir set its own
address and directory (several replicas of one shard on one machine)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path

from exchange.v1 import matching_service_pb2

from services.cluster.replica import (
    add_cluster_arguments,
    check_cluster_arguments,
    cluster_options,
    follow_stream,
    metrics_address,
    replica_journals,
    replica_snapshots,
)
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
    add_cluster_arguments(ap, "the shard's")
    args = ap.parse_args()
    check_cluster_arguments(ap, args)
    setup_logging(args.shard)
    failstop = FailStop(args.shard)
    config = load_config(args.config)
    configure(process_security(config, ""))
    shard_cfg = config.shard(args.shard)
    markets = {m.symbol: m for m in config.catalog.markets_of_shard(args.shard)}

    async def run(stop: asyncio.Event) -> None:
        if args.zk:
            await run_replica(stop)
            return
        host: StateMachineHost[object, MatchingMachine] = StateMachineHost(
            args.shard,
            config.service_dir(args.shard),
            restore=lambda data: MatchingMachine.restore(args.shard, markets, data, config.catalog.markets),
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

    async def run_replica(stop: asyncio.Event) -> None:
        from services.matching.replica import Replica, ReplicaServicer

        listen = args.listen or shard_cfg.listen
        options = cluster_options(args, listen)
        directory = Path(args.data_dir) if args.data_dir else config.service_dir(args.shard)
        stream, journals = replica_journals(options, args.shard, directory)
        host: StateMachineHost[object, MatchingMachine] = StateMachineHost(
            args.shard,
            directory,
            restore=lambda data: MatchingMachine.restore(args.shard, markets, data, config.catalog.markets),
            codec=CODEC,  # type: ignore[arg-type]
            options=HostOptions(
                snapshot_every=shard_cfg.snapshot_every,
                max_queue=shard_cfg.max_queue,
                accept_snapshot_beyond_journal=args.accept_snapshot_beyond_journal,
            ),
            # The command journal is the shard's stream (shared); the event log is this replica's.
            journals=journals,
            snapshots=replica_snapshots(stream, directory),  # this replica's files + the shard's bucket
        )
        await follow_stream(host, stream)
        failstop.arm(host, stop)
        servicer = ReplicaServicer(host, config.catalog, args.shard)  # type: ignore[arg-type]
        service = matching_service_pb2.DESCRIPTOR.services_by_name["MatchingService"]
        server = await start_server(
            listen,
            [(lambda s, srv: register_service(srv, service, s, raw_responses=["StreamEvents"]), servicer)],
            [service.full_name],
        )
        failstop.set_server(server)
        start_metrics(metrics_address(args, shard_cfg.metrics_listen))
        timers: list[asyncio.Task[None]] = []

        def leading() -> None:  # on the loop, once promoted: the leader's own command source
            timer = ExpiryTimer(host, args.shard).run(shard_cfg.expiry_interval_ms / 1000)
            timers.append(asyncio.create_task(timer))

        replica = Replica(args.shard, host, options, asyncio.get_running_loop(), on_leading=leading)
        await asyncio.to_thread(replica.start)
        log.info(
            "matching replica ready",
            extra={
                "shard": args.shard,
                "member": args.member,
                "port": server.port,
                "advertise": options.advertise,
                "applied_seq": host.machine.applied_seq,
                "markets": ",".join(sorted(markets)),
            },
        )
        await stop.wait()
        log.info("stopping")
        await asyncio.to_thread(replica.stop)
        for t in timers:
            t.cancel()
        await server.stop(grace=1.0)
        await host.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(stream.close)
        log.info("stopped", extra={"applied_seq": host.machine.applied_seq})

    run_until_signal(run)
    failstop.exit_if_failed()


if __name__ == "__main__":
    main()
