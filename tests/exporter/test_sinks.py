"""The exporter's pieces against the real brokers: the message format, the JetStream sink's broker-side
refusal of a gap and dedupe of a resend, and each sink's checkpoint read back by a fresh instance (what
a restarted exporter does)."""

from __future__ import annotations

import asyncio
import json
import tomllib
import uuid
from pathlib import Path

import pytest
from exchange.v1 import events_pb2

from services.common.config import config_from_dict
from services.exporter.app import ExporterApp
from services.exporter.jetstream import JetStreamSink
from services.exporter.kafka import KafkaSink
from services.exporter.messages import ExportMessage, check_format, sequence_of, to_message
from services.exporter.sinks import SinkRefused
from services.launcher import plan
from testkit.cluster import DEFAULT_MARKETS
from tests.exporter.brokers import delete_streams, jetstream_messages, kafka_messages
from tests.exporter.conftest import Tansu


def event(sequence: int, source: str = "accounts-0") -> events_pb2.AccountEvent:
    e = events_pb2.AccountEvent(source=source, sequence=sequence, time_us=1_700_000_000_000_000, user_id=7)
    e.balance_changed.SetInParent()
    return e


def test_a_message_carries_source_sequence_kind_and_the_event() -> None:
    m = to_message(event(5))
    assert (m.source, m.sequence, m.kind, m.message_id) == (
        "accounts-0",
        5,
        "balance_changed",
        "accounts-0:5",
    )
    assert events_pb2.AccountEvent.FromString(m.payload) == event(5)
    assert m.headers()["Exchange-Schema"] == "exchange.v1.AccountEvent"
    assert sequence_of(m.headers()) == 5
    assert sequence_of([("Exchange-Sequence", b"5")]) == 5
    j = to_message(event(6), "json")
    assert json.loads(j.payload)["sequence"] == "6" and j.content_type == "application/json"
    with pytest.raises(ValueError):
        check_format("xml")
    with pytest.raises(ValueError):
        sequence_of({})


def test_the_launcher_runs_the_exporter_only_when_enabled(tmp_path: Path) -> None:
    markets = tomllib.loads("[assets]" + DEFAULT_MARKETS)
    off = config_from_dict(markets, base_dir=tmp_path)
    exporter = {"enabled": True, "nats_url": "nats://127.0.0.1:4222"}
    on = config_from_dict({**markets, "exporter": exporter}, base_dir=tmp_path)
    assert "exporter" not in [c.name for c in plan(off)]
    assert "exporter" in [c.name for c in plan(on)]


def test_every_accounts_shard_and_every_matching_shard_is_a_source(tmp_path: Path) -> None:
    markets = tomllib.loads("[assets]" + DEFAULT_MARKETS)
    exporter = {"enabled": True, "nats_url": "nats://127.0.0.1:4222"}
    config = config_from_dict({**markets, "exporter": exporter, "accounts": {"shards": 2}}, base_dir=tmp_path)
    app = ExporterApp(config)  # connects nothing until it runs
    assert sorted(e.source for e in app.exports) == ["accounts-0", "accounts-1", "matching-0"]


def messages(first: int, last: int) -> list[ExportMessage]:
    return [to_message(event(s)) for s in range(first, last + 1)]


def test_jetstream_refuses_a_gap_drops_a_resend_and_resumes_from_its_last_message(nats_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    sink = JetStreamSink(nats_url, subject_prefix=f"t{tag}.events", stream_prefix=f"T{tag}", storage="memory")
    stream = sink.stream("accounts-0")

    async def run() -> None:
        await sink.start()
        try:
            assert await sink.last_sequence("accounts-0") == 0
            await sink.publish("accounts-0", messages(1, 300))  # more than one pipelined round
            with pytest.raises(SinkRefused):  # 302 does not follow 300: the stream refuses it
                await sink.publish("accounts-0", messages(302, 303))
            # A restarted exporter: a fresh sink reads the checkpoint back from the stream.
            again = JetStreamSink(nats_url, subject_prefix=f"t{tag}.events", stream_prefix=f"T{tag}")
            try:
                assert await again.last_sequence("accounts-0") == 300
                await again.publish("accounts-0", messages(301, 302))
            finally:
                await again.close()
            # A resend of an exported message (same Nats-Msg-Id) is dropped by the stream.
            nc = sink._nc
            assert nc is not None
            ack = await nc.jetstream().publish(
                sink.subject("accounts-0", "balance_changed"),
                b"",
                headers={"Nats-Msg-Id": "accounts-0:302"},
                stream=stream,
            )
            assert ack.duplicate
        finally:
            await sink.close()

    try:
        asyncio.run(run())
        stored = jetstream_messages(nats_url, stream)
        assert [m.sequence for m in stored] == list(range(1, 303))
    finally:
        delete_streams(nats_url, [stream])


def test_kafka_checkpoint_is_the_partitions_last_message(tansu: Tansu) -> None:
    sink = KafkaSink(tansu.bootstrap, topic_prefix="t.events")

    async def run() -> None:
        try:
            assert await sink.last_sequence("accounts-0") == 0
            await sink.publish("accounts-0", messages(1, 250))  # in few record batches (tansu's watermark)
            await sink.publish("accounts-0", messages(251, 253))
        finally:
            await sink.close()
        again = KafkaSink(tansu.bootstrap, topic_prefix="t.events")
        try:
            assert await again.last_sequence("accounts-0") == 253
        finally:
            await again.close()

    asyncio.run(run())
    stored = kafka_messages(tansu.bootstrap, "t.events.accounts-0")
    assert [m.sequence for m in stored] == list(range(1, 254))
    assert {m.key for m in stored} == {f"accounts-0:{s}" for s in range(1, 254)}


def test_kafka_unreachable_is_refused(tansu: Tansu) -> None:
    tansu.stop()
    sink = KafkaSink(tansu.bootstrap, topic_prefix="t.events", timeout_s=2.0)

    async def run() -> None:
        with pytest.raises(SinkRefused):
            await sink.last_sequence("accounts-0")
        await sink.close()

    asyncio.run(run())


def test_kafka_partition_with_a_gap_stops_the_export(tansu: Tansu) -> None:
    """A partition whose offsets and sequences disagree (something lost in between) is refused as a
    checkpoint, naming it, instead of exporting on past the gap."""
    sink = KafkaSink(tansu.bootstrap, topic_prefix="t.events")
    other = KafkaSink(tansu.bootstrap, topic_prefix="t.events")  # a second writer, knowing nothing

    async def run() -> str:
        try:
            await sink.publish("accounts-0", messages(1, 5))
            await other.publish("accounts-0", messages(7, 8))  # 6 is missing
            with pytest.raises(SinkRefused) as err:
                await other.last_sequence("accounts-0")
            return str(err.value)
        finally:
            await sink.close()
            await other.close()

    assert "a gap or a duplicate" in asyncio.run(run())


def test_kafka_that_comes_back_empty_is_noticed_not_exported_past(tansu: Tansu) -> None:
    """tansu keeps its data in memory: restarted, it has lost the acknowledged messages. The export
    refuses to go on (it used to carry on at sequence 6 on an empty topic) and keeps refusing."""
    sink = KafkaSink(tansu.bootstrap, topic_prefix="t.events", timeout_s=2.0)
    published: list[bool] = []

    async def attempt() -> str:
        """What the exporter does: publish the next batch; after a refusal, read the checkpoint."""
        try:
            await sink.publish("accounts-0", messages(6, 7))
            published.append(True)
        except SinkRefused:
            published.append(False)
        with pytest.raises(SinkRefused) as err:
            await sink.last_sequence("accounts-0")
        return str(err.value)

    async def run() -> list[str]:
        errors: list[str] = []
        try:
            await sink.publish("accounts-0", messages(1, 5))
            tansu.stop()
            tansu.start()  # same port, nothing stored
            # the first reads may only meet the dropped connection; once the broker answers again
            # the loss is named, and stays named
            while len(errors) < 6 and not (errors and "the broker lost" in errors[-1]):
                errors.append(await attempt())
            errors.append(await attempt())
            return errors
        finally:
            await sink.close()

    errors = asyncio.run(run())
    assert not any(published), (published, errors)  # no batch was ever acknowledged as exported
    # named, and then refused as inconsistent (lost, or the retried batch now stored twice)
    assert "the broker lost" in errors[-2], errors
    assert "an operator must look" in errors[-1] and "t.events.accounts-0" in errors[-1], errors
