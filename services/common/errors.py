"""Domain errors. Each maps to one gRPC status code in the service layer (services.common.rpc), and
carries a stable machine-readable reason (`Reason`, the names of exchange.v1.ErrorReason without the
prefix) that the service layer sends as google.rpc.ErrorInfo. The domain itself knows nothing of gRPC.

Messages are for people: they quote at most a short prefix of what the caller sent (`quote`), and show
amounts as decimals with their asset symbol, never raw integer units.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Reason(StrEnum):
    """Stable error reasons; the same names as exchange.v1.ErrorReason (errors.proto) without the
    ERROR_REASON_ prefix (tests/test_errors.py checks that both lists agree)."""

    INVALID_FIELD = "INVALID_FIELD"
    FIELD_TOO_LONG = "FIELD_TOO_LONG"
    VALUE_OUT_OF_RANGE = "VALUE_OUT_OF_RANGE"
    INVALID_DECIMAL = "INVALID_DECIMAL"
    PRICE_NOT_ON_TICK = "PRICE_NOT_ON_TICK"
    AMOUNT_NOT_ON_LOT = "AMOUNT_NOT_ON_LOT"
    BELOW_MIN_AMOUNT = "BELOW_MIN_AMOUNT"
    BELOW_MIN_NOTIONAL = "BELOW_MIN_NOTIONAL"
    VALUE_TOO_LARGE = "VALUE_TOO_LARGE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    INVALID_ORDER = "INVALID_ORDER"
    UNKNOWN_MARKET = "UNKNOWN_MARKET"
    UNKNOWN_ASSET = "UNKNOWN_ASSET"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    MARKET_NOT_ON_SHARD = "MARKET_NOT_ON_SHARD"
    SUB_ACCOUNT_NOT_FOUND = "SUB_ACCOUNT_NOT_FOUND"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    ORDER_ALREADY_DONE = "ORDER_ALREADY_DONE"
    ORDER_NOT_AMENDABLE = "ORDER_NOT_AMENDABLE"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    SEQUENCE_GAP = "SEQUENCE_GAP"
    STATE_INCONSISTENT = "STATE_INCONSISTENT"
    SUB_ACCOUNT_NOT_ALLOWED = "SUB_ACCOUNT_NOT_ALLOWED"
    TRANSFER_NOT_ALLOWED = "TRANSFER_NOT_ALLOWED"
    TOO_MANY_SUB_ACCOUNTS = "TOO_MANY_SUB_ACCOUNTS"
    DUPLICATE_CLIENT_ORDER_ID = "DUPLICATE_CLIENT_ORDER_ID"
    DUPLICATE_TRANSFER_ID = "DUPLICATE_TRANSFER_ID"
    USER_NOT_ON_SHARD = "USER_NOT_ON_SHARD"
    NOT_LEADER = "NOT_LEADER"
    SEQUENCE_OUT_OF_RANGE = "SEQUENCE_OUT_OF_RANGE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    SOURCE_NOT_ALLOWED = "SOURCE_NOT_ALLOWED"
    BUSY = "BUSY"
    SHARD_BEHIND = "SHARD_BEHIND"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    WRITER_FAILED = "WRITER_FAILED"
    SLOW_CONSUMER = "SLOW_CONSUMER"
    STORE_FAILED = "STORE_FAILED"
    MARKET_MOVING = "MARKET_MOVING"
    STRATEGY_NOT_FOUND = "STRATEGY_NOT_FOUND"
    STRATEGY_LIMIT_EXCEEDED = "STRATEGY_LIMIT_EXCEEDED"
    STRATEGY_STATE_CONFLICT = "STRATEGY_STATE_CONFLICT"
    NO_MARKET_PRICE = "NO_MARKET_PRICE"
    INTERNAL = "INTERNAL"
    # The gateway (HTTP/WebSocket edge, services.gateway).
    TIMESTAMP_OUTSIDE_RECV_WINDOW = "TIMESTAMP_OUTSIDE_RECV_WINDOW"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    KEY_PERMISSION_DENIED = "KEY_PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"


ERROR_DOMAIN = "exchange.v1"
QUOTE_LIMIT = 32


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr() of what a caller sent, cut to a short prefix: errors never echo unbounded input."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"… ({len(text)} characters)"
    return repr(text)


class ExchangeError(Exception):
    """Base of the errors a request can get. The request changed nothing."""

    code = "UNKNOWN"
    default_reason = Reason.INTERNAL

    def __init__(
        self, message: str, reason: Reason | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason if reason is not None else self.default_reason
        self.metadata: dict[str, str] = dict(metadata) if metadata else {}


class InvalidArgument(ExchangeError):
    """Malformed input: bad decimal, unknown enum, not a multiple of tick or lot, below minimums."""

    code = "INVALID_ARGUMENT"
    default_reason = Reason.INVALID_FIELD


class NotFound(ExchangeError):
    """Unknown market, asset, order or user."""

    code = "NOT_FOUND"
    default_reason = Reason.ORDER_NOT_FOUND


class FailedPrecondition(ExchangeError):
    """Valid input that the current state refuses: insufficient balance, order already done."""

    code = "FAILED_PRECONDITION"
    default_reason = Reason.INSUFFICIENT_BALANCE


class AlreadyExists(ExchangeError):
    code = "ALREADY_EXISTS"
    default_reason = Reason.DUPLICATE_CLIENT_ORDER_ID


class Unauthenticated(ExchangeError):
    """No credentials, or credentials nobody issued."""

    code = "UNAUTHENTICATED"
    default_reason = Reason.UNAUTHENTICATED


class PermissionDenied(ExchangeError):
    """The caller's role does not allow the call."""

    code = "PERMISSION_DENIED"
    default_reason = Reason.ROLE_NOT_ALLOWED


class OutOfRange(ExchangeError):
    """A sequence that is no longer (or not yet) available."""

    code = "OUT_OF_RANGE"
    default_reason = Reason.SEQUENCE_OUT_OF_RANGE


class Unavailable(ExchangeError):
    """Temporarily refused (a full queue, a shard not reachable); retry after retry_after_ms."""

    code = "UNAVAILABLE"
    default_reason = Reason.BUSY

    def __init__(
        self,
        message: str,
        retry_after_ms: int = 100,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason, metadata)
        self.retry_after_ms = retry_after_ms
