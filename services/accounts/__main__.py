"""python -m services.accounts --config deploy/exchange.toml [--shard accounts-<i>]

With `[accounts] shards = N` in the config, one process per shard (`--shard accounts-0` ..
`accounts-<N-1>`, the launcher passes it): each owns the users with user_id mod N == i, forwards to
every matching shard as source accounts-<i> and settles its own users' side of every matching shard's
events (services.accounts.ledger, "Accounts sharded by user").

With --zk and --nats: cluster mode, one replica of the accounts shard (leader or hot follower, see
services.accounts.replica); --member names it, --listen / --advertise / --data-dir set its own
address and directory (several replicas of one shard on one machine)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from exchange.v1 import accounts_service_pb2

from services.accounts.links import Forwarder, SettlementFeed, own_events
from services.accounts.machine import CODEC, AccountsMachine
from services.accounts.replica import AccountsReplicaServicer, MatchingLeaders
from services.accounts.service import AccountsServicer, outbox_hook
from services.clients.channels import Connection
from services.clients.resolver import accounts_name, config_addresses
from services.cluster.replica import (
    Replica,
    add_cluster_arguments,
    check_cluster_arguments,
    cluster_options,
    follow_stream,
    metrics_address,
    replica_journals,
    replica_snapshots,
)
from services.common.config import load_config
from services.common.errors import NotFound, Reason
from services.common.failstop import FailStop
from services.common.host import HostOptions, StateMachineHost
from services.common.logs import setup_logging
from services.common.rpc import configure, register_service, run_until_signal, start_metrics, start_server
from services.common.security import process_security

log = logging.getLogger("services.accounts")


def settled_of(host: StateMachineHost[object, AccountsMachine], shard: str) -> int:
    return host.machine.ledger.settled.get(shard, 0)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m services.accounts", description="Run the accounts service.")
    ap.add_argument("--config", default="deploy/exchange.toml")
    ap.add_argument(
        "--accept-snapshot-beyond-journal",
        action="store_true",
        help="after journal damage: take the latest snapshot as the truth and continue after it",
    )
    ap.add_argument(
        "--shard",
        default="",
        help="accounts sharded by user: which shard to run (accounts-<i>; default: the first)",
    )
    add_cluster_arguments(ap, "the accounts shard's")
    args = ap.parse_args()
    check_cluster_arguments(ap, args)
    config = load_config(args.config)
    acfg = config.accounts_shard(args.shard or 0)
    configure(process_security(config, acfg.source))
    setup_logging(acfg.source)
    failstop = FailStop(acfg.source)

    async def run(stop: asyncio.Event) -> None:
        cluster = bool(args.zk)
        listen = (args.listen or acfg.listen) if cluster else acfg.listen
        election = accounts_name(acfg.index)  # cluster mode: the name clients resolve (ZooKeeper)
        directory = Path(args.data_dir) if cluster and args.data_dir else config.service_dir(acfg.source)
        options = cluster_options(args, listen) if cluster else None
        forwarders: dict[str, Forwarder] = {}
        stream, journals = replica_journals(options, acfg.source, directory) if options else (None, None)
        host: StateMachineHost[object, AccountsMachine] = StateMachineHost(
            acfg.source,
            directory,
            restore=lambda data: AccountsMachine.restore(
                config.catalog, acfg.source, data, shard=acfg.index, shards=acfg.shards
            ),
            codec=CODEC,  # type: ignore[arg-type]
            options=HostOptions(
                snapshot_every=acfg.snapshot_every,
                max_queue=acfg.max_queue,
                max_batch=acfg.max_batch,
                accept_snapshot_beyond_journal=args.accept_snapshot_beyond_journal,
            ),
            # Cluster mode: the command journal is the shard's stream (shared: a new leader's
            # forwarders resend from it, so it is pruned only below what every matching shard
            # acknowledged, as the file journal); the event log is this replica's; snapshots are this
            # replica's files and the shard's bucket (services.cluster.snapshots).
            journals=journals,
            snapshots=replica_snapshots(stream, directory) if stream is not None else None,
            retention_floor=lambda: min((f.acked for f in forwarders.values()), default=0),
        )
        if stream is not None:
            await follow_stream(host, stream)
        else:
            await host.start()
        failstop.arm(host, stop)
        where = config_addresses(config)  # the shards' advertise addresses
        # Cluster mode: the links dial each matching shard's leader (ZooKeeper), else its address.
        leaders = await asyncio.to_thread(MatchingLeaders, options, where) if options else None

        def forward_to(name: str, address: str) -> str | Callable[[], str]:
            return address if leaders is None else leaders.forwarder_address(name, address)

        def settle_from(name: str, address: str) -> str | Connection:
            return address if leaders is None else leaders.feed_connection(name, address)

        for name in config.shards:
            forwarders[name] = Forwarder(
                name, forward_to(name, where[name]), host, acfg.source, config.catalog
            )
        host.on_effects.append(outbox_hook(forwarders))  # a follower has no effects: never called
        # Accounts sharded by user: each shard journals only its own users' events of every matching shard.
        owns = own_events(acfg.source, acfg.index, acfg.shards) if acfg.shards > 1 else None
        feeds: list[SettlementFeed] = []
        tasks: list[asyncio.Task[None]] = []

        linked: list[bool] = []  # [True] once the links run

        def link_shard(name: str) -> None:
            """A matching shard a market moved to that is not linked yet (added while running,
            services.cluster.operator): its address from the configuration file as it is now."""
            if name in forwarders:
                return
            address = where.get(name) or config_addresses(load_config(args.config)).get(name)
            if not address:
                raise NotFound(f"no matching shard {name!r} in {args.config}", Reason.MARKET_NOT_ON_SHARD)
            where[name] = address
            forwarders[name] = fwd = Forwarder(
                name, forward_to(name, address), host, acfg.source, config.catalog
            )
            if linked:
                feed = SettlementFeed(
                    name, settle_from(name, address), host, partial(settled_of, host, name), owns=owns
                )
                feeds.append(feed)
                tasks.extend((asyncio.create_task(fwd.run()), asyncio.create_task(feed.run())))
            log.info("matching shard linked", extra={"shard": name, "address": address})

        def links() -> None:
            """The outbound links, a leader's only (on the loop: at the start, or once promoted), from
            the state's checkpoints: what each shard applied of this source, what was settled."""
            for name in sorted(set(host.machine.routes.values()) - set(forwarders)):
                link_shard(name)  # a shard markets moved to since the configuration was read
            feeds.extend(
                SettlementFeed(
                    name, settle_from(name, where[name]), host, partial(settled_of, host, name), owns=owns
                )
                for name in forwarders
            )
            tasks.extend(asyncio.create_task(f.run()) for f in forwarders.values())
            tasks.extend(asyncio.create_task(f.run()) for f in feeds)
            linked.append(True)

        servicer_type = AccountsReplicaServicer if cluster else AccountsServicer
        servicer = servicer_type(host, config.catalog, acfg, forwarders)  # type: ignore[arg-type]
        servicer.link_shard = link_shard
        service = accounts_service_pb2.DESCRIPTOR.services_by_name["AccountsService"]
        server = await start_server(
            listen,
            [
                (
                    lambda s, srv: register_service(
                        srv, service, s, raw_responses=["StreamAccountEvents", "StreamUserEvents"]
                    ),
                    servicer,
                )
            ],
            [service.full_name],
        )
        failstop.set_server(server)
        replica: Replica | None = None
        if options is None:
            start_metrics(acfg.metrics_listen)
            links()
        else:
            start_metrics(metrics_address(args, acfg.metrics_listen))
            replica = Replica(election, host, options, asyncio.get_running_loop(), on_leading=links)
            await asyncio.to_thread(replica.start)
        log.info(
            "accounts replica ready" if options else "accounts ready",
            extra={
                "port": server.port,
                "shards": ",".join(config.shards),
                "users": f"user_id mod {acfg.shards} == {acfg.index}",
                **(
                    {"member": options.member, "advertise": options.advertise, "election": election}
                    if options
                    else {}
                ),
            },
        )
        await stop.wait()
        log.info("stopping")
        if replica is not None:
            await asyncio.to_thread(replica.stop)
        await server.stop(grace=1.0)
        for f in forwarders.values():
            f.stop()
        for feed in feeds:
            feed.stop()
        for t in tasks:
            t.cancel()
        await host.stop()
        if leaders is not None:
            await asyncio.to_thread(leaders.close)
        if stream is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stream.close)
        log.info("stopped", extra={"applied_seq": host.machine.applied_seq})

    run_until_signal(run)
    failstop.exit_if_failed()


if __name__ == "__main__":
    main()
