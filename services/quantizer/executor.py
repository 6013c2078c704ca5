"""Carries out what the quantizer machine decided, after it is durable: places and cancels the
strategies' orders through the accounts client (over one SubmitOrders stream in batches,
services.quantizer.orders, or unary calls; each with its deterministic client order id, so a resend
is a duplicate, never a second order), opens and funds each strategy's sub-account, and gives
the funds back when a strategy stops. Outcomes that change a strategy (a refused placement, funding
done or refused, funds returned) go back into the journal as commands.

Each strategy's effects run in order (one chain per strategy with effects pending), so its cancel
never overtakes its placement; different strategies run in parallel and never wait for each other's
round trips (an effect used to wait behind every effect of the strategies sharing its worker). Order
commands on the SubmitOrders stream are batched by the stream itself; unary calls (funding, returns,
and orders without the stream) are bounded by `workers` at once.

On start (`reconcile`), after the journal replay and once the event feed caught up with accounts:
- strategies being funded are funded again (open and transfer are idempotent: label, transfer id);
- every running strategy's table is compared with the open orders of its trading user: an order the
  table holds that the exchange does not is placed again (a duplicate if it was placed and finished:
  its fills and end then arrive through the feed), an order the table is canceling is canceled again,
  an open order the table does not know (a stray) is canceled;
- stopped strategies whose funds were not returned yet return them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from exchange.v1 import accounts_service_pb2 as apb

from services.clients.accounts import AccountsClient
from services.clients.errors import ClientError
from services.common.markets import MarketSpec
from services.matching.model import BUY
from services.quantizer.core import Cancel, Place
from services.quantizer.machine import (
    ACTIVE,
    FUNDING,
    Effect,
    Entry,
    FundEffect,
    OrderEffect,
    QuantizerMachine,
    ReturnEffect,
    client_prefix,
    place_of,
)
from services.quantizer.orders import OrderStream, StreamBroken
from services.quantizer.timing import QUEUED

log = logging.getLogger(__name__)

UNAVAILABLE_CODE = 14  # google.rpc.Code
REFUSED = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "ALREADY_EXISTS", "NOT_FOUND", "OUT_OF_RANGE")
BUSY_RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def sub_account_label(sid: int) -> str:
    return f"strategy-{sid}"


def order_request(spec: MarketSpec, user: int, place: Place, limit_price: int) -> apb.PlaceOrderRequest:
    side = 1 if place.side == BUY else 2
    if place.price:
        return apb.PlaceOrderRequest(
            user_id=user,
            market=spec.symbol,
            side=side,  # type: ignore[arg-type]
            type=1,  # type: ignore[arg-type]
            time_in_force=1,  # type: ignore[arg-type]
            price=spec.format_price(place.price),
            amount=spec.format_amount(place.lots),
            client_order_id=place.cid,
        )
    if place.side == BUY:
        return apb.PlaceOrderRequest(
            user_id=user,
            market=spec.symbol,
            side=side,  # type: ignore[arg-type]
            type=2,  # type: ignore[arg-type]
            amount=spec.format_amount(place.lots) if place.lots else "",
            quote_amount=spec.format_quote(place.quote_budget),
            client_order_id=place.cid,
        )
    if limit_price:  # a market sell with a slippage cap: limit IOC
        return apb.PlaceOrderRequest(
            user_id=user,
            market=spec.symbol,
            side=side,  # type: ignore[arg-type]
            type=1,  # type: ignore[arg-type]
            time_in_force=2,  # type: ignore[arg-type]
            price=spec.format_price(limit_price),
            amount=spec.format_amount(place.lots),
            client_order_id=place.cid,
        )
    return apb.PlaceOrderRequest(
        user_id=user,
        market=spec.symbol,
        side=side,  # type: ignore[arg-type]
        type=2,  # type: ignore[arg-type]
        amount=spec.format_amount(place.lots),
        client_order_id=place.cid,
    )


class Executor:
    def __init__(
        self,
        accounts: AccountsClient,
        machine: Callable[[], QuantizerMachine],
        submit: Callable[[dict[str, Any]], None],
        *,
        workers: int = 16,
        orders: OrderStream | None = None,
    ) -> None:
        self.accounts = accounts
        self.machine = machine
        self.submit = submit
        # strategy id -> its pending effects, each with the monotonic time it was queued (timing.QUEUED)
        self.chains: dict[int, collections.deque[tuple[Effect, float]]] = {}
        self.gate = asyncio.Semaphore(max(1, workers))  # unary calls at once
        self.tasks: set[asyncio.Task[None]] = set()
        self.orders = orders  # None: unary PlaceOrder / CancelOrder
        self.placed = 0
        self.duplicates = 0
        self.refused = 0
        self.canceled = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.orders is not None:
            self.orders.start()

    async def stop(self) -> None:
        if self.orders is not None:
            await self.orders.stop()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def hook(self, effects: list[Any]) -> None:
        """StateMachineHost.on_effects: queue the batch's effects (in order per strategy)."""
        for effect in effects:
            self.enqueue(effect)

    def enqueue(self, effect: Effect) -> None:
        item = (effect, time.monotonic())
        chain = self.chains.get(effect.sid)
        if chain is not None:  # its chain is running: after the effects before it
            chain.append(item)
            return
        self.chains[effect.sid] = collections.deque([item])
        task = asyncio.create_task(self._drain(effect.sid), name=f"quantizer-effects-{effect.sid}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, sid: int) -> None:
        """Carry out strategy `sid`'s effects in order until none is left."""
        chain = self.chains[sid]
        try:
            while chain:
                effect, queued = chain[0]
                QUEUED.observe(time.monotonic() - queued)
                try:
                    if self.orders is not None and isinstance(effect, OrderEffect):
                        await self._run(effect)  # the stream batches and bounds these
                    else:
                        async with self.gate:
                            await self._run(effect)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("effect failed", extra={"strategy_id": effect.sid})
                chain.popleft()
        finally:
            if self.chains.get(sid) is chain:
                del self.chains[sid]

    async def _run(self, effect: Effect) -> None:
        if isinstance(effect, OrderEffect):
            if isinstance(effect.intent, Place):
                await self._place(effect.sid, effect.user, effect.market, effect.intent, effect.limit_price)
            else:
                await self._cancel(effect.sid, effect.user, effect.market, effect.intent.cid, effect.order_id)
        elif isinstance(effect, FundEffect):
            await self._fund(effect.sid)
        elif isinstance(effect, ReturnEffect):
            await self._return(effect.sid, effect.round)

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        """Call until it answers or is refused (UNAVAILABLE beyond the client's own retries: wait)."""
        delays = list(BUSY_RETRY_S)
        while True:
            try:
                return await call()
            except ClientError as exc:
                if exc.code_name in REFUSED:
                    raise
                delay = delays.pop(0) if len(delays) > 1 else delays[0]
                log.warning(
                    "accounts call failed, retrying", extra={"code": exc.code_name, "reason": exc.reason}
                )
                await asyncio.sleep(delay)

    # --- orders ----------------------------------------------------------------------------------

    async def _streamed(self, command: apb.OrderCommand) -> apb.OrderCommandResult:
        """One command over the order stream, again after UNAVAILABLE or a broken stream."""
        assert self.orders is not None
        delays = list(BUSY_RETRY_S)
        while True:
            try:
                result = await self.orders.call(command)
            except StreamBroken:
                result = None
            if result is not None and result.code != UNAVAILABLE_CODE:
                return result
            await asyncio.sleep(delays.pop(0) if len(delays) > 1 else delays[0])

    async def _place(self, sid: int, user: int, market: str, place: Place, limit_price: int) -> None:
        spec = self.machine().catalog.markets[market]
        request = order_request(spec, user, place, limit_price)
        if self.orders is not None:
            result = await self._streamed(apb.OrderCommand(place_order=request))
            if result.code != 0:
                self._refused(sid, place.cid, result.reason, result.message)
            elif result.duplicate:
                self.duplicates += 1
            else:
                self.placed += 1
            return
        try:
            resp = await self._retrying(lambda: self.accounts.place_order(request))
        except ClientError as exc:
            self._refused(sid, place.cid, exc.reason, exc.message)
            return
        if resp.duplicate:
            self.duplicates += 1
        else:
            self.placed += 1

    def _refused(self, sid: int, cid: str, reason: str, message: str) -> None:
        self.refused += 1
        log.info(
            "placement refused",
            extra={"strategy_id": sid, "cid": cid, "reason": reason, "why": message[:200]},
        )
        self.submit({"t": "rejected", "sid": sid, "cid": cid, "why": f"{reason}: {message}"[:256]})

    async def _cancel(self, sid: int, user: int, market: str, cid: str, order_id: int = 0) -> None:
        if order_id:
            request = apb.CancelOrderRequest(user_id=user, market=market, order_id=order_id)
        else:
            request = apb.CancelOrderRequest(user_id=user, market=market, client_order_id=cid)
        if self.orders is not None:
            result = await self._streamed(apb.OrderCommand(cancel_order=request))
            if result.code == 0:
                self.canceled += 1
            return
        try:
            await self._retrying(lambda: self.accounts.cancel_order(request))
            self.canceled += 1
        except ClientError as exc:
            # Already done or never placed: its end arrives (or arrived) through the feed.
            log.debug("cancel refused", extra={"strategy_id": sid, "cid": cid, "reason": exc.reason})

    # --- funds -----------------------------------------------------------------------------------

    async def _fund(self, sid: int) -> None:
        m = self.machine()
        e = m.get(sid)
        if e.phase != FUNDING:
            return
        spec = m.catalog.markets[e.market]
        sub = 0
        try:
            opened = await self._retrying(
                lambda: self.accounts.open_sub_account(
                    apb.OpenSubAccountRequest(owner_user_id=e.user, label=sub_account_label(sid))
                )
            )
            sub = int(opened.sub_account.user_id)
            for asset, units in ((spec.quote, e.invest_quote), (spec.base, e.invest_base)):
                if units <= 0:
                    continue
                amount = asset.format(units)
                tid = f"q{sid}-in-{asset.symbol}"
                await self._retrying(
                    partial(
                        self.accounts.transfer,
                        apb.TransferRequest(
                            from_user_id=e.user,
                            to_user_id=sub,
                            asset=asset.symbol,
                            amount=amount,
                            transfer_id=tid,
                        ),
                    )
                )
        except ClientError as exc:
            self.submit(
                {
                    "t": "fund_failed",
                    "sid": sid,
                    "trading_user": sub,
                    "why": f"funding the sub-account failed: {exc.reason}: {exc.message}"[:256],
                }
            )
            return
        self.submit({"t": "funded", "sid": sid, "trading_user": sub})

    async def _return(self, sid: int, round_: int = 0) -> None:
        m = self.machine()
        e = m.get(sid)
        done = not e.kept if round_ else e.returned
        if done or not e.trading_user or e.trading_user == e.user:
            return
        catalog = m.catalog
        try:
            balances = await self._retrying(
                lambda: self.accounts.get_balances(apb.GetBalancesRequest(user_id=e.trading_user))
            )
            for b in balances.balances:
                asset = catalog.assets.get(b.asset)
                if asset is None:
                    continue
                units = asset.parse(b.available, allow_zero=True)
                if units <= 0:
                    continue
                tid = f"q{sid}-out-{asset.symbol}" if round_ == 0 else f"q{sid}-out{round_}-{asset.symbol}"
                await self._retrying(
                    partial(
                        self.accounts.transfer,
                        apb.TransferRequest(
                            from_user_id=e.trading_user,
                            to_user_id=e.user,
                            asset=b.asset,
                            amount=b.available,
                            transfer_id=tid,
                        ),
                    )
                )
        except ClientError as exc:
            log.error(
                "returning a stopped strategy's funds failed",
                extra={"strategy_id": sid, "reason": exc.reason, "why": exc.message[:200]},
            )
            return
        self.submit({"t": "returned", "sid": sid, "round": round_})

    # --- reconciliation --------------------------------------------------------------------------

    async def open_orders(self, user: int, market: str) -> list[Any]:
        out: list[Any] = []
        token = ""
        while True:
            request = apb.ListOpenOrdersRequest(user_id=user, market=market, page_size=1000, page_token=token)
            resp = await self._retrying(partial(self.accounts.list_open_orders, request))
            out.extend(resp.orders)
            token = resp.next_page_token
            if not token:
                return out

    async def reconcile(self) -> dict[str, int]:
        """Bring the exchange in line with every strategy's table (see the module docstring)."""
        m = self.machine()
        stats = {"strategies": 0, "replaced": 0, "recanceled": 0, "strays": 0, "funding": 0, "returns": 0}
        for sid in sorted(m.entries):
            e: Entry = m.entries[sid]
            if e.phase == FUNDING:  # (stopped meanwhile: funded, then everything goes back)
                stats["funding"] += 1
                self.enqueue(FundEffect(sid))
                continue
            if e.phase != ACTIVE or not e.trading_user:
                if e.trading_user and not e.returned and e.finished:
                    stats["returns"] += 1
                    self.enqueue(ReturnEffect(sid))
                continue
            s = e.strategy
            if s.status == "stopped":
                if not e.returned:
                    stats["returns"] += 1
                    self.enqueue(ReturnEffect(sid))
                if e.kept and not s.orders:
                    stats["returns"] += 1
                    self.enqueue(ReturnEffect(sid, round=1))
                if not s.orders:
                    continue
            stats["strategies"] += 1
            listed = await self.open_orders(e.trading_user, e.market)
            open_now = {o.client_order_id for o in listed if o.client_order_id}
            shared = e.trading_user == e.user
            for order in s.open_orders():
                if order.canceling:
                    if order.cid in open_now:
                        stats["recanceled"] += 1
                        self.enqueue(OrderEffect(sid, e.trading_user, e.market, Cancel(order.cid)))
                elif order.cid not in open_now:
                    stats["replaced"] += 1
                    self.enqueue(
                        OrderEffect(
                            sid, e.trading_user, e.market, place_of(order), e.limits.get(order.cid, 0)
                        )
                    )
            if s.status != "stopped":
                for o in listed:
                    cid = o.client_order_id
                    if cid and cid in s.orders:
                        continue
                    if shared and not cid.startswith(client_prefix(sid)):
                        continue  # the owner's own order
                    stats["strays"] += 1
                    self.enqueue(OrderEffect(sid, e.trading_user, e.market, Cancel(cid), order_id=o.order_id))
        return stats

    async def idle(self) -> None:
        """Until every queued effect has been carried out (tests, shutdown)."""
        while self.chains:
            await asyncio.sleep(0.01)
