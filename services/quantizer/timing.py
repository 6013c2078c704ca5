"""Where a fill's reverse order spends its time inside the quantizer (Prometheus histograms, served
on [quantizer] metrics_listen; bench/quantizer_bench.py reads them per hop):

- event_age: an accounts event batch's last event time (the accounts host's clock) to its arrival
  in the feed (same machine: the clocks agree);
- journal: the feed handing a command to the host to the host's effects hook after that command's
  batch is durable (approximate: measured against the latest feed command when effects arrive);
- queued: an effect queued for its worker to the worker taking it (the per-strategy order);
- stream_wait: an order command handed to the SubmitOrders stream to its batch being sent (the
  stream's in-flight window);
- answered: a SubmitOrders batch sent to its results received (accounts' journal, fsync, reply).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Histogram

BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
)

EVENT_AGE = Histogram(
    "quantizer_event_age_seconds", "accounts event time to its arrival in the feed", buckets=BUCKETS
)
JOURNAL = Histogram(
    "quantizer_journal_seconds", "feed command handed to the host to its effects (durable)", buckets=BUCKETS
)
QUEUED = Histogram(
    "quantizer_effect_queued_seconds", "effect queued to its worker taking it", buckets=BUCKETS
)
STREAM_WAIT = Histogram(
    "quantizer_order_stream_wait_seconds", "order command queued to its batch sent", buckets=BUCKETS
)
ANSWERED = Histogram(
    "quantizer_order_answered_seconds", "SubmitOrders batch sent to its results", buckets=BUCKETS
)
