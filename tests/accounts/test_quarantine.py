"""Settlement quarantine: a matching event that names an order accounts does not hold open (or whose
numbers do not fit it) is skipped as a whole, recorded and counted; the settle command is still
journaled, the shard's settled sequence advances, every other event settles, and the balance invariant
holds. Before, Ledger.on_trade raised RuntimeError and killed the writer on every restart."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev

from services.accounts.ledger import QUARANTINE_KEEP
from services.accounts.machine import CODEC, AccountsMachine, QuarantineReport
from services.accounts.service import AccountsServicer, outbox_hook
from services.common.config import AccountsConfig
from services.common.errors import FailedPrecondition, Reason
from services.common.host import HostOptions, StateMachineHost
from testkit.accounts_sim import MiniExchange, default_catalog, replay

BUY, SELL = 1, 2
USDT = BTC = 10**8


def check_audit(x: MiniExchange) -> None:
    for asset, a in x.accounts.ledger.audit().items():
        assert a["total"] == a["external"], (asset, a)
        assert a["frozen"] == a["held"], (asset, a)


def resting_sell() -> tuple[MiniExchange, int]:
    x = MiniExchange()
    x.deposit(1, "USDT", "100000")
    x.deposit(2, "BTC", "1")
    sell = x.place(2, "BTC_USDT", SELL, price="30000", amount="0.5").order
    return x, sell.order_id


def forged_settle(x: MiniExchange, maker: int) -> ev.AccountsCommand:
    """A batch: a trade of the known resting sell with an order accounts never placed, then an
    accepted and a done of that unknown order, then a real event (accounts' own buy accepted)."""
    x.auto_settle = False
    buy = x.place(1, "BTC_USDT", BUY, price="1000", amount="0.1").order  # accepted event pending
    (accepted,) = x.pending_events["matching-0"]
    x.pending_events["matching-0"].clear()
    seq = x.accounts.ledger.settled["matching-0"]
    events = [
        ev.MatchingEvent(source="matching-0", market="BTC_USDT", command_source="evil"),
        ev.MatchingEvent(source="matching-0", market="BTC_USDT", command_source="evil"),
        ev.MatchingEvent(source="matching-0", market="BTC_USDT", command_source="evil"),
    ]
    events[0].order_accepted.order.CopyFrom(ev.PlaceOrderCommand(order_id=999, user_id=66, market="BTC_USDT"))
    events[1].trade_executed.CopyFrom(
        ev.TradeExecuted(
            trade_id=1,
            price_ticks=3_000_000,
            amount_lots=20_000,
            quote_units=3_000_000 * 20_000 * 10,
            base_units=20_000 * 1000,
            taker_side=BUY,  # type: ignore[arg-type]
            taker_order_id=999,
            taker_user_id=66,
            maker_order_id=maker,
            maker_user_id=2,
        )
    )
    events[2].order_done.CopyFrom(ev.OrderDone(order_id=999, user_id=66, reason=1))  # type: ignore[arg-type]
    accepted.sequence = seq + 4
    events.append(accepted)
    for i, e in enumerate(events[:3]):
        e.sequence = seq + 1 + i
    cmd = ev.AccountsCommand()
    cmd.settle.shard = "matching-0"
    cmd.settle.events.extend(events)
    assert buy.status == 1
    return cmd


def test_a_trade_with_an_unknown_order_is_quarantined_and_the_rest_settles() -> None:
    x, maker = resting_sell()
    cmd = forged_settle(x, maker)
    before_btc = x.balance(2, "BTC")
    out = x.apply_raw(cmd)
    assert out.journal
    reports = [e for e in out.effects if isinstance(e, QuarantineReport)]
    assert [(r.kind, r.sequence) for r in reports] == [
        ("order_accepted", cmd.settle.events[0].sequence),
        ("trade_executed", cmd.settle.events[1].sequence),
        ("order_done", cmd.settle.events[2].sequence),
    ]
    assert "999" in reports[1].why
    led = x.accounts.ledger
    # Neither side of the trade settled: the known seller still holds and owns its 0.5 BTC.
    assert x.balance(2, "BTC") == before_btc == (50_000_000, 50_000_000)
    assert led.orders[maker].filled == 0
    # The real event of the batch settled; the shard's settled sequence moved past the batch.
    assert led.lookup(1, 2).status == 2  # OPEN
    assert led.settled["matching-0"] == cmd.settle.events[-1].sequence
    assert led.quarantined_total == 3 and len(led.quarantine) == 3
    check_audit(x)
    # Replaying the journal gives the same state (quarantine included).
    accounts, _ = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()
    restored = AccountsMachine.restore(x.catalog, x.source, x.accounts.snapshot())
    assert restored.state_hash() == x.accounts.state_hash()


def test_a_forged_order_in_the_shard_does_not_break_accounts() -> None:
    """A command accounts never sent reaches the shard and trades with a real order: every event of
    the forged order is quarantined, the real order's later life settles, the invariant holds."""
    x, maker = resting_sell()
    forged = ev.MatchingCommand(source="evil", source_sequence=1)
    forged.place_order.CopyFrom(
        ev.PlaceOrderCommand(
            order_id=10**6,
            user_id=66,
            market="BTC_USDT",
            side=BUY,  # type: ignore[arg-type]
            type=1,  # type: ignore[arg-type]
            time_in_force=1,  # type: ignore[arg-type]
            price_ticks=3_000_000,
            amount_lots=20_000,
        )
    )
    x._shard_apply("matching-0", forged)
    x.settle()
    kinds = [r.kind for r in x.quarantined]
    assert kinds == ["order_accepted", "trade_executed", "order_done"], kinds
    led = x.accounts.ledger
    assert led.orders[maker].filled == 0  # matching filled 0.2 of it: accounts did not settle that
    check_audit(x)
    # Matching says 0.3 is left; the user cancels: the done releases the whole hold.
    x.cancel(2, maker)
    assert x.balance(2, "BTC") == (100_000_000, 0)
    assert led.lookup(2, maker).status == 5
    check_audit(x)
    accounts, _ = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()


def test_an_amend_that_disagrees_with_accounts_is_quarantined_not_fatal() -> None:
    x, maker = resting_sell()
    forged = ev.MatchingCommand(source="evil", source_sequence=1)
    forged.place_order.CopyFrom(
        ev.PlaceOrderCommand(
            order_id=10**6,
            user_id=66,
            market="BTC_USDT",
            side=BUY,
            type=1,
            time_in_force=2,
            price_ticks=3_000_000,
            amount_lots=10_000,  # type: ignore[arg-type]
        )
    )
    x._shard_apply("matching-0", forged)
    x.settle()
    # Matching: 0.4 left of 0.5; accounts: 0.5 (the fill was quarantined). A reduce to 0.45:
    x.amend(2, maker, new_amount="0.45")
    last = x.quarantined[-1]
    assert last.kind == "order_amended" and "accounts sees 45000 lots open, matching 35000" in last.why
    check_audit(x)
    x.cancel(2, maker)
    assert x.balance(2, "BTC") == (100_000_000, 0)
    check_audit(x)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quote_units", 1),  # not price x amount
        ("maker_user_id", 3),  # not the owner
        ("amount_lots", 60_000),  # more than the order
        ("taker_fee", -1),
    ],
)
def test_a_trade_that_does_not_fit_its_orders_is_quarantined(field: str, value: int) -> None:
    x, maker = resting_sell()
    x.auto_settle = False
    buy = x.place(1, "BTC_USDT", BUY, price="29000", amount="1").order
    x.settle()
    t = ev.TradeExecuted(
        trade_id=7,
        price_ticks=3_000_000,
        amount_lots=10_000,
        quote_units=3_000_000 * 10_000 * 10,
        base_units=10_000 * 1000,
        taker_side=BUY,  # type: ignore[arg-type]
        taker_order_id=buy.order_id,
        taker_user_id=1,
        maker_order_id=maker,
        maker_user_id=2,
    )
    setattr(t, field, value)
    if field == "amount_lots":
        t.quote_units, t.base_units = 3_000_000 * value * 10, value * 1000
    cmd = ev.AccountsCommand()
    cmd.settle.shard = "matching-0"
    e = cmd.settle.events.add(
        source="matching-0", market="BTC_USDT", sequence=x.accounts.ledger.settled["matching-0"] + 1
    )
    e.trade_executed.CopyFrom(t)
    before = (x.balance(1, "USDT"), x.balance(1, "BTC"), x.balance(2, "BTC"), x.balance(2, "USDT"))
    out = x.apply_raw(cmd)
    assert out.journal and len([r for r in out.effects if isinstance(r, QuarantineReport)]) == 1
    assert (x.balance(1, "USDT"), x.balance(1, "BTC"), x.balance(2, "BTC"), x.balance(2, "USDT")) == before
    check_audit(x)


def test_a_gap_in_the_shards_events_is_refused_and_changes_nothing() -> None:
    x, _ = resting_sell()
    cmd = ev.AccountsCommand()
    cmd.settle.shard = "matching-0"
    e = cmd.settle.events.add(
        source="matching-0", market="BTC_USDT", sequence=x.accounts.ledger.settled["matching-0"] + 2
    )
    e.order_done.CopyFrom(ev.OrderDone(order_id=1, user_id=2, reason=2))  # type: ignore[arg-type]
    before = x.accounts.state_hash()
    with pytest.raises(FailedPrecondition) as info:
        x.apply_raw(cmd)
    assert info.value.reason == Reason.SEQUENCE_GAP
    assert x.accounts.state_hash() == before


def test_the_quarantine_is_bounded_and_counted() -> None:
    x, _ = resting_sell()
    cmd = ev.AccountsCommand()
    cmd.settle.shard = "matching-9"
    for i in range(QUARANTINE_KEEP + 500):
        cmd.settle.events.add(source="matching-9", market="BTC_USDT", sequence=i + 1).order_done.CopyFrom(
            ev.OrderDone(order_id=10**6 + i, user_id=5, reason=2)  # type: ignore[arg-type]
        )
    x.apply_raw(cmd)
    led = x.accounts.ledger
    assert led.quarantined_total == QUARANTINE_KEEP + 500 and len(led.quarantine) == QUARANTINE_KEEP
    assert led.quarantine[-1][1] == QUARANTINE_KEEP + 500  # the newest are kept
    restored = AccountsMachine.restore(x.catalog, x.source, x.accounts.snapshot())
    assert list(restored.ledger.quarantine) == list(led.quarantine)
    assert restored.ledger.quarantined_total == led.quarantined_total


def test_the_service_logs_each_quarantined_event_and_reports_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = outbox_hook({})
    with caplog.at_level(logging.ERROR, logger="services.accounts.service"):
        hook([QuarantineReport("matching-0", 12, "trade_executed", "taker order 999 is not an open order")])
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "matching event quarantined: not settled"
    assert (record.shard, record.event_sequence, record.event) == ("matching-0", 12, "trade_executed")  # type: ignore[attr-defined]

    x, maker = resting_sell()
    x.apply_raw(forged_settle(x, maker))
    host = SimpleNamespace(machine=x.accounts, on_events=[], snapshot_seq=0, queue_depth=0)
    servicer = AccountsServicer(host, x.catalog, AccountsConfig(), {})  # type: ignore[arg-type]
    status = asyncio.run(servicer.GetAccountsStatus(apb.GetAccountsStatusRequest(), None))
    assert status.quarantined_events == 3


def test_the_writer_survives_a_quarantined_batch_and_its_replay(tmp_path: Path) -> None:
    """Through the real host: the settle batch is journaled, the writer goes on, and a restart replays
    it without dying (before, the replay raised RuntimeError on every restart)."""
    catalog = default_catalog()
    sell = ev.AccountsCommand()
    sell.place_order.order.CopyFrom(
        ev.PlaceOrderCommand(
            user_id=2, market="BTC_USDT", side=SELL, type=1, price_ticks=3_000_000, amount_lots=50_000
        )  # type: ignore[arg-type]
    )
    settle = ev.AccountsCommand()
    settle.settle.shard = "matching-0"
    accepted = settle.settle.events.add(source="matching-0", sequence=1, market="BTC_USDT")
    accepted.order_accepted.order.CopyFrom(ev.PlaceOrderCommand(order_id=1, user_id=2, market="BTC_USDT"))
    trade = settle.settle.events.add(source="matching-0", sequence=2, market="BTC_USDT")
    trade.trade_executed.CopyFrom(
        ev.TradeExecuted(
            trade_id=1,
            price_ticks=3_000_000,
            amount_lots=20_000,
            quote_units=3_000_000 * 20_000 * 10,
            base_units=20_000 * 1000,
            taker_side=BUY,  # type: ignore[arg-type]
            taker_order_id=999,
            taker_user_id=66,
            maker_order_id=1,
            maker_user_id=2,
        )
    )
    done = settle.settle.events.add(source="matching-0", sequence=3, market="BTC_USDT")
    done.order_done.CopyFrom(ev.OrderDone(order_id=999, user_id=66, reason=1))  # type: ignore[arg-type]

    async def run(commands: list[ev.AccountsCommand]) -> tuple[str, int, int]:
        host: StateMachineHost[ev.AccountsCommand, AccountsMachine] = StateMachineHost(
            "accounts-0",
            tmp_path,
            restore=lambda data: AccountsMachine.restore(catalog, "accounts-0", data),
            codec=CODEC,
            options=HostOptions(fork_snapshots=False, snapshot_every=0),
        )
        await host.start()
        try:
            for c in commands:
                if c.WhichOneof("command") == "settle":
                    host.enqueue_internal(c)
                else:
                    await host.submit(c)
            led = host.machine.ledger
            return host.machine.state_hash(), led.quarantined_total, led.settled.get("matching-0", 0)
        finally:
            await host.stop(snapshot=False)

    first = asyncio.run(run([_deposit(1), _deposit(2, "BTC"), sell, settle, _deposit(3)]))
    assert first[1:] == (2, 3)  # the trade and the done of order 999; the shard is settled to 3
    again = asyncio.run(run([]))  # restart: the whole journal is replayed, the quarantined batch too
    assert again == first


def _deposit(user: int, asset: str = "USDT") -> ev.AccountsCommand:
    cmd = ev.AccountsCommand()
    cmd.adjust_balance.CopyFrom(
        ev.BalanceAdjustCommand(user_id=user, asset=asset, change=USDT, business="d", business_id=f"d-{user}")
    )
    return cmd
