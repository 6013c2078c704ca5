"""Moving a market between matching shards, in process (no gRPC): the accounts machine halts it
(refusing its orders retryably) and forwards the halt in its chain, the old shard exports the book
once every source halted it, the new shard imports it with priority, trade ids and remainders kept,
accounts switches once it settled the old shard up to the export, and the market trades on. Replaying
the recorded journals gives the same machines; snapshots restore them; the outbox rebuilt from the
accounts journal goes where each command went."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2

from services.accounts.ledger import Ledger
from services.accounts.machine import AccountsMachine, outbox_commands
from services.cluster.pairmap import FilePairMap, PairEntry
from services.common.enums import BUY, SELL
from services.common.errors import ExchangeError, FailedPrecondition, Reason, Unavailable
from services.matching.engine import MatchingEngine
from services.matching.handover import book_from_proto, book_parts
from services.matching.machine import MatchingMachine, admin_source
from testkit.accounts_sim import MiniExchange, default_catalog

MARKET = "BTC_USDT"
S, T = "matching-0", "matching-1"


def route(market: str, shard: str = "", halted: bool = False, from_shard: str = "", after: int = 0) -> Any:
    cmd = ev.AccountsCommand()
    r = cmd.route_market
    r.market, r.shard, r.halted, r.from_shard, r.after_sequence = market, shard, halted, from_shard, after
    return cmd


def admin(mx: MiniExchange, shard: str, cmd: ev.MatchingCommand) -> Any:
    """Apply an operator command to a shard as its servicer would; journal it when it changed state."""
    machine = mx.shards[shard]
    cmd.source = admin_source(shard)
    cmd.source_sequence = machine.engine.source_seqs.get(cmd.source, 0) + 1
    out = machine.apply(machine.applied_seq + 1, mx.time_us, cmd)
    if out.journal:
        cmd.time_us = mx.time_us
        mx.shard_journals[shard].append(cmd.SerializeToString())
    return out


def export(mx: MiniExchange, sources: list[str]) -> Any:
    cmd = ev.MatchingCommand()
    cmd.export_market.market, cmd.export_market.to_shard = MARKET, T
    cmd.export_market.sources.extend(sources)
    return admin(mx, S, cmd)


def make() -> MiniExchange:
    catalog = default_catalog()
    mx = MiniExchange(catalog=catalog)
    mx.shards[T] = MatchingMachine(MatchingEngine(T, []), catalog=catalog.markets)
    mx.shards[S].catalog = dict(catalog.markets)  # (a process's own copy, as MatchingMachine makes)
    for d in (mx.shard_journals, mx.pending_events, mx.matching_events, mx.forwarded):
        d[T] = []  # type: ignore[index]
    return mx


def book_orders(machine: MatchingMachine, side: int) -> list[tuple[int, int, int]]:
    book = machine.engine.books[MARKET]
    return [(o.order_id, o.price, o.remaining) for o in book.iter_orders(side)]


def test_a_market_moves_with_its_book_and_replays_the_same() -> None:
    mx = make()
    for user in (2, 3, 4, 5):
        mx.deposit(user, "USDT", "1000000")
        mx.deposit(user, "BTC", "10")
    # Resting asks at two prices (time order within a price), a bid, and a partial fill.
    a1 = mx.place(2, MARKET, SELL, price="30010", amount="0.5").order.order_id
    a2 = mx.place(3, MARKET, SELL, price="30000", amount="0.4").order.order_id
    a3 = mx.place(4, MARKET, SELL, price="30000", amount="0.3").order.order_id
    mx.place(5, MARKET, BUY, price="30000", amount="0.1")  # fills 0.1 of a2
    b1 = mx.place(5, MARKET, BUY, price="29000", amount="0.2").order.order_id
    source = mx.shards[S]
    asks_before = book_orders(source, SELL)
    assert [o for o, _, _ in asks_before] == [a2, a3, a1]
    trades_before = source.engine.books[MARKET].next_trade_id
    hash_before = source.engine.books[MARKET].state_hash()

    # The export is refused while a source has not halted the market.
    with pytest.raises(FailedPrecondition) as err:
        export(mx, ["accounts-0"])
    assert err.value.reason == Reason.MARKET_MOVING
    halted = mx.apply_raw(route(MARKET, S, halted=True))
    assert halted.result.halted and source.halted == {MARKET: {"accounts-0"}}
    assert mx.apply_raw(route(MARKET, S, halted=True)).journal is False  # a repeat changes nothing
    # Orders, cancels and amends of the market are refused retryably; other markets go on.
    for attempt in (
        lambda: mx.place(2, MARKET, SELL, price="30000", amount="0.1"),
        lambda: mx.cancel(2, a1),
        lambda: mx.amend(3, a2, new_amount="0.2"),
        lambda: mx.cancel_all(4),
    ):
        with pytest.raises(Unavailable) as moving:
            attempt()
        assert moving.value.reason == Reason.MARKET_MOVING and moving.value.retry_after_ms > 0
    mx.place(2, "ETH_USDT", BUY, price="2000", amount="1")
    assert book_orders(source, SELL) == asks_before

    exported = export(mx, ["accounts-0"])
    book: ev.MarketBook = exported.result
    assert MARKET not in source.engine.books and book.to_shard == T
    assert book.export_sequence == source.event_seq
    assert [r.placed.order_id for r in book.asks] == [a2, a3, a1] and [
        r.placed.order_id for r in book.bids
    ] == [b1]
    assert export(mx, ["accounts-0"]).journal is False  # a repeat answers the same book
    assert export(mx, ["accounts-0"]).result == book

    # The import keeps priority, remainders and trade numbering; a repeat changes nothing.
    imp = ev.MatchingCommand()
    imp.import_market.book.CopyFrom(book)
    assert admin(mx, T, imp).result.order_count == 4
    assert admin(mx, T, imp).journal is False
    target = mx.shards[T]
    assert book_orders(target, SELL) == asks_before
    assert target.engine.books[MARKET].state_hash() == hash_before
    assert target.engine.books[MARKET].next_trade_id == trades_before

    # Accounts switches only once it settled the old shard up to the export.
    with pytest.raises(Unavailable) as early:
        mx.apply_raw(route(MARKET, T, from_shard=S, after=book.export_sequence + 1))
    assert early.value.reason == Reason.MARKET_MOVING
    mx.settle()
    mx.apply_raw(route(MARKET, T, from_shard=S, after=book.export_sequence))
    assert mx.accounts.shard_of(MARKET) == T and not mx.accounts.halted

    # The market trades on the new shard, in the old priority: a2's rest, then a3, then a1.
    taker = mx.place(5, MARKET, BUY, price="30010", amount="0.7").order.order_id
    trades = [e.trade_executed for e in mx.matching_events[T] if e.WhichOneof("event") == "trade_executed"]
    assert [(t.maker_order_id, t.taker_order_id) for t in trades] == [(a2, taker), (a3, taker), (a1, taker)]
    assert trades[0].trade_id == trades_before
    assert book_orders(target, SELL) == [(a1, 3001000, 40000)]
    mx.cancel(2, a1)
    mx.check_invariants()
    assert mx.accounts.ledger.orders[b1].status == 2  # still open (on the new shard)
    assert not mx.quarantined

    # Replaying the journals gives the same machines.
    catalog = mx.catalog
    accounts = AccountsMachine(Ledger(catalog), mx.source)
    for i, rec in enumerate(mx.accounts_journal, 1):
        cmd = ev.AccountsCommand.FromString(rec)
        assert accounts.apply(i, cmd.time_us, cmd).journal
    assert accounts.state_hash() == mx.accounts.state_hash()
    for name, journal in mx.shard_journals.items():
        m = MatchingMachine(MatchingEngine(name, catalog.markets_of_shard(name)), catalog=catalog.markets)
        for i, rec in enumerate(journal, 1):
            mcmd = ev.MatchingCommand.FromString(rec)
            assert m.apply(i, mcmd.time_us, mcmd).journal
        assert m.state_hash() == mx.shards[name].state_hash(), name
        # A snapshot restores the same shard, with the market where it went.
        back = MatchingMachine.restore(
            name, {s.symbol: s for s in catalog.markets_of_shard(name)}, m.snapshot(), catalog.markets
        )
        assert back.state_hash() == m.state_hash()
        assert (MARKET in back.engine.books) == (name == T)
    restored = AccountsMachine.restore(catalog, mx.source, mx.accounts.snapshot())
    assert restored.state_hash() == mx.accounts.state_hash() and restored.shard_of(MARKET) == T

    # The outbox rebuilt from the journal is what was sent, shard by shard (the forward links say where).
    rebuilt: dict[str, list[bytes]] = {S: [], T: []}
    for i, rec in enumerate(mx.accounts_journal, 1):
        for _, shard, mcmd in outbox_commands(mx.source, i, ev.AccountsCommand.FromString(rec), catalog):
            rebuilt[shard].append(mcmd)
    for shard in (S, T):
        sent = [ev.MatchingCommand.FromString(b) for b in mx.forwarded[shard]]
        for c in sent:
            c.time_us = 0
        assert [ev.MatchingCommand.FromString(b) for b in rebuilt[shard]] == sent, shard


def test_a_book_that_does_not_match_its_hash_is_refused() -> None:
    mx = make()
    mx.deposit(2, "BTC", "1")
    mx.place(2, MARKET, SELL, price="30000", amount="0.5")
    mx.apply_raw(route(MARKET, S, halted=True))
    book: ev.MarketBook = export(mx, ["accounts-0"]).result
    book.asks[0].remaining_lots -= 1
    with pytest.raises(ExchangeError):
        book_from_proto(mx.catalog.markets[MARKET], book)
    imp = ev.MatchingCommand()
    imp.import_market.book.CopyFrom(book)
    with pytest.raises(FailedPrecondition):
        admin(mx, T, imp)
    assert MARKET not in mx.shards[T].engine.books and not mx.shard_journals[T]


def test_an_abandoned_move_resumes_the_market_where_it_was() -> None:
    mx = make()
    mx.deposit(2, "BTC", "1")
    mx.apply_raw(route(MARKET, S, halted=True))
    assert mx.shards[S].halted == {MARKET: {"accounts-0"}}
    mx.apply_raw(route(MARKET, S, halted=False))
    assert not mx.shards[S].halted and not mx.accounts.halted
    mx.place(2, MARKET, SELL, price="30000", amount="0.5")
    assert len(mx.shards[S].engine.books[MARKET]) == 1
    with pytest.raises(FailedPrecondition):  # a switch needs the halt first
        mx.apply_raw(route(MARKET, T, from_shard=S))


def test_a_command_of_a_source_that_halted_the_market_is_rejected() -> None:
    mx = make()
    mx.deposit(2, "BTC", "1")
    a1 = mx.place(2, MARKET, SELL, price="30000", amount="0.5").order.order_id
    mx.apply_raw(route(MARKET, S, halted=True))
    source = mx.shards[S]
    before = source.engine.books[MARKET].state_hash()
    # Accounts sends nothing after its halt; a command that comes anyway is rejected, with an event.
    forged = ev.MatchingCommand(
        source="accounts-0",
        source_sequence=source.engine.source_seqs["accounts-0"] + 1,
        previous_sequence=source.engine.source_seqs["accounts-0"],
    )
    forged.cancel_order.order_id, forged.cancel_order.user_id, forged.cancel_order.market = a1, 2, MARKET
    out = source.apply(source.applied_seq + 1, mx.time_us, forged)
    assert ev.MatchingEvent.FromString(out.events[0]).command_rejected.reason == 6  # MARKET_HALTED
    assert source.engine.books[MARKET].state_hash() == before


SOL_BTC = types_pb2.MarketSpec(
    symbol="SOL_BTC",
    base="SOL",
    quote="BTC",
    price_tick="0.000001",
    lot_size="0.01",
    min_amount="0.01",
    min_notional="0.0001",
    maker_fee_rate="0.001",
    taker_fee_rate="0.002",
    shard=T,
)


def test_a_market_added_while_running_trades_moves_and_replays() -> None:
    mx = make()
    opened = ev.MatchingCommand()
    opened.open_market.spec.CopyFrom(SOL_BTC)
    with pytest.raises(ExchangeError):  # not for this shard
        admin(mx, S, opened)
    assert admin(mx, T, opened).journal and admin(mx, T, opened).journal is False  # a repeat: nothing
    add = ev.AccountsCommand()
    add.add_market.spec.CopyFrom(SOL_BTC)
    with pytest.raises(ExchangeError):  # unknown before it is added
        mx.place(2, "SOL_BTC", SELL, price="0.0015", amount="1")
    assert mx.apply_raw(add).result.seq > 0 and mx.apply_raw(add).journal is False
    other = ev.AccountsCommand()
    other.add_market.spec.CopyFrom(SOL_BTC)
    other.add_market.spec.lot_size = "0.1"
    with pytest.raises(FailedPrecondition):  # the same symbol with another spec
        mx.apply_raw(other)
    mx.deposit(2, "SOL", "10")
    mx.deposit(3, "BTC", "1")
    ask = mx.place(2, "SOL_BTC", SELL, price="0.0015", amount="2").order.order_id
    mx.place(3, "SOL_BTC", BUY, price="0.0015", amount="0.5")
    assert mx.shards[T].engine.books["SOL_BTC"].orders[ask].remaining == 150  # lots of 0.01
    mx.check_invariants()

    # It moves like any market: the book carries the spec the new shard's configuration lacks.
    mx.apply_raw(route("SOL_BTC", T, halted=True))
    move = ev.MatchingCommand()
    move.export_market.market, move.export_market.to_shard = "SOL_BTC", S
    move.export_market.sources.append("accounts-0")
    book: ev.MarketBook = admin(mx, T, move).result
    assert book.spec == SOL_BTC
    imp = ev.MatchingCommand()
    imp.import_market.book.CopyFrom(book)
    assert admin(mx, S, imp).result.order_count == 1
    mx.settle()
    mx.apply_raw(route("SOL_BTC", S, from_shard=T, after=book.export_sequence))
    mx.place(3, "SOL_BTC", BUY, price="0.0015", amount="1.5")
    assert "SOL_BTC" in mx.shards[S].engine.books and not mx.shards[S].engine.books["SOL_BTC"].orders
    mx.check_invariants()

    # A replay and a restore from snapshots, with the configuration as it was (no SOL_BTC).
    for name, journal in mx.shard_journals.items():
        catalog = default_catalog()
        m = MatchingMachine(MatchingEngine(name, catalog.markets_of_shard(name)), catalog=catalog.markets)
        for i, rec in enumerate(journal, 1):
            mcmd = ev.MatchingCommand.FromString(rec)
            assert m.apply(i, mcmd.time_us, mcmd).journal
        assert m.state_hash() == mx.shards[name].state_hash(), name
        back = MatchingMachine.restore(
            name, {s.symbol: s for s in catalog.markets_of_shard(name)}, m.snapshot(), catalog.markets
        )
        assert back.state_hash() == m.state_hash() and ("SOL_BTC" in back.engine.books) == (name == S)
    catalog = default_catalog()
    accounts = AccountsMachine(Ledger(catalog), mx.source)
    for i, rec in enumerate(mx.accounts_journal, 1):
        cmd = ev.AccountsCommand.FromString(rec)
        assert accounts.apply(i, cmd.time_us, cmd).journal
    assert accounts.state_hash() == mx.accounts.state_hash()
    fresh = default_catalog()
    restored = AccountsMachine.restore(fresh, mx.source, mx.accounts.snapshot())
    assert restored.state_hash() == mx.accounts.state_hash() and "SOL_BTC" in fresh.markets


def test_the_file_pair_map_keeps_epochs_and_shards(tmp_path: Path) -> None:
    pairs = FilePairMap(tmp_path / "pairs.json")
    assert pairs.get(MARKET) is None and pairs.entries() == {}
    assert pairs.put(MARKET, S, T) == PairEntry(S, T, 1)
    assert pairs.put(MARKET, T) == PairEntry(T, "", 2)
    assert pairs.put(MARKET, T) == PairEntry(T, "", 2)  # already so: no new epoch
    assert FilePairMap(tmp_path / "pairs.json").entries() == {MARKET: PairEntry(T, "", 2)}
    assert pairs.add_shard(T) and not pairs.add_shard(T) and pairs.shards() == [T]


def test_a_large_book_comes_in_parts_journaled_one_by_one() -> None:
    mx = make()
    for user in (2, 3):
        mx.deposit(user, "BTC", "10")
        mx.deposit(user, "USDT", "1000000")
    for i in range(13):
        mx.place(2 + i % 2, MARKET, SELL, price=str(31_000 + i % 4), amount="0.01")
        mx.place(2 + i % 2, MARKET, BUY, price=str(29_000 - i % 3), amount="0.01")
    mx.apply_raw(route(MARKET, S, halted=True))
    book: ev.MarketBook = export(mx, ["accounts-0"]).result
    parts = book_parts(book, 10)
    assert [len(p.bids) + len(p.asks) for p in parts] == [10, 10, 6]
    target = mx.shards[T]

    def part(i: int) -> Any:
        cmd = ev.MatchingCommand()
        cmd.import_market.book.CopyFrom(parts[i])
        cmd.import_market.part, cmd.import_market.parts = i, len(parts)
        return admin(mx, T, cmd)

    assert part(0).result.complete is False and part(0).journal is False  # a repeat
    with pytest.raises(FailedPrecondition):
        part(2)  # a gap
    assert part(1).result.order_count == 20 and MARKET not in target.engine.books
    # A snapshot in the middle of the parts restores them.
    catalog = mx.catalog
    back = MatchingMachine.restore(T, {}, target.snapshot(), catalog.markets)
    assert back.state_hash() == target.state_hash()
    done = part(2).result
    assert done.complete and done.order_count == 26
    assert target.engine.books[MARKET].state_hash() == book.state_hash
    whole = MatchingMachine(MatchingEngine(T, []), catalog=catalog.markets)
    one = ev.MatchingCommand(source=admin_source(T), source_sequence=1)
    one.import_market.book.CopyFrom(book)
    whole.apply(1, 0, one)
    assert whole.engine.books[MARKET].state_hash() == target.engine.books[MARKET].state_hash()
