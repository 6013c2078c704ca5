"""A matching shard: the books of the markets it owns, fed by numbered commands from its sources.

`apply` is the deterministic state transition: (source, source_sequence, time, command) -> events.
A command whose source sequence is not above the last one applied from that source is a resend and
yields nothing (exactly-once over at-least-once delivery). Events are numbered per shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.enums import REJECT_UNKNOWN_MARKET
from services.common.markets import MarketSpec
from services.matching.book import OrderBook
from services.matching.model import (
    CancelAll,
    CancelOrder,
    Command,
    CommandRejected,
    Event,
    ExpireOrders,
    MoveOrder,
    PlaceOrder,
    ReduceOrder,
)

ENGINE_SNAPSHOT_VERSION = 1


@dataclass(slots=True)
class Applied:
    """The events of one command, all for `market` ("" for a shard-wide command with no events)."""

    market: str
    events: list[Event]


class MatchingEngine:
    def __init__(self, shard: str, markets: Iterable[MarketSpec]) -> None:
        self.shard = shard
        self.books: dict[str, OrderBook] = {m.symbol: OrderBook(m) for m in markets}
        self.source_seqs: dict[str, int] = {}
        self.event_seq = 0  # last event number handed out
        self.last_time = 0  # time of the last applied command

    def apply(self, source: str, seq: int, now: int, cmd: Command) -> list[Applied]:
        """Apply one command. Returns the events grouped by market (in emission order)."""
        if seq <= self.source_seqs.get(source, 0):
            return []
        self.source_seqs[source] = seq
        if now < self.last_time:
            now = self.last_time  # time never runs backwards inside the state machine
        self.last_time = now
        out: list[Event] = []
        if isinstance(cmd, ExpireOrders):
            results: list[Applied] = []
            for symbol in sorted(self.books) if not cmd.market else [cmd.market]:
                book = self.books.get(symbol)
                if book is None:
                    continue
                book.expire(now, out)
                if out:
                    results.append(Applied(symbol, out))
                    self.event_seq += len(out)
                    out = []
            return results
        if isinstance(cmd, CancelAll) and not cmd.market:
            # Every market of the shard (accounts sends one cancel-all per shard).
            results = []
            for symbol in sorted(self.books):
                self.books[symbol].cancel_all(cmd.user_id, cmd.side, now, out)
                if out:
                    results.append(Applied(symbol, out))
                    self.event_seq += len(out)
                    out = []
            return results
        book = self.books.get(cmd.market)
        if book is None:
            order_id = getattr(cmd, "order_id", 0)
            out.append(
                CommandRejected(
                    order_id,
                    cmd.user_id,
                    REJECT_UNKNOWN_MARKET,
                    f"market {cmd.market} is not owned by {self.shard}",
                )
            )
        elif type(cmd) is PlaceOrder:
            book.place(cmd, now, out)
        elif type(cmd) is CancelOrder:
            book.cancel(cmd.order_id, cmd.user_id, now, out)
        elif type(cmd) is CancelAll:
            book.cancel_all(cmd.user_id, cmd.side, now, out)
        elif type(cmd) is ReduceOrder:
            book.reduce(cmd.order_id, cmd.user_id, cmd.new_amount, now, out)
        elif type(cmd) is MoveOrder:
            book.move(cmd.order_id, cmd.user_id, cmd.new_price, now, out)
        else:  # pragma: no cover - the Command union is exhaustive
            raise TypeError(f"unknown command {cmd!r}")
        self.event_seq += len(out)
        return [Applied(cmd.market, out)] if out else []

    def expiry_due(self, now: int) -> bool:
        """Whether a GTD order of some book may be due at `now` (the expiry heaps may hold entries of
        orders gone since: an ExpireOrders command then changes nothing)."""
        return any(b.expiries and b.expiries[0][0] <= now for b in self.books.values())

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": ENGINE_SNAPSHOT_VERSION,
            "shard": self.shard,
            "event_seq": self.event_seq,
            "last_time": self.last_time,
            "source_seqs": dict(sorted(self.source_seqs.items())),
            "books": {symbol: self.books[symbol].snapshot() for symbol in sorted(self.books)},
        }

    @classmethod
    def restore(
        cls, shard: str, markets: Mapping[str, MarketSpec], data: Mapping[str, Any]
    ) -> MatchingEngine:
        if data.get("version") != ENGINE_SNAPSHOT_VERSION:
            raise ValueError("unsupported matching snapshot version")
        if data.get("shard") != shard:
            raise ValueError(f"snapshot of shard {data.get('shard')!r}, not {shard!r}")
        engine = cls(shard, [])
        engine.event_seq = int(data["event_seq"])
        engine.last_time = int(data["last_time"])
        engine.source_seqs = {str(k): int(v) for k, v in data["source_seqs"].items()}
        books = data["books"]
        unknown = sorted(set(books) - set(markets))
        if unknown:
            raise ValueError(f"snapshot holds books of markets not configured for {shard}: {unknown}")
        for symbol, spec in markets.items():
            engine.books[symbol] = (
                OrderBook.restore(spec, books[symbol]) if symbol in books else OrderBook(spec)
            )
        return engine

    def state_hash(self) -> str:
        h = hashlib.sha256()
        h.update(
            f"{self.shard}|{self.event_seq}|{self.last_time}|{sorted(self.source_seqs.items())}".encode()
        )
        for symbol in sorted(self.books):
            h.update(self.books[symbol].state_hash().encode())
        return h.hexdigest()
