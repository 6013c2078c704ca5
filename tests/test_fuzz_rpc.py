"""Fuzzing every RPC of every service with random and adversarial field values (hypothesis).

Against a real exchange (accounts, matching, history, market, quantizer and gateway processes; the
gateway's gRPC service is GatewayAdminService, its API keys), every method of every service is called
with requests built from its descriptor: integers at and past every boundary (0, 2**63-1, 2**63,
2**64-1, negatives), strings that are empty, huge, non-decimal ("NaN", "1e5", "-1"), control characters
and emoji, unknown enum values, random oneofs and repeated fields.
Asserted for each call:
- it answers within a deadline with a documented status (OK or one of the refusals below; never
  UNKNOWN or INTERNAL), and every refusal carries a google.rpc.ErrorInfo reason;
- an error message never echoes a long input (at most a short prefix);
- when the accounts journal did not advance, its state hash did not change (a rejected call changes
  nothing), and the balance invariant holds after every call; a refused GatewayAdminService call leaves
  the gateway's API keys (all of them, revoked ones too) as they were;
- each service is still up and SERVING at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import gateway_service_pb2 as gpb
from exchange.v1 import gateway_service_pb2_grpc as ggrpc
from exchange.v1 import (
    history_service_pb2,  # noqa: F401 - registers the descriptors
    market_service_pb2,  # noqa: F401
    matching_service_pb2,
    quantizer_service_pb2,  # noqa: F401
)
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.rpc import error_reason
from tests.cluster import Cluster, assert_invariants

pytestmark = pytest.mark.slow

SERVICES = {
    "AccountsService": "accounts-0",
    "MatchingService": "matching-0",
    "HistoryService": "history",
    "MarketService": "market",
    "QuantizerService": "quantizer-0",
    "GatewayAdminService": "gateway",
}
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
HUGE = "9" * 200_000
U64 = [0, 1, 2, 100, 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]
I64 = [0, 1, -1, -(2**63), 2**63 - 1, 2**31, 1_000_000_000_000_000]
STRINGS = [
    "",
    "BTC_USDT",
    "ETH_BTC",
    "USDT",
    "BTC",
    "1",
    "0.5",
    "30000",
    "0.00001",
    "0",
    "NaN",
    "inf",
    "-1",
    "1e5",
    " 1",
    "1.0000000000000000001",
    "99999999999999999999999",
    "1m",
    "1h",
    "\x00\x01",
    "💥",
    "x" * 65,
    "b" * 10_000,
    HUGE,
]
ACTIONS = ["SubmitCommands"]  # peer-only: fuzzed as a non-peer (must be refused), see the test below


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(STRINGS), st.text(max_size=40))


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.one_of(st.sampled_from(U64), st.integers(0, 2**64 - 1))
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(I64), st.integers(-(2**63), 2**63 - 1))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.one_of(
            st.sampled_from([0, 1, 20, 1000, 1001, 100_000, 2**32 - 1]), st.integers(0, 2**32 - 1)
        )
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    return strings()


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = message_factory.GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    candidates = [f for f in desc.fields]

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
        msg = cls()
        chosen = (
            draw(st.lists(st.sampled_from(candidates), max_size=len(candidates), unique=True))
            if (candidates)
            else []
        )
        for f in chosen:
            if f.is_repeated:
                if f.message_type is not None and f.message_type.GetOptions().map_entry:
                    continue
                values = draw(st.lists(field_values(f, depth), max_size=3))
                target = getattr(msg, f.name)
                if f.type == FieldDescriptor.TYPE_MESSAGE:
                    for v in values:
                        target.add().CopyFrom(v)
                else:
                    target.extend(values)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, f.name).CopyFrom(draw(field_values(f, depth)))
            else:
                setattr(msg, f.name, draw(field_values(f, depth)))
        return msg

    return build()


def all_methods() -> list[tuple[str, MethodDescriptor]]:
    pool = descriptor_pool.Default()
    out = []
    for service in SERVICES:
        for m in pool.FindServiceByName(f"exchange.v1.{service}").methods:
            if m.name not in ACTIONS:
                out.append((service, m))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path_factory.mktemp("fuzz"),
        with_history=True,
        with_market=True,
        with_quantizer=True,
        with_gateway=True,
    )
    c.start()
    wallet = agrpc.AccountsServiceStub(c.channel("accounts-0", "wallet"))
    for user, asset, amount in ((1, "USDT", "1000000"), (2, "BTC", "100"), (3, "ETH", "1000")):
        wallet.Deposit(
            apb.DepositRequest(
                user_id=user, asset=asset, amount=amount, business="chain", business_id=f"fuzz-{user}"
            ),
            timeout=5,
        )
    yield c
    for name in c.procs:
        health = health_pb2_grpc.HealthStub(c.anonymous_channel(name))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1, f"{name} not SERVING"
        assert c.procs[name].poll() is None, f"{name} died:\n{c.log(name)[-3000:]}"
    c.stop()


def accounts_state(c: Cluster) -> tuple[int, str, Any]:
    st_ = c.accounts.GetAccountsStatus(
        apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True), timeout=10
    )
    return st_.applied_sequence, st_.state_hash, st_


def gateway_keys(c: Cluster) -> list[Any]:
    """Every API key of the gateway, revoked ones too (user_id 0: all users)."""
    stub = ggrpc.GatewayAdminServiceStub(c.channel("gateway"))
    return list(stub.ListApiKeys(gpb.ListApiKeysRequest(include_revoked=True), timeout=10).keys)


def call_once(c: Cluster, service: str, method: MethodDescriptor, request: Any) -> grpc.StatusCode:
    """Calls as admin; returns the status. Streams: the first response (or end) within a deadline;
    a stream that is still open and waiting at its deadline answered correctly (it follows)."""
    path = f"/exchange.v1.{service}/{method.name}"
    resp_cls = message_factory.GetMessageClass(method.output_type)
    ch = c.channel(SERVICES[service])
    kwargs = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": resp_cls.FromString,
    }
    started = time.monotonic()
    try:
        if method.client_streaming:
            call = ch.stream_stream(path, **kwargs)(iter([request]), timeout=2)
            next(iter(call), None)
        elif method.server_streaming:
            call = ch.unary_stream(path, **kwargs)(request, timeout=2)
            next(iter(call), None)
        else:
            ch.unary_unary(path, **kwargs)(request, timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return grpc.StatusCode.OK  # a follow stream waiting for new events
        assert code in DOCUMENTED, f"{path}: {code} {err.details()!r} for {request!r:.300}"  # type: ignore[attr-defined]
        assert error_reason(err), f"{path}: {code} without an ErrorInfo reason"
        details = err.details() or ""  # type: ignore[attr-defined]
        assert len(details) < 1000, f"{path}: the error echoes {len(details)} characters"
        return code
    finally:
        assert time.monotonic() - started < 15, f"{path} took {time.monotonic() - started:.1f}s"


METHODS = all_methods()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_fuzz_method(cluster: Cluster, service: str, method: MethodDescriptor) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=messages(method.input_type))
    def run(request: Any) -> None:
        seq0, hash0, _ = accounts_state(cluster)
        keys0 = gateway_keys(cluster) if service == "GatewayAdminService" else []
        code = call_once(cluster, service, method, request)
        seq1, hash1, status = accounts_state(cluster)
        if seq1 == seq0:
            assert hash1 == hash0, f"{method.name} ({code}) changed the accounts state without journaling"
        assert_invariants(status)
        if service == "GatewayAdminService" and code != grpc.StatusCode.OK:
            assert gateway_keys(cluster) == keys0, f"a refused {method.name} ({code}) changed the API keys"

    run()


def test_fuzz_matching_commands_from_non_peers(cluster: Cluster) -> None:
    """SubmitCommands is for accounts peers only: random command streams from anybody else are refused
    and change nothing."""
    desc = descriptor_pool.Default().FindMessageTypeByName("exchange.v1.SubmitCommandsRequest")

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(request=messages(desc), principal=st.sampled_from(["admin", "trader", "reader", "wallet"]))
    def run(request: Any, principal: str) -> None:
        before = cluster.matching().GetMatchingStatus(
            matching_service_pb2.GetMatchingStatusRequest(with_state_hash=True), timeout=5
        )
        ch = cluster.channel("matching-0", principal)
        call = ch.stream_stream(
            "/exchange.v1.MatchingService/SubmitCommands",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=matching_service_pb2.SubmitCommandsResponse.FromString,
        )(iter([request]), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call), None)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        after = cluster.matching().GetMatchingStatus(
            matching_service_pb2.GetMatchingStatusRequest(with_state_hash=True), timeout=5
        )
        if after.applied_sequence == before.applied_sequence:
            assert after.state_hash == before.state_hash

    run()
