"""The one exception every client of services.clients raises: ClientError, with the gRPC status code,
the ErrorInfo reason (errors.proto ErrorReason without its prefix, e.g. "INSUFFICIENT_BALANCE"; "" when
the failure did not come from the exchange: a refused connection, a deadline), the server's message,
the ErrorInfo metadata and the RetryInfo delay. Callers branch on `.code` and `.reason`, never on the
message text.

    try:
        await accounts.place_order(req)
    except ClientError as err:
        if err.reason == "INSUFFICIENT_BALANCE": ...

The follower (services.clients.follow) raises two subclasses: EventsOutOfRange (the upstream does not
have the events asked for: an operator must look) and EventGap (a stream skipped sequences).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class ClientError(Exception):
    """A failed call: `code` (grpc.StatusCode), `reason` (ErrorInfo reason or ""), `message` (the
    server's text, for people), `metadata` (ErrorInfo metadata), `retry_after_ms` (RetryInfo, or None),
    and where: `service` (the name it was dialled by), `address`, `method`."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after_ms: int | None = None,
        service: str = "",
        address: str = "",
        method: str = "",
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata) if metadata else {}
        self.retry_after_ms = retry_after_ms
        self.service = service
        self.address = address
        self.method = method
        self.attempts = attempts

    @property
    def code_name(self) -> str:
        return str(self.code.name) if self.code is not None else "UNKNOWN"

    def __str__(self) -> str:
        where = " ".join(p for p in (self.service, self.method) if p)
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{where + ': ' if where else ''}{self.code_name}{reason}: {self.message}"

    @classmethod
    def from_rpc_error(
        cls, err: grpc.RpcError, *, service: str = "", address: str = "", method: str = "", attempts: int = 1
    ) -> ClientError:
        """The ClientError of a failed gRPC call (aio or blocking)."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = (err.details() if hasattr(err, "details") else "") or ""
        reason, metadata, retry_after = status_details(err)
        return cls(
            code if code is not None else grpc.StatusCode.UNKNOWN,
            message,
            reason=reason,
            metadata=metadata,
            retry_after_ms=retry_after,
            service=service,
            address=address,
            method=method,
            attempts=attempts,
        )


class EventsOutOfRange(ClientError):
    """follow_events: the upstream no longer has (or does not have yet) the events from `from_sequence`
    on. Fatal for the follower: it needs an operator, and skipping would lose events."""

    @property
    def from_sequence(self) -> int:
        try:
            return int(self.metadata.get("from_sequence", "0"))
        except ValueError:
            return 0


class EventGap(ClientError):
    """follow_events: the stream of a source whose sequences are contiguous skipped some (metadata
    "expected" and "got")."""


def status_details(err: grpc.RpcError) -> tuple[str, dict[str, str], int | None]:
    """(ErrorInfo reason, ErrorInfo metadata, RetryInfo delay in ms) of a failed call; ("", {}, None)
    when it carries none (a transport failure, a status from something else than the exchange)."""
    try:
        status: Any = rpc_status.from_call(err)
    except (ValueError, AttributeError):  # details that do not match the call's code; not a call
        return "", {}, None
    if status is None:
        return "", {}, None
    reason = ""
    metadata: dict[str, str] = {}
    retry_after: int | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = str(info.reason)
            metadata = {str(k): str(v) for k, v in info.metadata.items()}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = int(retry.retry_delay.seconds * 1000 + retry.retry_delay.nanos // 1_000_000)
    return reason, metadata, retry_after
