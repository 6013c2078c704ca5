"""The client library every caller of a service uses: typed async clients, one event follower, one
address resolver.

    from services.clients import Clients
    clients = Clients.from_config(config)               # addresses from the config; the process's token
    markets = await clients.accounts.list_markets()
    depth = await clients.matching("matching-0").get_depth(mpb.GetDepthRequest(market="BTC_USDT"))
    async for batch in follow_events(clients.matching("matching-0").events(), from_sequence=1): ...
    await clients.close()

Modules:
- clients.accounts / matching / history / market: AccountsClient, MatchingClient, HistoryClient,
  MarketClient (ServiceClient in clients.base: deadline on every unary call, retries, ClientError).
- clients.quantizer: QuantizerClient (not a resolver name: `QuantizerClient.at(quantizer_address(config))`).
- clients.errors: ClientError (.code, .reason, .message, .metadata, .retry_after_ms), EventsOutOfRange,
  EventGap.
- clients.retry: RetryPolicy (which waits, how many attempts), NO_RETRY.
- clients.follow: follow_events / EventFollower / EventBatch and the EventSource protocol.
- clients.resolver: Resolver, StaticResolver (from the config's advertise addresses), advertise_address.
- clients.discovery: resolver_for(config), the static one or, in cluster mode, ZooKeeper's over it.
- clients.channels: Connection (one service's channel, by name), sync_channel (blocking, for tools).
"""

from __future__ import annotations

from typing import Any, TypeVar

from services.clients.accounts import AccountsClient
from services.clients.base import ServiceClient
from services.clients.channels import Connection, Options, sync_channel
from services.clients.discovery import resolver_for
from services.clients.errors import ClientError, EventGap, EventsOutOfRange
from services.clients.follow import EventBatch, EventFollower, EventSource, follow_events
from services.clients.history import HistoryClient
from services.clients.market import MarketClient
from services.clients.matching import MatchingClient
from services.clients.quantizer import QuantizerClient, quantizer_address
from services.clients.resolver import (
    ACCOUNTS,
    HISTORY,
    MARKET,
    Resolver,
    StaticResolver,
    UnknownService,
    advertise_address,
)
from services.clients.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from services.common.config import ExchangeConfig
from services.common.security import Security

__all__ = [
    "NO_RETRY",
    "AccountsClient",
    "ClientError",
    "Clients",
    "Connection",
    "EventBatch",
    "EventFollower",
    "EventGap",
    "EventSource",
    "EventsOutOfRange",
    "HistoryClient",
    "MarketClient",
    "MatchingClient",
    "QuantizerClient",
    "Resolver",
    "RetryPolicy",
    "ServiceClient",
    "StaticResolver",
    "UnknownService",
    "advertise_address",
    "follow_events",
    "kind_of",
    "quantizer_address",
    "sync_channel",
]


C = TypeVar("C", bound=ServiceClient)


def kind_of(resolver: Resolver, name: str) -> type[ServiceClient]:
    """The client class of service `name` ("accounts" or its source name, "history", "market", else a
    matching shard)."""
    canonical = resolver.canonical(name)
    if canonical == ACCOUNTS or canonical.startswith(ACCOUNTS + "-"):  # "accounts-1": an accounts shard
        return AccountsClient
    if canonical == HISTORY:
        return HistoryClient
    if canonical == MARKET:
        return MarketClient
    return MatchingClient


class Clients:
    """The typed clients of one exchange, one connection per service (created on first use, in the
    running event loop), all with the same credentials, deadline default and retry policy."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        security: Security | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        options: Options = (),
    ) -> None:
        self.resolver = resolver
        self.security = security
        self.token = token
        self.timeout = timeout
        self.retry = retry
        self.options = options
        self._clients: dict[str, ServiceClient] = {}

    @classmethod
    def from_config(cls, config: ExchangeConfig, **kw: Any) -> Clients:
        return cls(resolver_for(config), **kw)

    def client(self, name: str) -> ServiceClient:
        """The client of service `name` (see kind_of); UnknownService for a name the resolver lacks."""
        self.resolver.address(name)  # UnknownService early, not at the first call
        key = self.resolver.canonical(name)
        c = self._clients.get(key)
        if c is None:
            kind = kind_of(self.resolver, name)
            conn = Connection(
                key, self.resolver, security=self.security, token=self.token, options=self.options
            )
            c = self._clients[key] = kind(conn, timeout=self.timeout, retry=self.retry, owns_connection=True)
        return c

    def _typed(self, name: str, kind: type[C]) -> C:
        c = self.client(name)
        if not isinstance(c, kind):
            raise TypeError(f"{name} is a {type(c).__name__}, not a {kind.__name__}")
        return c

    @property
    def accounts(self) -> AccountsClient:
        return self._typed(ACCOUNTS, AccountsClient)

    def matching(self, shard: str = "matching-0") -> MatchingClient:
        return self._typed(shard, MatchingClient)

    @property
    def history(self) -> HistoryClient:
        return self._typed(HISTORY, HistoryClient)

    @property
    def market(self) -> MarketClient:
        return self._typed(MARKET, MarketClient)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.close()

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
