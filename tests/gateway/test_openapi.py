"""The OpenAPI document against the routes the gateway's aiohttp application really registers: every
route is documented and every documented operation is a route, so the document cannot drift again (the
listenKey endpoints once were missing). Builds the application without starting it: no services."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from services.common.config import load_config
from services.gateway import openapi
from services.gateway.app import GatewayApp

ROOT = Path(__file__).resolve().parents[2]


def _template(path: str) -> str:
    """A path with its parameters unnamed: aiohttp's /ws/{tail} and /ws/{listen_key} are OpenAPI's one
    /ws/{path}."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _registered(tmp_path: Path) -> set[tuple[str, str]]:
    shutil.copy(ROOT / "deploy" / "exchange.toml", tmp_path / "exchange.toml")
    config = load_config(tmp_path / "exchange.toml")

    async def build() -> set[tuple[str, str]]:
        app = GatewayApp(config)
        try:
            return {
                (route.method, _template(route.resource.canonical))
                for route in app.web.router.routes()
                if route.method != "HEAD" and route.resource is not None  # HEAD: added with each GET
            }
        finally:
            await app.clients.close()
            await app.quantizer.close()
            app.keys.close()

    return asyncio.run(build())


def test_every_registered_route_is_in_the_document_and_nothing_else(tmp_path: Path) -> None:
    routes = _registered(tmp_path)
    doc = openapi.document()
    documented = {(m.upper(), _template(p)) for p, item in doc["paths"].items() for m in item}
    assert routes - documented == set(), "routes missing from /openapi.json"
    assert documented - routes == set(), "documented operations that are not routes"
    assert ("POST", "/api/v3/userDataStream") in routes  # what the document once lacked


def test_listen_key_endpoints_take_the_key_without_a_signature() -> None:
    paths = openapi.document()["paths"]
    for method in ("post", "put", "delete"):
        op = paths["/api/v3/userDataStream"][method]
        assert op["security"] == [{"ApiKey": []}]
        names = {p["name"] for p in op["parameters"]}
        assert "signature" not in names and "timestamp" not in names
        assert ("listenKey" in names) == (method != "post")
    order = paths["/api/v3/order"]["post"]
    assert {"timestamp", "signature"} <= {p["name"] for p in order["parameters"]}
    assert paths["/stream"]["get"]["x-websocket"] is True
    assert "security" not in paths["/api/v3/depth"]["get"]
