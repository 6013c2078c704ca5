"""gRPC plumbing shared by every service: the aio server with health checking, reflection and
Prometheus metrics, mapping of domain errors to status codes (UNAVAILABLE carries google.rpc.RetryInfo),
and graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from services.common.auth import ACCESS, PUBLIC_PREFIXES, Principal, TokenVerifier
from services.common.errors import (
    ERROR_DOMAIN,
    ExchangeError,
    InvalidArgument,
    PermissionDenied,
    Reason,
    Unauthenticated,
    Unavailable,
)
from services.common.security import Security
from services.common.units import AmountError, AmountNotOnLot, PriceNotOnTick

log = logging.getLogger(__name__)

T = TypeVar("T")

_CODES = {
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    "NOT_FOUND": (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    "FAILED_PRECONDITION": (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    "ALREADY_EXISTS": (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    "PERMISSION_DENIED": (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    "INTERNAL": (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
    "OUT_OF_RANGE": (grpc.StatusCode.OUT_OF_RANGE, code_pb2.OUT_OF_RANGE),
    "UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    "RESOURCE_EXHAUSTED": (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
}


def error_code(exc: ExchangeError) -> int:
    """The google.rpc.Code number of a domain error (for per-item results in batch responses)."""
    return int(_CODES.get(exc.code, (grpc.StatusCode.UNKNOWN, code_pb2.UNKNOWN))[1])


def to_exchange_error(exc: BaseException) -> ExchangeError | None:
    if isinstance(exc, ExchangeError):
        return exc
    if isinstance(exc, PriceNotOnTick):
        return InvalidArgument(str(exc), Reason.PRICE_NOT_ON_TICK)
    if isinstance(exc, AmountNotOnLot):
        return InvalidArgument(str(exc), Reason.AMOUNT_NOT_ON_LOT)
    if isinstance(exc, AmountError):
        return InvalidArgument(str(exc), Reason.INVALID_DECIMAL)
    return None


MAX_MESSAGE = 512


def bounded_message(message: str) -> str:
    """The last guard against echoing input: no error message is longer than MAX_MESSAGE (the edge
    validation already refuses long fields and quotes only short prefixes)."""
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def grpc_status_for(exc: ExchangeError) -> grpc.Status:
    code = _CODES.get(exc.code, (grpc.StatusCode.UNKNOWN, code_pb2.UNKNOWN))[1]
    status = status_pb2.Status(code=code, message=bounded_message(exc.message))
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=str(exc.reason), domain=ERROR_DOMAIN, metadata=exc.metadata)
    )
    if isinstance(exc, Unavailable):
        seconds, ms = divmod(max(0, exc.retry_after_ms), 1000)
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=seconds, nanos=ms * 1_000_000)
        )
        status.details.add().Pack(info)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: ExchangeError) -> None:
    st = grpc_status_for(exc)
    await context.abort(st.code, st.details, st.trailing_metadata)


def handles_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorator for unary handlers: domain errors become their gRPC status."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await fn(self, request, context)
        except (ExchangeError, AmountError) as exc:
            err = to_exchange_error(exc)
            assert err is not None
            await abort(context, err)
            raise AssertionError("unreachable") from None

    return wrapper


def handles_stream_errors(
    fn: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """Decorator for server-streaming handlers (async generators)."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[T]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (ExchangeError, AmountError) as exc:
            err = to_exchange_error(exc)
            assert err is not None
            await abort(context, err)

    return wrapper


def error_reason(err: grpc.RpcError) -> str:
    """Client side: the ErrorInfo reason of a failed call ("" when it carries none)."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that do not match the call's code (not from this exchange)
        return ""
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def retry_after_ms(err: grpc.aio.AioRpcError) -> int | None:
    """Client side: the RetryInfo delay of an UNAVAILABLE error, if any."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return int(info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000)
    return None


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Clients ping every 20 s (CHANNEL_OPTIONS): accept that on idle streams instead of answering
    # GOAWAY too_many_pings (gRPC's default minimum is 5 minutes), which closed idle event streams.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


# --- security: what this process's servers accept and what its clients present -----------------

_security: Security | None = None


def configure(security: Security) -> None:
    """Set the process's transport and credentials (each service main calls it once, first)."""
    global _security
    _security = security


def security() -> Security:
    if _security is None:
        raise RuntimeError("rpc.configure(...) was not called: no credentials for this process")
    return _security


def channel(address: str, *, token: str | None = None) -> grpc.aio.Channel:
    """An aio channel to another service, presenting this process's token (or `token`)."""
    return grpc.aio.secure_channel(address, security().channel_credentials(token), options=CHANNEL_OPTIONS)


def sync_channel(
    address: str, *, token: str | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel (CLI, launcher, tools), presenting this process's token (or `token`);
    `options` are added to (and override) CHANNEL_OPTIONS."""
    merged = dict(CHANNEL_OPTIONS)
    merged.update(options)
    return grpc.secure_channel(address, security().channel_credentials(token), options=list(merged.items()))


def caller(context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
    """The authenticated principal of a call (handlers that need the identity, not only the role)."""
    return security().verifier.from_metadata(context.invocation_metadata())


class _Authorizer:
    """Authenticates every call (bearer token) and checks its role against auth.ACCESS before the
    handler runs; health and reflection are public.

    It sits where gRPC looks a method's handler up (`service(details)` of each registered
    GenericRpcHandler, synchronous, once per call), not in a grpc.aio ServerInterceptor: an aio
    interceptor makes every call, public ones included, run a chain of coroutines before the handler
    is found (~10 µs of a trivial call's ~180 µs of server CPU here; the check itself is ~1.5 µs). The
    check and the refusals are the same; a method registered with start_server is only ever reached
    through it (_Registrar)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier
        self._denials: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    def authorize(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """`handler` when the caller may call it, else a handler that refuses the call."""
        method: str = details.method
        if method.startswith(PUBLIC_PREFIXES):
            return handler
        principal = self.verifier.from_metadata(details.invocation_metadata)
        if principal is None:
            return self._deny(method, handler, "unauthenticated")
        allowed = ACCESS.get(method)
        if allowed is None or principal.role not in allowed:
            return self._deny(method, handler, str(principal.role))
        return handler

    def _deny(self, method: str, handler: grpc.RpcMethodHandler, who: str) -> grpc.RpcMethodHandler:
        key = (method, who)
        cached = self._denials.get(key)
        if cached is not None:
            return cached
        err: ExchangeError
        if who == "unauthenticated":
            err = Unauthenticated(
                "no valid credentials: send 'authorization: Bearer <token>' with a token from the "
                "exchange's credentials file"
            )
        else:
            err = PermissionDenied(f"role {who} may not call {method}", Reason.ROLE_NOT_ALLOWED)
        st = grpc_status_for(err)

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(st.code, st.details, st.trailing_metadata)

        async def deny_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await context.abort(st.code, st.details, st.trailing_metadata)
            yield None  # pragma: no cover - abort raises

        if handler.request_streaming and handler.response_streaming:
            denial = grpc.stream_stream_rpc_method_handler(deny_stream)
        elif handler.request_streaming:
            denial = grpc.stream_unary_rpc_method_handler(deny_unary)
        elif handler.response_streaming:
            denial = grpc.unary_stream_rpc_method_handler(deny_stream)
        else:
            denial = grpc.unary_unary_rpc_method_handler(deny_unary)
        if len(self._denials) < 10_000:
            self._denials[key] = denial
        return denial


class _AuthorizedHandlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A registered GenericRpcHandler whose every handler is looked up through the _Authorizer."""

    def __init__(self, inner: grpc.GenericRpcHandler, authorizer: _Authorizer) -> None:
        self.inner = inner
        self.authorizer = authorizer

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.inner.service(details)
        if handler is None:
            return None
        return self.authorizer.authorize(details, handler)


class _Registrar:
    """What start_server hands to the registration functions (register_service, the generated
    add_*Servicer_to_server) in place of the server: every handler they add is reached only through
    the _Authorizer. The generated code adds each service twice, as a generic handler and as
    registered method handlers (which gRPC would look up first, past any generic handler): both
    become authorized generic handlers."""

    def __init__(self, server: grpc.aio.Server, authorizer: _Authorizer) -> None:
        self._server = server
        self._authorizer = authorizer

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_AuthorizedHandlers(h, self._authorizer) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, method_handlers),))


class ServerHandle:
    def __init__(self, server: grpc.aio.Server, port: int, health: HealthServicer, names: list[str]) -> None:
        self.server = server
        self.port = port
        self.health = health
        self.names = names

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 2.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


async def start_server(
    listen: str,
    registrations: Iterable[tuple[Callable[[Any, Any], None], Any]],
    service_names: list[str],
) -> ServerHandle:
    """Start an aio server on `listen` ("host:port", port 0 = any) with health and reflection, on the
    process's transport (rpc.configure), authenticating and authorizing every call."""
    sec = security()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    registrar = _Registrar(server, _Authorizer(sec.verifier))
    for add, servicer in registrations:
        add(servicer, registrar)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_secure_port(listen, sec.server_credentials())
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    await server.start()
    handle = ServerHandle(server, port, health, service_names)
    await handle.set_serving(True)
    return handle


def start_metrics(listen: str) -> None:
    """Serve Prometheus metrics on "host:port" (empty = off)."""
    if not listen:
        return
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1")


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop_event)` on a fresh event loop; SIGINT/SIGTERM set the event.

    The services keep large, long-lived object graphs (books, balances, orders): with CPython's
    default thresholds the cyclic collector keeps walking them, in pauses that grow with the state.
    Young collections are made rarer and the objects alive after start-up are frozen out of it."""
    gc.set_threshold(50_000, 50, 100)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gc.freeze()
        await main(stop)

    asyncio.run(runner())


def register_service(
    server: Any,  # a grpc.aio.Server, or what start_server hands its registrations
    service: Any,  # google.protobuf.descriptor.ServiceDescriptor
    servicer: Any,
    *,
    raw_responses: Iterable[str] = (),
) -> None:
    """Register `servicer` for every method of `service`, like the generated add_*_to_server.

    Methods named in `raw_responses` return (or stream) already-serialized response bytes, so a
    server that stores serialized messages (the event logs) sends them without parsing them again.
    """
    from google.protobuf import message_factory

    raw = set(raw_responses)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        serializer: Callable[[Any], bytes] = _identity if method.name in raw else resp_cls.SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            factory = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming:
            factory = grpc.stream_unary_rpc_method_handler
        elif method.server_streaming:
            factory = grpc.unary_stream_rpc_method_handler
        else:
            factory = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = factory(
            behaviour, request_deserializer=req_cls.FromString, response_serializer=serializer
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _identity(data: bytes) -> bytes:
    return data
