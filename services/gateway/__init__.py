"""The gateway: HTTP and WebSocket for people and bots (issue 13).

A process of its own (`python -m services.gateway --config deploy/exchange.toml`), a trader-role client
of accounts, history and market through services.clients. It serves:

- REST under /api/v3, a Binance-spot-compatible subset (so stock ccxt's `binance` class trades through
  it): public market data, and signed order entry and account queries with API keys;
- the admin gRPC service GatewayAdminService (API keys) and gRPC health on `[gateway] admin_listen`.

Stack: aiohttp (+ uvloop when installed). The issue's measurements on this machine: aiohttp + uvloop
16.5k JSON req/s on one core, Starlette 12.6k, Litestar 11.4k, FastAPI 7.9k; aiohttp also brings the
WebSocket server in the same library and event loop as grpc.aio, with no ASGI layer in between, and is
what ccxt itself uses. The gateway's own cost per request must stay small beside the gRPC call behind it.

Modules:
- errors: ApiError ({code, msg} with an HTTP status) and the one table from ErrorInfo reasons.
- symbols: the exchange's markets under Binance names (BTC_USDT <-> BTCUSDT), exchangeInfo.
- formats: integers and decimal strings of the exchange as Binance JSON (orders, trades, tickers...).
- keys: the API key store (SQL through SQLAlchemy; secrets AES-GCM encrypted at rest).
- signing: HMAC-SHA256 request verification, recvWindow and replay refusal.
- ratelimit: request weights per key and per address.
- entry: order commands of every HTTP client aggregated into the accounts SubmitOrders stream.
- public, private: the REST handlers; admin: GatewayAdminService; app: the process.
- workers: `[gateway] workers = N` processes on one port (SO_REUSEPORT); shared: what they share (request
  weights, replays, WebSocket connections per address, the API keys' version); listenkeys: listen keys in
  the key database, so that every worker knows them.
"""
