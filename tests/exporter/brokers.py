"""Reading back what the exporter published: every message of a JetStream stream or a Kafka partition,
as (source, sequence, kind, payload) in broker order."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import nats
from aiokafka import AIOKafkaConsumer, TopicPartition
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError


@dataclass(frozen=True)
class Stored:
    source: str
    sequence: int
    kind: str
    key: str  # Nats-Msg-Id (JetStream) or the Kafka key
    payload: bytes
    subject: str = ""


def jetstream_messages(url: str, stream: str) -> list[Stored]:
    """Every message of the stream, read by one ordered push consumer (a get per message took most of
    the e2e tests' time once streams held thousands)."""

    async def read() -> list[Stored]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return []
            last = int(info.state.last_seq or 0)
            if not info.state.messages:
                return []
            sub = await js.subscribe(
                info.config.subjects[0] if info.config.subjects else ">",
                stream=stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            out = []
            try:
                while True:
                    m = await sub.next_msg(timeout=10)
                    h = dict(m.headers or {})
                    out.append(
                        Stored(
                            h["Exchange-Source"],
                            int(h["Exchange-Sequence"]),
                            h["Exchange-Kind"],
                            h["Nats-Msg-Id"],
                            bytes(m.data or b""),
                            str(m.subject),
                        )
                    )
                    if m.metadata.sequence.stream >= last:
                        return out
            finally:
                await sub.unsubscribe()
        finally:
            await nc.close()

    return asyncio.run(read())


def delete_streams(url: str, names: list[str]) -> None:
    async def run() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for name in names:
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(run())


def kafka_messages(bootstrap: str, topic: str) -> list[Stored]:
    async def read() -> list[Stored]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            out: dict[int, Stored] = {}
            while True:
                records = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                if not records:
                    break
                for r in records:
                    h = {k: v.decode() for k, v in r.headers}
                    out[r.offset] = Stored(
                        h["Exchange-Source"],
                        int(h["Exchange-Sequence"]),
                        h["Exchange-Kind"],
                        r.key.decode(),
                        r.value,
                    )
            return [out[k] for k in sorted(out)]
        finally:
            await consumer.stop()

    return asyncio.run(read())
