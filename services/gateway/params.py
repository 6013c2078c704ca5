"""Request parameters at the HTTP edge: the query string and a form body, merged (Binance sends either),
each value bounded and checked before anything is called. Errors are ApiErrors with Binance codes."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qsl

from services.common.errors import Reason
from services.common.units import INT64_MAX
from services.gateway.errors import ILLEGAL_CHARS, INVALID_PARAMETER, MANDATORY_PARAM, ApiError

MAX_PARAMS = 40
MAX_VALUE = 256
# The largest time in ms a request may carry: ms x 1000 (+ 999, or the next ms x 1000) is a time in us
# that still fits the API's int64 fields.
MAX_MS = INT64_MAX // 1000 - 1


def is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() is also true of "²" (which int() refuses) and of other scripts'
    digits (which int() reads), and neither is a number a Binance client sends."""
    return text.isascii() and text.isdigit()


def parse(raw: str) -> dict[str, str]:
    """parse_qsl(raw, keep_blank_values=True) as a dict (ValueError past MAX_PARAMS fields); without an
    escape ('%' or '+') in `raw`, split directly (the same result, without unquoting every part)."""
    if "%" in raw or "+" in raw:
        return dict(parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_PARAMS))
    if raw.count("&") >= MAX_PARAMS:
        raise ValueError(f"Max number of fields exceeded: more than {MAX_PARAMS}")
    out: dict[str, str] = {}
    for part in raw.split("&"):
        if part:
            name, _, value = part.partition("=")
            out[name] = value
    return out


class Params:
    def __init__(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            if len(value) > MAX_VALUE or len(key) > 64:
                raise ApiError(
                    400,
                    ILLEGAL_CHARS,
                    f"Parameter {key[:32]!r} is too long.",
                    reason=str(Reason.FIELD_TOO_LONG),
                )
        self.values = values

    @classmethod
    def of(cls, query: str, body: str = "") -> Params:
        try:
            values = parse(query)
            if body:
                values.update(parse(body))
        except ValueError:
            raise ApiError(
                400,
                INVALID_PARAMETER,
                f"More than {MAX_PARAMS} parameters.",
                reason=str(Reason.INVALID_FIELD),
            ) from None
        return cls(values)

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def required(self, name: str) -> str:
        value = self.values.get(name, "")
        if not value:
            raise ApiError(
                400,
                MANDATORY_PARAM,
                f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
                reason=str(Reason.INVALID_FIELD),
            )
        return value

    def integer(self, name: str, default: int = 0, *, low: int = 0, high: int = INT64_MAX) -> int:
        text = self.values.get(name, "")
        if not text:
            return default
        if not is_digits(text) or len(text) > 19 or not low <= int(text) <= high:
            raise ApiError(
                400,
                INVALID_PARAMETER,
                f"Illegal value for parameter '{name}': an integer in {low}..{high}.",
                reason=str(Reason.VALUE_OUT_OF_RANGE),
            )
        return int(text)

    def millis(self, name: str) -> int:
        """A time in ms (0: not given), at most MAX_MS: its microseconds fit an int64."""
        return self.integer(name, 0, high=MAX_MS)

    def choice(self, name: str, allowed: Collection[str], default: str = "") -> str:
        value = self.values.get(name, default).upper()
        if value not in allowed:
            shown = value[:32]
            raise ApiError(
                400,
                INVALID_PARAMETER,
                f"Invalid {name} {shown!r}; one of {', '.join(allowed)}.",
                reason=str(Reason.INVALID_FIELD),
            )
        return value
