"""An exchange in one process: the accounts and matching state machines wired like the services
(outbox -> shard, events -> settlement), without gRPC or files. Every journaled command is recorded so
a run can be replayed into fresh machines."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev

from services.accounts.ledger import Ledger
from services.accounts.machine import AccountsMachine, QuarantineReport
from services.accounts.views import (
    adjust_command,
    amend_commands,
    cancel_all_command,
    cancel_command,
    open_sub_account_command,
    place_command,
    transfer_command,
)
from services.common.markets import MarketCatalog
from services.common.statemachine import Outcome
from services.matching.engine import MatchingEngine
from services.matching.machine import MatchingMachine

ROOT = Path(__file__).resolve().parents[1]


def default_catalog(shards: dict[str, list[str]] | None = None) -> MarketCatalog:
    with open(ROOT / "deploy" / "exchange.toml", "rb") as f:
        catalog = MarketCatalog.from_dict(tomllib.load(f))
    return catalog.with_shards(shards) if shards else catalog


@dataclass
class MiniExchange:
    catalog: MarketCatalog = field(default_factory=default_catalog)
    source: str = "accounts-0"
    time_us: int = 1_700_000_000_000_000
    auto_settle: bool = True

    def __post_init__(self) -> None:
        self.accounts = AccountsMachine(Ledger(self.catalog), self.source)
        self.shards = {
            name: MatchingMachine(MatchingEngine(name, self.catalog.markets_of_shard(name)))
            for name in self.catalog.shards
        }
        self.accounts_journal: list[bytes] = []
        self.shard_journals: dict[str, list[bytes]] = {name: [] for name in self.shards}
        self.pending_events: dict[str, list[ev.MatchingEvent]] = {name: [] for name in self.shards}
        self.matching_events: dict[str, list[ev.MatchingEvent]] = {name: [] for name in self.shards}
        self.account_events: list[ev.AccountEvent] = []
        self.quarantined: list[QuarantineReport] = []
        self.forwarded: dict[str, list[bytes]] = {name: [] for name in self.shards}  # as sent, per shard

    # --- plumbing ------------------------------------------------------------------------------

    def tick(self, us: int = 1000) -> None:
        self.time_us += us

    def _accounts_apply(self, cmd: ev.AccountsCommand) -> Any:
        out = self.apply_raw(cmd)
        if self.auto_settle:
            self.settle()
        return out.result

    def apply_raw(self, cmd: ev.AccountsCommand) -> Outcome:
        """Apply one command as the host would (journal, events, forwards), without settling."""
        seq = self.accounts.applied_seq + 1
        out = self.accounts.apply(seq, self.time_us, cmd)  # raises ExchangeError: nothing changed
        if out.journal:
            cmd.time_us = self.time_us
            self.accounts_journal.append(cmd.SerializeToString())
            self.account_events.extend(ev.AccountEvent.FromString(b) for b in out.events)
            for effect in out.effects:
                if isinstance(effect, QuarantineReport):
                    self.quarantined.append(effect)
                    continue
                _, shard, mcmd = effect
                self._shard_apply(shard, ev.MatchingCommand.FromString(mcmd))
        return out

    def _shard_apply(self, shard: str, mcmd: ev.MatchingCommand) -> None:
        machine = self.shards[shard]
        if mcmd.source == self.source:
            # The forward chain: each command names the last one this shard applied from accounts.
            last = machine.engine.source_seqs.get(mcmd.source, 0)
            assert mcmd.previous_sequence == last, (shard, mcmd.source_sequence, mcmd.previous_sequence, last)
            assert mcmd.source_sequence > last
            self.forwarded[shard].append(mcmd.SerializeToString())
        out = machine.apply(machine.applied_seq + 1, self.time_us, mcmd)
        if out.journal:
            mcmd.time_us = self.time_us
            self.shard_journals[shard].append(mcmd.SerializeToString())
            events = [ev.MatchingEvent.FromString(b) for b in out.events]
            self.pending_events[shard].extend(events)
            self.matching_events[shard].extend(events)

    def settle(self) -> None:
        for shard, events in self.pending_events.items():
            if not events:
                continue
            cmd = ev.AccountsCommand()
            cmd.settle.shard = shard
            cmd.settle.events.extend(events)
            events.clear()
            self._accounts_apply(cmd)

    def expire(self) -> None:
        for shard, machine in self.shards.items():
            cmd = ev.MatchingCommand(
                source=f"{shard}:timer",
                source_sequence=machine.engine.source_seqs.get(f"{shard}:timer", 0) + 1,
            )
            cmd.expire_orders.SetInParent()
            self._shard_apply(shard, cmd)
        if self.auto_settle:
            self.settle()

    # --- the API (as the gRPC adapter would call it) ------------------------------------------

    def deposit(self, user: int, asset: str, amount: str, business_id: str = "") -> Any:
        self.tick()
        return self._accounts_apply(
            adjust_command(user, asset, amount, "deposit", business_id or f"d{self.time_us}", self.catalog, 1)
        )

    def withdraw(self, user: int, asset: str, amount: str, business_id: str = "") -> Any:
        self.tick()
        return self._accounts_apply(
            adjust_command(
                user, asset, amount, "withdraw", business_id or f"w{self.time_us}", self.catalog, -1
            )
        )

    def place(self, user: int, market: str, side: int, **kw: Any) -> Any:
        self.tick()
        req = apb.PlaceOrderRequest(user_id=user, market=market, side=side, type=kw.pop("type", 1), **kw)
        return self._accounts_apply(place_command(req, self.catalog))

    def cancel(self, user: int, order_id: int = 0, client_order_id: str = "") -> Any:
        self.tick()
        return self._accounts_apply(
            cancel_command(
                apb.CancelOrderRequest(user_id=user, order_id=order_id, client_order_id=client_order_id)
            )
        )

    def cancel_all(self, user: int, market: str = "", side: int = 0) -> Any:
        self.tick()
        return self._accounts_apply(
            cancel_all_command(
                apb.CancelAllOrdersRequest(user_id=user, market=market, side=side), self.catalog
            )
        )

    def amend(
        self,
        user: int,
        order_id: int = 0,
        new_price: str = "",
        new_amount: str = "",
        client_order_id: str = "",
    ) -> Any:
        """One amend as the servicer submits it: its command(s) applied back to back (a reservation
        first when both price and amount change), settled only after."""
        self.tick()
        order = self.accounts.ledger.lookup(user, order_id, client_order_id)
        cmds = amend_commands(
            apb.AmendOrderRequest(
                user_id=user,
                order_id=order_id,
                client_order_id=client_order_id,
                new_price=new_price,
                new_amount=new_amount,
            ),
            self.catalog,
            order.market,
        )
        auto, self.auto_settle = self.auto_settle, False
        try:
            result = None
            for cmd in cmds:
                result = self._accounts_apply(cmd)
        finally:
            self.auto_settle = auto
        if auto:
            self.settle()
        return result

    def open_sub_account(self, owner: int, label: str) -> Any:
        """An OpenOutcome (services.accounts.machine)."""
        self.tick()
        return self._accounts_apply(
            open_sub_account_command(apb.OpenSubAccountRequest(owner_user_id=owner, label=label))
        )

    def transfer(self, src: int, dst: int, asset: str, amount: str, transfer_id: str | None = None) -> Any:
        """A TransferOutcome (services.accounts.machine)."""
        self.tick()
        req = apb.TransferRequest(
            from_user_id=src,
            to_user_id=dst,
            asset=asset,
            amount=amount,
            transfer_id=f"t{self.time_us}" if transfer_id is None else transfer_id,
        )
        return self._accounts_apply(transfer_command(req, self.catalog))

    # --- checks --------------------------------------------------------------------------------

    def balance(self, user: int, asset: str) -> tuple[int, int]:
        return self.accounts.ledger.peek_balance(user, asset)

    def check_invariants(self) -> None:
        """Σ balances (fee account included) == deposits - withdrawals; frozen == what orders hold; and,
        once settled, each open order holds exactly what it still needs."""
        for asset, a in self.accounts.ledger.audit().items():
            assert a["total"] == a["external"], (asset, a)
            assert a["frozen"] == a["held"], (asset, a)
        led = self.accounts.ledger
        for o in led.orders.values():
            assert o.hold == led._needed(o, self.catalog.markets[o.market]), (o.state(), "hold != needed")
        # Accounts and matching agree on what is open.
        open_in_books = {
            oid for m in self.shards.values() for b in m.engine.books.values() for oid in b.orders
        }
        settled = all(not v for v in self.pending_events.values())
        if settled:
            resting = {oid for oid, o in led.orders.items() if o.status in (2, 3)}
            assert open_in_books == resting, open_in_books ^ resting


def replay(catalog: MarketCatalog, mini: MiniExchange) -> tuple[AccountsMachine, dict[str, MatchingMachine]]:
    """Fresh machines fed with the recorded journals."""
    accounts = AccountsMachine(Ledger(catalog), mini.source)
    for i, rec in enumerate(mini.accounts_journal, 1):
        cmd = ev.AccountsCommand.FromString(rec)
        out = accounts.apply(i, cmd.time_us, cmd)
        assert out.journal
    shards = {}
    for name, journal in mini.shard_journals.items():
        m = MatchingMachine(MatchingEngine(name, catalog.markets_of_shard(name)))
        for i, rec in enumerate(journal, 1):
            mcmd = ev.MatchingCommand.FromString(rec)
            assert m.apply(i, mcmd.time_us, mcmd).journal
        shards[name] = m
    return accounts, shards
