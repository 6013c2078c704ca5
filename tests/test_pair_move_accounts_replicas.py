"""A pair moved between matching shards under load while accounts runs in cluster mode, against the
real ZooKeeper and NATS: accounts-0 as two replicas (leader + hot follower, its journal a JetStream
stream), matching-0 (owning every market) and matching-1 (owning none) each one cluster-mode replica,
none at its configured address (everything finds the leaders through ZooKeeper). The operator
(services.cluster.operator, the code of `exchange cluster move-pair`) runs with the cluster's resolver:
its RouteMarket and GetAccountsStatus calls must reach the accounts leader.

While traders keep placing crossing and resting BTC_USDT orders (and ETH_USDT orders) through the
accounts leader, BTC_USDT moves from matching-0 to matching-1. Checked: every order is accepted or
refused with UNAVAILABLE (MARKET_MOVING, or SHARD_BEHIND) and accepted, new, when resent (none lost,
none refused otherwise); the resting orders rest on the new shard in their priority and a later fill of
them settles once; every BTC_USDT order open in accounts rests on the new shard and the other way
round; the balance invariant holds; the accounts follower ends with the leader's state hash. Then the
accounts leader is killed (SIGKILL), the follower leads with the moved route, and the pair moves back
with the command line (`exchange cluster move-pair`, the resolver of the configuration's [cluster]
zookeeper, a configuration naming the dead replica's address) and trades on matching-0 again; the
killed replica restarts as a follower with the leader's state hash.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from services.clients import AccountsClient, Clients, MatchingClient
from services.cluster.operator import Operator
from services.cluster.pairmap import PairEntry, ZooKeeperPairMap
from services.cluster.servers import ZooKeeper
from services.common.config import load_config
from services.common.errors import Reason
from testkit.cluster import ROOT
from tests.cluster_fixtures import nats_local, zookeeper
from tests.test_accounts_replicas import (
    NAME,
    READY,
    SOURCE,
    Exchange,
    assert_balanced,
    caught_up,
    leader_of,
    running_exchange,
    status,
)
from tests.test_matching_replicas import until
from tests.test_pair_move import place_until_accepted, trader_order

pytestmark = pytest.mark.slow
__all__ = ["nats_local", "zookeeper"]

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL
LIMIT = types_pb2.ORDER_TYPE_LIMIT
MARKET = "BTC_USDT"
SHARDS = {"matching-0": ("m0",), "matching-1": ("m1",)}  # matching-0 owns every market at first
TRADERS = list(range(1, 7))
RESTING = [20, 21, 20, 21, 20]  # the users of the resting orders, in their time order
TAKER = 23
LEADING = '"msg":"leading"'
RETRYABLE = (Reason.MARKET_MOVING, Reason.SHARD_BEHIND)


@pytest.fixture
def exchange(tmp_path: Path, zookeeper: ZooKeeper, nats_local: list[str]) -> Iterator[Exchange]:
    with running_exchange(tmp_path, zookeeper, nats_local, SHARDS) as ex:
        yield ex


class Traders:
    """Traders placing BTC_USDT limit orders around 30000 (half of them crossing) and ETH_USDT orders
    through the accounts leader, without the client library's retries; an order refused retryably is
    sent again with its client_order_id after the refusal's delay until accepted."""

    def __init__(self, accounts: AccountsClient) -> None:
        self.accounts = accounts
        self.accepted: dict[str, tuple[int, int]] = {}  # client order id -> (user, order id)
        self.refused: Counter[str] = Counter()  # by reason
        self.stop = asyncio.Event()

    async def trader(self, user: int) -> None:
        rng = random.Random(user)
        n = 0
        while not self.stop.is_set():
            n += 1
            req = trader_order(user, n, rng)
            cid = req.client_order_id
            resp, refusals = await place_until_accepted(self.accounts, req, RETRYABLE)
            self.refused.update(refusals)
            assert not resp.duplicate, (cid, resp)  # a refused order changed nothing
            self.accepted[cid] = (user, resp.order.order_id)
            await asyncio.sleep(0.005)


async def book(m: MatchingClient, side: types_pb2.Side) -> list[mpb.BookOrder]:
    out: list[mpb.BookOrder] = []
    token = ""
    while True:
        req = mpb.ListBookOrdersRequest(market=MARKET, side=side, page_size=500, page_token=token)
        resp = await m.list_book_orders(req)
        out.extend(resp.orders)
        if not (token := resp.next_page_token):
            return out


async def open_orders(c: AccountsClient, user: int) -> set[int]:
    resp = await c.list_open_orders(apb.ListOpenOrdersRequest(user_id=user, market=MARKET, page_size=1000))
    assert not resp.next_page_token
    return {o.order_id for o in resp.orders}


async def settled(
    c: AccountsClient, shards: dict[str, MatchingClient], timeout: float = 30
) -> apb.GetAccountsStatusResponse:
    """Until every matching shard applied everything accounts forwarded to it and accounts settled
    every event of every shard; the audited status."""
    deadline = time.monotonic() + timeout
    while True:
        st = await c.get_accounts_status()
        ms = {name: await m.get_matching_status() for name, m in shards.items()}
        if (
            st.queue_depth == 0
            and not any(st.outbox_pending.values())
            and all(
                st.settled_sequences.get(name, 0) == m.event_sequence
                and m.source_sequences.get(SOURCE, 0) == st.forwarded_sequences.get(name, 0)
                for name, m in ms.items()
            )
        ):
            await asyncio.sleep(0.1)
            again = await c.get_accounts_status(apb.GetAccountsStatusRequest(with_audit=True))
            if again.applied_sequence == st.applied_sequence:
                return again
        assert time.monotonic() < deadline, f"accounts did not settle: {st} / {ms}"
        await asyncio.sleep(0.05)


async def trades_after(m: MatchingClient, after: int) -> list[ev.TradeExecuted]:
    """The BTC_USDT trades among the shard's events after `after`."""
    end = (await m.get_matching_status()).event_sequence
    out: list[ev.TradeExecuted] = []
    if end <= after:
        return out
    stream = m.stream_events(mpb.StreamEventsRequest(from_sequence=after + 1), timeout=20)
    async for resp in stream:
        for e in resp.events:
            if e.market == MARKET and e.WhichOneof("event") == "trade_executed":
                out.append(e.trade_executed)
        if resp.events and resp.events[-1].sequence >= end:
            break
    await stream.aclose()
    return out


async def place(
    c: AccountsClient,
    user: int,
    side: types_pb2.Side,
    price: str,
    amount: str,
    tif: types_pb2.TimeInForce = types_pb2.TIME_IN_FORCE_GTC,
) -> int:
    req = apb.PlaceOrderRequest(
        user_id=user, market=MARKET, side=side, type=LIMIT, price=price, amount=amount, time_in_force=tif
    )
    return int((await c.place_order(req)).order.order_id)


async def same_state(ex: Exchange, leader: str, follower: str, applied: int) -> str:
    """The follower reached the leader's command `applied` with the leader's state; the hash."""
    await caught_up(ex, follower, applied, timeout=20)
    lead, follow = await status(ex, leader), await status(ex, follower)
    assert lead.applied_sequence == follow.applied_sequence == applied
    assert follow.state_hash == lead.state_hash, (lead, follow)
    assert dict(follow.market_routes) == dict(lead.market_routes)
    assert list(follow.halted_markets) == list(lead.halted_markets)
    return lead.state_hash


def test_a_pair_moves_under_load_with_accounts_as_leader_and_follower(
    exchange: Exchange, zookeeper: ZooKeeper
) -> None:
    ex = exchange
    resolver = ex.resolver()
    pairs = ZooKeeperPairMap(zookeeper.hosts, root=ex.zk_root)
    try:
        leader = leader_of(ex, resolver)
        follower = ex.other(leader.name)
        print(f"\naccounts-0: leader {leader.name} ({leader.address}), follower {follower.name}")

        async def scenario() -> None:
            clients = Clients(resolver, security=ex.security, timeout=10)
            c = clients.accounts
            m0, m1 = clients.matching("matching-0"), clients.matching("matching-1")
            shards = {"matching-0": m0, "matching-1": m1}
            try:
                for user in [*TRADERS, *set(RESTING), TAKER]:
                    for asset, amount in (("USDT", "10000000"), ("BTC", "100"), ("ETH", "1000")):
                        await c.deposit(
                            apb.DepositRequest(
                                user_id=user, asset=asset, amount=amount, business="d", business_id=asset
                            )
                        )
                # Resting orders far from the traded band, in a known time order at one price each side.
                rest_bids, rest_asks = [], []
                for i, user in enumerate(RESTING):
                    rest_bids.append(await place(c, user, BUY, "28000", f"0.0{i + 1}"))
                    rest_asks.append(await place(c, user, SELL, "32000", f"0.0{i + 1}"))
                await settled(c, shards)
                bids = [o.order_id for o in await book(m0, BUY) if o.price_ticks == 2_800_000]
                assert bids == rest_bids

                # The move, under load; the operator reaches the accounts leader through the resolver.
                load = Traders(c)
                traders = [asyncio.create_task(load.trader(u)) for u in TRADERS]
                await asyncio.sleep(1.5)
                before = len(load.accepted)
                operator = Operator(clients, load_config(ex.config_path), pairs, part_orders=50)
                await operator.add_shard("matching-1")  # reachable (its node exists: its election's)
                report = await operator.move_pair(MARKET, "matching-1")
                during = len(load.accepted)
                await asyncio.sleep(1.5)
                load.stop.set()
                await asyncio.gather(*traders)
                print(
                    f"move: {report.orders} resting orders in {report.parts} parts, halted "
                    f"{report.halted_s * 1000:.0f} ms, total {report.total_s * 1000:.0f} ms, "
                    f"steps {report.steps}; "
                    f"orders accepted {len(load.accepted)} ({during - before} during the move), "
                    f"refused retryably {dict(load.refused)}"
                )
                assert report.from_shard == "matching-0" and report.to_shard == "matching-1"
                assert report.orders >= 10 and report.parts == -(-report.orders // 50)
                assert len(load.accepted) > during + 20 and during > before  # the load went on
                assert load.refused[Reason.MARKET_MOVING] > 0  # orders sent during the move: resent
                assert pairs.get(MARKET) == PairEntry("matching-1", "", 2)

                st = await settled(c, shards)
                assert_balanced(st)
                assert dict(st.market_routes) == {MARKET: "matching-1"} and not st.halted_markets
                st0 = await m0.get_matching_status()
                assert dict(st0.moved_out) == {MARKET: "matching-1"}
                assert MARKET not in {x.market for x in st0.markets}
                # The resting orders rest on the new shard, in their priority.
                assert [o.order_id for o in await book(m1, BUY) if o.price_ticks == 2_800_000] == rest_bids
                assert [o.order_id for o in await book(m1, SELL) if o.price_ticks == 3_200_000] == rest_asks
                # None lost: what accounts holds open is what rests on the new shard, every order
                # accepted is known to accounts and none is left pending.
                in_book = {o.order_id for side in (BUY, SELL) for o in await book(m1, side)}
                in_accounts: set[int] = set()
                for user in [*TRADERS, *set(RESTING), TAKER]:
                    in_accounts |= await open_orders(c, user)
                assert in_book == in_accounts
                for user, oid in load.accepted.values():
                    o = (await c.get_order(apb.GetOrderRequest(user_id=user, order_id=oid))).order
                    assert o.status != types_pb2.ORDER_STATUS_PENDING, o
                moved_trades = await trades_after(m1, 0)
                assert moved_trades  # the pair traded on its new shard (the load's crossing orders)

                # A later fill of the resting bids (the taker sells them all): from the new shard,
                # settled once, in their old priority.
                before_fill = (await m1.get_matching_status()).event_sequence
                lots = sum(Decimal(o.remaining_lots) for o in await book(m1, BUY)) * Decimal("0.00001")
                await place(c, TAKER, SELL, "28000", str(lots), tif=types_pb2.TIME_IN_FORCE_IOC)
                st = await settled(c, shards)
                assert_balanced(st)
                for oid, user in zip(rest_bids, RESTING, strict=True):
                    o = (await c.get_order(apb.GetOrderRequest(user_id=user, order_id=oid))).order
                    assert o.status == types_pb2.ORDER_STATUS_FILLED, o
                fills = await trades_after(m1, before_fill)
                assert [t.maker_order_id for t in fills if t.price_ticks == 2_800_000] == rest_bids
                assert len({t.trade_id for t in fills}) == len(fills)
                assert st.settled_sequences["matching-1"] == (await m1.get_matching_status()).event_sequence
                # The follower applied the same: the halt, the switch, every settlement.
                moved_hash = await same_state(ex, leader.address, follower.address, st.applied_sequence)
                print(f"follower state hash = leader's after the move: {moved_hash[:16]}…")
                async with AccountsClient.at(follower.address, security=ex.security) as f:
                    o = (
                        await f.get_order(apb.GetOrderRequest(user_id=RESTING[0], order_id=rest_bids[0]))
                    ).order
                    assert o.status == types_pb2.ORDER_STATUS_FILLED
            finally:
                await clients.close()

            # The accounts leader dies; the follower leads, holding the route to the new shard.
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(leader.proc.wait, 10)
            t_kill = time.monotonic()

            def follower_leads() -> bool:
                info = resolver.leader(NAME)
                return info is not None and info.address == follower.address and LEADING in follower.log

            await until(follower_leads, 20, "the accounts follower to lead")
            print(f"accounts leader killed: the follower leads {time.monotonic() - t_kill:.2f} s later")
            # And back with the command line: the resolver of the configuration's [cluster] zookeeper,
            # with a configuration whose [accounts] address is the dead leader's (the CLI must find
            # the accounts leader through ZooKeeper).
            config = ex.config_path.read_text()
            named = f'[accounts]\nlisten = "{ex.members["a"].address}"'
            assert named in config
            cli_config = ex.config_path.with_name("cli.toml")
            cli_config.write_text(config.replace(named, f'[accounts]\nlisten = "{leader.address}"'))
            cli = [sys.executable, "-m", "services.cli", "--config", str(cli_config), "cluster"]
            back = await asyncio.to_thread(
                subprocess.run,
                [
                    *cli,
                    "move-pair",
                    MARKET,
                    "--to",
                    "matching-0",
                    "--zk",
                    ex.zk_hosts,
                    "--zk-root",
                    ex.zk_root,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert back.returncode == 0 and f"{MARKET} moved from matching-1 to matching-0" in back.stdout, (
                back
            )
            clients = Clients(resolver, security=ex.security, timeout=10)
            c = clients.accounts
            shards = {
                "matching-0": clients.matching("matching-0"),
                "matching-1": clients.matching("matching-1"),
            }
            try:
                bid = await place(c, 20, BUY, "27000", "0.01")
                st = await settled(c, shards)
                assert_balanced(st)
                assert bid in {o.order_id for o in await book(shards["matching-0"], BUY)}
                print(f"moved back by the CLI: {back.stdout.strip()}; routes {dict(st.market_routes)}")
                assert not st.market_routes and not st.halted_markets  # where the configuration has it
                assert pairs.get(MARKET) == PairEntry("matching-0", "", 4)
            finally:
                await clients.close()
            # The killed replica comes back as a follower and holds the same state.
            leader.start()
            await until(lambda: leader.log.count(READY) == 2, 30, "the killed accounts replica to restart")
            await same_state(ex, follower.address, leader.address, st.applied_sequence)

        asyncio.run(scenario())
    finally:
        pairs.close()
        resolver.close()
