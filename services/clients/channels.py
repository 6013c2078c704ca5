"""Channels with the process's transport and credentials.

Connection: the aio channel to ONE service, found by name through a Resolver (or at a fixed address).
It is created on first use, inside the running event loop, with the credentials of `security` (default:
the process's, services.common.rpc.configure) presenting its token (or `token`); when the resolver says
the address changed, the next call dials the new address and the old channel is closed after a grace
period (the calls still on it finish): MOVED_GRACE_S at once when the resolver tells of the change (a
new leader: the streams on the old channel end and reconnect there), else RETIRE_GRACE_S at the next
call. One Connection belongs to one event loop.

sync_channel: a blocking channel with the same credentials (tools, the launcher's health probe); unlike
rpc.sync_channel it takes extra channel options (the probe's short reconnect backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import grpc

from services.clients.resolver import Resolver, UnknownService
from services.common import rpc
from services.common.security import Security

Options = Sequence[tuple[str, Any]]

RETIRE_GRACE_S = 30.0
# When the resolver names another address (a new leader), the old channel is closed after this grace
# at once, not at the next call: a long-lived stream on it (an event follower, an order stream) would
# otherwise stay with a frozen or deposed leader until keepalive gives up (30 s).
MOVED_GRACE_S = 2.0


def _options(extra: Options) -> list[tuple[str, Any]]:
    keys = {k for k, _ in extra}
    return [*((k, v) for k, v in rpc.CHANNEL_OPTIONS if k not in keys), *extra]


def channel_credentials(
    security: Security | None = None, token: str | None = None
) -> grpc.ChannelCredentials:
    """The channel credentials of `security` (default: the process's), presenting `token` (default: its
    own; "" = none, for public calls such as health checks)."""
    sec = security if security is not None else rpc.security()
    return sec.channel_credentials(token)


def sync_channel(
    address: str, *, security: Security | None = None, token: str | None = None, options: Options = ()
) -> grpc.Channel:
    """A blocking channel to `address` on the process's transport (see module doc)."""
    return grpc.secure_channel(address, channel_credentials(security, token), options=_options(options))


def aio_channel(
    address: str, *, security: Security | None = None, token: str | None = None, options: Options = ()
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, channel_credentials(security, token), options=_options(options))


class Connection:
    def __init__(
        self,
        name: str,
        resolver: Resolver | None = None,
        *,
        address: str = "",
        security: Security | None = None,
        token: str | None = None,
        options: Options = (),
    ) -> None:
        if resolver is None and not address:
            raise ValueError("a Connection needs a resolver or an address")
        self.name = name
        self.resolver = resolver
        self._fixed = address
        self.security = security
        self.token = token
        self.options = list(options)
        self._channel: grpc.aio.Channel | None = None
        self._address = ""
        self._stale = False
        self._retiring: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._unwatch = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the channel belongs to
        if resolver is not None:
            canonical = resolver.canonical(name)

            def changed(service: str, address: str) -> None:
                if service != canonical:
                    return
                self._stale = True  # the next channel() dials the new address
                loop = self._loop
                if address and loop is not None:  # (any thread: ZooKeeper's watches run on kazoo's)
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(self._moved)

            self._unwatch = resolver.watch(changed)

    @classmethod
    def at(cls, address: str, *, name: str = "", **kw: Any) -> Connection:
        return cls(name or address, address=address, **kw)

    @property
    def address(self) -> str:
        """The address calls go to (the resolver's current answer)."""
        if self._channel is not None and not self._stale:
            return self._address
        return self._resolve()

    def _resolve(self) -> str:
        if self._fixed:
            return self._fixed
        assert self.resolver is not None
        return self.resolver.address(self.name)

    def channel(self) -> grpc.aio.Channel:
        """The channel to use now (call from the event loop that owns this connection)."""
        ch = self._channel
        if ch is not None and not self._stale:
            return ch
        address = self._resolve()
        self._stale = False
        if ch is not None:
            if address == self._address:
                return ch
            self._retire(ch)
        self._channel = aio_channel(address, security=self.security, token=self.token, options=self.options)
        self._address = address
        self._loop = asyncio.get_running_loop()
        return self._channel

    def _moved(self) -> None:
        """The resolver named another address: retire the open channel now (MOVED_GRACE_S), so that
        the streams on it end and their callers reconnect to the new address."""
        ch = self._channel
        if ch is None:
            return
        try:
            address = self._resolve()
        except UnknownService:
            return
        if address and address != self._address:
            self._channel = None
            self._retire(ch, MOVED_GRACE_S)

    def _retire(self, ch: grpc.aio.Channel, grace: float = RETIRE_GRACE_S) -> None:
        task = asyncio.get_running_loop().create_task(ch.close(grace=grace))
        self._retiring[task] = ch
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        ch, self._channel = self._channel, None
        if ch is not None:
            await ch.close()
        for task, old in list(self._retiring.items()):
            await old.close()  # the calls still on an old channel end now
            task.cancel()
        self._retiring.clear()
