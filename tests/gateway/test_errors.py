"""The one table from ErrorInfo reasons to HTTP statuses and Binance codes."""

from __future__ import annotations

import grpc

from services.clients.errors import ClientError
from services.common.errors import Reason
from services.gateway.errors import BY_CODE, REASONS, for_reason, from_client_error


def test_every_reason_gets_an_http_error() -> None:
    for reason in Reason:
        err = for_reason(str(reason), "what happened", code=grpc.StatusCode.FAILED_PRECONDITION)
        assert 400 <= err.status < 600 and err.code < 0, reason
        assert err.body()["reason"] == str(reason)
    # Reasons of the exchange's own failures are server errors; refusals of input are client errors.
    assert REASONS[Reason.INTERNAL][0] == 500 and REASONS[Reason.BUSY][0] == 503
    assert REASONS[Reason.INSUFFICIENT_BALANCE] == (400, -2010)
    assert REASONS[Reason.RATE_LIMITED] == (429, -1003)


def test_binance_messages_stay_exact_and_details_are_kept() -> None:
    err = for_reason("INSUFFICIENT_BALANCE", "insufficient USDT: available 5 USDT, needed 6 USDT")
    assert err.body() == {
        "code": -2010,
        "msg": "Account has insufficient balance for requested action.",
        "reason": "INSUFFICIENT_BALANCE",
        "detail": "insufficient USDT: available 5 USDT, needed 6 USDT",
    }


def test_client_errors_map_by_reason_then_by_code() -> None:
    busy = from_client_error(
        ClientError(grpc.StatusCode.UNAVAILABLE, "queue full", reason="BUSY", retry_after_ms=1500)
    )
    assert (busy.status, busy.code, busy.retry_after_s) == (503, -1008, 2)
    unknown = from_client_error(ClientError(grpc.StatusCode.NOT_FOUND, "x", reason="SOMETHING_NEW"))
    assert (unknown.status, unknown.code) == BY_CODE[grpc.StatusCode.NOT_FOUND]
    down = from_client_error(ClientError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert down.status == 503 and "not reachable" in down.msg
    late = from_client_error(ClientError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"))
    assert (late.status, late.code) == (503, -1007)
