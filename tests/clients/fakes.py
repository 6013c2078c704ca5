"""In-process fake services for the client library's tests: aio gRPC servers on ephemeral loopback
ports, in the test's own event loop.

- Scripted: AccountsService answering by a per-method script (errors with ErrorInfo and RetryInfo as
  the real services send them, via services.common.rpc.abort), counting the calls it got.
- Silent: any method of any service, never answered (deadline tests).
- EventServer: MatchingService.StreamEvents (and AccountsService.StreamAccountEvents) from an event list,
  with knobs to die mid-stream, resend, skip a sequence or answer OUT_OF_RANGE; stop() and start() on
  the same port are a server restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc

from services.common import rpc
from services.common.errors import ExchangeError, OutOfRange


class Script:
    """What one method answers: a list of outcomes consumed one per call (the last one repeats);
    an outcome is an ExchangeError (sent as its status) or a response message."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[float] = []  # time.monotonic() of each call

    async def answer(self, context: Any) -> Any:
        self.calls.append(time.monotonic())
        outcome = self.outcomes[min(len(self.calls) - 1, len(self.outcomes) - 1)]
        if isinstance(outcome, ExchangeError):
            await rpc.abort(context, outcome)
        return outcome


class ScriptedAccounts(agrpc.AccountsServiceServicer):
    def __init__(self, **scripts: Script) -> None:
        self.scripts = scripts

    async def GetBalances(self, request: Any, context: Any) -> Any:
        return await self.scripts["GetBalances"].answer(context)

    async def PlaceOrder(self, request: Any, context: Any) -> Any:
        return await self.scripts["PlaceOrder"].answer(context)

    async def Deposit(self, request: Any, context: Any) -> Any:
        return await self.scripts["Deposit"].answer(context)

    async def CancelOrder(self, request: Any, context: Any) -> Any:
        return await self.scripts["CancelOrder"].answer(context)

    async def GetAccountsStatus(self, request: Any, context: Any) -> Any:
        return await self.scripts["GetAccountsStatus"].answer(context)


async def serve(
    add: Callable[[Any, grpc.aio.Server], None], servicer: Any, port: int = 0
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"cannot bind 127.0.0.1:{port}"
    await server.start()
    return server, f"127.0.0.1:{bound}"


class _Silent(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method of every service: accepted, never answered."""

    def service(self, details: Any) -> Any:
        async def never(request: Any, context: Any) -> Any:
            await asyncio.Event().wait()

        return grpc.unary_unary_rpc_method_handler(never)


async def silent_server() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_Silent()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def matching_events(n: int, source: str = "matching-0") -> list[ev.MatchingEvent]:
    return [ev.MatchingEvent(source=source, sequence=i, market="BTC_USDT") for i in range(1, n + 1)]


class EventServer(mgrpc.MatchingServiceServicer):
    """StreamEvents from `events` (event i has sequence i+1). Knobs:
    - per_response: events per response;
    - die_after: once this many responses were sent in all, the next stream is cut (the server is
      stopped at once: the caller restarts it with start());
    - resend: each stream starts this many events before from_sequence;
    - first_kept: OUT_OF_RANGE (SEQUENCE_OUT_OF_RANGE) for a from_sequence below it;
    - skip: a sequence never sent (a gap);
    - end_after: end every stream normally after this many responses."""

    def __init__(self, events: list[ev.MatchingEvent], *, per_response: int = 7) -> None:
        self.events = events
        self.per_response = per_response
        self.die_after = 0
        self.resend = 0
        self.first_kept = 1
        self.skip = 0
        self.end_after = 0
        self.sent = 0  # responses sent in all
        self.requests: list[int] = []  # from_sequence of every stream
        self.died = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server, address = await serve(mgrpc.add_MatchingServiceServicer_to_server, self, self.port)
        self.port = int(address.rsplit(":", 1)[1])
        self.died.clear()

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop(0)

    async def StreamEvents(self, request: Any, context: Any) -> AsyncIterator[mpb.StreamEventsResponse]:
        start = request.from_sequence or 1
        self.requests.append(start)
        if start < self.first_kept:
            await rpc.abort(
                context,
                OutOfRange(f"events before {self.first_kept} are no longer kept", metadata={"first": "x"}),
            )
        i = max(0, start - 1 - self.resend)
        in_stream = 0
        while i < len(self.events):
            chunk = [e for e in self.events[i : i + self.per_response] if e.sequence != self.skip]
            i += self.per_response
            if self.die_after and self.sent >= self.die_after:
                self.died.set()
                asyncio.get_running_loop().create_task(self.stop())
                await asyncio.Event().wait()
            yield mpb.StreamEventsResponse(events=chunk)
            self.sent += 1
            in_stream += 1
            if self.end_after and in_stream >= self.end_after:
                return
            await asyncio.sleep(0)
        await asyncio.Event().wait()  # like the real shard: the stream stays open for new events


class AccountEventServer(agrpc.AccountsServiceServicer):
    """StreamUserEvents: the events of the accounts source that belong to `user` (sequences with gaps
    between them), from from_sequence on; fails once with UNAVAILABLE after `fail_after` responses."""

    def __init__(self, events: list[ev.AccountEvent], fail_after: int = 0) -> None:
        self.events = events
        self.fail_after = fail_after
        self.requests: list[int] = []

    async def StreamUserEvents(
        self, request: Any, context: Any
    ) -> AsyncIterator[apb.StreamUserEventsResponse]:
        from services.common.errors import Unavailable

        self.requests.append(request.from_sequence)
        mine = [
            e for e in self.events if e.user_id == request.user_id and e.sequence >= request.from_sequence
        ]
        for n, e in enumerate(mine, 1):
            yield apb.StreamUserEventsResponse(events=[e])
            if self.fail_after and n == self.fail_after and len(self.requests) == 1:
                await rpc.abort(context, Unavailable("restarting", retry_after_ms=10))
        await asyncio.Event().wait()
