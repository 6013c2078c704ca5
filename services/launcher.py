"""Start the whole exchange on one machine: every service as its own process.

    python -m services.launcher [--config deploy/exchange.toml] [--only matching,accounts]

Order: matching shards, accounts, history, market. Each child's log goes to <data_dir>/logs/<name>.log;
the launcher waits until each answers its gRPC health check, prints the endpoints, and on Ctrl-C
(SIGINT/SIGTERM) stops the children in reverse order, letting each take a final snapshot.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ExchangeConfig, load_config


@dataclass
class Child:
    name: str
    module: str
    args: list[str]
    address: str
    process: subprocess.Popen[bytes] | None = None


def plan(config: ExchangeConfig, only: set[str] | None = None) -> list[Child]:
    cfg = str(config.path)
    children = [
        Child(name, "services.matching", ["--config", cfg, "--shard", name], shard.listen)
        for name, shard in config.shards.items()
    ]
    children.append(
        Child(config.accounts.source, "services.accounts", ["--config", cfg], config.accounts.listen)
    )
    children.append(Child("history", "services.history", ["--config", cfg], config.history.listen))
    children.append(Child("market", "services.market", ["--config", cfg], config.market.listen))
    if only:
        kinds = {c.name: c.module.rsplit(".", 1)[1] for c in children}
        children = [c for c in children if c.name in only or kinds[c.name] in only]
    return [c for c in children if _available(c.module)]


def _available(module: str) -> bool:
    return (Path(__file__).resolve().parent / module.split(".", 1)[1] / "__main__.py").exists()


def wait_healthy(address: str, timeout: float, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def start(children: list[Child], config: ExchangeConfig, *, timeout: float = 60.0) -> None:
    logs = config.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for child in children:
        log_path = logs / f"{child.name}.log"
        with open(log_path, "ab") as log_file:
            child.process = subprocess.Popen(
                [sys.executable, "-m", child.module, *child.args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the children in order
            )
        if not wait_healthy(child.address, timeout, child.process):
            print(f"{child.name} did not become healthy; see {log_path}", file=sys.stderr)
            stop(children)
            raise SystemExit(1)
        print(f"  {child.name:<12} {child.address:<22} pid {child.process.pid}  log {log_path}", flush=True)


def stop(children: list[Child], timeout: float = 30.0) -> None:
    for child in reversed(children):
        p = child.process
        if p is None or p.poll() is not None:
            continue
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m services.launcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", default="deploy/exchange.toml")
    ap.add_argument("--only", default="", help="comma-separated service names or kinds")
    args = ap.parse_args()
    config = load_config(args.config)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    children = plan(config, only)
    print(f"exchange starting (config {config.path}, data {config.data_dir})", flush=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    start(children, config)
    print("exchange ready; Ctrl-C stops it. Try: .venv/bin/exchange markets", flush=True)
    try:
        while not stopping:
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    print(f"{child.name} exited with {code}; stopping the exchange", file=sys.stderr)
                    stopping = True
                    break
            time.sleep(0.2)
    finally:
        print("stopping...", flush=True)
        stop(children)
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
