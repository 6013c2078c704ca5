"""Hosted strategies through the gateway (beyond Binance): grid, DCA and recurring buys of the quantizer
service (services.clients.quantizer), for the key's user only. Signed like every private endpoint;
creating, pausing, resuming and stopping need the key's `strategies` permission, reading needs `read`.

    POST   /api/v3/strategy          symbol, type GRID|DCA|RECURRING, config (JSON of GridConfig /
                                     DcaConfig / RecurringBuyConfig, camelCase or snake_case),
                                     clientStrategyId (optional, idempotent)
    POST   /api/v3/strategy/preview  symbol, type GRID|DCA, config, price (optional): the plan
    GET    /api/v3/strategies        the user's strategies with their reports
    GET    /api/v3/strategy          strategyId
    POST   /api/v3/strategy/pause    strategyId        POST /api/v3/strategy/resume  strategyId
    DELETE /api/v3/strategy          strategyId, mode KEEP_ORDERS|CANCEL_ORDERS|CANCEL_AND_SELL

Answers are the quantizer's messages as JSON (camelCase, decimal strings); errors {code, msg} by the
same reason table as every other endpoint.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from exchange.v1 import quantizer_service_pb2 as qpb
from google.protobuf import json_format
from google.protobuf.message import Message

from services.clients.quantizer import QuantizerClient
from services.common.errors import Reason
from services.gateway.context import Gateway, json_response
from services.gateway.errors import INVALID_PARAMETER, NO_SUCH_ORDER, ApiError
from services.gateway.keys import READ, STRATEGIES
from services.gateway.params import Params
from services.gateway.private import signed

CONFIGS: dict[str, tuple[str, type[Message]]] = {
    "GRID": ("grid", qpb.GridConfig),
    "DCA": ("dca", qpb.DcaConfig),
    "RECURRING": ("recurring", qpb.RecurringBuyConfig),
}
STOP_MODES = {
    "KEEP_ORDERS": qpb.STOP_MODE_KEEP_ORDERS,
    "CANCEL_ORDERS": qpb.STOP_MODE_CANCEL_ORDERS,
    "CANCEL_AND_SELL": qpb.STOP_MODE_CANCEL_AND_SELL,
}
QUANTIZER: web.AppKey[QuantizerClient] = web.AppKey("quantizer", QuantizerClient)


def as_json(message: Message) -> Any:
    return json_format.MessageToDict(message)


def _config(p: Params, allowed: list[str]) -> tuple[str, Message]:
    kind = p.choice("type", allowed)
    field, cls = CONFIGS[kind]
    try:
        raw = json.loads(p.required("config"))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        message = json_format.ParseDict(raw, cls())
    except (ValueError, json_format.ParseError) as exc:
        raise ApiError(
            400,
            INVALID_PARAMETER,
            f"config is not a valid {cls.__name__}: {str(exc)[:120]}",
            reason=str(Reason.INVALID_FIELD),
        ) from None
    return field, message


async def _owned(gw: Gateway, q: QuantizerClient, p: Params, user_id: int) -> qpb.Strategy:
    strategy_id = p.integer("strategyId", low=1)
    if not strategy_id:
        p.required("strategyId")
    found = (await q.get_strategy(qpb.GetStrategyRequest(strategy_id=strategy_id))).strategy
    if found.user_id != user_id:  # never reveal another user's strategy
        raise ApiError(400, NO_SUCH_ORDER, "Strategy does not exist.", reason=str(Reason.STRATEGY_NOT_FOUND))
    return found


async def create(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, STRATEGIES)
    spec = gw.symbols.spec(p.required("symbol"))
    field, config = _config(p, ["GRID", "DCA", "RECURRING"])
    req = qpb.CreateStrategyRequest(
        user_id=v.user_id, market=spec.symbol, client_strategy_id=p.get("clientStrategyId")
    )
    getattr(req, field).CopyFrom(config)
    resp = await request.app[QUANTIZER].create_strategy(req)
    return json_response(as_json(resp))


async def preview(request: web.Request) -> web.Response:
    gw, p, _ = await signed(request, STRATEGIES)
    spec = gw.symbols.spec(p.required("symbol"))
    field, config = _config(p, ["GRID", "DCA"])
    q = request.app[QUANTIZER]
    if field == "grid":
        assert isinstance(config, qpb.GridConfig)
        grid = await q.preview_grid(
            qpb.PreviewGridRequest(market=spec.symbol, grid=config, price=p.get("price"))
        )
        return json_response(as_json(grid))
    assert isinstance(config, qpb.DcaConfig)
    dca = await q.preview_dca(qpb.PreviewDcaRequest(market=spec.symbol, dca=config, price=p.get("price")))
    return json_response(as_json(dca))


async def list_all(request: web.Request) -> web.Response:
    _, p, v = await signed(request, READ)
    resp = await request.app[QUANTIZER].list_strategies(
        qpb.ListStrategiesRequest(
            user_id=v.user_id,
            page_size=p.integer("limit", 100, low=1, high=1000),
            page_token=p.get("pageToken"),
        )
    )
    return json_response(as_json(resp))


async def get_one(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, READ)
    return json_response(as_json(await _owned(gw, request.app[QUANTIZER], p, v.user_id)))


async def pause(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, STRATEGIES)
    q = request.app[QUANTIZER]
    s = await _owned(gw, q, p, v.user_id)
    return json_response(as_json(await q.pause_strategy(qpb.PauseStrategyRequest(strategy_id=s.strategy_id))))


async def resume(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, STRATEGIES)
    q = request.app[QUANTIZER]
    s = await _owned(gw, q, p, v.user_id)
    return json_response(
        as_json(await q.resume_strategy(qpb.ResumeStrategyRequest(strategy_id=s.strategy_id)))
    )


async def stop(request: web.Request) -> web.Response:
    gw, p, v = await signed(request, STRATEGIES)
    q = request.app[QUANTIZER]
    s = await _owned(gw, q, p, v.user_id)
    mode = STOP_MODES[p.choice("mode", STOP_MODES, "CANCEL_ORDERS")]
    resp = await q.stop_strategy(
        qpb.StopStrategyRequest(strategy_id=s.strategy_id, mode=mode, max_slippage=p.get("maxSlippage"))
    )
    return json_response(as_json(resp))


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v3/strategy", create),
        web.post("/api/v3/strategy/preview", preview),
        web.get("/api/v3/strategies", list_all),
        web.get("/api/v3/strategy", get_one),
        web.post("/api/v3/strategy/pause", pause),
        web.post("/api/v3/strategy/resume", resume),
        web.delete("/api/v3/strategy", stop),
    ]
