"""Fuzzing the HTTP edge (hypothesis) against the real gateway and exchange: every /api endpoint of the
OpenAPI table (services.gateway.openapi.ENDPOINTS) called with random and adversarial parameters, in the
query or a form body, signed correctly (so the parameters reach the handlers), or with a bad signature, a
stale timestamp or no key. Asserted for each call: never a 5xx; a refusal is a 4xx with Binance's
{code, msg} body (an integer code, a short message); and a refused call changes nothing of the caller's
state (balances and open orders). Requests come from 127.0.0.2, so the fuzz's request weight is charged
to an address of its own, not to the other gateway tests' 127.0.0.1. FUZZ_HTTP_EXAMPLES=N runs N
examples instead of 150."""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway import openapi
from services.gateway.signing import sign
from tests.gateway.conftest import Env, new_user

pytestmark = pytest.mark.slow

SOURCE = ("127.0.0.2", 0)
TRICKY = [
    "",
    "0",
    "1",
    "-1",
    "5",
    "1000",
    "0.001",
    "30000",
    "30000.00",
    "1e5",
    "1E-9",
    "NaN",
    "-Infinity",
    "-0",
    "0x10",
    "1_000",
    " 1",
    "²",  # str.isdigit() but not a decimal digit
    "١٢",  # Arabic-Indic digits
    "\uff11",  # a full-width digit
    "9" * 19,
    "9" * 20,
    "9223372036854775808",
    "-9223372036854775809",
    "9" * 300,
    "BTCUSDT",
    "btcusdt",
    "ETHUSDT",
    "BUY",
    "SELL",
    "LIMIT",
    "MARKET",
    "LIMIT_MAKER",
    "GTC",
    "IOC",
    "FOK",
    "GTD",
    "EXPIRE_BOTH",
    "FULL",
    "1m",
    "GRID",
    "{}",
    '{"lower": "1"}',
    "[]",
    "null",
    "true",
    "\x00",
    "💥",
    "%",
    "&",
    "=",
    "x" * 80,
]
# The strategy endpoints need the quantizer, which the shared test exchange does not run (they would be
# answered 503, the quantizer unreachable); tests/gateway/test_strategies.py has their refusals.
ENDPOINTS = [
    (m, p, params, auth)
    for m, p, _, params, auth in openapi.ENDPOINTS
    if p.startswith("/api/") and "strateg" not in p
]
EXTRA_NAMES = ["timestamp", "recvWindow", "signature", "symbol", "quantity", "price", "limit", "x"]


# Values a client could mean, per parameter: most parameters of a call are drawn from these, so that a
# call passes the first checks and its remaining odd value reaches the deeper ones.
AMOUNTS = ["0.001", "0.00001", "0.000001", "1", "0.1", "100", "30000", "30000.001", "0", "1e-5", "5e3"]
PLAUSIBLE: dict[str, list[str]] = {
    "symbol": ["BTCUSDT", "ETHUSDT", "ETHBTC", "SOLUSDT", "btcusdt", "BTC_USDT", "XXXUSDT"],
    "symbols": ['["BTCUSDT"]', '["BTCUSDT","ETHUSDT"]', "[]", '["NOPE"]', "BTCUSDT"],
    "side": ["BUY", "SELL", "buy", "HOLD"],
    "type": ["LIMIT", "MARKET", "LIMIT_MAKER", "STOP_LOSS", "limit"],
    "timeInForce": ["GTC", "IOC", "FOK", "GTD", "GTX"],
    "quantity": AMOUNTS,
    "quoteOrderQty": AMOUNTS,
    "price": AMOUNTS,
    "newQty": AMOUNTS,
    "newPrice": AMOUNTS,
    "goodTillDate": ["0", "1", str(int(time.time() * 1000) + 3_600_000), "9" * 16],
    "selfTradePreventionMode": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"],
    "newOrderRespType": ["ACK", "RESULT", "FULL", "NONE"],
    "orderId": ["1", "0", "999999999", "9223372036854775807", "9223372036854775808"],
    "fromId": ["0", "1", "9223372036854775807", "9223372036854775808"],
    "startTime": ["0", "1", str(int(time.time() * 1000)), "9223372036854775807"],
    "endTime": ["0", "1", str(int(time.time() * 1000)), "9223372036854775807"],
    "limit": ["1", "5", "100", "500", "1000", "1001", "5000", "0"],
    "interval": ["1m", "5m", "1h", "1d", "1w", "1M", "2m"],
    "recvWindow": ["1", "5000", "60000", "60001", "0"],
}


def values(name: str = "") -> st.SearchStrategy[str]:
    odd = st.one_of(st.sampled_from(TRICKY), st.text(max_size=24), st.integers().map(str))
    if name in PLAUSIBLE:
        return st.one_of(st.sampled_from(PLAUSIBLE[name]), st.sampled_from(PLAUSIBLE[name]), odd)
    return odd


@st.composite
def requests(draw: Any) -> tuple[str, str, dict[str, str], str, str]:
    """(method, path, parameters, where: query|body, signing: good|bad|stale|nokey)."""
    method, path, documented, auth = draw(st.sampled_from(ENDPOINTS))
    names = [n for n, _ in documented] + EXTRA_NAMES
    required = [n for n, needed in documented if needed]
    chosen = required + draw(
        st.lists(st.sampled_from([n for n in names if n not in required]), unique=True, max_size=6)
    )
    if required and draw(st.booleans()):  # sometimes leave out a mandatory one
        chosen.remove(draw(st.sampled_from(required)))
    params = {name: draw(values(name)) for name in chosen}
    where = draw(st.sampled_from(["query", "body"]))
    signing = draw(st.sampled_from(["good", "good", "good", "bad", "stale", "nokey"]))
    return method, path, params, where, signing if auth != openapi.NONE else "none"


def state(env: Env, user: int) -> tuple[Any, Any]:
    accounts = env.cluster.accounts
    balances = accounts.GetBalances(apb.GetBalancesRequest(user_id=user), timeout=10)
    orders = accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=user), timeout=10)
    return (
        sorted((b.asset, b.available, b.frozen) for b in balances.balances),
        sorted(o.order_id for o in orders.orders),
    )


def call(
    env: Env,
    method: str,
    path: str,
    query: str,
    body: str,
    headers: dict[str, str],
    source: tuple[str, int] = SOURCE,
) -> Any:
    host, _, port = env.cluster.gateway_http.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15, source_address=source)
    try:
        if body:
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        conn.request(method, path + (f"?{query}" if query else ""), body=body.encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_fuzz_http_edge(env: Env) -> None:
    user = new_user()
    env.trader(user, USDT="100000", BTC="10", ETH="100")  # a trader key; orders canceled after the test
    key, secret = env.key(user)

    @settings(
        max_examples=int(os.environ.get("FUZZ_HTTP_EXAMPLES", "150")),  # more for a deeper run
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests())
    def run(request: tuple[str, str, dict[str, str], str, str]) -> None:
        method, path, params, where, signing = request
        headers = {} if signing in ("none", "nokey") else {"X-MBX-APIKEY": key}
        if signing in ("good", "bad", "stale"):
            params.pop("signature", None)
            if signing == "stale" or "timestamp" not in params:
                params["timestamp"] = str(int(time.time() * 1000) - (3_600_000 if signing == "stale" else 0))
        payload = urlencode(params)
        if signing in ("good", "stale", "bad"):
            signature = sign(secret, payload) if signing != "bad" else "0" * 64
            payload = f"{payload}&signature={signature}"
        query, body = (payload, "") if where == "query" or method == "GET" else ("", payload)
        before = state(env, user)
        status, raw = call(env, method, path, query, body, headers)
        assert status < 500, f"{method} {path}?{query} {body}: {status} {raw[:300]!r}"
        if status == 200:
            return
        assert 400 <= status < 500, f"{method} {path}: {status}"
        answer = json.loads(raw)
        assert isinstance(answer.get("code"), int) and isinstance(answer.get("msg"), str), answer
        assert len(answer["msg"]) < 500, f"{path}: the message echoes {len(answer['msg'])} characters"
        assert state(env, user) == before, f"a refused {method} {path} ({status}) changed the state"

    run()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=9223372036854775807",
        "/api/v3/aggTrades?symbol=BTCUSDT&endTime=9223372036854775807",
    ],
)
def test_found_by_the_fuzz_times_past_int64_microseconds(env: Env, path: str) -> None:
    """Once a 500: ms x 1000 overflowed the int64 microseconds of the market request."""
    status, raw = call(env, "GET", path, "", "", {}, source=("127.0.0.3", 0))  # its own weight
    assert status == 400 and json.loads(raw)["code"] == -1130, raw
