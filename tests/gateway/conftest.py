"""One real exchange with a gateway for the gateway tests (matching, accounts, history, market and the
gateway as processes on ephemeral ports), and a small signed HTTP client. Every test uses users of its
own (`users()`), so tests do not depend on each other's orders."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import gateway_service_pb2 as gpb
from exchange.v1 import gateway_service_pb2_grpc as ggrpc

from services.gateway.signing import sign
from testkit.cluster import Cluster

_users = itertools.count(1000)


def new_user() -> int:
    return next(_users)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


class Rest:
    """HTTP calls to the gateway; `signed` ones with an API key and secret."""

    def __init__(self, base: str, key: str = "", secret: str = "") -> None:
        self.base = base
        self.key = key
        self.secret = secret

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        body: str = "",
    ) -> Answer:
        query = urlencode(params or {})
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if body:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return Answer(resp.status, json.loads(resp.read() or b"null"), dict(resp.headers))
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            return Answer(err.code, parsed, dict(err.headers))

    def get(self, path: str, **params: Any) -> Answer:
        return self.call("GET", path, params)

    def signed(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        in_body: bool = False,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> Answer:
        p = dict(params or {})
        p["timestamp"] = int(time.time() * 1000) if timestamp is None else timestamp
        payload = urlencode(p)
        signature = sign(secret if secret is not None else self.secret, payload)
        headers = {"X-MBX-APIKEY": self.key}
        if in_body:
            return self.call(method, path, headers=headers, body=f"{payload}&signature={signature}")
        url_params = {**p, "signature": signature}
        return self.call(method, path, url_params, headers=headers)


@dataclass
class Env:
    cluster: Cluster
    users: list[int] = field(default_factory=list)  # whose orders are canceled after each test

    @property
    def base(self) -> str:
        return f"http://{self.cluster.gateway_http}"

    def rest(self, key: str = "", secret: str = "") -> Rest:
        return Rest(self.base, key, secret)

    def admin(self) -> ggrpc.GatewayAdminServiceStub:
        return ggrpc.GatewayAdminServiceStub(self.cluster.channel("gateway"))

    def key(self, user: int, *perms: Any) -> tuple[str, str]:
        resp = self.admin().CreateApiKey(
            gpb.CreateApiKeyRequest(
                user_id=user,
                permissions=list(perms) or [gpb.API_KEY_PERMISSION_READ, gpb.API_KEY_PERMISSION_TRADE],
            )
        )
        return resp.key.api_key, resp.secret

    def trader(self, user: int, **deposits: str) -> Rest:
        self.users.append(user)
        for asset, amount in deposits.items():
            self.cluster.accounts.Deposit(
                apb.DepositRequest(
                    user_id=user, asset=asset, amount=amount, business="test", business_id=f"{user}-{asset}"
                )
            )
        return self.rest(*self.key(user))


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = Cluster(
        tmp_path_factory.mktemp("gateway"), with_history=True, with_market=True, with_gateway=True
    )
    cluster.start()
    try:
        yield Env(cluster)
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _clean_books(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests share the markets' books: every order a test's users left open is canceled after it."""
    yield
    if "env" not in request.fixturenames:
        return
    env: Env = request.getfixturevalue("env")
    users, env.users = env.users, []
    for user in users:
        env.cluster.accounts.CancelAllOrders(apb.CancelAllOrdersRequest(user_id=user))
    for user in users:
        wait_for(
            lambda u=user: (
                not env.cluster.accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=u)).orders
            )
        )


def wait_for(check: Any, timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"not reached within {timeout}s (last: {last!r})")


CHROMIUM = "/usr/bin/chromium"
BUNDLE = Path(__file__).resolve().parents[2] / "services" / "gateway" / "web" / "dist" / "app.js"


def ensure_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("Chromium is missing and cannot be installed here (needs root and apt-get)")
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=900)
    if not Path(CHROMIUM).exists():
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=900)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    ensure_chromium()
    assert BUNDLE.exists(), "the page's script is not built: run ./scripts/setup"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
