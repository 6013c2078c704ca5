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

from services.clients.resolver import advertise_address
from services.common.config import DEFAULT_SHARD, load_config
from services.common.failstop import FailStop
from services.common.host import HostOptions, StateMachineHost
from services.common.journal import FileJournals
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
    cluster = ap.add_argument_group("cluster mode (leader + hot followers; needs --zk and --nats)")
    cluster.add_argument("--zk", default="", help="ZooKeeper hosts (host:port,...)")
    cluster.add_argument("--nats", default="", help="comma-separated NATS URLs of the JetStream cluster")
    cluster.add_argument("--member", default="", help="this replica's name in the election")
    cluster.add_argument("--listen", default="", help="gRPC listen address (default: the shard's)")
    cluster.add_argument("--advertise", default="", help="address clients dial (default: --listen)")
    cluster.add_argument("--data-dir", default="", help="this replica's directory (default: the shard's)")
    cluster.add_argument(
        "--metrics-listen",
        default=None,
        help="Prometheus address (default: the shard's, or none when --listen is given)",
    )
    cluster.add_argument("--session-timeout", type=float, default=2.0, help="ZooKeeper session (s)")
    cluster.add_argument("--stream-replicas", type=int, default=1, help="JetStream copies of the journal")
    cluster.add_argument("--zk-root", default="/ostrakon")
    args = ap.parse_args()
    if bool(args.zk) != bool(args.nats):
        ap.error("cluster mode needs both --zk and --nats")
    if args.zk and not args.member:
        ap.error("cluster mode needs --member")
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

    async def run_replica(stop: asyncio.Event) -> None:
        from services.cluster.journals import RoutedJournals
        from services.common.journal.jetstream import JetStreamJournals
        from services.matching.replica import ClusterOptions, Replica, ReplicaServicer

        listen = args.listen or shard_cfg.listen
        options = ClusterOptions(
            zk_hosts=args.zk,
            nats_urls=tuple(u for u in args.nats.split(",") if u),
            member=args.member,
            advertise=advertise_address(listen, args.advertise),
            session_timeout_s=args.session_timeout,
            stream_replicas=args.stream_replicas,
            zk_root=args.zk_root,
        )
        directory = Path(args.data_dir) if args.data_dir else config.service_dir(args.shard)
        stream = JetStreamJournals(list(options.nats_urls), service=args.shard, replicas=args.stream_replicas)
        host: StateMachineHost[object, MatchingMachine] = StateMachineHost(
            args.shard,
            directory,
            restore=lambda data: MatchingMachine.restore(args.shard, markets, data),
            codec=CODEC,  # type: ignore[arg-type]
            options=HostOptions(
                snapshot_every=shard_cfg.snapshot_every,
                max_queue=shard_cfg.max_queue,
                accept_snapshot_beyond_journal=args.accept_snapshot_beyond_journal,
            ),
            # The command journal is the shard's stream (shared); the event log is this replica's.
            journals=RoutedJournals({"commands": stream}, FileJournals(directory)),
            retention_floor=lambda: 0,  # the shared stream is not pruned in cluster mode
        )
        await asyncio.to_thread(stream.ensure_stream, "commands")
        reader = await asyncio.to_thread(stream.open_reader, "commands")
        await host.start_following(reader)
        failstop.arm(host, stop)
        servicer = ReplicaServicer(host, config.catalog, args.shard)  # type: ignore[arg-type]
        service = matching_service_pb2.DESCRIPTOR.services_by_name["MatchingService"]
        server = await start_server(
            listen,
            [(lambda s, srv: register_service(srv, service, s, raw_responses=["StreamEvents"]), servicer)],
            [service.full_name],
        )
        failstop.set_server(server)
        if args.metrics_listen is not None:
            start_metrics(args.metrics_listen)
        elif not args.listen:  # replicas on one machine would share the shard's metrics port
            start_metrics(shard_cfg.metrics_listen)
        timers: list[asyncio.Task[None]] = []

        def leading() -> None:  # on the loop, once promoted: the leader's own command source
            timer = ExpiryTimer(host, args.shard).run(shard_cfg.expiry_interval_ms / 1000)
            timers.append(asyncio.create_task(timer))

        replica = Replica(args.shard, host, options, asyncio.get_running_loop(), on_leading=leading)  # type: ignore[arg-type]
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
