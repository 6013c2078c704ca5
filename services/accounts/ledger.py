"""Accounts domain: balances (available / frozen) per user and asset, order holds, settlement.

The risk split of exchange-core (the Java engine), in one deterministic object:
- pre-hold: placing an order freezes what it may spend (limit buy: price x amount of quote, sell: the
  base amount, market buy: its quote budget, also when it buys by amount); moving a buy up freezes the
  difference first;
- settle: each matching event adjusts balances: a fill pays from the frozen hold and credits the
  proceeds net of fee (fees go to the fee account, user 0); when an order needs less (a fill at a
  better price, a reduce, a move down) or is done, the excess hold is released.

The hold of an order always equals what it still needs: for a limit buy the highest price it may be at
(its price, or a requested move not yet confirmed) x remaining x quote units per tick-lot; for a sell the
remaining base; for a market buy the unspent budget. Every mutation reports to a Sink; no clock, no I/O.

Refusals change nothing: every check of a command runs before its first mutation (a balance is created
only when something is credited or frozen into it), so a refused command leaves the state, its hash and
its snapshot exactly as they were.

Settlement trusts nothing it cannot check (a forged or buggy matching command must not stop accounts).
Each matching event is checked before it changes anything (`trade_problem`, `amended_problem`,
`done_problem`, `accepted_problem`): its orders must be open orders of accounts, on the event's market,
of the users and sides it names; a fill must be price x amount in quote and base units, within the
order's amount (or budget), paid from a hold that covers it and what then remains, with a fee within
the proceeds; an amend must leave open what matching says and need no more than the hold; a done needs
a known reason. An event that fails is quarantined: skipped as a whole, recorded (the newest
QUARANTINE_KEEP) and counted; the batch's other events settle as usual. The rule is all or nothing per
event, and a trade is one event: both sides settle or neither, because settling one side alone would
create or destroy money (the other side pays or receives it), breaking Σ balances == deposits -
withdrawals. Every settled event keeps both invariants on its own (a fill moves money between its two
sides and the fee account, paid out of frozen hold that covers it; an amend or a done only releases hold
beyond what the order still needs), so skipping one never makes settling another unsafe. What skipping
costs: from then on accounts and matching disagree about that order (matching filled what accounts did
not), and its later events are checked like any other (its done releases all it holds; an amend whose
remaining no longer agrees is quarantined too). Command rejections are not quarantined: they concern
commands accounts sent and at most release a pending move's extra hold.

Accounts sharded by user (issue 12). A ledger may be shard `shard` of `shards`: it owns the users with
user_id % shards == shard and refuses commands (and reads) for any other (USER_NOT_ON_SHARD, metadata
"shard" naming the owner); its order ids are shard + 1 + k x shards, so ids never collide between
shards and (order_id - 1) % shards names an order's shard; the sub-account ids it allocates are in the
owner's partition. Each shard follows every matching shard and settles only its own users' side of each
event; each has its own fee account (user 0 of its ledger). A trade between users of two shards is
settled once on each side, each shard settling its side: the taker's shard pays out of its user's hold
and credits its user what the trade gives (less the fee, to its fee account); the maker's shard does the
same for the maker. Per shard that flow is not zero-sum, so it is counted: cross_shard[asset] is what this
shard's users received from users of other shards minus what they paid them. Per shard total ==
external + cross_shard, and over all shards (settled to the same matching events) Σ cross_shard == 0,
which makes Σ balances == Σ deposits - withdrawals checkable across shards
(services.accounts.audit). A trade whose side fails its check here is quarantined on this shard only;
the cross-shard sum then shows it.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from services.accounts.lifecycle import (
    ACCEPTED,
    DONE_EVENTS,
    FILL,
    FINAL,
    INITIAL,
    TRANSITIONS,
    invalid_transition,
)
from services.accounts.model import (
    Accepted,
    AdjustBalance,
    Amended,
    AmendOrder,
    CancelAllOrders,
    CancelOrder,
    Done,
    MoveOrder,
    OpenSubAccount,
    PlaceOrder,
    ReduceOrder,
    Rejected,
    SettleEvents,
    Trade,
    Transfer,
)
from services.accounts.subaccounts import (
    OpenResult,
    SubAccounts,
    TransferRecord,
    TransferResult,
    check_transfer_id,
)
from services.common.enums import (
    BUSINESS_DEPOSIT,
    BUSINESS_FEE,
    BUSINESS_ORDER_FREEZE,
    BUSINESS_ORDER_UNFREEZE,
    BUSINESS_TRADE,
    BUSINESS_TRANSFER_IN,
    BUSINESS_TRANSFER_OUT,
    BUSINESS_WITHDRAW,
    BUY,
    FOK,
    GTC,
    GTD,
    IOC,
    LIMIT,
    MAKER,
    MARKET,
    SELL,
    STATUS_NAMES,
    TAKER,
)
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    quote,
)
from services.common.limits import MAX_TIME_US, MAX_USER_ID
from services.common.markets import MarketCatalog, MarketSpec
from services.common.orders import OrderView
from services.common.quantities import Lots, Ticks
from services.common.units import INT64_MAX

FEE_ACCOUNT = 0

CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
BUSINESS_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
BUSINESS_ID_RE = re.compile(r"[A-Za-z0-9_.:#/\-]{1,128}")
QUARANTINE_KEEP = 1000  # quarantined matching events kept in the state (the newest); all are counted


class Sink(Protocol):
    """Where the ledger reports what it changed (the accounts event log)."""

    def balance(
        self,
        user: int,
        asset: str,
        business: int,
        business_id: str,
        d_avail: int,
        d_frozen: int,
        bal: list[int],
    ) -> None: ...

    def order(self, order: AccountOrder) -> None: ...

    def fill(
        self, user: int, trade: Trade, order_id: int, side: int, role: int, fee: int, fee_asset: str
    ) -> None:
        """One side of a trade: `user`'s order `order_id` filled on `side` as `role`, paying `fee`."""


class AccountOrder:
    """An order as accounts tracks it: what it holds and what the user sees."""

    __slots__ = (
        "amount",
        "cancel_requested",
        "client_order_id",
        "created",
        "detail",
        "expire_at",
        "fee",
        "filled",
        "filled_quote",
        "hold",
        "maker_fee",
        "market",
        "moves",
        "order_id",
        "placed_amount",
        "placed_price",
        "post_only",
        "price",
        "quote_budget",
        "side",
        "status",
        "stp",
        "taker_fee",
        "tif",
        "type",
        "updated",
        "user_id",
    )

    def __init__(
        self,
        *,
        order_id: int = 0,
        user_id: int = 0,
        market: str = "",
        side: int = 0,
        type: int = 0,
        tif: int = 0,
        post_only: bool = False,
        stp: int = 0,
        price: int = 0,
        amount: int = 0,
        quote_budget: int = 0,
        hold: int = 0,
        status: int = 0,
        client_order_id: str = "",
        created: int = 0,
        updated: int = 0,
        expire_at: int = 0,
        maker_fee: int = 0,
        taker_fee: int = 0,
    ) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self.market = market
        self.side = side
        self.type = type
        self.tif = tif
        self.post_only = post_only
        self.stp = stp
        self.price = price
        self.amount = amount
        self.quote_budget = quote_budget
        self.hold = hold
        self.status = status
        self.client_order_id = client_order_id
        self.created = created
        self.updated = updated
        self.expire_at = expire_at
        self.maker_fee = maker_fee
        self.taker_fee = taker_fee
        # Price and amount as placed (amends change price and amount): what a repeated client_order_id
        # is compared with.
        self.placed_price = price
        self.placed_amount = amount
        self.moves: dict[int, int] = {}  # accounts seq of a requested move -> its price (unconfirmed)
        self.cancel_requested = False
        self.fee = 0
        self.filled = 0
        self.filled_quote = 0
        self.detail = 0

    @property
    def remaining(self) -> int:
        return 0 if self.status in FINAL else self.amount - self.filled

    def placed(self) -> tuple[Any, ...]:
        """The parameters the order was placed with (time in force as normalized by `place`)."""
        return (
            self.market,
            self.side,
            self.type,
            self.tif,
            self.placed_price,
            self.placed_amount,
            self.quote_budget,
            self.post_only,
            self.stp,
            self.expire_at,
        )

    def view(self) -> OrderView:
        """The order's state as the API shows it (services.common.orders.order_message)."""
        return OrderView(
            self.order_id,
            self.user_id,
            self.client_order_id,
            self.market,
            self.side,
            self.type,
            self.tif,
            self.post_only,
            self.stp,
            self.price,
            self.amount,
            self.quote_budget,
            self.filled,
            self.filled_quote,
            self.remaining,
            self.fee,
            self.status,
            self.detail,
            self.created,
            self.updated,
            self.expire_at,
            self.maker_fee,
            self.taker_fee,
        )

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ORDER_FIELDS}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> AccountOrder:
        o = cls()
        for k, v in s.items():
            setattr(o, k, v)
        o.moves = {int(k): int(v) for k, v in dict(s["moves"]).items()}
        if "placed_price" not in s:  # snapshot version 1: the placed values were not kept
            o.placed_price = o.price
            o.placed_amount = o.amount
        return o


_ORDER_FIELDS = AccountOrder.__slots__  # also when compiled (mypyc classes have no __slots__ at run time)


@dataclass(frozen=True)
class AdjustResult:
    duplicate: bool
    available: int
    frozen: int


@dataclass(frozen=True)
class AmendPlan:
    """An amend checked against the current state (nothing changed yet): see Ledger.plan_amend."""

    order: AccountOrder
    new_price: int  # 0 = keep
    new_amount: int  # 0 = keep
    extra_hold: int  # quote to freeze first (a buy moved above what it holds)


# A market buy by amount alone is refused: accounts freezes before matching, so it needs a bound it can
# hold. Freezing the whole available quote instead would lock every other order of the user and spend at
# any price; the caller (the gateway computes one from the book with a price cap) states the most it pays.
MARKET_BUY_NEEDS_BUDGET = (
    "a market buy by amount needs quote_amount too: the most it may spend, frozen until the order is done"
)


def _normalized_tif(type: int, tif: int) -> int:
    """Time in force as `place` stores it (limit: unspecified = GTC; market: unspecified = IOC)."""
    if type == LIMIT:
        return tif or GTC
    if type == MARKET and tif in (0, IOC):
        return IOC
    return tif


def shard_name(index: int) -> str:
    """The source name of accounts shard `index` when there are several (services.common.config)."""
    return f"accounts-{index}"


class Ledger:
    def __init__(
        self, catalog: MarketCatalog, *, finished_keep: int = 100_000, shard: int = 0, shards: int = 1
    ) -> None:
        if shards < 1 or not 0 <= shard < shards:
            raise ValueError(f"accounts shard {shard} of {shards}")
        self.catalog = catalog
        self.finished_keep = finished_keep
        # Accounts sharded by user (see the module docstring): this ledger owns the users with
        # user_id % shards == shard; its order ids are shard + 1, shard + 1 + shards, ...
        self.shard = shard
        self.shards = shards
        self.balances: dict[int, dict[str, list[int]]] = {}
        self.orders: dict[int, AccountOrder] = {}  # open (pending, open, partially filled)
        self.user_orders: dict[int, dict[int, AccountOrder]] = {}  # open orders by user (derived)
        self.finished: OrderedDict[int, AccountOrder] = OrderedDict()  # most recent, bounded
        self.client_ids: dict[tuple[int, str], int] = {}
        self.adjustments: dict[tuple[int, str, str, str], int] = {}  # idempotency key -> change
        self.net_external: dict[str, int] = {}  # deposits - withdrawals per asset
        self.next_order_id = shard + 1
        # Per asset: what this shard's users received from (+) or paid to (-) users of other accounts
        # shards in trades. total == external + cross_shard; summed over every shard it is 0.
        self.cross_shard: dict[str, int] = {}
        self.settled: dict[str, int] = {}  # last matching event settled, per shard
        # Matching events that could not be settled: (shard, event sequence, kind, why), the newest.
        self.quarantine: deque[tuple[str, int, str, str]] = deque(maxlen=QUARANTINE_KEEP)
        self.quarantined_total = 0
        self.subs = SubAccounts()  # sub-accounts and the transfers between them and their owners

    # --- formatting (messages people read) -----------------------------------------------------

    def _money(self, asset: str, units: int) -> str:
        return f"{self.catalog.assets[asset].format(units)} {asset}"

    # --- balances ------------------------------------------------------------------------------

    def balance(self, user: int, asset: str) -> list[int]:
        """[available, frozen] (a live reference; creates a zero balance). Only for changes that are
        made: checks read with peek_balance, so a refused command creates nothing."""
        mine = self.balances.get(user)
        if mine is None:
            mine = self.balances[user] = {}
        bal = mine.get(asset)
        if bal is None:
            bal = mine[asset] = [0, 0]
        return bal

    def peek_balance(self, user: int, asset: str) -> tuple[int, int]:
        bal = self.balances.get(user, {}).get(asset)
        return (bal[0], bal[1]) if bal else (0, 0)

    def _check_user(self, user: int) -> None:
        if user < 1 or user > MAX_USER_ID:
            raise InvalidArgument(f"user_id must be in 1..{MAX_USER_ID}", Reason.VALUE_OUT_OF_RANGE)
        if self.shards > 1:
            self.check_owner(user)

    def owns(self, user: int) -> bool:
        """Whether `user` belongs to this accounts shard."""
        return user % self.shards == self.shard

    def check_owner(self, user: int) -> None:
        """Refuses a user of another accounts shard (FAILED_PRECONDITION USER_NOT_ON_SHARD, with the
        owning shard's name in the metadata)."""
        if user % self.shards != self.shard:
            owner = shard_name(user % self.shards)
            raise FailedPrecondition(
                f"user {user} belongs to accounts shard {owner}, not to {shard_name(self.shard)} "
                f"(users are partitioned by user_id mod {self.shards})",
                Reason.USER_NOT_ON_SHARD,
                metadata={"shard": owner, "user_id": str(user)},
            )

    def adjust(self, cmd: AdjustBalance, sink: Sink) -> AdjustResult:
        """Deposit (change > 0) or withdraw (change < 0), idempotent by (user, asset, business, id)."""
        user, asset, change, business, business_id = (
            cmd.user_id,
            cmd.asset,
            cmd.change,
            cmd.business,
            cmd.business_id,
        )
        self._check_user(user)
        if user in self.subs.by_id:
            raise FailedPrecondition(
                f"user {user} is a sub-account: funds enter and leave it only by Transfer from/to its "
                f"owner (user {self.subs.by_id[user].owner_user_id})",
                Reason.SUB_ACCOUNT_NOT_ALLOWED,
            )
        if asset not in self.catalog.assets:
            raise NotFound(f"unknown asset {quote(asset)}", Reason.UNKNOWN_ASSET)
        if change == 0:
            raise InvalidArgument("amount must be greater than zero", Reason.INVALID_FIELD)
        if abs(change) > INT64_MAX:
            raise InvalidArgument(
                f"amount {self._money(asset, abs(change))} is too large", Reason.VALUE_TOO_LARGE
            )
        if not BUSINESS_RE.fullmatch(business):
            raise InvalidArgument("business must be 1-64 characters [A-Za-z0-9_.:-]", Reason.INVALID_FIELD)
        if not BUSINESS_ID_RE.fullmatch(business_id):
            raise InvalidArgument(
                "business_id must be 1-128 characters [A-Za-z0-9_.:#/-]", Reason.INVALID_FIELD
            )
        key = (user, asset, business, business_id)
        previous = self.adjustments.get(key)
        if previous is not None:
            if previous != change:
                raise FailedPrecondition(
                    f"{quote(business)}/{quote(business_id)} was already applied with another amount "
                    f"({'deposit' if previous > 0 else 'withdrawal'} of {self._money(asset, abs(previous))})",
                    Reason.IDEMPOTENCY_KEY_REUSED,
                )
            avail, frozen = self.peek_balance(user, asset)
            return AdjustResult(True, avail, frozen)
        avail, _ = self.peek_balance(user, asset)
        if change < 0 and avail < -change:
            raise FailedPrecondition(
                f"insufficient {asset}: available {self._money(asset, avail)}, "
                f"needed {self._money(asset, -change)}",
                Reason.INSUFFICIENT_BALANCE,
            )
        if avail + change > INT64_MAX:
            raise InvalidArgument(
                f"the {asset} balance would exceed {self._money(asset, INT64_MAX)}", Reason.VALUE_TOO_LARGE
            )
        bal = self.balance(user, asset)
        bal[0] += change
        self.adjustments[key] = change
        self.net_external[asset] = self.net_external.get(asset, 0) + change
        sink.balance(
            user, asset, BUSINESS_DEPOSIT if change > 0 else BUSINESS_WITHDRAW, business_id, change, 0, bal
        )
        return AdjustResult(False, bal[0], bal[1])

    # --- sub-accounts and transfers ------------------------------------------------------------

    def open_sub_account(self, cmd: OpenSubAccount, seq: int) -> OpenResult:
        """Open (or, for a known label, find) a sub-account; its id skips ids holding an account."""
        owner = cmd.owner_user_id
        if self.shards == 1:
            return self.subs.open(cmd, seq, lambda u: u in self.balances or u in self.user_orders)
        if 1 <= owner <= MAX_USER_ID:
            self.check_owner(owner)
        # The id lands in the owner's partition (so its orders, fills and transfers stay on this shard).
        residue = owner % self.shards
        return self.subs.open(
            cmd,
            seq,
            lambda u: u % self.shards != residue or u in self.balances or u in self.user_orders,
        )

    def transfer(self, cmd: Transfer, seq: int, sink: Sink) -> TransferResult:
        """Move available funds between an owner and one of its sub-accounts; idempotent by (owner,
        transfer_id). Every check first: a refused transfer changes nothing."""
        src, dst, asset, amount, transfer_id = (
            cmd.from_user_id,
            cmd.to_user_id,
            cmd.asset,
            cmd.amount,
            cmd.transfer_id,
        )
        if self.shards > 1:
            for user in (src, dst):
                if 1 <= user <= MAX_USER_ID:
                    self.check_owner(user)
        owner = self.subs.transfer_owner(cmd)
        if asset not in self.catalog.assets:
            raise NotFound(f"unknown asset {quote(asset)}", Reason.UNKNOWN_ASSET)
        if amount <= 0:
            raise InvalidArgument("amount must be greater than zero", Reason.INVALID_FIELD)
        if amount > INT64_MAX:
            raise InvalidArgument(f"amount {self._money(asset, amount)} is too large", Reason.VALUE_TOO_LARGE)
        check_transfer_id(transfer_id)
        previous = self.subs.previous_transfer(owner, cmd)
        if previous is not None:
            return TransferResult(previous, True)
        avail, _ = self.peek_balance(src, asset)
        if avail < amount:
            raise FailedPrecondition(
                f"insufficient {asset} in user {src}: available {self._money(asset, avail)}, "
                f"needed {self._money(asset, amount)}",
                Reason.INSUFFICIENT_BALANCE,
            )
        if self.peek_balance(dst, asset)[0] + amount > INT64_MAX:
            raise InvalidArgument(
                f"the {asset} balance of user {dst} would exceed {self._money(asset, INT64_MAX)}",
                Reason.VALUE_TOO_LARGE,
            )
        out = self.balance(src, asset)
        into = self.balance(dst, asset)
        out[0] -= amount
        into[0] += amount
        sink.balance(src, asset, BUSINESS_TRANSFER_OUT, transfer_id, -amount, 0, out)
        sink.balance(dst, asset, BUSINESS_TRANSFER_IN, transfer_id, amount, 0, into)
        record = TransferRecord(src, dst, asset, amount, seq, (out[0], out[1]), (into[0], into[1]))
        self.subs.record_transfer(owner, transfer_id, record)
        return TransferResult(record, False)

    # --- orders: pre-hold ----------------------------------------------------------------------

    def spec(self, market: str) -> MarketSpec:
        spec = self.catalog.markets.get(market)
        if spec is None:
            raise NotFound(f"unknown market {quote(market)}", Reason.UNKNOWN_MARKET)
        return spec

    def lookup(self, user: int, order_id: int = 0, client_order_id: str = "") -> AccountOrder:
        if self.shards > 1:
            self.check_owner(user)
        if client_order_id:
            found = self.client_ids.get((user, client_order_id))
            if found is None:
                raise NotFound(
                    f"no order with client_order_id {quote(client_order_id)}", Reason.ORDER_NOT_FOUND
                )
            order_id = found
        order = self.orders.get(order_id) or self.finished.get(order_id)
        if order is None or order.user_id != user:  # do not reveal other users' order ids
            raise NotFound(f"order {order_id} not found", Reason.ORDER_NOT_FOUND)
        return order

    def place(self, cmd: PlaceOrder, now: int, sink: Sink) -> tuple[AccountOrder, bool]:
        """Validate, freeze and register a new order. Returns (order, duplicate).

        A client_order_id the user already gave names that order: the same parameters (as placed)
        return it as a duplicate; different ones are refused (ALREADY_EXISTS, DUPLICATE_CLIENT_ORDER_ID,
        metadata order_id). The repeat is compared before anything else is checked, so a repeat of a
        GTD order whose expire time has passed since is still recognized. A journaled (replayed)
        command carries the id it was given, which must be the next one."""
        user, market, side, type, tif = cmd.user_id, cmd.market, cmd.side, cmd.type, cmd.tif
        price, amount, quote_budget = cmd.price, cmd.amount, cmd.quote_budget
        post_only, stp, expire_at, client_order_id = (
            cmd.post_only,
            cmd.stp,
            cmd.expire_at,
            cmd.client_order_id,
        )
        if user < 1 or user > MAX_USER_ID or self.shards > 1:
            self._check_user(user)
        if client_order_id:
            if not CLIENT_ID_RE.fullmatch(client_order_id):
                raise InvalidArgument(
                    "client_order_id must be 1-64 characters [A-Za-z0-9_.:-]", Reason.INVALID_FIELD
                )
            known = self.client_ids.get((user, client_order_id))
            existing = None if known is None else self.orders.get(known) or self.finished.get(known)
            if existing is not None:
                asked = (
                    market,
                    side,
                    type,
                    _normalized_tif(type, tif),
                    price,
                    amount,
                    quote_budget,
                    post_only,
                    stp,
                    expire_at,
                )
                if asked == existing.placed():
                    return existing, True
                raise AlreadyExists(
                    f"client_order_id {quote(client_order_id)} already names order {existing.order_id}, "
                    "placed with other parameters",
                    Reason.DUPLICATE_CLIENT_ORDER_ID,
                    metadata={"order_id": str(existing.order_id)},
                )
        spec = self.spec(market)
        base, quote_sym = spec.base.symbol, spec.quote.symbol
        if side not in (BUY, SELL):
            raise InvalidArgument("side must be SIDE_BUY or SIDE_SELL", Reason.INVALID_ORDER)
        if stp not in (0, 1, 2, 3):
            raise InvalidArgument("unknown self_trade_prevention", Reason.INVALID_ORDER)
        if expire_at < 0 or expire_at > MAX_TIME_US:
            raise InvalidArgument(f"expire_time_us must be in 0..{MAX_TIME_US}", Reason.VALUE_OUT_OF_RANGE)
        if type == LIMIT:
            tif = tif or GTC
            if tif not in (GTC, IOC, FOK, GTD):
                raise InvalidArgument("unknown time_in_force", Reason.INVALID_ORDER)
            if price <= 0:
                raise InvalidArgument("a limit order needs a price", Reason.INVALID_ORDER)
            if quote_budget:
                raise InvalidArgument("quote_amount is only for market buys", Reason.INVALID_ORDER)
            if post_only and tif not in (GTC, GTD):
                raise InvalidArgument("post_only needs GTC or GTD", Reason.INVALID_ORDER)
            if tif == GTD:
                if expire_at <= now:
                    raise InvalidArgument("expire_time_us must be in the future", Reason.INVALID_ORDER)
            elif expire_at:
                raise InvalidArgument("expire_time_us is only for GTD orders", Reason.INVALID_ORDER)
            if amount < spec.min_amount_lots:
                raise InvalidArgument(
                    f"amount {spec.format_amount(max(amount, 0))} {base} is below the minimum "
                    f"{spec.min_amount} {base}",
                    Reason.BELOW_MIN_AMOUNT,
                )
            notional = price * amount * spec.quote_units_per_tick_lot
            if notional > INT64_MAX:
                raise InvalidArgument(
                    f"order value {spec.format_quote(notional)} {quote_sym} is too large "
                    f"(at most {spec.format_quote(INT64_MAX)} {quote_sym})",
                    Reason.VALUE_TOO_LARGE,
                )
            if notional < spec.min_notional_units:
                raise InvalidArgument(
                    f"order value {spec.format_quote(notional)} {quote_sym} is below the minimum "
                    f"{spec.min_notional} {quote_sym}",
                    Reason.BELOW_MIN_NOTIONAL,
                )
            hold, hold_asset = (
                (notional, quote_sym) if side == BUY else (amount * spec.base_units_per_lot, base)
            )
        elif type == MARKET:
            if tif not in (0, IOC):
                raise InvalidArgument("market orders are immediate-or-cancel", Reason.INVALID_ORDER)
            tif = IOC
            if price:
                raise InvalidArgument("a market order has no price", Reason.INVALID_ORDER)
            if post_only:
                raise InvalidArgument("a market order cannot be post-only", Reason.INVALID_ORDER)
            if expire_at:
                raise InvalidArgument("expire_time_us is only for GTD orders", Reason.INVALID_ORDER)
            if side == BUY:
                # By budget (quote_amount alone) or by amount within a budget (both): accounts freezes
                # before matching and cannot know the fill price, so the budget is the bound it holds.
                if amount and not quote_budget:
                    raise InvalidArgument(MARKET_BUY_NEEDS_BUDGET, Reason.INVALID_ORDER)
                if amount and amount < spec.min_amount_lots:
                    raise InvalidArgument(
                        f"amount {spec.format_amount(max(amount, 0))} {base} is below the minimum "
                        f"{spec.min_amount} {base}",
                        Reason.BELOW_MIN_AMOUNT,
                    )
                minimum = max(1, spec.min_notional_units)
                if quote_budget < minimum:
                    raise InvalidArgument(
                        f"quote_amount {spec.format_quote(max(quote_budget, 0))} {quote_sym} is below the "
                        f"minimum {spec.format_quote(minimum)} {quote_sym}",
                        Reason.BELOW_MIN_NOTIONAL,
                    )
                hold, hold_asset = quote_budget, quote_sym
            else:
                if quote_budget:
                    raise InvalidArgument(
                        "a market sell gives amount, not quote_amount", Reason.INVALID_ORDER
                    )
                if amount < spec.min_amount_lots:
                    raise InvalidArgument(
                        f"amount {spec.format_amount(max(amount, 0))} {base} is below the minimum "
                        f"{spec.min_amount} {base}",
                        Reason.BELOW_MIN_AMOUNT,
                    )
                hold, hold_asset = amount * spec.base_units_per_lot, base
        else:
            raise InvalidArgument("type must be ORDER_TYPE_LIMIT or ORDER_TYPE_MARKET", Reason.INVALID_ORDER)
        if hold > INT64_MAX:
            raise InvalidArgument(
                f"order value {self._money(hold_asset, hold)} is too large", Reason.VALUE_TOO_LARGE
            )
        mine = self.balances.get(user)
        bal = mine.get(hold_asset) if mine is not None else None
        avail = bal[0] if bal is not None else 0
        if avail < hold:
            raise FailedPrecondition(
                f"insufficient {hold_asset}: available {self._money(hold_asset, avail)}, "
                f"needed {self._money(hold_asset, hold)}",
                Reason.INSUFFICIENT_BALANCE,
            )
        if cmd.order_id and cmd.order_id != self.next_order_id:
            raise RuntimeError(
                f"journaled order id {cmd.order_id} differs from the ledger's {self.next_order_id}"
            )
        order_id = self.next_order_id
        self.next_order_id += self.shards
        order = AccountOrder(
            order_id=order_id,
            user_id=user,
            market=market,
            side=side,
            type=type,
            tif=tif,
            post_only=post_only,
            stp=stp,
            price=price,
            amount=amount,
            quote_budget=quote_budget,
            hold=hold,
            status=INITIAL,
            client_order_id=client_order_id,
            created=now,
            updated=now,
            expire_at=expire_at,
            maker_fee=spec.maker_fee_ppm,
            taker_fee=spec.taker_fee_ppm,
        )
        if bal is None:
            bal = self.balance(user, hold_asset)
        bal[0] -= hold
        bal[1] += hold
        self.orders[order_id] = order
        self.user_orders.setdefault(user, {})[order_id] = order
        if client_order_id:
            self.client_ids[(user, client_order_id)] = order_id
        sink.balance(user, hold_asset, BUSINESS_ORDER_FREEZE, str(order_id), -hold, hold, bal)
        # No order event yet: the caller gets the order (PENDING) in its answer, and the stream reports
        # it once matching has accepted it (OPEN) or decided its fate.
        return order, False

    def open_order(self, user: int, order_id: int, client_order_id: str = "") -> AccountOrder:
        order = self.lookup(user, order_id, client_order_id)
        if order.status in FINAL:
            raise FailedPrecondition(
                f"order {order.order_id} is already {STATUS_NAMES[order.status]}", Reason.ORDER_ALREADY_DONE
            )
        return order

    def request_cancel(self, cmd: CancelOrder) -> tuple[AccountOrder, bool]:
        """Returns (order, first request). A repeated cancel is not forwarded again."""
        self._check_user(cmd.user_id)
        order = self.open_order(cmd.user_id, cmd.order_id, cmd.client_order_id)
        market = cmd.market
        if market and order.market != market:
            raise NotFound(f"order {order.order_id} is not on market {quote(market)}", Reason.ORDER_NOT_FOUND)
        first = not order.cancel_requested
        order.cancel_requested = True
        return order, first

    def cancel_all_shards(self, cmd: CancelAllOrders) -> tuple[dict[str, list[str]], int]:
        """Shards (and markets) holding the user's open orders to cancel, and how many orders."""
        user, market, side = cmd.user_id, cmd.market, cmd.side
        self._check_user(user)
        if market:
            self.spec(market)
        if side not in (0, BUY, SELL):
            raise InvalidArgument("unknown side", Reason.INVALID_FIELD)
        shards: dict[str, list[str]] = {}
        count = 0
        for o in self.user_orders.get(user, {}).values():
            if (market and o.market != market) or (side and o.side != side):
                continue
            count += 1
            shard = self.catalog.markets[o.market].shard
            if o.market not in shards.setdefault(shard, []):
                shards[shard].append(o.market)
        return shards, count

    # --- orders: amend -------------------------------------------------------------------------

    def plan_amend(self, cmd: AmendOrder) -> AmendPlan:
        """Check a whole amend (a new amount and/or a new price) against the current state; changes
        nothing. The order must be an open limit order of the user (on `market` when given); a new
        amount must be above zero and below the current amount; a buy moved above what it holds must
        be able to freeze the difference. The hold is sized for the current amount: until matching
        confirms the reduce, the order may still be that large (a reduce can be refused)."""
        user, market, new_price, new_amount = cmd.user_id, cmd.market, cmd.new_price, cmd.new_amount
        self._check_user(user)
        order = self.open_order(user, cmd.order_id, cmd.client_order_id)
        if market and order.market != market:
            raise NotFound(f"order {order.order_id} is not on market {quote(market)}", Reason.ORDER_NOT_FOUND)
        if order.type != LIMIT:
            raise FailedPrecondition("only limit orders can be amended", Reason.ORDER_NOT_AMENDABLE)
        if not new_price and not new_amount:
            raise InvalidArgument("new_price or new_amount is required", Reason.INVALID_FIELD)
        if new_price < 0 or new_amount < 0:
            raise InvalidArgument("new_price and new_amount must not be negative", Reason.INVALID_FIELD)
        spec = self.spec(order.market)
        if new_amount and new_amount >= order.amount:
            base = spec.base.symbol
            raise FailedPrecondition(
                f"new amount {spec.format_amount(new_amount)} {base} must be lower than the current "
                f"amount {spec.format_amount(order.amount)} {base} (place a new order to add)",
                Reason.ORDER_NOT_AMENDABLE,
            )
        extra = 0
        if new_price and order.side == BUY:
            remaining = order.amount - order.filled
            quote_sym = spec.quote.symbol
            value = new_price * remaining * spec.quote_units_per_tick_lot
            if value > INT64_MAX:
                raise InvalidArgument(
                    f"order value {spec.format_quote(value)} {quote_sym} is too large", Reason.VALUE_TOO_LARGE
                )
            needed = (
                max(order.price, new_price, *order.moves.values()) * remaining * spec.quote_units_per_tick_lot
            )
            extra = max(0, needed - order.hold)
            avail, _ = self.peek_balance(user, quote_sym)
            if avail < extra:
                raise FailedPrecondition(
                    f"insufficient {quote_sym}: available {self._money(quote_sym, avail)}, needed "
                    f"{self._money(quote_sym, extra)} more to move the order to "
                    f"{spec.format_price(new_price)} {quote_sym}",
                    Reason.INSUFFICIENT_BALANCE,
                )
        return AmendPlan(order, new_price, new_amount, extra)

    def apply_amend(self, plan: AmendPlan, move_seq: int, sink: Sink) -> AccountOrder:
        """Carry out a planned amend: freeze what a higher buy price may need and note the move
        (under the sequence it is forwarded with) until matching confirms or refuses it. The reduce
        changes nothing here: its release follows matching's confirmation."""
        order = plan.order
        if plan.extra_hold:
            asset = self.catalog.markets[order.market].quote.symbol
            bal = self.balance(order.user_id, asset)
            bal[0] -= plan.extra_hold
            bal[1] += plan.extra_hold
            order.hold += plan.extra_hold
            sink.balance(
                order.user_id,
                asset,
                BUSINESS_ORDER_FREEZE,
                str(order.order_id),
                -plan.extra_hold,
                plan.extra_hold,
                bal,
            )
        if plan.new_price:
            order.moves[move_seq] = plan.new_price
        return order

    def request_reduce(self, cmd: ReduceOrder) -> AccountOrder:
        """A journaled reduce_order (before one-command amends): replayed as it was applied."""
        if cmd.new_amount <= 0:
            raise InvalidArgument(
                "new_amount must be greater than zero (use CancelOrder)", Reason.INVALID_FIELD
            )
        amend = AmendOrder(cmd.user_id, cmd.order_id, cmd.client_order_id, "", Ticks(0), cmd.new_amount)
        return self.plan_amend(amend).order

    def request_move(self, cmd: MoveOrder, seq: int, sink: Sink) -> AccountOrder:
        """A journaled move_order (before one-command amends): replayed as it was applied."""
        if cmd.new_price <= 0:
            raise InvalidArgument("new_price must be greater than zero", Reason.INVALID_FIELD)
        amend = AmendOrder(cmd.user_id, cmd.order_id, cmd.client_order_id, "", cmd.new_price, Lots(0))
        return self.apply_amend(self.plan_amend(amend), seq, sink)

    # --- settlement ----------------------------------------------------------------------------

    def _needed(self, o: AccountOrder, spec: MarketSpec) -> int:
        if o.status in FINAL:
            return 0
        if o.side == SELL:
            return (o.amount - o.filled) * spec.base_units_per_lot
        if o.type == MARKET:
            return o.quote_budget - o.filled_quote
        price = max(o.price, *o.moves.values()) if o.moves else o.price
        return price * (o.amount - o.filled) * spec.quote_units_per_tick_lot

    def _release_excess(self, o: AccountOrder, spec: MarketSpec, sink: Sink) -> None:
        excess = o.hold - self._needed(o, spec)
        if excess < 0:
            raise RuntimeError(f"order {o.order_id} holds {o.hold}, less than it needs")
        if excess:
            asset = spec.quote.symbol if o.side == BUY else spec.base.symbol
            bal = self.balance(o.user_id, asset)
            bal[1] -= excess
            bal[0] += excess
            o.hold -= excess
            sink.balance(o.user_id, asset, BUSINESS_ORDER_UNFREEZE, str(o.order_id), excess, -excess, bal)

    def settle(self, batch: SettleEvents, sink: Sink) -> list[tuple[str, int, str, str]] | None:
        """Settle a batch of one shard's matching events. None when it holds nothing new (a resend:
        not journaled); the events already settled of a batch that overlaps are skipped; a batch that
        does not continue the shard's sequence is refused (SEQUENCE_GAP, nothing changes). Each event
        is checked first and quarantined (skipped, recorded) when it cannot be settled (see the module
        docstring); returns the quarantine records of the batch."""
        shard = batch.shard
        last = self.settled.get(shard, 0)
        events = batch.events
        if batch.last:  # a range of which only this shard's users' events are carried
            return self._settle_range(batch, last, sink)
        if not events or events[-1].sequence <= last:
            return None
        if events[0].sequence <= last:  # a resend overlapping what is settled: skip the old part
            events = tuple(e for e in events if e.sequence > last)
        if events[0].sequence != last + 1 or events[-1].sequence != last + len(events):
            # Refused (changes nothing, the writer goes on): settling past a gap would lose events.
            raise FailedPrecondition(
                f"matching events of {shard} are not contiguous after {last}", Reason.SEQUENCE_GAP
            )
        touched: dict[int, AccountOrder] = {}
        quarantined: list[tuple[str, int, str, str]] = []
        last_event = events[-1].sequence
        if self.shards > 1:
            self._settle_own(shard, events, sink, touched, quarantined)
            events = ()
        for e in events:
            if isinstance(e, Accepted | Done | Amended):
                why = self._settle_order_event(e, sink, touched)
            elif isinstance(e, Trade):
                why = self.trade_problem(e)
                if not why:
                    self.on_trade(e, sink, touched)
            elif isinstance(e, Rejected):
                why = ""
                if e.command_seq:
                    self.on_rejected(e, sink, touched)
            else:
                why = "event without a body"
            if why:
                quarantined.append(self.quarantine_event(shard, e.sequence, e.kind, why))
        for o in touched.values():
            sink.order(o)
        self.settled[shard] = last_event
        return quarantined

    def _settle_range(
        self, batch: SettleEvents, last: int, sink: Sink
    ) -> list[tuple[str, int, str, str]] | None:
        """A batch settling the matching events batch.first..batch.last that carries only those of
        this shard's users (accounts sharded by user: its settlement feed leaves its peers' events out
        of the journal). The range must continue the shard's sequence and hold the events, in order;
        a resend overlapping what is settled is cut to what is new."""
        shard, first, through = batch.shard, batch.first, batch.last
        if through <= last:
            return None
        events = batch.events
        if first <= last:
            events = tuple(e for e in events if e.sequence > last)
            first = last + 1
        previous = first - 1
        for e in events:
            if e.sequence <= previous or e.sequence > through:
                previous = -1
                break
            previous = e.sequence
        if first != last + 1 or previous < 0:
            raise FailedPrecondition(
                f"matching events {batch.first}..{through} of {shard} do not continue after {last} "
                "(or are out of their range)",
                Reason.SEQUENCE_GAP,
            )
        touched: dict[int, AccountOrder] = {}
        quarantined: list[tuple[str, int, str, str]] = []
        self._settle_own(shard, events, sink, touched, quarantined)
        for o in touched.values():
            sink.order(o)
        self.settled[shard] = through
        return quarantined

    def _settle_own(
        self,
        shard: str,
        events: tuple[Any, ...],
        sink: Sink,
        touched: dict[int, AccountOrder],
        quarantined: list[tuple[str, int, str, str]],
    ) -> None:
        """Accounts sharded by user: settle this shard's users' side of each event and skip the rest
        (their own shard settles them). A trade between users of two shards settles here one side:
        what it pays and receives crosses to the other shard (cross_shard)."""
        n, me = self.shards, self.shard
        for e in events:
            if isinstance(e, Trade):
                taker, maker = e.taker_user_id % n == me, e.maker_user_id % n == me
                if not (taker or maker):
                    continue
                why = self.trade_problem(e, taker=taker, maker=maker)
                if not why:
                    self.on_trade(e, sink, touched, taker=taker, maker=maker)
            elif isinstance(e, Rejected):
                why = ""
                if e.command_seq and (e.order_id - 1) % n == me:
                    self.on_rejected(e, sink, touched)
            elif isinstance(e, Accepted | Done | Amended):
                if e.user_id % n != me:
                    continue
                why = self._settle_order_event(e, sink, touched)
            else:
                why = "event without a body"
            if why:
                quarantined.append(self.quarantine_event(shard, e.sequence, e.kind, why))

    def _settle_order_event(
        self, e: Accepted | Done | Amended, sink: Sink, touched: dict[int, AccountOrder]
    ) -> str:
        """Settle an order's acceptance, end or amendment; what is wrong with it ("": settled)."""
        if isinstance(e, Accepted):
            why = self.accepted_problem(e)
            if not why:
                self.on_accepted(e, touched)
        elif isinstance(e, Done):
            why = self.done_problem(e)
            if not why:
                self.on_done(e, sink, touched)
        else:
            why = self.amended_problem(e)
            if not why:
                self.on_amended(e, sink, touched)
        return why

    def quarantine_event(self, shard: str, sequence: int, kind: str, why: str) -> tuple[str, int, str, str]:
        """Record a matching event that is not settled (see the module docstring)."""
        record = (shard, sequence, kind, why)
        self.quarantine.append(record)
        self.quarantined_total += 1
        return record

    def _open(self, order_id: int, market: str, user_id: int, what: str) -> tuple[AccountOrder | None, str]:
        o = self.orders.get(order_id)
        if o is None:
            return None, f"{what} {order_id} is not an open order"
        if o.market != market:
            return None, f"{what} {order_id} is on {o.market}, not on {quote(market)}"
        if user_id != o.user_id:
            return None, f"{what} {order_id} belongs to user {o.user_id}, not {user_id}"
        return o, ""

    def accepted_problem(self, a: Accepted) -> str:
        """Why an OrderAccepted cannot be settled ("" when it can); changes nothing."""
        return self._open(a.order_id, a.market, a.user_id, "order")[1]

    def trade_problem(self, t: Trade, *, taker: bool = True, maker: bool = True) -> str:
        """Why a trade cannot be settled ("" when both sides can be, or those named: accounts sharded
        by user settle only their own users' side); changes nothing."""
        market, price, lots, quote_units, base_units = (
            t.market,
            t.price,
            t.amount,
            t.quote_units,
            t.base_units,
        )
        taker_side, taker_order_id, maker_order_id = t.taker_side, t.taker_order_id, t.maker_order_id
        spec = self.catalog.markets.get(market)
        if spec is None:
            return f"unknown market {quote(market)}"
        if price <= 0 or lots <= 0:
            return "price and amount must be positive"
        if (
            quote_units != price * lots * spec.quote_units_per_tick_lot
            or base_units != lots * spec.base_units_per_lot
        ):
            return "quote or base units do not match price x amount"
        if taker_side not in (BUY, SELL):
            return "unknown taker side"
        if taker_order_id == maker_order_id:
            return f"order {taker_order_id} trades with itself"
        sides: tuple[tuple[int, int, str, int, int], ...] = (
            (taker_order_id, t.taker_user_id, "taker order", taker_side, t.taker_fee),
            (maker_order_id, t.maker_user_id, "maker order", SELL if taker_side == BUY else BUY, t.maker_fee),
        )
        if not (taker and maker):
            sides = sides[:1] if taker else sides[1:]
        for order_id, user_id, what, side, fee in sides:
            o, why = self._open(order_id, market, user_id, what)
            if o is None:
                return why
            if o.side != side:
                return f"{what} {order_id} is on the other side"
            pay, get, get_asset = (
                (quote_units, base_units, spec.base.symbol)
                if side == BUY
                else (base_units, quote_units, spec.quote.symbol)
            )
            if fee < 0 or fee > get:
                return f"{what} {order_id}: fee out of range"
            filled, filled_quote = o.filled + lots, o.filled_quote + quote_units
            if o.type == MARKET and side == BUY:
                left = o.quote_budget - filled_quote
                needed_after = left
                if o.amount and filled > o.amount:  # a market buy by amount: its amount bounds it too
                    left = o.amount - filled
            else:
                left = o.amount - filled
                needed_after = self._needed_after(o, spec, o.price, o.amount, filled, o.moves.values())
            if left < 0:
                return f"{what} {order_id} would fill more than its amount"
            if pay > o.hold or o.hold - pay < needed_after:
                return f"{what} {order_id}: its hold does not cover the fill"
            if self.peek_balance(o.user_id, get_asset)[0] + get > INT64_MAX:
                return f"{what} {order_id}: the {get_asset} balance would exceed 64 bits"
            if self.peek_balance(FEE_ACCOUNT, get_asset)[0] + fee > INT64_MAX:
                return f"the fee account's {get_asset} balance would exceed 64 bits"
        return ""

    @staticmethod
    def _needed_after(
        o: AccountOrder, spec: MarketSpec, price: int, amount: int, filled: int, moves: Iterable[int]
    ) -> int:
        """What a limit order (or a market sell) needs with these values (price in ticks, amounts in
        lots; the result in units of the asset it holds)."""
        if o.side == SELL:
            return (amount - filled) * spec.base_units_per_lot
        return max((price, *moves)) * (amount - filled) * spec.quote_units_per_tick_lot

    def amended_problem(self, a: Amended) -> str:
        """Why an OrderAmended cannot be settled ("" when it can); changes nothing."""
        order_id, price, amount = a.order_id, a.price, a.amount
        o, why = self._open(order_id, a.market, a.user_id, "order")
        if o is None:
            return why
        if o.type != LIMIT:
            return f"order {order_id} is not a limit order"
        if price <= 0 or amount <= 0:
            return "price and amount must be positive"
        if amount - o.filled != a.remaining:
            return f"order {order_id}: accounts sees {amount - o.filled} lots open, matching {a.remaining}"
        moves = [p for s, p in o.moves.items() if a.priority_kept or s != a.command_seq]
        spec = self.catalog.markets[a.market]
        if self._needed_after(o, spec, price, amount, o.filled, moves) > o.hold:
            return f"order {order_id}: its hold does not cover the amended order"
        return ""

    def done_problem(self, d: Done) -> str:
        """Why an OrderDone cannot be settled ("" when it can); changes nothing."""
        o, why = self._open(d.order_id, d.market, d.user_id, "order")
        if o is None:
            return why
        if (o.status, DONE_EVENTS.get(d.reason)) not in TRANSITIONS:
            return f"unknown done reason {d.reason}"
        return ""

    def on_accepted(self, a: Accepted, touched: dict[int, AccountOrder]) -> None:
        o = self.orders[a.order_id]
        status = TRANSITIONS.get((o.status, ACCEPTED)) or invalid_transition(o.status, ACCEPTED)
        if status != o.status:
            o.status = status
            o.updated = a.time_us
            touched[a.order_id] = o

    def on_trade(
        self,
        t: Trade,
        sink: Sink,
        touched: dict[int, AccountOrder],
        *,
        taker: bool = True,
        maker: bool = True,
    ) -> None:
        """Settle both sides of a trade, or those named (checked first with trade_problem). One side
        alone is a trade with a user of another accounts shard: what it pays leaves this shard and what
        it receives (before its fee) enters it, in cross_shard."""
        market = t.market
        spec = self.catalog.markets[market]
        business_id = f"{market}#{t.trade_id}"
        taker_side, quote_units, base_units, lots, now = (
            t.taker_side,
            t.quote_units,
            t.base_units,
            t.amount,
            t.time_us,
        )
        sides: tuple[tuple[int, int, int], ...] = (
            (t.taker_order_id, TAKER, t.taker_fee),
            (t.maker_order_id, MAKER, t.maker_fee),
        )
        one_side = not (taker and maker)
        if one_side:
            sides = sides[:1] if taker else sides[1:]
        for order_id, role, fee in sides:
            o = self.orders[order_id]
            side = taker_side if role == TAKER else (SELL if taker_side == BUY else BUY)
            if side == BUY:
                pay_asset, pay, get_asset, get = spec.quote.symbol, quote_units, spec.base.symbol, base_units
            else:
                pay_asset, pay, get_asset, get = spec.base.symbol, base_units, spec.quote.symbol, quote_units
            user = o.user_id
            if one_side:
                cross = self.cross_shard
                cross[pay_asset] = cross.get(pay_asset, 0) - pay
                cross[get_asset] = cross.get(get_asset, 0) + get
            bal = self.balance(user, pay_asset)
            bal[1] -= pay
            o.hold -= pay
            sink.balance(user, pay_asset, BUSINESS_TRADE, business_id, 0, -pay, bal)
            bal = self.balance(user, get_asset)
            bal[0] += get
            sink.balance(user, get_asset, BUSINESS_TRADE, business_id, get, 0, bal)
            if fee:
                bal[0] -= fee
                sink.balance(user, get_asset, BUSINESS_FEE, business_id, -fee, 0, bal)
                fee_bal = self.balance(FEE_ACCOUNT, get_asset)
                fee_bal[0] += fee
                sink.balance(FEE_ACCOUNT, get_asset, BUSINESS_FEE, business_id, fee, 0, fee_bal)
            o.filled += lots
            o.filled_quote += quote_units
            o.fee += fee
            o.status = TRANSITIONS.get((o.status, FILL)) or invalid_transition(o.status, FILL)
            o.updated = now
            self._release_excess(o, spec, sink)
            sink.fill(user, t, order_id, side, role, fee, get_asset)
            touched[order_id] = o

    def on_amended(self, a: Amended, sink: Sink, touched: dict[int, AccountOrder]) -> None:
        """Settle an amend (checked first with amended_problem)."""
        order_id = a.order_id
        o = self.orders[order_id]
        spec = self.catalog.markets[o.market]
        if not a.priority_kept:
            o.moves.pop(a.command_seq, None)
        o.price = a.price
        o.amount = a.amount
        o.updated = a.time_us
        self._release_excess(o, spec, sink)
        touched[order_id] = o

    def on_done(self, d: Done, sink: Sink, touched: dict[int, AccountOrder]) -> None:
        """Settle the end of an order (checked first with done_problem)."""
        order_id = d.order_id
        o = self.orders[order_id]
        done = DONE_EVENTS[d.reason]
        status = TRANSITIONS.get((o.status, done)) or invalid_transition(o.status, done)
        del self.orders[order_id]
        mine = self.user_orders[o.user_id]
        del mine[order_id]
        if not mine:
            del self.user_orders[o.user_id]
        spec = self.catalog.markets[o.market]
        o.status = status
        o.detail = d.detail
        o.updated = d.time_us
        o.moves.clear()
        self._release_excess(o, spec, sink)
        touched[order_id] = o
        self.finished[order_id] = o
        while len(self.finished) > self.finished_keep:
            _, old = self.finished.popitem(last=False)
            if old.client_order_id:
                self.client_ids.pop((old.user_id, old.client_order_id), None)

    def on_rejected(self, r: Rejected, sink: Sink, touched: dict[int, AccountOrder]) -> None:
        """A forwarded cancel/reduce/move was refused by matching (e.g. the order was already done)."""
        o = self.orders.get(r.order_id)
        if o is None:
            return
        if r.command_seq in o.moves:
            del o.moves[r.command_seq]
            self._release_excess(o, self.catalog.markets[o.market], sink)
            touched[r.order_id] = o

    # --- audit ---------------------------------------------------------------------------------

    def iter_user_orders(self, user: int, market: str = "") -> Iterator[AccountOrder]:
        for o in self.user_orders.get(user, {}).values():
            if not market or o.market == market:
                yield o

    def audit(self) -> dict[str, dict[str, int]]:
        """Per asset: total of all balances (fee account included), deposits - withdrawals, frozen,
        what open orders hold, and what crossed from other accounts shards in trades. A healthy ledger
        has total == external + cross_shard (cross_shard is 0 with one shard) and frozen == held."""
        out: dict[str, dict[str, int]] = {
            a: {
                "total": 0,
                "external": self.net_external.get(a, 0),
                "frozen": 0,
                "held": 0,
                "cross_shard": self.cross_shard.get(a, 0),
            }
            for a in self.catalog.assets
        }
        for assets in self.balances.values():
            for asset, (avail, frozen) in assets.items():
                out[asset]["total"] += avail + frozen
                out[asset]["frozen"] += frozen
        for o in self.orders.values():
            spec = self.catalog.markets[o.market]
            asset = spec.quote.symbol if o.side == BUY else spec.base.symbol
            out[asset]["held"] += o.hold
        return out

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "balances": sorted(
                (u, a, b[0], b[1]) for u, assets in self.balances.items() for a, b in assets.items()
            ),
            "orders": [self.orders[k].state() for k in sorted(self.orders)],
            "finished": [o.state() for o in self.finished.values()],
            "client_ids": sorted((u, c, oid) for (u, c), oid in self.client_ids.items()),
            "adjustments": sorted((*k, v) for k, v in self.adjustments.items()),
            "net_external": sorted(self.net_external.items()),
            "next_order_id": self.next_order_id,
            "settled": sorted(self.settled.items()),
            **(
                {"shard": [self.shard, self.shards], "cross_shard": sorted(self.cross_shard.items())}
                if self.shards > 1
                else {}
            ),
            "quarantine": list(self.quarantine),
            "quarantined_total": self.quarantined_total,
            **self.subs.snapshot(),
        }

    @classmethod
    def restore(
        cls,
        catalog: MarketCatalog,
        data: dict[str, Any],
        *,
        finished_keep: int = 100_000,
        shard: int = 0,
        shards: int = 1,
    ) -> Ledger:
        saved = tuple(data.get("shard", (0, 1)))
        if saved != (shard, shards):
            raise ValueError(
                f"the snapshot is of accounts shard {saved[0]} of {saved[1]}, not {shard} of {shards}: "
                "users cannot be repartitioned by restarting with another shard count"
            )
        led = cls(catalog, finished_keep=finished_keep, shard=shard, shards=shards)
        led.cross_shard = {str(k): int(v) for k, v in data.get("cross_shard", ())}
        for u, a, avail, frozen in data["balances"]:
            led.balances.setdefault(u, {})[a] = [avail, frozen]
        for s in data["orders"]:
            o = AccountOrder.from_state(s)
            led.orders[o.order_id] = o
            led.user_orders.setdefault(o.user_id, {})[o.order_id] = o
        for s in data["finished"]:
            o = AccountOrder.from_state(s)
            led.finished[o.order_id] = o
        led.client_ids = {(u, c): oid for u, c, oid in data["client_ids"]}
        led.adjustments = {(u, a, b, i): v for u, a, b, i, v in data["adjustments"]}
        led.net_external = dict(data["net_external"])
        led.next_order_id = data["next_order_id"]
        led.settled = dict(data["settled"])
        led.quarantine.extend((str(a), int(b), str(c), str(d)) for a, b, c, d in data.get("quarantine", ()))
        led.quarantined_total = int(data.get("quarantined_total", 0))
        led.subs = SubAccounts.restore(data)
        return led
