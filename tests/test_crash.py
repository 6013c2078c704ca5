"""kill -9 accounts and matching at random points under a stream of orders; prove that no acknowledged
order is lost, no fill is settled twice, the books and balances equal a run without crashes, and the
invariants hold."""

from __future__ import annotations

import random
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2

from services.accounts.ledger import Ledger
from services.accounts.machine import AccountsMachine
from services.common.journal import FileJournal
from services.matching.engine import MatchingEngine
from services.matching.machine import MatchingMachine
from testkit.accounts_sim import default_catalog
from tests.cluster import Cluster, assert_invariants

pytestmark = pytest.mark.slow

USERS = 8
BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL


class Load(threading.Thread):
    """Places and cancels orders as fast as the exchange answers; records what was acknowledged."""

    def __init__(self, c: Cluster, seed: int) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.rng = random.Random(seed)
        self.acked: dict[int, apb.PlaceOrderRequest] = {}
        self.stop_flag = threading.Event()
        self.errors = 0

    def run(self) -> None:
        rng = self.rng
        while not self.stop_flag.is_set():
            try:
                stub = self.c.accounts
                if self.acked and rng.random() < 0.25:
                    oid = rng.choice(list(self.acked))
                    stub.CancelOrder(
                        apb.CancelOrderRequest(user_id=self.acked[oid].user_id, order_id=oid), timeout=5
                    )
                    continue
                side = BUY if rng.random() < 0.5 else SELL
                price = 30000 + rng.randint(-20, 20)
                req = apb.PlaceOrderRequest(
                    user_id=rng.randint(1, USERS),
                    market="BTC_USDT",
                    side=side,
                    type=types_pb2.ORDER_TYPE_LIMIT,
                    price=str(price),
                    amount=f"{rng.randint(1, 30) / 1000:.3f}",
                    time_in_force=rng.choice(
                        [types_pb2.TIME_IN_FORCE_GTC] * 4 + [types_pb2.TIME_IN_FORCE_IOC]
                    ),
                )
                resp = stub.PlaceOrder(req, timeout=5)
                self.acked[resp.order.order_id] = req
            except grpc.RpcError:
                self.errors += 1  # the service is down: nothing was acknowledged
                time.sleep(0.02)


def read_journal(path: Path) -> list[tuple[int, bytes]]:
    j = FileJournal(path)
    try:
        out: list[tuple[int, bytes]] = []
        seq = j.first_seq
        while seq <= j.last_seq:
            recs = j.read(seq, max_records=5000)
            out.extend(recs)
            seq = recs[-1][0] + 1
        return out
    finally:
        j.close()


def test_sigkill_under_load(tmp_path: Path) -> None:
    c = Cluster(tmp_path, accounts_options={"snapshot_every": 700}, shard_options={"snapshot_every": 500})
    c.start()
    try:
        for user in range(1, USERS + 1):
            for asset, amount in (("USDT", "1000000"), ("BTC", "100")):
                c.accounts.Deposit(
                    apb.DepositRequest(
                        user_id=user, asset=asset, amount=amount, business="d", business_id=f"{user}{asset}"
                    )
                )
        load = Load(c, seed=7)
        load.start()
        rng = random.Random(11)
        for round_ in range(6):
            time.sleep(rng.uniform(0.5, 1.5))
            victim = rng.choice(["accounts-0", "matching-0"] + (["both"] if round_ == 3 else []))
            names = ["matching-0", "accounts-0"] if victim == "both" else [victim]
            for name in names:
                c.kill(name, signal.SIGKILL)
            time.sleep(rng.uniform(0.0, 0.3))
            for name in names:
                c.start([name])
        # Matching down while accounts keeps accepting orders (they wait in its outbox); then accounts
        # dies too, so after the restart the outbox can only be rebuilt from the journal.
        c.kill("matching-0", signal.SIGKILL)
        time.sleep(1.0)
        c.kill("accounts-0", signal.SIGKILL)
        c.start(["accounts-0"])
        c.start(["matching-0"])
        time.sleep(1.0)
        load.stop_flag.set()
        load.join(30)
        st = c.wait_quiet(timeout=60)
        assert_invariants(st)
        assert len(load.acked) > 300, "the load should have placed a few hundred orders"

        # 1. No acknowledged order is lost.
        for oid, req in load.acked.items():
            order = c.accounts.GetOrder(apb.GetOrderRequest(user_id=req.user_id, order_id=oid)).order
            assert order.order_id == oid
            assert Decimal(order.price) == Decimal(req.price) and Decimal(order.amount) == Decimal(req.amount)

        # 2. The book and the balances equal a run without crashes: replay what accounts journaled
        #    (its order commands, in order) into in-process machines that never crashed.
        live_status = c.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True))
        live_book = {
            (o.order_id, o.price_ticks, o.remaining_lots)
            for side in (BUY, SELL)
            for o in c.matching()
            .ListBookOrders(mpb.ListBookOrdersRequest(market="BTC_USDT", side=side, page_size=1000))
            .orders
        }
        balances = {
            (u, b.asset): (b.available, b.frozen)
            for u in range(0, USERS + 1)
            for b in c.accounts.GetBalances(apb.GetBalancesRequest(user_id=u)).balances
        }
    finally:
        c.stop()

    # The reference: machines that never crashed, fed with what accounts journaled. Matching gets the
    # forwarded commands in journal order; accounts replays its commands, and where the live run
    # settled matching events up to sequence N, the reference settles its own events up to N.
    catalog = default_catalog()
    journal = read_journal(tmp_path / "data" / "accounts-0" / "commands")
    assert journal[0][0] == 1, "accounts keeps its whole journal while a shard may still need it"
    ref_matching = MatchingMachine(MatchingEngine("matching-0", catalog.markets_of_shard("matching-0")))
    ref_accounts = AccountsMachine(Ledger(catalog), "accounts-0")
    ref_events: list[ev.MatchingEvent] = []
    settled = 0
    for seq, payload in journal:
        cmd = ev.AccountsCommand.FromString(payload)
        if cmd.WhichOneof("command") == "settle":
            upto = cmd.settle.events[-1].sequence
            batch = ev.AccountsCommand(time_us=cmd.time_us)
            batch.settle.shard = "matching-0"
            batch.settle.events.extend(ref_events[settled:upto])
            settled = upto
            assert ref_accounts.apply(seq, cmd.time_us, batch).journal
            continue
        out = ref_accounts.apply(seq, cmd.time_us, cmd)
        assert out.journal, f"live accepted command {seq}, reference did not"
        for _, _shard, mcmd in out.effects:
            out = ref_matching.apply(
                ref_matching.applied_seq + 1, cmd.time_us, ev.MatchingCommand.FromString(mcmd)
            )
            ref_events.extend(ev.MatchingEvent.FromString(b) for b in out.events)

    # Same fills, same order: the live event log (read from disk) equals the reference's, times aside.
    live_events = [
        ev.MatchingEvent.FromString(p) for _, p in read_journal(tmp_path / "data" / "matching-0" / "events")
    ]
    for e in live_events + ref_events:
        e.ClearField("time_us")
    assert [e.SerializeToString() for e in live_events] == [e.SerializeToString() for e in ref_events]
    trades = [e.trade_executed.trade_id for e in live_events if e.WhichOneof("event") == "trade_executed"]
    assert trades == list(range(1, len(trades) + 1)), "every fill exactly once"
    assert trades, "the flow should have produced fills"

    ref_book = {
        (o.order_id, o.price, o.remaining)
        for side in (1, 2)
        for o in ref_matching.engine.books["BTC_USDT"].iter_orders(side)
    }
    assert ref_book == live_book
    assert ref_matching.engine.books["BTC_USDT"].next_trade_id - 1 == next(
        m.last_trade_id for m in live_status.markets if m.market == "BTC_USDT"
    )
    led = ref_accounts.ledger
    for (user, asset), (avail, frozen) in balances.items():
        a = catalog.assets[asset]
        ref_avail, ref_frozen = led.peek_balance(user, asset)
        assert (a.format(ref_avail), a.format(ref_frozen)) == (avail, frozen), (user, asset)


def test_restart_recovers_the_same_state(tmp_path: Path) -> None:
    """Replay determinism: a clean restart (snapshot + journal) and a crash restart (journal replay
    from an older snapshot) give the same state hash as before."""
    c = Cluster(tmp_path, accounts_options={"snapshot_every": 50}, shard_options={"snapshot_every": 40})
    c.start()
    try:
        c.accounts.Deposit(
            apb.DepositRequest(user_id=1, asset="USDT", amount="100000", business="d", business_id="1")
        )
        c.accounts.Deposit(
            apb.DepositRequest(user_id=2, asset="BTC", amount="10", business="d", business_id="2")
        )
        for i in range(120):
            c.accounts.PlaceOrder(
                apb.PlaceOrderRequest(
                    user_id=1 + i % 2,
                    market="BTC_USDT",
                    side=BUY if i % 2 == 0 else SELL,
                    type=types_pb2.ORDER_TYPE_LIMIT,
                    price=str(29990 + i % 25),
                    amount="0.01",
                )
            )
        c.wait_quiet()
        a_before = c.accounts.GetAccountsStatus(
            apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True)
        )
        m_before = c.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True))
        for name in ("matching-0", "accounts-0"):
            c.kill(name, signal.SIGKILL)
        c.start(["matching-0", "accounts-0"])
        a_after = c.accounts.GetAccountsStatus(
            apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True)
        )
        m_after = c.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True))
        assert (a_after.state_hash, a_after.applied_sequence) == (
            a_before.state_hash,
            a_before.applied_sequence,
        )
        assert (m_after.state_hash, m_after.applied_sequence) == (
            m_before.state_hash,
            m_before.applied_sequence,
        )
        assert m_after.snapshot_sequence > 0 and a_after.snapshot_sequence > 0
        c.restart("matching-0")  # clean stop: final snapshot, then restore from it alone
        m_clean = c.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True))
        assert m_clean.state_hash == m_before.state_hash
        assert m_clean.snapshot_sequence == m_before.applied_sequence
    finally:
        c.stop()
