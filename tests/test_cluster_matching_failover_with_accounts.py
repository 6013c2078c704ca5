"""A matching failover while accounts runs in cluster mode, against the real ZooKeeper and NATS:
matching-0 as two cluster-mode replicas (leader + hot follower) and accounts-0 as two replicas (leader
+ hot follower), neither matching replica at matching-0's configured address (the accounts leader's
links, and history, find matching-0's leader through ZooKeeper only).

Under the steady order load of tests/test_accounts_replicas.py (one order at a time through the
accounts leader, each sent again with its client_order_id until acknowledged) the matching leader is
killed (SIGKILL) after KILL_AFTER acknowledged orders. Checked: the matching follower leads within
the session timeout + replay (the handover, from the signal to the new leader applying the first
command the old one cannot have applied, is printed: `-s`); every acknowledged order is there with
its number; the accounts leader's links follow the new matching leader (it applied everything accounts
forwarded, the accounts leader's process holds connections to it and none to the killed one's address
once that restarts as a follower); balances, orders and history equal those of the run without faults;
every matching event is settled once; the balance invariant holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from services.clients.accounts import AccountsClient
from services.clients.matching import MatchingClient
from services.clients.zk_resolver import ZooKeeperResolver
from services.cluster.servers import ZooKeeper
from tests.cluster_fixtures import nats_local, zookeeper
from tests.test_accounts_replicas import (
    BOUND_S,
    KILL_AFTER,
    NAME,
    ORDERS,
    SOURCE,
    Exchange,
    Load,
    Outcome,
    assert_balanced,
    caught_up,
    check_against_fault_free,
    deposits,
    fault_free,
    leader_of,
    order,
    outcome,
    quiet,
    running_exchange,
    status,
)
from tests.test_matching_replicas import READY as MATCHING_READY
from tests.test_matching_replicas import Member, until, wait_for

pytestmark = pytest.mark.slow
__all__ = ["fault_free", "nats_local", "zookeeper"]

SHARD = "matching-0"
MATCHING_REPLICAS = ("ma", "mb")
LATER = 24  # orders placed after the killed matching replica came back as a follower


@pytest.fixture
def exchange(tmp_path: Path, zookeeper: ZooKeeper, nats_local: list[str]) -> Iterator[Exchange]:
    with running_exchange(tmp_path, zookeeper, nats_local, {SHARD: MATCHING_REPLICAS}) as ex:
        yield ex


def matching_leader_of(ex: Exchange, resolver: ZooKeeperResolver, timeout: float = 20.0) -> Member:
    found: list[Member] = []

    def elected() -> bool:
        info = resolver.leader(SHARD)
        if info is None:
            return False
        found[:] = [m for m in ex.shards[SHARD].values() if m.address == info.address]
        return bool(found) and '"msg":"leading"' in found[0].log

    wait_for(elected, timeout, f"a {SHARD} leader to be elected and promoted")
    return found[0]


def tcp_peer_ports(pid: int) -> set[int]:
    """The remote ports of process `pid`'s established TCP connections (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and f[3] == "01":  # ESTABLISHED
                ports.add(int(f[2].rsplit(":", 1)[1], 16))
    return ports


def port_of(member: Member) -> int:
    return int(member.address.rsplit(":", 1)[1])


async def matching_status(ex: Exchange, address: str) -> mpb.GetMatchingStatusResponse:
    async with MatchingClient.at(address, security=ex.security) as m:
        return await m.get_matching_status(mpb.GetMatchingStatusRequest(with_state_hash=True))


def leading(member: Member) -> list[dict[str, Any]]:
    """The replica's "leading" log records (one per promotion)."""
    return [json.loads(line) for line in member.log.splitlines() if '"msg":"leading"' in line]


async def handover_time(
    ex: Exchange, new: Member, wall_signal: float, t_signal: float
) -> tuple[float, float]:
    """(seconds from the signal until `new` was promoted, by its log; seconds until it applied a
    command after those it held at its promotion: one only a leader can have journaled)."""
    deadline = time.monotonic() + 30
    while not leading(new):
        assert time.monotonic() < deadline, f"{new.name} did not lead: {new.log[-3000:]}"
        await asyncio.sleep(0.02)
    promoted = leading(new)[0]
    leads = datetime.fromisoformat(promoted["ts"].replace("Z", "+00:00")).timestamp() - wall_signal
    async with MatchingClient.at(new.address, security=ex.security) as m:
        while (await m.get_matching_status()).applied_sequence <= promoted["applied_seq"]:
            assert time.monotonic() < deadline, f"{new.name} applied nothing as leader"
            await asyncio.sleep(0.02)
    return leads, time.monotonic() - t_signal


def test_sigkill_of_the_matching_leader_while_accounts_runs_replicated(
    exchange: Exchange, fault_free: Outcome
) -> None:
    ex = exchange
    resolver = ex.resolver()
    try:
        old = matching_leader_of(ex, resolver)
        new = next(m for m in ex.shards[SHARD].values() if m is not old)
        accounts = leader_of(ex, resolver)
        accounts_follower = ex.other(accounts.name)
        assert accounts.proc is not None and old.proc is not None
        accounts_pid, killed = accounts.proc.pid, old.proc

        async def scenario() -> None:
            async with AccountsClient.resolve(resolver, NAME, security=ex.security) as c:
                await deposits(c)
                load = Load(c)
                task = asyncio.create_task(load.run())
                await until(
                    lambda: load.last() >= KILL_AFTER or task.done(), 30, f"{KILL_AFTER} orders acknowledged"
                )
                assert not task.done()
                # Before the kill: one matching replica leads, and the accounts leader's links hold
                # connections to it.
                assert len(leading(old)) == 1 and not leading(new), (leading(old), leading(new))
                assert port_of(old) in tcp_peer_ports(accounts_pid)
                wall_signal, t_signal = time.time(), time.monotonic()
                killed.send_signal(signal.SIGKILL)
                before = load.last()
                leads, handover = await handover_time(ex, new, wall_signal, t_signal)
                await task  # raises what the load met
            after = load.last() - before
            print(
                f"\nSIGKILL of the {SHARD} leader after {before} acknowledged orders: the follower led "
                f"{leads:.2f} s later (promoted at command {leading(new)[0]['applied_seq']}), applied its "
                f"first command as leader {handover:.2f} s later; {after} orders acknowledged after the "
                f"kill, {load.retried} retries"
            )
            assert leads < BOUND_S, leads  # session timeout + election + replay (promotion)
            assert handover < BOUND_S + 2.0, handover  # and the accounts link's retry
            assert resolver.refresh(SHARD) == new.address and resolver.address(SHARD) == new.address
            assert '"msg":"leading"' in new.log
            assert await asyncio.to_thread(killed.wait, 10) == -signal.SIGKILL

            # Acknowledged orders, balances, orders, settlement once, history: as without faults.
            st = await check_against_fault_free(ex, resolver, load, fault_free)
            # The accounts leader's links follow the new matching leader: it applied every command
            # accounts forwarded (accounts forwarded them all), and accounts settled its last event.
            ms = await matching_status(ex, new.address)
            assert ms.source_sequences[SOURCE] == st.forwarded_sequences[SHARD]
            assert not any(st.outbox_pending.values())
            assert st.settled_sequences[SHARD] == ms.event_sequence
            assert port_of(new) in tcp_peer_ports(accounts_pid)
            log = accounts.log
            assert '"msg":"shard link down"' in log and log.count('"msg":"shard link up"') >= 2, log[-3000:]
            assert (await status(ex, accounts.address)).applied_sequence == st.applied_sequence

            # The killed replica comes back at its address as a follower and catches up; orders placed
            # now still reach the leader (ZooKeeper's), not the address the links dialed first.
            old.start()
            await until(lambda: old.log.count(MATCHING_READY) == 2, 30, "the killed replica to restart")
            await until_caught_up(ex, old, ms.event_sequence)
            assert resolver.refresh(SHARD) == new.address
            async with (
                AccountsClient.resolve(resolver, NAME, security=ex.security) as c,
                MatchingClient.resolve(resolver, SHARD, security=ex.security) as m,
            ):
                acked = []
                for i in range(ORDERS, ORDERS + LATER):
                    resp = await c.place_order(order(i), timeout=5)
                    acked.append((i, resp.order.order_id, time.monotonic()))
                st2 = await quiet(c, m)
                assert_balanced(st2)
                done = await outcome(c, acked)  # each one applied by the leader (not pending)
                assert all(o[1] != types_pb2.ORDER_STATUS_PENDING for o in done["orders"].values()), done
            lead = await matching_status(ex, new.address)
            assert (
                lead.source_sequences[SOURCE]
                == st2.forwarded_sequences[SHARD]
                > st.forwarded_sequences[SHARD]
            )
            assert st2.settled_sequences[SHARD] == lead.event_sequence > ms.event_sequence
            peers = tcp_peer_ports(accounts_pid)
            assert port_of(new) in peers and port_of(old) not in peers, (peers, new.address, old.address)
            await until_caught_up(ex, old, lead.event_sequence)
            follow = await matching_status(ex, old.address)
            assert follow.state_hash == lead.state_hash and follow.applied_sequence == lead.applied_sequence
            # And the accounts follower holds the same state as the accounts leader.
            await caught_up(ex, accounts_follower.address, st2.applied_sequence)
            a, b = await status(ex, accounts.address), await status(ex, accounts_follower.address)
            assert a.state_hash == b.state_hash and a.applied_sequence == b.applied_sequence

        asyncio.run(scenario())
    finally:
        resolver.close()


async def until_caught_up(ex: Exchange, member: Member, event_seq: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (await matching_status(ex, member.address)).event_sequence < event_seq:
        assert time.monotonic() < deadline, f"{member.name} did not reach event {event_seq}"
        await asyncio.sleep(0.05)
