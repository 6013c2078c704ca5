"""The exchange's one vocabulary of enum values: plain integer constants equal to the protobuf enums of
exchange.v1 (types.proto, events.proto), so domain code converts to and from messages without tables.

Plain `Final` ints (not IntEnum): the mypyc-compiled matching core inlines them as literals, and the
interpreted modules read them as ordinary globals. Each group names its protobuf enum; a constant is the
protobuf value's name without the enum prefix, with the group's short prefix where the bare name would
be ambiguous (tests/test_enums.py checks every value against the generated code, both ways).
"""

from __future__ import annotations

from typing import Final

# Side (SIDE_*); 0 = unspecified (cancel-all: both sides)
BUY: Final = 1
SELL: Final = 2

# OrderType (ORDER_TYPE_*)
LIMIT: Final = 1
MARKET: Final = 2

# TimeInForce (TIME_IN_FORCE_*); 0 = the type's default (limit: GTC, market: IOC)
GTC: Final = 1
IOC: Final = 2
FOK: Final = 3
GTD: Final = 4

# SelfTradePrevention (SELF_TRADE_PREVENTION_*); 0 = the market's default, cancel the maker
STP_DEFAULT: Final = 0
STP_CANCEL_TAKER: Final = 1
STP_CANCEL_MAKER: Final = 2
STP_CANCEL_BOTH: Final = 3

# OrderStatus (ORDER_STATUS_*)
PENDING: Final = 1
OPEN: Final = 2
PARTIALLY_FILLED: Final = 3
FILLED: Final = 4
CANCELED: Final = 5
EXPIRED: Final = 6
REJECTED: Final = 7

# DoneReason (DONE_REASON_*)
DONE_FILLED: Final = 1
DONE_CANCELED: Final = 2
DONE_EXPIRED: Final = 3
DONE_REJECTED: Final = 4

# DoneDetail (DONE_DETAIL_*)
DETAIL_NONE: Final = 0
DETAIL_USER_CANCEL: Final = 1
DETAIL_CANCEL_ALL: Final = 2
DETAIL_IOC_REMAINDER: Final = 3
DETAIL_NO_LIQUIDITY: Final = 4
DETAIL_SELF_TRADE: Final = 5
DETAIL_POST_ONLY_WOULD_TAKE: Final = 6
DETAIL_FOK_NOT_FILLABLE: Final = 7
DETAIL_EXPIRE_TIME: Final = 8
DETAIL_REDUCED_TO_ZERO: Final = 9
DETAIL_MARKET_HALTED: Final = 10
DETAIL_DUPLICATE_ORDER_ID: Final = 11
DETAIL_INVALID: Final = 12

# CommandRejectReason (COMMAND_REJECT_REASON_*)
REJECT_ORDER_NOT_FOUND: Final = 1
REJECT_NOT_OWNER: Final = 2
REJECT_UNKNOWN_MARKET: Final = 3
REJECT_INVALID: Final = 4
REJECT_POST_ONLY_WOULD_TAKE: Final = 5
REJECT_MARKET_HALTED: Final = 6

# BalanceBusiness (BALANCE_BUSINESS_*)
BUSINESS_DEPOSIT: Final = 1
BUSINESS_WITHDRAW: Final = 2
BUSINESS_ORDER_FREEZE: Final = 3
BUSINESS_ORDER_UNFREEZE: Final = 4
BUSINESS_TRADE: Final = 5
BUSINESS_FEE: Final = 6
BUSINESS_TRANSFER_OUT: Final = 7
BUSINESS_TRANSFER_IN: Final = 8

# LiquidityRole (LIQUIDITY_ROLE_*)
MAKER: Final = 1
TAKER: Final = 2

# --- derived tables ----------------------------------------------------------------------------

# The order status a DoneReason leaves an order in.
DONE_STATUS: Final = {
    DONE_FILLED: FILLED,
    DONE_CANCELED: CANCELED,
    DONE_EXPIRED: EXPIRED,
    DONE_REJECTED: REJECTED,
}
FINAL_STATUSES: Final = frozenset(DONE_STATUS.values())
STATUS_NAMES: Final = {
    PENDING: "pending",
    OPEN: "open",
    PARTIALLY_FILLED: "partially filled",
    FILLED: "filled",
    CANCELED: "canceled",
    EXPIRED: "expired",
    REJECTED: "rejected",
}
# BalanceBusiness as the API names it (history's ListBalanceHistory: filter and entries).
BUSINESS_NAMES: Final = {
    BUSINESS_DEPOSIT: "deposit",
    BUSINESS_WITHDRAW: "withdraw",
    BUSINESS_ORDER_FREEZE: "order_freeze",
    BUSINESS_ORDER_UNFREEZE: "order_unfreeze",
    BUSINESS_TRADE: "trade",
    BUSINESS_FEE: "fee",
    BUSINESS_TRANSFER_OUT: "transfer_out",
    BUSINESS_TRANSFER_IN: "transfer_in",
}
