"""The quantizer: hosted grid and DCA strategies as deterministic state machines, their reports,
backtests through the real matching book, and the hosted service (`python -m services.quantizer`).

Domain (pure Python):
- core.py: events in (fills, order done, price ticks, timers, funds, stop), intents out (place/cancel
  with deterministic client order ids), the strategy's order table and money, the base class;
- grid.py: levels (arithmetic/geometric), PreviewGrid (plan_grid), GridStrategy;
- dca.py: the safety-order ladder, DcaStrategy, recurring buys (RecurringBuy);
- report.py: the figures shared by live and backtest (realized/floating profit, fees, annualized return);
- backtest.py: replay recorded trades (CSV or an iterator) through services.matching.book.OrderBook;
- params.py: parameters from the API edge (decimal strings) and restore from a snapshot.

Service:
- machine.py: every strategy in one journaled state machine on the shared host (why: its docstring);
- feed.py: the accounts events the strategies need, journaled with their sequence;
- executor.py, orders.py: what the machine decided, carried out through accounts (SubmitOrders stream),
  sub-account funding and return, reconciliation on start;
- service.py, convert.py: QuantizerService over gRPC; cli.py: `exchange strategy` / `exchange backtest`;
- __main__.py: the process.
"""
