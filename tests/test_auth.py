"""Authentication and authorization of every gRPC caller, against real processes."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import events_pb2 as ev
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import history_service_pb2_grpc as hgrpc
from exchange.v1 import market_service_pb2 as kpb
from exchange.v1 import market_service_pb2_grpc as kgrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from exchange.v1 import types_pb2
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import ACCESS, Role, TokenVerifier, ensure_credentials, load_credentials
from services.common.rpc import error_reason
from tests.cluster import Cluster

pytestmark = pytest.mark.slow

SERVICES = ["AccountsService", "MatchingService", "HistoryService", "MarketService", "QuantizerService"]


def test_every_method_of_every_service_has_roles() -> None:
    import exchange.v1.quantizer_service_pb2  # noqa: F401 - registers the descriptor

    pool = descriptor_pool.Default()
    for name in SERVICES:
        service = pool.FindServiceByName(f"exchange.v1.{name}")
        for method in service.methods:
            path = f"/exchange.v1.{name}/{method.name}"
            assert path in ACCESS, f"{path} has no roles in services.common.auth.ACCESS"
    # Only accounts peers may submit matching commands; deposits only by the wallet and admin.
    assert ACCESS["/exchange.v1.MatchingService/SubmitCommands"] == {Role.PEER}
    assert ACCESS["/exchange.v1.AccountsService/Deposit"] == {Role.ADMIN, Role.WALLET}
    # The quantizer role: all a trader may, plus the all-users accounts reads its feed follows.
    for path, roles in ACCESS.items():
        if Role.TRADER in roles:
            assert Role.QUANTIZER in roles, path
    for m in ("StreamAccountEvents", "GetAccountsStatus"):
        roles = ACCESS[f"/exchange.v1.AccountsService/{m}"]
        assert Role.QUANTIZER in roles and Role.TRADER not in roles
    assert Role.QUANTIZER not in ACCESS["/exchange.v1.AccountsService/Deposit"]


def test_credentials_file_is_private_and_stable(tmp_path: Any) -> None:
    path = tmp_path / "secrets" / "credentials.json"
    first = ensure_credentials(path, ["accounts-0"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    again = ensure_credentials(path, ["accounts-0", "accounts-1"])  # a new peer is added, nothing else
    assert again.token("admin") == first.token("admin")
    assert again.page_token_key == first.page_token_key and len(first.page_token_key) == 32
    assert again.principals["accounts-1"][0] == Role.PEER
    assert load_credentials(path).token("accounts-1") == again.token("accounts-1")
    verifier = again.verifier()
    assert verifier.principal(again.token("wallet")).role == Role.WALLET  # type: ignore[union-attr]
    assert verifier.principal("exk_forged") is None
    assert verifier.principal(again.token("quantizer")).role == Role.QUANTIZER  # type: ignore[union-attr]
    assert verifier.from_metadata([("authorization", "Basic " + again.token("admin"))]) is None


def test_a_stored_quantizer_trader_role_is_upgraded(tmp_path: Any) -> None:
    # Credentials generated when the quantizer was a trader: the role follows the code, the token stays.
    import json

    path = tmp_path / "secrets" / "credentials.json"
    first = ensure_credentials(path)
    data = json.loads(path.read_text())
    data["principals"]["quantizer"]["role"] = "trader"
    path.write_text(json.dumps(data))
    again = ensure_credentials(path)
    assert again.principals["quantizer"] == (Role.QUANTIZER, first.token("quantizer"))
    assert load_credentials(path).principals["quantizer"][0] == Role.QUANTIZER


def test_verifier_keeps_no_tokens() -> None:
    v = TokenVerifier({"admin": (Role.ADMIN, "exk_secret-token")})
    assert "exk_secret-token" not in repr(vars(v))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("auth"), with_history=True, with_market=True)
    c.start()
    yield c
    c.stop()


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            for _ in result:  # a stream: the refusal comes with the first read
                pass
    err = info.value
    return err.code(), error_reason(err)  # type: ignore[attr-defined]


UNARY_PROBES: dict[str, Callable[[grpc.Channel], Any]] = {
    "accounts": lambda ch: agrpc.AccountsServiceStub(ch).GetBalances(
        apb.GetBalancesRequest(user_id=1), timeout=5
    ),
    "matching-0": lambda ch: mgrpc.MatchingServiceStub(ch).GetMatchingStatus(
        mpb.GetMatchingStatusRequest(), timeout=5
    ),
    "history": lambda ch: hgrpc.HistoryServiceStub(ch).GetHistoryStatus(
        hpb.GetHistoryStatusRequest(), timeout=5
    ),
    "market": lambda ch: kgrpc.MarketServiceStub(ch).GetMarketDataStatus(
        kpb.GetMarketDataStatusRequest(), timeout=5
    ),
}
ADDRESS = {"accounts": "accounts-0", "matching-0": "matching-0", "history": "history", "market": "market"}


@pytest.mark.parametrize("service", sorted(UNARY_PROBES))
def test_unauthenticated_calls_are_refused(cluster: Cluster, service: str) -> None:
    probe = UNARY_PROBES[service]
    name = ADDRESS[service]
    assert refused(lambda: probe(cluster.anonymous_channel(name))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )
    # A forged token is no better than none.
    forged = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
        grpc.access_token_call_credentials("exk_forged"),
    )
    with grpc.secure_channel(cluster.addresses[name], forged) as ch:
        assert refused(lambda: probe(ch))[0] == grpc.StatusCode.UNAUTHENTICATED
    # The same call with credentials of an allowed role works; health stays public.
    probe(cluster.channel(name, "admin"))
    health = health_pb2_grpc.HealthStub(cluster.anonymous_channel(name))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1


def test_unauthenticated_streams_are_refused(cluster: Cluster) -> None:
    anon = cluster.anonymous_channel("accounts-0")
    code, reason = refused(
        lambda: agrpc.AccountsServiceStub(anon).StreamAccountEvents(
            apb.StreamAccountEventsRequest(from_sequence=1), timeout=5
        )
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    code, _ = refused(
        lambda: mgrpc.MatchingServiceStub(cluster.anonymous_channel("matching-0")).StreamEvents(
            mpb.StreamEventsRequest(from_sequence=1), timeout=5
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def deposit_request(user: int = 7) -> apb.DepositRequest:
    return apb.DepositRequest(user_id=user, asset="USDT", amount="10", business="chain", business_id="auth-1")


def place_request(user: int = 7) -> apb.PlaceOrderRequest:
    return apb.PlaceOrderRequest(
        user_id=user,
        market="BTC_USDT",
        side=types_pb2.SIDE_BUY,
        type=types_pb2.ORDER_TYPE_LIMIT,
        price="1",
        amount="5",
    )


WRONG_ROLE: list[tuple[str, str, Callable[[grpc.Channel], Any]]] = [
    # (principal, service, call): each refused with PERMISSION_DENIED / ROLE_NOT_ALLOWED
    ("trader", "accounts-0", lambda ch: agrpc.AccountsServiceStub(ch).Deposit(deposit_request(), timeout=5)),
    ("reader", "accounts-0", lambda ch: agrpc.AccountsServiceStub(ch).Withdraw(deposit_request(), timeout=5)),
    ("reader", "accounts-0", lambda ch: agrpc.AccountsServiceStub(ch).PlaceOrder(place_request(), timeout=5)),
    ("wallet", "accounts-0", lambda ch: agrpc.AccountsServiceStub(ch).PlaceOrder(place_request(), timeout=5)),
    (
        "quantizer",
        "accounts-0",
        lambda ch: agrpc.AccountsServiceStub(ch).Deposit(deposit_request(), timeout=5),
    ),
    (
        "trader",
        "accounts-0",
        lambda ch: next(
            iter(
                agrpc.AccountsServiceStub(ch).StreamAccountEvents(
                    apb.StreamAccountEventsRequest(from_sequence=1), timeout=5
                )
            )
        ),
    ),
    (
        "trader",
        "accounts-0",
        lambda ch: agrpc.AccountsServiceStub(ch).GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=5),
    ),
    (
        "trader",
        "matching-0",
        lambda ch: mgrpc.MatchingServiceStub(ch).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5),
    ),
    (
        "wallet",
        "history",
        lambda ch: hgrpc.HistoryServiceStub(ch).ListUserTrades(
            hpb.ListUserTradesRequest(user_id=7), timeout=5
        ),
    ),
    (
        "trader",
        "market",
        lambda ch: kgrpc.MarketServiceStub(ch).GetMarketDataStatus(
            kpb.GetMarketDataStatusRequest(), timeout=5
        ),
    ),
]


@pytest.mark.parametrize(("principal", "service", "call"), WRONG_ROLE)
def test_calls_outside_the_role_are_refused(
    cluster: Cluster, principal: str, service: str, call: Callable[[grpc.Channel], Any]
) -> None:
    assert refused(lambda: call(cluster.channel(service, principal))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


def test_roles_allow_what_they_are_for(cluster: Cluster) -> None:
    wallet = agrpc.AccountsServiceStub(cluster.channel("accounts-0", "wallet"))
    assert wallet.Deposit(deposit_request(user=8), timeout=5).balance.available == "10"
    trader = agrpc.AccountsServiceStub(cluster.channel("accounts-0", "trader"))
    order = trader.PlaceOrder(place_request(user=8), timeout=5).order
    assert order.order_id > 0
    reader = agrpc.AccountsServiceStub(cluster.channel("accounts-0", "reader"))
    assert reader.GetOrder(apb.GetOrderRequest(user_id=8, order_id=order.order_id), timeout=5).order.order_id
    trader.CancelOrder(apb.CancelOrderRequest(user_id=8, order_id=order.order_id), timeout=5)
    # The quantizer reads every user's accounts events and status as itself, and trades like a trader.
    quantizer = agrpc.AccountsServiceStub(cluster.channel("accounts-0", "quantizer"))
    assert quantizer.GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=5).event_sequence > 0
    first = next(
        iter(quantizer.StreamAccountEvents(apb.StreamAccountEventsRequest(from_sequence=1), timeout=5))
    )
    assert first is not None
    assert quantizer.GetBalances(apb.GetBalancesRequest(user_id=8), timeout=5) is not None


def forged_submit(channel: grpc.Channel, source: str) -> Any:
    cmd = ev.MatchingCommand(source=source, source_sequence=1_000_000)
    cmd.place_order.order_id = 424242
    cmd.place_order.user_id = 7
    cmd.place_order.market = "BTC_USDT"
    stub = mgrpc.MatchingServiceStub(channel)
    requests = iter([mpb.SubmitCommandsRequest(source=source), mpb.SubmitCommandsRequest(commands=[cmd])])
    return stub.SubmitCommands(requests, timeout=5)


def test_forged_matching_commands_are_refused(cluster: Cluster) -> None:
    # Field report: a forged SubmitCommands for an unknown order id made a trade, and a forged source
    # "accounts-0" with source_sequence 1000000 made matching ignore every real command after it.
    for principal in ("admin", "trader", "reader", "wallet"):
        code, reason = refused(
            lambda p=principal: forged_submit(cluster.channel("matching-0", p), "accounts-0")
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), principal
    assert refused(lambda: forged_submit(cluster.anonymous_channel("matching-0"), "accounts-0"))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    # A peer may submit only as itself.
    code, reason = refused(lambda: forged_submit(cluster.channel("matching-0", "accounts-0"), "accounts-1"))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "SOURCE_NOT_ALLOWED")
    status = cluster.matching().GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
    assert status.source_sequences.get("accounts-0", 0) < 1_000_000
    assert "accounts-1" not in status.source_sequences
    # Real orders still flow after the attempts.
    wallet = agrpc.AccountsServiceStub(cluster.channel("accounts-0", "wallet"))
    wallet.Deposit(deposit_request(user=9), timeout=5)
    trader = agrpc.AccountsServiceStub(cluster.channel("accounts-0", "trader"))
    order = trader.PlaceOrder(place_request(user=9), timeout=5).order
    cluster.wait_quiet()
    got = trader.GetOrder(apb.GetOrderRequest(user_id=9, order_id=order.order_id), timeout=5).order
    assert got.status == types_pb2.ORDER_STATUS_OPEN


def test_tls_cluster(tmp_path: Any) -> None:
    """Across machines the same credentials ride on TLS (CA and certificate generated on first run)."""
    c = Cluster(tmp_path, transport="tls")
    try:
        c.start()
        assert (c.config.data_dir / "secrets" / "tls" / "ca.pem").exists()
        wallet = agrpc.AccountsServiceStub(c.channel("accounts-0", "wallet"))
        assert wallet.Deposit(deposit_request(), timeout=5).balance.available == "10"
        trader = agrpc.AccountsServiceStub(c.channel("accounts-0", "trader"))
        trader.PlaceOrder(place_request(), timeout=5)
        c.wait_quiet()  # accounts forwarded the order to matching over TLS
        # A plaintext client cannot talk to a TLS server at all.
        with grpc.insecure_channel(c.addresses["accounts-0"]) as plain:
            with pytest.raises(grpc.RpcError) as info:
                agrpc.AccountsServiceStub(plain).ListMarkets(apb.ListMarketsRequest(), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # TLS without a token is still refused.
        tls_only = grpc.ssl_channel_credentials(root_certificates=c.security().tls_ca)
        with grpc.secure_channel(c.addresses["accounts-0"], tls_only) as ch:
            assert refused(
                lambda: agrpc.AccountsServiceStub(ch).ListMarkets(apb.ListMarketsRequest(), timeout=5)
            ) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    finally:
        c.stop()
