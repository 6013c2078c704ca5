"""Exact conversion between decimal strings (the API edge) and integers (everything inside).

Only plain non-negative decimals are accepted: digits, an optional point and more digits.
No sign, exponent, whitespace, NaN or infinity. Values never pass through float.
"""

from __future__ import annotations

import re

INT64_MAX = (1 << 63) - 1

_DECIMAL = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?")


class AmountError(ValueError):
    """A decimal string that cannot be turned into the integer it should denote."""


class PriceNotOnTick(AmountError):
    """A price that is not a multiple of the market's tick."""


class AmountNotOnLot(AmountError):
    """An amount that is not a multiple of the market's lot size."""


def parse_units(text: str, decimals: int, *, field: str = "amount", allow_zero: bool = False) -> int:
    """Parse a decimal string into an integer count of 10**-decimals units.

    >>> parse_units("1.5", 8)
    150000000
    """
    if not isinstance(text, str):
        raise AmountError(f"{field}: expected a decimal string")
    if text == "":
        raise AmountError(f"{field}: missing")
    if len(text) > 64:
        raise AmountError(f"{field}: too long")
    m = _DECIMAL.fullmatch(text)
    if m is None:
        raise AmountError(f"{field}: {text!r} is not a plain non-negative decimal number")
    whole = m.group("int")
    frac = m.group("frac") or ""
    significant = frac.rstrip("0")
    if len(significant) > decimals:
        raise AmountError(f"{field}: {text!r} has more than {decimals} decimals")
    value: int = int(whole) * 10**decimals + (int(significant.ljust(decimals, "0")) if decimals else 0)
    if value > INT64_MAX:
        raise AmountError(f"{field}: {text!r} is out of range")
    if value == 0 and not allow_zero:
        raise AmountError(f"{field}: must be greater than zero")
    return value


def format_units(value: int, decimals: int) -> str:
    """Format an integer count of 10**-decimals units as a minimal decimal string.

    >>> format_units(150000000, 8)
    '1.5'
    >>> format_units(-5, 2)
    '-0.05'
    """
    sign = "-" if value < 0 else ""
    value = abs(value)
    if decimals == 0:
        return f"{sign}{value}"
    whole, frac = divmod(value, 10**decimals)
    frac_text = str(frac).rjust(decimals, "0").rstrip("0")
    return f"{sign}{whole}.{frac_text}" if frac_text else f"{sign}{whole}"


def parse_steps(text: str, step_units: int, decimals: int, *, field: str) -> int:
    """Parse a decimal into a count of steps (ticks or lots) of step_units each.

    The decimal must be an exact multiple of the step.
    """
    units = parse_units(text, decimals, field=field)
    steps, rest = divmod(units, step_units)
    if rest:
        raise AmountError(f"{field}: {text!r} is not a multiple of {format_units(step_units, decimals)}")
    return steps


def parse_rate_ppm(text: str, *, field: str = "fee rate") -> int:
    """Parse a fraction such as "0.001" into parts per million (1000)."""
    return parse_units(text, 6, field=field, allow_zero=True)


def decimals_of(text: str) -> int:
    """Number of significant decimals of a plain decimal string ("0.010" -> 2)."""
    m = _DECIMAL.fullmatch(text)
    if m is None:
        raise AmountError(f"{text!r} is not a plain non-negative decimal number")
    return len((m.group("frac") or "").rstrip("0"))
