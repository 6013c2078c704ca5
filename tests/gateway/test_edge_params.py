"""The HTTP edge's integers (services.gateway.params and the signature check), without processes: only
ASCII digits are numbers. Found by tests/gateway/test_fuzz_http.py: `timestamp=²` (str.isdigit() is true
of it, int() refuses it) was answered 500 instead of Binance's 400 {code, msg}."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.units import INT64_MAX
from services.gateway.errors import ApiError
from services.gateway.keys import TRADE, KeyStore
from services.gateway.params import MAX_MS, MAX_PARAMS, Params, is_digits, parse
from services.gateway.signing import Verifier, sign, strip_signature

NOT_ASCII_DIGITS = ["²", "١٢", "\uff11", "߁"]  # superscript two, Arabic-Indic, full-width, N'Ko digits


def test_only_ascii_digits_are_digits() -> None:
    assert is_digits("0123456789") and not is_digits("") and not is_digits("-1") and not is_digits("1.0")
    for text in NOT_ASCII_DIGITS:
        assert text.isdigit() and not is_digits(text)


@pytest.mark.parametrize("text", NOT_ASCII_DIGITS)
def test_an_integer_parameter_refuses_other_digits(text: str) -> None:
    with pytest.raises(ApiError) as info:
        Params({"limit": text}).integer("limit", 100, low=1, high=1000)
    assert info.value.status == 400 and info.value.body()["code"] == -1130  # Binance's invalid parameter
    assert Params({"limit": "12"}).integer("limit", 100, low=1, high=1000) == 12


@pytest.mark.parametrize("name", ["timestamp", "recvWindow"])
@pytest.mark.parametrize("text", NOT_ASCII_DIGITS)
def test_a_signed_request_with_other_digits_is_refused_not_failed(
    tmp_path: Path, name: str, text: str
) -> None:
    store = KeyStore(f"sqlite:///{tmp_path / 'keys.sqlite'}", os.urandom(32))
    try:
        key, secret = store.create(7, frozenset({TRADE}))
        store.reload()
        verifier = Verifier(store, store.state, max_recv_window_ms=60_000, default_recv_window_ms=5_000)
        now = int(time.time() * 1000)
        params = {"symbol": "BTCUSDT", "timestamp": str(now), name: text}
        query = urlencode(params)
        query = f"{query}&signature={sign(secret, query)}"
        with pytest.raises(ApiError) as info:
            verifier.verify(key.api_key, query, "", params, endpoint="GET /api/v3/account", now_ms=now)
        assert info.value.status == 400 and info.value.body()["code"] == -1021  # Binance's bad timestamp
        good = {"symbol": "BTCUSDT", "timestamp": str(now), "recvWindow": "5000"}
        query = urlencode(good)
        query = f"{query}&signature={sign(secret, query)}"
        assert verifier.verify(key.api_key, query, "", good, now_ms=now).user_id == 7
    finally:
        store.close()


def test_times_in_ms_are_bounded_so_their_microseconds_fit_int64() -> None:
    """Found by the HTTP fuzz: klines?startTime=9223372036854775807 made ms x 1000 overflow the int64
    field of the market request (a 500)."""
    for name in ("startTime", "endTime", "goodTillDate"):
        for text in (str(INT64_MAX), str(MAX_MS + 1)):
            with pytest.raises(ApiError) as info:
                Params({name: text}).millis(name)
            assert info.value.status == 400 and info.value.body()["code"] == -1130
        assert Params({name: str(MAX_MS)}).millis(name) == MAX_MS
        assert Params({}).millis(name) == 0
    assert (MAX_MS + 1) * 1000 <= INT64_MAX and MAX_MS * 1000 + 999 <= INT64_MAX


def _strip_by_parts(raw: str) -> tuple[str, str]:
    if "signature=" not in raw:
        return raw, ""
    kept, signature = [], ""
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        else:
            kept.append(part)
    return "&".join(kept), signature


@given(st.lists(st.sampled_from(["a=1", "signature=ab", "xsignature=1", "b=signature=2", "", "c"])))
def test_strip_signature_is_the_parameter_split(parts: list[str]) -> None:
    """strip_signature's fast path (one signature, last) answers as splitting on '&' does."""
    raw = "&".join(parts)
    assert strip_signature(raw) == _strip_by_parts(raw)


def test_the_fast_parameter_split_reads_what_parse_qsl_reads() -> None:
    rng = random.Random(13)
    alphabet = "ab=&%+2F x;"
    for _ in range(20_000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        try:
            want: object = dict(parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_PARAMS))
        except ValueError:
            want = "too many"
        try:
            got: object = parse(raw)
        except ValueError:
            got = "too many"
        assert got == want, raw
    assert parse("&".join(f"k{i}=v" for i in range(MAX_PARAMS)))["k39"] == "v"
    with pytest.raises(ValueError):
        parse("&".join(f"k{i}=v" for i in range(MAX_PARAMS + 1)))
