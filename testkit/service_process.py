"""One service as a real process (`python -m <module> --config <dir>/exchange.toml`), for the crash and
restart tests of a single service against fake upstreams; its output goes to `<dir>/<name>.log`
(one JSON object per line). testkit.cluster runs a whole exchange instead."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testkit.cluster import ROOT


class ServiceProcess:
    def __init__(self, directory: Path, module: str, config_text: str, address: str) -> None:
        self.dir = directory
        self.module = module
        self.name = module.rsplit(".", 1)[-1]
        self.address = address
        self.config = directory / "exchange.toml"
        self.config.write_text(config_text)
        self.log_path = directory / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (without waiting for it: see wait_ready)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--config", str(self.config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "EXCHANGE_LOG_LEVEL": "INFO"},
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the service's health check answers SERVING; RuntimeError if the process exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
                with contextlib.suppress(grpc.RpcError):
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                time.sleep(0.05)
        raise TimeoutError(self.log()[-3000:])

    def signal(self, sig: int) -> int:
        """Send `sig` and return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def kill(self) -> None:
        """Kill the process if it still runs (test cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_entries(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
