"""GatewayAdminClient: GatewayAdminService (services.gateway), typed and thin. ListApiKeys is a read
(retried on UNAVAILABLE); CreateApiKey and RevokeApiKey are not retried (a repeat of a create makes a
second key; a revoke is harmless to repeat but the caller decides).

The gateway is not in the exchange's resolver names; dial it at its admin address:

    GatewayAdminClient.at(advertise_address(config.gateway.admin_listen, config.gateway.advertise))
"""

from __future__ import annotations

from exchange.v1 import gateway_service_pb2 as pb

from services.clients.base import ServiceClient
from services.clients.retry import RetryPolicy

Options = RetryPolicy | None


class GatewayAdminClient(ServiceClient):
    SERVICE = "exchange.v1.GatewayAdminService"
    NAME = "gateway"
    DEFAULT_TIMEOUT_S = 5.0

    async def create_api_key(
        self, request: pb.CreateApiKeyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.CreateApiKeyResponse:
        return await self._unary(
            "CreateApiKey", request, pb.CreateApiKeyResponse, safe=False, timeout=timeout, retry=retry
        )

    async def list_api_keys(
        self, request: pb.ListApiKeysRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.ListApiKeysResponse:
        return await self._unary(
            "ListApiKeys", request, pb.ListApiKeysResponse, safe=True, timeout=timeout, retry=retry
        )

    async def revoke_api_key(
        self, request: pb.RevokeApiKeyRequest, *, timeout: float | None = None, retry: Options = None
    ) -> pb.RevokeApiKeyResponse:
        return await self._unary(
            "RevokeApiKey", request, pb.RevokeApiKeyResponse, safe=False, timeout=timeout, retry=retry
        )
