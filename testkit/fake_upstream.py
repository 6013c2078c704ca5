"""In-test stand-ins for the upstream event streams: aio gRPC servers implementing
MatchingService.StreamEvents (one server per shard) and AccountsService.StreamAccountEvents from
in-memory event lists, on ephemeral ports, in a background thread with its own event loop.

Like the real services they serve from `from_sequence` on and keep the stream open after the last event
(new events appended to the list are sent too). Knobs to make life hard for the consumer:
- resend: start a few events before from_sequence (a harmless resend);
- fail_every: abort a stream with UNAVAILABLE after that many responses (an upstream restart);
- end_every: end a stream normally after that many responses;
- first_kept: answer OUT_OF_RANGE for an older from_sequence (events no longer retained);
- per_response / delay_s / paused: response size and pacing;
- raw: serve pre-serialized events (as the real services do, without re-encoding them per response);
- release_s + started_at: replay at a recorded pace (event i is served once `release_s[i]` seconds have
  passed since `started_at`, a time.monotonic() value).
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc

from services.common.rpc import register_service
from services.common.wire import repeated_messages
from testkit.history_sim import ACCOUNTS, Flow


@dataclass
class Feed:
    """One source's events and its behaviour knobs."""

    events: list[Any]
    per_response: int = 500
    delay_s: float = 0.0
    resend: int = 5
    fail_every: int = 0
    end_every: int = 0
    first_kept: int = 1
    paused: bool = False  # hold every stream (after nothing) until cleared
    release_s: list[float] | None = None  # per event: seconds after started_at it may be served
    started_at: float = 0.0
    payloads: list[bytes] | None = None  # the events serialized (raw serving)
    requests: list[int] = field(default_factory=list)  # from_sequence of every stream opened

    async def stream(self, from_sequence: int, context: Any) -> AsyncIterator[list[Any] | bytes]:
        start = from_sequence or 1
        self.requests.append(start)
        if start < self.first_kept:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"events before {self.first_kept} are no longer kept (asked {start})",
            )
        i = max(0, start - 1 - self.resend)
        sent = 0
        while True:
            if self.paused or i >= self.released():
                await asyncio.sleep(0.02 if self.release_s is None else 0.002)
                continue
            j = min(self.released(), i + self.per_response)
            if self.payloads is not None:
                yield repeated_messages(1, self.payloads[i:j])  # a serialized *Response
            else:
                yield self.events[i:j]
            i = j
            sent += 1
            if self.fail_every and sent % self.fail_every == 0:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream restarting")
            if self.end_every and sent % self.end_every == 0:
                return
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            else:
                await asyncio.sleep(0)

    def released(self) -> int:
        """How many events may be served now."""
        if self.release_s is None:
            return len(self.events)
        return bisect.bisect_right(self.release_s, time.monotonic() - self.started_at)


class FakeMatching(mgrpc.MatchingServiceServicer):
    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    async def StreamEvents(
        self, request: mpb.StreamEventsRequest, context: Any
    ) -> AsyncIterator[mpb.StreamEventsResponse | bytes]:
        async for chunk in self.feed.stream(request.from_sequence, context):
            yield chunk if isinstance(chunk, bytes) else mpb.StreamEventsResponse(events=chunk)


class FakeAccounts(agrpc.AccountsServiceServicer):
    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    async def StreamAccountEvents(
        self, request: apb.StreamAccountEventsRequest, context: Any
    ) -> AsyncIterator[apb.StreamAccountEventsResponse | bytes]:
        async for chunk in self.feed.stream(request.from_sequence, context):
            yield chunk if isinstance(chunk, bytes) else apb.StreamAccountEventsResponse(events=chunk)


class FakeUpstreams:
    """One aio server per source ("matching-0", "matching-1", "accounts-0"), in a background thread."""

    def __init__(self, flow: Flow, *, raw: bool = False, **knobs: Any) -> None:
        self.feeds: dict[str, Feed] = {
            name: Feed(list(events), **knobs) for name, events in flow.matching.items()
        }
        self.feeds[ACCOUNTS] = Feed(list(flow.accounts), **knobs)
        self.raw = raw
        if raw:
            for feed in self.feeds.values():
                feed.payloads = [e.SerializeToString() for e in feed.events]
        self.addresses: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._servers: list[grpc.aio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstreams", daemon=True)

    def __enter__(self) -> FakeUpstreams:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        for name, feed in self.feeds.items():
            server = grpc.aio.server()
            servicer: Any
            if name == ACCOUNTS:
                service, method = apb.DESCRIPTOR.services_by_name["AccountsService"], "StreamAccountEvents"
                servicer = FakeAccounts(feed)
            else:
                service, method = mpb.DESCRIPTOR.services_by_name["MatchingService"], "StreamEvents"
                servicer = FakeMatching(feed)
            register_service(server, service, servicer, raw_responses=[method] if self.raw else [])
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self._servers.append(server)
            self.addresses[name] = f"127.0.0.1:{port}"

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop_all() -> None:
            await asyncio.gather(*(s.stop(0) for s in self._servers))

        asyncio.run_coroutine_threadsafe(stop_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set(self, **knobs: Any) -> None:
        """Change knobs of every feed (takes effect for new streams, or at once for pacing)."""
        for feed in self.feeds.values():
            for k, v in knobs.items():
                setattr(feed, k, v)

    def config_toml(
        self,
        history_listen: str,
        database_url: str,
        markets_toml: str,
        shards: dict[str, list[str]] | None = None,
        batch_size: int | None = 5000,
    ) -> str:
        """An exchange.toml whose shards (default: the simulation's) and accounts are these fakes."""
        from testkit.history_sim import SHARDS

        lines = ['data_dir = "data"', "", "[accounts]", f'listen = "{self.addresses[ACCOUNTS]}"', ""]
        for name, markets in (shards or SHARDS).items():
            lines += [f'[shards."{name}"]', f'listen = "{self.addresses[name]}"']
            if markets:  # none listed: the shard owns every market
                lines.append("markets = [" + ", ".join(f'"{m}"' for m in markets) + "]")
            lines.append("")
        lines += [
            "[history]",
            f'listen = "{history_listen}"',
            f"database_url = {_toml_str(database_url)}",
            "" if batch_size is None else f"batch_size = {batch_size}",  # None: the service's default
            "",
            "[assets]" + markets_toml,
        ]
        return "\n".join(lines)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sources_of(feeds: dict[str, Feed]) -> dict[str, int]:
    return {name: len(f.events) for name, f in feeds.items()}
