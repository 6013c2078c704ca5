"""What every handler of the gateway shares: the clients of the services, the market names, the key
store and request verifier, the order entry and the rate limiters. Built by services.gateway.app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.clients.accounts import AccountsClient
from services.clients.history import HistoryClient
from services.clients.market import MarketClient
from services.common.config import GatewayConfig
from services.gateway.entry import OrderEntry
from services.gateway.keys import KeyStore
from services.gateway.ratelimit import WeightLimiter
from services.gateway.signing import Verifier
from services.gateway.symbols import Symbols


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Gateway:
    config: GatewayConfig
    symbols: Symbols
    accounts: AccountsClient
    market: MarketClient
    history: HistoryClient
    keys: KeyStore
    verifier: Verifier
    entry: OrderEntry
    ip_limits: WeightLimiter
    key_limits: WeightLimiter
    extra: dict[str, Any] = field(default_factory=dict)

    def rate_limits(self) -> list[dict[str, Any]]:
        return [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": self.config.weight_per_minute_ip,
            }
        ]


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)
