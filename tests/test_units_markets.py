"""Decimal strings <-> integers (services.common.units) and market specs (services.common.markets)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.markets import FEE_SCALE, Asset, ConfigError, MarketCatalog, MarketSpec, fee
from services.common.units import (
    INT64_MAX,
    AmountError,
    decimals_of,
    format_units,
    parse_rate_ppm,
    parse_steps,
    parse_units,
)

ROOT = Path(__file__).resolve().parents[1]

# --- units ----------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.integers(1, INT64_MAX), st.integers(0, 18))
def test_format_then_parse_is_the_identity(value: int, decimals: int) -> None:
    text = format_units(value, decimals)
    assert parse_units(text, decimals) == value
    # minimal: no trailing zeros after the point, no point without digits
    if "." in text:
        assert not text.endswith("0") and not text.endswith(".")
    assert not text.startswith("0") or text.startswith("0.") or text == "0"


@settings(max_examples=300)
@given(
    st.from_regex(r"[0-9]{1,10}", fullmatch=True),
    st.from_regex(r"[0-9]{0,8}", fullmatch=True),
    st.integers(8, 8),
)
def test_parse_then_format_gives_the_canonical_text(whole: str, frac: str, decimals: int) -> None:
    text = f"{whole}.{frac}" if frac else whole
    if int(whole) == 0 and frac.strip("0") == "":
        with pytest.raises(AmountError):
            parse_units(text, decimals)
        assert parse_units(text, decimals, allow_zero=True) == 0
        return
    value = parse_units(text, decimals)
    canonical = format_units(value, decimals)
    assert parse_units(canonical, decimals) == value
    # the same number: compare digit strings, never floats
    w, _, f = canonical.partition(".")
    assert int(w) == int(whole) and f == frac.rstrip("0")


@given(st.integers(-INT64_MAX, INT64_MAX), st.integers(0, 18))
def test_format_negative_values(value: int, decimals: int) -> None:
    text = format_units(value, decimals)
    assert text.startswith("-") == (value < 0)
    if value:
        assert parse_units(text.lstrip("-"), decimals) == abs(value)


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("1.5", 8, 150_000_000),
        ("0.00000001", 8, 1),
        ("1.50000000000", 8, 150_000_000),  # trailing zeros beyond the decimals are fine
        ("007", 2, 700),
        ("12", 0, 12),
        ("12.000", 0, 12),
        ("9223372036854775807", 0, INT64_MAX),
        ("92233720368.54775807", 8, INT64_MAX),
    ],
)
def test_parse_units_accepts(text: str, decimals: int, expected: int) -> None:
    assert parse_units(text, decimals) == expected


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "-1",
        "+1",
        "1e5",
        "1E5",
        " 1",
        "1 ",
        "1\n",
        "1.",
        ".5",
        "0x10",
        "\uff11",  # full-width digit one: str.isdigit() and int() accept it, the parser must not
        "\u0661",  # Arabic-Indic digit one
        "1_000",
        "1,5",
        "1.2.3",
        "",
        "0.000000001",  # more than 8 decimals
        "92233720368.54775808",  # INT64_MAX + 1 unit
        "99999999999999999999",
        "0",
        "0.0",
        "0.00000000",
        "1" * 65,  # too long
    ],
)
def test_parse_units_rejects(text: str) -> None:
    with pytest.raises(AmountError):
        parse_units(text, 8)


def test_parse_units_rejects_non_strings_and_allows_zero_on_request() -> None:
    for bad in (1, 1.5, None, b"1"):
        # AmountError from the source; the mypyc-compiled module refuses the type at the call already
        with pytest.raises((AmountError, TypeError)):
            parse_units(bad, 8)  # type: ignore[arg-type]
    assert parse_units("0", 8, allow_zero=True) == 0
    assert parse_units("0.000", 2, allow_zero=True) == 0
    with pytest.raises(AmountError, match="price"):
        parse_units("abc", 2, field="price")


def test_decimals_of_and_rates_and_steps() -> None:
    assert decimals_of("0.010") == 2 and decimals_of("1") == 0 and decimals_of("1.000") == 0
    assert decimals_of("0.00001") == 5
    with pytest.raises(AmountError):
        decimals_of("1e-5")
    assert parse_rate_ppm("0.001") == 1000 and parse_rate_ppm("0") == 0 and parse_rate_ppm("1") == FEE_SCALE
    with pytest.raises(AmountError):
        parse_rate_ppm("0.0000001")  # finer than a ppm
    assert parse_steps("1.05", 5, 2, field="price") == 21
    with pytest.raises(AmountError, match=r"multiple of 0\.05"):
        parse_steps("1.01", 5, 2, field="price")


@given(st.integers(0, 10**15), st.integers(0, FEE_SCALE - 1))
def test_fee_rounds_up_and_never_exceeds_the_amount(units: int, rate: int) -> None:
    f = fee(units, rate)
    assert f * FEE_SCALE >= units * rate > (f - 1) * FEE_SCALE
    assert 0 <= f <= units
    assert (f == 0) == (units * rate == 0)


# --- market specs ---------------------------------------------------------------------------------------

BTC = Asset("BTC", 8)
USDT = Asset("USDT", 8)
CENTS = Asset("USD", 2)
WHOLE = Asset("PTS", 0)


def test_market_spec_derives_the_integer_scales() -> None:
    m = MarketSpec.create(
        "BTC_USDT",
        BTC,
        USDT,
        price_tick="0.01",
        lot_size="0.00001",
        min_amount="0.0001",
        min_notional="5",
        maker_fee_rate="0.001",
        taker_fee_rate="0.002",
    )
    assert (m.price_decimals, m.tick_scaled, m.amount_decimals, m.lot_scaled) == (2, 1, 5, 1)
    assert m.base_units_per_lot == 1000  # 0.00001 BTC = 1000 satoshi
    assert m.quote_units_per_tick_lot == 10  # 0.01 x 0.00001 = 1e-7 USDT = 10 units
    assert m.min_amount_lots == 10 and m.min_notional_units == 5 * 10**8
    assert (m.maker_fee_ppm, m.taker_fee_ppm) == (1000, 2000)
    assert m.notional(3_000_000, 7) == 210_000_000 and m.base_units(7) == 7000
    m2 = MarketSpec.create("X_USD", WHOLE, CENTS, price_tick="0.05", lot_size="20", min_amount="25")
    assert (m2.tick_scaled, m2.lot_scaled, m2.base_units_per_lot, m2.quote_units_per_tick_lot) == (
        5,
        20,
        20,
        100,
    )
    assert m2.min_amount_lots == 2  # 25 / 20 rounded up


def test_market_spec_parse_and_format_prices_and_amounts() -> None:
    m = MarketSpec.create("X_USD", Asset("X", 8), CENTS, price_tick="0.05", lot_size="0.2")
    assert m.quote_units_per_tick_lot == 1  # 0.05 x 0.2 = 0.01 USD
    assert m.parse_price("1.05") == 21 and m.format_price(21) == "1.05"
    assert m.parse_price("2") == 40 and m.format_price(40) == "2"
    assert m.parse_amount("0.4") == 2 and m.format_amount(2) == "0.4"
    assert m.parse_amount("1.80") == 9 and m.format_amount(9) == "1.8"
    for bad_price in ("1.01", "1.051", "0", "-1", "1e2", "NaN"):
        with pytest.raises(AmountError):
            m.parse_price(bad_price)
    for bad_amount in ("0.3", "0.21", "0", "inf", " 1"):
        with pytest.raises(AmountError):
            m.parse_amount(bad_amount)
    assert m.parse_quote("12.34") == 1234 and m.format_quote(1234) == "12.34"
    with pytest.raises(AmountError):
        m.parse_quote("12.345")
    assert m.format_base(25_000_000) == "0.25"


@given(st.integers(1, 10**9), st.integers(1, 10**9))
def test_price_and_amount_round_trip(ticks: int, lots: int) -> None:
    m = MarketSpec.create("X_USD", Asset("X", 8), CENTS, price_tick="0.05", lot_size="0.2")
    assert m.parse_price(m.format_price(ticks)) == ticks
    assert m.parse_amount(m.format_amount(lots)) == lots


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"price_tick": "0.1", "lot_size": "0.1"}, "finer than PTS"),  # lot finer than the base's units
        ({"price_tick": "0.001", "lot_size": "1"}, "finer than USD's 2 decimals"),  # 0.001 USD per tick x lot
        ({"price_tick": "0.01", "lot_size": "2", "min_amount": "3"}, None),  # fine: 0.02 USD, min 2 lots
        ({"price_tick": "1", "lot_size": "0.5"}, "finer than PTS's 0 decimals"),  # lot finer than base
        ({"price_tick": "1", "lot_size": "1", "maker_fee_rate": "1"}, "below 1"),
        ({"price_tick": "1", "lot_size": "1", "taker_fee_rate": "1.5"}, "below 1"),
        ({"price_tick": "1", "lot_size": "1", "taker_fee_rate": "0.0000001"}, "decimals"),
        ({"price_tick": "1", "lot_size": "1", "maker_fee_rate": "-0.001"}, "decimal"),
        ({"price_tick": "0", "lot_size": "1"}, "greater than zero"),
        ({"price_tick": "1", "lot_size": "0"}, "greater than zero"),
        ({"price_tick": "1e-2", "lot_size": "1"}, "decimal"),
        ({"price_tick": "NaN", "lot_size": "1"}, "decimal"),
        ({"price_tick": "1", "lot_size": "1", "min_amount": "1e3"}, "min_amount"),
        ({"price_tick": "1", "lot_size": "1", "min_notional": "0.001"}, "decimals"),
    ],
)
def test_market_spec_create_refuses_inexact_or_invalid_configs(kw: dict[str, Any], match: str | None) -> None:
    if match is None:
        m = MarketSpec.create("PTS_USD", WHOLE, CENTS, **kw)
        assert (m.quote_units_per_tick_lot, m.base_units_per_lot, m.min_amount_lots) == (2, 2, 2)
        return
    with pytest.raises(ConfigError, match=match):
        MarketSpec.create("PTS_USD", WHOLE, CENTS, **kw)


def test_tick_times_lot_must_be_whole_quote_units() -> None:
    with pytest.raises(ConfigError, match="price_tick x lot_size = 1/1000 is finer than USD's 2 decimals"):
        MarketSpec.create("X_USD", Asset("X", 8), CENTS, price_tick="0.01", lot_size="0.1")
    m = MarketSpec.create("X_USD", Asset("X", 8), CENTS, price_tick="0.1", lot_size="0.1")
    assert m.quote_units_per_tick_lot == 1


def test_market_spec_fee_rates_just_below_one_are_accepted() -> None:
    m = MarketSpec.create("PTS_USD", WHOLE, CENTS, price_tick="1", lot_size="1", maker_fee_rate="0.999999")
    assert m.maker_fee_ppm == FEE_SCALE - 1 and m.taker_fee_ppm == 0


# --- the catalog -----------------------------------------------------------------------------------------


def _config() -> dict[str, Any]:
    return {
        "assets": {"BTC": {"decimals": 8}, "USDT": {"decimals": 8}, "ETH": {"decimals": 8}},
        "markets": [
            {
                "symbol": "BTC_USDT",
                "base": "BTC",
                "quote": "USDT",
                "price_tick": "0.01",
                "lot_size": "0.00001",
            },
            {
                "symbol": "ETH_USDT",
                "base": "ETH",
                "quote": "USDT",
                "price_tick": "0.01",
                "lot_size": "0.0001",
                "shard": "matching-1",
                "maker_fee_rate": "0.001",
            },
        ],
    }


def test_catalog_from_dict() -> None:
    cat = MarketCatalog.from_dict(_config())
    assert list(cat.markets) == ["BTC_USDT", "ETH_USDT"]
    assert cat.shards == ("matching-0", "matching-1")
    assert [m.symbol for m in cat.markets_of_shard("matching-1")] == ["ETH_USDT"]
    assert cat.market("ETH_USDT").maker_fee_ppm == 1000 and cat.market("BTC_USDT").maker_fee_ppm == 0
    assert cat.assets["BTC"] == Asset("BTC", 8)
    other = MarketCatalog.from_dict(_config(), default_shard="m-9")
    assert other.market("BTC_USDT").shard == "m-9"


def test_default_config_loads() -> None:
    with open(ROOT / "deploy" / "exchange.toml", "rb") as f:
        cat = MarketCatalog.from_dict(tomllib.load(f))
    assert set(cat.markets) == {"BTC_USDT", "ETH_USDT", "ETH_BTC", "SOL_USDT", "DOGE_USDT"}
    assert cat.shards == ("matching-0",)
    eth_btc = cat.market("ETH_BTC")
    assert (eth_btc.quote_units_per_tick_lot, eth_btc.base_units_per_lot) == (1, 100_000)
    doge = cat.market("DOGE_USDT")
    assert (doge.quote_units_per_tick_lot, doge.base_units_per_lot, doge.min_amount_lots) == (1000, 10**8, 1)


def _broken(mutate: Any) -> dict[str, Any]:
    cfg = _config()
    mutate(cfg)
    return cfg


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({}, r"\[assets\]"),
        ({"assets": {}, "markets": []}, r"\[assets\]"),
        (_broken(lambda c: c.pop("markets")), r"\[\[markets\]\]"),
        (_broken(lambda c: c.update(markets=[])), r"\[\[markets\]\]"),
        (_broken(lambda c: c["assets"].update(btc={"decimals": 8})), "upper-case"),
        (_broken(lambda c: c["assets"].update({"B-T": {"decimals": 8}})), "upper-case"),
        (_broken(lambda c: c["assets"].update(X={"decimals": 19})), "0..18"),
        (_broken(lambda c: c["assets"].update(X={"decimals": -1})), "0..18"),
        (_broken(lambda c: c["assets"].update(X={"decimals": "8"})), "0..18"),
        (_broken(lambda c: c["assets"].update(X={"decimals": True})), "0..18"),
        (_broken(lambda c: c["assets"].update(X=8)), "0..18"),
        (_broken(lambda c: c["markets"][0].update(base="DOGE")), "configured assets"),
        (_broken(lambda c: c["markets"][0].update(quote="EUR")), "configured assets"),
        (_broken(lambda c: c["markets"][0].update(symbol="BTCUSDT")), "must be named BTC_USDT"),
        (_broken(lambda c: c["markets"][0].update(symbol="USDT_BTC")), "must be named BTC_USDT"),
        (_broken(lambda c: c["markets"][0].update(quote="BTC", symbol="BTC_BTC")), "must differ"),
        (_broken(lambda c: c["markets"].append(dict(c["markets"][0]))), "configured twice"),
        (_broken(lambda c: c["markets"][0].update(price_tick=0.01)), "price_tick must be a decimal string"),
        (_broken(lambda c: c["markets"][0].pop("lot_size")), "lot_size must be a decimal string"),
        (_broken(lambda c: c["markets"][0].update(maker_fee_rate=0.001)), "maker_fee_rate"),
        (_broken(lambda c: c["markets"][0].update(lot_size="0.000000001")), "finer than BTC"),
        (_broken(lambda c: c["markets"].append("BTC_USDT")), "must be a table"),
    ],
)
def test_catalog_from_dict_refuses_bad_configs(cfg: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MarketCatalog.from_dict(cfg)


def test_with_shards() -> None:
    cat = MarketCatalog.from_dict(_config())
    moved = cat.with_shards({"matching-2": ["BTC_USDT"]})
    assert moved.market("BTC_USDT").shard == "matching-2"
    assert moved.market("ETH_USDT").shard == "matching-1"  # not listed: keeps its shard
    assert moved.shards == ("matching-1", "matching-2")
    assert cat.market("BTC_USDT").shard == "matching-0"  # the original is untouched
    # everything else about the moved market is unchanged
    assert (
        moved.market("BTC_USDT").quote_units_per_tick_lot == cat.market("BTC_USDT").quote_units_per_tick_lot
    )
    both = cat.with_shards({"a": ["BTC_USDT"], "b": ["ETH_USDT"]})
    assert both.shards == ("a", "b") and [m.symbol for m in both.markets_of_shard("b")] == ["ETH_USDT"]
    with pytest.raises(ConfigError, match="unknown market"):
        cat.with_shards({"a": ["DOGE_USDT"]})
    with pytest.raises(ConfigError, match="both"):
        cat.with_shards({"a": ["BTC_USDT"], "b": ["BTC_USDT"]})
