"""The forward sequence chain: every command accounts forwards to a shard names the one it forwarded
there before (MatchingCommand.previous_sequence), from the journal as much as live, and the Forwarder's
resends after reconnects and restarts keep the chain gapless."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from hypothesis import given, settings
from hypothesis import strategies as st

from services.accounts.links import Forwarder
from services.accounts.machine import AccountsMachine, outbox_commands, reservation_for
from services.common import rpc
from services.common.journal import FileJournal
from testkit.accounts_sim import MiniExchange, default_catalog, replay

BUY, SELL = 1, 2
TWO_SHARDS = {"matching-0": ["BTC_USDT", "ETH_BTC"], "matching-1": ["ETH_USDT", "SOL_USDT", "DOGE_USDT"]}
CATALOG = default_catalog(TWO_SHARDS)

# --- the hand-assembled bytes are protobuf's own ----------------------------------------------------

U64 = st.one_of(st.integers(0, 300), st.sampled_from([127, 128, 16383, 16384, 2**63 - 1, 2**64 - 1]))
I64 = st.one_of(st.integers(-300, 300), st.sampled_from([0, 127, 128, 2**63 - 1, -(2**63)]))
MARKETS = st.sampled_from(sorted(CATALOG.markets))
TEXT = st.text(max_size=12)


@st.composite
def forwarding_commands(draw: st.DrawFn) -> ev.AccountsCommand:
    cmd = ev.AccountsCommand(time_us=draw(I64))
    kind = draw(st.sampled_from(["place", "cancel", "cancel_all", "reduce", "move", "amend"]))
    market = draw(MARKETS)
    if kind == "place":
        cmd.place_order.client_order_id = draw(TEXT)
        cmd.place_order.order.CopyFrom(
            ev.PlaceOrderCommand(
                order_id=draw(U64),
                user_id=draw(U64),
                market=market,
                side=draw(st.integers(0, 2)),  # type: ignore[arg-type]
                type=draw(st.integers(0, 2)),  # type: ignore[arg-type]
                time_in_force=draw(st.integers(0, 4)),  # type: ignore[arg-type]
                post_only=draw(st.booleans()),
                self_trade_prevention=draw(st.integers(0, 3)),  # type: ignore[arg-type]
                price_ticks=draw(I64),
                amount_lots=draw(I64),
                quote_budget=draw(I64),
                expire_time_us=draw(I64),
                maker_fee_ppm=draw(I64),
                taker_fee_ppm=draw(I64),
            )
        )
    elif kind == "cancel":
        cmd.cancel_order.CopyFrom(
            ev.CancelOrderCommand(
                order_id=draw(U64), user_id=draw(U64), market=market, client_order_id=draw(TEXT)
            )
        )
    elif kind == "cancel_all":
        cmd.cancel_all_orders.CopyFrom(
            ev.CancelAllOrdersCommand(
                user_id=draw(U64),
                market=draw(st.one_of(st.just(""), MARKETS)),
                side=draw(st.integers(0, 2)),  # type: ignore[arg-type]
            )
        )
    elif kind == "reduce":
        cmd.reduce_order.CopyFrom(
            ev.ReduceOrderCommand(
                order_id=draw(U64), user_id=draw(U64), market=market, new_amount_lots=draw(I64)
            )
        )
    elif kind == "move":
        cmd.move_order.CopyFrom(
            ev.MoveOrderCommand(
                order_id=draw(U64), user_id=draw(U64), market=market, new_price_ticks=draw(I64)
            )
        )
    else:
        cmd.amend_order.CopyFrom(
            ev.AmendOrderCommand(
                order_id=draw(U64),
                user_id=draw(U64),
                market=market,
                client_order_id=draw(TEXT),
                new_price_ticks=draw(st.one_of(st.just(0), st.integers(1, 2**63 - 1))),
                new_amount_lots=draw(st.one_of(st.just(0), st.integers(1, 2**63 - 1))),
            )
        )
        if not cmd.amend_order.new_price_ticks and not cmd.amend_order.new_amount_lots:
            cmd.amend_order.new_price_ticks = 1
    for shard in draw(st.lists(st.sampled_from(CATALOG.shards), unique=True)):
        cmd.forward_links.add(shard=shard, previous_sequence=draw(U64))
    return cmd


def journal_host(journal: Any) -> Any:
    """What the Forwarder reads of its host: durable commands of a (static) journal."""
    return SimpleNamespace(
        read_commands=lambda seq, max_records=2000: journal.read(seq, max_records=max_records),
        durable_command_seq=journal.durable_seq,
    )


def _expected(source: str, seq: int, cmd: ev.AccountsCommand) -> list[tuple[int, str, bytes]]:
    """What outbox_commands must produce, built with protobuf. A journaled command goes to the shards
    its forward links name (a market may have moved since), else to its market's configured shard."""
    previous = {link.shard: link.previous_sequence for link in cmd.forward_links}
    linked = tuple(link.shard for link in cmd.forward_links)
    kind = cmd.WhichOneof("command")
    out = []
    if kind == "amend_order":
        a = cmd.amend_order
        shard = linked[0] if linked else CATALOG.markets[a.market].shard
        prev = previous.get(shard, 0)
        both = a.new_price_ticks and a.new_amount_lots
        if a.new_amount_lots:
            rseq = seq - 1 if both else seq
            m = ev.MatchingCommand(source=source, source_sequence=rseq, previous_sequence=prev)
            m.reduce_order.CopyFrom(
                ev.ReduceOrderCommand(
                    order_id=a.order_id, user_id=a.user_id, market=a.market, new_amount_lots=a.new_amount_lots
                )
            )
            out.append((rseq, shard, m.SerializeToString()))
            prev = rseq
        if a.new_price_ticks:
            m = ev.MatchingCommand(source=source, source_sequence=seq, previous_sequence=prev)
            m.move_order.CopyFrom(
                ev.MoveOrderCommand(
                    order_id=a.order_id, user_id=a.user_id, market=a.market, new_price_ticks=a.new_price_ticks
                )
            )
            out.append((seq, shard, m.SerializeToString()))
        return out
    body: Any = cmd.place_order.order if kind == "place_order" else getattr(cmd, kind or "")
    shards = (
        (linked[:1] if kind == "place_order" else linked)
        if linked
        else CATALOG.shards
        if kind == "cancel_all_orders" and not body.market
        else (CATALOG.markets[body.market].shard,)
    )
    for shard in shards:
        m = ev.MatchingCommand(source=source, source_sequence=seq, previous_sequence=previous.get(shard, 0))
        getattr(m, "place_order" if kind == "place_order" else kind or "").CopyFrom(body)
        out.append((seq, shard, m.SerializeToString()))
    return out


@settings(max_examples=300, deadline=None)
@given(
    forwarding_commands(),
    st.sampled_from(["accounts-0", "a", "accounts-" + "9" * 60]),
    st.integers(2, 2**63 - 1),
)
def test_outbox_bytes_equal_protobufs_encoding(cmd: ev.AccountsCommand, source: str, seq: int) -> None:
    got = outbox_commands(source, seq, ev.AccountsCommand.FromString(cmd.SerializeToString()), CATALOG)
    assert got == _expected(source, seq, cmd)
    for _, _, payload in got:
        assert ev.MatchingCommand.FromString(payload).SerializeToString() == payload


def test_reservations_and_other_commands_forward_nothing() -> None:
    amend = ev.AccountsCommand()
    amend.amend_order.CopyFrom(
        ev.AmendOrderCommand(user_id=1, order_id=1, new_price_ticks=1, new_amount_lots=1)
    )
    settle = ev.AccountsCommand()
    settle.settle.shard = "matching-0"
    deposit = ev.AccountsCommand()
    deposit.adjust_balance.user_id = 1
    for cmd in (reservation_for(amend), settle, deposit, ev.AccountsCommand()):
        assert outbox_commands("accounts-0", 5, cmd, CATALOG) == []


# --- the chain in a running exchange -------------------------------------------------------------


def two_shard_flow() -> MiniExchange:
    """Orders on both shards, cancels, cancel-alls, amends of one field and of both (the sim checks
    the chain of every command it forwards)."""
    x = MiniExchange(catalog=CATALOG)
    for user in (1, 2):
        x.deposit(user, "USDT", "1000000")
        x.deposit(user, "BTC", "10")
        x.deposit(user, "ETH", "100")
    a = x.place(1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    b = x.place(2, "ETH_USDT", SELL, price="2000", amount="3").order
    x.place(2, "BTC_USDT", SELL, price="30500", amount="0.2")
    x.deposit(1, "USDT", "1", "extra")  # forwards nothing
    x.amend(1, a.order_id, new_price="31000", new_amount="0.4")  # reduce + move, trades 0.2
    x.amend(2, b.order_id, new_amount="2")
    x.amend(2, b.order_id, new_price="2100", new_amount="1.5")
    c = x.place(1, "ETH_USDT", BUY, price="1900", amount="1", client_order_id="c").order
    x.cancel(1, c.order_id)
    x.place(1, "SOL_USDT", BUY, price="20", amount="10")
    x.cancel_all(1)  # every shard
    x.place(2, "ETH_BTC", SELL, price="0.07", amount="1")
    x.cancel_all(2, market="ETH_BTC")
    x.check_invariants()
    return x


def test_the_chain_is_rebuilt_from_the_journal() -> None:
    x = two_shard_flow()
    assert all(len(v) > 3 for v in x.forwarded.values())
    rebuilt: dict[str, list[bytes]] = {s: [] for s in CATALOG.shards}
    for seq, record in enumerate(x.accounts_journal, 1):
        for _, shard, payload in outbox_commands(
            x.source, seq, ev.AccountsCommand.FromString(record), CATALOG
        ):
            rebuilt[shard].append(payload)
    assert rebuilt == x.forwarded
    accounts, _ = replay(CATALOG, x)  # the replay checks every journaled link against its own chain
    assert accounts.forwarded == x.accounts.forwarded
    assert accounts.state_hash() == x.accounts.state_hash()


def test_the_chain_survives_a_snapshot() -> None:
    x = two_shard_flow()
    restored = AccountsMachine.restore(CATALOG, x.source, x.accounts.snapshot())
    assert restored.forwarded == x.accounts.forwarded and restored.state_hash() == x.accounts.state_hash()
    x.accounts = restored  # carry on from the snapshot: the sim checks the chain continues
    x.place(1, "BTC_USDT", BUY, price="29000", amount="0.1")
    x.place(1, "ETH_USDT", BUY, price="1000", amount="0.1")
    x.check_invariants()


def test_a_journaled_link_that_disagrees_with_the_chain_stops_the_replay() -> None:
    x = two_shard_flow()
    records = [ev.AccountsCommand.FromString(r) for r in x.accounts_journal]
    victim = next(c for c in records if c.forward_links)
    victim.forward_links[0].previous_sequence += 1
    fresh = AccountsMachine.restore(CATALOG, x.source, None)
    with pytest.raises(RuntimeError, match="forward links"):
        for seq, cmd in enumerate(records, 1):
            fresh.apply(seq, cmd.time_us, cmd)


# --- the Forwarder against a shard that refuses gaps ---------------------------------------------


class ChainCheckingShard:
    """MatchingService.SubmitCommands as the shard answers it: the first answer names the last
    sequence applied; resends are ignored and a command whose previous_sequence is not that last one
    is refused (recorded). `drop_after` closes the stream after that many applied commands, losing
    the rest of the request it came in (a connection that breaks in the middle of a batch)."""

    def __init__(self, applied: int = 0) -> None:
        self.applied = applied
        self.received: list[bytes] = []
        self.gaps: list[tuple[int, int, int]] = []
        self.sessions = 0
        self.drop_after: int | None = None
        self.changed = asyncio.Event()

    async def SubmitCommands(
        self, requests: AsyncIterator[mpb.SubmitCommandsRequest], context: Any
    ) -> AsyncIterator[mpb.SubmitCommandsResponse]:
        self.sessions += 1
        it = requests.__aiter__()
        await it.__anext__()
        yield mpb.SubmitCommandsResponse(acknowledged_sequence=self.applied)
        async for req in it:
            drop = False
            for c in req.commands:
                if c.source_sequence <= self.applied:
                    continue
                if c.previous_sequence != self.applied:
                    self.gaps.append((c.source_sequence, c.previous_sequence, self.applied))
                    continue
                self.applied = c.source_sequence
                self.received.append(c.SerializeToString())
                if self.drop_after is not None and len(self.received) >= self.drop_after:
                    self.drop_after = None
                    drop = True
                    break
            self.changed.set()
            yield mpb.SubmitCommandsResponse(acknowledged_sequence=self.applied)
            if drop:
                return


@pytest.fixture
def peer_security() -> Iterator[None]:
    """This test process acts as accounts-0 (only it may submit commands as accounts-0)."""
    before = rpc.security()
    rpc.configure(before.as_principal("accounts-0"))
    yield
    rpc.configure(before)


async def _serve(shard: ChainCheckingShard) -> rpc.ServerHandle:
    def add(servicer: ChainCheckingShard, server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.SubmitCommands,
            request_deserializer=mpb.SubmitCommandsRequest.FromString,
            response_serializer=mpb.SubmitCommandsResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "exchange.v1.MatchingService", {"SubmitCommands": handler}
                ),
            )
        )

    return await rpc.start_server("127.0.0.1:0", [(add, shard)], ["exchange.v1.MatchingService"])


def _journal(tmp_path: Path, x: MiniExchange) -> FileJournal:
    j = FileJournal(tmp_path / "commands")
    j.append(x.accounts_journal)
    j.sync()
    return j


async def _until(shard: ChainCheckingShard, applied: int, timeout: float = 20.0) -> None:
    async def wait() -> None:
        while shard.applied < applied:
            shard.changed.clear()
            await shard.changed.wait()

    await asyncio.wait_for(wait(), timeout)


def _seq(payload: bytes) -> int:
    return int(ev.MatchingCommand.FromString(payload).source_sequence)


@pytest.mark.parametrize("start", ["nothing", "middle of an amend", "most"])
def test_resends_after_restarts_and_reconnects_form_a_valid_chain(
    tmp_path: Path, peer_security: None, start: str
) -> None:
    """A fresh Forwarder (as after an accounts restart: nothing in memory) resends from the journal
    right after what the shard applied, even in the middle of an amend's reduce and move; a dropped
    stream resumes without gaps or repeats; a shard that lost commands gets them again."""
    x = two_shard_flow()
    sent = x.forwarded["matching-0"]
    seqs = [_seq(p) for p in sent]
    amend_reduce = next(
        i
        for i, p in enumerate(sent)
        if ev.MatchingCommand.FromString(p).WhichOneof("command") == "reduce_order"
    )
    first = {"nothing": 0, "middle of an amend": amend_reduce + 1, "most": len(sent) - 2}[start]
    applied = seqs[first - 1] if first else 0

    async def main() -> None:
        shard = ChainCheckingShard(applied)
        server = await _serve(shard)
        journal = _journal(tmp_path, x)
        host = journal_host(journal)
        fwd = Forwarder("matching-0", f"127.0.0.1:{server.port}", host, x.source, CATALOG)  # type: ignore[arg-type]
        shard.drop_after = max(1, (len(sent) - first) // 2)  # one reconnect on the way
        task = asyncio.create_task(fwd.run())
        try:
            await _until(shard, seqs[-1])
            assert shard.received == sent[first:]
            assert shard.sessions == 2 and not shard.gaps
            # The shard loses its last three commands (restored from an older state): it says so on
            # the next connection and gets them again, in order, from the journal.
            fwd.stop()
            await asyncio.wait_for(task, 10)
            shard.applied = seqs[-4]
            shard.received.clear()
            fwd._stop = False  # the same link runs again (accounts kept running)
            task2 = asyncio.create_task(fwd.run())
            await _until(shard, seqs[-1])
            assert shard.received == sent[-3:] and not shard.gaps
            fwd.stop()
            await asyncio.wait_for(task2, 10)
        finally:
            fwd.stop()
            task.cancel()
            await server.stop(0)
            journal.close()

    asyncio.run(main())


def test_push_ignores_what_the_link_already_holds(tmp_path: Path) -> None:
    x = two_shard_flow()
    journal = _journal(tmp_path, x)
    try:
        fwd = Forwarder("matching-0", "127.0.0.1:1", journal_host(journal), x.source, CATALOG)  # type: ignore[arg-type]
        sent = x.forwarded["matching-0"]
        seqs = [_seq(p) for p in sent]
        backlog = fwd._from_journal(1, journal.durable_seq)
        assert backlog == list(zip(seqs, sent, strict=True))
        # From just after an amend's reduce: its move comes from the record that holds both.
        i = next(
            i
            for i, p in enumerate(sent)
            if ev.MatchingCommand.FromString(p).WhichOneof("command") == "reduce_order"
        )
        assert fwd._from_journal(seqs[i] + 1, journal.durable_seq)[0] == (seqs[i + 1], sent[i + 1])
        # ... and up to it: the reduce (numbered like the record before) is included.
        assert fwd._from_journal(1, seqs[i])[-1] == (seqs[i], sent[i])
        fwd.queued.extend(backlog)
        fwd.push(seqs[-1], sent[-1])  # committed before the session read it from the journal
        fwd.push(seqs[-2], sent[-2])
        assert list(fwd.queued) == backlog
        fwd.push(seqs[-1] + 1, b"next")
        assert fwd.queued[-1] == (seqs[-1] + 1, b"next")
    finally:
        journal.close()


def test_a_version_1_snapshot_still_restores() -> None:
    """Snapshots written before the chain, the quarantine and the placed values."""
    from services.common.snapshot_codec import dumps_plain, loads_plain

    x = two_shard_flow()
    x.place(1, "BTC_USDT", BUY, price="1000", amount="0.1", client_order_id="v1")
    state = loads_plain(x.accounts.snapshot())
    state["version"] = 1
    del state["forwarded"]
    for key in ("quarantine", "quarantined_total"):
        del state["ledger"][key]
    for o in state["ledger"]["orders"] + state["ledger"]["finished"]:
        del o["placed_price"], o["placed_amount"]
    m = AccountsMachine.restore(CATALOG, x.source, dumps_plain(state))
    assert m.forwarded == {} and m.ledger.quarantined_total == 0
    order = m.ledger.lookup(1, client_order_id="v1")
    assert (order.placed_price, order.placed_amount) == (order.price, order.amount) == (100_000, 10_000)
    assert m.ledger.snapshot()["balances"] == x.accounts.ledger.snapshot()["balances"]
