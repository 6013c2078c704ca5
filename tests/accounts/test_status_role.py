"""GetAccountsStatus role: STANDALONE for accounts outside cluster mode; in cluster mode (the replica
servicer over a host whose command journal is a JetStream stream, on the real NATS, in one process)
LEADER for the writer, FOLLOWER while a replica follows the journal, LEADER once it is promoted."""

from __future__ import annotations

import asyncio
import os
from itertools import count
from pathlib import Path

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import replica_pb2

from services.accounts.machine import CODEC, AccountsMachine
from services.accounts.replica import AccountsReplicaServicer
from services.accounts.service import AccountsServicer
from services.cluster.journals import RoutedJournals
from services.common.config import AccountsConfig
from services.common.host import HostOptions, StateMachineHost
from services.common.journal import FileJournals
from services.common.journal.jetstream import JetStreamJournals
from testkit.accounts_sim import default_catalog
from tests.cluster_fixtures import nats_local  # noqa: F401

AccountsHost = StateMachineHost[ev.AccountsCommand, AccountsMachine]
_ids = count(1)
CATALOG = default_catalog()


def host(directory: Path, stream: JetStreamJournals | None = None) -> AccountsHost:
    journals = RoutedJournals({"commands": stream}, FileJournals(directory)) if stream else None
    return StateMachineHost(
        "accounts-0",
        directory,
        restore=lambda data: AccountsMachine.restore(CATALOG, "accounts-0", data),
        codec=CODEC,
        options=HostOptions(fork_snapshots=False, snapshot_every=0),
        journals=journals,
        retention_floor=lambda: 0,
    )


def deposit(user: int) -> ev.AccountsCommand:
    cmd = ev.AccountsCommand()
    cmd.adjust_balance.CopyFrom(
        ev.BalanceAdjustCommand(
            user_id=user, asset="USDT", change=10**8, business="d", business_id=f"d{user}"
        )
    )
    return cmd


async def status(servicer: AccountsServicer) -> apb.GetAccountsStatusResponse:
    return await servicer.GetAccountsStatus(apb.GetAccountsStatusRequest(), None)


def test_accounts_outside_cluster_mode_is_standalone(tmp_path: Path) -> None:
    async def run() -> None:
        h = host(tmp_path)
        await h.start()
        try:
            await h.submit(deposit(1))
            st = await status(AccountsServicer(h, CATALOG, AccountsConfig(), {}))
            assert st.role == replica_pb2.REPLICA_ROLE_STANDALONE and st.applied_sequence == 1
            assert apb.GetAccountsStatusResponse().role == replica_pb2.REPLICA_ROLE_UNSPECIFIED  # unset
        finally:
            await h.stop(snapshot=False)

    asyncio.run(run())


def test_a_replica_is_leader_or_follower_and_a_promoted_follower_says_leader(
    nats_local: list[str],  # noqa: F811
    tmp_path: Path,
) -> None:
    service = f"accounts-role-{os.getpid()}-{next(_ids)}"
    fa = JetStreamJournals(nats_local, service=service)  # two replicas' "processes"
    fb = JetStreamJournals(nats_local, service=service)
    try:

        async def run() -> None:
            leader = host(tmp_path / "a", fa)
            await leader.start()
            await leader.submit(deposit(1))
            fb.ensure_stream("commands")
            follower = host(tmp_path / "b", fb)
            await follower.start_following(await asyncio.to_thread(fb.open_reader, "commands"))
            try:
                lead = AccountsReplicaServicer(leader, CATALOG, AccountsConfig(), {})
                follow = AccountsReplicaServicer(follower, CATALOG, AccountsConfig(), {})
                assert (await status(lead)).role == replica_pb2.REPLICA_ROLE_LEADER
                st = await status(follow)
                assert st.role == replica_pb2.REPLICA_ROLE_FOLLOWER and st.applied_sequence == 1
                await follower.promote()  # elected (the old leader is fenced from now on)
                assert (await status(follow)).role == replica_pb2.REPLICA_ROLE_LEADER
            finally:
                await follower.stop(snapshot=False)
                await leader.stop(snapshot=False)

        asyncio.run(run())
    finally:
        fa.delete_streams()
        fa.close()
        fb.close()
