"""services.matching.intake: the per-source chain check and resume point of SubmitCommands, and the
shard's expiry timer, host side (no gRPC)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from exchange.v1 import events_pb2 as ev

from services.common.errors import FailedPrecondition, Reason
from services.matching.engine import MatchingEngine
from services.matching.intake import CommandIntake, ExpiryTimer
from services.matching.machine import MatchingMachine, timer_source
from services.matching.model import BUY, GTD, LIMIT, PlaceOrder
from testkit.accounts_sim import default_catalog

CATALOG = default_catalog()


def host() -> SimpleNamespace:
    machine = MatchingMachine(MatchingEngine("matching-0", CATALOG.markets_of_shard("matching-0")))
    queued: list[ev.MatchingCommand] = []
    return SimpleNamespace(machine=machine, enqueue_internal=queued.append, queued=queued)


def command(seq: int, previous: int, source: str = "") -> ev.MatchingCommand:
    c = ev.MatchingCommand(source=source, source_sequence=seq, previous_sequence=previous)
    c.cancel_all_orders.user_id = 1
    return c


def test_a_stream_drops_resends_refuses_gaps_and_stamps_its_source() -> None:
    intake = CommandIntake(host())
    stream = intake.open("accounts-0")
    assert stream.start == 0
    got = stream.accept([command(1, 0), command(2, 1), command(1, 0)])
    assert [(c.source, c.source_sequence) for c in got] == [("accounts-0", 1), ("accounts-0", 2)]
    assert stream.accept([command(2, 1), command(1, 0)]) == []  # resends
    with pytest.raises(FailedPrecondition) as info:
        stream.accept([command(3, 2), command(5, 4)])  # 4 is missing
    assert info.value.reason == Reason.SEQUENCE_GAP
    assert stream.last == 2  # nothing of the refused request was queued
    assert [c.source_sequence for c in stream.accept([command(3, 2)])] == [3]


def test_a_reconnecting_source_resumes_after_what_is_queued_or_applied() -> None:
    h = host()
    intake = CommandIntake(h)
    intake.open("accounts-0").accept([command(1, 0), command(2, 1)])
    assert intake.open("accounts-0").start == 2  # queued, not applied yet
    assert intake.open("accounts-1").start == 0
    h.machine.engine.source_seqs["accounts-1"] = 7  # applied (a restart restored it)
    assert intake.open("accounts-1").start == 7


def test_the_expiry_timer_journals_a_command_only_when_an_order_is_due() -> None:
    h = host()
    timer = ExpiryTimer(h, "matching-0")
    assert timer.source == timer_source("matching-0") == "matching-0:timer"
    assert not timer.tick(10**18)  # no GTD order at all
    engine = h.machine.engine
    gtd = PlaceOrder(1, 1, "BTC_USDT", BUY, LIMIT, GTD, 100, 5, expire_at=1000)
    engine.apply("accounts-0", 1, 0, gtd)
    assert not timer.tick(999)
    assert timer.tick(1000) and timer.tick(1001)
    assert [(c.source, c.source_sequence, c.WhichOneof("command")) for c in h.queued] == [
        ("matching-0:timer", 1, "expire_orders"),
        ("matching-0:timer", 2, "expire_orders"),
    ]
    # Numbering continues after what the machine applied from the timer (e.g. after a restart).
    engine.source_seqs["matching-0:timer"] = 10
    assert timer.tick(1002) and h.queued[-1].source_sequence == 11
