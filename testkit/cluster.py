"""Real processes on ephemeral ports: a test exchange in a temporary directory.

accounts_shards=N runs accounts sharded by user: N processes "accounts-0" .. "accounts-<N-1>" (users by
user_id mod N); wait_quiet_all() waits for every one of them and assert_cross_shard_invariants checks
the balance invariant summed over them (services.accounts.audit)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import accounts_service_pb2_grpc as agrpc
from exchange.v1 import matching_service_pb2 as mpb
from exchange.v1 import matching_service_pb2_grpc as mgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import load_config
from services.common.rpc import CHANNEL_OPTIONS
from services.common.security import Security, process_security

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MARKETS = (ROOT / "deploy" / "exchange.toml").read_text().split("[assets]", 1)[1]


def toml_value(v: Any) -> str:
    """A Python value as TOML (bool, int, str, or a table of them)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(
        self,
        directory: Path,
        *,
        shards: dict[str, list[str]] | None = None,
        accounts_options: dict[str, Any] | None = None,
        shard_options: dict[str, Any] | None = None,
        with_history: bool = False,
        with_market: bool = False,
        history_url: str | None = None,
        transport: str = "local",
        with_quantizer: bool = False,
        quantizer_options: dict[str, Any] | None = None,
        with_gateway: bool = False,
        gateway_options: dict[str, Any] | None = None,
        with_exporter: bool = False,
        exporter_options: dict[str, Any] | None = None,
        accounts_shards: int = 1,
        service_args: dict[str, list[str]] | None = None,
    ) -> None:
        """service_args: extra command-line arguments per service name (say matching in cluster mode:
        `{"matching-0": ["--zk", ..., "--nats", ..., "--member", "a"]}`)."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        shards = shards or {"matching-0": []}
        self.addresses: dict[str, str] = {name: f"127.0.0.1:{free_port()}" for name in shards}
        self.accounts_names = [f"accounts-{i}" for i in range(accounts_shards)]
        for name in self.accounts_names:
            self.addresses[name] = f"127.0.0.1:{free_port()}"
        self.services: list[tuple[str, list[str]]] = [
            (name, ["services.matching", "--shard", name]) for name in shards
        ]
        if accounts_shards == 1:
            self.services.append(("accounts-0", ["services.accounts"]))
        else:
            self.services += [(name, ["services.accounts", "--shard", name]) for name in self.accounts_names]
        if with_history:
            self.addresses["history"] = f"127.0.0.1:{free_port()}"
            self.services.append(("history", ["services.history"]))
        if with_market:
            self.addresses["market"] = f"127.0.0.1:{free_port()}"
            self.services.append(("market", ["services.market"]))
        if with_quantizer:
            self.addresses["quantizer-0"] = f"127.0.0.1:{free_port()}"
            self.services.append(("quantizer-0", ["services.quantizer"]))
        # The gateway: "gateway" is its admin gRPC address (health), gateway_http its HTTP address.
        self.gateway_http = ""
        if with_gateway:
            self.addresses["gateway"] = f"127.0.0.1:{free_port()}"
            self.gateway_http = f"127.0.0.1:{free_port()}"
            self.services.append(("gateway", ["services.gateway"]))
        if with_exporter:  # services.exporter: event export to JetStream / Kafka (exporter_options)
            self.addresses["exporter"] = f"127.0.0.1:{free_port()}"
            self.services.append(("exporter", ["services.exporter"]))
        for name, extra in (service_args or {}).items():
            self.services = [(n, [*a, *extra] if n == name else a) for n, a in self.services]
        lines = ['data_dir = "data"', ""]
        lines.append("[security]")
        lines.append(f'transport = "{transport}"')
        lines.append("[accounts]")
        lines.append(f'listen = "{self.addresses["accounts-0"]}"')
        if accounts_shards > 1:
            lines.append(f"shards = {accounts_shards}")
            listens = ", ".join(f'"{self.addresses[n]}"' for n in self.accounts_names)
            lines.append(f"shard_listen = [{listens}]")
        for k, v in (accounts_options or {}).items():
            lines.append(f"{k} = {v!r}")
        for name, markets in shards.items():
            lines.append(f'[shards."{name}"]')
            lines.append(f'listen = "{self.addresses[name]}"')
            if markets:
                lines.append("markets = [" + ", ".join(f'"{m}"' for m in markets) + "]")
            for k, v in (shard_options or {}).items():
                lines.append(f"{k} = {v!r}")
        if with_history:
            lines.append("[history]")
            lines.append(f'listen = "{self.addresses["history"]}"')
            if history_url:
                lines.append(f'database_url = "{history_url}"')
        if with_market:
            lines.append("[market]")
            lines.append(f'listen = "{self.addresses["market"]}"')
        if with_quantizer:
            lines.append("[quantizer]")
            lines.append(f'listen = "{self.addresses["quantizer-0"]}"')
            for k, v in (quantizer_options or {}).items():
                lines.append(f"{k} = {toml_value(v)}")
        if with_gateway:
            lines.append("[gateway]")
            lines.append(f'listen = "{self.gateway_http}"')
            lines.append(f'admin_listen = "{self.addresses["gateway"]}"')
            for k, v in (gateway_options or {}).items():
                lines.append(f"{k} = {toml_value(v)}")
        if with_exporter:
            lines.append("[exporter]")
            lines.append("enabled = true")
            lines.append(f'listen = "{self.addresses["exporter"]}"')
            for k, v in (exporter_options or {}).items():
                lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
        lines.append("[assets]" + DEFAULT_MARKETS)
        self.config_path = self.dir / "exchange.toml"
        self.config_path.write_text("\n".join(lines))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        # The credentials (and TLS files) the processes will use, generated here first so the test can
        # act as any principal; the processes find them in their data directory.
        self.config = load_config(self.config_path)
        self._security = process_security(self.config, "admin")

    def security(self, principal: str = "admin") -> Security:
        return self._security.as_principal(principal)

    def token(self, principal: str = "admin") -> str:
        return self._security.credentials.token(principal)

    # --- processes -----------------------------------------------------------------------------

    def start(self, names: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        for name, module_args in self.services:
            if names is not None and name not in names:
                continue
            log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", module_args[0], "--config", str(self.config_path), *module_args[1:]],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "EXCHANGE_LOG_LEVEL": os.environ.get("EXCHANGE_LOG_LEVEL", "INFO")},
            )
            self.wait_healthy(name, timeout)

    def wait_healthy(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        stub = health_pb2_grpc.HealthStub(self.channel(name))
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{name} not healthy after {timeout}s:\n{self.log(name)[-3000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(30)
        for key in [k for k in self._channels if k[0] == name]:
            self._channels.pop(key).close()

    def restart(self, name: str) -> None:
        if name in self.procs:
            self.kill(name, signal.SIGTERM)
        self.start([name])

    def stop(self) -> None:
        for name in reversed([n for n, _ in self.services]):
            if name in self.procs:
                try:
                    self.kill(name, signal.SIGTERM)
                except subprocess.TimeoutExpired:
                    self.kill(name, signal.SIGKILL)
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- clients -------------------------------------------------------------------------------

    def channel(self, name: str, principal: str = "admin") -> grpc.Channel:
        """A blocking channel to service `name`, authenticated as `principal`."""
        ch = self._channels.get((name, principal))
        if ch is None:
            creds = self.security(principal).channel_credentials()
            ch = self._channels[(name, principal)] = grpc.secure_channel(self.addresses[name], creds)
        return ch

    def aio_channel(self, name: str, principal: str = "admin") -> grpc.aio.Channel:
        """A new asyncio channel to service `name`, authenticated as `principal` (caller closes it)."""
        creds = self.security(principal).channel_credentials()
        return grpc.aio.secure_channel(self.addresses[name], creds, options=CHANNEL_OPTIONS)

    def client(self, name: str, principal: str = "admin", **options: Any) -> Any:
        """A typed async client of service `name` (services.clients: "accounts-0" or "accounts", a shard,
        "history", "market"), authenticated as `principal`. Use it inside one event loop and close it
        (`async with cluster.client("accounts-0") as accounts: ...`)."""
        from services.clients import StaticResolver, kind_of

        resolver = StaticResolver.from_config(self.config)
        kind = kind_of(resolver, name)
        return kind.resolve(resolver, name, security=self.security(principal), **options)

    def clients(self, principal: str = "admin", **options: Any) -> Any:
        """Every service's typed client (services.clients.Clients), authenticated as `principal`."""
        from services.clients import Clients

        return Clients.from_config(self.config, security=self.security(principal), **options)

    def quantizer_client(self, principal: str = "admin", **options: Any) -> Any:
        """A typed async QuantizerClient (services.clients.quantizer), authenticated as `principal`."""
        from services.clients.quantizer import QuantizerClient

        return QuantizerClient.at(
            self.addresses["quantizer-0"], security=self.security(principal), name="quantizer", **options
        )

    def anonymous_channel(self, name: str) -> grpc.Channel:
        """A channel presenting no credentials at all (authentication tests)."""
        return grpc.insecure_channel(self.addresses[name])

    @property
    def accounts(self) -> agrpc.AccountsServiceStub:
        return agrpc.AccountsServiceStub(self.channel("accounts-0"))

    def accounts_shard(self, index: int) -> agrpc.AccountsServiceStub:
        """The blocking stub of accounts shard `index` (accounts sharded by user)."""
        return agrpc.AccountsServiceStub(self.channel(self.accounts_names[index]))

    def accounts_of(self, user_id: int) -> agrpc.AccountsServiceStub:
        """The blocking stub of the accounts shard that owns `user_id`."""
        return self.accounts_shard(user_id % len(self.accounts_names))

    def matching(self, shard: str = "matching-0") -> mgrpc.MatchingServiceStub:
        return mgrpc.MatchingServiceStub(self.channel(shard))

    @property
    def shard_names(self) -> list[str]:
        return [n for n, args in self.services if args[0] == "services.matching"]

    def wait_quiet(self, timeout: float = 30.0) -> apb.GetAccountsStatusResponse:
        """Until every shard applied what accounts forwarded and accounts settled every event (every
        accounts shard: see wait_quiet_all); the first accounts shard's audited status."""
        return self.wait_quiet_all(timeout)[0]

    def wait_quiet_all(self, timeout: float = 30.0) -> list[apb.GetAccountsStatusResponse]:
        """Until every matching shard applied what every accounts shard forwarded and every accounts
        shard settled every matching event; the accounts shards' audited statuses, by index."""
        deadline = time.monotonic() + timeout
        last: Any = None
        stubs = [self.accounts_shard(i) for i in range(len(self.accounts_names))]
        while time.monotonic() < deadline:
            try:
                sts = [a.GetAccountsStatus(apb.GetAccountsStatusRequest(), timeout=5) for a in stubs]
                shards = {
                    s: self.matching(s).GetMatchingStatus(mpb.GetMatchingStatusRequest(), timeout=5)
                    for s in self.shard_names
                }
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.1)
                continue
            ok = all(
                st.queue_depth == 0
                and all(
                    st.settled_sequences.get(s, 0) == m.event_sequence and st.outbox_pending.get(s, 0) == 0
                    for s, m in shards.items()
                )
                for st in sts
            )
            if ok:
                # A second look: nothing moved in between.
                time.sleep(0.05)
                again: list[apb.GetAccountsStatusResponse] = [
                    a.GetAccountsStatus(apb.GetAccountsStatusRequest(with_audit=True), timeout=5)
                    for a in stubs
                ]
                if [s.applied_sequence for s in again] == [s.applied_sequence for s in sts]:
                    return again
            last = (sts, shards)
            time.sleep(0.05)
        raise TimeoutError(f"exchange did not settle: {last}")


def assert_cross_shard_invariants(statuses: list[apb.GetAccountsStatusResponse]) -> None:
    """The balance invariant summed over every accounts shard (and each shard's own)."""
    from services.accounts.audit import cross_shard_problems

    problems = cross_shard_problems(statuses)
    assert not problems, "\n".join(problems)


def assert_invariants(st: apb.GetAccountsStatusResponse) -> None:
    for a in st.audit:
        assert a.total == a.external, f"{a.asset}: balances {a.total} != deposits-withdrawals {a.external}"
        assert a.frozen == a.held, f"{a.asset}: frozen {a.frozen} != held by open orders {a.held}"
