"""`exchange`: a small command line for people.

    exchange run                                   start the whole exchange (embedded defaults)
    exchange markets | assets
    exchange deposit 1 USDT 1000 [--id tx1]        user 1 deposits 1000 USDT (idempotent by --id)
    exchange withdraw 1 USDT 10 --id w1
    exchange balance 1
    exchange buy 1 BTC_USDT 0.01 --price 30000     limit buy (GTC); --tif ioc|fok|gtd, --post-only
    exchange sell 1 BTC_USDT 0.01 --market         market sell
    exchange buy 1 BTC_USDT --quote 100 --market   market buy spending 100 USDT
    exchange cancel 1 <order_id> | exchange cancel-all 1 [--market BTC_USDT]
    exchange amend 1 <order_id> [--price P] [--amount A]
    exchange order 1 <order_id> | exchange orders 1 [--market M]
    exchange depth BTC_USDT [--merge 10] [--limit 20]
    exchange events 1                              follow user 1's order updates, fills, balances
    exchange status
Endpoints come from --config (default deploy/exchange.toml).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from exchange.v1 import types_pb2
from google.protobuf import json_format

from services.common.config import load_config

TIF = {"gtc": 1, "ioc": 2, "fok": 3, "gtd": 4}


def _show(msg: Any) -> None:
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="exchange", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="start every service")
    sub.add_parser("markets")
    sub.add_parser("assets")
    sub.add_parser("status")
    for name in ("deposit", "withdraw"):
        p = sub.add_parser(name)
        p.add_argument("user", type=int)
        p.add_argument("asset")
        p.add_argument("amount")
        p.add_argument("--business", default="cli")
        p.add_argument("--id", default="")
    p = sub.add_parser("balance")
    p.add_argument("user", type=int)
    for name in ("buy", "sell"):
        p = sub.add_parser(name)
        p.add_argument("user", type=int)
        p.add_argument("market")
        p.add_argument("amount", nargs="?", default="")
        p.add_argument("--price", default="")
        p.add_argument("--quote", default="", help="market buy budget")
        p.add_argument("--market", dest="is_market", action="store_true")
        p.add_argument("--tif", choices=sorted(TIF), default="")
        p.add_argument("--post-only", action="store_true")
        p.add_argument("--expire-in", type=float, default=0.0, help="GTD: seconds from now")
        p.add_argument("--client-id", default="")
    p = sub.add_parser("cancel")
    p.add_argument("user", type=int)
    p.add_argument("order_id", type=int)
    p = sub.add_parser("cancel-all")
    p.add_argument("user", type=int)
    p.add_argument("--market", default="")
    p = sub.add_parser("amend")
    p.add_argument("user", type=int)
    p.add_argument("order_id", type=int)
    p.add_argument("--price", default="")
    p.add_argument("--amount", default="")
    p = sub.add_parser("order")
    p.add_argument("user", type=int)
    p.add_argument("order_id", type=int)
    p = sub.add_parser("orders")
    p.add_argument("user", type=int)
    p.add_argument("--market", default="")
    p = sub.add_parser("depth")
    p.add_argument("market")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--merge", default="")
    p = sub.add_parser("events")
    p.add_argument("user", type=int)
    p.add_argument("--from", dest="from_seq", type=int, default=0)
    args = ap.parse_args(argv)

    if args.cmd == "run":
        from services import launcher

        sys.argv = ["exchange run", "--config", args.config]
        launcher.main()
        return 0

    config = load_config(args.config)
    accounts = agrpc.AccountsServiceStub(grpc.insecure_channel(config.accounts.listen))
    try:
        return _dispatch(args, config, accounts)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, config: Any, accounts: agrpc.AccountsServiceStub) -> int:
    if args.cmd == "markets":
        _show(accounts.ListMarkets(apb.ListMarketsRequest()))
    elif args.cmd == "assets":
        _show(accounts.ListAssets(apb.ListAssetsRequest()))
    elif args.cmd == "status":
        _show(accounts.GetAccountsStatus(apb.GetAccountsStatusRequest(with_state_hash=True, with_audit=True)))
        for shard in config.shards.values():
            stub = mgrpc.MatchingServiceStub(grpc.insecure_channel(shard.listen))
            _show(stub.GetMatchingStatus(mpb.GetMatchingStatusRequest(with_state_hash=True)))
    elif args.cmd in ("deposit", "withdraw"):
        business_id = args.id or f"cli-{time.time_ns()}"
        if args.cmd == "deposit":
            _show(
                accounts.Deposit(
                    apb.DepositRequest(
                        user_id=args.user,
                        asset=args.asset,
                        amount=args.amount,
                        business=args.business,
                        business_id=business_id,
                    )
                )
            )
        else:
            _show(
                accounts.Withdraw(
                    apb.WithdrawRequest(
                        user_id=args.user,
                        asset=args.asset,
                        amount=args.amount,
                        business=args.business,
                        business_id=business_id,
                    )
                )
            )
    elif args.cmd == "balance":
        _show(accounts.GetBalances(apb.GetBalancesRequest(user_id=args.user)))
    elif args.cmd in ("buy", "sell"):
        req = apb.PlaceOrderRequest(
            user_id=args.user,
            market=args.market,
            side=types_pb2.SIDE_BUY if args.cmd == "buy" else types_pb2.SIDE_SELL,
            type=types_pb2.ORDER_TYPE_MARKET if args.is_market else types_pb2.ORDER_TYPE_LIMIT,
            price=args.price,
            amount=args.amount,
            quote_amount=args.quote,
            post_only=args.post_only,
            client_order_id=args.client_id,
        )
        if args.tif:
            req.time_in_force = TIF[args.tif]  # type: ignore[assignment]
        if args.expire_in:
            req.time_in_force = types_pb2.TIME_IN_FORCE_GTD
            req.expire_time_us = time.time_ns() // 1000 + int(args.expire_in * 1_000_000)
        _show(accounts.PlaceOrder(req))
    elif args.cmd == "cancel":
        _show(accounts.CancelOrder(apb.CancelOrderRequest(user_id=args.user, order_id=args.order_id)))
    elif args.cmd == "cancel-all":
        _show(accounts.CancelAllOrders(apb.CancelAllOrdersRequest(user_id=args.user, market=args.market)))
    elif args.cmd == "amend":
        _show(
            accounts.AmendOrder(
                apb.AmendOrderRequest(
                    user_id=args.user, order_id=args.order_id, new_price=args.price, new_amount=args.amount
                )
            )
        )
    elif args.cmd == "order":
        _show(accounts.GetOrder(apb.GetOrderRequest(user_id=args.user, order_id=args.order_id)))
    elif args.cmd == "orders":
        _show(accounts.ListOpenOrders(apb.ListOpenOrdersRequest(user_id=args.user, market=args.market)))
    elif args.cmd == "depth":
        spec = config.catalog.markets.get(args.market)
        if spec is None:
            print(f"unknown market {args.market}", file=sys.stderr)
            return 1
        stub = mgrpc.MatchingServiceStub(grpc.insecure_channel(config.shards[spec.shard].listen))
        _show(stub.GetDepth(mpb.GetDepthRequest(market=args.market, limit=args.limit, merge=args.merge)))
    elif args.cmd == "events":
        try:
            for resp in accounts.StreamUserEvents(
                apb.StreamUserEventsRequest(user_id=args.user, from_sequence=args.from_seq)
            ):
                for e in resp.events:
                    print(
                        json_format.MessageToJson(e, preserving_proto_field_name=True, indent=None),
                        flush=True,
                    )
        except (KeyboardInterrupt, BrokenPipeError):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
