"""The exporter beside the real exchange, the local NATS JetStream and a tansu Kafka broker: fills,
order updates and balance changes reach the topics with contiguous sequences, and a kill -9 of the
exporter mid-flow loses and duplicates nothing (proved from the stream's and the partition's contents,
not by a consumer's dedupe)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2, types_pb2
from exchange.v1 import matching_service_pb2 as mpb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.exporter.jetstream import stream_name
from tests.cluster import Cluster
from tests.exporter.brokers import Stored, delete_streams, jetstream_messages, kafka_messages
from tests.exporter.conftest import Tansu

pytestmark = pytest.mark.slow

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL
SOURCES = ("accounts-0", "matching-0")


def exchange(tmp_path: Path, nats_url: str, tansu: Tansu, **options: Any) -> tuple[Cluster, str, str]:
    tag = uuid.uuid4().hex[:8]
    prefix = f"test{tag}.events"
    stream_prefix = f"TEST{tag}"
    c = Cluster(
        tmp_path,
        with_exporter=True,
        exporter_options={
            "nats_url": nats_url,
            "nats_stream_prefix": stream_prefix,
            "nats_storage": "memory",
            "kafka_bootstrap": tansu.bootstrap,
            "subject_prefix": prefix,
            **options,
        },
    )
    return c, prefix, stream_prefix


def place(c: Cluster, user: int, side: int, price: str, amount: str) -> int:
    return int(
        c.accounts.PlaceOrder(
            apb.PlaceOrderRequest(
                user_id=user,
                market="BTC_USDT",
                side=side,
                type=types_pb2.ORDER_TYPE_LIMIT,
                price=price,
                amount=amount,
            )
        ).order.order_id
    )


def fund(c: Cluster) -> None:
    c.accounts.Deposit(
        apb.DepositRequest(user_id=1, asset="USDT", amount="10000000", business="chain", business_id="tx1")
    )
    c.accounts.Deposit(
        apb.DepositRequest(user_id=2, asset="BTC", amount="100", business="chain", business_id="tx2")
    )


def upstream(c: Cluster) -> dict[str, int]:
    st = c.accounts.GetAccountsStatus(apb.GetAccountsStatusRequest())
    ms = c.matching("matching-0").GetMatchingStatus(mpb.GetMatchingStatusRequest())
    return {"accounts-0": int(st.event_sequence), "matching-0": int(ms.event_sequence)}


def exported(
    c: Cluster, nats_url: str, tansu: Tansu, prefix: str, stream_prefix: str, timeout: float = 60.0
) -> dict[str, dict[str, list[Stored]]]:
    """Once every source's last event is in both brokers: their contents, by sink and source."""
    targets = upstream(c)
    deadline = time.monotonic() + timeout
    while True:
        got = {
            "jetstream": {s: jetstream_messages(nats_url, stream_name(stream_prefix, s)) for s in SOURCES},
            "kafka": {s: kafka_messages(tansu.bootstrap, f"{prefix}.{s}") for s in SOURCES},
        }
        lasts = {(sink, s): (m[-1].sequence if m else 0) for sink, by in got.items() for s, m in by.items()}
        if all(lasts[(sink, s)] >= targets[s] for sink in got for s in SOURCES):
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"exported {lasts}, sources at {targets}\n{c.log('exporter')[-3000:]}")
        time.sleep(0.3)


def assert_exactly_once(messages: list[Stored], source: str) -> None:
    """Each sequence 1..N once, in order, keyed "<source>:<sequence>"."""
    sequences = [m.sequence for m in messages]
    assert sequences == list(range(1, len(messages) + 1)), f"{source}: gap or duplicate"
    assert all(m.source == source and m.key == f"{source}:{m.sequence}" for m in messages)


def test_fills_orders_and_balances_reach_both_brokers(tmp_path: Path, nats_url: str, tansu: Tansu) -> None:
    c, prefix, stream_prefix = exchange(tmp_path, nats_url, tansu)
    c.start()
    try:
        fund(c)
        for i in range(3):
            place(c, 2, SELL, str(30000 + 10 * i), "0.1")
        place(c, 1, BUY, "30020", "0.25")
        c.wait_quiet()
        got = exported(c, nats_url, tansu, prefix, stream_prefix)
        for sink, by_source in got.items():
            for source, messages in by_source.items():
                assert_exactly_once(messages, source)
            accounts_kinds = {m.kind for m in by_source["accounts-0"]}
            assert {"balance_changed", "order_updated", "user_fill"} <= accounts_kinds, sink
            trades = [m for m in by_source["matching-0"] if m.kind == "trade_executed"]
            assert len(trades) == 3, sink
            # The payload is the event's protobuf bytes.
            event = events_pb2.MatchingEvent.FromString(trades[0].payload)
            assert event.WhichOneof("event") == "trade_executed" and event.source == "matching-0"
        # JetStream subjects name the source and the kind.
        assert {m.subject for m in got["jetstream"]["matching-0"] if m.kind == "trade_executed"} == {
            f"{prefix}.matching-0.trade_executed"
        }
        # The same events in both brokers.
        assert [m.payload for m in got["kafka"]["accounts-0"]] == [
            m.payload for m in got["jetstream"]["accounts-0"]
        ]
    finally:
        c.stop()
        delete_streams(nats_url, [stream_name(stream_prefix, s) for s in SOURCES])


def test_kill9_of_the_exporter_mid_flow_loses_and_duplicates_nothing(
    tmp_path: Path, nats_url: str, tansu: Tansu
) -> None:
    c, prefix, stream_prefix = exchange(tmp_path, nats_url, tansu, batch_size=20)
    c.start()
    stop = threading.Event()
    placed = [0]

    def load() -> None:
        i = 0
        while not stop.is_set():
            place(c, 2, SELL, "30000", "0.01")
            place(c, 1, BUY, "30000", "0.01")
            placed[0] += 2
            i += 1

    try:
        fund(c)
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        at_kill = []
        for _ in range(2):
            time.sleep(1.5)
            c.kill("exporter")  # SIGKILL, mid-flow
            at_kill.append(
                (
                    len(kafka_messages(tansu.bootstrap, f"{prefix}.accounts-0")),
                    len(jetstream_messages(nats_url, stream_name(stream_prefix, "accounts-0"))),
                )
            )
            time.sleep(0.5)
            c.start(["exporter"])
        time.sleep(1.0)
        stop.set()
        worker.join(30)
        assert placed[0] > 50
        c.wait_quiet()
        got = exported(c, nats_url, tansu, prefix, stream_prefix)
        targets = upstream(c)
        for by_source in got.values():
            for source, messages in by_source.items():
                assert_exactly_once(messages, source)
                assert len(messages) == targets[source]
        # The kills hit a running export: some exported before each, more after.
        assert 0 < at_kill[0][0] < at_kill[1][0] < len(got["kafka"]["accounts-0"]), at_kill
        assert 0 < at_kill[0][1] < at_kill[1][1] < len(got["jetstream"]["accounts-0"]), at_kill
        assert c.log("exporter").count("exporter ready") == 3
    finally:
        stop.set()
        c.stop()
        delete_streams(nats_url, [stream_name(stream_prefix, s) for s in SOURCES])


def health(c: Cluster) -> int:
    stub = health_pb2_grpc.HealthStub(c.channel("exporter"))
    try:
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
    except grpc.RpcError:
        return -1


def test_a_refusing_broker_stops_the_export_loudly(tmp_path: Path, nats_url: str, tansu: Tansu) -> None:
    c, prefix, stream_prefix = exchange(tmp_path, nats_url, tansu)
    c.start()
    try:
        fund(c)
        exported(c, nats_url, tansu, prefix, stream_prefix)
        tansu.stop()  # the broker is gone
        place(c, 2, SELL, "30000", "0.1")
        deadline = time.monotonic() + 60
        while health(c) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, c.log("exporter")[-3000:]
            time.sleep(0.2)
        assert "the broker refuses the events" in c.log("exporter")
        # The broker comes back empty (tansu keeps its data in memory): the export notices the lost
        # messages and stays stopped instead of carrying on mid-stream on an empty topic.
        tansu.start()
        place(c, 2, SELL, "30000", "0.1")
        while "the broker lost acknowledged messages" not in c.log("exporter"):
            assert time.monotonic() < deadline, c.log("exporter")[-3000:]
            time.sleep(0.2)
        assert health(c) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        c.stop()
        delete_streams(nats_url, [stream_name(stream_prefix, s) for s in SOURCES])
