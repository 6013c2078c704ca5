"""Value types of the matching domain: commands in, events out, and the resting order.

Integers only: prices in ticks, amounts in lots, money in the smallest unit of an asset, fee rates in
parts per million, times in microseconds. The enum codes are services.common.enums' (equal to the
protobuf values, so the service layer converts without tables).
"""

from __future__ import annotations

from dataclasses import dataclass

# The enum values of the matching domain, defined once in services.common.enums (re-exported here for
# the modules that speak in the matching model's terms).
from services.common.enums import (
    BUY as BUY,
)
from services.common.enums import (
    DETAIL_CANCEL_ALL as DETAIL_CANCEL_ALL,
)
from services.common.enums import (
    DETAIL_DUPLICATE_ORDER_ID as DETAIL_DUPLICATE_ORDER_ID,
)
from services.common.enums import (
    DETAIL_EXPIRE_TIME as DETAIL_EXPIRE_TIME,
)
from services.common.enums import (
    DETAIL_FOK_NOT_FILLABLE as DETAIL_FOK_NOT_FILLABLE,
)
from services.common.enums import (
    DETAIL_INVALID as DETAIL_INVALID,
)
from services.common.enums import (
    DETAIL_IOC_REMAINDER as DETAIL_IOC_REMAINDER,
)
from services.common.enums import (
    DETAIL_MARKET_HALTED as DETAIL_MARKET_HALTED,
)
from services.common.enums import (
    DETAIL_NO_LIQUIDITY as DETAIL_NO_LIQUIDITY,
)
from services.common.enums import (
    DETAIL_NONE as DETAIL_NONE,
)
from services.common.enums import (
    DETAIL_POST_ONLY_WOULD_TAKE as DETAIL_POST_ONLY_WOULD_TAKE,
)
from services.common.enums import (
    DETAIL_REDUCED_TO_ZERO as DETAIL_REDUCED_TO_ZERO,
)
from services.common.enums import (
    DETAIL_SELF_TRADE as DETAIL_SELF_TRADE,
)
from services.common.enums import (
    DETAIL_USER_CANCEL as DETAIL_USER_CANCEL,
)
from services.common.enums import (
    DONE_CANCELED as DONE_CANCELED,
)
from services.common.enums import (
    DONE_EXPIRED as DONE_EXPIRED,
)
from services.common.enums import (
    DONE_FILLED as DONE_FILLED,
)
from services.common.enums import (
    DONE_REJECTED as DONE_REJECTED,
)
from services.common.enums import (
    FOK as FOK,
)
from services.common.enums import (
    GTC as GTC,
)
from services.common.enums import (
    GTD as GTD,
)
from services.common.enums import (
    IOC as IOC,
)
from services.common.enums import (
    LIMIT as LIMIT,
)
from services.common.enums import (
    MARKET as MARKET,
)
from services.common.enums import (
    REJECT_INVALID as REJECT_INVALID,
)
from services.common.enums import (
    REJECT_MARKET_HALTED as REJECT_MARKET_HALTED,
)
from services.common.enums import (
    REJECT_NOT_OWNER as REJECT_NOT_OWNER,
)
from services.common.enums import (
    REJECT_ORDER_NOT_FOUND as REJECT_ORDER_NOT_FOUND,
)
from services.common.enums import (
    REJECT_POST_ONLY_WOULD_TAKE as REJECT_POST_ONLY_WOULD_TAKE,
)
from services.common.enums import (
    REJECT_UNKNOWN_MARKET as REJECT_UNKNOWN_MARKET,
)
from services.common.enums import (
    SELL as SELL,
)
from services.common.enums import (
    STP_CANCEL_BOTH as STP_CANCEL_BOTH,
)
from services.common.enums import (
    STP_CANCEL_MAKER as STP_CANCEL_MAKER,
)
from services.common.enums import (
    STP_CANCEL_TAKER as STP_CANCEL_TAKER,
)
from services.common.enums import (
    STP_DEFAULT as STP_DEFAULT,
)

# --- commands ----------------------------------------------------------------------------------


@dataclass(slots=True)
class PlaceOrder:
    """A new order. Treated as immutable once submitted."""

    order_id: int
    user_id: int
    market: str
    side: int
    type: int = LIMIT
    tif: int = GTC
    price: int = 0  # ticks; 0 for market orders
    amount: int = 0  # lots; a market buy: 0 = spend the budget, > 0 = buy up to this many lots
    quote_budget: int = 0  # quote units, market buy only (always given): the most it may spend
    post_only: bool = False
    stp: int = STP_DEFAULT
    expire_at: int = 0  # microseconds; GTD only
    maker_fee_ppm: int = 0
    taker_fee_ppm: int = 0


@dataclass(slots=True, frozen=True)
class CancelOrder:
    order_id: int
    user_id: int
    market: str


@dataclass(slots=True, frozen=True)
class CancelAll:
    """Cancel a user's open orders on a market ("" = every market of the shard)."""

    user_id: int
    market: str
    side: int = 0  # 0 = both sides


@dataclass(slots=True, frozen=True)
class ReduceOrder:
    """Lower the order's total amount (filled included) keeping time priority."""

    order_id: int
    user_id: int
    market: str
    new_amount: int


@dataclass(slots=True, frozen=True)
class MoveOrder:
    """Move the order to a new price; it loses time priority and may trade."""

    order_id: int
    user_id: int
    market: str
    new_price: int


@dataclass(slots=True, frozen=True)
class ExpireOrders:
    """Expire GTD orders due at the command's time; market "" means every market of the shard."""

    market: str = ""


Command = PlaceOrder | CancelOrder | CancelAll | ReduceOrder | MoveOrder | ExpireOrders


# --- events ------------------------------------------------------------------------------------


@dataclass(slots=True)
class OrderAccepted:
    order: PlaceOrder


@dataclass(slots=True)
class TradeExecuted:
    trade_id: int
    price: int
    amount: int
    quote_units: int
    base_units: int
    taker_side: int
    taker_order_id: int
    taker_user_id: int
    maker_order_id: int
    maker_user_id: int
    taker_fee: int
    maker_fee: int
    taker_remaining: int
    maker_remaining: int
    taker_price: int
    taker_remaining_budget: int


@dataclass(slots=True)
class OrderAmended:
    order_id: int
    user_id: int
    side: int
    price: int
    amount: int
    remaining: int
    old_price: int
    old_remaining: int
    priority_kept: bool


@dataclass(slots=True)
class OrderDone:
    """The order left the book (or never entered it). `order` is final: nothing changes it any more;
    its `remaining` is what was still open, its `budget` what a market buy returns."""

    order: Order
    reason: int
    detail: int


@dataclass(slots=True)
class CommandRejected:
    order_id: int
    user_id: int
    reason: int
    message: str


Event = OrderAccepted | TradeExecuted | OrderAmended | OrderDone | CommandRejected


# --- the resting order -------------------------------------------------------------------------


class Order:
    """An order inside a book. Mutable; owned by exactly one OrderBook.

    Fields that never change after placement (type, time in force, post-only, self-trade mode, expiry,
    fee rates) are read from `cmd`, the PlaceOrder that created it; `price` and `amount` start as the
    command's and change with a move or a reduce.
    """

    __slots__ = (
        "amount",
        "budget",
        "cmd",
        "created",
        "filled",
        "filled_quote",
        "live",
        "order_id",
        "price",
        "remaining",
        "side",
        "user_id",
    )

    def __init__(self, cmd: PlaceOrder, now: int) -> None:
        self.order_id = cmd.order_id
        self.user_id = cmd.user_id
        self.side = cmd.side
        self.price = cmd.price
        self.amount = cmd.amount
        self.remaining = cmd.amount
        self.budget = cmd.quote_budget
        self.filled = 0
        self.filled_quote = 0
        self.cmd = cmd
        self.created = now
        self.live = True

    def copy(self) -> Order:
        o = Order(self.cmd, self.created)
        o.price = self.price
        o.amount = self.amount
        o.remaining = self.remaining
        o.budget = self.budget
        o.filled = self.filled
        o.filled_quote = self.filled_quote
        return o

    def state(self) -> tuple[int | str | bool, ...]:
        """Every field, in a fixed order (snapshots and hashes)."""
        c = self.cmd
        return (
            self.order_id,
            self.user_id,
            self.side,
            c.type,
            c.tif,
            self.price,
            self.amount,
            self.remaining,
            self.budget,
            self.filled,
            self.filled_quote,
            c.post_only,
            c.stp,
            c.expire_at,
            self.created,
            c.maker_fee_ppm,
            c.taker_fee_ppm,
            c.market,
            c.price,
            c.amount,
            c.quote_budget,
        )

    @staticmethod
    def from_state(s: tuple[int | str | bool, ...]) -> Order:
        (
            order_id,
            user_id,
            side,
            type_,
            tif,
            price,
            amount,
            remaining,
            budget,
            filled,
            filled_quote,
            post_only,
            stp,
            expire_at,
            created,
            maker_fee,
            taker_fee,
            market,
            cmd_price,
            cmd_amount,
            cmd_budget,
        ) = s
        cmd = PlaceOrder(
            int(order_id),
            int(user_id),
            str(market),
            int(side),
            int(type_),
            int(tif),
            int(cmd_price),
            int(cmd_amount),
            int(cmd_budget),
            bool(post_only),
            int(stp),
            int(expire_at),
            int(maker_fee),
            int(taker_fee),
        )
        o = Order(cmd, int(created))
        o.price = int(price)
        o.amount = int(amount)
        o.remaining = int(remaining)
        o.budget = int(budget)
        o.filled = int(filled)
        o.filled_quote = int(filled_quote)
        return o

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Order) and self.state() == other.state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        side = "BUY" if self.side == BUY else "SELL"
        return f"Order({self.order_id} u{self.user_id} {side} {self.remaining}/{self.amount}@{self.price})"
