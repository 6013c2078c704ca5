"""The `exchange strategy ...` and `exchange backtest ...` commands (registered by services/cli.py).

    exchange strategy preview grid BTC_USDT --lower 29000 --upper 31000 --intervals 4 --investment 1000
    exchange strategy create grid 1 BTC_USDT --lower 29000 --upper 31000 --intervals 4 --investment 1000
    exchange strategy create dca 1 BTC_USDT --base-order 100 --safety-order 100 --max-safety 3 \\
        --deviation 0.01 --take-profit 0.01 --investment 1000
    exchange strategy list 1
    exchange strategy show 7              # with the report
    exchange strategy pause 7 / resume 7
    exchange strategy stop 7 --mode keep|cancel|sell [--max-slippage 0.02]
    exchange backtest BTC_USDT --trades trades.csv --strategy grid.json --plot equity.png
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exchange.v1 import quantizer_service_pb2 as qpb

if TYPE_CHECKING:
    from services.cli import Client

STOP_MODES = {
    "keep": qpb.STOP_MODE_KEEP_ORDERS,
    "cancel": qpb.STOP_MODE_CANCEL_ORDERS,
    "sell": qpb.STOP_MODE_CANCEL_AND_SELL,
}
STATE_NAMES = {
    qpb.STRATEGY_STATE_WAITING_TRIGGER: "waiting",
    qpb.STRATEGY_STATE_RUNNING: "running",
    qpb.STRATEGY_STATE_PAUSED: "paused",
    qpb.STRATEGY_STATE_STOPPED: "stopped",
    qpb.STRATEGY_STATE_FAILED: "failed",
}

Cmd = Callable[[str, str, str], argparse.ArgumentParser]


def _grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lower", required=True, help="lower price (a level)")
    p.add_argument("--upper", required=True, help="upper price (a level)")
    p.add_argument("--intervals", type=int, required=True, help="N intervals: N+1 levels (1..500)")
    p.add_argument(
        "--spacing",
        choices=("arithmetic", "geometric"),
        default="arithmetic",
        help="level spacing (default arithmetic)",
    )
    p.add_argument("--investment", required=True, help="quote invested")
    p.add_argument("--investment-base", default="", help="base invested besides the quote")
    p.add_argument("--trigger", default="", help="start when the last price crosses this")
    p.add_argument("--stop-loss", default="", help="stop at or below this price")
    p.add_argument("--take-profit", default="", help="stop at or above this price")
    p.add_argument("--sell-on-stop", action="store_true", help="stop-loss / take-profit sell the base")
    p.add_argument("--trailing-up", action="store_true", help="the range follows the price up")
    p.add_argument("--trailing-limit", default="", help="trailing never adds a level above this")
    p.add_argument(
        "--initial-buy-slippage", default="", help="the start's base purchase may pay this much more (0.01)"
    )


def _dca_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-order", required=True, help="quote of the base order")
    p.add_argument("--safety-order", default="", help="quote of the first safety order")
    p.add_argument("--max-safety", type=int, default=0, help="safety orders per deal")
    p.add_argument("--max-active", type=int, default=1, help="safety orders resting at once")
    p.add_argument(
        "--deviation", default="", help="price deviation d of the first safety order (0.01 = 1 %%)"
    )
    p.add_argument("--step-scale", default="", help="step scale s (default 1)")
    p.add_argument("--volume-scale", default="", help="volume scale v (default 1)")
    p.add_argument("--take-profit", required=True, help="take profit on the fee-net average entry (0.01)")
    p.add_argument("--trailing", default="", help="trailing take-profit deviation")
    p.add_argument("--stop-loss", default="", help="stop-loss below the entry (fraction)")
    p.add_argument("--cooldown", type=int, default=0, help="seconds between deals")
    p.add_argument("--max-deals", type=int, default=0, help="deals in total (0 = no limit)")
    p.add_argument("--investment", required=True, help="quote invested (covers one deal)")


def grid_config(args: argparse.Namespace) -> qpb.GridConfig:
    return qpb.GridConfig(
        lower_price=args.lower,
        upper_price=args.upper,
        intervals=args.intervals,
        spacing=qpb.GRID_SPACING_GEOMETRIC if args.spacing == "geometric" else qpb.GRID_SPACING_ARITHMETIC,
        investment=args.investment,
        investment_base=args.investment_base,
        trigger_price=args.trigger,
        stop_loss_price=args.stop_loss,
        take_profit_price=args.take_profit,
        sell_on_stop=args.sell_on_stop,
        trailing_up=args.trailing_up,
        trailing_up_limit_price=args.trailing_limit,
        initial_buy_slippage=args.initial_buy_slippage,
    )


def dca_config(args: argparse.Namespace) -> qpb.DcaConfig:
    return qpb.DcaConfig(
        side=1,  # type: ignore[arg-type]
        base_order_quote=args.base_order,
        safety_order_quote=args.safety_order,
        max_safety_orders=args.max_safety,
        max_active_safety_orders=args.max_active,
        price_deviation=args.deviation,
        step_scale=args.step_scale,
        volume_scale=args.volume_scale,
        take_profit=args.take_profit,
        trailing_deviation=args.trailing,
        stop_loss=args.stop_loss,
        cooldown_seconds=args.cooldown,
        max_deals=args.max_deals,
        investment=args.investment,
    )


def add_commands(cmd: Cmd, common: argparse.ArgumentParser) -> None:
    from services.cli import USER

    p = cmd(
        "strategy",
        "hosted grid and DCA strategies: create, preview, list, show, pause, resume, stop",
        "Hosted strategies run in the quantizer service, each from a sub-account of its owner funded "
        "with its investment; stopping returns the funds.",
    )
    which = p.add_subparsers(dest="strategy_cmd", required=True, metavar="create|preview|list|show|...")

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        return which.add_parser(name, help=help, parents=[common], allow_abbrev=False)

    create = sub("create", "create a strategy for a user (idempotent by --id)")
    kinds = create.add_subparsers(dest="kind", required=True, metavar="grid|dca")
    for kind, options in (("grid", _grid_options), ("dca", _dca_options)):
        k = kinds.add_parser(kind, help=f"a {kind} strategy", parents=[common], allow_abbrev=False)
        k.add_argument("user", type=USER, help="owner user id")
        k.add_argument("market", help="market symbol, e.g. BTC_USDT")
        k.add_argument("--id", default="", help="client strategy id (idempotency key per user)")
        options(k)
    preview = sub("preview", "what a grid or DCA would place, before anything is placed")
    kinds = preview.add_subparsers(dest="kind", required=True, metavar="grid|dca")
    for kind, options in (("grid", _grid_options), ("dca", _dca_options)):
        k = kinds.add_parser(kind, help=f"preview a {kind}", parents=[common], allow_abbrev=False)
        k.add_argument("market", help="market symbol")
        k.add_argument("--price", default="", help="the price to plan for (default: the last trade)")
        options(k)
    ls = sub("list", "a user's strategies")
    ls.add_argument("user", type=USER, help="owner user id")
    for name, help in (("show", "one strategy with its report"), ("pause", "pause"), ("resume", "resume")):
        s = sub(name, help)
        s.add_argument("strategy_id", type=int, help="strategy id")
    stop = sub("stop", "stop a strategy: keep its orders, cancel them, or cancel and sell the base")
    stop.add_argument("strategy_id", type=int, help="strategy id")
    stop.add_argument("--mode", choices=tuple(STOP_MODES), required=True, help="keep, cancel or sell")
    stop.add_argument("--max-slippage", default="", help="sell: limit at last price x (1 - this), e.g. 0.02")

    b = cmd(
        "backtest",
        "run a grid or DCA configuration over recorded trades through the real order book",
        "Reads trades from a CSV file (time_us,price,amount,taker_side) and the strategy from a JSON file "
        '({"kind": "grid", "lower_price": ..., ...}, the API field names); prints the report and '
        "optionally draws the equity curve (needs matplotlib).",
    )
    b.add_argument("market", help="market symbol, e.g. BTC_USDT")
    b.add_argument("--trades", required=True, help="CSV file of trades")
    b.add_argument("--strategy", required=True, help="JSON file of the strategy's fields")
    b.add_argument(
        "--fill-model",
        choices=("touch", "through"),
        default="touch",
        help="touch: a trade at the order's price fills it (default); through: only one beyond it",
    )
    b.add_argument("--plot", metavar="PNG", help="write the equity curve here, e.g. equity.png")
    b.add_argument("--progress", action="store_true", help="a progress bar (needs tqdm)")


def strategy_line(s: qpb.Strategy) -> str:
    kind = s.WhichOneof("config") or "?"
    r = s.report
    quote = s.market.split("_")[-1]
    return (
        f"strategy {s.strategy_id} {kind} {s.market} user {s.user_id}: {STATE_NAMES.get(s.state, '?')}, "
        f"profit {r.total_profit} {quote} (realized {r.realized_profit}), {r.open_orders} open orders"
    )


def show_lines(s: qpb.Strategy) -> list[str]:
    r = s.report
    base, quote = s.market.split("_", 1) if "_" in s.market else (s.market, "")
    lines = [strategy_line(s)]
    if s.failure:
        lines.append(f"failure: {s.failure}")
    lines += [
        f"trades from sub-account {s.trading_user_id}" + ("; funds returned" if s.funds_returned else ""),
        f"investment {r.investment} {quote}, value {r.current_value} {quote} at {r.last_price} {quote}",
        f"realized {r.realized_profit} {quote} over {r.matched_pairs} matched pairs, floating "
        f"{r.floating_profit} {quote}",
        f"holding {r.base_held} {base} and {r.quote_held} {quote}; fees {r.fees_paid_base} {base}, "
        f"{r.fees_paid_quote} {quote}",
        f"average entry {r.average_entry_price or '-'} {quote}; {r.fills} fills, {r.orders_placed} orders "
        f"placed, {r.open_orders} open",
        f"annualized return {r.annualized_return} (simple: (value - investment) / investment x 365 days "
        "/ elapsed)",
    ]
    return lines


def cmd_strategy(c: Client, args: argparse.Namespace) -> int:
    from services.cli import EXIT_OK, _json, out
    from services.clients.quantizer import QuantizerClient, quantizer_address

    q = QuantizerClient.at(quantizer_address(c.config), security=_cli_security(c), timeout=c.timeout)
    try:
        what = args.strategy_cmd
        if what == "create":
            req = qpb.CreateStrategyRequest(user_id=args.user, market=args.market, client_strategy_id=args.id)
            if args.kind == "grid":
                req.grid.CopyFrom(grid_config(args))
            else:
                req.dca.CopyFrom(dca_config(args))
            created = c.run(q.create_strategy(req))
            if args.json:
                out(_json(created))
            else:
                out(("(already created) " if created.duplicate else "") + strategy_line(created.strategy))
            return EXIT_OK
        if what == "preview":
            msg: Any
            if args.kind == "grid":
                msg = c.run(
                    q.preview_grid(
                        qpb.PreviewGridRequest(market=args.market, grid=grid_config(args), price=args.price)
                    )
                )
                if not args.json:
                    out(
                        f"levels {', '.join(msg.levels)} (start {msg.start_price}, "
                        f"level {msg.empty_level} empty)"
                    )
                    out(f"{msg.buy_orders} buys and {msg.sell_orders} sells of {msg.amount_per_level} each")
                    out(f"initial purchase {msg.initial_buy_amount} for {msg.initial_buy_quote}")
                    out(
                        f"profit per grid {msg.profit_per_grid_min}..{msg.profit_per_grid_max} "
                        f"({msg.profit_rate_min}..{msg.profit_rate_max}) after maker fees on both sides"
                    )
                    out(f"quote needed {msg.quote_needed}; minimum investment {msg.min_investment}")
                    return EXIT_OK
            else:
                msg = c.run(
                    q.preview_dca(
                        qpb.PreviewDcaRequest(market=args.market, dca=dca_config(args), price=args.price)
                    )
                )
                if not args.json:
                    out(f"entry {msg.entry_price}; one deal spends {msg.deal_quote}")
                    for so in msg.safety_orders:
                        out(
                            f"  safety {so.number}: -{so.deviation} at {so.price}, "
                            f"{so.amount} for {so.quote_amount}"
                        )
                    out(
                        f"take profit {msg.take_profit_after_base} (base only) .. "
                        f"{msg.take_profit_all_filled} (all filled)"
                    )
                    return EXIT_OK
            out(_json(msg))
            return EXIT_OK
        if what == "list":
            listed = c.run(q.list_strategies(qpb.ListStrategiesRequest(user_id=args.user)))
            if args.json:
                out(_json(listed))
            elif not listed.strategies:
                out("no strategies")
            for s in listed.strategies:
                out(strategy_line(s))
            return EXIT_OK
        if what == "show":
            got = c.run(q.get_strategy(qpb.GetStrategyRequest(strategy_id=args.strategy_id))).strategy
        elif what == "pause":
            got = c.run(q.pause_strategy(qpb.PauseStrategyRequest(strategy_id=args.strategy_id))).strategy
        elif what == "resume":
            got = c.run(q.resume_strategy(qpb.ResumeStrategyRequest(strategy_id=args.strategy_id))).strategy
        else:
            got = c.run(
                q.stop_strategy(
                    qpb.StopStrategyRequest(
                        strategy_id=args.strategy_id,
                        mode=STOP_MODES[args.mode],
                        max_slippage=args.max_slippage,
                    )
                )
            ).strategy
        if args.json:
            out(_json(got))
        else:
            for line in show_lines(got) if what == "show" else [strategy_line(got)]:
                out(line)
        return EXIT_OK
    finally:
        c.run(q.close())


def _cli_security(c: Client) -> Any:
    from services.cli import _security

    return _security(c.config)


def cmd_backtest(c: Client, args: argparse.Namespace) -> int:
    from services.cli import EXIT_ERROR, EXIT_OK, CliError, out
    from services.common.errors import ExchangeError
    from services.quantizer.backtest import backtest_files, result_lines

    spec = c.config.catalog.markets.get(args.market)
    if spec is None:
        raise CliError(f"unknown market {args.market!r}", EXIT_ERROR)
    try:
        result = backtest_files(
            spec,
            args.trades,
            args.strategy,
            fill_model=args.fill_model,
            progress=args.progress,
            png=args.plot,
        )
    except (ExchangeError, OSError, ValueError, RuntimeError) as exc:
        raise CliError(f"backtest: {exc}", EXIT_ERROR) from None
    for line in result_lines(spec, result, args.json):
        out(line)
    if args.plot:
        out(f"equity curve: {args.plot}")
    return EXIT_OK
