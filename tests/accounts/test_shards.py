"""Accounts sharded by user, in one process: N accounts state machines (shard i owns user_id mod N == i)
and the matching machines, wired as the services are (every accounts shard forwards to every matching
shard; every accounts shard settles every matching shard's events, its own users' side only)."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import types_pb2

from services.accounts.audit import cross_shard_problems
from services.accounts.links import own_events
from services.accounts.machine import AccountsMachine, QuarantineReport
from services.accounts.views import (
    adjust_command,
    cancel_command,
    open_sub_account_command,
    place_command,
    transfer_command,
)
from services.common.enums import BUY, SELL
from services.common.errors import ExchangeError, FailedPrecondition, Reason
from services.matching.engine import MatchingEngine
from services.matching.machine import MatchingMachine
from testkit.accounts_sim import default_catalog

CATALOG = default_catalog({"matching-0": ["BTC_USDT"], "matching-1": ["ETH_USDT", "SOL_USDT", "DOGE_USDT"]})


class Sharded:
    def __init__(self, n: int, *, filtered: bool = False) -> None:
        self.n = n
        # As the services' settlement feeds: each shard journals only its own users' events (a range).
        self.owns = [own_events(f"accounts-{i}", i, n) if filtered else None for i in range(n)]
        self.time_us = 1_700_000_000_000_000
        self.accounts = [
            AccountsMachine.restore(CATALOG, f"accounts-{i}", None, shard=i, shards=n) for i in range(n)
        ]
        self.journals: list[list[bytes]] = [[] for _ in range(n)]
        self.matching = {
            name: MatchingMachine(MatchingEngine(name, CATALOG.markets_of_shard(name)))
            for name in CATALOG.shards
        }
        self.pending: dict[str, list[ev.MatchingEvent]] = {name: [] for name in self.matching}
        self.quarantined: list[QuarantineReport] = []

    def apply(self, i: int, cmd: ev.AccountsCommand) -> Any:
        self.time_us += 1000
        machine = self.accounts[i]
        out = machine.apply(machine.applied_seq + 1, self.time_us, cmd)
        if out.journal:
            cmd.time_us = self.time_us
            self.journals[i].append(cmd.SerializeToString())
            for effect in out.effects:
                if isinstance(effect, QuarantineReport):
                    self.quarantined.append(effect)
                    continue
                _, shard, raw = effect
                m = self.matching[shard]
                mcmd = ev.MatchingCommand.FromString(raw)
                mout = m.apply(m.applied_seq + 1, self.time_us, mcmd)
                self.pending[shard].extend(ev.MatchingEvent.FromString(b) for b in mout.events)
        return out.result

    def of(self, user: int, cmd: ev.AccountsCommand) -> Any:
        return self.apply(user % self.n, cmd)

    def settle(self, only: int | None = None) -> None:
        """Every accounts shard (or only shard `only`) settles what matching emitted so far."""
        for shard, events in self.pending.items():
            for i in range(self.n):
                if only is not None and i != only:
                    continue
                last = self.accounts[i].ledger.settled.get(shard, 0)
                todo = [e for e in events if e.sequence > last]
                if todo:
                    cmd = ev.AccountsCommand()
                    cmd.settle.shard = shard
                    owns = self.owns[i]
                    if owns is None:
                        cmd.settle.events.extend(todo)
                    else:
                        cmd.settle.first_sequence, cmd.settle.last_sequence = (
                            todo[0].sequence,
                            todo[-1].sequence,
                        )
                        cmd.settle.events.extend(e for e in todo if owns(e))
                    self.apply(i, cmd)

    def deposit(self, user: int, asset: str, amount: str) -> Any:
        return self.of(user, adjust_command(user, asset, amount, "deposit", f"d{self.time_us}", CATALOG, 1))

    def place(self, user: int, market: str, side: Any, price: str, amount: str) -> Any:
        req = apb.PlaceOrderRequest(
            user_id=user,
            market=market,
            side=side,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price=price,
            amount=amount,
        )
        return self.of(user, place_command(req, CATALOG))

    def statuses(self) -> list[apb.GetAccountsStatusResponse]:
        """What GetAccountsStatus(with_audit) answers, per shard (as services.accounts.service)."""
        out = []
        for m in self.accounts:
            st = apb.GetAccountsStatusResponse(source=m.source, settled_sequences=dict(m.ledger.settled))
            for asset, a in sorted(m.ledger.audit().items()):
                fmt = CATALOG.assets[asset].format
                st.audit.add(
                    asset=asset,
                    total=fmt(a["total"]),
                    external=fmt(a["external"]),
                    frozen=fmt(a["frozen"]),
                    held=fmt(a["held"]),
                    cross_shard=fmt(a["cross_shard"]),
                )
            out.append(st)
        return out


def test_a_shard_refuses_users_it_does_not_own_naming_the_owner() -> None:
    x = Sharded(2)
    with pytest.raises(FailedPrecondition) as err:
        x.apply(0, adjust_command(3, "USDT", "10", "deposit", "d1", CATALOG, 1))
    assert err.value.reason == Reason.USER_NOT_ON_SHARD
    assert err.value.metadata == {"shard": "accounts-1", "user_id": "3"}
    assert x.accounts[0].applied_seq == 0 and x.journals[0] == []  # a refused command changes nothing
    with pytest.raises(FailedPrecondition, match="accounts-0"):
        x.accounts[1].ledger.lookup(2, 1)


def test_order_and_sub_account_ids_land_in_their_shard() -> None:
    x = Sharded(3)
    for user in (3, 4, 5, 6):
        x.deposit(user, "USDT", "1000")
    ids = {user: x.place(user, "BTC_USDT", BUY, "1000", "0.01").order.order_id for user in (3, 4, 5, 6)}
    assert ids[3] == 1 and ids[6] == 4  # shard 0: 1, 4, 7, ...
    assert ids[4] == 2 and ids[5] == 3
    for user, oid in ids.items():
        assert (oid - 1) % 3 == user % 3
    for owner in (4, 5, 7):
        sub = x.of(
            owner, open_sub_account_command(apb.OpenSubAccountRequest(owner_user_id=owner, label="bot"))
        )
        assert sub.result.sub_account.user_id % 3 == owner % 3
    # A transfer to the sub-account stays on the owner's shard.
    sub_id = x.accounts[1].ledger.subs.by_owner[4]["bot"]
    x.of(
        4,
        transfer_command(
            apb.TransferRequest(
                from_user_id=4, to_user_id=sub_id, asset="USDT", amount="5", transfer_id="t1"
            ),
            CATALOG,
        ),
    )
    assert x.accounts[1].ledger.peek_balance(sub_id, "USDT")[0] == 5 * 10**8


def test_a_cross_shard_trade_settles_once_on_each_side() -> None:
    x = Sharded(2)
    x.deposit(2, "BTC", "1")  # shard 0: the maker, selling
    x.deposit(3, "USDT", "100000")  # shard 1: the taker, buying
    x.place(2, "BTC_USDT", SELL, "30000", "0.5")
    x.place(3, "BTC_USDT", BUY, "30000", "0.2")
    x.settle()
    x.settle()  # again: nothing settles twice
    a0, a1 = (m.ledger for m in x.accounts)
    usdt, btc = 10**8, 10**8
    # 0.2 BTC x 30000 = 6000 USDT; maker fee 0.1% of 6000 USDT, taker fee 0.2% of 0.2 BTC.
    assert a0.peek_balance(2, "USDT") == (6000 * usdt - 6 * usdt, 0)
    assert a0.peek_balance(2, "BTC") == (btc // 2, btc * 3 // 10)
    assert a1.peek_balance(3, "BTC") == (btc // 5 - btc // 5 // 500, 0)
    assert a1.peek_balance(3, "USDT") == (94000 * usdt, 0)
    assert a0.peek_balance(0, "USDT") == (6 * usdt, 0)  # each shard's own fee account
    assert a1.peek_balance(0, "BTC") == (btc // 5 // 500, 0)
    assert a0.cross_shard == {"BTC": -btc // 5, "USDT": 6000 * usdt}
    assert a1.cross_shard == {"BTC": btc // 5, "USDT": -6000 * usdt}
    assert cross_shard_problems(x.statuses()) == []


def test_the_cross_shard_check_sees_a_shard_behind_and_a_broken_sum() -> None:
    x = Sharded(2)
    x.deposit(2, "BTC", "1")
    x.deposit(3, "USDT", "100000")
    x.place(2, "BTC_USDT", SELL, "30000", "0.5")
    x.place(3, "BTC_USDT", BUY, "30000", "0.2")
    x.settle(only=0)
    problems = cross_shard_problems(x.statuses())
    assert len(problems) == 1 and "not settled the same matching events" in problems[0]
    x.settle()
    assert cross_shard_problems(x.statuses()) == []
    x.accounts[1].ledger.cross_shard["BTC"] += 1  # a lost unit: both the shard and the sum see it
    problems = cross_shard_problems(x.statuses())
    assert any("accounts-1 BTC: balances" in p for p in problems)
    assert any("BTC: cross-shard flows sum to" in p for p in problems)


def test_random_flow_keeps_the_invariant_across_shards_and_replays() -> None:
    rng = random.Random(12)
    x = Sharded(2, filtered=True)
    users = list(range(1, 9))
    for u in users:
        x.deposit(u, "USDT", "50000")
        x.deposit(u, "BTC", "2")
        x.deposit(u, "ETH", "20")
    placed: list[tuple[int, int]] = []
    for step in range(400):
        u = rng.choice(users)
        if placed and rng.random() < 0.2:
            user, oid = placed.pop(rng.randrange(len(placed)))
            with contextlib.suppress(ExchangeError):
                x.of(user, cancel_command(apb.CancelOrderRequest(user_id=user, order_id=oid)))
        else:
            market, price = rng.choice([("BTC_USDT", 30000), ("ETH_USDT", 2000)])
            side = rng.choice([BUY, SELL])
            try:
                r = x.place(
                    u,
                    market,
                    side,
                    str(price + rng.randint(-5, 5)),
                    "0.01" if market == "BTC_USDT" else "0.1",
                )
            except ExchangeError:
                continue
            placed.append((u, r.order.order_id))
        if step % 7 == 0:
            x.settle()
    x.settle()
    assert x.quarantined == []
    assert cross_shard_problems(x.statuses()) == []
    assert any(m.ledger.cross_shard for m in x.accounts)  # trades did cross shards
    for m in x.accounts:
        assert set(m.ledger.orders) == {
            oid
            for mm in x.matching.values()
            for b in mm.engine.books.values()
            for oid, o in b.orders.items()
            if o.user_id % 2 == m.ledger.shard
        }
    # Each shard's journal replays to the same state; its snapshot restores as that shard only.
    for i, m in enumerate(x.accounts):
        again = AccountsMachine.restore(CATALOG, m.source, None, shard=i, shards=2)
        for seq, raw in enumerate(x.journals[i], 1):
            cmd = ev.AccountsCommand.FromString(raw)
            assert again.apply(seq, cmd.time_us, cmd).journal
        assert again.state_hash() == m.state_hash()
        restored = AccountsMachine.restore(CATALOG, m.source, m.snapshot(), shard=i, shards=2)
        assert restored.state_hash() == m.state_hash()
        with pytest.raises(ValueError, match="repartitioned"):
            AccountsMachine.restore(CATALOG, m.source, m.snapshot(), shard=0, shards=1)


def test_a_filtered_range_settles_own_events_and_refuses_gaps() -> None:
    x = Sharded(2, filtered=True)
    x.deposit(2, "BTC", "1")
    x.deposit(3, "USDT", "100000")
    x.place(2, "BTC_USDT", SELL, "30000", "0.5")
    x.place(3, "BTC_USDT", BUY, "30000", "0.2")
    events = list(x.pending["matching-0"])
    led = x.accounts[0].ledger

    def ranged(first: int, last: int, keep: list[ev.MatchingEvent]) -> ev.AccountsCommand:
        cmd = ev.AccountsCommand()
        cmd.settle.shard = "matching-0"
        cmd.settle.first_sequence, cmd.settle.last_sequence = first, last
        cmd.settle.events.extend(keep)
        return cmd

    with pytest.raises(FailedPrecondition) as err:  # does not start right after what is settled
        x.apply(0, ranged(2, len(events), events[1:]))
    assert err.value.reason == Reason.SEQUENCE_GAP and "matching-0" not in led.settled
    with pytest.raises(FailedPrecondition):  # an event outside its range
        x.apply(0, ranged(1, 1, events[:2]))
    x.apply(0, ranged(1, 1, events[:1]))
    assert led.settled["matching-0"] == 1
    x.settle()
    assert led.settled["matching-0"] == events[-1].sequence
    journaled = ev.AccountsCommand.FromString(x.journals[1][-1]).settle
    assert journaled.last_sequence == events[-1].sequence
    assert len(journaled.events) < len(events)  # accounts-1 journaled only its user's events
    before = x.accounts[0].state_hash()
    assert x.accounts[0].apply(99, 0, ranged(1, events[-1].sequence, events)).journal is False  # a resend
    assert x.accounts[0].state_hash() == before
    assert cross_shard_problems(x.statuses()) == []
