"""Between the quantizer's messages (exchange.v1 quantizer_service.proto) and its domain: strategy
configurations as the plain field dicts of params.py, reports and previews as decimal strings."""

from __future__ import annotations

from typing import Any, Final

from exchange.v1 import quantizer_service_pb2 as qpb
from google.protobuf.message import Message

from services.common.errors import InvalidArgument, Reason
from services.common.markets import MarketSpec
from services.quantizer.core import S
from services.quantizer.machine import QuantizerMachine
from services.quantizer.params import ratio_ppm
from services.quantizer.report import build_report, report_fields

STATES: Final = {
    "new": qpb.STRATEGY_STATE_WAITING_TRIGGER,
    "funding": qpb.STRATEGY_STATE_WAITING_TRIGGER,
    "waiting": qpb.STRATEGY_STATE_WAITING_TRIGGER,
    "running": qpb.STRATEGY_STATE_RUNNING,
    "stopping": qpb.STRATEGY_STATE_RUNNING,
    "paused": qpb.STRATEGY_STATE_PAUSED,
    "stopped": qpb.STRATEGY_STATE_STOPPED,
    "failed": qpb.STRATEGY_STATE_FAILED,
}


def message_fields(msg: Message) -> dict[str, Any]:
    """A config message as the params.py dict: every field by name, enums by value name (unset enums
    left out, so params.py takes its default)."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.enum_type is not None:
            if value == 0:
                continue
            known = f.enum_type.values_by_number.get(value)
            if known is None:  # proto3 enums are open: any number arrives
                raise InvalidArgument(f"{f.name}: no such value {value}", Reason.INVALID_FIELD)
            value = known.name
        out[f.name] = value
    return out


def config_of(request: qpb.CreateStrategyRequest | qpb.BacktestStrategyRequest) -> dict[str, Any]:
    kind = request.WhichOneof("config")
    if kind is None:
        raise InvalidArgument("one of grid, dca or recurring is required", Reason.INVALID_FIELD)
    return {"kind": kind, **message_fields(getattr(request, kind))}


def fill_config(target: qpb.Strategy, config: dict[str, Any]) -> None:
    kind = config.get("kind")
    if kind not in ("grid", "dca", "recurring"):
        return
    sub = getattr(target, kind)
    sub.SetInParent()
    for name, value in config.items():
        if name == "kind":
            continue
        f = sub.DESCRIPTOR.fields_by_name.get(name)
        if f is None:
            continue
        if f.enum_type is not None and isinstance(value, str):
            value = f.enum_type.values_by_name[value].number
        setattr(sub, name, value)


def slippage_ppm(text: str, default: int) -> int:
    if not text:
        return default
    ppm = ratio_ppm({"max_slippage": text}, "max_slippage")
    if not 0 <= ppm < S:
        raise InvalidArgument("max_slippage must be below 1 (100 %)", Reason.VALUE_OUT_OF_RANGE)
    return ppm


def report_pb(spec: MarketSpec, fields: dict[str, Any]) -> qpb.StrategyReport:
    fees = fields["fees_paid"]
    return qpb.StrategyReport(
        realized_profit=fields["realized_profit"],
        floating_profit=fields["floating_profit"],
        fees_paid_quote=fees[spec.quote.symbol],
        fees_paid_base=fees[spec.base.symbol],
        matched_pairs=fields["matched_pairs"],
        orders_placed=fields["orders_placed"],
        fills=fields["fills"],
        annualized_return=fields["annualized_return"],
        base_held=fields["base_held"],
        quote_held=fields["quote_held"],
        total_profit=fields["total_profit"],
        investment=fields["investment"],
        current_value=fields["current_value"],
        average_entry_price=fields["average_entry"],
        last_price=fields["last_price"],
        open_orders=fields["open_orders"],
        elapsed_us=fields["elapsed_us"],
    )


def strategy_pb(machine: QuantizerMachine, sid: int) -> qpb.Strategy:
    e = machine.get(sid)
    s = e.strategy
    spec = s.spec
    out = qpb.Strategy(
        strategy_id=e.sid,
        user_id=e.user,
        market=e.market,
        state=STATES.get(machine.state_name(e), qpb.STRATEGY_STATE_UNSPECIFIED),
        created_time_us=e.created,
        updated_time_us=e.updated,
        failure=s.failure,
        trading_user_id=e.trading_user,
        client_strategy_id=e.client_id,
        funds_returned=e.funds_returned,
        stop_reason=s.stop_reason,
    )
    fill_config(out, e.config)
    price, now = machine.market_price(e)
    out.report.CopyFrom(report_pb(spec, report_fields(spec, build_report(s, price, now))))
    return out
