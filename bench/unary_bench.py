"""Unary order entry measured by a C load generator (h2load), beside the same server's health Check.

    python bench/unary_bench.py [--seconds 10] [--clients 64] [--root DIR] [--out FILE]

Starts accounts and one matching shard (durable journals) in a temporary directory, funds one user,
then runs h2load (Debian's nghttp2-client) against the accounts server, side by side in one run:
- grpc.health.v1.Health/Check (the transport's own cost: no authentication, no journal);
- AccountsService/PlaceOrder with the bearer token (authenticated, journaled, fsynced, forwarded),
  at c=1 (latency) and c=--clients (throughput).
h2load cannot read gRPC trailers, so successes are counted by the exchange itself: the orders accepted
(last order id) must equal the requests h2load completed.

--root runs the same measurement against another checkout (e.g. a commit before authentication: the
token is then simply ignored), so "before" and "after" come from the same script on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--seconds", type=float, default=10.0)
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
ap.add_argument("--out", type=Path)
ARGS = ap.parse_args()
ROOT = ARGS.root.resolve()
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), os.environ.get("PYTHONPATH", "")])

from exchange.v1 import accounts_service_pb2 as apb  # noqa: E402
from exchange.v1 import types_pb2  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402
from h2load import h2load  # noqa: E402  (bench/h2load.py, beside this script)

from tests.cluster import Cluster  # noqa: E402


def frame(message: Any) -> bytes:
    body: bytes = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def _with_clients(c: Any, fund: Any) -> Callable[[], int]:
    """Funds the user as the wallet and returns a counter of accepted orders (typed clients)."""

    async def deposit() -> None:
        async with c.client("accounts-0", "wallet") as accounts:
            await accounts.deposit(fund, timeout=10)

    async def last() -> int:
        async with c.client("accounts-0", "admin") as accounts:
            st = await accounts.get_accounts_status(timeout=10)
            return int(st.last_order_id)

    asyncio.run(deposit())
    return lambda: asyncio.run(last())


def _with_stubs(c: Any, fund: Any, has_auth: bool) -> Callable[[], int]:
    """The same with the generated stubs (an older checkout without services.clients)."""
    from exchange.v1 import accounts_service_pb2_grpc as agrpc

    wallet = c.channel("accounts-0", "wallet") if has_auth else c.channel("accounts-0")
    agrpc.AccountsServiceStub(wallet).Deposit(fund, timeout=10)
    status = agrpc.AccountsServiceStub(
        c.channel("accounts-0", "admin") if has_auth else c.channel("accounts-0")
    )
    return lambda: int(status.GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=10).last_order_id)


def main() -> int:
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="unary-bench-") as tmp:
        c = Cluster(Path(tmp), accounts_options={"max_outbox_lag": 10_000_000})
        c.start()
        try:
            has_auth = hasattr(c, "token")
            token = c.token("trader") if has_auth else "none"
            fund = apb.DepositRequest(
                user_id=1, asset="USDT", amount="10000000000", business="bench", business_id="u1"
            )
            if hasattr(c, "client"):  # a checkout with services.clients: typed clients, as the wallet
                last_order = _with_clients(c, fund)
            else:  # an older checkout (--root): its own stubs
                last_order = _with_stubs(c, fund, has_auth)
            order = apb.PlaceOrderRequest(
                user_id=1,
                market="BTC_USDT",
                side=types_pb2.SIDE_BUY,
                type=types_pb2.ORDER_TYPE_LIMIT,
                price="5000",
                amount="0.001",
            )
            files = Path(tmp)
            (files / "check.bin").write_bytes(frame(health_pb2.HealthCheckRequest()))
            (files / "order.bin").write_bytes(frame(order))
            base = f"http://{c.addresses['accounts-0']}"
            auth = [f"authorization: Bearer {token}"]

            runs: dict[str, Any] = {}
            for name, path, data, clients in (
                ("check_c1", "/grpc.health.v1.Health/Check", "check.bin", 1),
                ("place_order_c1", "/exchange.v1.AccountsService/PlaceOrder", "order.bin", 1),
                (f"check_c{ARGS.clients}", "/grpc.health.v1.Health/Check", "check.bin", ARGS.clients),
                (
                    f"place_order_c{ARGS.clients}",
                    "/exchange.v1.AccountsService/PlaceOrder",
                    "order.bin",
                    ARGS.clients,
                ),
            ):
                before = last_order()
                result = h2load(base + path, files / data, clients, ARGS.seconds, auth)
                time.sleep(0.5)
                if "place_order" in name:
                    result["orders_accepted"] = last_order() - before
                runs[name] = result
        finally:
            c.stop()
    check, place = runs[f"check_c{ARGS.clients}"], runs[f"place_order_c{ARGS.clients}"]
    report = {
        "benchmark": "unary order entry (h2load)",
        "root": str(ROOT),
        "authenticated": has_auth,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds_per_run": ARGS.seconds,
        "runs": runs,
        "place_over_check_ratio": round(place["requests_per_s"] / check["requests_per_s"], 3),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if ARGS.out:
        ARGS.out.parent.mkdir(parents=True, exist_ok=True)
        ARGS.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
