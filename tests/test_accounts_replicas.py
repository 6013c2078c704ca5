"""An accounts shard as leader + hot follower (python -m services.accounts in cluster mode), against the
real ZooKeeper and NATS: two replica processes of accounts-0 and one matching shard (one cluster-mode
replica, not at its configured address: the accounts leader's links find it through ZooKeeper), the
client library through the ZooKeeperResolver.

- the follower serves the same reads as the leader (balances, orders, status and state hash, the
  accounts and user event streams byte for byte); a write sent to it (unary, and SubmitOrders) is
  refused (FAILED_PRECONDITION, NOT_LEADER, metadata "leader" = the leader's address) and the client
  library redirects it to the leader;
- slow: SIGKILL and SIGSTOP of the accounts leader under a steady load of orders (one at a time, each
  with a client_order_id, sent again until acknowledged): the follower leads within the session
  timeout + replay, every acknowledged order is there with its number, the balances and orders equal
  those of a run without faults (the same load on a plain exchange, testkit.cluster), every matching
  event is settled once (settled = the shard's last event, nothing quarantined), history (finding the
  leaders through ZooKeeper: [cluster] zookeeper) stored the same trades and balance changes as the
  run without faults, and the balance
  invariant holds (GetAccountsStatus audit); the woken frozen leader cannot write and stops (exit code
  70). The handover times are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import replica_pb2, types_pb2

from services.clients.accounts import AccountsClient
from services.clients.errors import ClientError
from services.clients.history import HistoryClient
from services.clients.matching import MatchingClient
from services.clients.resolver import StaticResolver
from services.clients.zk_resolver import ZooKeeperResolver
from services.cluster.servers import ZooKeeper
from services.common.config import load_config
from services.common.failstop import EXIT_WRITER_FAILED
from services.common.journal.jetstream import JetStreamJournals
from services.common.security import Security, process_security
from testkit.cluster import DEFAULT_MARKETS, Cluster, free_port
from tests.cluster_fixtures import nats_local, zookeeper  # noqa: F401
from tests.test_matching_replicas import READY as MATCHING_READY
from tests.test_matching_replicas import Member, until, wait_for

SESSION_S = 2.0
BOUND_S = 2 * (SESSION_S + 0.5)
SOURCE = "accounts-0"  # the shard's source (its stream's name)
NAME = "accounts"  # its resolver name (its election's)
READY = '"msg":"accounts replica ready"'
USERS = (1, 2, 3, 4)
ASSETS = ("BTC", "USDT")
ORDERS = 360  # the load: every run places these, in this order
KILL_AFTER = 120  # acknowledged orders before the signal
_ids = count(1)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def order(i: int) -> apb.PlaceOrderRequest:
    """Order i of the load: users 1 and 3 sell, 2 and 4 buy, at prices and amounts that cross often
    and partly. The funds are ample, so whether an order is taken never depends on timing."""
    return apb.PlaceOrderRequest(
        user_id=USERS[i % 4],
        market="BTC_USDT",
        side=types_pb2.SIDE_SELL if i % 2 == 0 else types_pb2.SIDE_BUY,
        type=types_pb2.ORDER_TYPE_LIMIT,
        price=str(30000 + (i % 5) * 10 - (i % 2) * 5),
        amount=f"0.00{10 + i % 3}",
        client_order_id=f"o{i}",
    )


async def deposits(c: AccountsClient) -> None:
    for user in USERS:
        for asset, amount in (("BTC", "10"), ("USDT", "1000000")):
            await c.deposit(
                apb.DepositRequest(
                    user_id=user, asset=asset, amount=amount, business="test", business_id=f"{user}-{asset}"
                )
            )


@dataclass
class Load:
    """The orders one at a time; one that got no answer (a leader gone or frozen, an election under
    way) is sent again with its client_order_id until acknowledged. Each acknowledgement is recorded
    as (order index, order id, time)."""

    client: AccountsClient
    acked: list[tuple[int, int, float]] = field(default_factory=list)
    retried: int = 0

    async def run(self, n: int = ORDERS) -> None:
        for i in range(n):
            req = order(i)
            give_up = time.monotonic() + 20
            while True:
                try:
                    resp = await self.client.place_order(req, timeout=1.0)
                    break
                except ClientError as err:
                    again = err.code in RETRYABLE or err.reason == "NOT_LEADER"
                    if not again or time.monotonic() > give_up:
                        raise
                    self.retried += 1
                    await asyncio.sleep(0.02)
            self.acked.append((i, resp.order.order_id, time.monotonic()))

    def last(self) -> int:
        return len(self.acked)

    def first_after(self, k: int, t: float) -> float:
        """Seconds from `t` to the acknowledgement of the k-th order (counting from 1)."""
        return self.acked[k - 1][2] - t


Outcome = dict[str, Any]


async def outcome(c: AccountsClient, acked: list[tuple[int, int, float]]) -> Outcome:
    """What the load left: every user's balances (and the fee account's), every order's state."""
    balances = {}
    for user in (0, *USERS):
        resp = await c.get_balances(apb.GetBalancesRequest(user_id=user, assets=list(ASSETS)))
        balances[user] = [(b.asset, b.available, b.frozen) for b in resp.balances]
    orders = {}
    for i, order_id, _ in acked:
        o = (await c.get_order(apb.GetOrderRequest(user_id=USERS[i % 4], order_id=order_id))).order
        orders[i] = (o.order_id, o.status, o.filled_amount, o.filled_quote, o.remaining_amount, o.fee)
    return {"balances": balances, "orders": orders}


async def quiet(
    c: AccountsClient, matching: MatchingClient, timeout: float = 30
) -> apb.GetAccountsStatusResponse:
    """Until matching applied everything accounts forwarded and accounts settled every matching event;
    the audited status."""
    deadline = time.monotonic() + timeout
    while True:
        st = await c.get_accounts_status()
        m = await matching.get_matching_status()
        if (
            st.queue_depth == 0
            and st.settled_sequences.get("matching-0", 0) == m.event_sequence
            and m.source_sequences.get(SOURCE, 0) == max(st.forwarded_sequences.values(), default=0)
            and not any(st.outbox_pending.values())
        ):
            await asyncio.sleep(0.1)
            again = await c.get_accounts_status(apb.GetAccountsStatusRequest(with_audit=True))
            if again.applied_sequence == st.applied_sequence:
                return again
        if time.monotonic() > deadline:
            raise AssertionError(f"accounts did not settle: {st} / {m}")
        await asyncio.sleep(0.05)


async def history_of(
    address: str, security: Security, accounts_events: int, matching_events: int, timeout: float = 30
) -> dict[str, Any]:
    """What history stored of the load once it holds every accounts and matching event: every user's
    trades and balance changes, without their times and the balance each left."""
    async with HistoryClient.at(address, security=security) as h:
        want = {SOURCE: accounts_events, "matching-0": matching_events}
        deadline = time.monotonic() + timeout
        while True:
            st = await h.get_history_status()
            assert not st.failed_sequences, st
            if {k: st.checkpoints.get(k, 0) for k in want} == want:
                break
            assert time.monotonic() < deadline, f"history did not catch up: {st.checkpoints} / {want}"
            await asyncio.sleep(0.1)
        trades: dict[int, list[tuple[Any, ...]]] = {}
        changes: dict[int, list[tuple[Any, ...]]] = {}
        for user in USERS:  # (history answers for users, not for the fee account)
            trades[user], token = [], ""
            while True:
                t = await h.list_user_trades(
                    hpb.ListUserTradesRequest(user_id=user, page_size=1000, page_token=token)
                )
                trades[user] += [
                    (x.trade_id, x.market, x.order_id, x.side, x.role, x.price, x.amount, x.fee)
                    for x in t.trades
                ]
                if not (token := t.next_page_token):
                    break
            changes[user], token = [], ""
            while True:
                b = await h.list_balance_history(
                    hpb.ListBalanceHistoryRequest(user_id=user, page_size=1000, page_token=token)
                )
                changes[user] += [
                    (x.asset, x.business, x.business_id, x.available_change, x.frozen_change)
                    for x in b.entries
                ]
                if not (token := b.next_page_token):
                    break
        # Compared as multisets: history lists newest first by time, and the two runs interleave the
        # settlements with the next orders differently (so do the balances between two changes; the
        # final balances are compared from accounts). A change stored twice or lost still shows.
        return {
            "trades": {u: sorted(t) for u, t in trades.items()},
            "balance_changes": {u: sorted(c) for u, c in changes.items()},
        }


def assert_balanced(st: apb.GetAccountsStatusResponse) -> None:
    assert st.audit and st.quarantined_events == 0
    for a in st.audit:
        assert a.total == a.external, f"{a.asset}: balances {a.total} != deposits-withdrawals {a.external}"
        assert a.frozen == a.held, f"{a.asset}: frozen {a.frozen} != held by open orders {a.held}"


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The load on a plain exchange (accounts and matching with file journals, no faults)."""
    cluster = Cluster(tmp_path_factory.mktemp("fault-free"), with_history=True)
    try:
        cluster.start()

        async def run() -> Outcome:
            async with cluster.client("accounts") as c:
                await deposits(c)
                load = Load(c)
                await load.run()
                st = cluster.wait_quiet()
                done = await outcome(c, load.acked)
                m = cluster.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
                history = cluster.addresses["history"]
                sec = cluster.security()
                done["history"] = await history_of(history, sec, st.event_sequence, m.event_sequence)
                return done

        return asyncio.run(run())
    finally:
        cluster.stop()


@dataclass
class Exchange:
    """accounts-0 as two replicas, "a" and "b", and the matching shards as cluster-mode replicas (by
    default matching-0 as one process, `matching`)."""

    config_path: Path
    security: Security
    zk_hosts: str
    zk_root: str
    matching: Member  # the first replica of matching-0
    history: Member  # with the config's [cluster] zookeeper: it follows the leaders ZooKeeper names
    members: dict[str, Member] = field(default_factory=dict)  # accounts-0's replicas
    shards: dict[str, dict[str, Member]] = field(default_factory=dict)  # each matching shard's replicas

    def resolver(self) -> ZooKeeperResolver:
        fallback = StaticResolver.from_config(load_config(self.config_path))
        return ZooKeeperResolver(self.zk_hosts, root=self.zk_root, fallback=fallback, session_timeout_s=5)

    def other(self, name: str) -> Member:
        return next(m for m in self.members.values() if m.name != name)


ONE_MATCHING_REPLICA: Mapping[str, tuple[str, ...]] = {"matching-0": ("m",)}


@contextlib.contextmanager
def running_exchange(
    tmp_path: Path,
    zookeeper: ZooKeeper,  # noqa: F811
    nats_local: list[str],  # noqa: F811
    shards: Mapping[str, tuple[str, ...]] = ONE_MATCHING_REPLICA,
) -> Iterator[Exchange]:
    """accounts-0 as replicas "a" and "b", history, and each matching shard of `shards` (shard -> its
    replicas' member names, unique over all shards; the first shard owns every market) as cluster-mode
    replicas, none at its configured address (accounts and history find the leaders in ZooKeeper).
    Yields once every shard has a leader and every replica serves."""
    tag = f"t{os.getpid()}x{next(_ids)}"
    replicas = [m for names in shards.values() for m in names]
    addresses = {m: f"127.0.0.1:{free_port()}" for m in ("a", "b", "history", *replicas)}
    unused = {shard: f"127.0.0.1:{free_port()}" for shard in shards}
    config_path = tmp_path / "exchange.toml"
    shard_tables = []
    for shard in shards:  # where they are not: accounts finds their leaders in ZooKeeper
        shard_tables += [f'[shards."{shard}"]', f'listen = "{unused[shard]}"']
    config_path.write_text(
        "\n".join(
            [
                'data_dir = "data"',
                "[security]",
                'transport = "local"',
                "[accounts]",
                f'listen = "{addresses["a"]}"',
                *shard_tables,
                "[history]",
                f'listen = "{addresses["history"]}"',
                "[cluster]",  # history finds the leaders of accounts and matching in ZooKeeper
                f'zookeeper = "{zookeeper.hosts}"',
                f'zk_root = "/{tag}"',
                "",
                "[assets]" + DEFAULT_MARKETS,
            ]
        )
    )
    security = process_security(load_config(config_path), "admin")  # the credentials, made here first
    cluster = ["--zk", zookeeper.hosts, "--nats", ",".join(nats_local), "--zk-root", f"/{tag}"]
    cluster += ["--stream-prefix", tag, "--session-timeout", str(SESSION_S)]
    matching: dict[str, dict[str, Member]] = {}
    for shard, names in shards.items():
        matching[shard] = {}
        for m in names:
            argv = [sys.executable, "-m", "services.matching", "--config", str(config_path), "--shard", shard]
            argv += [*cluster, "--member", m, "--listen", addresses[m]]
            argv += ["--data-dir", str(tmp_path / m)]
            matching[shard][m] = Member(m, addresses[m], tmp_path / m, argv)
    argv = [sys.executable, "-m", "services.history", "--config", str(config_path)]
    history = Member("history", addresses["history"], tmp_path / "history", argv)
    first = next(iter(matching[next(iter(shards))].values()))
    ex = Exchange(config_path, security, zookeeper.hosts, f"/{tag}", first, history, shards=matching)
    for m in ("a", "b"):
        argv = [sys.executable, "-m", "services.accounts", "--config", str(config_path)]
        argv += [*cluster, "--member", m, "--listen", addresses[m], "--data-dir", str(tmp_path / m)]
        ex.members[m] = Member(m, addresses[m], tmp_path / m, argv)
    every_matching = [m for replicas_of in matching.values() for m in replicas_of.values()]
    try:
        for member in every_matching:
            member.start()
        for member in ex.members.values():
            member.start()
        for shard, replicas_of in matching.items():
            wait_for(
                lambda r=replicas_of: any('"msg":"leading"' in m.log for m in r.values()),
                30,
                f"{shard} to lead",
            )
        for member in every_matching:
            wait_for(lambda m=member: MATCHING_READY in m.log, 30, f"replica {member.name} to serve")
        for member in ex.members.values():
            wait_for(lambda m=member: READY in m.log, 30, f"replica {member.name} to serve")
        history.start()
        wait_for(lambda: '"msg":"history ready"' in history.log, 30, "history to serve")
        yield ex
    finally:
        for member in (history, *ex.members.values(), *every_matching):
            member.stop()
        for service in (SOURCE, *shards):
            cleanup = JetStreamJournals(nats_local, service=service, prefix=tag)
            cleanup.delete_streams()
            cleanup.close()


@pytest.fixture
def exchange(tmp_path: Path, zookeeper: ZooKeeper, nats_local: list[str]) -> Iterator[Exchange]:  # noqa: F811
    with running_exchange(tmp_path, zookeeper, nats_local) as ex:
        yield ex


def leader_of(ex: Exchange, resolver: ZooKeeperResolver, timeout: float = 20.0) -> Member:
    found: list[Member] = []

    def elected() -> bool:
        info = resolver.leader(NAME)
        if info is None:
            return False
        found[:] = [m for m in ex.members.values() if m.address == info.address]
        return bool(found) and '"msg":"leading"' in found[0].log

    wait_for(elected, timeout, "an accounts leader to be elected and promoted")
    return found[0]


def at(ex: Exchange, address: str, **kw: Any) -> AccountsClient:
    return AccountsClient.at(address, security=ex.security, name=NAME, **kw)


async def status(ex: Exchange, address: str) -> apb.GetAccountsStatusResponse:
    async with at(ex, address) as c:
        return await c.get_accounts_status(apb.GetAccountsStatusRequest(with_state_hash=True))


async def caught_up(ex: Exchange, address: str, applied: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await status(ex, address)).applied_sequence < applied:
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} did not reach command {applied}")
        await asyncio.sleep(0.02)


async def account_events(ex: Exchange, address: str, last: int) -> list[bytes]:
    out: list[bytes] = []
    async with at(ex, address) as c:
        stream = c.stream_account_events(apb.StreamAccountEventsRequest(from_sequence=1), timeout=20)
        async for resp in stream:
            for e in resp.events:
                assert e.sequence == len(out) + 1, (e.sequence, len(out))
                out.append(e.SerializeToString())
            if len(out) >= last:
                break
        await stream.aclose()
    return out


async def user_events(ex: Exchange, address: str, user: int) -> list[bytes]:
    """A user's events as the replica at `address` streams them, until none come for 0.5 s."""
    out: list[bytes] = []
    async with at(ex, address) as c:
        stream = c.stream_user_events(apb.StreamUserEventsRequest(user_id=user, from_sequence=1), timeout=20)
        try:
            while True:
                resp = await asyncio.wait_for(anext(stream), 0.5)
                out.extend(e.SerializeToString() for e in resp.events)
        except TimeoutError:
            pass
        finally:
            await stream.aclose()
    return out


def test_follower_reads_equal_the_leaders_and_a_write_to_it_is_redirected(exchange: Exchange) -> None:
    ex = exchange
    resolver = ex.resolver()
    try:
        leader = leader_of(ex, resolver)
        follower = ex.other(leader.name)

        async def scenario() -> None:
            async with (
                AccountsClient.resolve(resolver, NAME, security=ex.security) as c,
                MatchingClient.at(ex.matching.address, security=ex.security) as m,
            ):
                await deposits(c)
                load = Load(c)
                await load.run(24)
                lead = await quiet(c, m)
                assert lead.settled_sequences["matching-0"] > 24  # trades were settled
                mine = await outcome(c, load.acked)
            await caught_up(ex, follower.address, lead.applied_sequence)
            lead_st, follow_st = await status(ex, leader.address), await status(ex, follower.address)
            assert lead_st.role == replica_pb2.REPLICA_ROLE_LEADER
            assert follow_st.role == replica_pb2.REPLICA_ROLE_FOLLOWER
            assert follow_st.state_hash == lead_st.state_hash
            assert (follow_st.applied_sequence, follow_st.event_sequence) == (
                lead_st.applied_sequence,
                lead_st.event_sequence,
            )
            assert dict(follow_st.settled_sequences) == dict(lead_st.settled_sequences)
            async with at(ex, follower.address) as f:
                assert await outcome(f, load.acked) == mine  # balances and orders
                for user in USERS:
                    req = apb.ListOpenOrdersRequest(user_id=user, market="BTC_USDT")
                    assert await f.list_open_orders(req) == await c_list(ex, leader.address, req)
            n = lead_st.event_sequence
            assert await account_events(ex, follower.address, n) == await account_events(
                ex, leader.address, n
            )
            for user in (1, 2):
                theirs = await user_events(ex, leader.address, user)
                assert theirs and await user_events(ex, follower.address, user) == theirs

            # Writes at the follower's fixed address: refused, naming the leader; nothing applied.
            async with at(ex, follower.address) as f:
                with pytest.raises(ClientError) as refused:
                    await f.deposit(
                        apb.DepositRequest(
                            user_id=1, asset="BTC", amount="1", business="test", business_id="r1"
                        )
                    )
                err = refused.value
                assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "NOT_LEADER"
                assert err.metadata["leader"] == leader.address and err.metadata["shard"] == SOURCE
                batch = apb.SubmitOrdersRequest(batch_id=1)
                batch.commands.add().place_order.CopyFrom(order(1001))
                with pytest.raises(ClientError) as refused:
                    async for _ in f.submit_orders(_requests([batch])):
                        pass
                assert refused.value.reason == "NOT_LEADER"
                assert refused.value.metadata["leader"] == leader.address
            assert (await status(ex, follower.address)).applied_sequence == lead_st.applied_sequence
            # Through a resolver that names the follower: redirected to the leader, applied once.
            config = load_config(ex.config_path)
            static = StaticResolver.from_config(config)
            static.set(NAME, follower.address)
            async with AccountsClient.resolve(static, NAME, security=ex.security) as c:
                dep = await c.deposit(
                    apb.DepositRequest(user_id=1, asset="BTC", amount="1", business="test", business_id="r1")
                )
                assert not dep.duplicate
                assert static.address(NAME) == leader.address
                static.set(NAME, follower.address)
                batches = [batch]  # and two more: each answered once, in order
                for b, i in ((2, 1003), (3, 1005)):
                    batches.append(apb.SubmitOrdersRequest(batch_id=b))
                    batches[-1].commands.add().place_order.CopyFrom(order(i))
                got = [r async for r in c.submit_orders(_requests(batches))]
                assert [r.batch_id for r in got] == [1, 2, 3]
                assert all(r.results[0].code == 0 and not r.results[0].duplicate for r in got), got
                assert static.address(NAME) == leader.address
                for r, i in zip(got, (1001, 1003, 1005), strict=True):
                    get = apb.GetOrderRequest(user_id=order(i).user_id, order_id=r.results[0].order.order_id)
                    assert (await c.get_order(get)).order.client_order_id == f"o{i}"
                bal = await c.get_balances(apb.GetBalancesRequest(user_id=1, assets=["BTC"]))
                assert bal.balances[0].available == dep.balance.available  # deposited once

        asyncio.run(scenario())
    finally:
        resolver.close()


async def c_list(ex: Exchange, address: str, req: apb.ListOpenOrdersRequest) -> apb.ListOpenOrdersResponse:
    async with at(ex, address) as c:
        return await c.list_open_orders(req)


async def _requests(batches: list[apb.SubmitOrdersRequest]) -> Any:
    for b in batches:
        yield b
        await asyncio.sleep(0.05)  # the next one comes later: the stream is open meanwhile


async def failover(ex: Exchange, resolver: ZooKeeperResolver, sig: int) -> tuple[Member, Member, Load, float]:
    """The load, then `sig` to the leader after KILL_AFTER acknowledgements; returns (old leader, new
    leader, the finished load, handover seconds: from the signal to the acknowledgement of the first
    order the old leader cannot have answered)."""
    old = leader_of(ex, resolver)
    new = ex.other(old.name)
    async with AccountsClient.resolve(resolver, NAME, security=ex.security) as c:
        await deposits(c)
        load = Load(c)
        task = asyncio.create_task(load.run())
        await until(lambda: load.last() >= KILL_AFTER or task.done(), 30, f"{KILL_AFTER} orders acknowledged")
        assert old.proc is not None
        t_signal = time.monotonic()
        old.proc.send_signal(sig)
        before = load.last()
        await task  # raises what the load met
    handover = load.first_after(before + 2, t_signal)
    print(
        f"\n{signal.Signals(sig).name} of the accounts leader: the follower acknowledged {handover:.2f} s "
        f"later ({load.retried} retries)"
    )
    assert resolver.address(NAME) == new.address
    assert '"msg":"leading"' in new.log
    return old, new, load, handover


async def check_against_fault_free(
    ex: Exchange, resolver: ZooKeeperResolver, load: Load, fault_free: Outcome
) -> apb.GetAccountsStatusResponse:
    async with (
        AccountsClient.resolve(resolver, NAME, security=ex.security) as c,
        MatchingClient.resolve(resolver, "matching-0", security=ex.security) as m,  # its leader
    ):
        st = await quiet(c, m)
        assert_balanced(st)
        assert [i for i, _, _ in load.acked] == list(range(ORDERS))
        got = await outcome(c, load.acked)  # every acknowledged order is there, under its number
        assert got["balances"] == fault_free["balances"]
        assert got["orders"] == fault_free["orders"]
        # Every matching event settled once: matching's events are contiguous and accounts settled
        # exactly up to the last (a second settlement would move a balance the comparison above sees).
        ms = await m.get_matching_status()
        assert st.settled_sequences["matching-0"] == ms.event_sequence
        assert ms.source_sequences[SOURCE] == st.forwarded_sequences["matching-0"]
    # History (which found the new leader through ZooKeeper) holds what the run without faults holds.
    stored = await history_of(ex.history.address, ex.security, st.event_sequence, ms.event_sequence)
    assert stored["trades"] == fault_free["history"]["trades"]
    assert stored["balance_changes"] == fault_free["history"]["balance_changes"]
    return st


@pytest.mark.slow
def test_sigkill_of_the_accounts_leader_under_load(exchange: Exchange, fault_free: Outcome) -> None:
    ex = exchange
    resolver = ex.resolver()
    try:

        async def scenario() -> None:
            old, new, load, handover = await failover(ex, resolver, signal.SIGKILL)
            assert handover < BOUND_S + 2.0, handover  # session + election + promotion + client retry
            st = await check_against_fault_free(ex, resolver, load, fault_free)
            # The killed leader restarts as a follower and catches up to the same state.
            old.start()
            await until(lambda: old.log.count(READY) == 2, 30, "restart")
            await caught_up(ex, old.address, st.applied_sequence, timeout=20)
            again = await status(ex, old.address)
            lead = await status(ex, new.address)
            assert again.state_hash == lead.state_hash and again.applied_sequence == lead.applied_sequence

        asyncio.run(scenario())
    finally:
        resolver.close()


@pytest.mark.slow
def test_sigstop_of_the_accounts_leader_the_woken_one_cannot_write(
    exchange: Exchange, fault_free: Outcome
) -> None:
    ex = exchange
    resolver = ex.resolver()
    try:

        async def scenario() -> None:
            old, new, load, handover = await failover(ex, resolver, signal.SIGSTOP)
            assert handover < BOUND_S + 2.0, handover
            st = await check_against_fault_free(ex, resolver, load, fault_free)
            assert old.proc is not None
            # A deposit waits at the frozen leader's address; then it wakes.
            async with at(ex, old.address, timeout=4) as c:
                stale = apb.DepositRequest(
                    user_id=1, asset="USDT", amount="5", business="test", business_id="stale"
                )
                attempt = asyncio.create_task(c.deposit(stale))
                await asyncio.sleep(0.3)
                old.proc.send_signal(signal.SIGCONT)
                with pytest.raises(ClientError) as refused:
                    await attempt
            code = await asyncio.to_thread(old.proc.wait, 30)
            assert code == EXIT_WRITER_FAILED, (code, old.log[-3000:])
            fenced = "FencedError" in old.log
            assert fenced or "deposed as leader" in old.log
            how = "its append was fenced by the stream" if fenced else "ZooKeeper told it first (deposed)"
            print(f"the woken leader: {how}; exit code {code}; the deposit got: {refused.value.code}")
            after = await status(ex, new.address)
            assert after.applied_sequence == st.applied_sequence  # nothing of the old leader's
            async with AccountsClient.resolve(resolver, NAME, security=ex.security) as c:
                again = await outcome(c, load.acked)
                assert again["balances"] == fault_free["balances"]
                dep = await c.deposit(stale)  # the shard goes on, and had not taken it
                assert not dep.duplicate

        asyncio.run(scenario())
    finally:
        resolver.close()
