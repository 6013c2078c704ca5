"""Idle streams survive the clients' keepalive pings (regression: the server answered GOAWAY
too_many_pings after a few pings, closing idle event streams after about 100 s)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import rpc


def test_idle_stream_survives_frequent_pings() -> None:
    asyncio.run(_idle_stream())


async def _idle_stream() -> None:
    server = await rpc.start_server("127.0.0.1:0", [], [])
    try:
        options = [
            ("grpc.keepalive_time_ms", 500),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        creds = rpc.security().channel_credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds, options=options) as ch:
            call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            # About 9 pings with no data: the stream must still be open.
            reader = asyncio.ensure_future(call.read())
            await asyncio.sleep(4.5)
            assert not reader.done(), f"stream closed: {await call.code()} {await call.details()}"
            reader.cancel()
            call.cancel()
    finally:
        await server.stop(0)
