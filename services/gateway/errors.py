"""Errors at the HTTP edge: Binance's `{"code": -1121, "msg": "..."}` with an HTTP status.

One table, REASONS, maps every ErrorInfo reason of the exchange (services.common.errors.Reason) to the
HTTP status and Binance error code answered for it; a ClientError from a service becomes an ApiError
through it (`from_client_error`), and so does an ExchangeError raised at the edge (`from_exchange_error`).
Binance's codes matter because clients (ccxt) map them to exception classes: -2010 NEW_ORDER_REJECTED,
-2011 CANCEL_REJECTED, -2013 NO_SUCH_ORDER, -1121 BAD_SYMBOL, -1013 filter failure, -1021 timestamp,
-1022 signature, -2015 key or permission, -1003 too many requests, -1008 server busy.
"""

from __future__ import annotations

import grpc

from services.clients.errors import ClientError
from services.common.errors import ExchangeError, Reason

# Binance error codes used here.
UNKNOWN = -1000
DISCONNECTED = -1001
TOO_MANY_REQUESTS = -1003
SERVER_BUSY = -1008
TIMEOUT = -1007
FILTER_FAILURE = -1013
INVALID_TIMESTAMP = -1021
INVALID_SIGNATURE = -1022
ILLEGAL_CHARS = -1100
MANDATORY_PARAM = -1102
BAD_PRECISION = -1111
BAD_INTERVAL = -1120
BAD_SYMBOL = -1121
INVALID_PARAMETER = -1130
NEW_ORDER_REJECTED = -2010
CANCEL_REJECTED = -2011
NO_SUCH_ORDER = -2013
BAD_API_KEY_FORMAT = -2014
REJECTED_API_KEY = -2015

R = Reason
# reason -> (HTTP status, Binance code)
REASONS: dict[Reason, tuple[int, int]] = {
    R.INVALID_FIELD: (400, MANDATORY_PARAM),
    R.FIELD_TOO_LONG: (400, ILLEGAL_CHARS),
    R.VALUE_OUT_OF_RANGE: (400, INVALID_PARAMETER),
    R.INVALID_DECIMAL: (400, BAD_PRECISION),
    R.PRICE_NOT_ON_TICK: (400, FILTER_FAILURE),
    R.AMOUNT_NOT_ON_LOT: (400, FILTER_FAILURE),
    R.BELOW_MIN_AMOUNT: (400, FILTER_FAILURE),
    R.BELOW_MIN_NOTIONAL: (400, FILTER_FAILURE),
    R.VALUE_TOO_LARGE: (400, FILTER_FAILURE),
    R.INVALID_PAGE_TOKEN: (400, INVALID_PARAMETER),
    R.BATCH_TOO_LARGE: (400, INVALID_PARAMETER),
    R.INVALID_ORDER: (400, NEW_ORDER_REJECTED),
    R.UNKNOWN_MARKET: (400, BAD_SYMBOL),
    R.UNKNOWN_ASSET: (400, BAD_SYMBOL),
    R.ORDER_NOT_FOUND: (400, NO_SUCH_ORDER),
    R.MARKET_NOT_ON_SHARD: (500, UNKNOWN),
    R.USER_NOT_ON_SHARD: (500, UNKNOWN),  # the gateway routes by user: a wrong shard is ours
    R.NOT_LEADER: (503, SERVER_BUSY),  # the client library redirects; left over only mid-failover
    R.MARKET_MOVING: (503, SERVER_BUSY),  # a pair being moved to another shard: retry shortly
    R.INSUFFICIENT_BALANCE: (400, NEW_ORDER_REJECTED),
    R.ORDER_ALREADY_DONE: (400, CANCEL_REJECTED),
    R.ORDER_NOT_AMENDABLE: (400, NEW_ORDER_REJECTED),
    R.IDEMPOTENCY_KEY_REUSED: (400, INVALID_PARAMETER),
    R.SEQUENCE_GAP: (500, UNKNOWN),
    R.STATE_INCONSISTENT: (500, UNKNOWN),
    R.DUPLICATE_CLIENT_ORDER_ID: (400, NEW_ORDER_REJECTED),
    R.SEQUENCE_OUT_OF_RANGE: (400, INVALID_PARAMETER),
    R.UNAUTHENTICATED: (401, REJECTED_API_KEY),
    R.ROLE_NOT_ALLOWED: (401, REJECTED_API_KEY),
    R.SOURCE_NOT_ALLOWED: (401, REJECTED_API_KEY),
    R.BUSY: (503, SERVER_BUSY),
    R.SHARD_BEHIND: (503, SERVER_BUSY),
    R.SHUTTING_DOWN: (503, DISCONNECTED),
    R.WRITER_FAILED: (503, DISCONNECTED),
    R.SLOW_CONSUMER: (503, SERVER_BUSY),
    R.STORE_FAILED: (503, SERVER_BUSY),
    R.INTERNAL: (500, UNKNOWN),
    R.TIMESTAMP_OUTSIDE_RECV_WINDOW: (400, INVALID_TIMESTAMP),
    R.API_KEY_NOT_FOUND: (401, REJECTED_API_KEY),
    R.INVALID_SIGNATURE: (400, INVALID_SIGNATURE),
    R.KEY_PERMISSION_DENIED: (401, REJECTED_API_KEY),
    R.RATE_LIMITED: (429, TOO_MANY_REQUESTS),
}
# A reason this table does not know yet (another service added one): by the gRPC status code.
BY_CODE: dict[grpc.StatusCode, tuple[int, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, INVALID_PARAMETER),
    grpc.StatusCode.NOT_FOUND: (400, NO_SUCH_ORDER),
    grpc.StatusCode.FAILED_PRECONDITION: (400, NEW_ORDER_REJECTED),
    grpc.StatusCode.ALREADY_EXISTS: (400, NEW_ORDER_REJECTED),
    grpc.StatusCode.OUT_OF_RANGE: (400, INVALID_PARAMETER),
    grpc.StatusCode.UNAUTHENTICATED: (401, REJECTED_API_KEY),
    grpc.StatusCode.PERMISSION_DENIED: (401, REJECTED_API_KEY),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, TOO_MANY_REQUESTS),
    grpc.StatusCode.UNAVAILABLE: (503, SERVER_BUSY),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, TIMEOUT),
}
# Binance's messages, which clients (ccxt) match exactly, by reason; otherwise the service's message.
MESSAGES: dict[Reason, str] = {
    R.INSUFFICIENT_BALANCE: "Account has insufficient balance for requested action.",
    R.ORDER_NOT_FOUND: "Order does not exist.",
    R.ORDER_ALREADY_DONE: "Unknown order sent.",
    R.DUPLICATE_CLIENT_ORDER_ID: "Duplicate order sent.",
    R.UNKNOWN_MARKET: "Invalid symbol.",
}


class ApiError(Exception):
    """An answer `{code, msg}` with `status`; `reason` is the ErrorInfo reason behind it ("" for errors
    of the HTTP edge only); `retry_after_s` becomes a Retry-After header."""

    def __init__(
        self,
        status: int,
        code: int,
        msg: str,
        *,
        reason: str = "",
        retry_after_s: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.detail = detail

    def body(self) -> dict[str, object]:
        """Binance's {code, msg}; beyond it the ErrorInfo reason and the exchange's own message."""
        out: dict[str, object] = {"code": self.code, "msg": self.msg}
        if self.reason:
            out["reason"] = self.reason
        if self.detail:
            out["detail"] = self.detail
        return out


def for_reason(reason: str, message: str, *, code: grpc.StatusCode | None = None) -> ApiError:
    try:
        known: Reason | None = Reason(reason)
    except ValueError:
        known = None
    if known is not None and known in REASONS:
        status, binance = REASONS[known]
        if known in MESSAGES:  # exactly Binance's text (clients match it); the exchange's in `detail`
            return ApiError(status, binance, MESSAGES[known], reason=reason, detail=message)
        msg = message
    else:
        status, binance = BY_CODE.get(code, (500, UNKNOWN)) if code is not None else (500, UNKNOWN)
        msg = message
    return ApiError(status, binance, msg or reason or "error", reason=reason)


def from_client_error(err: ClientError) -> ApiError:
    """The answer for a failed call to a service."""
    if not err.reason:
        if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ApiError(
                503,
                TIMEOUT,
                "Timeout waiting for response from backend server. Send status unknown; "
                "execution status unknown.",
            )
        status, code = BY_CODE.get(err.code, (500, UNKNOWN))
        return ApiError(status, code, "the exchange is not reachable; try again")
    api = for_reason(err.reason, err.message, code=err.code)
    if err.retry_after_ms is not None:
        api.retry_after_s = max(1, -(-err.retry_after_ms // 1000))
    return api


def from_exchange_error(exc: ExchangeError) -> ApiError:
    return for_reason(str(exc.reason), exc.message)


def bad_request(msg: str, code: int = MANDATORY_PARAM, reason: Reason = Reason.INVALID_FIELD) -> ApiError:
    return ApiError(400, code, msg, reason=str(reason))
