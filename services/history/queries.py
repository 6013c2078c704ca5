"""Read side: paged, filtered queries over the history tables (blocking; the service runs them in a
worker thread).

Every list is newest first and uses keyset pagination: a page is `... WHERE <filters> AND (time, id) <
(last time, last id) ORDER BY time DESC, id DESC LIMIT n + 1` on an index that starts with the filter
columns and ends with (time, id), so page 1000 costs what page 1 costs. The page token is opaque:
url-safe base64 of the last row's key plus a keyed BLAKE2b tag over the key and the request's filters,
so a malformed or tampered token, or one passed with other filters than the request that produced it,
is InvalidArgument.

A user's trades come from two index range scans (as taker, as maker) merged by (time, id, role); a
self-trade (the user on both sides) yields both sides, taker first.

Errors: InvalidArgument for a bad token, an inverted or negative time range, an unknown side or
business, out-of-range ids; NotFound for an unknown market or asset, or an order history never saw.
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

from services.common.errors import InvalidArgument, NotFound
from services.common.markets import MarketCatalog
from services.common.units import INT64_MAX
from services.history.schema import balance_history, orders, trades

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

BUY, SELL = 1, 2
TAKER, MAKER = "taker", "maker"
_ROLE_RANK = {TAKER: 1, MAKER: 0}  # newest first, and within one trade the taker side first

# BalanceBusiness (events.proto) <-> the names used by the API.
BUSINESS_NAMES = {
    1: "deposit",
    2: "withdraw",
    3: "order_freeze",
    4: "order_unfreeze",
    5: "trade",
    6: "fee",
}
BUSINESS_CODES = {name: code for code, name in BUSINESS_NAMES.items()}


# --- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderRecord:
    order_id: int
    user_id: int
    client_order_id: str
    market: str
    side: int
    type: int
    time_in_force: int
    post_only: bool
    self_trade_prevention: int
    price_ticks: int
    amount_lots: int
    quote_budget: int
    filled_lots: int
    filled_quote_units: int
    remaining_lots: int
    fee_units: int
    status: int
    done_detail: int
    created_time_us: int
    updated_time_us: int
    expire_time_us: int
    maker_fee_ppm: int
    taker_fee_ppm: int
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

_TOKEN_KEY = b"exchange.history.page-token.v1"
_TOKEN_TAG = 10
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,400}")
_BAD_TOKEN = "invalid page_token (malformed, altered, or from a request with other filters)"


def _tag(body: bytes, scope: str) -> bytes:
    h = hashlib.blake2b(body, key=_TOKEN_KEY, digest_size=_TOKEN_TAG, person=b"history-page")
    h.update(b"\x00" + scope.encode())
    return h.digest()


def encode_page_token(scope: str, key: Sequence[int]) -> str:
    """An opaque token for the page after the row whose sort key is `key`, valid for `scope` only."""
    body = json.dumps([int(k) for k in key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body + _tag(body, scope)).rstrip(b"=").decode()


def decode_page_token(token: str, scope: str, length: int) -> tuple[int, ...]:
    """The sort key in `token`; InvalidArgument unless it was made by encode_page_token for `scope`."""
    if not _TOKEN_RE.fullmatch(token):
        raise InvalidArgument(_BAD_TOKEN)
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except ValueError:
        raise InvalidArgument(_BAD_TOKEN) from None
    body, tag = raw[:-_TOKEN_TAG], raw[-_TOKEN_TAG:]
    if len(raw) <= _TOKEN_TAG or not hmac.compare_digest(tag, _tag(body, scope)):
        raise InvalidArgument(_BAD_TOKEN)
    try:
        key = json.loads(body)
    except ValueError:
        raise InvalidArgument(_BAD_TOKEN) from None
    if (
        not isinstance(key, list)
        or len(key) != length
        or not all(type(k) is int and 0 <= k <= INT64_MAX for k in key)
    ):
        raise InvalidArgument(_BAD_TOKEN)
    return tuple(key)


# --- validation ------------------------------------------------------------------------------------


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def check_time_range(start_time_us: int, end_time_us: int) -> None:
    if start_time_us < 0 or end_time_us < 0:
        raise InvalidArgument("start_time_us and end_time_us must not be negative")
    if end_time_us and start_time_us >= end_time_us:
        raise InvalidArgument(
            f"empty or inverted time range: start_time_us {start_time_us} is not before "
            f"end_time_us {end_time_us}"
        )


def check_side(side: int) -> int:
    if side not in (0, BUY, SELL):
        raise InvalidArgument(f"unknown side {side}")
    return side


def check_id(value: int, name: str, *, required: bool = True) -> int:
    if value > INT64_MAX or value < 0:
        raise InvalidArgument(f"{name} out of range")
    if required and value == 0:
        raise InvalidArgument(f"{name} is required")
    return value


def _key_before(
    time_col: Any, id_col: Any, t: int, i: int, *, inclusive: bool = False
) -> ColumnElement[bool]:
    """(time, id) < (t, i), written so that every database uses the index range on time."""
    return and_(time_col <= t, or_(time_col < t, id_col <= i if inclusive else id_col < i))


# --- the queries -----------------------------------------------------------------------------------

_ORDER_FIELDS = [f.name for f in fields(OrderRecord)]
_BALANCE_FIELDS = [f.name for f in fields(BalanceRecord)]


class HistoryQueries:
    def __init__(self, engine: Engine, catalog: MarketCatalog) -> None:
        self.engine = engine
        self.catalog = catalog

    # validation against the catalog

    def check_market(self, market: str) -> str:
        if market and market not in self.catalog.markets:
            raise NotFound(f"unknown market {market!r}")
        return market

    def check_asset(self, asset: str) -> str:
        if asset and asset not in self.catalog.assets:
            raise NotFound(f"unknown asset {asset!r}")
        return asset

    # orders

    def get_order(self, order_id: int) -> OrderRecord:
        check_id(order_id, "order_id")
        with self.engine.connect() as conn:
            row = conn.execute(select(orders).where(orders.c.order_id == order_id)).first()
        if row is None:
            raise NotFound(f"order {order_id} not found")
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
        check_id(user_id, "user_id", required=False)
        self.check_market(market)
        check_side(side)
        check_time_range(start_time_us, end_time_us)
        n = page_size_of(page_size)
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
            t, i = decode_page_token(page_token, scope, 2)
            q = q.where(_key_before(c.finished_time_us, c.order_id, t, i))
        q = q.order_by(c.finished_time_us.desc(), c.order_id.desc()).limit(n + 1)
        with self.engine.connect() as conn:
            items = [_order(r) for r in conn.execute(q)]
        return _page(items, n, scope, lambda o: (o.finished_time_us or 0, o.order_id))

    # trades

    def list_order_trades(
        self, *, order_id: int, page_size: int = 0, page_token: str = ""
    ) -> Page[UserTradeRecord]:
        check_id(order_id, "order_id")
        n = page_size_of(page_size)
        scope = f"order-trades|{order_id}"
        cursor = decode_page_token(page_token, scope, 3) if page_token else None
        c = trades.c
        with self.engine.connect() as conn:
            items = self._sides(
                conn, n, cursor, [c.taker_order_id == order_id], [c.maker_order_id == order_id]
            )
            if not items and cursor is None:
                known = conn.execute(select(orders.c.order_id).where(orders.c.order_id == order_id)).first()
                if known is None:
                    raise NotFound(f"order {order_id} not found")
        return _page(items, n, scope, _trade_key)

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
        check_id(user_id, "user_id", required=False)
        self.check_market(market)
        check_side(side)
        check_time_range(start_time_us, end_time_us)
        n = page_size_of(page_size)
        scope = f"user-trades|{user_id}|{market}|{side}|{start_time_us}|{end_time_us}"
        cursor = decode_page_token(page_token, scope, 3) if page_token else None
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
        return _page(items, n, scope, _trade_key)

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
        check_id(user_id, "user_id", required=False)
        self.check_asset(asset)
        code = 0
        if business:
            code = BUSINESS_CODES.get(business, 0)
            if not code:
                raise InvalidArgument(f"unknown business {business!r}; one of {sorted(BUSINESS_CODES)}")
        check_time_range(start_time_us, end_time_us)
        n = page_size_of(page_size)
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
            t, i = decode_page_token(page_token, scope, 2)
            q = q.where(_key_before(c.time_us, c.id, t, i))
        q = q.order_by(c.time_us.desc(), c.id.desc()).limit(n + 1)
        with self.engine.connect() as conn:
            items = [BalanceRecord(*r) for r in conn.execute(q)]
        return _page(items, n, scope, lambda b: (b.time_us, b.id))


def _page(items: list[T], n: int, scope: str, key: Callable[[T], Sequence[int]]) -> Page[T]:
    if len(items) <= n:
        return Page(items, "")
    items = items[:n]
    return Page(items, encode_page_token(scope, key(items[-1])))


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
