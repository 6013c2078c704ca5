"""A market handed over through a replicated journal: a matching shard in cluster mode (leader + hot
follower, the JetStream command stream, ZooKeeper election) exports a halted market and imports a
book, each one journaled command that the follower applies from the stream; the operator's calls are
redirected from the follower to the leader; after a SIGKILL of the leader the new leader holds the
imported book, in its priority, and trades on it."""

from __future__ import annotations

import asyncio
import signal

import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from services.clients.matching import MatchingClient
from services.clients.resolver import StaticResolver
from services.matching.engine import MatchingEngine
from services.matching.machine import MatchingMachine, admin_source
from testkit.accounts_sim import default_catalog
from tests.cluster_fixtures import nats_local, zookeeper
from tests.test_matching_replicas import SOURCE, Shard, caught_up, leader_of, place, shard, status, wait_for

pytestmark = pytest.mark.slow
__all__ = ["nats_local", "shard", "zookeeper"]

MARKET = "BTC_USDT"


def halt(seq: int) -> ev.MatchingCommand:
    cmd = ev.MatchingCommand(source=SOURCE, source_sequence=seq, previous_sequence=seq - 1)
    cmd.halt_market.market = MARKET
    return cmd


def foreign_book(to_shard: str) -> ev.MarketBook:
    """A BTC_USDT book exported by another shard (in process): three resting asks at one price."""
    catalog = default_catalog()
    m = MatchingMachine(MatchingEngine("matching-x", catalog.markets_of_shard("matching-0")))
    for seq, (oid, user) in enumerate([(901, 7), (902, 8), (903, 7)], 1):
        cmd = place(2)  # a sell
        cmd.source, cmd.source_sequence, cmd.previous_sequence = "accounts-9", seq, seq - 1
        cmd.place_order.order_id, cmd.place_order.user_id = oid, user
        cmd.place_order.price_ticks = 4_000_000
        assert m.apply(seq, 1_000 + seq, cmd).journal
    h = ev.MatchingCommand(source="accounts-9", source_sequence=4, previous_sequence=3)
    h.halt_market.market = MARKET
    m.apply(4, 2_000, h)
    x = ev.MatchingCommand(source=admin_source("matching-x"), source_sequence=1)
    x.export_market.market, x.export_market.to_shard = MARKET, to_shard
    x.export_market.sources.append("accounts-9")
    book: ev.MarketBook = m.apply(5, 3_000, x).result
    return book


def test_export_and_import_go_through_the_replicated_journal(shard: Shard) -> None:
    resolver = shard.resolver()
    try:
        leader = leader_of(shard, resolver)
        follower = shard.other(leader.name)

        async def scenario() -> None:
            async with MatchingClient.resolve(resolver, shard.name, security=shard.writer()) as c:
                assert await c.submit_commands(SOURCE, [place(i) for i in range(1, 21)]) == 20
                assert await c.submit_commands(SOURCE, [halt(21)]) == 21
            # The operator's calls through a resolver that names the follower: redirected, applied once.
            static = StaticResolver({shard.name: follower.address})
            async with MatchingClient.resolve(static, shard.name, security=shard.security) as admin:
                lead = await status(leader.address, shard.security)
                assert next(m for m in lead.markets if m.market == MARKET).halted_by == [SOURCE]
                resp = await admin.export_market(
                    mpb.ExportMarketRequest(market=MARKET, to_shard="matching-x", sources=[SOURCE])
                )
                exported = resp.book
                assert exported.from_shard == shard.name and len(exported.bids) + len(exported.asks) > 0
                again = await admin.export_market(
                    mpb.ExportMarketRequest(market=MARKET, to_shard="matching-x", sources=[SOURCE])
                )
                assert again.book == exported  # a repeat answers the same book
                lead = await status(leader.address, shard.security)
                await caught_up(follower.address, shard.security, lead.event_sequence)
                follow = await status(follower.address, shard.security)
                assert follow.applied_sequence == lead.applied_sequence
                assert follow.state_hash == lead.state_hash and dict(follow.moved_out) == {
                    MARKET: "matching-x"
                }
                assert MARKET not in {m.market for m in follow.markets}
                # A book from another shard comes in: journaled once, applied by the follower too.
                book = foreign_book(shard.name)
                imported = await admin.import_market(mpb.ImportMarketRequest(book=book))
                assert imported.order_count == 3
                assert (await admin.import_market(mpb.ImportMarketRequest(book=book))).order_count == 3
            for _ in range(500):  # the follower applies the import from the stream
                lead = await status(leader.address, shard.security)
                if (await status(follower.address, shard.security)).applied_sequence == lead.applied_sequence:
                    break
                await asyncio.sleep(0.02)
            lead = await status(leader.address, shard.security)
            follow = await status(follower.address, shard.security)
            assert follow.state_hash == lead.state_hash and not follow.moved_out

        asyncio.run(scenario())
        hash_before = asyncio.run(status(leader.address, shard.security)).state_hash

        # The leader dies; the follower leads with the imported book and trades on it in its priority.
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        wait_for(lambda: '"msg":"leading"' in follower.log, 20, "the follower to lead")

        async def after() -> None:
            st = await status(follower.address, shard.security)
            assert st.state_hash == hash_before
            async with MatchingClient.at(follower.address, security=shard.security) as c:
                asks = await c.list_book_orders(
                    mpb.ListBookOrdersRequest(market=MARKET, side=types_pb2.SIDE_SELL)
                )
            assert [o.order_id for o in asks.orders] == [901, 902, 903]
            buy = place(1)  # a buy, crossing two of the three
            buy.source_sequence, buy.previous_sequence = 22, 21
            buy.place_order.order_id, buy.place_order.user_id = 950, 5
            buy.place_order.price_ticks, buy.place_order.amount_lots = (
                4_000_000,
                2 * asks.orders[0].remaining_lots,
            )
            async with MatchingClient.at(follower.address, security=shard.writer()) as c:
                assert await c.submit_commands(SOURCE, [buy]) == 22
            trades = []
            async with MatchingClient.at(follower.address, security=shard.security) as c:
                async for resp in c.stream_events(
                    mpb.StreamEventsRequest(from_sequence=st.event_sequence + 1)
                ):
                    trades += [
                        e.trade_executed for e in resp.events if e.WhichOneof("event") == "trade_executed"
                    ]
                    if any(
                        e.WhichOneof("event") == "order_done" and e.order_done.order_id == 950
                        for e in resp.events
                    ):
                        break
            assert [t.maker_order_id for t in trades] == [901, 902]
            assert trades[0].trade_id == book_next_trade_id

        book_next_trade_id = foreign_book(shard.name).next_trade_id
        asyncio.run(after())
    finally:
        resolver.close()
