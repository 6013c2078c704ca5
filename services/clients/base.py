"""ServiceClient: what every typed client shares.

- Every unary call has a deadline: the client's default (`timeout`, else the class's DEFAULT_TIMEOUT_S),
  or the call's `timeout=`. Retries happen within that one deadline.
- Calls go over a Connection (services.clients.channels): the process's transport and token.
- UNAVAILABLE is retried for calls that are safe to repeat (services.clients.retry.RetryPolicy), after
  the server's RetryInfo delay (or an exponential backoff), with jitter, a bounded number of times.
- Every failure is a ClientError (services.clients.errors) carrying the status code, the ErrorInfo
  reason and metadata, the RetryInfo delay and where the call went.

Server streams (`_stream`) have no deadline unless given one; their errors are ClientErrors too, and
closing the iterator cancels the call.

Leaders and followers (cluster mode, services.matching.replica): a write sent to a follower is refused
with FAILED_PRECONDITION, reason NOT_LEADER, ErrorInfo metadata "leader" = the leader's address. The
follower applied nothing of it, so the call is tried again, safe or not, within its deadline, after
`follow_leader`: a resolver with `refresh(name)` (ZooKeeperResolver) reads the leader from ZooKeeper
again; a StaticResolver is set to the address the follower named. While the shard has no leader (an
election under way, the resolver names nobody) the retry waits and tries again. A client at a fixed
address does not redirect: it raises the NOT_LEADER ClientError.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from services.clients.channels import Connection, Options
from services.clients.errors import ClientError
from services.clients.resolver import Resolver, StaticResolver, UnknownService
from services.clients.retry import DEFAULT_RETRY, RetryPolicy
from services.common.security import Security

R = TypeVar("R", bound=Message)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
NOT_LEADER = "NOT_LEADER"  # errors.proto ERROR_REASON_NOT_LEADER
MAX_REDIRECTS = 64  # within one deadline: an election may take a few seconds
REDIRECT_BACKOFF_S = (0.0, 0.05, 0.1, 0.2, 0.3)  # before the 1st, 2nd, ... retry after NOT_LEADER


def is_not_leader(failure: ClientError) -> bool:
    return failure.code == grpc.StatusCode.FAILED_PRECONDITION and failure.reason == NOT_LEADER


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _cancelled_by_caller() -> bool:
    """Whether the running task is being cancelled (asyncio.Task.cancelling)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class ServiceClient:
    SERVICE: ClassVar[str] = ""  # the full gRPC service name, e.g. "exchange.v1.AccountsService"
    NAME: ClassVar[str] = ""  # the resolver name used when none is given ("accounts", "history", ...)
    DEFAULT_TIMEOUT_S: ClassVar[float] = 5.0

    def __init__(
        self,
        connection: Connection,
        *,
        timeout: float | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        owns_connection: bool = False,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.connection = connection
        self.timeout = self.DEFAULT_TIMEOUT_S if timeout is None else timeout
        if self.timeout <= 0:
            raise ValueError("a client's deadline must be positive")
        self.retry = retry
        self.owns_connection = owns_connection
        self._rand = rand
        self._callables: dict[str, Any] = {}
        self._callables_of: grpc.aio.Channel | None = None

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def at(
        cls,
        address: str,
        *,
        security: Security | None = None,
        token: str | None = None,
        options: Options = (),
        name: str = "",
        **kw: Any,
    ) -> Self:
        """A client of the service at a fixed address (closing the client closes its channel)."""
        conn = Connection(name or cls.NAME, address=address, security=security, token=token, options=options)
        return cls(conn, owns_connection=True, **kw)

    @classmethod
    def resolve(
        cls,
        resolver: Resolver,
        name: str = "",
        *,
        security: Security | None = None,
        token: str | None = None,
        options: Options = (),
        **kw: Any,
    ) -> Self:
        """A client of service `name` (default: the kind's name) wherever `resolver` says it is."""
        conn = Connection(name or cls.NAME, resolver, security=security, token=token, options=options)
        return cls(conn, owns_connection=True, **kw)

    @property
    def name(self) -> str:
        return self.connection.name

    @property
    def address(self) -> str:
        return self.connection.address

    async def close(self) -> None:
        if self.owns_connection:
            await self.connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- calls -----------------------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        ch = self.connection.channel()
        if ch is not self._callables_of:
            self._callables.clear()
            self._callables_of = ch
        return ch

    def _method(self, kind: str, path: str, response_type: type[Message]) -> Any:
        ch = self._channel()
        key = f"{kind} {path}"
        mc = self._callables.get(key)
        if mc is None:
            factory = ch.unary_unary if kind == "unary" else ch.unary_stream
            mc = factory(path, request_serializer=_serialize, response_deserializer=response_type.FromString)
            self._callables[key] = mc
        return mc

    def error(self, err: grpc.RpcError, method: str, attempts: int = 1) -> ClientError:
        return ClientError.from_rpc_error(
            err, service=self.name, address=self._address_or_none(), method=method, attempts=attempts
        )

    def _address_or_none(self) -> str:
        try:
            return self.connection.address
        except UnknownService:
            return ""

    def no_leader_error(self, method: str, attempts: int) -> ClientError:
        """What a call gets when the resolver names no leader for a shard it was redirected for."""
        return ClientError(
            grpc.StatusCode.UNAVAILABLE,
            f"{self.name} has no leader right now (an election is under way)",
            reason=NOT_LEADER,
            service=self.name,
            method=method,
            attempts=attempts,
        )

    async def follow_leader(self, failure: ClientError) -> bool:
        """After a NOT_LEADER refusal: make the connection dial the shard's leader next (see the module
        docstring). False when it cannot be redirected (a fixed address)."""
        resolver = self.connection.resolver
        if resolver is None or self.connection._fixed:
            return False
        refresh = getattr(resolver, "refresh", None)
        if refresh is not None:
            await asyncio.to_thread(refresh, self.name)
            return True
        leader = failure.metadata.get("leader", "")
        if leader and isinstance(resolver, StaticResolver):
            resolver.set(self.name, leader)
        return True

    def redirect_wait(self, redirects: int) -> float:
        return REDIRECT_BACKOFF_S[min(redirects - 1, len(REDIRECT_BACKOFF_S) - 1)] * (
            1.0 + 0.2 * self._rand()
        )

    async def _unary(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        safe: bool,
        timeout: float | None,
        retry: RetryPolicy | None,
        path: str = "",
    ) -> R:
        """One unary call with a deadline; retried on UNAVAILABLE when `safe`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        policy = retry if retry is not None else self.retry
        path = path or f"/{self.SERVICE}/{method}"
        attempt = 0
        redirects = 0
        while True:
            attempt += 1
            left = deadline - loop.time()
            try:
                mc = self._method("unary", path, response_type)
                response: R = await mc(request, timeout=max(left, 0.001))
                return response
            except grpc.RpcError as err:
                failure = self.error(err, method, attempt)
            except UnknownService:
                if not redirects:
                    raise
                failure = self.no_leader_error(method, attempt)  # redirected, and no leader yet
            if (redirects and failure.reason == NOT_LEADER) or is_not_leader(failure):
                # Refused by a follower (nothing applied) or no leader yet: at the leader, again.
                redirects += 1
                if redirects > MAX_REDIRECTS or not await self.follow_leader(failure):
                    raise failure
                pause = self.redirect_wait(redirects)
                if loop.time() + pause >= deadline:
                    raise failure
                await asyncio.sleep(pause)
                continue
            if not safe or failure.code != grpc.StatusCode.UNAVAILABLE:
                raise failure
            wait = policy.delay(attempt, failure.retry_after_ms, self._rand)
            if wait is None or loop.time() + wait >= deadline:
                raise failure
            await asyncio.sleep(wait)

    async def _stream(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        *,
        timeout: float | None = None,
        path: str = "",
    ) -> AsyncGenerator[R, None]:
        """A server stream (no deadline unless `timeout`); errors as ClientError; closing the iterator
        cancels the call."""
        mc = self._method("stream", path or f"/{self.SERVICE}/{method}", response_type)
        call = mc(request, timeout=timeout)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise self.error(err, method) from None
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            raise self._channel_closed(method) from None
        finally:
            call.cancel()

    def _channel_closed(self, method: str) -> ClientError:
        """A stream read raised asyncio.CancelledError while the caller's task was not cancelled:
        grpc aio cancelled the call because its channel was closed (the Connection retired it: the
        service moved to another address, services.clients.channels). A retryable UNAVAILABLE, so
        that followers reconnect, to the new address, instead of ending as if cancelled."""
        return ClientError(
            grpc.StatusCode.UNAVAILABLE,
            "the stream's channel was closed (the service moved to another address)",
            service=self.name,
            address=self._address_or_none(),
            method=method,
        )

    async def _bidi(
        self,
        method: str,
        requests: AsyncIterable[Message],
        response_type: type[R],
        *,
        timeout: float | None = None,
    ) -> AsyncGenerator[R, None]:
        """A bidirectional stream fed from `requests`; errors as ClientError."""
        ch = self._channel()
        mc = ch.stream_stream(
            f"/{self.SERVICE}/{method}",
            request_serializer=_serialize,
            response_deserializer=response_type.FromString,
        )
        call = mc(requests, timeout=timeout)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise self.error(err, method) from None
        except asyncio.CancelledError:
            if _cancelled_by_caller():
                raise
            raise self._channel_closed(method) from None
        finally:
            call.cancel()

    async def health(self, service: str = "", *, timeout: float | None = None) -> int:
        """grpc.health.v1 Check of `service` ("" = the process): the ServingStatus number."""
        resp = await self._unary(
            "Check",
            health_pb2.HealthCheckRequest(service=service),
            health_pb2.HealthCheckResponse,
            safe=True,
            timeout=timeout,
            retry=None,
            path=HEALTH_CHECK,
        )
        return int(resp.status)
