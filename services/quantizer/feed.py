"""The accounts events the strategies need, journaled in order: AccountsService.StreamAccountEvents
through the client library's follower, from the machine's checkpoint on.

One feed follows one accounts source: with accounts sharded by user, one feed per shard
("accounts-<i>", each with its own checkpoint in the machine). Each batch becomes at most one `feed`
command {src, last, items} (services.quantizer.machine): the fills
and order states of the strategies' trading users, and the trade prices (the taker's fill of each
trade) of the markets strategies trade. Batches with nothing for the strategies are journaled only to
move the checkpoint along now and then (every `checkpoint_every` events or `checkpoint_s` seconds), so
a restart does not read far back. What is selected here depends on which trading users and markets
exist when the batch is read (markets no strategy trades give only their last price per batch, for
previews and new strategies); a strategy's orders are placed only after its trading user is
registered (the `funded` command), so none of its events can come before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from exchange.v1 import events_pb2 as ev

from services.clients.accounts import AccountsClient
from services.clients.follow import EventFollower
from services.quantizer.machine import DEFAULT_SOURCE, ROLE_TAKER, QuantizerMachine
from services.quantizer.timing import EVENT_AGE

log = logging.getLogger(__name__)


def select(
    events: list[ev.AccountEvent], users: set[int], markets: set[str], checkpoint: int
) -> list[list[Any]]:
    """The feed items of a batch of accounts events (machine.py lists their fields)."""
    items: list[list[Any]] = []
    last_price: dict[str, int] = {}
    quiet: dict[str, list[Any]] = {}  # markets no strategy trades: only their last price per batch
    for e in events:
        seq = e.sequence
        if seq <= checkpoint:
            continue
        kind = e.WhichOneof("event")
        if kind == "user_fill":
            f = e.user_fill
            if e.user_id in users:
                items.append(
                    [
                        "f",
                        seq,
                        e.user_id,
                        f.order_id,
                        f.trade_id,
                        int(f.side),
                        int(f.role),
                        f.price_ticks,
                        f.amount_lots,
                        f.quote_units,
                        f.fee_units,
                        e.time_us,
                    ]
                )
            if f.role == ROLE_TAKER:
                if f.market not in markets:
                    quiet[f.market] = ["k", seq, f.market, f.price_ticks, f.trade_id, e.time_us]
                elif last_price.get(f.market) != f.price_ticks or e.user_id in users:
                    items.append(["k", seq, f.market, f.price_ticks, f.trade_id, e.time_us])
                    last_price[f.market] = f.price_ticks
        elif kind == "order_updated" and e.user_id in users:
            o = e.order_updated
            items.append(["o", seq, e.user_id, o.order_id, o.client_order_id, int(o.status), e.time_us])
    if quiet:
        items.extend(sorted(quiet.values(), key=lambda item: int(item[1])))
        items.sort(key=lambda item: int(item[1]))
    return items


class AccountsFeed:
    def __init__(
        self,
        accounts: AccountsClient,
        machine: Callable[[], QuantizerMachine],
        submit: Callable[[dict[str, Any]], None],
        *,
        source: str = DEFAULT_SOURCE,
        checkpoint_every: int = 20_000,
        checkpoint_s: float = 2.0,
    ) -> None:
        self.accounts = accounts
        self.machine = machine
        self.submit = submit
        self.source = source
        self.checkpoint_every = checkpoint_every
        self.checkpoint_s = checkpoint_s
        self.seen = 0  # last accounts sequence read (and handed to the journal when it mattered)
        self.journaled = 0
        self._journaled_at = time.monotonic()
        self._stop = asyncio.Event()
        self.connected = False
        self.fed_at = 0.0  # monotonic time of the latest feed command with items (timing.JOURNAL)

    async def start_sequence(self) -> int:
        """Where to read from: after the checkpoint, or (a new service) after the current end."""
        cp = self.machine().checkpoint_of(self.source)
        if cp:
            return cp + 1
        return await self.current_end() + 1

    async def current_end(self) -> int:
        """The last event sequence of this feed's accounts source now."""
        st = await self.accounts.get_accounts_status(shard=self.accounts.shard_of_source(self.source))
        return int(st.event_sequence)

    async def run(self) -> None:
        start = await self.start_sequence()
        self.seen = self.journaled = start - 1
        follower: EventFollower[ev.AccountEvent] = EventFollower(
            self.accounts.account_events(self.source),
            prefetch=8,
            max_events=5000,
            logger=log,
            on_connected=self._connected,
        )
        async with contextlib.aclosing(follower.batches(start)) as batches:
            async for batch in batches:
                m = self.machine()
                events = list(batch.events)
                items = select(events, m.trading_users(), m.live_markets(), m.checkpoint_of(self.source))
                last = batch.last
                self.seen = last
                now = time.monotonic()
                if events:
                    EVENT_AGE.observe(max(0.0, time.time() - events[-1].time_us / 1e6))
                if (
                    items
                    or last - self.journaled >= self.checkpoint_every
                    or now - self._journaled_at >= self.checkpoint_s
                ):
                    self.submit({"t": "feed", "src": self.source, "last": last, "items": items})
                    if items:
                        self.fed_at = now
                    self.journaled = last
                    self._journaled_at = now

    def _connected(self, value: bool) -> None:
        self.connected = value
