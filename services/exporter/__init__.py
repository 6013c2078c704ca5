"""Event export: every source's events (accounts-0, each matching shard) published to broker topics.

Where (prefix = [exporter] subject_prefix, default "exchange.events"):
- NATS JetStream: subject `<prefix>.<source>.<kind>` (kind = the event's oneof field: balance_changed,
  order_updated, user_fill, trade_executed, order_accepted, order_done, ...), in one stream per source,
  `<nats_stream_prefix>_<SOURCE>` (e.g. EXCHANGE_EVENTS_ACCOUNTS-0). Fills only:
  `exchange.events.*.trade_executed` (public trades) or `exchange.events.accounts-0.user_fill`.
- Kafka: topic `<prefix>.<source>` (e.g. exchange.events.accounts-0), one partition (order = sequence).

Sources: every accounts shard and every matching shard of the configuration, and those added to the
file while the exporter runs (a shard's table before `exchange cluster add-shard`: see
services.exporter.app), each from the broker's checkpoint of it like any other.

Every message of a source, in sequence order and contiguous (1, 2, 3, ...), so a consumer that keeps the
last (source, sequence) it took consumes exactly once:
- payload: the event's protobuf bytes (exchange.v1.AccountEvent or exchange.v1.MatchingEvent), or its
  proto3 JSON when [exporter] format = "json";
- headers: Exchange-Source, Exchange-Sequence, Exchange-Kind, Exchange-Schema (the message's full name),
  Content-Type (application/x-protobuf or application/json); JetStream also Nats-Msg-Id =
  "<source>:<sequence>" (broker-side dedupe) and Nats-Expected-Last-Msg-Id = the previous message's id
  (the stream refuses a message that does not follow the last one stored: no gap; the first one
  carries Nats-Expected-Last-Sequence 0 instead); Kafka key =
  "<source>:<sequence>".

Checkpoint: the broker itself. On start and after every failure the exporter reads the last message of
the stream (JetStream) or of the partition (Kafka) and resumes after its sequence: what the broker
stored is exactly what is exported, so a kill -9 loses and duplicates nothing (no local file that could
lag the broker's acks). Nothing counts as exported before the broker acknowledged it (JetStream PubAck,
Kafka acks=all).
"""
