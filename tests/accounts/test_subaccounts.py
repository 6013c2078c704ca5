"""Sub-accounts and Transfer in the accounts domain (issue 10, funds isolation): ids allocated in apply,
idempotent opening and transfers, every refusal precise and without trace, the balance invariant across
transfers, orders of a sub-account settling on it only, snapshot and replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from services.accounts import subaccounts
from services.accounts.machine import AccountsMachine
from services.accounts.views import open_sub_account_command, transfer_command
from services.common.enums import BUSINESS_TRANSFER_IN, BUSINESS_TRANSFER_OUT
from services.common.errors import (
    AlreadyExists,
    ExchangeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
)
from services.common.limits import SUB_ACCOUNT_BASE
from testkit.accounts_sim import MiniExchange, replay

BUY, SELL = 1, 2
COIN = 10**8  # units per BTC / USDT (8 decimals)
S1, S2, S3 = SUB_ACCOUNT_BASE + 1, SUB_ACCOUNT_BASE + 2, SUB_ACCOUNT_BASE + 3


def funded() -> MiniExchange:
    """User 1 holds 100000 USDT and 1 BTC, user 2 10 BTC; user 1 opened S1 ("grid") and S2 ("dca"),
    user 2 opened S3."""
    x = MiniExchange()
    x.deposit(1, "USDT", "100000")
    x.deposit(1, "BTC", "1")
    x.deposit(2, "BTC", "10")
    assert x.open_sub_account(1, "grid").result.sub_account.user_id == S1
    assert x.open_sub_account(1, "dca").result.sub_account.user_id == S2
    assert x.open_sub_account(2, "grid").result.sub_account.user_id == S3
    return x


def state(x: MiniExchange) -> tuple[Any, ...]:
    a = x.accounts
    return (a.state_hash(), a.snapshot(), a.applied_seq, a.event_seq, len(x.accounts_journal))


def assert_invariant(x: MiniExchange) -> None:
    for asset, a in x.accounts.ledger.audit().items():
        assert a["total"] == a["external"], (asset, a)
        assert a["frozen"] == a["held"], (asset, a)


def refused(x: MiniExchange, call: Callable[[], Any], error: type[ExchangeError], reason: Reason) -> str:
    """`call` is refused with `error` and `reason` and changes nothing (hash, snapshot, journal)."""
    before = state(x)
    with pytest.raises(error) as info:
        call()
    assert info.value.reason == reason, info.value.message
    assert state(x) == before
    return info.value.message


def raw(x: MiniExchange, cmd: ev.AccountsCommand) -> Any:
    """A command straight into the machine (no edge checks)."""
    x.tick()
    return x.apply_raw(cmd).result


# --- opening -------------------------------------------------------------------------------------


def test_ids_are_allocated_in_apply_from_2_62_and_opening_is_idempotent_by_owner_and_label() -> None:
    x = funded()
    subs = x.accounts.ledger.subs
    assert [(s.user_id, s.owner_user_id, s.label) for s in subs.of_owner(1)] == [
        (S1, 1, "grid"),
        (S2, 1, "dca"),
    ]
    assert [s.user_id for s in subs.of_owner(2)] == [S3]
    assert [s.user_id for s in subs.of_owner(1, after=S1)] == [S2]
    first_seq = subs.get(S1).sequence  # type: ignore[union-attr]
    before = state(x)
    again = x.open_sub_account(1, "grid")
    assert again.result.duplicate and again.result.sub_account.user_id == S1
    assert again.seq == first_seq  # the original command's sequence
    assert state(x) == before  # a duplicate is not journaled
    fresh = x.open_sub_account(1, "grid-2")
    assert not fresh.result.duplicate and fresh.result.sub_account.user_id == SUB_ACCOUNT_BASE + 4
    assert fresh.seq == x.accounts.applied_seq


def test_allocation_skips_an_id_that_already_holds_an_account() -> None:
    x = MiniExchange()
    legacy = ev.AccountsCommand()  # an old journal's deposit at 2^62 + 1 (the edge refuses that now)
    legacy.adjust_balance.CopyFrom(
        ev.BalanceAdjustCommand(user_id=S1, asset="USDT", change=5, business="d", business_id="1")
    )
    raw(x, legacy)
    assert x.open_sub_account(1, "a").result.sub_account.user_id == S2
    assert x.open_sub_account(1, "b").result.sub_account.user_id == S3


def test_opening_refusals_are_precise_and_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    x = funded()

    def open_(owner: int, label: str) -> Callable[[], Any]:
        return lambda: x.open_sub_account(owner, label)

    refused(x, open_(0, "a"), InvalidArgument, Reason.VALUE_OUT_OF_RANGE)
    refused(x, open_(2**63, "a"), InvalidArgument, Reason.VALUE_OUT_OF_RANGE)
    refused(x, open_(SUB_ACCOUNT_BASE + 99, "a"), InvalidArgument, Reason.VALUE_OUT_OF_RANGE)
    refused(x, open_(S1, "a"), FailedPrecondition, Reason.SUB_ACCOUNT_NOT_ALLOWED)
    refused(x, open_(1, ""), InvalidArgument, Reason.INVALID_FIELD)
    refused(x, open_(1, "tab\there"), InvalidArgument, Reason.INVALID_FIELD)
    message = refused(x, open_(1, "x" * 65), InvalidArgument, Reason.FIELD_TOO_LONG)
    assert "x" * 40 not in message  # quotes a short prefix only
    assert x.open_sub_account(1, "é" * 64).result.sub_account.label == "é" * 64  # 64 characters
    # The same checks in the machine, for a command that skipped the edge.
    for owner, label, reason in ((S1, "a", Reason.SUB_ACCOUNT_NOT_ALLOWED), (1, "", Reason.INVALID_FIELD)):
        cmd = ev.AccountsCommand()
        cmd.open_sub_account.CopyFrom(ev.OpenSubAccountCommand(owner_user_id=owner, label=label))
        assert refused(x, lambda c=cmd: raw(x, c), ExchangeError, reason)  # type: ignore[misc]
    monkeypatch.setattr(subaccounts, "MAX_SUB_ACCOUNTS_PER_OWNER", 3)
    refused(x, open_(1, "fourth"), FailedPrecondition, Reason.TOO_MANY_SUB_ACCOUNTS)
    assert x.open_sub_account(1, "dca").result.duplicate  # an existing label still answers
    assert not x.open_sub_account(2, "second").result.duplicate  # another owner is not limited


# --- transfers -----------------------------------------------------------------------------------


def test_transfer_moves_available_funds_both_ways_with_events_and_keeps_the_invariant() -> None:
    x = funded()
    external = dict(x.accounts.ledger.net_external)
    first_event = len(x.account_events)
    out = x.transfer(1, S1, "USDT", "2500.5", "alloc-1").result
    assert not out.duplicate
    r = out.record
    assert (r.from_balance, r.to_balance) == ((97_499_5 * COIN // 10, 0), (2_500_5 * COIN // 10, 0))
    assert r.sequence == x.accounts.applied_seq
    assert x.balance(1, "USDT") == (97_499_5 * COIN // 10, 0)
    assert x.balance(S1, "USDT") == (2_500_5 * COIN // 10, 0)
    events = x.account_events[first_event:]
    assert [(e.user_id, e.balance_changed.business, e.balance_changed.business_id) for e in events] == [
        (1, BUSINESS_TRANSFER_OUT, "alloc-1"),
        (S1, BUSINESS_TRANSFER_IN, "alloc-1"),
    ]
    assert [e.balance_changed.available_delta for e in events] == [
        -2_500_5 * COIN // 10,
        2_500_5 * COIN // 10,
    ]
    assert [e.balance_changed.available for e in events] == [97_499_5 * COIN // 10, 2_500_5 * COIN // 10]
    back = x.transfer(S1, 1, "USDT", "500.5", "return-1").result.record
    assert back.from_balance == (2000 * COIN, 0) and back.to_balance == (98_000 * COIN, 0)
    assert x.accounts.ledger.net_external == external  # a transfer is neither deposit nor withdrawal
    assert_invariant(x)


def test_transfer_is_idempotent_by_owner_and_transfer_id() -> None:
    x = funded()
    first = x.transfer(1, S1, "USDT", "100", "t-1").result
    x.transfer(1, S1, "USDT", "1", "t-2")  # balances move on after it
    before = state(x)
    again = x.transfer(1, S1, "USDT", "100", "t-1").result
    assert again.duplicate and again.record == first.record  # the original answer, sequence included
    assert state(x) == before  # not journaled, no event
    for other in (
        lambda: x.transfer(1, S1, "USDT", "100.00000001", "t-1"),
        lambda: x.transfer(1, S1, "BTC", "0.1", "t-1"),
        lambda: x.transfer(S1, 1, "USDT", "100", "t-1"),
        lambda: x.transfer(1, S2, "USDT", "100", "t-1"),
    ):
        message = refused(x, other, AlreadyExists, Reason.DUPLICATE_TRANSFER_ID)
        assert "'t-1'" in message
    # The id is the owner's: another owner may use it.
    x.transfer(2, S3, "BTC", "1", "t-1")
    assert x.balance(S3, "BTC") == (COIN, 0)
    # A duplicate is answered even when the funds are gone since.
    x.transfer(S1, 1, "USDT", "101", "drain")
    assert x.transfer(1, S1, "USDT", "100", "t-1").result.duplicate


def test_transfer_takes_from_available_only() -> None:
    x = funded()
    x.transfer(1, S1, "USDT", "30000", "alloc")
    x.place(S1, "BTC_USDT", BUY, price="25000", amount="1")  # freezes 25000 USDT of S1
    assert x.balance(S1, "USDT") == (5000 * COIN, 25000 * COIN)
    message = refused(
        x,
        lambda: x.transfer(S1, 1, "USDT", "5000.00000001", "back"),
        FailedPrecondition,
        Reason.INSUFFICIENT_BALANCE,
    )
    assert "available 5000 USDT" in message and "needed 5000.00000001 USDT" in message
    refused(
        x,
        lambda: x.transfer(1, S2, "USDT", "70000.1", "big"),
        FailedPrecondition,
        Reason.INSUFFICIENT_BALANCE,
    )
    x.transfer(S1, 1, "USDT", "5000", "back")
    assert x.balance(S1, "USDT") == (0, 25000 * COIN)
    assert_invariant(x)


def test_transfer_refusals_are_precise_and_change_nothing() -> None:
    x = funded()
    x.transfer(1, S1, "USDT", "10", "seed")

    def t(src: int, dst: int, asset: str = "USDT", amount: str = "1", tid: str = "x") -> Callable[[], Any]:
        return lambda: x.transfer(src, dst, asset, amount, tid)

    not_allowed = (FailedPrecondition, Reason.TRANSFER_NOT_ALLOWED)
    for call, (error, reason) in (
        (t(1, S3), not_allowed),  # another owner's sub-account
        (t(S3, 1), not_allowed),
        (t(S1, S2), not_allowed),  # two sub-accounts of one owner
        (t(1, 2), not_allowed),  # two ordinary users
        (t(1, 1), not_allowed),
        (t(S1, S1), not_allowed),
        (t(1, SUB_ACCOUNT_BASE + 50), (NotFound, Reason.SUB_ACCOUNT_NOT_FOUND)),
        (t(SUB_ACCOUNT_BASE, 1), (NotFound, Reason.SUB_ACCOUNT_NOT_FOUND)),
        (t(0, S1), (InvalidArgument, Reason.VALUE_OUT_OF_RANGE)),
        (t(1, 2**63), (InvalidArgument, Reason.VALUE_OUT_OF_RANGE)),
        (t(1, S1, amount="0"), (InvalidArgument, Reason.INVALID_DECIMAL)),  # as Deposit says it
        (t(1, S1, amount="-1"), (InvalidArgument, Reason.INVALID_DECIMAL)),
        (t(1, S1, amount="1e3"), (InvalidArgument, Reason.INVALID_DECIMAL)),
        (t(1, S1, amount="0.000000001"), (InvalidArgument, Reason.INVALID_DECIMAL)),  # 9 decimals
        (t(1, S1, amount="1" * 65), (InvalidArgument, Reason.FIELD_TOO_LONG)),
        (t(1, S1, amount=""), (InvalidArgument, Reason.INVALID_DECIMAL)),
        (t(1, S1, asset="XYZ"), (NotFound, Reason.UNKNOWN_ASSET)),
        (t(1, S1, tid=""), (InvalidArgument, Reason.INVALID_FIELD)),
        (t(1, S1, tid="bad id"), (InvalidArgument, Reason.INVALID_FIELD)),
        (t(1, S1, tid="x" * 65), (InvalidArgument, Reason.FIELD_TOO_LONG)),
        (t(S2, 1), (FailedPrecondition, Reason.INSUFFICIENT_BALANCE)),  # S2 holds nothing
    ):
        refused(x, call, error, reason)
    # A sub-account never funded has no balance row afterwards (a refusal creates nothing).
    assert S2 not in x.accounts.ledger.balances


def test_the_machine_checks_what_the_edge_checks() -> None:
    """Commands that skipped the edge (a replayed or forged journal record) are refused the same."""
    x = funded()
    for body, reason in (
        (
            ev.TransferCommand(from_user_id=1, to_user_id=S1, asset="USDT", amount=0, transfer_id="a"),
            Reason.INVALID_FIELD,
        ),
        (
            ev.TransferCommand(from_user_id=1, to_user_id=S1, asset="USDT", amount=-5, transfer_id="a"),
            Reason.INVALID_FIELD,
        ),
        (
            ev.TransferCommand(from_user_id=1, to_user_id=S1, asset="NOPE", amount=5, transfer_id="a"),
            Reason.UNKNOWN_ASSET,
        ),
        (
            ev.TransferCommand(from_user_id=1, to_user_id=S1, asset="USDT", amount=5, transfer_id=""),
            Reason.INVALID_FIELD,
        ),
        (
            ev.TransferCommand(from_user_id=1, to_user_id=S3, asset="USDT", amount=5, transfer_id="a"),
            Reason.TRANSFER_NOT_ALLOWED,
        ),
        (
            ev.TransferCommand(from_user_id=0, to_user_id=S1, asset="USDT", amount=5, transfer_id="a"),
            Reason.VALUE_OUT_OF_RANGE,
        ),
    ):
        cmd = ev.AccountsCommand()
        cmd.transfer.CopyFrom(body)
        refused(x, lambda c=cmd: raw(x, c), ExchangeError, reason)  # type: ignore[misc]


def test_deposit_and_withdraw_to_a_sub_account_are_refused() -> None:
    x = funded()
    x.transfer(1, S1, "USDT", "10", "seed")
    message = refused(
        x, lambda: x.deposit(S1, "USDT", "1"), FailedPrecondition, Reason.SUB_ACCOUNT_NOT_ALLOWED
    )
    assert "Transfer" in message and "user 1" in message
    refused(x, lambda: x.withdraw(S1, "USDT", "1"), FailedPrecondition, Reason.SUB_ACCOUNT_NOT_ALLOWED)


def test_orders_of_a_sub_account_settle_on_the_sub_account_only() -> None:
    x = funded()
    x.transfer(1, S1, "USDT", "30000", "alloc")
    owner_before = {a: x.balance(1, a) for a in ("USDT", "BTC")}
    fee_before = x.balance(0, "BTC")[0]
    buy = x.place(S1, "BTC_USDT", BUY, price="30000", amount="0.5").order
    assert buy.user_id == S1
    x.place(2, "BTC_USDT", SELL, price="30000", amount="0.5")  # fills it
    assert x.accounts.ledger.lookup(S1, buy.order_id).status == 4  # filled
    assert {a: x.balance(1, a) for a in ("USDT", "BTC")} == owner_before  # the owner is untouched
    got, _ = x.balance(S1, "BTC")
    fee = x.balance(0, "BTC")[0] - fee_before
    assert got + fee == COIN // 2 and got > 0
    assert x.balance(S1, "USDT") == (15000 * COIN, 0)
    fills = [e for e in x.account_events if e.WhichOneof("event") == "user_fill"]
    assert {e.user_id for e in fills} == {S1, 2}
    # The sub-account's proceeds return to the owner by transfer only.
    x.transfer(S1, 1, "BTC", "0.4", "proceeds")
    assert x.balance(1, "BTC") == (owner_before["BTC"][0] + 4 * COIN // 10, 0)
    assert_invariant(x)
    x.check_invariants()


# --- snapshot and replay ----------------------------------------------------------------------


def _flow() -> MiniExchange:
    x = funded()
    x.transfer(1, S1, "USDT", "30000", "a1")
    x.transfer(1, S2, "BTC", "0.5", "a2")
    x.transfer(2, S3, "BTC", "2", "a1")
    x.place(S1, "BTC_USDT", BUY, price="29000", amount="0.2")
    x.place(S3, "BTC_USDT", SELL, price="29000", amount="0.1")
    x.place(S2, "BTC_USDT", SELL, price="31000", amount="0.25")
    x.transfer(S1, 1, "USDT", "100", "r1")
    return x


def test_snapshot_and_replay_restore_sub_accounts_and_transfer_ids() -> None:
    x = _flow()
    accounts, _ = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()
    restored = AccountsMachine.restore(x.catalog, x.source, x.accounts.snapshot())
    assert restored.state_hash() == x.accounts.state_hash()
    assert restored.snapshot() == x.accounts.snapshot()
    subs = restored.ledger.subs
    assert [s.label for s in subs.of_owner(1)] == ["grid", "dca"] and subs.next_n == 4
    # After a restore, a retried transfer is still a duplicate and a retried open too.
    x.accounts = restored
    before = state(x)
    assert x.transfer(1, S1, "USDT", "30000", "a1").result.duplicate
    assert x.open_sub_account(2, "grid").result.duplicate
    refused(x, lambda: x.transfer(1, S1, "USDT", "1", "a1"), AlreadyExists, Reason.DUPLICATE_TRANSFER_ID)
    assert state(x) == before
    # The next id continues after the restored ones.
    assert x.open_sub_account(2, "new").result.sub_account.user_id == SUB_ACCOUNT_BASE + 4


def test_old_snapshots_without_sub_accounts_still_load() -> None:
    x = MiniExchange()
    x.deposit(1, "USDT", "5")
    snap = x.accounts.ledger.snapshot()
    for key in ("sub_accounts", "next_sub_account", "transfers"):
        del snap[key]
    from services.accounts.ledger import Ledger

    led = Ledger.restore(x.catalog, snap)
    assert led.subs.next_n == 1 and not led.subs.by_id and led.peek_balance(1, "USDT") == (5 * COIN, 0)


def test_the_transfer_id_set_is_bounded_per_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subaccounts, "TRANSFER_IDS_KEEP", 3)
    x = funded()
    for i in range(5):
        x.transfer(1, S1, "USDT", "1", f"id-{i}")
    x.transfer(2, S3, "BTC", "1", "id-0")
    kept = x.accounts.ledger.subs.transfers
    assert list(kept[1]) == ["id-2", "id-3", "id-4"] and list(kept[2]) == ["id-0"]
    restored = AccountsMachine.restore(x.catalog, x.source, x.accounts.snapshot())
    assert list(restored.ledger.subs.transfers[1]) == ["id-2", "id-3", "id-4"]  # the forgetting order
    assert x.transfer(1, S1, "USDT", "1", "id-4").result.duplicate
    assert not x.transfer(1, S1, "USDT", "1", "id-0").result.duplicate  # forgotten: a new transfer
    accounts, _ = replay(x.catalog, x)
    assert accounts.state_hash() == x.accounts.state_hash()


# --- the edge ------------------------------------------------------------------------------------


def test_edge_commands() -> None:
    x = MiniExchange()
    cmd = transfer_command(
        apb.TransferRequest(from_user_id=1, to_user_id=S1, asset="BTC", amount="0.00000001", transfer_id="k"),
        x.catalog,
    )
    assert cmd.transfer == ev.TransferCommand(
        from_user_id=1, to_user_id=S1, asset="BTC", amount=1, transfer_id="k"
    )
    cmd = open_sub_account_command(apb.OpenSubAccountRequest(owner_user_id=7, label="grid 1"))
    assert cmd.open_sub_account == ev.OpenSubAccountCommand(owner_user_id=7, label="grid 1")
    with pytest.raises(InvalidArgument) as info:
        open_sub_account_command(apb.OpenSubAccountRequest(owner_user_id=2**63, label="a"))
    assert info.value.reason == Reason.VALUE_OUT_OF_RANGE


# --- a random mix: deposits, transfers, orders and fills on sub-accounts ------------------------

USERS = (1, 2)
ASSETS = ("USDT", "BTC")


class SubAccountFlow(RuleBasedStateMachine):
    """Owners 1 and 2 deposit, open sub-accounts, move funds in and out, and their sub-accounts trade
    with each other and with the owners. After every step: Σ balances == deposits - withdrawals per
    asset, frozen == held, refusals changed nothing; at the end a replay of the journal and a restore of
    the snapshot give the same state."""

    def __init__(self) -> None:
        super().__init__()
        self.x = MiniExchange()
        self.subs: dict[int, list[int]] = {1: [], 2: []}
        self.ids = 0
        for owner in USERS:
            self.x.deposit(owner, "USDT", "100000")
            self.x.deposit(owner, "BTC", "5")
            self.open(owner, "a")

    def _accounts(self) -> list[int]:
        return [*USERS, *self.subs[1], *self.subs[2]]

    def _attempt(self, call: Callable[[], Any]) -> None:
        before = state(self.x)
        try:
            call()
        except ExchangeError:
            assert state(self.x) == before

    @rule(user=st.sampled_from(USERS), asset=st.sampled_from(ASSETS), amount=st.integers(1, 50_000))
    def deposit(self, user: int, asset: str, amount: int) -> None:
        self.x.deposit(
            user, asset, f"{amount}" if asset == "USDT" else f"{amount // 10_000}.{amount % 10_000:04d}"
        )

    @rule(owner=st.sampled_from(USERS), label=st.sampled_from(["a", "b", "c"]))
    def open(self, owner: int, label: str) -> None:
        out = self.x.open_sub_account(owner, label)
        sid = out.result.sub_account.user_id
        assert sid >= SUB_ACCOUNT_BASE + 1
        if out.result.duplicate:
            assert sid in self.subs[owner]
        else:
            self.subs[owner].append(sid)

    @rule(
        data=st.data(),
        asset=st.sampled_from(ASSETS),
        share=st.sampled_from([1, 2, 10, 0]),  # of the available balance (0: more than it)
        reuse=st.booleans(),
    )
    def transfer(self, data: st.DataObject, asset: str, share: int, reuse: bool) -> None:
        """Mostly between an owner and one of its sub-accounts, sometimes between any two accounts."""
        owner = data.draw(st.sampled_from(USERS))
        if self.subs[owner] and data.draw(st.integers(0, 4)):
            pair = (owner, data.draw(st.sampled_from(self.subs[owner])))
            src, dst = pair if data.draw(st.booleans()) else pair[::-1]
        else:
            src = data.draw(st.sampled_from(self._accounts()))
            dst = data.draw(st.sampled_from(self._accounts()))
        available = self.x.balance(src, asset)[0]
        units = available // share if share else available + 1
        units = max(units, 1)
        amount = f"{units // COIN}.{units % COIN:08d}"
        if not reuse or not self.ids:
            self.ids += 1
        tid = f"t{data.draw(st.integers(1, self.ids)) if reuse else self.ids}"
        self._attempt(lambda: self.x.transfer(src, dst, asset, amount, tid))

    @rule(
        data=st.data(),
        side=st.sampled_from([BUY, SELL]),
        price=st.sampled_from(["29990", "30000", "30010"]),
        amount=st.sampled_from(["0.01", "0.1", "0.5"]),
    )
    def order(self, data: st.DataObject, side: int, price: str, amount: str) -> None:
        subs = self.subs[1] + self.subs[2]
        user = data.draw(st.sampled_from(subs if subs and data.draw(st.booleans()) else self._accounts()))
        self._attempt(lambda: self.x.place(user, "BTC_USDT", side, price=price, amount=amount))

    @rule(data=st.data())
    def cancel_all(self, data: st.DataObject) -> None:
        self.x.cancel_all(data.draw(st.sampled_from(self._accounts())))

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(self._accounts()))
        self._attempt(lambda: self.x.withdraw(user, "USDT", "10"))

    @invariant()
    def balances_add_up(self) -> None:
        assert_invariant(self.x)
        self.x.check_invariants()
        for sid in self.subs[1] + self.subs[2]:
            assert self.x.accounts.ledger.subs.get(sid) is not None

    def teardown(self) -> None:
        accounts, _ = replay(self.x.catalog, self.x)
        assert accounts.state_hash() == self.x.accounts.state_hash()
        restored = AccountsMachine.restore(self.x.catalog, self.x.source, self.x.accounts.snapshot())
        assert restored.state_hash() == self.x.accounts.state_hash()


SubAccountFlow.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_sub_account_flow = SubAccountFlow.TestCase
