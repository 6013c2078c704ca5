"""The valid range of every integer field and the bound of every string field at the API edge,
defined once and used by every service. Anything outside is refused with INVALID_ARGUMENT (reason
VALUE_OUT_OF_RANGE or FIELD_TOO_LONG) before it reaches a state machine or a database.

Ids, sequences and times are stored as signed 64-bit integers (SQL BIGINT), so every one of them must
fit INT64_MAX even where the protobuf type is uint64.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument, Reason, quote
from services.common.units import INT64_MAX

# --- integers ---------------------------------------------------------------------------------
MAX_USER_ID = INT64_MAX
MAX_ORDER_ID = INT64_MAX
MAX_SEQUENCE = INT64_MAX
MAX_TIME_US = INT64_MAX

# Sub-accounts (services.accounts): their user ids are SUB_ACCOUNT_BASE + n (n from 1), allocated by the
# accounts machine; ordinary user ids are below SUB_ACCOUNT_BASE (refused at the edge where an ordinary
# account would be created: Deposit, Withdraw, OpenSubAccount's owner).
SUB_ACCOUNT_BASE = 2**62
MAX_ORDINARY_USER_ID = SUB_ACCOUNT_BASE - 1
MAX_SUB_ACCOUNTS_PER_OWNER = 10_000

# --- strings (characters) ---------------------------------------------------------------------
MAX_SYMBOL = 32  # market and asset symbols
MAX_CLIENT_ORDER_ID = 64
MAX_BUSINESS = 64
MAX_BUSINESS_ID = 128
MAX_DECIMAL = 64  # a decimal string (price, amount, ...)
MAX_PAGE_TOKEN = 512
MAX_SOURCE = 64  # a journal source name ("accounts-0", "matching-1")
MAX_TEXT = 256  # any other free text
MAX_SUB_ACCOUNT_LABEL = 64
MAX_TRANSFER_ID = 64

# --- paging: one rule everywhere ------------------------------------------------------------
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# --- market data: the `limit` of a K-line, recent-trade or depth request (not paged): 0 means the
# default; above the maximum it is refused (VALUE_OUT_OF_RANGE).
DEFAULT_KLINES = 500
MAX_KLINES = 1500
DEFAULT_RECENT_TRADES = 100
MAX_RECENT_TRADES = 1000
DEFAULT_DEPTH_LEVELS = 20
MAX_DEPTH_LEVELS = 5000


def page_size(requested: int) -> int:
    """The page size a list call uses: 0 means the default; above the maximum it is clamped to
    MAX_PAGE_SIZE (AIP-158: the caller reads next_page_token for the rest)."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", Reason.VALUE_OUT_OF_RANGE)
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def check_int(value: int, name: str, *, low: int = 0, high: int = INT64_MAX) -> int:
    if value < low or value > high:
        raise InvalidArgument(f"{name} must be in {low}..{high}", Reason.VALUE_OUT_OF_RANGE)
    return value


def check_user(user_id: int, *, allow_fee_account: bool = False) -> int:
    """A user id: 1..MAX_USER_ID (0, the fee account, only where reading it is allowed)."""
    if user_id > MAX_USER_ID:
        raise InvalidArgument(f"user_id must be at most {MAX_USER_ID}", Reason.VALUE_OUT_OF_RANGE)
    if user_id < 1 and not (allow_fee_account and user_id == 0):
        raise InvalidArgument("user_id must be positive", Reason.VALUE_OUT_OF_RANGE)
    return user_id


def check_ordinary_user(user_id: int, name: str = "user_id") -> int:
    """An ordinary (not sub-account) user id: 1..MAX_ORDINARY_USER_ID."""
    if user_id < 1 or user_id > MAX_ORDINARY_USER_ID:
        raise InvalidArgument(
            f"{name} must be in 1..{MAX_ORDINARY_USER_ID} (ids from 2^62 are sub-accounts)",
            Reason.VALUE_OUT_OF_RANGE,
        )
    return user_id


def check_order_id(order_id: int, name: str = "order_id") -> int:
    if order_id < 0 or order_id > MAX_ORDER_ID:
        raise InvalidArgument(f"{name} must be in 0..{MAX_ORDER_ID}", Reason.VALUE_OUT_OF_RANGE)
    return order_id


def check_sequence(seq: int, name: str = "from_sequence") -> int:
    if seq < 0 or seq > MAX_SEQUENCE:
        raise InvalidArgument(f"{name} must be in 0..{MAX_SEQUENCE}", Reason.VALUE_OUT_OF_RANGE)
    return seq


def check_time(time_us: int, name: str) -> int:
    if time_us < 0 or time_us > MAX_TIME_US:
        raise InvalidArgument(f"{name} must be in 0..{MAX_TIME_US}", Reason.VALUE_OUT_OF_RANGE)
    return time_us


def check_str(value: str, name: str, limit: int) -> str:
    """A string field no longer than `limit` characters; the error quotes a short prefix only."""
    if len(value) > limit:
        raise InvalidArgument(
            f"{name} is longer than {limit} characters: {quote(value)}", Reason.FIELD_TOO_LONG
        )
    return value
