"""Where a service is: `Resolver.address(name) -> "host:port"`, and `watch(callback)` to be told when an
address changes (connections then dial the new one).

Names: "accounts" (also its source name, "accounts-0"), each matching shard by its name ("matching-0",
...), "history", "market". Accounts sharded by user: shard 0 is "accounts" (alias "accounts-0"), shard i
"accounts-<i>"; accounts_shards() counts them and accounts_name(i) names them.

StaticResolver.from_config(config) answers from the exchange configuration: each section's `advertise`
address, by default its `listen` address with a wildcard host (0.0.0.0, [::], empty) taken as 127.0.0.1.
StaticResolver.set(name, address) changes an address by hand (tests, tools) and tells the watchers. A
ZooKeeper resolver will implement the same two methods (and call the watchers from its watch callbacks).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping

from services.common.config import ExchangeConfig

log = logging.getLogger(__name__)

ACCOUNTS, HISTORY, MARKET = "accounts", "history", "market"
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]", "*")
LOOPBACK = "127.0.0.1"

Watcher = Callable[[str, str], None]  # (name, new address)


class UnknownService(KeyError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = sorted(known)

    def __str__(self) -> str:
        return f"no service {self.name!r}; services are {', '.join(self.known)}"


def advertise_address(listen: str, advertise: str = "") -> str:
    """The address others dial for a service that listens on `listen`: `advertise` when set, else
    `listen` with a wildcard host replaced by 127.0.0.1."""
    if advertise:
        return advertise
    host, sep, port = listen.rpartition(":")
    if not sep:
        return listen
    if host in WILDCARD_HOSTS:
        return f"{LOOPBACK}:{port}"
    return listen


def accounts_name(index: int) -> str:
    """The resolver name of accounts shard `index` ("accounts" for the first, else "accounts-<i>")."""
    return ACCOUNTS if index == 0 else f"accounts-{index}"


def config_addresses(config: ExchangeConfig) -> dict[str, str]:
    """Every service's dial address in a configuration, by name (accounts under "accounts", its other
    shards under "accounts-<i>")."""
    out: dict[str, str] = {}
    for i in range(config.accounts.shards):
        a = config.accounts_shard(i)
        out[accounts_name(i)] = advertise_address(a.listen, a.advertise)
    for name, shard in config.shards.items():
        out[name] = advertise_address(shard.listen, shard.advertise)
    out[HISTORY] = advertise_address(config.history.listen, config.history.advertise)
    out[MARKET] = advertise_address(config.market.listen, config.market.advertise)
    return out


class Resolver(ABC):
    """Service name -> address, with change notification."""

    def __init__(self) -> None:
        self._watchers: list[Watcher] = []
        self._lock = threading.Lock()

    @abstractmethod
    def address(self, name: str) -> str:
        """The address to dial for `name`; UnknownService when there is none."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every name this resolver knows (aliases excluded)."""

    def canonical(self, name: str) -> str:
        """The name watchers are told of for `name` (an alias such as "accounts-0" -> "accounts")."""
        return name

    def accounts_shards(self) -> int:
        """How many accounts shards there are: "accounts" and then "accounts-1", "accounts-2", ...
        as long as the resolver knows them."""
        known = set(self.names())
        n = 1
        while accounts_name(n) in known:
            n += 1
        return n

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call `callback(name, address)` whenever an address changes (from any thread: keep it short).
        Returns a function that stops the notifications."""
        with self._lock:
            self._watchers.append(callback)

        def unwatch() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def _changed(self, name: str, address: str) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for w in watchers:
            try:
                w(name, address)
            except Exception:  # a watcher's bug must not keep the others from hearing of it
                log.exception("resolver watcher failed", extra={"service": name})


class StaticResolver(Resolver):
    """Addresses from a mapping (or a configuration); `set` changes one."""

    def __init__(self, addresses: Mapping[str, str], aliases: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._addresses = dict(addresses)
        self._aliases = dict(aliases or {})

    @classmethod
    def from_config(cls, config: ExchangeConfig) -> StaticResolver:
        aliases = {config.accounts.source: ACCOUNTS} if config.accounts.source != ACCOUNTS else {}
        return cls(config_addresses(config), aliases)

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def address(self, name: str) -> str:
        try:
            return self._addresses[self.canonical(name)]
        except KeyError:
            raise UnknownService(name, self._addresses) from None

    def names(self) -> list[str]:
        return list(self._addresses)

    def set(self, name: str, address: str) -> None:
        name = self.canonical(name)
        if self._addresses.get(name) == address:
            return
        self._addresses[name] = address
        self._changed(name, address)
