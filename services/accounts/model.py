"""Value types of the accounts domain: the commands the ledger applies and the matching events it
settles: plain value types, decoded from the journaled protobuf by services.accounts.convert
at the machine's boundary; the ledger (services.accounts.ledger) knows nothing of protobuf.

Integers only: prices in Ticks, amounts in Lots, money in Units (services.common.quantities), times in
microseconds; enum codes are services.common.enums'. An order id or client order id of 0 / "" means
"not given".

Every type is a `value` (services.common.values): frozen to the type checker, a plain slotted dataclass
at run time (one is built per journaled command and per settled matching event: the accounts hot
path), like services.matching.model's hot types.
"""

from __future__ import annotations

from typing import ClassVar

from services.common.quantities import Lots, Ticks, Units
from services.common.values import value

# --- commands ----------------------------------------------------------------------------------


@value
class AdjustBalance:
    """A deposit (change > 0) or a withdrawal (change < 0), idempotent by (user, asset, business,
    business_id)."""

    user_id: int
    asset: str
    change: Units
    business: str
    business_id: str


@value
class PlaceOrder:
    user_id: int
    market: str
    side: int
    type: int
    tif: int
    price: Ticks  # 0 for a market order
    amount: Lots  # 0 for a market buy
    quote_budget: Units  # market buy only
    post_only: bool
    stp: int
    expire_at: int  # GTD only
    client_order_id: str
    order_id: int = 0  # as journaled (a replay); 0 when the ledger is to number it


@value
class CancelOrder:
    user_id: int
    order_id: int
    client_order_id: str
    market: str  # checked when given


@value
class CancelAllOrders:
    user_id: int
    market: str  # "" = every market
    side: int  # 0 = both sides


@value
class AmendOrder:
    """A new amount (kept priority) and/or a new price (lost priority), checked as a whole. A
    reservation only reserves its sequence number for the amend that follows it (see
    services.accounts.machine)."""

    user_id: int
    order_id: int
    client_order_id: str
    market: str  # checked when given
    new_price: Ticks  # 0 = keep
    new_amount: Lots  # 0 = keep
    reservation: bool = False


@value
class ReduceOrder:
    """A journaled reduce_order (before one-command amends): replayed as it was applied."""

    user_id: int
    order_id: int
    client_order_id: str
    new_amount: Lots


@value
class MoveOrder:
    """A journaled move_order (before one-command amends): replayed as it was applied."""

    user_id: int
    order_id: int
    client_order_id: str
    new_price: Ticks


@value
class OpenSubAccount:
    """Open a sub-account of `owner_user_id` (an ordinary user) labelled `label`, idempotent by
    (owner, label); its user id is allocated when applied."""

    owner_user_id: int
    label: str


@value
class Transfer:
    """Move `amount` units of available `asset` between an owner and one of its sub-accounts
    (either direction), idempotent by (owner, transfer_id)."""

    from_user_id: int
    to_user_id: int
    asset: str
    amount: Units
    transfer_id: str


# --- matching events, as settlement sees them --------------------------------------------------
#
# Each carries its shard's event `sequence`, its `market` and `time_us`; `kind` is the MatchingEvent
# oneof name (quarantine reports). `command_seq` is the accounts sequence of the command that caused
# the event, 0 when another source sent it.


@value
class Accepted:
    kind: ClassVar[str] = "order_accepted"
    sequence: int
    market: str
    time_us: int
    order_id: int
    user_id: int


@value
class Trade:
    kind: ClassVar[str] = "trade_executed"
    sequence: int
    market: str
    time_us: int
    trade_id: int
    price: Ticks
    amount: Lots
    quote_units: Units  # price x amount
    base_units: Units  # amount
    taker_side: int
    taker_order_id: int
    taker_user_id: int
    maker_order_id: int
    maker_user_id: int
    taker_fee: Units  # in the asset the taker receives
    maker_fee: Units  # in the asset the maker receives


@value
class Amended:
    kind: ClassVar[str] = "order_amended"
    sequence: int
    market: str
    time_us: int
    command_seq: int
    order_id: int
    user_id: int
    price: Ticks
    amount: Lots
    remaining: Lots
    priority_kept: bool  # a reduce; a move loses its place


@value
class Done:
    kind: ClassVar[str] = "order_done"
    sequence: int
    market: str
    time_us: int
    order_id: int
    user_id: int
    reason: int
    detail: int


@value
class Rejected:
    """A forwarded cancel, reduce or move that matching refused."""

    kind: ClassVar[str] = "command_rejected"
    sequence: int
    market: str
    time_us: int
    command_seq: int
    order_id: int


@value
class Unreadable:
    """An event without a body accounts knows (`kind` is its oneof name, "" for none)."""

    sequence: int
    kind: str


SettlementEvent = Accepted | Trade | Amended | Done | Rejected | Unreadable


@value
class SettleEvents:
    """A batch of one shard's matching events, in sequence order. With a range (first, last: accounts
    sharded by user) it settles the events first..last and carries only those concerning this
    accounts shard's users; without (0, 0) it carries every event from its first to its last."""

    shard: str
    events: tuple[SettlementEvent, ...]
    first: int = 0
    last: int = 0


Command = (
    AdjustBalance
    | PlaceOrder
    | CancelOrder
    | CancelAllOrders
    | AmendOrder
    | ReduceOrder
    | MoveOrder
    | SettleEvents
    | OpenSubAccount
    | Transfer
)
