"""The L3 mirror against a real matching engine, and the state's snapshot/restore/replay rules."""

from __future__ import annotations

import random

import pytest
from exchange.v1 import events_pb2 as ev

from services.market.state import BadEvent, GapError, MarketDataState
from tests.market.sim import Generator, default_catalog

MARKETS = ["BTC_USDT", "ETH_USDT"]
MERGES = [1, 3, 100]


def new_state() -> MarketDataState:
    return MarketDataState(default_catalog().markets.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_depth_equals_matching_after_every_command(seed: int) -> None:
    gen = Generator(seed=seed, markets=MARKETS, users=4)
    state = new_state()
    kinds: set[str] = set()
    for step in range(1500):
        events = gen.step()
        kinds.update(e.WhichOneof("event") or "" for e in events)
        state.apply_batch("matching-0", events)
        for market in MARKETS:
            book = gen.engine.books[market]
            mirror = state.markets[market].depth
            assert mirror.depth(50) == book.depth(50), (step, market)
            assert mirror.best_bid() == book.best_bid() and mirror.best_ask() == book.best_ask()
            if step % 10 == 0:
                for merge in MERGES:
                    assert mirror.depth(30, merge) == book.depth(30, merge), (step, market, merge)
                assert {oid: (o[0], o[1], o[2]) for oid, o in mirror.orders.items()} == {
                    oid: (o.side, o.price, o.remaining) for oid, o in book.orders.items()
                }
    assert state.checkpoint("matching-0") == gen.engine.event_seq
    # The flow exercised every kind of event.
    assert kinds >= {"order_accepted", "trade_executed", "order_done", "order_amended", "command_rejected"}


def command_batches(events: list[ev.MatchingEvent]) -> list[list[ev.MatchingEvent]]:
    """Group events by command, the way StreamEvents responses hold them."""
    out: list[list[ev.MatchingEvent]] = []
    for e in events:
        key = (e.command_source, e.command_sequence)
        if out and (out[-1][0].command_source, out[-1][0].command_sequence) == key:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def test_snapshot_restore_continue_equals_straight_run() -> None:
    gen = Generator(seed=11, quiet=0.01)
    events = gen.run(2000)
    batches = command_batches(events)
    straight = new_state()
    for b in batches:
        straight.apply_batch("matching-0", b)
    expected = straight.snapshot()
    rng = random.Random(5)
    for _ in range(4):
        cut = rng.randrange(1, len(batches))
        first = new_state()
        for b in batches[:cut]:
            first.apply_batch("matching-0", b)
        restored = MarketDataState.restore(first.snapshot(), default_catalog().markets.values())
        assert restored.snapshot() == first.snapshot()
        # Resume with an overlap: events at or below the checkpoint are ignored.
        for b in batches[max(0, cut - 7) :]:
            restored.apply_batch("matching-0", b)
        assert restored.snapshot() == expected
    # Replaying everything again changes nothing.
    straight.apply_batch("matching-0", events)
    assert straight.snapshot() == expected


def test_gap_is_refused_and_changes_nothing() -> None:
    gen = Generator(seed=3)
    events = gen.run(200)
    state = new_state()
    state.apply_batch("matching-0", events[:50])
    before = state.snapshot()
    with pytest.raises(GapError):
        state.apply_batch("matching-0", events[51:60])
    assert state.snapshot() == before
    assert state.checkpoint("matching-0") == 50


def test_checkpoints_are_per_shard_and_unknown_markets_are_skipped() -> None:
    state = new_state()
    e = ev.MatchingEvent(source="matching-1", sequence=1, market="NOPE_USDT")
    e.command_rejected.SetInParent()
    changes = state.apply_batch("matching-1", [e])
    assert changes.events == 1 and not changes
    assert state.checkpoints == {"matching-1": 1}


def test_restore_with_changed_market_set() -> None:
    gen = Generator(seed=4)
    state = new_state()
    state.apply_batch("matching-0", gen.run(300))
    catalog = default_catalog()
    fewer = [m for s, m in catalog.markets.items() if s != "SOL_USDT"]
    restored = MarketDataState.restore(state.snapshot(), fewer)
    assert "SOL_USDT" not in restored.markets
    assert restored.markets["BTC_USDT"].trade_seq == state.markets["BTC_USDT"].trade_seq
    again = MarketDataState.restore(restored.snapshot(), catalog.markets.values())
    assert again.markets["SOL_USDT"].trade_seq == 0


def spoiled(e: ev.MatchingEvent, how: str) -> ev.MatchingEvent:
    bad = ev.MatchingEvent()
    bad.CopyFrom(e)
    if how == "foreign source":
        bad.source = "matching-7"
    elif how == "zero price":
        bad.trade_executed.price_ticks = 0
    elif how == "negative amount":
        bad.trade_executed.amount_lots = -3
    else:  # pragma: no cover
        raise AssertionError(how)
    return bad


@pytest.mark.parametrize("how", ["foreign source", "zero price", "negative amount"])
def test_an_event_that_cannot_be_applied_changes_nothing(how: str) -> None:
    """The events before it in the batch are applied (and reported in BadEvent.changes), the bad one
    changes nothing, and the checkpoint stays right before it, so a retry resumes exactly there."""
    gen = Generator(seed=4, markets=MARKETS)
    events = gen.run(400)
    i = next(i for i, e in enumerate(events) if i > 200 and e.WhichOneof("event") == "trade_executed")
    bad = spoiled(events[i], how)
    state = new_state()
    state.apply_batch("matching-0", events[:150])
    with pytest.raises(BadEvent) as info:
        state.apply_batch("matching-0", [*events[150:i], bad, *events[i + 1 :]])
    assert info.value.sequence == events[i].sequence
    assert info.value.changes.events == i - 150
    assert state.checkpoint("matching-0") == events[i - 1].sequence
    reference = new_state()
    reference.apply_batch("matching-0", events[:i])
    assert state.snapshot() == reference.snapshot()
    # the bad event again: refused again, nothing changes
    with pytest.raises(BadEvent):
        state.apply_batch("matching-0", [bad])
    assert state.snapshot() == reference.snapshot()
    # corrected, the stream goes on as if nothing happened
    state.apply_batch("matching-0", events[i:])
    straight = new_state()
    straight.apply_batch("matching-0", events)
    assert state.snapshot() == straight.snapshot()


def test_an_error_while_applying_does_not_move_the_checkpoint_past_the_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gen = Generator(seed=6, markets=MARKETS)
    events = gen.run(100)
    state = new_state()
    real = state._apply
    target = events[60].sequence

    def apply(e: ev.MatchingEvent, changes: object) -> None:
        if e.sequence == target:
            raise KeyError("a bug")
        real(e, changes)  # type: ignore[arg-type]

    monkeypatch.setattr(state, "_apply", apply)
    with pytest.raises(KeyError):
        state.apply_batch("matching-0", events)
    assert state.checkpoint("matching-0") == target - 1
    assert state.event_times["matching-0"] == events[59].time_us
