"""python -m services.accounts --config deploy/exchange.toml [--shard accounts-<i>]

With `[accounts] shards = N` in the config, one process per shard (`--shard accounts-0` ..
`accounts-<N-1>`, the launcher passes it): each owns the users with user_id mod N == i, forwards to
every matching shard as source accounts-<i> and settles its own users' side of every matching shard's
events (services.accounts.ledger, "Accounts sharded by user")."""

from __future__ import annotations

import argparse
import asyncio
import logging
from functools import partial

from exchange.v1 import accounts_service_pb2

from services.accounts.links import Forwarder, SettlementFeed, own_events
from services.accounts.machine import CODEC, AccountsMachine
from services.accounts.service import AccountsServicer, outbox_hook
from services.clients.resolver import config_addresses
from services.common.config import load_config
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
    args = ap.parse_args()
    config = load_config(args.config)
    acfg = config.accounts_shard(args.shard or 0)
    configure(process_security(config, acfg.source))
    setup_logging(acfg.source)
    failstop = FailStop(acfg.source)

    async def run(stop: asyncio.Event) -> None:
        forwarders: dict[str, Forwarder] = {}
        host: StateMachineHost[object, AccountsMachine] = StateMachineHost(
            acfg.source,
            config.service_dir(acfg.source),
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
            retention_floor=lambda: min((f.acked for f in forwarders.values()), default=0),
        )
        await host.start()
        failstop.arm(host, stop)
        where = config_addresses(config)  # the shards' advertise addresses
        for name in config.shards:
            forwarders[name] = Forwarder(name, where[name], host, acfg.source, config.catalog)
        host.on_effects.append(outbox_hook(forwarders))
        # Accounts sharded by user: each shard journals only its own users' events of every matching shard.
        owns = own_events(acfg.source, acfg.index, acfg.shards) if acfg.shards > 1 else None
        feeds = [
            SettlementFeed(name, where[name], host, partial(settled_of, host, name), owns=owns)
            for name in config.shards
        ]
        servicer = AccountsServicer(host, config.catalog, acfg, forwarders)  # type: ignore[arg-type]
        service = accounts_service_pb2.DESCRIPTOR.services_by_name["AccountsService"]
        server = await start_server(
            acfg.listen,
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
        start_metrics(acfg.metrics_listen)
        tasks = [asyncio.create_task(f.run()) for f in forwarders.values()]
        tasks += [asyncio.create_task(f.run()) for f in feeds]
        log.info(
            "accounts ready",
            extra={
                "port": server.port,
                "shards": ",".join(config.shards),
                "users": f"user_id mod {acfg.shards} == {acfg.index}",
            },
        )
        await stop.wait()
        log.info("stopping")
        await server.stop(grace=1.0)
        for f in forwarders.values():
            f.stop()
        for feed in feeds:
            feed.stop()
        for t in tasks:
            t.cancel()
        await host.stop()
        log.info("stopped", extra={"applied_seq": host.machine.applied_seq})

    run_until_signal(run)
    failstop.exit_if_failed()


if __name__ == "__main__":
    main()
