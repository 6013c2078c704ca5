"""`exchange`: the exchange's command line for people (an operator acting for any user).

    exchange run [launcher options]                  start the whole exchange (see `exchange run --help`)
    exchange markets | assets                         what is traded: ticks, lots, minimums, fees
    exchange status [accounts|matching|history|market ...] [--audit] [--hash]
    exchange deposit 1 USDT 1000 [--id tx1]           user 1 deposits 1000 USDT (idempotent by --id)
    exchange withdraw 1 USDT 10 [--id w1]
    exchange balance 1 [BTC ...]
    exchange buy 1 BTC_USDT 0.01 --price 30000        limit buy (GTC); --tif ioc|fok|gtd, --post-only
    exchange sell 1 BTC_USDT 0.01 --type market       market sell of 0.01 BTC
    exchange buy 1 BTC_USDT --type market --quote 100 market buy spending 100 USDT
    exchange cancel 1 ORDER_ID | exchange cancel-all 1 [BTC_USDT] [--side buy|sell]
    exchange amend 1 ORDER_ID [--price P] [--amount A]
    exchange order 1 ORDER_ID | exchange orders 1 [BTC_USDT]          one order, open orders
    exchange order-history 1 [BTC_USDT]              finished orders (history)
    exchange trades 1 [BTC_USDT] | exchange order-trades ORDER_ID      a user's / an order's trades
    exchange balance-history 1 [USDT]
    exchange depth BTC_USDT [--merge 10] [--limit 20]
    exchange klines BTC_USDT [--interval 1h] | ticker [BTC_USDT] | recent-trades BTC_USDT
    exchange events 1 [--from 1]                      follow user 1's orders, fills and balances
    exchange subaccount open 1 grid-btc | subaccount list 1    user 1's sub-accounts (ids from 2^62)
    exchange transfer 1 SUB_ID USDT 500 [--id t1]     user 1 <-> its sub-account (idempotent by --id)
    exchange token [admin]                            a bearer token for other gRPC clients
    exchange cluster move-pair BTC_USDT --to matching-1   move a pair's book to another shard, live
    exchange cluster add-shard matching-2 | cluster pairs    register a shard; where each pair trades

A market symbol is always a positional argument (BTC_USDT); the order type is --type limit|market.
Amounts and prices are decimals ("0.015"); output shows decimals with their asset symbol.

Configuration: --config FILE, else $EXCHANGE_CONFIG, else ./deploy/exchange.toml, else the repository's
deploy/exchange.toml (beside the installed `services` package), else ~/.config/exchange/exchange.toml.
Credentials: the admin token from the exchange's credentials file (<data_dir>/secrets/credentials.json,
or $EXCHANGE_CREDENTIALS), generated when the exchange first starts.

Every call has a deadline (--timeout, 5 s); event streams have none and end on Ctrl-C.
Exit status: 0 done, 1 the exchange refused or could not be reached, 2 bad command line or configuration,
130 interrupted (Ctrl-C), 141 output closed (e.g. piped into `head`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2 as ev
from exchange.v1 import history_service_pb2 as hpb
from exchange.v1 import market_service_pb2 as kpb
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import types_pb2
from google.protobuf import json_format

from services.accounts.audit import cross_shard_problems, shard_problems
from services.clients import (
    AccountsClient,
    ClientError,
    Clients,
    HistoryClient,
    MarketClient,
    MatchingClient,
)
from services.clients.discovery import resolver_for
from services.clients.resolver import accounts_name
from services.clients.roles import in_cluster, role_name
from services.common import limits
from services.common.config import ExchangeConfig, load_config
from services.common.markets import Asset, ConfigError, MarketSpec
from services.common.units import format_units

if TYPE_CHECKING:
    from services.common.security import Security

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
DEFAULT_TIMEOUT = 5.0

TIF = {
    "gtc": types_pb2.TIME_IN_FORCE_GTC,
    "ioc": types_pb2.TIME_IN_FORCE_IOC,
    "fok": types_pb2.TIME_IN_FORCE_FOK,
    "gtd": types_pb2.TIME_IN_FORCE_GTD,
}
STP = {
    "cancel-taker": types_pb2.SELF_TRADE_PREVENTION_CANCEL_TAKER,
    "cancel-maker": types_pb2.SELF_TRADE_PREVENTION_CANCEL_MAKER,
    "cancel-both": types_pb2.SELF_TRADE_PREVENTION_CANCEL_BOTH,
}
SIDES = {"buy": types_pb2.SIDE_BUY, "sell": types_pb2.SIDE_SELL}
INTERVALS = {
    "1m": kpb.KLINE_INTERVAL_1M,
    "5m": kpb.KLINE_INTERVAL_5M,
    "15m": kpb.KLINE_INTERVAL_15M,
    "1h": kpb.KLINE_INTERVAL_1H,
    "4h": kpb.KLINE_INTERVAL_4H,
    "1d": kpb.KLINE_INTERVAL_1D,
    "1w": kpb.KLINE_INTERVAL_1W,
}
SERVICE_KINDS = ("accounts", "matching", "history", "market")


class CliError(Exception):
    """A failure the CLI reports as one line `error: ...` and an exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- configuration ------------------------------------------------------------------------------

REPO_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "exchange.toml"
USER_CONFIG = "~/.config/exchange/exchange.toml"


class ConfigNotFound(Exception):
    pass


def find_config(explicit: str | None = None) -> Path:
    """The exchange configuration: `explicit` (--config), else $EXCHANGE_CONFIG, else
    ./deploy/exchange.toml, else the repository's deploy/exchange.toml next to this package, else
    ~/.config/exchange/exchange.toml."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigNotFound(f"config file {explicit} not found")
        return path
    env = os.environ.get("EXCHANGE_CONFIG", "")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigNotFound(f"EXCHANGE_CONFIG={env}: no such file")
        return path
    candidates = [Path("deploy/exchange.toml"), REPO_CONFIG, Path(USER_CONFIG).expanduser()]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigNotFound(
        "no exchange configuration found (looked for ./deploy/exchange.toml, "
        f"{REPO_CONFIG} and {USER_CONFIG}); pass --config FILE or set EXCHANGE_CONFIG"
    )


def _load(explicit: str | None) -> ExchangeConfig:
    try:
        return load_config(find_config(explicit))
    except ConfigNotFound as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except (ConfigError, ValueError, OSError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise CliError(f"bad configuration: {exc}", EXIT_USAGE) from None


# --- clients ------------------------------------------------------------------------------------

T = TypeVar("T")


def _security(config: ExchangeConfig) -> Security:
    """The exchange's transport ([security] in the config), presenting the admin token of the exchange's
    credentials file ($EXCHANGE_CREDENTIALS overrides its path)."""
    from services.common.security import process_security

    try:
        return process_security(config, "admin", create=False)
    except FileNotFoundError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"cannot read the exchange's credentials: {exc}", EXIT_USAGE) from None


class Client:
    """The services of one exchange (services.clients: addresses from the config's advertise/listen
    addresses, the admin's credentials), each call with the CLI's deadline, run on one event loop."""

    def __init__(self, config: ExchangeConfig, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self.resolver = resolver_for(config)
        self._clients: Clients | None = None
        self._runner: asyncio.Runner | None = None
        self._catalog: Catalog | None = None

    def address(self, service: str) -> str:
        return self.resolver.address(service)

    def label(self, service: str) -> str:
        return self.config.accounts.source if service == "accounts" else service

    def clients(self) -> Clients:
        if self._clients is None:
            self._clients = Clients(self.resolver, security=_security(self.config), timeout=self.timeout)
        return self._clients

    @property
    def accounts(self) -> AccountsClient:
        return self.clients().accounts

    def matching(self, shard: str) -> MatchingClient:
        return self.clients().matching(shard)

    @property
    def history(self) -> HistoryClient:
        return self.clients().history

    @property
    def market(self) -> MarketClient:
        return self.clients().market

    def _loop(self) -> asyncio.Runner:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner

    def run(self, call: Awaitable[T], *, streaming: bool = False) -> T:
        """Run one call (a coroutine of a client) to its end; a failure is one CliError line."""
        try:
            return self._loop().run(_awaited(call))
        except ClientError as err:
            message = describe_error(err, self.label(err.service), self.timeout, streaming=streaming)
            raise CliError(message) from None

    def catalog(self) -> Catalog:
        """Markets and assets as the exchange answers them (to format integers of events)."""
        if self._catalog is None:
            markets = self.run(self.accounts.list_markets()).markets
            assets = self.run(self.accounts.list_assets()).assets
            self._catalog = Catalog(markets, assets)
        return self._catalog

    def close(self) -> None:
        if self._runner is not None:
            if self._clients is not None:
                with contextlib.suppress(Exception):
                    self._runner.run(self._clients.close())
            self._runner.close()
            self._runner = None
        self._clients = None


async def _awaited(call: Awaitable[T]) -> T:
    return await call


# --- errors -------------------------------------------------------------------------------------

# What a person can do about an error, by its ErrorInfo reason (errors.proto); the server's message
# says what happened and comes first.
HINTS = {
    "INSUFFICIENT_BALANCE": "Not enough available funds: `exchange balance USER` shows them; canceling "
    "open orders releases frozen funds.",
    "UNKNOWN_MARKET": "`exchange markets` lists the markets.",
    "UNKNOWN_ASSET": "`exchange assets` lists the assets.",
    "PRICE_NOT_ON_TICK": "`exchange markets` shows each market's price tick.",
    "AMOUNT_NOT_ON_LOT": "`exchange markets` shows each market's lot size.",
    "BELOW_MIN_AMOUNT": "`exchange markets` shows each market's minimum amount.",
    "BELOW_MIN_NOTIONAL": "`exchange markets` shows each market's minimum order value (price x amount).",
    "ORDER_NOT_FOUND": "`exchange orders USER` lists open orders, `exchange order-history USER` finished "
    "ones.",
    "ORDER_ALREADY_DONE": "The order is already finished (filled, canceled or expired).",
    "ORDER_NOT_AMENDABLE": "Only open limit orders can be amended, and only to a lower amount.",
    "IDEMPOTENCY_KEY_REUSED": "This --id was used before with another amount; use a new --id.",
    "DUPLICATE_CLIENT_ORDER_ID": "This --client-id names another order of the user; use a new one.",
    "INVALID_ORDER": "See `exchange buy --help` for the options each order type takes.",
    "SEQUENCE_OUT_OF_RANGE": "Those events are not kept any more or do not exist yet; --from 0 follows "
    "new events only.",
    "UNAUTHENTICATED": "The CLI presents the admin token of the exchange's credentials file "
    "(<data_dir>/secrets/credentials.json or $EXCHANGE_CREDENTIALS): is it this exchange's file?",
    "ROLE_NOT_ALLOWED": "The credentials the CLI presents may not make this call.",
    "BUSY": "The exchange is busy; try again in a moment.",
    "SHARD_BEHIND": "The matching shard is catching up; try again in a moment.",
    "SHUTTING_DOWN": "The service is stopping or restarting; try again in a moment.",
    "WRITER_FAILED": "The service could not write its journal and is restarting; see its log.",
    "SLOW_CONSUMER": "The stream fell behind; run the command again with --from the next sequence.",
    "STORE_FAILED": "History cannot store events; see its log (data_dir/logs/history.log).",
    "STATE_INCONSISTENT": "The service's data directory is inconsistent; see its log.",
}


def describe_error(err: ClientError, service: str, timeout: float | None, *, streaming: bool = False) -> str:
    """One line for a failed call: the server's message (and a hint by its reason), or what went
    wrong reaching the service."""
    code, details, address = err.code, err.message, err.address
    if err.reason:
        hint = HINTS.get(err.reason)
        return f"{details} ({hint})" if hint else details
    if code == grpc.StatusCode.UNAVAILABLE and streaming:
        return f"lost the connection to {service} at {address} ({_short(details)})"
    if code == grpc.StatusCode.UNAVAILABLE:
        why = "connection refused" if "refused" in details.lower() else _short(details)
        return (
            f"cannot reach {service} at {address} ({why}); is the exchange running? ./scripts/run starts it"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{service} at {address} did not answer within {timeout:g} s (--timeout)"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{service} at {address} does not serve this call: is another program listening there?"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{details} ({HINTS['UNAUTHENTICATED']})"
    return f"{service}: {err.code_name}: {_short(details)}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- formatting ---------------------------------------------------------------------------------


class Catalog:
    """Integer quantities of events as decimals with their asset symbol."""

    def __init__(self, markets: Any, assets: Any) -> None:
        self.assets = {a.symbol: Asset(a.symbol, a.decimals) for a in assets}
        self.markets: dict[str, MarketSpec] = {}
        for m in markets:
            self.assets.setdefault(m.base, Asset(m.base, m.base_decimals))
            self.assets.setdefault(m.quote, Asset(m.quote, m.quote_decimals))
            self.markets[m.symbol] = MarketSpec.create(
                m.symbol,
                self.assets[m.base],
                self.assets[m.quote],
                price_tick=m.price_tick,
                lot_size=m.lot_size,
            )

    def money(self, units: int, asset: str) -> str:
        a = self.assets.get(asset)
        if a is None:
            return f"{units} units of {asset}"
        sign = "-" if units < 0 else ""
        return f"{sign}{a.format(abs(units))} {asset}"

    def signed(self, units: int, asset: str) -> str:
        return ("+" if units > 0 else "") + self.money(units, asset)

    def price(self, market: str, ticks: int) -> str:
        spec = self.markets.get(market)
        return f"{spec.format_price(ticks)} {spec.quote.symbol}" if spec else f"{ticks} ticks"

    def amount(self, market: str, lots: int) -> str:
        spec = self.markets.get(market)
        return f"{spec.format_amount(lots)} {spec.base.symbol}" if spec else f"{lots} lots"

    def quote(self, market: str, units: int) -> str:
        spec = self.markets.get(market)
        return self.money(units, spec.quote.symbol) if spec else f"{units} quote units"

    def base_asset(self, market: str) -> str:
        return _pair(market)[0]

    def quote_asset(self, market: str) -> str:
        return _pair(market)[1]


def _pair(market: str) -> tuple[str, str]:
    """Base and quote of a market symbol ("BTC_USDT"; asset symbols have no underscore)."""
    base, _, quote = market.partition("_")
    return base, quote


def _time(time_us: int) -> str:
    if time_us <= 0:
        return "-"
    seconds, us = divmod(time_us, 1_000_000)
    t = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S") + f".{us // 1000:03d}Z"


def _enum(value: int, enum: Any, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", "-")
    except ValueError:
        return str(value)


def _side(value: int) -> str:
    return _enum(value, types_pb2.Side, "SIDE_")


def _with(value: str, asset: str) -> str:
    return f"{value or '0'} {asset}"


def _percent(rate: str) -> str:
    """A decimal fraction ("0.001") as a percentage ("0.1 %"), exactly."""
    try:
        d = Decimal(rate or "0") * 100
    except InvalidOperation:
        return rate
    text = format(d.normalize(), "f") if d else "0"
    return f"{text} %"


def _signed_percent(ratio: str) -> str:
    if not ratio:
        return "-"
    text = _percent(ratio)
    return text if text.startswith("-") else "+" + text


def order_line(o: types_pb2.Order) -> str:
    base, quote = _pair(o.market)
    side = _side(o.side)
    kind = _enum(o.type, types_pb2.OrderType, "ORDER_TYPE_")
    if o.type == types_pb2.ORDER_TYPE_MARKET:
        what = f"for {o.quote_amount} {quote}" if o.quote_amount else _with(o.amount, base)
    else:
        what = f"{_with(o.amount, base)} @ {o.price} {quote}"
    status = _enum(o.status, types_pb2.OrderStatus, "ORDER_STATUS_")
    parts = [f"order {o.order_id}", f"{o.market} {side} {kind} {what}", status]
    fill = f"executed {_with(o.filled_amount, base)} for {_with(o.filled_quote, quote)}"
    if o.fee and Decimal(o.fee):
        fill += f", fee {o.fee} {o.fee_asset}"
    if (
        o.remaining_amount
        and Decimal(o.remaining_amount)
        and o.status
        in (
            types_pb2.ORDER_STATUS_OPEN,
            types_pb2.ORDER_STATUS_PARTIALLY_FILLED,
            types_pb2.ORDER_STATUS_PENDING,
        )
    ):
        fill += f", open {o.remaining_amount} {base}"
    parts.append(fill)
    extra = []
    if o.time_in_force not in (types_pb2.TIME_IN_FORCE_UNSPECIFIED, types_pb2.TIME_IN_FORCE_GTC):
        extra.append(_enum(o.time_in_force, types_pb2.TimeInForce, "TIME_IN_FORCE_"))
    if o.post_only:
        extra.append("post-only")
    if o.expire_time_us:
        extra.append(f"expires {_time(o.expire_time_us)}")
    if o.done_detail:
        extra.append(_enum(o.done_detail, types_pb2.DoneDetail, "DONE_DETAIL_"))
    if o.client_order_id:
        extra.append(f"client id {o.client_order_id}")
    if extra:
        parts.append(", ".join(extra))
    return "  ".join(parts)


def balance_line(b: types_pb2.Balance) -> str:
    return f"{b.asset:<6} available {_with(b.available, b.asset):<24} frozen {_with(b.frozen, b.asset)}"


def trade_line(t: hpb.UserTrade) -> str:
    base, quote = _pair(t.market)
    fee = f", fee {t.fee} {t.fee_asset}" if t.fee and Decimal(t.fee) else ""
    return (
        f"{_time(t.time_us)}  trade {t.trade_id}  {t.market} order {t.order_id} {_side(t.side)} {t.role}  "
        f"{t.amount} {base} @ {t.price} {quote} = {t.quote_amount} {quote}{fee}  "
        f"(against order {t.counter_order_id} of user {t.counter_user_id})"
    )


def public_trade_line(t: types_pb2.PublicTrade) -> str:
    base, quote = _pair(t.market)
    return (
        f"{_time(t.time_us)}  trade {t.trade_id}  {t.market} taker {_side(t.taker_side)}  "
        f"{t.amount} {base} @ {t.price} {quote} = {t.quote_amount} {quote}"
    )


def kline_line(k: kpb.Kline) -> str:
    base, quote = _pair(k.market)
    return (
        f"{_time(k.open_time_us)}  open {k.open or '-'} high {k.high or '-'} low {k.low or '-'} "
        f"close {k.close or '-'} {quote}  volume {_with(k.volume, base)} / {_with(k.quote_volume, quote)}  "
        f"trades {k.trade_count}"
    )


def ticker_line(t: kpb.Ticker) -> str:
    base, quote = _pair(t.market)
    if not t.last_price:
        return f"{t.market:<10} no trades in 24 h  bid {t.best_bid or '-'} ask {t.best_ask or '-'} {quote}"
    return (
        f"{t.market:<10} last {t.last_price} {quote}  24 h {_signed_percent(t.change_ratio)}  "
        f"open {t.open} high {t.high} low {t.low}  volume {_with(t.volume, base)} / "
        f"{_with(t.quote_volume, quote)}  trades {t.trade_count}  "
        f"bid {t.best_bid or '-'} ask {t.best_ask or '-'}"
    )


def event_line(e: ev.AccountEvent, cat: Catalog) -> str:
    """One accounts event for a person: decimals with their asset symbol."""
    head = f"#{e.sequence} {_time(e.time_us)} user {e.user_id}"
    kind = e.WhichOneof("event")
    if kind == "balance_changed":
        b = e.balance_changed
        business = _enum(b.business, ev.BalanceBusiness, "BALANCE_BUSINESS_")
        changes = []
        if b.available_delta:
            changes.append(f"available {cat.signed(b.available_delta, b.asset)}")
        if b.frozen_delta:
            changes.append(f"frozen {cat.signed(b.frozen_delta, b.asset)}")
        ref = f" ({b.business_id})" if b.business_id else ""
        return (
            f"{head} balance {b.asset} {business}{ref}: {', '.join(changes) or 'no change'}; now available "
            f"{cat.money(b.available, b.asset)}, frozen {cat.money(b.frozen, b.asset)}"
        )
    if kind == "order_updated":
        o = e.order_updated
        m = o.market
        side = _side(o.side)
        if o.type == types_pb2.ORDER_TYPE_MARKET:
            what = (
                f"market for {cat.quote(m, o.quote_budget)}"
                if o.quote_budget
                else cat.amount(m, o.amount_lots)
            )
            if o.quote_budget:
                what = f"{side} {what}"
            else:
                what = f"{side} market {what}"
        else:
            what = f"{side} limit {cat.amount(m, o.amount_lots)} @ {cat.price(m, o.price_ticks)}"
        status = _enum(o.status, types_pb2.OrderStatus, "ORDER_STATUS_")
        fee_asset = cat.base_asset(m) if o.side == types_pb2.SIDE_BUY else cat.quote_asset(m)
        text = (
            f"{head} order {o.order_id} {m} {what}: {status}, executed {cat.amount(m, o.filled_lots)} "
            f"for {cat.quote(m, o.filled_quote_units)}"
        )
        if o.fee_units:
            text += f", fee {cat.money(o.fee_units, fee_asset)}"
        if o.remaining_lots and o.status in (
            types_pb2.ORDER_STATUS_OPEN,
            types_pb2.ORDER_STATUS_PARTIALLY_FILLED,
        ):
            text += f", open {cat.amount(m, o.remaining_lots)}"
        if o.done_detail:
            text += f" ({_enum(o.done_detail, types_pb2.DoneDetail, 'DONE_DETAIL_')})"
        if o.client_order_id:
            text += f" client id {o.client_order_id}"
        return text
    if kind == "user_fill":
        f = e.user_fill
        m = f.market
        role = _enum(f.role, ev.LiquidityRole, "LIQUIDITY_ROLE_")
        fee = f", fee {cat.money(f.fee_units, f.fee_asset)}" if f.fee_units else ""
        return (
            f"{head} fill trade {f.trade_id} {m} order {f.order_id} {_side(f.side)} {role}: "
            f"{cat.amount(m, f.amount_lots)} @ {cat.price(m, f.price_ticks)} = "
            f"{cat.quote(m, f.quote_units)}{fee}"
        )
    return f"{head} {kind or 'unknown event'}"


def _json(msg: Any, indent: int | None = 2) -> str:
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=indent)


# --- argument types -----------------------------------------------------------------------------


def _int_type(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be in {low}..{high}")
        return value

    parse.__name__ = name
    return parse


USER = _int_type("user id", 0, limits.MAX_USER_ID)
ORDER_ID = _int_type("order id", 1, limits.MAX_ORDER_ID)
SEQUENCE = _int_type("sequence", 0, limits.MAX_SEQUENCE)
PAGE = _int_type("limit", 1, limits.MAX_PAGE_SIZE)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _expire_in(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


# --- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The global options work before or after the command (`exchange --json markets`, `exchange
    # markets --json`): the sub-commands take them too, without defaults of their own.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _global_options(common)
    ap = argparse.ArgumentParser(
        prog="exchange",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    _global_options(ap)
    ap.set_defaults(config=None, timeout=DEFAULT_TIMEOUT, json=False)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name: str, help: str, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=description or help,
            parents=[common],
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sub.add_parser(
        "run",
        help="start the whole exchange; takes the launcher's options (exchange run --help)",
        add_help=False,
        parents=[common],
    )
    cmd("markets", "list the markets: price tick, lot size, minimums, fee rates, shard")
    cmd("assets", "list the assets and their decimals")
    p = cmd(
        "status",
        "the state of every service (or of those named): sequences, queues, checkpoints",
        "The state of each service: applied and event sequences, snapshot, queues (accounts, matching), "
        "stored checkpoints (history), applied events (market). A service that does not answer is "
        "reported and makes the exit status 1.",
    )
    p.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help="accounts, matching (every shard) or a shard name, history, market (default: all)",
    )
    p.add_argument(
        "--audit", action="store_true", help="accounts: check the balance invariants (walks all state)"
    )
    p.add_argument(
        "--hash", action="store_true", help="accounts and matching: the state hashes (walks all state)"
    )

    for name, verb in (("deposit", "credits"), ("withdraw", "debits")):
        p = cmd(name, f"{verb} a user's balance (idempotent by --business and --id)")
        p.add_argument("user", type=USER, help="user id")
        p.add_argument("asset", help="asset symbol, e.g. USDT")
        p.add_argument("amount", help="decimal amount, e.g. 1000 or 0.5")
        p.add_argument("--business", default="cli", help="idempotency namespace, e.g. chain (default: cli)")
        p.add_argument(
            "--id",
            default="",
            help="idempotency key within --business, e.g. a transaction hash; repeating it repeats "
            "nothing (default: a new key each time)",
        )
    p = cmd("balance", "a user's balances (available and frozen)")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("assets", nargs="*", metavar="ASSET", help="only these assets (default: all)")

    for name in ("buy", "sell"):
        p = cmd(
            name,
            f"place a {name} order",
            f"Place a {name} order. Limit (the default): AMOUNT of base at --price, good till canceled "
            "unless --tif says otherwise. Market (--type market): fills at once against the book; a "
            "market sell gives AMOUNT of base, a market buy spends --quote of the quote asset (or buys "
            "AMOUNT of base).",
        )
        p.add_argument("user", type=USER, help="user id")
        p.add_argument("market", metavar="MARKET", help="market symbol, e.g. BTC_USDT")
        p.add_argument("amount", nargs="?", default="", help="base amount, e.g. 0.01")
        p.add_argument(
            "--type", choices=("limit", "market"), default="limit", help="order type (default: limit)"
        )
        p.add_argument("--price", default="", help="limit price in the quote asset (limit orders)")
        p.add_argument("--quote", default="", help="market buy: the quote amount to spend, e.g. 100")
        p.add_argument(
            "--tif",
            choices=sorted(TIF),
            default="",
            help="time in force of a limit order: gtc (default), ioc (immediate or cancel), fok (fill or "
            "kill), gtd (good till --expire-in)",
        )
        p.add_argument(
            "--expire-in",
            type=_expire_in,
            default=None,
            metavar="SECONDS",
            help="GTD: expire after this many seconds",
        )
        p.add_argument(
            "--post-only", action="store_true", help="only rest in the book: refused if it would trade"
        )
        p.add_argument(
            "--stp",
            choices=sorted(STP),
            default="",
            help="self-trade prevention against the user's own orders (default: the market's, cancel-maker)",
        )
        p.add_argument(
            "--client-id",
            default="",
            help="the user's own order id (unique per user; repeats return the order)",
        )

    p = cmd("cancel", "cancel one order")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("order_id", type=ORDER_ID, nargs="?", default=0, help="order id (or --client-id)")
    p.add_argument("--client-id", default="", help="the order's client id instead of its id")
    p = cmd("cancel-all", "cancel every open order of a user (in one market, of one side)")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("market", nargs="?", default="", metavar="MARKET", help="only this market (default: all)")
    p.add_argument("--side", choices=sorted(SIDES), default="", help="only this side (default: both)")
    p = cmd("amend", "change an open limit order: a lower amount keeps its priority, a new price loses it")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("order_id", type=ORDER_ID, help="order id")
    p.add_argument("--price", default="", help="new limit price")
    p.add_argument("--amount", default="", help="new total amount (including what is filled), lower than now")
    p = cmd("order", "one order of a user (accounts' view)")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("order_id", type=ORDER_ID, nargs="?", default=0, help="order id (or --client-id)")
    p.add_argument("--client-id", default="", help="the order's client id instead of its id")
    p = cmd("orders", "a user's open orders")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("market", nargs="?", default="", metavar="MARKET", help="only this market (default: all)")
    _paging(p)

    p = cmd("order-history", "a user's finished orders, newest first (history service)")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("market", nargs="?", default="", metavar="MARKET", help="only this market (default: all)")
    p.add_argument("--side", choices=sorted(SIDES), default="", help="only this side")
    _paging(p)
    p = cmd("trades", "a user's trades, newest first (history service)")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("market", nargs="?", default="", metavar="MARKET", help="only this market (default: all)")
    p.add_argument("--side", choices=sorted(SIDES), default="", help="only this side")
    _paging(p)
    p = cmd("order-trades", "the trades of one order (history service)")
    p.add_argument("order_id", type=ORDER_ID, help="order id")
    _paging(p)
    p = cmd("balance-history", "a user's balance changes, newest first (history service)")
    p.add_argument("user", type=USER, help="user id")
    p.add_argument("asset", nargs="?", default="", metavar="ASSET", help="only this asset (default: all)")
    p.add_argument(
        "--business",
        default="",
        help="only this kind: deposit, withdraw, order_freeze, order_unfreeze, trade, fee",
    )
    _paging(p)

    p = cmd("depth", "the order book of a market (its matching shard)")
    p.add_argument("market", metavar="MARKET", help="market symbol, e.g. BTC_USDT")
    p.add_argument("--limit", type=PAGE, default=20, help="price levels per side (default: 20)")
    p.add_argument("--merge", default="", help="merge prices into buckets of this size, e.g. 10")
    p = cmd("klines", "K-lines (candles) of a market, oldest first (market service)")
    p.add_argument("market", metavar="MARKET", help="market symbol, e.g. BTC_USDT")
    p.add_argument("--interval", choices=list(INTERVALS), default="1m", help="candle length (default: 1m)")
    p.add_argument("--limit", type=PAGE, default=20, help="the most recent N candles (default: 20)")
    p = cmd(
        "ticker", "24 h tickers: last price, change, high, low, volume, best bid and ask (market service)"
    )
    p.add_argument("market", nargs="?", default="", metavar="MARKET", help="one market (default: all)")
    p = cmd("recent-trades", "the latest public trades of a market, newest first (market service)")
    p.add_argument("market", metavar="MARKET", help="market symbol, e.g. BTC_USDT")
    p.add_argument("--limit", type=PAGE, default=20, help="how many (default: 20)")

    p = cmd(
        "events",
        "follow a user's order updates, fills and balance changes (until Ctrl-C)",
        "Follow a user's events from the accounts event log: order updates, fills and balance changes, "
        "one line each, quantities as decimals with their asset. Runs until Ctrl-C.",
    )
    p.add_argument("user", type=USER, help="user id")
    p.add_argument(
        "--from",
        dest="from_seq",
        type=SEQUENCE,
        default=0,
        metavar="SEQUENCE",
        help="first accounts event sequence (1 = everything kept; default 0 = new events only)",
    )
    _sub_account_commands(cmd, common)
    _apikey_commands(cmd, common)
    _quantizer_commands(cmd, common)
    _cluster_cli().add_commands(cmd, common)
    p = cmd(
        "token",
        "print a principal's bearer token from the credentials file (for grpc tools such as buf curl)",
    )
    p.add_argument("principal", nargs="?", default="admin", help="principal name (default: admin)")
    return ap


def _apikey_commands(
    cmd: Callable[[str, str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """`apikey create|list|revoke`: API keys of the HTTP gateway (issue 13)."""
    p = cmd(
        "apikey",
        "create, list or revoke API keys of the HTTP/WebSocket gateway",
        "API keys sign requests to the gateway's REST API (X-MBX-APIKEY + HMAC-SHA256, as Binance's). "
        "A key acts for one user only, with the permissions read, trade and strategies (withdrawals "
        "never). The secret is printed once, by create.",
    )
    which = p.add_subparsers(dest="apikey_cmd", required=True, metavar="create|list|revoke")
    c = which.add_parser("create", help="a new key for a user", parents=[common], allow_abbrev=False)
    c.add_argument("user", type=USER, help="user id the key acts for")
    c.add_argument(
        "--permissions",
        default="read,trade",
        help="comma-separated: read, trade, strategies (default: read,trade)",
    )
    c.add_argument("--label", default="", help="free text, up to 64 characters")
    ls = which.add_parser("list", help="the valid keys (of one user)", parents=[common], allow_abbrev=False)
    ls.add_argument("user", type=USER, nargs="?", default=0, help="user id (default: every user)")
    ls.add_argument("--all", action="store_true", help="revoked keys too")
    r = which.add_parser("revoke", help="revoke a key at once", parents=[common], allow_abbrev=False)
    r.add_argument("api_key", help="the key (as `apikey list` shows it)")


def cmd_apikey(c: Client, args: argparse.Namespace) -> int:
    from exchange.v1 import gateway_service_pb2 as gpb

    from services.clients.gateway import GatewayAdminClient
    from services.clients.resolver import advertise_address

    names = {"read": gpb.API_KEY_PERMISSION_READ, "trade": gpb.API_KEY_PERMISSION_TRADE}
    names["strategies"] = gpb.API_KEY_PERMISSION_STRATEGIES
    labels = {v: k for k, v in names.items()}
    gw = c.config.gateway
    admin = GatewayAdminClient.at(
        advertise_address(gw.admin_listen, gw.advertise), security=_security(c.config), timeout=c.timeout
    )

    def line(k: Any) -> str:
        perms = ",".join(labels.get(p, str(p)) for p in k.permissions)
        revoked = "  REVOKED" if k.revoked_time_us else ""
        label = f"  {k.label}" if k.label else ""
        return f"{k.api_key}  user {k.user_id}  {perms}{label}{revoked}"

    try:
        if args.apikey_cmd == "create":
            perms = [p.strip().lower() for p in args.permissions.split(",") if p.strip()]
            unknown = [p for p in perms if p not in names]
            if unknown:
                raise CliError(f"unknown permission {unknown[0]!r}; use read, trade, strategies", EXIT_USAGE)
            req = gpb.CreateApiKeyRequest(
                user_id=args.user, permissions=[names[p] for p in perms], label=args.label
            )
            created = c.run(admin.create_api_key(req))
            if args.json:
                out(_json(created))
                return EXIT_OK
            out(line(created.key))
            out(f"secret {created.secret}")
            out("(the secret is shown this once; keep it now)")
            return EXIT_OK
        if args.apikey_cmd == "list":
            listed = c.run(
                admin.list_api_keys(gpb.ListApiKeysRequest(user_id=args.user, include_revoked=args.all))
            )
            if args.json:
                out(_json(listed))
                return EXIT_OK
            for k in listed.keys:
                out(line(k))
            return EXIT_OK
        revoked = c.run(admin.revoke_api_key(gpb.RevokeApiKeyRequest(api_key=args.api_key)))
        out(_json(revoked) if args.json else f"revoked {line(revoked.key)}")
        return EXIT_OK
    finally:
        c.run(admin.close())


def _sub_account_commands(
    cmd: Callable[[str, str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """`subaccount open|list` and `transfer` (sub-accounts: issue 10, funds isolation)."""
    p = cmd(
        "subaccount",
        "open or list a user's sub-accounts (accounts of their own, funded by transfer)",
        "A sub-account is an account of its own (balances, orders, events, history) owned by a user; "
        "its user id (from 2^62) works wherever a user id does. Funds enter and leave it only by "
        "`exchange transfer` to or from its owner.",
    )
    which = p.add_subparsers(dest="subaccount_cmd", required=True, metavar="open|list")
    o = which.add_parser(
        "open",
        help="open a sub-account (idempotent: the same owner and label answer the same sub-account)",
        parents=[common],
        allow_abbrev=False,
    )
    o.add_argument("owner", type=USER, help="owner user id (an ordinary user)")
    o.add_argument("label", help="1-64 characters, unique per owner, e.g. grid-btc")
    ls = which.add_parser("list", help="a user's sub-accounts", parents=[common], allow_abbrev=False)
    ls.add_argument("owner", type=USER, help="owner user id")
    _paging(ls)
    p = cmd(
        "transfer",
        "move available funds between a user and one of its sub-accounts (either way)",
        "Move AMOUNT of ASSET from user FROM to user TO, one of them a sub-account of the other; only "
        "the available balance can move. Idempotent by --id.",
    )
    p.add_argument("from_user", type=USER, metavar="FROM", help="user id paying")
    p.add_argument("to_user", type=USER, metavar="TO", help="user id receiving")
    p.add_argument("asset", metavar="ASSET", help="asset symbol, e.g. USDT")
    p.add_argument("amount", metavar="AMOUNT", help="decimal amount, e.g. 1000 or 0.5")
    p.add_argument(
        "--id",
        default="",
        help="transfer id (1-64 characters [A-Za-z0-9_.:-]); repeating it repeats nothing (default: a "
        "new id each time)",
    )


def _global_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--config",
        metavar="FILE",
        help="the exchange's TOML file (default: $EXCHANGE_CONFIG, else ./deploy/exchange.toml, else the "
        "repository's deploy/exchange.toml, else ~/.config/exchange/exchange.toml)",
    )
    ap.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help=f"deadline of each call (default: {DEFAULT_TIMEOUT:g}); streams have none",
    )
    ap.add_argument(
        "--json",
        action="store_true",
        help="print the API's responses as JSON (events: one JSON object per line, integer units)",
    )


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", type=PAGE, default=20, help=f"page size, at most {limits.MAX_PAGE_SIZE} (default: 20)"
    )
    p.add_argument("--page-token", default="", help="continue after a previous page (it prints the token)")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "run":
        from services import launcher

        config_args = ["--config", args.config] if args.config else []
        launcher.main([*config_args, *rest])
        return EXIT_OK
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    client: Client | None = None
    try:
        config = _load(args.config)
        if args.cmd == "token":
            return _token(config, args.principal)
        client = Client(config, args.timeout)
        return COMMANDS[args.cmd](client, args)
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # a defect of the CLI: one line unless asked for the traceback
        if os.environ.get("EXCHANGE_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {_short(str(exc))} "
            "(EXCHANGE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    finally:
        if client is not None:
            client.close()


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush does not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def out(text: str = "") -> None:
    print(text, flush=True)


def _more(token: str) -> None:
    if token:
        print(f"(more: add --page-token {token})", file=sys.stderr)


# --- commands -----------------------------------------------------------------------------------


def _token(config: ExchangeConfig, principal: str) -> int:
    from services.common.auth import load_credentials

    path = config.credentials_path()
    try:
        creds = load_credentials(path)
    except FileNotFoundError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"cannot read {path}: {exc}", EXIT_USAGE) from None
    if principal not in creds.principals:
        names = ", ".join(sorted(creds.principals))
        raise CliError(f"no principal {principal!r} in {path}; there are {names}", EXIT_USAGE)
    out(creds.token(principal))
    return EXIT_OK


def cmd_markets(c: Client, args: argparse.Namespace) -> int:
    resp = c.run(c.accounts.list_markets(apb.ListMarketsRequest()))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for m in resp.markets:
        out(
            f"{m.symbol:<10} tick {m.price_tick} {m.quote}  lot {m.lot_size} {m.base}  min {m.min_amount} "
            f"{m.base} and {m.min_notional} {m.quote}  fees maker {_percent(m.maker_fee_rate)} taker "
            f"{_percent(m.taker_fee_rate)}  shard {m.shard}"
        )
    return EXIT_OK


def cmd_assets(c: Client, args: argparse.Namespace) -> int:
    resp = c.run(c.accounts.list_assets(apb.ListAssetsRequest()))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for a in resp.assets:
        out(f"{a.symbol:<6} {a.decimals} decimals (smallest unit {format_units(1, a.decimals)} {a.symbol})")
    return EXIT_OK


def cmd_status(c: Client, args: argparse.Namespace) -> int:
    wanted = set(args.services) or set(SERVICE_KINDS)
    known = {*SERVICE_KINDS, *c.config.shards}
    unknown = wanted - known
    if unknown:
        raise CliError(
            f"unknown service {', '.join(sorted(unknown))}; services are {', '.join(sorted(known))}",
            EXIT_USAGE,
        )
    code = EXIT_OK
    steps: list[tuple[str, Callable[[], None]]] = []
    if "accounts" in wanted:
        steps.append(("accounts", lambda: _status_accounts(c, args)))
    for shard in c.config.shards:
        if "matching" in wanted or shard in wanted:
            steps.append((shard, lambda shard=shard: _status_shard(c, args, shard)))  # type: ignore[misc]
    if "history" in wanted:
        steps.append(("history", lambda: _status_history(c, args)))
    if "market" in wanted:
        steps.append(("market", lambda: _status_market(c, args)))
    for service, step in steps:
        try:
            step()
        except CliError as exc:
            out(f"{c.label(service)} at {c.address(service)}: error: {exc.message}")
            code = EXIT_ERROR
    return code


def _counts(m: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(m.items())) or "-"


def _role(role: int) -> str:
    """ " (leader)" or " (follower)" for a replica in cluster mode; nothing for a standalone process."""
    return f" ({role_name(role)})" if in_cluster(role) else ""


def _status_accounts(c: Client, args: argparse.Namespace) -> None:
    """Every accounts shard's status (accounts sharded by user: one line block per shard) and, with
    --audit over several shards, the balance invariant summed over them (services.accounts.audit)."""
    req = apb.GetAccountsStatusRequest(with_state_hash=args.hash, with_audit=args.audit)
    n = c.accounts.shard_count
    statuses = [c.run(c.accounts.get_accounts_status(req, shard=i)) for i in range(n)]
    for i, st in enumerate(statuses):
        if args.json:
            out(_json(st))
            continue
        out(
            f"{st.source} at {c.address(accounts_name(i))}{_role(st.role)}: applied {st.applied_sequence}, "
            f"events {st.event_sequence}, snapshot {st.snapshot_sequence}, queue {st.queue_depth}, "
            f"last order id {st.last_order_id}"
        )
        for shard in sorted({*st.forwarded_sequences, *st.settled_sequences, *st.outbox_pending}):
            out(
                f"  {shard}: forwarded {st.forwarded_sequences.get(shard, 0)} (pending "
                f"{st.outbox_pending.get(shard, 0)}), settled events {st.settled_sequences.get(shard, 0)}"
            )
        if st.state_hash:
            out(f"  state hash {st.state_hash}")
        for a in st.audit:
            if n == 1:
                ok = a.total == a.external and a.frozen == a.held
                out(
                    f"  audit {a.asset:<6} total {a.total} = deposits - withdrawals {a.external}; frozen "
                    f"{a.frozen} = held by orders {a.held}: {'ok' if ok else 'MISMATCH'} ({a.asset})"
                )
                continue
            ok = not shard_problems(apb.GetAccountsStatusResponse(source=st.source, audit=[a]))
            out(
                f"  audit {a.asset:<6} total {a.total} = deposits - withdrawals {a.external} + cross-shard "
                f"{a.cross_shard or '0'}; frozen {a.frozen} = held by orders {a.held}: "
                f"{'ok' if ok else 'MISMATCH'} ({a.asset})"
            )
    if args.audit and n > 1 and not args.json:
        problems = cross_shard_problems(statuses)
        if not problems:
            out(
                f"audit across {n} accounts shards: balances = deposits - withdrawals, "
                "cross-shard flows sum to 0: ok"
            )
        for p in problems:
            out(f"audit across {n} accounts shards: MISMATCH {p}")


def _status_shard(c: Client, args: argparse.Namespace, shard: str) -> None:
    st = c.run(c.matching(shard).get_matching_status(mpb.GetMatchingStatusRequest(with_state_hash=args.hash)))
    if args.json:
        out(_json(st))
        return
    out(
        f"{st.shard} at {c.address(shard)}{_role(st.role)}: applied {st.applied_sequence}, "
        f"events {st.event_sequence}, "
        f"snapshot {st.snapshot_sequence}, sources {_counts(st.source_sequences)}"
    )
    if st.state_hash:
        out(f"  state hash {st.state_hash}")
    for m in st.markets:
        line = (
            f"  {m.market:<10} {m.order_count} orders on {m.bid_levels} bid / {m.ask_levels} ask levels, "
            f"last trade {m.last_trade_id}"
        )
        out(line + (f", hash {m.state_hash}" if m.state_hash else ""))


def _status_history(c: Client, args: argparse.Namespace) -> None:
    st = c.run(c.history.get_history_status(hpb.GetHistoryStatusRequest()))
    if args.json:
        out(_json(st))
        return
    out(f"history at {c.address('history')}: database {st.database}, stored up to {_counts(st.checkpoints)}")


def _status_market(c: Client, args: argparse.Namespace) -> None:
    st = c.run(c.market.get_market_data_status(kpb.GetMarketDataStatusRequest()))
    if args.json:
        out(_json(st))
        return
    out(f"market at {c.address('market')}: applied events up to {_counts(st.checkpoints)}")


def cmd_adjust(c: Client, args: argparse.Namespace) -> int:
    business_id = args.id or f"cli-{time.time_ns()}"
    if args.cmd == "deposit":
        req: Any = apb.DepositRequest(
            user_id=args.user,
            asset=args.asset,
            amount=args.amount,
            business=args.business,
            business_id=business_id,
        )
        resp: Any = c.run(c.accounts.deposit(req))
    else:
        req = apb.WithdrawRequest(
            user_id=args.user,
            asset=args.asset,
            amount=args.amount,
            business=args.business,
            business_id=business_id,
        )
        resp = c.run(c.accounts.withdraw(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    b = resp.balance
    verb = "deposited" if args.cmd == "deposit" else "withdrew"
    head = (
        f"already applied ({args.business} {business_id}); nothing changed"
        if resp.duplicate
        else f"{verb} {args.amount} {args.asset} for user {args.user} ({args.business} {business_id})"
    )
    out(f"{head}; now available {_with(b.available, b.asset)}, frozen {_with(b.frozen, b.asset)}")
    return EXIT_OK


def cmd_balance(c: Client, args: argparse.Namespace) -> int:
    resp = c.run(c.accounts.get_balances(apb.GetBalancesRequest(user_id=args.user, assets=args.assets)))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for b in resp.balances:
        out(balance_line(b))
    return EXIT_OK


def cmd_order_entry(c: Client, args: argparse.Namespace) -> int:
    market_order = args.type == "market"
    if market_order:
        if args.price:
            raise CliError(
                "a market order takes no --price (for a limit order leave out --type market)", EXIT_USAGE
            )
        if args.tif or args.post_only or args.expire_in is not None:
            raise CliError("--tif, --post-only and --expire-in are for limit orders", EXIT_USAGE)
        if not args.amount and not args.quote:
            what = "AMOUNT or --quote" if args.cmd == "buy" else "AMOUNT"
            raise CliError(f"a market {args.cmd} needs {what}", EXIT_USAGE)
        if args.quote and args.cmd == "sell":
            raise CliError("--quote is for market buys; a market sell takes AMOUNT", EXIT_USAGE)
    else:
        if not args.price:
            raise CliError("a limit order needs --price (or --type market for a market order)", EXIT_USAGE)
        if not args.amount:
            raise CliError("a limit order needs AMOUNT", EXIT_USAGE)
        if args.quote:
            raise CliError("--quote is for market buys (--type market)", EXIT_USAGE)
    req = apb.PlaceOrderRequest(
        user_id=args.user,
        market=args.market,
        side=SIDES[args.cmd],
        type=types_pb2.ORDER_TYPE_MARKET if market_order else types_pb2.ORDER_TYPE_LIMIT,
        price=args.price,
        amount=args.amount,
        quote_amount=args.quote,
        post_only=args.post_only,
        client_order_id=args.client_id,
    )
    if args.tif:
        req.time_in_force = TIF[args.tif]
    if args.stp:
        req.self_trade_prevention = STP[args.stp]
    if args.expire_in is not None:
        if args.tif not in ("", "gtd"):
            raise CliError(
                "--expire-in makes the order GTD; it does not go with --tif " + args.tif, EXIT_USAGE
            )
        req.time_in_force = types_pb2.TIME_IN_FORCE_GTD
        req.expire_time_us = time.time_ns() // 1000 + int(args.expire_in * 1_000_000)
    elif args.tif == "gtd":
        raise CliError("--tif gtd needs --expire-in SECONDS", EXIT_USAGE)
    resp = c.run(c.accounts.place_order(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    head = "already placed (same --client-id):" if resp.duplicate else "placed:"
    out(f"{head} {order_line(resp.order)}")
    return EXIT_OK


def _order_ref(args: argparse.Namespace) -> tuple[int, str]:
    if bool(args.order_id) == bool(args.client_id):
        raise CliError("give an ORDER_ID or --client-id (one of them)", EXIT_USAGE)
    return args.order_id, args.client_id


def cmd_cancel(c: Client, args: argparse.Namespace) -> int:
    order_id, client_id = _order_ref(args)
    req = apb.CancelOrderRequest(user_id=args.user, order_id=order_id, client_order_id=client_id)
    resp = c.run(c.accounts.cancel_order(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    out(f"cancel sent: {order_line(resp.order)}")
    out(
        f"(the shard reports the result: `exchange order {args.user} {resp.order.order_id}` "
        "or `exchange events`)"
    )
    return EXIT_OK


def cmd_cancel_all(c: Client, args: argparse.Namespace) -> int:
    req = apb.CancelAllOrdersRequest(
        user_id=args.user, market=args.market, side=SIDES.get(args.side, types_pb2.SIDE_UNSPECIFIED)
    )
    resp = c.run(c.accounts.cancel_all_orders(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    where = f" in {args.market}" if args.market else ""
    side = f" {args.side}" if args.side else ""
    out(f"cancel sent for {resp.order_count} open{side} order(s) of user {args.user}{where}")
    return EXIT_OK


def cmd_amend(c: Client, args: argparse.Namespace) -> int:
    if not args.price and not args.amount:
        raise CliError("amend needs --price and/or --amount", EXIT_USAGE)
    req = apb.AmendOrderRequest(
        user_id=args.user, order_id=args.order_id, new_price=args.price, new_amount=args.amount
    )
    resp = c.run(c.accounts.amend_order(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    out(f"amend sent: {order_line(resp.order)}")
    return EXIT_OK


def cmd_order(c: Client, args: argparse.Namespace) -> int:
    order_id, client_id = _order_ref(args)
    req = apb.GetOrderRequest(user_id=args.user, order_id=order_id, client_order_id=client_id)
    resp = c.run(c.accounts.get_order(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    o = resp.order
    out(order_line(o))
    out(f"  created {_time(o.created_time_us)}, updated {_time(o.updated_time_us)}")
    return EXIT_OK


def cmd_orders(c: Client, args: argparse.Namespace) -> int:
    req = apb.ListOpenOrdersRequest(
        user_id=args.user, market=args.market, page_size=args.limit, page_token=args.page_token
    )
    resp = c.run(c.accounts.list_open_orders(req))
    return _list(args, resp, resp.orders, order_line, "no open orders")


def _list(args: argparse.Namespace, resp: Any, items: Any, line: Callable[[Any], str], empty: str) -> int:
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for item in items:
        out(line(item))
    if not items and not args.page_token:
        print(f"({empty})", file=sys.stderr)
    _more(resp.next_page_token)
    return EXIT_OK


def cmd_order_history(c: Client, args: argparse.Namespace) -> int:
    req = hpb.ListFinishedOrdersRequest(
        user_id=args.user,
        market=args.market,
        side=SIDES.get(args.side, types_pb2.SIDE_UNSPECIFIED),
        page_size=args.limit,
        page_token=args.page_token,
    )
    resp = c.run(c.history.list_finished_orders(req))
    return _list(args, resp, resp.orders, order_line, "no finished orders")


def cmd_trades(c: Client, args: argparse.Namespace) -> int:
    req = hpb.ListUserTradesRequest(
        user_id=args.user,
        market=args.market,
        side=SIDES.get(args.side, types_pb2.SIDE_UNSPECIFIED),
        page_size=args.limit,
        page_token=args.page_token,
    )
    resp = c.run(c.history.list_user_trades(req))
    return _list(args, resp, resp.trades, trade_line, "no trades")


def cmd_order_trades(c: Client, args: argparse.Namespace) -> int:
    req = hpb.ListOrderTradesRequest(order_id=args.order_id, page_size=args.limit, page_token=args.page_token)
    resp = c.run(c.history.list_order_trades(req))
    return _list(args, resp, resp.trades, trade_line, "no trades")


def cmd_balance_history(c: Client, args: argparse.Namespace) -> int:
    req = hpb.ListBalanceHistoryRequest(
        user_id=args.user,
        asset=args.asset,
        business=args.business,
        page_size=args.limit,
        page_token=args.page_token,
    )
    resp = c.run(c.history.list_balance_history(req))

    def line(e: hpb.BalanceHistoryEntry) -> str:
        changes = []
        for name, value in (("available", e.available_change), ("frozen", e.frozen_change)):
            if value and Decimal(value):
                changes.append(f"{name} {'' if value.startswith('-') else '+'}{value} {e.asset}")
        return (
            f"{_time(e.time_us)}  #{e.sequence} {e.asset} {e.business} ({e.business_id}): "
            f"{', '.join(changes) or 'no change'}; now available {_with(e.available, e.asset)}, "
            f"frozen {_with(e.frozen, e.asset)}"
        )

    return _list(args, resp, resp.entries, line, "no balance changes")


def cmd_depth(c: Client, args: argparse.Namespace) -> int:
    spec = c.config.catalog.markets.get(args.market)
    if spec is None:
        known = ", ".join(sorted(c.config.catalog.markets))
        raise CliError(f"unknown market {args.market!r}; markets are {known}")
    req = mpb.GetDepthRequest(market=args.market, limit=args.limit, merge=args.merge)
    # The shard that trades it now (accounts routes it; a market may have moved since the config).
    listed = c.run(c.accounts.list_markets()).markets
    shard = next((m.shard for m in listed if m.symbol == args.market and m.shard), spec.shard)
    resp = c.run(c.matching(shard).get_depth(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    base, quote = _pair(args.market)
    out(f"{resp.market} at event {resp.sequence}: price ({quote}), amount ({base}), orders")
    width = max((len(lv.price) for lv in [*resp.asks, *resp.bids]), default=0)
    for lv in reversed(resp.asks):
        out(f"  ask {lv.price:>{width}}  {lv.amount:<16} {lv.order_count}")
    if not resp.asks:
        out("  (no asks)")
    out("  " + "-" * (width + 24))
    for lv in resp.bids:
        out(f"  bid {lv.price:>{width}}  {lv.amount:<16} {lv.order_count}")
    if not resp.bids:
        out("  (no bids)")
    return EXIT_OK


def cmd_klines(c: Client, args: argparse.Namespace) -> int:
    req = kpb.GetKlinesRequest(market=args.market, interval=INTERVALS[args.interval], limit=args.limit)
    resp = c.run(c.market.get_klines(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for k in resp.klines:
        out(kline_line(k))
    if not resp.klines:
        print("(no K-lines yet)", file=sys.stderr)
    return EXIT_OK


def cmd_ticker(c: Client, args: argparse.Namespace) -> int:
    if args.market:
        resp: Any = c.run(c.market.get_ticker(kpb.GetTickerRequest(market=args.market)))
        tickers = [resp.ticker]
    else:
        resp = c.run(c.market.list_tickers(kpb.ListTickersRequest()))
        tickers = list(resp.tickers)
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for t in tickers:
        out(ticker_line(t))
    return EXIT_OK


def cmd_recent_trades(c: Client, args: argparse.Namespace) -> int:
    req = kpb.ListRecentTradesRequest(market=args.market, limit=args.limit)
    resp = c.run(c.market.list_recent_trades(req))
    if args.json:
        out(_json(resp))
        return EXIT_OK
    for t in resp.trades:
        out(public_trade_line(t))
    if not resp.trades:
        print("(no trades yet)", file=sys.stderr)
    return EXIT_OK


def cmd_events(c: Client, args: argparse.Namespace) -> int:
    cat = c.catalog()  # also checks, within the deadline, that accounts answers
    req = apb.StreamUserEventsRequest(user_id=args.user, from_sequence=args.from_seq)
    last = 0

    async def follow() -> None:
        nonlocal last
        stream = c.accounts.stream_user_events(req)
        async with contextlib.aclosing(stream):
            async for resp in stream:
                for e in resp.events:
                    out(_json(e, indent=None) if args.json else event_line(e, cat))
                    last = e.sequence

    try:
        c.run(_until_stdout_closes(follow()), streaming=True)
    except CliError as exc:
        resume = f"; resume with --from {last + 1}" if last else ""
        raise CliError(f"the event stream ended: {exc.message}{resume}") from None
    raise CliError(
        "the event stream ended (the server closed it)" + (f"; resume with --from {last + 1}" if last else "")
    )


async def _until_stdout_closes(follow: Awaitable[None]) -> None:
    """Run a stream follower; cancel it when stdout is a pipe whose reader went away (so
    `exchange events 1 | head -1` ends at once instead of at the next event): BrokenPipeError."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    broken = threading.Event()
    done = threading.Event()

    def watch_stdout() -> None:
        try:
            fd = sys.stdout.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return
            poller = select.poll()
            poller.register(fd, 0)  # POLLERR / POLLHUP are always reported: the reader closed the pipe
            while not done.is_set():
                if poller.poll(200):
                    broken.set()
                    # The follower may have ended (and the loop closed) meanwhile: its own write to
                    # the closed pipe failed first. Nothing left to cancel then.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(task.cancel)
                    return
        except (OSError, ValueError):
            return

    watcher = threading.Thread(target=watch_stdout, name="stdout-watch", daemon=True)
    watcher.start()
    try:
        await follow
    except asyncio.CancelledError:
        if broken.is_set():
            raise BrokenPipeError from None
        raise
    finally:
        done.set()


def sub_account_line(s: apb.SubAccount) -> str:
    return f"sub-account {s.user_id} of user {s.owner_user_id}: {s.label}"


def cmd_sub_account(c: Client, args: argparse.Namespace) -> int:
    if args.subaccount_cmd == "open":
        opened = c.run(
            c.accounts.open_sub_account(apb.OpenSubAccountRequest(owner_user_id=args.owner, label=args.label))
        )
        if args.json:
            out(_json(opened))
            return EXIT_OK
        note = " (already open)" if opened.duplicate else ""
        out(sub_account_line(opened.sub_account) + note)
        return EXIT_OK
    resp = c.run(
        c.accounts.list_sub_accounts(
            apb.ListSubAccountsRequest(
                owner_user_id=args.owner, page_size=args.limit, page_token=args.page_token
            )
        )
    )
    return _list(args, resp, resp.sub_accounts, sub_account_line, "no sub-accounts")


def cmd_transfer(c: Client, args: argparse.Namespace) -> int:
    transfer_id = args.id or f"cli-{time.time_ns()}"
    resp = c.run(
        c.accounts.transfer(
            apb.TransferRequest(
                from_user_id=args.from_user,
                to_user_id=args.to_user,
                asset=args.asset,
                amount=args.amount,
                transfer_id=transfer_id,
            )
        )
    )
    if args.json:
        out(_json(resp))
        return EXIT_OK
    head = (
        f"already applied (transfer {transfer_id}); nothing changed"
        if resp.duplicate
        else f"transferred {_with(args.amount, args.asset)} from user {args.from_user} to user "
        f"{args.to_user} (transfer {transfer_id})"
    )
    out(head)
    for user, b in ((args.from_user, resp.from_balance), (args.to_user, resp.to_balance)):
        out(f"  user {user}: {balance_line(b)}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "markets": cmd_markets,
    "assets": cmd_assets,
    "status": cmd_status,
    "deposit": cmd_adjust,
    "withdraw": cmd_adjust,
    "balance": cmd_balance,
    "buy": cmd_order_entry,
    "sell": cmd_order_entry,
    "cancel": cmd_cancel,
    "cancel-all": cmd_cancel_all,
    "amend": cmd_amend,
    "order": cmd_order,
    "orders": cmd_orders,
    "order-history": cmd_order_history,
    "trades": cmd_trades,
    "order-trades": cmd_order_trades,
    "balance-history": cmd_balance_history,
    "depth": cmd_depth,
    "klines": cmd_klines,
    "ticker": cmd_ticker,
    "recent-trades": cmd_recent_trades,
    "events": cmd_events,
    "subaccount": cmd_sub_account,
    "transfer": cmd_transfer,
    "apikey": cmd_apikey,
    "strategy": lambda c, args: _quantizer_cli().cmd_strategy(c, args),
    "cluster": lambda c, args: _cluster_cli().cmd_cluster(c, args, out),
    "backtest": lambda c, args: _quantizer_cli().cmd_backtest(c, args),
}


def _quantizer_commands(
    cmd: Callable[[str, str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """`strategy ...` and `backtest ...` (issue 10): defined in services/quantizer/cli.py."""
    _quantizer_cli().add_commands(cmd, common)


def _cluster_cli() -> Any:
    """`cluster move-pair|add-shard|pairs` (issue 11): defined in services/cluster/operator.py."""
    from services.cluster import operator

    return operator


def _quantizer_cli() -> Any:
    from services.quantizer import cli as quantizer_cli

    return quantizer_cli


if __name__ == "__main__":
    raise SystemExit(main())
