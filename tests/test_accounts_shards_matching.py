"""A matching shard fed by several accounts shards (accounts sharded by user): each source has its own
chain (dedupe of resends, refusal of gaps) in the intake and in the machine, and every event names the
source and sequence of the command it came from. In process, no gRPC."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from exchange.v1 import events_pb2 as ev

from services.common.errors import FailedPrecondition, Reason
from services.matching import model as m
from services.matching.convert import command_bytes
from services.matching.engine import MatchingEngine
from services.matching.intake import CommandIntake
from services.matching.machine import MatchingMachine
from testkit.accounts_sim import default_catalog

CATALOG = default_catalog()
BTC = CATALOG.markets["BTC_USDT"]


def place(
    source: str, seq: int, previous: int, order_id: int, user: int, side: int, price: int
) -> ev.MatchingCommand:
    cmd = m.PlaceOrder(
        order_id=order_id,
        user_id=user,
        market="BTC_USDT",
        side=side,
        price=price,
        amount=10,
        maker_fee_ppm=BTC.maker_fee_ppm,
        taker_fee_ppm=BTC.taker_fee_ppm,
    )
    return ev.MatchingCommand.FromString(command_bytes(source, seq, previous, cmd))


def test_every_accounts_source_has_its_own_chain_and_events_name_it() -> None:
    machine = MatchingMachine(MatchingEngine("matching-0", CATALOG.markets_of_shard("matching-0")))
    seq = 0

    def apply(c: ev.MatchingCommand) -> list[ev.MatchingEvent]:
        nonlocal seq
        out = machine.apply(seq + 1, 1_000, c)
        if out.journal:
            seq += 1
        return [ev.MatchingEvent.FromString(b) for b in out.events]

    # accounts-0 (even users, odd order ids) and accounts-1 (odd users, even order ids), interleaved.
    assert apply(place("accounts-0", 5, 0, 1, 2, 2, 30000))[0].command_source == "accounts-0"
    events = apply(place("accounts-1", 3, 0, 2, 3, 1, 30000))
    trade = next(e for e in events if e.WhichOneof("event") == "trade_executed").trade_executed
    assert (trade.maker_user_id, trade.taker_user_id) == (2, 3)
    assert {(e.command_source, e.command_sequence) for e in events} == {("accounts-1", 3)}
    # A resend of either source is ignored; a gap of one source is refused and leaves the other alone.
    assert apply(place("accounts-0", 5, 0, 1, 2, 2, 30000)) == [] and seq == 2
    with pytest.raises(FailedPrecondition) as err:
        apply(place("accounts-1", 9, 7, 4, 5, 2, 31000))
    assert err.value.reason == Reason.SEQUENCE_GAP
    assert apply(place("accounts-0", 6, 5, 3, 4, 2, 31000))[0].command_source == "accounts-0"
    assert machine.engine.source_seqs == {"accounts-0": 6, "accounts-1": 3}

    # The intake resumes each source after its own last applied (or queued) command.
    intake = CommandIntake(SimpleNamespace(machine=machine))
    s0, s1 = intake.open("accounts-0"), intake.open("accounts-1")
    assert (s0.start, s1.start) == (6, 3)
    got = s1.accept([place("accounts-1", 3, 0, 2, 3, 1, 30000), place("accounts-1", 4, 3, 6, 5, 1, 100)])
    assert [(c.source, c.source_sequence) for c in got] == [("accounts-1", 4)]
    with pytest.raises(FailedPrecondition):
        s0.accept([place("accounts-0", 8, 7, 5, 6, 1, 100)])
    assert intake.open("accounts-1").start == 4 and intake.open("accounts-0").start == 6
