"""The typed clients' unary calls against in-process fake servers: retries of UNAVAILABLE honour the
server's RetryInfo and are bounded, only safe calls are retried, every unary call of every client has a
deadline, and errors surface their ErrorInfo reason and metadata."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import market_service_pb2 as kpb
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import quantizer_service_pb2 as qpb
from google.protobuf import message_factory

from services.clients import (
    NO_RETRY,
    AccountsClient,
    ClientError,
    HistoryClient,
    MarketClient,
    MatchingClient,
    QuantizerClient,
    RetryPolicy,
    ServiceClient,
)
from services.common.errors import FailedPrecondition, Reason, Unavailable
from tests.clients.fakes import Script, ScriptedAccounts, serve, silent_server

BALANCES = apb.GetBalancesResponse()
PLACED = apb.PlaceOrderResponse(duplicate=True)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


async def accounts_with(**scripts: Script) -> tuple[grpc.aio.Server, AccountsClient]:
    server, address = await serve(agrpc.add_AccountsServiceServicer_to_server, ScriptedAccounts(**scripts))
    return server, AccountsClient.at(address, timeout=5.0)


def test_unavailable_is_retried_after_the_retry_info_delay() -> None:
    async def body() -> None:
        busy = Unavailable("queue full", retry_after_ms=300, reason=Reason.BUSY)
        script = Script(busy, busy, BALANCES)
        server, client = await accounts_with(GetBalances=script)
        try:
            t0 = time.monotonic()
            resp = await client.get_balances(apb.GetBalancesRequest(user_id=1))
            assert resp == BALANCES
            assert len(script.calls) == 3
            gaps = [b - a for a, b in zip(script.calls, script.calls[1:], strict=False)]
            assert all(g >= 0.3 for g in gaps), gaps  # waited at least the server's delay each time
            assert time.monotonic() - t0 >= 0.6
        finally:
            await client.close()
            await server.stop(0)

    run(body)


def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    async def body() -> None:
        script = Script(Unavailable("queue full", retry_after_ms=20, reason=Reason.BUSY))
        server, client = await accounts_with(GetBalances=script)
        try:
            with pytest.raises(ClientError) as info:
                await client.get_balances(apb.GetBalancesRequest(user_id=1))
            assert len(script.calls) == RetryPolicy().max_attempts
            err = info.value
            assert (err.code, err.reason, err.retry_after_ms, err.attempts) == (
                grpc.StatusCode.UNAVAILABLE,
                "BUSY",
                20,
                RetryPolicy().max_attempts,
            )
            # a policy of the call's own: two attempts
            script.calls.clear()
            with pytest.raises(ClientError):
                await client.get_balances(
                    apb.GetBalancesRequest(user_id=1), retry=RetryPolicy(max_attempts=2)
                )
            assert len(script.calls) == 2
        finally:
            await client.close()
            await server.stop(0)

    run(body)


def test_a_retry_that_would_end_past_the_deadline_is_not_made() -> None:
    async def body() -> None:
        script = Script(Unavailable("catching up", retry_after_ms=1500, reason=Reason.SHARD_BEHIND), BALANCES)
        server, client = await accounts_with(GetBalances=script)
        try:
            t0 = time.monotonic()
            with pytest.raises(ClientError) as info:
                await client.get_balances(apb.GetBalancesRequest(user_id=1), timeout=1.0)
            assert info.value.reason == "SHARD_BEHIND" and len(script.calls) == 1
            assert time.monotonic() - t0 < 1.0  # raised at once: the wait would not fit the deadline
        finally:
            await client.close()
            await server.stop(0)

    run(body)


def test_only_calls_safe_to_repeat_are_retried() -> None:
    async def body() -> None:
        busy = Unavailable("queue full", retry_after_ms=10, reason=Reason.BUSY)
        place, deposit, cancel = Script(busy, PLACED), Script(busy, apb.DepositResponse()), Script(busy)
        server, client = await accounts_with(PlaceOrder=place, Deposit=deposit, CancelOrder=cancel)
        try:
            # an order without a client order id: a repeat could place it twice
            with pytest.raises(ClientError) as info:
                await client.place_order(apb.PlaceOrderRequest(user_id=1, market="BTC_USDT"))
            assert info.value.code == grpc.StatusCode.UNAVAILABLE and len(place.calls) == 1
            # with one, accounts answers a repeat with the same order
            place.calls.clear()
            assert await client.place_order(apb.PlaceOrderRequest(user_id=1, client_order_id="c1")) == PLACED
            assert len(place.calls) == 2
            with pytest.raises(ClientError):
                await client.deposit(apb.DepositRequest(user_id=1, asset="USDT", amount="1"))
            assert len(deposit.calls) == 1
            deposit.calls.clear()
            await client.deposit(apb.DepositRequest(user_id=1, asset="USDT", amount="1", business_id="tx"))
            assert len(deposit.calls) == 2
            with pytest.raises(ClientError):
                await client.cancel_order(apb.CancelOrderRequest(user_id=1, order_id=5))
            assert len(cancel.calls) == 1
            # NO_RETRY turns retries off for a safe call too
            deposit.calls.clear()
            deposit.outcomes = [busy]
            with pytest.raises(ClientError):
                await client.deposit(apb.DepositRequest(business_id="tx2"), retry=NO_RETRY)
            assert len(deposit.calls) == 1
        finally:
            await client.close()
            await server.stop(0)

    run(body)


def test_errors_carry_the_reason_and_metadata() -> None:
    async def body() -> None:
        refusal = FailedPrecondition(
            "insufficient USDT: available 1.5 USDT, needed 2 USDT",
            Reason.INSUFFICIENT_BALANCE,
            metadata={"asset": "USDT", "available": "1.5"},
        )
        server, client = await accounts_with(PlaceOrder=Script(refusal))
        try:
            with pytest.raises(ClientError) as info:
                await client.place_order(apb.PlaceOrderRequest(user_id=1, client_order_id="c"))
            err = info.value
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION
            assert err.reason == "INSUFFICIENT_BALANCE"
            assert err.metadata == {"asset": "USDT", "available": "1.5"}
            assert err.message == "insufficient USDT: available 1.5 USDT, needed 2 USDT"
            assert err.retry_after_ms is None and err.attempts == 1
            assert (err.service, err.method, err.address) == ("accounts", "PlaceOrder", client.address)
            assert "INSUFFICIENT_BALANCE" in str(err)
        finally:
            await client.close()
            await server.stop(0)
        # nobody listens: UNAVAILABLE without a reason (not from the exchange), after the retries
        dead = AccountsClient.at(server_address_of_nobody(), timeout=3.0)
        try:
            with pytest.raises(ClientError) as info:
                await dead.get_balances(apb.GetBalancesRequest(user_id=1))
            assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.reason == ""
            assert info.value.attempts == RetryPolicy().max_attempts
        finally:
            await dead.close()

    run(body)


def server_address_of_nobody() -> str:
    from tests.cluster import free_port

    return f"127.0.0.1:{free_port()}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


CLIENTS: list[tuple[type[ServiceClient], Any]] = [
    (AccountsClient, apb.DESCRIPTOR.services_by_name["AccountsService"]),
    (MatchingClient, mpb.DESCRIPTOR.services_by_name["MatchingService"]),
    (HistoryClient, hpb.DESCRIPTOR.services_by_name["HistoryService"]),
    (MarketClient, kpb.DESCRIPTOR.services_by_name["MarketService"]),
    (QuantizerClient, qpb.DESCRIPTOR.services_by_name["QuantizerService"]),
]


def test_every_unary_call_of_every_client_has_a_deadline() -> None:
    """A server that accepts every call and never answers: each unary method of each client (all of
    the service's unary RPCs, found from its descriptor) fails with DEADLINE_EXCEEDED, by the client's
    default deadline and by a deadline given to the call."""

    async def body() -> None:
        server, address = await silent_server()
        try:
            calls: list[tuple[str, Awaitable[Any]]] = []
            clients = []
            for kind, service in CLIENTS:
                client = kind.at(address, timeout=0.3)
                clients.append(client)
                for method in service.methods:
                    if method.client_streaming or method.server_streaming:
                        continue
                    fn = getattr(client, _snake(method.name), None)
                    assert fn is not None, f"{kind.__name__} has no {_snake(method.name)} for {method.name}"
                    request = message_factory.GetMessageClass(method.input_type)()
                    calls.append((f"{kind.__name__}.{method.name}", fn(request)))
                    calls.append((f"{kind.__name__}.{method.name} timeout=0.2", fn(request, timeout=0.2)))
            assert len(calls) >= 2 * 25
            t0 = time.monotonic()
            results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
            elapsed = time.monotonic() - t0
            for (name, _), result in zip(calls, results, strict=True):
                assert isinstance(result, ClientError), (name, result)
                assert result.code == grpc.StatusCode.DEADLINE_EXCEEDED, (name, result)
            assert elapsed < 5.0  # bounded by the deadlines (0.3 s), not by the server
            for client in clients:
                await client.close()
        finally:
            await server.stop(0)

    run(body)


def test_a_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AccountsClient.at("127.0.0.1:1", timeout=0)


def test_retry_delays() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3, jitter=0.5)
    assert policy.delay(1, 250, lambda: 0.0) == 0.25  # the server's delay
    assert policy.delay(1, 250, lambda: 1.0) == 0.375  # stretched by jitter, never shortened
    assert [policy.delay(n, None, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert policy.delay(5, None) is None  # attempts used up
    assert policy.delay(1, 60_000) is None  # longer than max_retry_after_s: not waited for
