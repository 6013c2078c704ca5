"""A matching shard added to the configuration file while the exporter runs is exported without a
restart (services.exporter.app, through services.common.config_watch): its events, those from before
the addition included, reach both brokers with contiguous (source, sequence), and a kill -9 after it
resumes from the broker's checkpoint of the new shard like of any other (nothing lost or twice)."""

from __future__ import annotations

import os
import signal
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import events_pb2, types_pb2
from exchange.v1 import matching_service_pb2 as mpb

from services.common.config import config_from_dict, load_config
from services.exporter.app import ExporterApp
from services.exporter.jetstream import stream_name
from testkit.cluster import DEFAULT_MARKETS
from tests.cluster import Cluster
from tests.exporter.brokers import Stored, delete_streams, jetstream_messages, kafka_messages
from tests.exporter.conftest import Tansu

BUY, SELL = types_pb2.SIDE_BUY, types_pb2.SIDE_SELL
NEW = "matching-1"  # owns ETH_USDT; not in the exporter's configuration when it starts


def _rewrite_later(path: Path, text: str) -> None:
    """Write `text` with a later modification time than the file had (whatever the clock's grain)."""
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_shard_and_an_accounts_shard_added_to_the_configuration_get_their_exports(tmp_path: Path) -> None:
    """Before start (no broker touched): a reload adds one export per sink for each new source, once;
    the sources already exported are not doubled and a repeat of the same file adds nothing."""
    markets = tomllib.loads("[assets]" + DEFAULT_MARKETS)
    exporter = {"enabled": True, "nats_url": "nats://127.0.0.1:4222", "kafka_bootstrap": "127.0.0.1:1"}
    one = {"listen": "127.0.0.1:50061"}
    config = config_from_dict(
        {**markets, "exporter": exporter, "shards": {"matching-0": one}}, base_dir=tmp_path
    )
    app = ExporterApp(config)
    assert sorted((e.source, e.sink.name) for e in app.exports) == [
        ("accounts-0", "jetstream"),
        ("accounts-0", "kafka"),
        ("matching-0", "jetstream"),
        ("matching-0", "kafka"),
    ]
    shards = {"matching-0": one, NEW: {"listen": "127.0.0.1:50062", "markets": ["ETH_USDT"]}}
    grown = config_from_dict(
        {**markets, "exporter": exporter, "shards": shards, "accounts": {"shards": 2}}, base_dir=tmp_path
    )
    app._reconfigure(grown)
    app._reconfigure(grown)
    pairs = sorted((e.source, e.sink.name) for e in app.exports)
    assert pairs == sorted(
        (s, k) for s in ("accounts-0", "accounts-1", "matching-0", NEW) for k in ("jetstream", "kafka")
    )
    assert len({id(e.sink) for e in app.exports}) == len(app.exports)  # each its own broker connection
    assert app.resolver.address(NEW) == "127.0.0.1:50062"  # the new shard is dialed where the file says
    assert not app._tasks  # not started: start() runs them all


def _place(c: Cluster, user: int, side: types_pb2.Side, price: str, amount: str) -> None:
    c.accounts.PlaceOrder(
        apb.PlaceOrderRequest(
            user_id=user,
            market="ETH_USDT",
            side=side,
            type=types_pb2.ORDER_TYPE_LIMIT,
            price=price,
            amount=amount,
        ),
        timeout=10,
    )


def _trade(c: Cluster, n: int) -> None:
    for _ in range(n):
        _place(c, 2, SELL, "2000", "0.01")
        _place(c, 1, BUY, "2000", "0.01")


def _exported(
    c: Cluster, nats_url: str, tansu: Tansu, prefix: str, stream_prefix: str
) -> dict[str, list[Stored]]:
    """Once the new shard's last event is in both brokers: what each holds of it."""
    target = int(c.matching(NEW).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5).event_sequence)
    deadline = time.monotonic() + 60
    while True:
        got = {
            "jetstream": jetstream_messages(nats_url, stream_name(stream_prefix, NEW)),
            "kafka": kafka_messages(tansu.bootstrap, f"{prefix}.{NEW}"),
        }
        lasts = {sink: (m[-1].sequence if m else 0) for sink, m in got.items()}
        if all(last >= target for last in lasts.values()):
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"exported {lasts} of {NEW}, at {target}\n{c.log('exporter')[-3000:]}")
        time.sleep(0.3)


def _assert_exactly_once(messages: list[Stored], count: int) -> None:
    assert [m.sequence for m in messages] == list(range(1, count + 1)), "gap or duplicate"
    assert all(m.source == NEW and m.key == f"{NEW}:{m.sequence}" for m in messages)


@pytest.mark.slow
def test_a_shard_added_while_running_is_exported_from_its_first_event(
    tmp_path: Path, nats_url: str, tansu: Tansu
) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix, stream_prefix = f"test{tag}.events", f"TEST{tag}"
    exporter_config = tmp_path / "exporter.toml"
    c = Cluster(
        tmp_path,
        shards={"matching-0": [], NEW: ["ETH_USDT"]},
        with_exporter=True,
        exporter_options={
            "nats_url": nats_url,
            "nats_stream_prefix": stream_prefix,
            "nats_storage": "memory",
            "kafka_bootstrap": tansu.bootstrap,
            "subject_prefix": prefix,
        },
        service_args={"exporter": ["--config", str(exporter_config)]},
    )
    # The exporter starts on the configuration without the new shard's table (every market on matching-0).
    full = c.config_path.read_text()
    head, _, tail = full.partition(f'[shards."{NEW}"]')
    exporter_config.write_text(head + tail.split("\n", 2)[2])
    assert NEW not in load_config(exporter_config).shards
    streams = [stream_name(stream_prefix, s) for s in ("accounts-0", "matching-0", NEW)]
    c.start()
    try:
        for user, asset, amount in ((1, "USDT", "10000000"), (2, "ETH", "1000")):
            c.accounts.Deposit(
                apb.DepositRequest(user_id=user, asset=asset, amount=amount, business="d", business_id=asset)
            )
        _trade(c, 3)  # events on the new shard before the exporter knows of it
        c.wait_quiet()
        time.sleep(3)  # more than a config watch interval: nothing made it export the shard yet
        assert jetstream_messages(nats_url, stream_name(stream_prefix, NEW)) == []
        assert "exporting a source added" not in c.log("exporter")

        _rewrite_later(exporter_config, full)  # the operator adds the shard's table (then add-shard)
        _trade(c, 3)
        c.wait_quiet()
        got = _exported(c, nats_url, tansu, prefix, stream_prefix)
        status = c.matching(NEW).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
        for messages in got.values():
            _assert_exactly_once(messages, int(status.event_sequence))
            trades = [m for m in messages if m.kind == "trade_executed"]
            assert len(trades) == 6  # three before the addition, three after
            event = events_pb2.MatchingEvent.FromString(trades[-1].payload)
            assert event.source == NEW and event.market == "ETH_USDT"
        assert [m.payload for m in got["kafka"]] == [m.payload for m in got["jetstream"]]
        log = c.log("exporter")
        assert log.count("exporting a source added to the configuration") == 1, log[-3000:]
        assert log.count("exporter ready") == 1  # no restart

        # The new shard's checkpoint is the broker's, like any other's: kill -9, more trades, restart.
        c.kill("exporter", signal.SIGKILL)
        _trade(c, 2)
        c.start(["exporter"])
        c.wait_quiet()
        got = _exported(c, nats_url, tansu, prefix, stream_prefix)
        status = c.matching(NEW).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
        for messages in got.values():
            _assert_exactly_once(messages, int(status.event_sequence))
            assert len([m for m in messages if m.kind == "trade_executed"]) == 8
    finally:
        c.stop()
        delete_streams(nats_url, streams)
