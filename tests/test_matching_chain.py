"""Matching applies each source's commands as one unbroken chain: every command names the sequence of
the one before it (previous_sequence). A resend is ignored; a gap is refused (FAILED_PRECONDITION,
SEQUENCE_GAP), never skipped. Field report: a forged source_sequence 1000000 made matching ignore every
real command after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from exchange.v1 import replica_pb2

from services.common.config import load_config
from services.common.errors import FailedPrecondition, Reason
from services.common.rpc import error_reason
from services.matching.machine import MatchingMachine
from tests.cluster import ROOT, Cluster

CATALOG = load_config(ROOT / "deploy" / "exchange.toml").catalog


def place(seq: int, previous: int, order_id: int, *, source: str = "accounts-0") -> ev.MatchingCommand:
    cmd = ev.MatchingCommand(source=source, source_sequence=seq, previous_sequence=previous)
    o = cmd.place_order
    o.order_id = order_id
    o.user_id = 7
    o.market = "BTC_USDT"
    o.side = 1
    o.type = 1
    o.time_in_force = 1
    o.price_ticks = 3_000_000
    o.amount_lots = 100
    return cmd


def machine() -> MatchingMachine:
    return MatchingMachine.restore("matching-0", {m.symbol: m for m in CATALOG.markets.values()}, None)


def test_chain_applies_in_order_and_ignores_resends() -> None:
    m = machine()
    assert m.apply(1, 1, place(5, 0, 1)).journal
    assert m.apply(2, 2, place(9, 5, 2)).journal  # sequences need not be contiguous, only chained
    resend = m.apply(3, 3, place(9, 5, 2))
    assert not resend.journal and m.applied_seq == 2


def test_gap_is_refused_and_changes_nothing() -> None:
    m = machine()
    m.apply(1, 1, place(5, 0, 1))
    before = (m.state_hash(), m.applied_seq, m.event_seq, dict(m.engine.source_seqs))
    for forged in (place(1_000_000, 999_999, 2), place(7, 6, 2), place(7, 0, 2)):
        with pytest.raises(FailedPrecondition) as info:
            m.apply(2, 2, forged)
        assert info.value.reason == Reason.SEQUENCE_GAP
        assert (m.state_hash(), m.applied_seq, m.event_seq, dict(m.engine.source_seqs)) == before
    assert m.apply(2, 2, place(7, 5, 2)).journal  # the real next command still applies


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start(["matching-0"])
    yield c
    c.stop()


def submit(c: Cluster, commands: list[ev.MatchingCommand]) -> list[int]:
    stub = mgrpc.MatchingServiceStub(c.channel("matching-0", "accounts-0"))
    requests = [mpb.SubmitCommandsRequest(source="accounts-0")]
    requests += [mpb.SubmitCommandsRequest(commands=[cmd]) for cmd in commands]
    return [r.acknowledged_sequence for r in stub.SubmitCommands(iter(requests), timeout=10)]


@pytest.mark.slow
def test_gap_in_a_stream_is_refused(shard: Cluster) -> None:
    acks = submit(shard, [place(3, 0, 1), place(8, 3, 2)])
    assert acks[0] == 0 and acks[-1] == 8
    with pytest.raises(grpc.RpcError) as info:
        submit(shard, [place(1_000_000, 999_999, 3)])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert error_reason(info.value) == "SEQUENCE_GAP"
    status = shard.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
    assert status.source_sequences["accounts-0"] == 8
    assert status.role == replica_pb2.REPLICA_ROLE_STANDALONE  # not in cluster mode
    # The real next command is still taken, and a resend of an applied one is ignored.
    assert submit(shard, [place(8, 3, 2), place(12, 8, 3)])[-1] == 12
