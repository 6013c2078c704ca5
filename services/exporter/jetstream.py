"""NATS JetStream sink: one stream per source, subjects <prefix>.<source>.<kind>.

Every publish carries Nats-Msg-Id "<source>:<sequence>" (the stream drops a resend within its duplicate
window) and Nats-Expected-Last-Msg-Id, the id of the message before it: the stream refuses a message
that does not follow the last one it stored, so a failed publish in a pipelined round cannot leave a
gap (the ones after it are refused too). The checkpoint is the stream's last message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from services.exporter.messages import ExportMessage, message_id, sequence_of
from services.exporter.sinks import SinkRefused

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
PIPELINE = 256  # publishes awaiting their ack at once


def stream_name(prefix: str, source: str) -> str:
    return f"{prefix}_{source}".upper().replace(".", "_")


class JetStreamSink:
    name = "jetstream"

    def __init__(
        self,
        url: str,
        *,
        subject_prefix: str = "exchange.events",
        stream_prefix: str = "EXCHANGE_EVENTS",
        storage: str = "file",
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.subject_prefix = subject_prefix
        self.stream_prefix = stream_prefix
        self.storage = StorageType.MEMORY if storage == "memory" else StorageType.FILE
        self.timeout_s = timeout_s
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._ready: set[str] = set()  # sources whose stream exists

    def stream(self, source: str) -> str:
        return stream_name(self.stream_prefix, source)

    def subject(self, source: str, kind: str) -> str:
        return f"{self.subject_prefix}.{source}.{kind}"

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and self._nc.is_connected:
            return self._js
        await self.close()
        try:
            self._nc = await nats.connect(
                self.url, connect_timeout=self.timeout_s, max_reconnect_attempts=-1, allow_reconnect=True
            )
        except Exception as exc:
            raise SinkRefused(f"cannot connect to NATS at {self.url}: {type(exc).__name__}: {exc}") from exc
        self._js = self._nc.jetstream(timeout=self.timeout_s)
        self._ready.clear()
        return self._js

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):  # already closed or broken
                await nc.close()

    async def _ensure_stream(self, source: str) -> JetStreamContext:
        js = await self._connect()
        if source in self._ready:
            return js
        name = self.stream(source)
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[f"{self.subject_prefix}.{source}.>"],
                    storage=self.storage,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            )
        self._ready.add(source)
        return js

    async def last_sequence(self, source: str) -> int:
        try:
            js = await self._ensure_stream(source)
            info = await js.stream_info(self.stream(source))
            last = int(info.state.last_seq or 0)
            if info.state.messages == 0 or last == 0:
                sequence = 0
            else:
                msg = await js.get_msg(self.stream(source), seq=last)
                sequence = sequence_of(dict(msg.headers or {}))
        except SinkRefused:
            raise
        except (TimeoutError, NatsError, OSError, ValueError) as exc:
            raise SinkRefused(
                f"JetStream: cannot read the last message of {source}: {_describe(exc)}"
            ) from exc
        return sequence

    async def publish(self, source: str, messages: Sequence[ExportMessage]) -> None:
        if not messages:
            return
        try:
            js = await self._ensure_stream(source)
        except (TimeoutError, NatsError, OSError) as exc:
            raise SinkRefused(f"JetStream: {_describe(exc)}") from exc
        stream = self.stream(source)
        for start in range(0, len(messages), PIPELINE):
            chunk = messages[start : start + PIPELINE]
            sends = []
            for m in chunk:
                headers = {**m.headers(), "Nats-Msg-Id": m.message_id}
                # Each message names the one it follows: the stream refuses it unless that one is its
                # last (so neither a failed publish in this round nor a caller can leave a gap).
                if m.sequence > 1:
                    headers["Nats-Expected-Last-Msg-Id"] = message_id(m.source, m.sequence - 1)
                else:
                    headers["Nats-Expected-Last-Sequence"] = "0"  # the first: into an empty stream
                sends.append(
                    asyncio.ensure_future(
                        js.publish(self.subject(source, m.kind), m.payload, headers=headers, stream=stream)
                    )
                )
            results: list[Any] = await asyncio.gather(*sends, return_exceptions=True)
            for m, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    raise SinkRefused(
                        f"JetStream refused {m.message_id} on {stream}: {_describe(result)}"
                    ) from result


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
