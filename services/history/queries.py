"""Read side: paged, filtered queries over the history tables (blocking; the service runs them in a
worker thread).

Every list is newest first and uses keyset pagination: a page is `... WHERE <filters> AND (time, id) <
(last time, last id) ORDER BY time DESC, id DESC LIMIT n + 1` on an index that starts with the filter
columns and ends with (time, id), so page 1000 costs what page 1 costs. The page token is opaque:
url-safe base64 of the last row's key plus a BLAKE2b tag keyed with the exchange's page-token key (a
secret every HistoryQueries is given) over the key and the request's filters, so a malformed or
tampered token, one made with another key, or one passed with other filters than the request that
produced it, is InvalidArgument (INVALID_PAGE_TOKEN).

A user's trades come from two index range scans (as taker, as maker) merged by (time, id, role); a
self-trade (the user on both sides) yields both sides, taker first.

Request fields are checked against services.common.limits before any database work, each error with
its Reason: user ids 1..INT64_MAX (ListBalanceHistory also takes 0, the fee account) and order ids
1..INT64_MAX (VALUE_OUT_OF_RANGE; an order id of 0 is a missing field, INVALID_FIELD), times
0..INT64_MAX with start before end (VALUE_OUT_OF_RANGE), market and asset at most MAX_SYMBOL characters,
business at most MAX_BUSINESS and page_token at most MAX_PAGE_TOKEN (FIELD_TOO_LONG); an unknown side
or business is INVALID_FIELD, an unknown market or asset NotFound (UNKNOWN_MARKET, UNKNOWN_ASSET), an
order history never saw NotFound (ORDER_NOT_FOUND). page_size follows limits.page_size (0 = 100, more
than 1000 is 1000). Messages quote input through errors.quote() only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Select, and_, or_, select

from services.common import limits
from services.common.enums import BUSINESS_NAMES as BUSINESS_NAMES
from services.common.enums import BUY, SELL
from services.common.errors import InvalidArgument, NotFound, Reason, quote
from services.common.markets import MarketCatalog
from services.common.orders import OrderView
from services.common.units import INT64_MAX
from services.common.values import value
from services.history.schema import balance_history, orders, trades

T = TypeVar("T")

TAKER, MAKER = "taker", "maker"  # UserTrade.role
_ROLE_RANK = {TAKER: 1, MAKER: 0}  # newest first, and within one trade the taker side first

# BalanceBusiness (events.proto) <-> the names used by the API.
BUSINESS_CODES = {name: code for code, name in BUSINESS_NAMES.items()}


# --- records ---------------------------------------------------------------------------------------


@value
class OrderRecord(OrderView):
    """An order row: the order's latest state, and when it finished (None while open)."""

    finished_time_us: int | None
    sequence: int


@dataclass(frozen=True, slots=True)
class UserTradeRecord:
    """One side of a trade, as its user sees it (integers; the service formats them)."""

    id: int  # the trades row
    trade_id: int
    market: str
    time_us: int
    order_id: int
    user_id: int
    side: int
    role: str  # "taker" or "maker"
    price_ticks: int
    amount_lots: int
    quote_units: int
    base_units: int
    fee: int  # in the asset this side receives (base for a buy, quote for a sell)
    counter_order_id: int
    counter_user_id: int


@dataclass(frozen=True, slots=True)
class BalanceRecord:
    id: int
    user_id: int
    asset: str
    business: int
    business_id: str
    available_delta: int
    frozen_delta: int
    available: int
    frozen: int
    time_us: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


# --- page tokens -----------------------------------------------------------------------------------

MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64  # BLAKE2b's largest key
_TOKEN_TAG = 10
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
_BAD_TOKEN = "invalid page_token (malformed, altered, or from a request with other filters)"


class PageTokens:
    """Makes and checks page tokens with one secret key (the exchange's page-token key)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(f"the page-token key must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes")
        self._key = key

    def _tag(self, body: bytes, scope: str) -> bytes:
        h = hashlib.blake2b(body, key=self._key, digest_size=_TOKEN_TAG, person=b"history-page")
        h.update(b"\x00" + scope.encode())
        return h.digest()

    def encode(self, scope: str, key: Sequence[int]) -> str:
        """An opaque token for the page after the row whose sort key is `key`, valid for `scope` only."""
        body = json.dumps([int(k) for k in key], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(body + self._tag(body, scope)).rstrip(b"=").decode()

    def decode(self, token: str, scope: str, length: int) -> tuple[int, ...]:
        """The sort key in `token`; InvalidArgument unless this key's encode made it for `scope`."""
        limits.check_str(token, "page_token", limits.MAX_PAGE_TOKEN)
        if not _TOKEN_RE.fullmatch(token):
            raise InvalidArgument(_BAD_TOKEN, Reason.INVALID_PAGE_TOKEN)
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except ValueError:
            raise InvalidArgument(_BAD_TOKEN, Reason.INVALID_PAGE_TOKEN) from None
        body, tag = raw[:-_TOKEN_TAG], raw[-_TOKEN_TAG:]
        if len(raw) <= _TOKEN_TAG or not hmac.compare_digest(tag, self._tag(body, scope)):
            raise InvalidArgument(_BAD_TOKEN, Reason.INVALID_PAGE_TOKEN)
        try:
            key = json.loads(body)
        except ValueError:
            raise InvalidArgument(_BAD_TOKEN, Reason.INVALID_PAGE_TOKEN) from None
        if (
            not isinstance(key, list)
            or len(key) != length
            or not all(type(k) is int and 0 <= k <= INT64_MAX for k in key)
        ):
            raise InvalidArgument(_BAD_TOKEN, Reason.INVALID_PAGE_TOKEN)
        return tuple(key)


# --- validation ------------------------------------------------------------------------------------


def check_time_range(start_time_us: int, end_time_us: int) -> None:
    limits.check_time(start_time_us, "start_time_us")
    limits.check_time(end_time_us, "end_time_us")
    if end_time_us and start_time_us >= end_time_us:
        raise InvalidArgument(
            f"empty or inverted time range: start_time_us {start_time_us} is not before "
            f"end_time_us {end_time_us}",
            Reason.VALUE_OUT_OF_RANGE,
        )


def check_side(side: int) -> int:
    if side not in (0, BUY, SELL):
        raise InvalidArgument(f"unknown side {side}: 0 (any), 1 (buy) or 2 (sell)", Reason.INVALID_FIELD)
    return side


def check_order_id(order_id: int) -> int:
    """A required order id: 1..MAX_ORDER_ID."""
    if order_id == 0:
        raise InvalidArgument("order_id is required", Reason.INVALID_FIELD)
    return limits.check_order_id(order_id)


def _key_before(
    time_col: Any, id_col: Any, t: int, i: int, *, inclusive: bool = False
) -> ColumnElement[bool]:
    """(time, id) < (t, i), written so that every database uses the index range on time."""
    return and_(time_col <= t, or_(time_col < t, id_col <= i if inclusive else id_col < i))


# --- the queries -----------------------------------------------------------------------------------

_ORDER_FIELDS = [f.name for f in fields(OrderRecord)]
_BALANCE_FIELDS = [f.name for f in fields(BalanceRecord)]


class HistoryQueries:
    def __init__(self, engine: Engine, catalog: MarketCatalog, *, page_token_key: bytes) -> None:
        self.engine = engine
        self.catalog = catalog
        self.tokens = PageTokens(page_token_key)

    # validation against the catalog

    def check_market(self, market: str) -> str:
        limits.check_str(market, "market", limits.MAX_SYMBOL)
        if market and market not in self.catalog.markets:
            raise NotFound(f"unknown market {quote(market)}", Reason.UNKNOWN_MARKET)
        return market

    def check_asset(self, asset: str) -> str:
        limits.check_str(asset, "asset", limits.MAX_SYMBOL)
        if asset and asset not in self.catalog.assets:
            raise NotFound(f"unknown asset {quote(asset)}", Reason.UNKNOWN_ASSET)
        return asset

    def _check_user_filters(
        self, user_id: int, market: str, side: int, start_time_us: int, end_time_us: int, page_size: int
    ) -> int:
        """Checks the filters a user's order and trade lists share; returns the page size."""
        limits.check_user(user_id)
        self.check_market(market)
        check_side(side)
        check_time_range(start_time_us, end_time_us)
        return limits.page_size(page_size)

    def _page(self, items: list[T], n: int, scope: str, key: Callable[[T], Sequence[int]]) -> Page[T]:
        if len(items) <= n:
            return Page(items, "")
        items = items[:n]
        return Page(items, self.tokens.encode(scope, key(items[-1])))

    # orders

    def get_order(self, order_id: int) -> OrderRecord:
        check_order_id(order_id)
        with self.engine.connect() as conn:
            row = conn.execute(select(orders).where(orders.c.order_id == order_id)).first()
        if row is None:
            raise NotFound(f"order {order_id} not found", Reason.ORDER_NOT_FOUND)
        return _order(row)

    def list_finished_orders(
        self,
        *,
        user_id: int,
        market: str = "",
        side: int = 0,
        start_time_us: int = 0,
        end_time_us: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[OrderRecord]:
        n = self._check_user_filters(user_id, market, side, start_time_us, end_time_us, page_size)
        scope = f"orders|{user_id}|{market}|{side}|{start_time_us}|{end_time_us}"
        c = orders.c
        q = select(orders).where(c.user_id == user_id, c.finished_time_us >= start_time_us)
        if market:
            q = q.where(c.market == market)
        if side:
            q = q.where(c.side == side)
        if end_time_us:
            q = q.where(c.finished_time_us < end_time_us)
        if page_token:
            t, i = self.tokens.decode(page_token, scope, 2)
            q = q.where(_key_before(c.finished_time_us, c.order_id, t, i))
        q = q.order_by(c.finished_time_us.desc(), c.order_id.desc()).limit(n + 1)
        with self.engine.connect() as conn:
            items = [_order(r) for r in conn.execute(q)]
        return self._page(items, n, scope, lambda o: (o.finished_time_us or 0, o.order_id))

    # trades

    def list_order_trades(
        self, *, order_id: int, page_size: int = 0, page_token: str = ""
    ) -> Page[UserTradeRecord]:
        check_order_id(order_id)
        n = limits.page_size(page_size)
        scope = f"order-trades|{order_id}"
        cursor = self.tokens.decode(page_token, scope, 3) if page_token else None
        c = trades.c
        with self.engine.connect() as conn:
            items = self._sides(
                conn, n, cursor, [c.taker_order_id == order_id], [c.maker_order_id == order_id]
            )
            if not items and cursor is None:
                known = conn.execute(select(orders.c.order_id).where(orders.c.order_id == order_id)).first()
                if known is None:
                    raise NotFound(f"order {order_id} not found", Reason.ORDER_NOT_FOUND)
        return self._page(items, n, scope, _trade_key)

    def list_user_trades(
        self,
        *,
        user_id: int,
        market: str = "",
        side: int = 0,
        start_time_us: int = 0,
        end_time_us: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[UserTradeRecord]:
        n = self._check_user_filters(user_id, market, side, start_time_us, end_time_us, page_size)
        scope = f"user-trades|{user_id}|{market}|{side}|{start_time_us}|{end_time_us}"
        cursor = self.tokens.decode(page_token, scope, 3) if page_token else None
        c = trades.c
        common: list[ColumnElement[bool]] = []
        if market:
            common.append(c.market == market)
        if start_time_us:
            common.append(c.time_us >= start_time_us)
        if end_time_us:
            common.append(c.time_us < end_time_us)
        taker = [c.taker_user_id == user_id, *common]
        maker = [c.maker_user_id == user_id, *common]
        if side:
            taker.append(c.taker_side == side)
            maker.append(c.taker_side == (SELL if side == BUY else BUY))
        with self.engine.connect() as conn:
            items = self._sides(conn, n, cursor, taker, maker)
        return self._page(items, n, scope, _trade_key)

    def _sides(
        self,
        conn: Connection,
        n: int,
        cursor: tuple[int, ...] | None,
        taker_where: list[ColumnElement[bool]],
        maker_where: list[ColumnElement[bool]],
    ) -> list[UserTradeRecord]:
        """Up to n + 1 trade sides, newest first: the taker sides matching taker_where merged with the
        maker sides matching maker_where."""
        c = trades.c
        out: list[UserTradeRecord] = []
        for role, where in ((TAKER, taker_where), (MAKER, maker_where)):
            q: Select[Any] = select(trades).where(*where)
            if cursor is not None:
                t, i, r = cursor
                # (time, id, rank) < (t, i, r): a maker side (rank 0) of the cursor's own trade comes
                # after its taker side (rank 1).
                q = q.where(_key_before(c.time_us, c.id, t, i, inclusive=_ROLE_RANK[role] < r))
            q = q.order_by(c.time_us.desc(), c.id.desc()).limit(n + 1)
            out.extend(_side(row, role) for row in conn.execute(q))
        out.sort(key=_trade_key, reverse=True)
        return out[: n + 1]

    # balances

    def list_balance_history(
        self,
        *,
        user_id: int,
        asset: str = "",
        business: str = "",
        start_time_us: int = 0,
        end_time_us: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[BalanceRecord]:
        limits.check_user(user_id, allow_fee_account=True)
        self.check_asset(asset)
        limits.check_str(business, "business", limits.MAX_BUSINESS)
        code = 0
        if business:
            code = BUSINESS_CODES.get(business, 0)
            if not code:
                raise InvalidArgument(
                    # a short prefix only: the message lists every name there is
                    f"unknown business {quote(business, 16)}; one of {', '.join(sorted(BUSINESS_CODES))}",
                    Reason.INVALID_FIELD,
                )
        check_time_range(start_time_us, end_time_us)
        n = limits.page_size(page_size)
        scope = f"balances|{user_id}|{asset}|{business}|{start_time_us}|{end_time_us}"
        c = balance_history.c
        q = select(*(c[f] for f in _BALANCE_FIELDS)).where(c.user_id == user_id)
        if asset:
            q = q.where(c.asset == asset)
        if code:
            q = q.where(c.business == code)
        if start_time_us:
            q = q.where(c.time_us >= start_time_us)
        if end_time_us:
            q = q.where(c.time_us < end_time_us)
        if page_token:
            t, i = self.tokens.decode(page_token, scope, 2)
            q = q.where(_key_before(c.time_us, c.id, t, i))
        q = q.order_by(c.time_us.desc(), c.id.desc()).limit(n + 1)
        with self.engine.connect() as conn:
            items = [BalanceRecord(*r) for r in conn.execute(q)]
        return self._page(items, n, scope, lambda b: (b.time_us, b.id))


def _order(row: Any) -> OrderRecord:
    m = row._mapping
    return OrderRecord(**{f: m[f] for f in _ORDER_FIELDS})


def _trade_key(s: UserTradeRecord) -> tuple[int, int, int]:
    return (s.time_us, s.id, _ROLE_RANK[s.role])


def _side(row: Any, role: str) -> UserTradeRecord:
    taker_side = int(row.taker_side)
    if role == TAKER:
        side, order, user, fee = taker_side, row.taker_order_id, row.taker_user_id, row.taker_fee
        counter_order, counter_user = row.maker_order_id, row.maker_user_id
    else:
        side = SELL if taker_side == BUY else BUY
        order, user, fee = row.maker_order_id, row.maker_user_id, row.maker_fee
        counter_order, counter_user = row.taker_order_id, row.taker_user_id
    return UserTradeRecord(
        id=int(row.id),
        trade_id=int(row.trade_id),
        market=str(row.market),
        time_us=int(row.time_us),
        order_id=int(order),
        user_id=int(user),
        side=side,
        role=role,
        price_ticks=int(row.price_ticks),
        amount_lots=int(row.amount_lots),
        quote_units=int(row.quote_units),
        base_units=int(row.base_units),
        fee=int(fee),
        counter_order_id=int(counter_order),
        counter_user_id=int(counter_user),
    )
