"""Sub-accounts and Transfer through the real processes (accounts, a matching shard, history): the client
library's open_sub_account / list_sub_accounts / transfer, roles, precise refusals over gRPC, orders of a
sub-account settling on it only, the invariant (GetAccountsStatus audit), ListBalanceHistory showing
transfers, a kill -9 of accounts keeping sub-accounts and transfer ids, and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2, types_pb2
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import history_service_pb2_grpc as hgrpc
from exchange.v1 import matching_service_pb2 as mpb

from services import cli
from services.clients import AccountsClient, ClientError
from services.common.limits import SUB_ACCOUNT_BASE
from services.common.rpc import error_reason
from tests.cluster import Cluster, assert_invariants

pytestmark = pytest.mark.slow

T = TypeVar("T")
OWNER, OTHER = 501, 502


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("subaccounts"), with_history=True)
    c.start()
    for user, asset, amount in ((OWNER, "USDT", "100000"), (OWNER, "BTC", "1"), (OTHER, "BTC", "10")):
        c.accounts.Deposit(
            apb.DepositRequest(
                user_id=user, asset=asset, amount=amount, business="chain", business_id=f"{user}-{asset}"
            )
        )
    yield c
    c.stop()


def call(c: Cluster, body: Callable[[AccountsClient], Awaitable[T]], principal: str = "admin") -> T:
    """`body` with a typed AccountsClient of the cluster (services.clients), in a fresh event loop."""

    async def main() -> T:
        async with c.client("accounts-0", principal) as accounts:
            return await body(accounts)

    return asyncio.run(main())


def client_error(
    c: Cluster, body: Callable[[AccountsClient], Awaitable[Any]], principal: str = "admin"
) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(c, body, principal)
    return info.value


def balance(c: Cluster, user: int, asset: str) -> tuple[str, str]:
    b = c.accounts.GetBalances(apb.GetBalancesRequest(user_id=user, assets=[asset])).balances[0]
    return b.available, b.frozen


def test_open_list_and_transfer_through_the_client_library(cluster: Cluster) -> None:
    c = cluster
    opened = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="grid-btc"))
    )
    sub = opened.sub_account
    assert sub.user_id > SUB_ACCOUNT_BASE and sub.owner_user_id == OWNER and sub.label == "grid-btc"
    assert not opened.duplicate and opened.sequence > 0
    again = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="grid-btc"))
    )
    assert again.duplicate and again.sub_account == sub and again.sequence == opened.sequence
    second = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="dca-eth"))
    ).sub_account
    assert second.user_id == sub.user_id + 1
    listed = call(c, lambda a: a.list_sub_accounts(apb.ListSubAccountsRequest(owner_user_id=OWNER)))
    assert [s.label for s in listed.sub_accounts][:2] == ["grid-btc", "dca-eth"]
    page = call(
        c, lambda a: a.list_sub_accounts(apb.ListSubAccountsRequest(owner_user_id=OWNER, page_size=1))
    )
    assert [s.user_id for s in page.sub_accounts] == [sub.user_id] and page.next_page_token
    rest = call(
        c,
        lambda a: a.list_sub_accounts(
            apb.ListSubAccountsRequest(owner_user_id=OWNER, page_size=1, page_token=page.next_page_token)
        ),
    )
    assert [s.user_id for s in rest.sub_accounts] == [second.user_id]

    moved = call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OWNER,
                to_user_id=sub.user_id,
                asset="USDT",
                amount="2500.5",
                transfer_id="api-alloc-1",
            )
        ),
    )
    assert not moved.duplicate and moved.sequence > opened.sequence
    assert (moved.from_balance.asset, moved.from_balance.available) == ("USDT", "97499.5")
    assert moved.to_balance.available == "2500.5"
    assert balance(c, sub.user_id, "USDT") == ("2500.5", "0")
    repeat = call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OWNER,
                to_user_id=sub.user_id,
                asset="USDT",
                amount="2500.5",
                transfer_id="api-alloc-1",
            )
        ),
    )
    assert repeat.duplicate and repeat.sequence == moved.sequence and repeat.to_balance == moved.to_balance
    assert balance(c, sub.user_id, "USDT") == ("2500.5", "0")  # applied once
    back = call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=sub.user_id,
                to_user_id=OWNER,
                asset="USDT",
                amount="0.5",
                transfer_id="api-return-1",
            )
        ),
    )
    assert back.from_balance.available == "2500" and back.to_balance.available == "97500"
    # The sub-account's own event stream shows both transfers.
    stream = c.accounts.StreamUserEvents(apb.StreamUserEventsRequest(user_id=sub.user_id, from_sequence=1))
    seen: list[tuple[int, str, int]] = []
    for resp in stream:
        seen += [
            (e.balance_changed.business, e.balance_changed.business_id, e.balance_changed.available_delta)
            for e in resp.events
            if e.user_id == sub.user_id
        ]
        if len(seen) >= 2:
            break
    stream.cancel()
    assert seen == [
        (events_pb2.BALANCE_BUSINESS_TRANSFER_IN, "api-alloc-1", 2_500_5 * 10**7),
        (events_pb2.BALANCE_BUSINESS_TRANSFER_OUT, "api-return-1", -5 * 10**7),
    ]
    assert_invariants(c.wait_quiet())


def test_roles(cluster: Cluster) -> None:
    c = cluster
    sub = call(
        c,
        lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="roles")),
        "trader",
    ).sub_account
    call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OWNER, to_user_id=sub.user_id, asset="USDT", amount="1", transfer_id="roles-1"
            )
        ),
        "trader",
    )
    assert call(
        c, lambda a: a.list_sub_accounts(apb.ListSubAccountsRequest(owner_user_id=OWNER)), "reader"
    ).sub_accounts
    for principal in ("reader", "wallet"):
        err = client_error(
            c,
            lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="nope")),
            principal,
        )
        assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "ROLE_NOT_ALLOWED"
        err = client_error(
            c,
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER,
                    to_user_id=sub.user_id,
                    asset="USDT",
                    amount="1",
                    transfer_id="roles-2",
                )
            ),
            principal,
        )
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert (
        call(c, lambda a: a.list_sub_accounts(apb.ListSubAccountsRequest(owner_user_id=OWNER)))
        .sub_accounts[-1]
        .label
        == "roles"
    )  # nothing opened


def test_refusals_carry_precise_reasons(cluster: Cluster) -> None:
    c = cluster
    mine = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="refusals"))
    ).sub_account.user_id
    theirs = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OTHER, label="refusals"))
    ).sub_account.user_id
    call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OWNER, to_user_id=mine, asset="USDT", amount="10", transfer_id="ref-seed"
            )
        ),
    )
    before = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True))
    cases: list[tuple[Callable[[AccountsClient], Awaitable[Any]], grpc.StatusCode, str]] = [
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=theirs, asset="USDT", amount="1", transfer_id="r1"
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TRANSFER_NOT_ALLOWED",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=OTHER, asset="USDT", amount="1", transfer_id="r1"
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "TRANSFER_NOT_ALLOWED",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER,
                    to_user_id=SUB_ACCOUNT_BASE + 10**6,
                    asset="USDT",
                    amount="1",
                    transfer_id="r1",
                )
            ),
            grpc.StatusCode.NOT_FOUND,
            "SUB_ACCOUNT_NOT_FOUND",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=mine, to_user_id=OWNER, asset="USDT", amount="10.00000001", transfer_id="r1"
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "INSUFFICIENT_BALANCE",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=mine, asset="USDT", amount="1", transfer_id="ref-seed"
                )
            ),
            grpc.StatusCode.ALREADY_EXISTS,
            "DUPLICATE_TRANSFER_ID",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=mine, asset="USDT", amount="0", transfer_id="r1"
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_DECIMAL",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=mine, asset="USDT", amount="0.000000001", transfer_id="r1"
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_DECIMAL",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=mine, asset="NOPE", amount="1", transfer_id="r1"
                )
            ),
            grpc.StatusCode.NOT_FOUND,
            "UNKNOWN_ASSET",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=mine, asset="USDT", amount="1", transfer_id=""
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        ),
        (
            lambda a: a.transfer(
                apb.TransferRequest(
                    from_user_id=OWNER, to_user_id=mine, asset="USDT", amount="1", transfer_id="x" * 65
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_TOO_LONG",
        ),
        (
            lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=mine, label="x")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "SUB_ACCOUNT_NOT_ALLOWED",
        ),
        (
            lambda a: a.open_sub_account(
                apb.OpenSubAccountRequest(owner_user_id=SUB_ACCOUNT_BASE + 10**6, label="x")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALUE_OUT_OF_RANGE",
        ),
        (
            lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
        ),
        (
            lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="x" * 65)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_TOO_LONG",
        ),
        (
            lambda a: a.list_sub_accounts(apb.ListSubAccountsRequest(owner_user_id=OWNER, page_token="zz")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        ),
    ]
    for body, code, reason in cases:
        err = client_error(c, body)
        assert (err.code, err.reason) == (code, reason), err
    # Deposit and Withdraw: never to a sub-account, never to an ordinary account from 2^62.
    for rpc in (c.accounts.Deposit, c.accounts.Withdraw):
        req_type = apb.DepositRequest if rpc == c.accounts.Deposit else apb.WithdrawRequest
        for user, code, reason in (
            (mine, grpc.StatusCode.FAILED_PRECONDITION, "SUB_ACCOUNT_NOT_ALLOWED"),
            (SUB_ACCOUNT_BASE + 10**6, grpc.StatusCode.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE"),
            (SUB_ACCOUNT_BASE, grpc.StatusCode.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                rpc(req_type(user_id=user, asset="USDT", amount="1", business="chain", business_id="x"))
            assert info.value.code() == code and error_reason(info.value) == reason
            assert "Transfer" in (info.value.details() or "") or reason != "SUB_ACCOUNT_NOT_ALLOWED"
    after = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True))
    assert (after.applied_sequence, after.state_hash) == (before.applied_sequence, before.state_hash)


def test_orders_of_a_sub_account_settle_on_it_only_and_history_shows_the_transfers(cluster: Cluster) -> None:
    c = cluster
    sub = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OWNER, label="trading"))
    ).sub_account.user_id
    call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OWNER, to_user_id=sub, asset="USDT", amount="31000", transfer_id="trade-alloc"
            )
        ),
    )
    owner_before = (balance(c, OWNER, "USDT"), balance(c, OWNER, "BTC"))
    buy = c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=sub,
            market="BTC_USDT",
            side=types_pb2.SIDE_BUY,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="30000",
            amount="1",
            client_order_id="grid-1",
        )
    ).order
    assert buy.user_id == sub
    c.wait_quiet()
    assert balance(c, sub, "USDT") == ("1000", "30000")
    c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=OTHER,
            market="BTC_USDT",
            side=types_pb2.SIDE_SELL,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price="30000",
            amount="1",
        )
    )
    st = c.wait_quiet()
    assert_invariants(st)
    order = c.accounts.GetOrder(apb.GetOrderRequest(user_id=sub, order_id=buy.order_id)).order
    assert order.status == types_pb2.ORDER_STATUS_FILLED
    assert balance(c, sub, "USDT") == ("1000", "0")
    got = balance(c, sub, "BTC")[0]
    assert 0.99 < float(got) <= 1  # 1 BTC less the maker fee (display only)
    assert (balance(c, OWNER, "USDT"), balance(c, OWNER, "BTC")) == owner_before  # untouched
    assert not c.accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=OWNER)).orders
    call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=sub, to_user_id=OWNER, asset="BTC", amount=got, transfer_id="trade-proceeds"
            )
        ),
    )
    assert balance(c, sub, "BTC") == ("0", "0")

    history = hgrpc.HistoryServiceStub(c.channel("history"))
    _wait_history(c, history)
    entries = history.ListBalanceHistory(hpb.ListBalanceHistoryRequest(user_id=sub, page_size=100)).entries
    mine = [(e.business, e.business_id, e.asset, e.available_change) for e in entries]
    assert ("transfer_in", "trade-alloc", "USDT", "31000") in mine
    assert ("transfer_out", "trade-proceeds", "BTC", f"-{got}") in mine
    owner_side = history.ListBalanceHistory(
        hpb.ListBalanceHistoryRequest(user_id=OWNER, business="transfer_out", page_size=100)
    ).entries
    assert {e.business_id for e in owner_side} >= {"trade-alloc", "api-alloc-1"}
    assert all(e.business == "transfer_out" for e in owner_side)
    trades = history.ListUserTrades(hpb.ListUserTradesRequest(user_id=sub)).trades
    assert [t.order_id for t in trades] == [buy.order_id]


def _wait_history(c: Cluster, history: hgrpc.HistoryServiceStub, timeout: float = 60.0) -> None:
    target = {"accounts-0": c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest()).event_sequence}
    for shard in c.shard_names:
        target[shard] = c.matching(shard).GetMatchingStatus(mpb.GetMatchingStatusRequest()).event_sequence
    deadline = time.monotonic() + timeout
    while True:
        hs = history.GetHistoryStatus(hpb.GetHistoryStatusRequest())
        if all(hs.checkpoints.get(k, 0) >= v for k, v in target.items()):
            return
        assert time.monotonic() < deadline, (dict(hs.checkpoints), target)
        time.sleep(0.1)


def test_sub_accounts_and_transfer_ids_survive_a_kill(cluster: Cluster) -> None:
    c = cluster
    sub = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OTHER, label="survivor"))
    ).sub_account
    moved = call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OTHER,
                to_user_id=sub.user_id,
                asset="BTC",
                amount="0.25",
                transfer_id="survive-1",
            )
        ),
    )
    before = c.wait_quiet()
    hashed = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True)).state_hash
    c.kill("accounts-0")
    c.restart("accounts-0")
    st = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True))
    assert st.applied_sequence == before.applied_sequence and st.state_hash == hashed
    assert_invariants(st)
    again = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OTHER, label="survivor"))
    )
    assert again.duplicate and again.sub_account == sub
    repeat = call(
        c,
        lambda a: a.transfer(
            apb.TransferRequest(
                from_user_id=OTHER,
                to_user_id=sub.user_id,
                asset="BTC",
                amount="0.25",
                transfer_id="survive-1",
            )
        ),
    )
    assert repeat.duplicate and repeat.sequence == moved.sequence
    assert balance(c, sub.user_id, "BTC") == ("0.25", "0")
    fresh = call(
        c, lambda a: a.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=OTHER, label="after-restart"))
    ).sub_account
    assert fresh.user_id > sub.user_id


def _cli(c: Cluster, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config", str(c.config_path), *argv])
    assert code == 0, (argv, out.getvalue(), err.getvalue())
    return out.getvalue()


def test_cli(cluster: Cluster) -> None:
    c = cluster
    opened = _cli(c, "subaccount", "open", str(OWNER), "cli-grid")
    assert opened.startswith("sub-account ") and f"of user {OWNER}: cli-grid" in opened
    sub = int(opened.split()[1])
    assert "(already open)" in _cli(c, "subaccount", "open", str(OWNER), "cli-grid")
    assert f"sub-account {sub} of user {OWNER}: cli-grid" in _cli(c, "subaccount", "list", str(OWNER))
    moved = _cli(c, "transfer", str(OWNER), str(sub), "USDT", "12.5", "--id", "cli-t1")
    assert f"transferred 12.5 USDT from user {OWNER} to user {sub} (transfer cli-t1)" in moved
    assert f"user {sub}: USDT   available 12.5 USDT" in moved
    assert "already applied (transfer cli-t1)" in _cli(
        c, "transfer", str(OWNER), str(sub), "USDT", "12.5", "--id", "cli-t1"
    )
    assert '"duplicate": true' in _cli(
        c, "transfer", str(OWNER), str(sub), "USDT", "12.5", "--id", "cli-t1", "--json"
    )
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config", str(c.config_path), "transfer", str(sub), str(OTHER), "USDT", "1"])
    assert code == cli.EXIT_ERROR and "own sub-accounts" in err.getvalue(), err.getvalue()
