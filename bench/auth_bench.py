"""What authentication costs per call, measured with h2load on one server process, side by side:

    python bench/auth_bench.py [--seconds 8] [--out FILE]

The same trivial authenticated method (AccountsService/ListAssets answering a fixed message) is served
twice in one process: by services.common.rpc.start_server (loopback-only local credentials, the bearer
token checked against the method's roles where gRPC looks the handler up) and by a bare grpc.aio
server with no check. h2load drives each at c=1 and c=64 (alternating, twice), and the ratio is the cost of
authentication and authorization relative to the transport itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import types_pb2

from bench.h2load import h2load
from services.common import rpc
from services.common.config import config_from_dict
from services.common.security import process_security

ANSWER = apb.ListAssetsResponse(assets=[types_pb2.Asset(symbol="USDT", decimals=8)])


class Servicer:
    async def ListAssets(self, request: Any, context: Any) -> apb.ListAssetsResponse:
        return ANSWER


def serve(secrets_dir: str, ports: Any) -> None:
    async def main() -> None:
        config = config_from_dict(
            {
                "data_dir": secrets_dir,
                "assets": {"USDT": {"decimals": 8}, "BTC": {"decimals": 8}},
                "markets": [
                    {"symbol": "BTC_USDT", "base": "BTC", "quote": "USDT", "price_tick": "1", "lot_size": "1"}
                ],
            },
            base_dir=Path(secrets_dir),
        )
        rpc.configure(process_security(config, "admin"))
        service = apb.DESCRIPTOR.services_by_name["AccountsService"]

        def register(servicer: Any, server: grpc.aio.Server) -> None:
            handler = grpc.unary_unary_rpc_method_handler(
                servicer.ListAssets,
                request_deserializer=apb.ListAssetsRequest.FromString,
                response_serializer=apb.ListAssetsResponse.SerializeToString,
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service.full_name, {"ListAssets": handler}),)
            )

        authed = await rpc.start_server("127.0.0.1:0", [(register, Servicer())], [service.full_name])
        bare = grpc.aio.server(options=rpc.SERVER_OPTIONS)
        register(Servicer(), bare)
        bare_port = bare.add_insecure_port("127.0.0.1:0")
        await bare.start()
        ports.put((authed.port, bare_port, rpc.security().credentials.token("reader")))
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        proc = ctx.Process(target=serve, args=(tmp, ports), daemon=True)
        proc.start()
        try:
            authed, bare, token = ports.get(timeout=30)
            body = apb.ListAssetsRequest().SerializeToString()
            data = Path(tmp) / "req.bin"
            data.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)
            path = "/exchange.v1.AccountsService/ListAssets"
            runs: dict[str, list[dict[str, Any]]] = {}
            headers = [f"authorization: Bearer {token}"]
            for _ in range(2):
                for clients in (1, 64):
                    for name, port in (("authenticated", authed), ("bare", bare)):
                        result = h2load(
                            f"http://127.0.0.1:{port}{path}", data, clients, args.seconds, headers
                        )
                        runs.setdefault(f"{name}_c{clients}", []).append(result)
            # A wrong token on the authenticated server is refused (not served): check once.
            check = subprocess.run(
                [
                    "h2load",
                    "-n",
                    "10",
                    "-c",
                    "1",
                    "-d",
                    str(data),
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    "-H",
                    "authorization: Bearer exk_wrong",
                    "-v",
                    f"http://127.0.0.1:{authed}{path}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        finally:
            proc.terminate()
            proc.join(10)

    def best(key: str) -> float:
        return max(r["requests_per_s"] for r in runs[key])

    report = {
        "benchmark": "authentication cost per call (h2load, one server process)",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds_per_run": args.seconds,
        "runs": runs,
        "authenticated_over_bare_c64": round(best("authenticated_c64") / best("bare_c64"), 3),
        "authenticated_over_bare_c1": round(best("authenticated_c1") / best("bare_c1"), 3),
        "wrong_token_refused": "grpc-status: 16" in check,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
