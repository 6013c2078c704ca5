"""GatewayAdminService: API keys created, listed and revoked (admin role; listing also reader).

A thin adapter over services.gateway.keys.KeyStore; the store's blocking SQL runs in a thread."""

from __future__ import annotations

import asyncio
from typing import Any

from exchange.v1 import gateway_service_pb2 as gpb

from services.common.errors import InvalidArgument, Reason
from services.common.limits import MAX_USER_ID, check_user
from services.common.rpc import handles_errors
from services.gateway.keys import PERMISSIONS, READ, STRATEGIES, TRADE, ApiKey, KeyStore

PERMISSION_NAMES = {
    gpb.API_KEY_PERMISSION_READ: READ,
    gpb.API_KEY_PERMISSION_TRADE: TRADE,
    gpb.API_KEY_PERMISSION_STRATEGIES: STRATEGIES,
}
PERMISSION_VALUES = {name: value for value, name in PERMISSION_NAMES.items()}
assert set(PERMISSION_VALUES) == set(PERMISSIONS)


def key_message(key: ApiKey) -> gpb.ApiKey:
    return gpb.ApiKey(
        api_key=key.api_key,
        user_id=key.user_id,
        permissions=sorted(PERMISSION_VALUES[p] for p in key.permissions),
        label=key.label,
        created_time_us=key.created_time_us,
        revoked_time_us=key.revoked_time_us,
    )


class GatewayAdminServicer:
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    @handles_errors
    async def CreateApiKey(self, request: gpb.CreateApiKeyRequest, context: Any) -> gpb.CreateApiKeyResponse:
        check_user(request.user_id)
        perms: set[str] = set()
        for value in request.permissions:
            name = PERMISSION_NAMES.get(value)
            if name is None:
                raise InvalidArgument(f"unknown permission {value}", Reason.INVALID_FIELD)
            perms.add(name)
        key, secret = await asyncio.to_thread(
            self.store.create, request.user_id, frozenset(perms), request.label
        )
        return gpb.CreateApiKeyResponse(key=key_message(key), secret=secret)

    @handles_errors
    async def ListApiKeys(self, request: gpb.ListApiKeysRequest, context: Any) -> gpb.ListApiKeysResponse:
        if request.user_id > MAX_USER_ID:
            raise InvalidArgument(f"user_id must be at most {MAX_USER_ID}", Reason.VALUE_OUT_OF_RANGE)
        keys = await asyncio.to_thread(
            self.store.list, request.user_id, include_revoked=request.include_revoked
        )
        return gpb.ListApiKeysResponse(keys=[key_message(k) for k in keys])

    @handles_errors
    async def RevokeApiKey(self, request: gpb.RevokeApiKeyRequest, context: Any) -> gpb.RevokeApiKeyResponse:
        if not request.api_key or len(request.api_key) > 80:
            raise InvalidArgument("api_key is missing or too long", Reason.INVALID_FIELD)
        key = await asyncio.to_thread(self.store.revoke, request.api_key)
        return gpb.RevokeApiKeyResponse(key=key_message(key))
