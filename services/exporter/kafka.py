"""Kafka sink (aiokafka): topic <prefix>.<source>, one partition, key "<source>:<sequence>", acks=all.

The checkpoint is the partition's last message, read back on start and after every failure: the
broker holds exactly what was acknowledged (or more, when an ack was lost), so resuming after it
neither loses nor repeats. Reading it: seek to the high watermark - 1 and read to the end, keeping the
highest offset (tansu reports the watermark as the last record batch's base offset + 1, so the last
batch is read whole; on Kafka that is one record).

A broker that loses acknowledged messages (tansu keeps them in memory: a restart comes back empty) is
noticed, not exported past: in one partition sequence - offset is a constant, learned from every read
back and every ack. An ack or a read back that breaks it (the topic came back empty and the next
message landed at offset 0) or a partition found empty after acks is PartitionInconsistent: refused,
the export stops loudly and retries, and an operator must look (the events are still in the exchange's
own logs). The constant is kept in memory: a restarted exporter trusts what the partition holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from services.exporter.messages import ExportMessage, sequence_of
from services.exporter.sinks import SinkRefused

READ_POLL_MS = 300


class PartitionInconsistent(ValueError):
    """The partition's offsets and sequences disagree: something was lost or stored twice."""


class KafkaSink:
    name = "kafka"

    def __init__(
        self, bootstrap: str, *, topic_prefix: str = "exchange.events", timeout_s: float = 10.0
    ) -> None:
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._ready: set[str] = set()
        self._shift: dict[str, int] = {}  # source -> sequence - offset of its partition (once seen)

    def topic(self, source: str) -> str:
        return f"{self.topic_prefix}.{source}"

    async def start(self) -> None:
        await self._producer_up()

    async def _producer_up(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            request_timeout_ms=int(self.timeout_s * 1000),
            linger_ms=2,
        )
        try:
            await producer.start()
        except (TimeoutError, KafkaError, OSError) as exc:
            await _quietly(producer.stop())
            raise SinkRefused(f"cannot reach Kafka at {self.bootstrap}: {_describe(exc)}") from exc
        self._producer = producer
        return producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        self._ready.clear()
        if producer is not None:
            await _quietly(asyncio.wait_for(producer.stop(), self.timeout_s))

    async def _ensure_topic(self, source: str) -> None:
        if source in self._ready:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000)
        )
        try:
            await admin.start()
            if self.topic(source) not in await admin.list_topics():
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(self.topic(source), 1, 1)])
        finally:
            await _quietly(admin.close())
        self._ready.add(source)

    async def last_sequence(self, source: str) -> int:
        try:
            await self._ensure_topic(source)
            return await self._read_last(source)
        except (TimeoutError, KafkaError, OSError, ValueError) as exc:
            await self.close()
            raise SinkRefused(
                f"Kafka: cannot read the last message of {self.topic(source)}: {_describe(exc)}"
            ) from exc

    async def _read_last(self, source: str) -> int:
        tp = TopicPartition(self.topic(source), 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            if end <= 0:
                if source in self._shift:
                    raise PartitionInconsistent(
                        f"{tp.topic} is empty, but it acknowledged messages before: the broker lost "
                        "them; an operator must look"
                    )
                return 0
            consumer.seek(tp, end - 1)
            last: Any = None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            while True:
                records = (await consumer.getmany(tp, timeout_ms=READ_POLL_MS)).get(tp, [])
                if not records:
                    # The first fetch of a fresh consumer may take longer (metadata, connection): wait
                    # for the tail's first record until the deadline; after it, an empty poll is the end.
                    if last is None and loop.time() < deadline:
                        continue
                    break
                for r in records:
                    if last is None or r.offset > last.offset:
                        last = r
            if last is None:
                raise ValueError(f"no message at or after offset {end - 1} of {tp.topic}")
            sequence = sequence_of(last.headers)
            # The partition must hold contiguous sequences at contiguous offsets: a batch that failed
            # while a later one was stored (no idempotent producer on tansu) would break this, and the
            # export must stop there rather than carry on past a gap.
            first_offset = (await consumer.beginning_offsets([tp]))[tp]
            consumer.seek(tp, first_offset)
            head = (await consumer.getmany(tp, timeout_ms=int(self.timeout_s * 1000), max_records=1)).get(
                tp, []
            )
            if not head:
                raise ValueError(f"cannot read the first message of {tp.topic}")
            first = head[0]
            if last.offset - first.offset != sequence - sequence_of(first.headers):
                raise PartitionInconsistent(
                    f"{tp.topic}: offsets {first.offset}..{last.offset} hold sequences "
                    f"{sequence_of(first.headers)}..{sequence} (a gap or a duplicate): an operator must look"
                )
            self._learn(tp.topic, source, sequence, last.offset)
            return sequence
        finally:
            await _quietly(consumer.stop())

    async def publish(self, source: str, messages: Sequence[ExportMessage]) -> None:
        if not messages:
            return
        topic = self.topic(source)
        try:
            await self._ensure_topic(source)
            producer = await self._producer_up()
            futures = []
            for m in messages:
                headers = [(k, v.encode()) for k, v in m.headers().items()]
                futures.append(
                    await producer.send(
                        topic, m.payload, key=m.message_id.encode(), partition=0, headers=headers
                    )
                )
            # aiokafka retries an unreachable broker without end: bound the wait for the acks.
            acks = await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s)
            for m, ack in zip(messages, acks, strict=True):
                self._learn(topic, source, m.sequence, ack.offset)
        except SinkRefused:
            raise
        except PartitionInconsistent as exc:
            await self.close()
            raise SinkRefused(str(exc)) from exc
        except (TimeoutError, KafkaError, OSError) as exc:
            await self.close()  # a fresh producer next time; the checkpoint is read back first
            raise SinkRefused(f"Kafka refused a message on {topic}: {_describe(exc)}") from exc

    def _learn(self, topic: str, source: str, sequence: int, offset: int) -> None:
        shift = sequence - offset
        known = self._shift.setdefault(source, shift)
        if known != shift:
            raise PartitionInconsistent(
                f"{topic}: sequence {sequence} is at offset {offset}, where it belongs at offset "
                f"{sequence - known}: the broker lost acknowledged messages (or stored some twice); "
                "an operator must look"
            )


async def _quietly(aw: Any) -> None:
    with contextlib.suppress(Exception):
        await aw


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
