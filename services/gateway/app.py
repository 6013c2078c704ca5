"""The gateway process: an aiohttp server for REST and WebSocket on `[gateway] listen`, the gRPC admin
service and health on `[gateway] admin_listen`, the API key store, the aggregated order entry, and the
clients of accounts, history and market (as principal "gateway", role trader).

With `[gateway] workers = N` there are N such processes on the same HTTP port (SO_REUSEPORT: the kernel
spreads the connections), started by the first (services.gateway.workers), which alone serves the admin
gRPC and health. Each worker has its own clients, its own aggregated SubmitOrders stream and its own
market-data subscriptions; what must hold across them (request weights, replays, WebSocket connections
per address, API key versions, listen keys) is shared (services.gateway.shared, services.gateway
.listenkeys).

Every /api request is charged its weight against the client address's limit; signed ones also against
the key's. Errors are answered as Binance does, `{code, msg}`, with the HTTP status of the reason
(services.gateway.errors); X-MBX-USED-WEIGHT-1M tells the weight the address used this minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from exchange.v1 import gateway_service_pb2, gateway_service_pb2_grpc

from services.clients import Clients
from services.clients.errors import ClientError
from services.clients.quantizer import QuantizerClient, quantizer_address
from services.common.config import ExchangeConfig
from services.common.errors import ExchangeError, Reason
from services.common.markets import ConfigError
from services.common.rpc import ServerHandle, start_server
from services.gateway import openapi, private, public, strategies, userdata, userstream, ws
from services.gateway.admin import GatewayAdminServicer
from services.gateway.context import GATEWAY, Gateway, json_response, now_ms
from services.gateway.entry import OrderEntry
from services.gateway.errors import (
    TOO_MANY_REQUESTS,
    UNKNOWN,
    ApiError,
    from_client_error,
    from_exchange_error,
)
from services.gateway.keys import KeyStore, load_or_create_master_key
from services.gateway.listenkeys import ListenKeys
from services.gateway.ratelimit import TRY_AGAIN_LATER, ConnectionLimiter, WeightLimiter
from services.gateway.shared import SharedState
from services.gateway.signing import Verifier
from services.gateway.symbols import Symbols

log = logging.getLogger("services.gateway")

SERVICE_NAME = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayAdminService"].full_name
MAX_BODY = 64 * 1024
MAX_WORKERS = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
    return json_response(err.body(), status=err.status, headers=headers)


def weight_of(request: web.Request) -> int:
    weight = public.WEIGHTS.get(request.path) or private.WEIGHTS.get((request.method, request.path), 1)
    if request.path.startswith("/api/v3/ticker") and "symbol" not in request.query:
        weight = public.ALL_SYMBOLS_WEIGHT
    return weight


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    ip = request.remote or ""
    if gw.keys.stale():  # a key was created or revoked through another worker: read them first
        await gw.keys.sync()
    used = -1
    if request.path.startswith("/api/"):
        wait, used = gw.ip_limits.take(ip, weight_of(request), now_ms())
        if wait is not None:
            return error_response(
                ApiError(
                    429,
                    TOO_MANY_REQUESTS,
                    "Too much request weight used from this address; see Retry-After.",
                    reason=str(Reason.RATE_LIMITED),
                    retry_after_s=wait,
                )
            )
    try:
        response = await handler(request)
    except ApiError as err:
        response = error_response(err)
    except ClientError as err:
        response = error_response(from_client_error(err))
    except ExchangeError as exc:
        response = error_response(from_exchange_error(exc))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path[:100]})
        response = error_response(
            ApiError(500, UNKNOWN, "An unknown error occurred while processing the request.")
        )
    if not response.prepared:
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(used if used >= 0 else gw.ip_limits.used(ip, now_ms()))
    return response


WS_LIMIT: web.AppKey[ConnectionLimiter] = web.AppKey("ws_limit", ConnectionLimiter)


@web.middleware
async def ws_connections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """WebSocket upgrades count against `[gateway] ws_connections_per_ip`: one past the limit is
    accepted and closed at once with code 1013 (Try Again Later) and the reason."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return await handler(request)
    limiter = request.app[WS_LIMIT]
    ip = request.remote or ""
    if not limiter.acquire(ip):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        reason = f"too many connections from this address (at most {limiter.per_address})"
        await ws.close(code=TRY_AGAIN_LATER, message=reason.encode())
        return ws
    try:
        return await handler(request)
    finally:
        limiter.release(ip)


WEB = Path(__file__).resolve().parent / "web"


async def page(request: web.Request) -> web.StreamResponse:
    """The web page (services/gateway/web/index.html; its script is bundled by ./scripts/setup)."""
    return web.FileResponse(WEB / "index.html")


async def page_script(request: web.Request) -> web.StreamResponse:
    bundle = WEB / "dist" / "app.js"
    if not bundle.exists():
        return web.Response(
            status=404,
            text="// not built: run ./scripts/setup (npm run build in services/gateway/web)",
            content_type="application/javascript",
        )
    return web.FileResponse(bundle, headers={"Content-Type": "application/javascript"})


class GatewayApp:
    """One worker of the gateway: `worker` 0 of `[gateway] workers` serves the admin gRPC too; `shared`
    is the workers' shared state (one worker: a private one)."""

    def __init__(
        self,
        config: ExchangeConfig,
        *,
        clients: Clients | None = None,
        worker: int = 0,
        shared: SharedState | None = None,
        port: int | None = None,
    ) -> None:
        self.config = config
        cfg = config.gateway
        if not 1 <= cfg.workers <= MAX_WORKERS:
            raise ConfigError(f"[gateway] workers must be in 1..{MAX_WORKERS}")
        self.worker = worker
        self.port = port  # the HTTP port (workers after the first: the one the first bound)
        self.shared = shared or SharedState.local()
        self.clients = clients or Clients.from_config(config)
        url = cfg.database_url.replace("{data_dir}", str(config.data_dir))
        master = load_or_create_master_key(config.path_of(cfg.key_file))
        self.keys = KeyStore(url, master, state=self.shared)
        self.entry = OrderEntry(
            self.clients.accounts, max_batch=cfg.max_batch, max_pending=cfg.max_pending_orders
        )
        self.gateway = Gateway(
            config=cfg,
            symbols=Symbols(config.catalog),
            accounts=self.clients.accounts,
            market=self.clients.market,
            history=self.clients.history,
            keys=self.keys,
            verifier=Verifier(
                self.keys,
                self.shared,
                max_recv_window_ms=cfg.max_recv_window_ms,
                default_recv_window_ms=cfg.default_recv_window_ms,
            ),
            entry=self.entry,
            ip_limits=WeightLimiter(cfg.weight_per_minute_ip, self.shared),
            key_limits=WeightLimiter(cfg.weight_per_minute_key, self.shared, per_key=True),
        )
        self.web = web.Application(middlewares=[ws_connections, edge], client_max_size=MAX_BODY)
        self.web[GATEWAY] = self.gateway
        self.shared.forget_worker(worker)  # a restarted worker's connections are gone
        self.web[WS_LIMIT] = ConnectionLimiter(
            cfg.ws_connections_per_ip, self.shared, worker=worker, workers=cfg.workers
        )
        self.web[userstream.LISTEN_KEYS] = ListenKeys(
            self.keys.engine, max_per_key=cfg.listen_keys_per_api_key, state=self.shared
        )
        self.web.add_routes(userstream.routes())  # before ws's: /ws/<listenKey> ahead of /ws/<streams>
        self.web.add_routes(public.routes())
        self.web.add_routes(private.routes())
        self.quantizer = QuantizerClient.at(quantizer_address(config))
        self.web[strategies.QUANTIZER] = self.quantizer
        self.web.add_routes(strategies.routes())
        spec = openapi.document()

        async def openapi_json(request: web.Request) -> web.Response:
            return json_response(spec)

        self.web.router.add_get("/openapi.json", openapi_json)
        self.web.router.add_get("/", page)
        self.web.router.add_get("/static/app.js", page_script)
        self.feeds = ws.Feeds(
            self.clients.market, self.gateway.symbols, max_streams=cfg.ws_streams_per_connection
        )
        self.web.add_routes(ws.routes(self.feeds, cfg.ws_buffer))
        self.web.add_routes(userdata.routes(self.gateway, cfg.ws_buffer))
        self.runner: web.AppRunner | None = None
        self.server: ServerHandle | None = None
        self.http_port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.start_http()
        if self.worker == 0:
            await self.start_admin()

    async def start_http(self) -> None:
        self.entry.start()
        self.runner = web.AppRunner(self.web, access_log=None, handle_signals=False)
        await self.runner.setup()
        host, _, port = self.config.gateway.listen.rpartition(":")
        site = web.TCPSite(
            self.runner,
            host or "127.0.0.1",
            self.port if self.port is not None else int(port),
            backlog=1024,
            reuse_address=True,
            reuse_port=self.config.gateway.workers > 1 or None,
        )
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        self._tasks.append(asyncio.create_task(self._refresh_keys(), name="refresh-keys"))
        self._tasks.append(
            asyncio.create_task(userstream.sweeper(self.web, self.gateway), name="sweep-listen-keys")
        )

    async def start_admin(self) -> None:
        """The admin gRPC service and health (the first worker; health SERVING once it is called)."""
        self.server = await start_server(
            self.config.gateway.admin_listen,
            [
                (
                    gateway_service_pb2_grpc.add_GatewayAdminServiceServicer_to_server,
                    GatewayAdminServicer(self.keys),
                )
            ],
            [SERVICE_NAME],
        )

    async def _refresh_keys(self) -> None:
        while True:
            await asyncio.sleep(self.keys.refresh_s)
            try:
                await self.keys.refresh()
            except Exception:
                log.exception("reloading the API keys failed")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.server is not None:
            await self.server.stop(grace=1.0)
        await self.feeds.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.entry.close()
        await self.clients.close()
        await self.quantizer.close()
        self.keys.close()
