"""QuantizerClient: QuantizerService (services.quantizer, hosted grid / DCA strategies), typed and thin.

Retried on UNAVAILABLE: the reads and previews; CreateStrategy when it carries a client_strategy_id
(idempotent per user: a repeat answers the same strategy, duplicate=True); PauseStrategy,
ResumeStrategy and StopStrategy (a repeat of an applied one changes nothing). BacktestStrategy is a
read (nothing is placed).

The quantizer is not among the resolver's fixed names: dial it with `QuantizerClient.at(address)`
(`quantizer_address(config)` gives the [quantizer] advertise address).
"""

from __future__ import annotations

from exchange.v1 import quantizer_service_pb2 as pb

from services.clients.base import ServiceClient
from services.clients.resolver import advertise_address
from services.clients.retry import RetryPolicy
from services.common.config import ExchangeConfig

Options = RetryPolicy | None


def quantizer_address(config: ExchangeConfig) -> str:
    return advertise_address(config.quantizer.listen, config.quantizer.advertise)


class QuantizerClient(ServiceClient):
    SERVICE = "exchange.v1.QuantizerService"
    NAME = "quantizer"
    DEFAULT_TIMEOUT_S = 15.0

    async def create_strategy(
        self, request: pb.CreateStrategyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.CreateStrategyResponse:
        """Retried only with a client_strategy_id (idempotent)."""
        return await self._unary(
            "CreateStrategy",
            request,
            pb.CreateStrategyResponse,
            safe=bool(request.client_strategy_id),
            timeout=timeout,
            retry=retry,
        )

    async def get_strategy(
        self, request: pb.GetStrategyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.GetStrategyResponse:
        return await self._unary(
            "GetStrategy", request, pb.GetStrategyResponse, safe=True, timeout=timeout, retry=retry
        )

    async def list_strategies(
        self, request: pb.ListStrategiesRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListStrategiesResponse:
        return await self._unary(
            "ListStrategies", request, pb.ListStrategiesResponse, safe=True, timeout=timeout, retry=retry
        )

    async def pause_strategy(
        self, request: pb.PauseStrategyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.PauseStrategyResponse:
        return await self._unary(
            "PauseStrategy", request, pb.PauseStrategyResponse, safe=True, timeout=timeout, retry=retry
        )

    async def resume_strategy(
        self, request: pb.ResumeStrategyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ResumeStrategyResponse:
        return await self._unary(
            "ResumeStrategy", request, pb.ResumeStrategyResponse, safe=True, timeout=timeout, retry=retry
        )

    async def stop_strategy(
        self, request: pb.StopStrategyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.StopStrategyResponse:
        """`mode`: exchange.v1.StopMode (keep orders, cancel orders, cancel and sell the base)."""
        return await self._unary(
            "StopStrategy", request, pb.StopStrategyResponse, safe=True, timeout=timeout, retry=retry
        )

    async def preview_grid(
        self, request: pb.PreviewGridRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.PreviewGridResponse:
        return await self._unary(
            "PreviewGrid", request, pb.PreviewGridResponse, safe=True, timeout=timeout, retry=retry
        )

    async def preview_dca(
        self, request: pb.PreviewDcaRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.PreviewDcaResponse:
        return await self._unary(
            "PreviewDca", request, pb.PreviewDcaResponse, safe=True, timeout=timeout, retry=retry
        )

    async def backtest_strategy(
        self, request: pb.BacktestStrategyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.BacktestStrategyResponse:
        return await self._unary(
            "BacktestStrategy", request, pb.BacktestStrategyResponse, safe=True, timeout=timeout, retry=retry
        )
