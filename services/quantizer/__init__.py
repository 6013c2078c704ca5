"""The quantizer's domain: hosted grid and DCA strategies as deterministic state machines, their
reports, and backtests through the real matching book (pure Python; the gRPC service comes later).

- core.py: events in (fills, order done, price ticks, timers, funds, stop), intents out (place/cancel
  with deterministic client order ids), the strategy's order table and money, the base class;
- grid.py: levels (arithmetic/geometric), PreviewGrid (plan_grid), GridStrategy;
- dca.py: the safety-order ladder, DcaStrategy, recurring buys (RecurringBuy);
- report.py: the figures shared by live and backtest (realized/floating profit, fees, annualized return);
- backtest.py: replay recorded trades (CSV or an iterator) through services.matching.book.OrderBook;
- params.py: parameters from the API edge (decimal strings) and restore from a snapshot.
"""
