"""Market data: K-lines, rolling 24h tickers, recent trades and L2 depth built from the matching shards'
event streams, served by MarketService (unary queries and per-market subscriptions).

    klines.py    K-line aggregation per interval (1m 5m 15m 1h 4h 1d 1w; UTC, weeks from Monday)
    ticker.py    rolling 24h statistics from the 1-minute K-lines, change ratio in exact arithmetic
    depth.py     L3 book mirror -> L2 depth with price merging
    state.py     the deterministic state machine: events in, per-shard checkpoints, snapshot bytes
    consumer.py  one asyncio StreamEvents follower per shard (reconnect with backoff, lag metrics)
    service.py   the gRPC servicer and the subscription fan-out
    app.py       restore, consume, serve, snapshot (python -m services.market --config ...)

Retention: 1m K-lines 30 days, 5m and 15m 180 days, 1h/4h/1d/1w forever (measured from the market's
latest trade); the last 1000 trades per market.
"""
