"""Domain errors as gRPC statuses: ErrorInfo on every one, RetryInfo on UNAVAILABLE at any delay."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import FailedPrecondition, Reason, Unavailable
from services.common.rpc import MAX_MESSAGE, grpc_status_for


def details(st: object) -> list[object]:
    raw = dict(st.trailing_metadata)["grpc-status-details-bin"]  # type: ignore[attr-defined]
    out = []
    for d in status_pb2.Status.FromString(raw).details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if d.Is(cls.DESCRIPTOR):
                m = cls()
                d.Unpack(m)
                out.append(m)
    return out


@pytest.mark.parametrize("ms", [0, 1, 50, 999, 1000, 1500, 2148, 2500, 60_000, 3_600_000])
def test_retry_info_for_any_delay(ms: int) -> None:
    # Regression: delays of 2148 ms and more overflowed Duration.nanos (int32) and the caller got UNKNOWN.
    st = grpc_status_for(Unavailable("busy", retry_after_ms=ms))
    info, retry = details(st)
    assert info.reason == "BUSY"  # type: ignore[attr-defined]
    assert retry.retry_delay.seconds * 1000 + retry.retry_delay.nanos // 1_000_000 == ms  # type: ignore[attr-defined]


def test_error_info_and_bounded_message() -> None:
    st = grpc_status_for(FailedPrecondition("x" * 10_000, Reason.ORDER_ALREADY_DONE, {"order_id": "7"}))
    (info,) = details(st)
    assert info.reason == "ORDER_ALREADY_DONE" and info.domain == "exchange.v1"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {"order_id": "7"}  # type: ignore[attr-defined]
    assert len(st.details) <= MAX_MESSAGE
    assert rpc_status  # the same module the clients decode with
