"""Domain errors. Each maps to one gRPC status code in the service layer (services.common.rpc);
the domain itself knows nothing of gRPC."""

from __future__ import annotations


class ExchangeError(Exception):
    """Base of the errors a request can get. The request changed nothing."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ExchangeError):
    """Malformed input: bad decimal, unknown enum, not a multiple of tick or lot, below minimums."""

    code = "INVALID_ARGUMENT"


class NotFound(ExchangeError):
    """Unknown market, asset, order or user."""

    code = "NOT_FOUND"


class FailedPrecondition(ExchangeError):
    """Valid input that the current state refuses: insufficient balance, order already done."""

    code = "FAILED_PRECONDITION"


class AlreadyExists(ExchangeError):
    code = "ALREADY_EXISTS"


class PermissionDenied(ExchangeError):
    """The order belongs to another user."""

    code = "PERMISSION_DENIED"


class OutOfRange(ExchangeError):
    """A sequence that is no longer (or not yet) available."""

    code = "OUT_OF_RANGE"


class Unavailable(ExchangeError):
    """Temporarily refused (a full queue, a shard not reachable); retry after retry_after_ms."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_ms: int = 100) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms
