"""A matching shard as leader + hot follower (python -m services.matching in cluster mode), against the
real ZooKeeper and NATS: two replica processes of one shard, the client library through the
ZooKeeperResolver.

- the follower serves the same reads as the leader (depth, status and state hash, the event stream
  byte for byte); a write sent to it is refused (FAILED_PRECONDITION, NOT_LEADER, metadata "leader"
  = the leader's address) and the client library redirects it to the leader;
- slow: SIGKILL and SIGSTOP of the leader under a steady load of acknowledged commands: the follower
  leads within the session timeout + replay, nothing acknowledged is lost, the event sequence goes on
  without gap or duplicate; the woken frozen leader cannot write and stops (exit code 70). The
  handover times are printed (`-s`) and bounded at 2x the target (2 s session + 0.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import replica_pb2, types_pb2

from services.clients.errors import ClientError
from services.clients.matching import MatchingClient
from services.clients.resolver import StaticResolver
from services.clients.zk_resolver import ZooKeeperResolver
from services.cluster.servers import ZooKeeper
from services.common.config import load_config
from services.common.failstop import EXIT_WRITER_FAILED
from services.common.journal.jetstream import JetStreamJournals
from services.common.security import Security, process_security
from testkit.cluster import ROOT, free_port
from testkit.replicas import replica_argv, write_shard_config
from tests.cluster_fixtures import nats_local, zookeeper  # noqa: F401

SESSION_S = 2.0
BOUND_S = 2 * (SESSION_S + 0.5)
SOURCE = "accounts-0"
_ids = count(1)
READY = '"msg":"matching replica ready"'


def place(seq: int) -> ev.MatchingCommand:
    """Command `seq` of the source's chain: alternately a sell and a crossing buy (trades)."""
    cmd = ev.MatchingCommand(source=SOURCE, source_sequence=seq, previous_sequence=seq - 1)
    o = cmd.place_order
    o.order_id = seq
    o.user_id = 1 + seq % 2
    o.market = "BTC_USDT"
    o.side = types_pb2.SIDE_BUY if seq % 2 else types_pb2.SIDE_SELL
    o.type = types_pb2.ORDER_TYPE_LIMIT
    o.time_in_force = types_pb2.TIME_IN_FORCE_GTC
    o.price_ticks = 3_000_000 + (seq % 7) * 100
    o.amount_lots = 100 + seq % 3
    return cmd


@dataclass
class Member:
    name: str
    address: str
    directory: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.directory.with_suffix(".log")
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        out = open(self.directory.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Shard:
    name: str
    security: Security
    zk_hosts: str
    nats: list[str]
    members: dict[str, Member] = field(default_factory=dict)

    def writer(self) -> Security:
        return self.security.as_principal(SOURCE)

    def resolver(self) -> ZooKeeperResolver:
        return ZooKeeperResolver(self.zk_hosts, session_timeout_s=5)

    def other(self, name: str) -> Member:
        return next(m for m in self.members.values() if m.name != name)


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def shard(tmp_path: Path, zookeeper: ZooKeeper, nats_local: list[str]) -> Iterator[Shard]:  # noqa: F811
    name = f"matching-r{os.getpid()}x{next(_ids)}"
    addresses = {m: f"127.0.0.1:{free_port()}" for m in ("a", "b")}
    config_path = write_shard_config(tmp_path / "exchange.toml", name, addresses["a"])
    security = process_security(load_config(config_path), "admin")  # the credentials, made here first
    s = Shard(name, security, zookeeper.hosts, nats_local)
    for m, address in addresses.items():
        argv = replica_argv(
            config_path,
            name,
            m,
            address,
            tmp_path / m,
            zk_hosts=zookeeper.hosts,
            nats=nats_local,
            session_s=SESSION_S,
        )
        s.members[m] = Member(m, address, tmp_path / m, argv)
    try:
        for member in s.members.values():
            member.start()
        for member in s.members.values():
            wait_for(lambda m=member: READY in m.log, 30, f"replica {member.name} to serve")
        yield s
    finally:
        for member in s.members.values():
            member.stop()
        cleanup = JetStreamJournals(nats_local, service=name)
        cleanup.delete_streams()
        cleanup.close()


def leader_of(shard: Shard, resolver: ZooKeeperResolver, timeout: float = 20.0) -> Member:
    found: list[Member] = []

    def elected() -> bool:
        info = resolver.leader(shard.name)
        if info is None:
            return False
        found[:] = [m for m in shard.members.values() if m.address == info.address]
        return bool(found) and '"msg":"leading"' in found[0].log

    wait_for(elected, timeout, "a leader to be elected and promoted")
    return found[0]


async def status(address: str, security: Security) -> mpb.GetMatchingStatusResponse:
    async with MatchingClient.at(address, security=security) as c:
        return await c.get_matching_status(mpb.GetMatchingStatusRequest(with_state_hash=True))


async def events_of(address: str, security: Security, last: int) -> list[bytes]:
    """Events 1..last as the replica at `address` streams them (serialized)."""
    out: list[bytes] = []
    async with MatchingClient.at(address, security=security) as c:
        async for resp in c.stream_events(mpb.StreamEventsRequest(from_sequence=1), timeout=20):
            for e in resp.events:
                assert e.sequence == len(out) + 1, (e.sequence, len(out))
                out.append(e.SerializeToString())
            if len(out) >= last:
                break
    return out


async def caught_up(address: str, security: Security, event_seq: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await status(address, security)).event_sequence < event_seq:
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} did not reach event {event_seq}")
        await asyncio.sleep(0.02)


def test_follower_reads_equal_the_leaders_and_a_write_to_it_is_redirected(shard: Shard) -> None:
    resolver = shard.resolver()
    try:
        leader = leader_of(shard, resolver)
        follower = shard.other(leader.name)

        async def scenario() -> None:
            async with MatchingClient.resolve(resolver, shard.name, security=shard.writer()) as c:
                for seq in range(1, 41, 10):
                    assert (
                        await c.submit_commands(SOURCE, [place(i) for i in range(seq, seq + 10)]) == seq + 9
                    )
            lead = await status(leader.address, shard.security)
            assert lead.applied_sequence == 40 and lead.event_sequence > 40  # trades happened
            await caught_up(follower.address, shard.security, lead.event_sequence)
            follow = await status(follower.address, shard.security)
            assert follow.state_hash == lead.state_hash and follow.applied_sequence == 40
            assert (lead.role, follow.role) == (
                replica_pb2.REPLICA_ROLE_LEADER,
                replica_pb2.REPLICA_ROLE_FOLLOWER,
            )
            assert dict(follow.source_sequences) == dict(lead.source_sequences) == {SOURCE: 40}
            seen = []
            for address in (leader.address, follower.address):
                async with MatchingClient.at(address, security=shard.security) as c:
                    depth = await c.get_depth(mpb.GetDepthRequest(market="BTC_USDT", limit=50))
                    orders = [
                        await c.list_book_orders(mpb.ListBookOrdersRequest(market="BTC_USDT", side=side))
                        for side in (types_pb2.SIDE_BUY, types_pb2.SIDE_SELL)
                    ]
                    seen.append((depth, orders))
            assert seen[0] == seen[1]  # the follower's depth and book orders are the leader's
            assert (seen[0][0].bids or seen[0][0].asks) and any(o.orders for o in seen[0][1])
            n = lead.event_sequence
            assert await events_of(follower.address, shard.security, n) == await events_of(
                leader.address, shard.security, n
            )

            # A write at the follower's fixed address: refused, naming the leader.
            async with MatchingClient.at(follower.address, security=shard.writer()) as c:
                with pytest.raises(ClientError) as refused:
                    await c.submit_commands(SOURCE, [place(41)])
            err = refused.value
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "NOT_LEADER"
            assert err.metadata["leader"] == leader.address and err.metadata["shard"] == shard.name
            # Through a resolver that names the follower: redirected to the leader, applied once.
            static = StaticResolver({shard.name: follower.address})
            async with MatchingClient.resolve(static, shard.name, security=shard.writer()) as c:
                assert await c.submit_commands(SOURCE, [place(41), place(42)]) == 42
            assert static.address(shard.name) == leader.address
            assert (await status(leader.address, shard.security)).source_sequences[SOURCE] == 42

        asyncio.run(scenario())
    finally:
        resolver.close()


@dataclass
class Load:
    """One source's chain, one command at a time through the ZooKeeper-resolved client; every
    acknowledgement is recorded with its time."""

    shard: Shard
    resolver: ZooKeeperResolver
    acked: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False

    async def run(self) -> None:
        async with MatchingClient.resolve(
            self.resolver, self.shard.name, security=self.shard.writer(), timeout=15
        ) as c:
            seq = 0
            while not self.stopped:
                seq += 1
                assert await c.submit_commands(SOURCE, [place(seq)]) >= seq
                self.acked.append((seq, time.monotonic()))
                await asyncio.sleep(0.002)

    def last(self) -> int:
        return self.acked[-1][0] if self.acked else 0

    def first_after(self, seq: int, t: float) -> float:
        """Seconds from `t` to the acknowledgement of command `seq` (or the first after it)."""
        return next(at for s, at in self.acked if s >= seq) - t


async def until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def failover(
    shard: Shard, resolver: ZooKeeperResolver, sig: int
) -> tuple[Member, Member, Load, float, int]:
    """Load, then `sig` to the leader; returns (old leader, new leader, load, handover seconds: from
    the signal to the first acknowledgement after it, the last acknowledged before the signal)."""
    old = leader_of(shard, resolver)
    new = shard.other(old.name)
    load = Load(shard, resolver)
    task = asyncio.create_task(load.run())
    await until(lambda: load.last() >= 100 or task.done(), 30, "100 commands acknowledged")
    assert old.proc is not None
    t_signal = time.monotonic()
    old.proc.send_signal(sig)
    before = load.last()
    await until(lambda: load.last() >= before + 50 or task.done(), 30, "50 more after the failover")
    load.stopped = True
    await task  # raises what the load met
    # From the signal to the acknowledgement of the first command the old leader cannot have
    # answered (before + 1 may have been in flight, answered just as the signal went).
    handover = load.first_after(before + 2, t_signal)
    print(f"\n{signal.Signals(sig).name} of the leader: the follower acknowledged {handover:.2f} s later")
    assert resolver.address(shard.name) == new.address
    return old, new, load, handover, before


async def check_nothing_lost(shard: Shard, new: Member, load: Load) -> mpb.GetMatchingStatusResponse:
    st = await status(new.address, shard.security)
    # Every acknowledged command is there, once, and nothing else (the load sent no other).
    assert st.source_sequences[SOURCE] == load.last() == st.applied_sequence
    events = await events_of(new.address, shard.security, st.event_sequence)  # 1..n, no gap or dup
    assert len(events) == st.event_sequence
    # Each command's events once, together, in the chain's order: 1, 2, ..., last.
    commands: list[int] = []
    for e in (ev.MatchingEvent.FromString(e) for e in events):
        if not commands or commands[-1] != e.command_sequence:
            commands.append(e.command_sequence)
    assert commands == list(range(1, load.last() + 1))
    return st


@pytest.mark.slow
def test_sigkill_of_the_leader_the_follower_leads_nothing_lost(shard: Shard) -> None:
    resolver = shard.resolver()
    try:

        async def scenario() -> None:
            old, new, load, handover, _ = await failover(shard, resolver, signal.SIGKILL)
            assert handover < BOUND_S + 2.0, handover  # session + election + promotion + client retry
            st = await check_nothing_lost(shard, new, load)
            # The killed leader restarts as a follower and catches up to the same state.
            old.start()
            await until(lambda: old.log.count(READY) == 2, 30, "restart")
            await caught_up(old.address, shard.security, st.event_sequence, timeout=20)
            again = await status(old.address, shard.security)
            assert again.state_hash == st.state_hash and again.applied_sequence == st.applied_sequence

        asyncio.run(scenario())
    finally:
        resolver.close()


@pytest.mark.slow
def test_sigstop_of_the_leader_the_follower_leads_and_the_woken_one_cannot_write(shard: Shard) -> None:
    resolver = shard.resolver()
    try:

        async def scenario() -> None:
            old, new, load, handover, before = await failover(shard, resolver, signal.SIGSTOP)
            assert handover < BOUND_S + 2.0, handover
            st = await check_nothing_lost(shard, new, load)
            nxt = place(load.last() + 1)
            assert old.proc is not None
            # A write waits at the frozen leader's address, one its own state takes (the chain after
            # what it applied: `before`, or the one in flight when it froze); then it wakes.
            stale = [place(before + 1), place(before + 2)]
            for cmd in stale:
                cmd.place_order.user_id = 99
            async with MatchingClient.at(old.address, security=shard.writer(), timeout=4) as c:
                attempt = asyncio.create_task(c.submit_commands(SOURCE, stale))
                await asyncio.sleep(0.3)
                old.proc.send_signal(signal.SIGCONT)
                with pytest.raises(ClientError) as refused:
                    await attempt
            code = await asyncio.to_thread(old.proc.wait, 30)
            assert code == EXIT_WRITER_FAILED, (code, old.log[-3000:])
            fenced = "FencedError" in old.log
            assert fenced or "deposed as leader" in old.log
            how = "its append was fenced by the stream" if fenced else "ZooKeeper told it first (deposed)"
            print(f"the woken leader: {how}; exit code {code}; the write got: {refused.value}")
            after = await status(new.address, shard.security)
            assert after.applied_sequence == st.applied_sequence  # nothing of the old leader's
            assert after.source_sequences[SOURCE] == load.last()
            async with MatchingClient.at(new.address, security=shard.security) as c:
                for side in (types_pb2.SIDE_BUY, types_pb2.SIDE_SELL):
                    req = mpb.ListBookOrdersRequest(market="BTC_USDT", side=side, user_id=99)
                    assert not (await c.list_book_orders(req)).orders
            async with MatchingClient.resolve(resolver, shard.name, security=shard.writer()) as c:
                assert await c.submit_commands(SOURCE, [nxt]) == nxt.source_sequence  # the chain goes on
            check = JetStreamJournals(shard.nats, service=shard.name)
            with contextlib.closing(check):
                assert check.open("commands").last_seq == st.applied_sequence + 1
                check.forget("commands")

        asyncio.run(scenario())
    finally:
        resolver.close()
