"""Start the whole exchange on one machine: every service as its own process, supervised.

    python -m services.launcher [--config deploy/exchange.toml] [--only accounts-0,history]

Order: matching shards, accounts, history, market; each starts once the one before answers its gRPC
health check. Each child's output goes to <data_dir>/logs/<name>.log (appended across restarts). The
launcher prints every endpoint, then "exchange ready".

Supervision. A service that exits is restarted after a delay that doubles from --backoff (0.5 s) up to
--max-backoff (10 s), back to --backoff once it stayed healthy for --reset-after (30 s). Each restart
prints one line ("accounts-0 exited with -9 (SIGKILL); restarting in 1.0 s (restart 2, log ...)"), and
"accounts-0 healthy again" once its health check answers SERVING. The launcher keeps checking every
child's health (every 2 s) and prints when one stops or resumes serving. A service that keeps crashing
(more than --max-restarts 5 restarts within --window 60 s) makes the launcher give up: it prints the last
lines of that service's log, stops the others in reverse order and exits with status 1.

Ctrl-C or SIGTERM stops the children in reverse order (market, history, accounts, shards), each taking a
final snapshot; a second Ctrl-C kills what is still running.

Under a process manager (systemd, supervisord, Kubernetes) give each service its own unit and let the
manager restart it, running the service module directly (--print-commands prints these lines):

    python -m services.matching --config /etc/exchange/exchange.toml --shard matching-0
    python -m services.accounts --config /etc/exchange/exchange.toml    # with [accounts] shards = N:
                                                                         # one per --shard accounts-<i>
    python -m services.history --config /etc/exchange/exchange.toml
    python -m services.market --config /etc/exchange/exchange.toml

(systemd: one unit per line, Restart=on-failure, KillSignal=SIGTERM, TimeoutStopSec=60, and ordered
After= the units it depends on.) `--only NAME[,NAME...]` instead runs a subset of the services under this
launcher's supervision, e.g. `python -m services.launcher --only accounts-0` or `--only matching` (every
shard); names are service names (matching-0, accounts-0, history, market) or kinds (matching, accounts,
history, market).

Exit status: 0 after Ctrl-C/SIGTERM, 1 when a service kept crashing, 2 for a bad command line or config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.clients.channels import sync_channel
from services.clients.resolver import (
    ACCOUNTS,
    HISTORY,
    MARKET,
    accounts_name,
    advertise_address,
    config_addresses,
)
from services.common.config import ExchangeConfig, load_config
from services.common.markets import ConfigError

# Reconnect quickly to a restarted child (gRPC's default reconnect backoff grows to two minutes).
PROBE_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]

WAITING, STARTING, HEALTHY, UNHEALTHY, BACKOFF, FAILED = (
    "waiting",
    "starting",
    "healthy",
    "unhealthy",
    "backoff",
    "failed",
)


@dataclass(frozen=True)
class Policy:
    """How the launcher restarts children and checks their health."""

    backoff: float = 0.5  # first restart delay (seconds)
    max_backoff: float = 10.0  # the delay doubles up to this
    reset_after: float = 30.0  # healthy this long: the delay returns to `backoff`
    max_restarts: int = 5  # more restarts than this within `window` seconds: give up
    window: float = 60.0
    start_timeout: float = 60.0  # not healthy this long after a start: say so (and keep waiting)
    probe_every: float = 2.0  # health check period of a running child
    probe_timeout: float = 1.0
    unhealthy_after: int = 3  # failed health checks in a row before a child is reported unhealthy


@dataclass
class Child:
    name: str
    module: str
    args: list[str]
    address: str
    log_path: Path = field(default_factory=Path)
    # Printed under its line once it is healthy: what people reach besides the probed gRPC address.
    also: str = ""
    process: subprocess.Popen[bytes] | None = None
    # --- supervision state ---
    state: str = WAITING
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)  # monotonic times of recent restarts
    delay: float = 0.0  # the next restart delay
    restart_at: float = 0.0
    started_at: float = 0.0
    healthy_since: float = 0.0
    ever_healthy: bool = False
    slow_warned: bool = False
    failures: int = 0
    last_problem: str = ""
    next_probe: float = 0.0
    probe: Any = None  # a grpc future of a health check in flight
    channel: grpc.Channel | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


def plan(config: ExchangeConfig, only: set[str] | None = None) -> list[Child]:
    """The children for a config, in start order; `only` keeps those named (or of those kinds)."""
    cfg = str(config.path)
    where = config_addresses(config)  # the advertise addresses: where the health probe dials
    children = [
        Child(name, "services.matching", ["--config", cfg, "--shard", name], where[name])
        for name in config.shards
    ]
    if config.accounts.shards == 1:
        children.append(
            Child(config.accounts.source, "services.accounts", ["--config", cfg], where[ACCOUNTS])
        )
    else:  # accounts sharded by user: one process per shard
        children += [
            Child(source, "services.accounts", ["--config", cfg, "--shard", source], where[accounts_name(i)])
            for i, source in enumerate(config.accounts_sources())
        ]
    children.append(Child("history", "services.history", ["--config", cfg], where[HISTORY]))
    children.append(Child("market", "services.market", ["--config", cfg], where[MARKET]))
    quantizer_at = advertise_address(config.quantizer.listen, config.quantizer.advertise)
    children.append(Child(config.quantizer.source, "services.quantizer", ["--config", cfg], quantizer_at))
    gateway_at = advertise_address(config.gateway.admin_listen, config.gateway.advertise)
    http = advertise_address(config.gateway.listen)
    # `[gateway] workers = N`: this child is worker 0, which starts (and restarts) workers 1..N-1 on the
    # same HTTP port and answers health once they all serve (services.gateway.workers).
    n = config.gateway.workers
    children.append(
        Child(
            "gateway",
            "services.gateway",
            ["--config", cfg],
            gateway_at,
            also=f"http://{http}/ (web page, /api/v3, /ws)" + (f", {n} worker processes" if n > 1 else ""),
        )
    )
    if config.exporter.enabled:  # event export to broker topics: only when configured
        exporter_at = advertise_address(config.exporter.listen, "")
        children.append(Child("exporter", "services.exporter", ["--config", cfg], exporter_at))
    children = [c for c in children if _available(c.module)]
    if only:
        kinds = {c.name: c.module.rsplit(".", 1)[1] for c in children}
        unknown = only - set(kinds) - set(kinds.values())
        if unknown:
            raise ConfigError(
                f"--only: no service {', '.join(sorted(unknown))} in {config.path}; services are "
                f"{', '.join(kinds)} (or kinds {', '.join(sorted(set(kinds.values())))})"
            )
        children = [c for c in children if c.name in only or kinds[c.name] in only]
    for c in children:
        c.log_path = config.data_dir / "logs" / f"{c.name}.log"
    return children


def _available(module: str) -> bool:
    return (Path(__file__).resolve().parent / module.split(".", 1)[1] / "__main__.py").exists()


def display_path(path: Path) -> str:
    """A path as a person types it: relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def log_tail(path: Path, lines: int = 20, width: int = 400) -> list[str]:
    """The last lines of a child's log, JSON log records shown as `time level message key=value`."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            raw = f.read().decode(errors="replace")
    except OSError as exc:
        return [f"(cannot read the log: {exc})"]
    out: list[str] = []
    for line in raw.splitlines()[-lines:]:
        text = line
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and "msg" in entry:
            extra = " ".join(
                f"{k}={v}"
                for k, v in entry.items()
                if k not in ("ts", "level", "service", "logger", "msg", "exc")
            )
            text = f"{entry.get('ts', '')} {entry.get('level', '')} {entry['msg']} {extra}".rstrip()
            if entry.get("exc"):
                out.append(text[:width])
                out.extend(s[:width] for s in str(entry["exc"]).splitlines()[-6:])
                continue
        out.append(text[:width])
    return out or ["(the log is empty)"]


class Supervisor:
    """Starts the children in order, restarts the ones that exit, and reports their health."""

    def __init__(
        self,
        children: list[Child],
        *,
        policy: Policy | None = None,
        probe_channel: Callable[[str], grpc.Channel] | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.children = children
        self.policy = policy = policy or Policy()
        self.probe_channel = probe_channel or health_channel
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.ready_announced = False
        self.failed: Child | None = None
        for c in children:
            c.delay = policy.backoff

    # --- output --------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        _print(text, self.out)

    def warn(self, text: str) -> None:
        _print(text, self.err)

    # --- processes -----------------------------------------------------------------------------

    def spawn(self, child: Child, now: float) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as log_file:
            child.process = subprocess.Popen(
                child.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ),
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the children in order
            )
        if child.channel is not None:
            child.channel.close()
        child.channel = self.probe_channel(child.address)
        child.probe = None
        child.state = STARTING
        child.started_at = now
        child.slow_warned = False
        child.failures = 0
        child.next_probe = now + 0.1

    def step(self, now: float) -> bool:
        """One round over the children; False once the launcher gave up on one."""
        for i, child in enumerate(self.children):
            if child.state == WAITING:
                if all(c.ever_healthy for c in self.children[:i]):
                    self.spawn(child, now)
                continue
            if not self._step_child(child, now):
                return False
        if not self.ready_announced and all(c.ever_healthy for c in self.children):
            self.ready_announced = True
            self.say("exchange ready; Ctrl-C stops it. Try: .venv/bin/exchange markets")
        return True

    def _step_child(self, child: Child, now: float) -> bool:
        p = self.policy
        if child.state == BACKOFF:
            if now >= child.restart_at:
                self.spawn(child, now)
            return True
        assert child.process is not None
        code = child.process.poll()
        if code is not None:
            self._cancel_probe(child)
            return self._exited(child, code, now)
        if child.probe is not None and child.probe.done():
            self._probed(child, now)
        if child.state == STARTING and not child.slow_warned and now - child.started_at > p.start_timeout:
            child.slow_warned = True
            self.warn(
                f"{child.name} is not healthy {now - child.started_at:.0f} s after it started "
                f"({child.last_problem or 'no answer'}); still waiting (log {display_path(child.log_path)})"
            )
        if child.state == HEALTHY and child.delay != p.backoff and now - child.healthy_since >= p.reset_after:
            child.delay = p.backoff
        if child.probe is None and now >= child.next_probe and child.channel is not None:
            stub = health_pb2_grpc.HealthStub(child.channel)
            child.probe = stub.Check.future(
                health_pb2.HealthCheckRequest(service=""), timeout=p.probe_timeout
            )
        return True

    def _probed(self, child: Child, now: float) -> None:
        p = self.policy
        probe, child.probe = child.probe, None
        serving = False
        try:
            resp = probe.result()
            serving = resp.status == health_pb2.HealthCheckResponse.SERVING
            problem = "" if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as exc:
            problem = f"no answer: {exc.code().name}"
        except grpc.FutureCancelledError:
            problem = "no answer"
        if serving:
            child.failures = 0
            child.last_problem = ""
            if child.state != HEALTHY:
                pid = child.process.pid if child.process else 0
                if not child.ever_healthy:
                    log = display_path(child.log_path)
                    self.say(f"  {child.name:<12} {child.address:<22} pid {pid}  log {log}")
                    if child.also:
                        self.say(f"  {'':<12} {child.also}")
                elif child.state == STARTING:
                    self.say(f"{child.name} healthy again (pid {pid}, after restart {child.restarts})")
                else:
                    self.say(f"{child.name} healthy again (pid {pid})")
                child.state = HEALTHY
                child.ever_healthy = True
                child.healthy_since = now
        else:
            child.last_problem = problem
            if child.state == HEALTHY:
                child.failures += 1
                if child.failures >= p.unhealthy_after:
                    child.state = UNHEALTHY
                    self.warn(f"{child.name} is not healthy ({problem}); log {display_path(child.log_path)}")
        child.next_probe = now + (p.probe_every if child.state in (HEALTHY, UNHEALTHY) else 0.2)

    def _cancel_probe(self, child: Child) -> None:
        if child.probe is not None:
            child.probe.cancel()
            child.probe = None

    def _exited(self, child: Child, code: int, now: float) -> bool:
        p = self.policy
        while child.recent and now - child.recent[0] >= p.window:
            child.recent.popleft()
        log = display_path(child.log_path)
        if len(child.recent) >= p.max_restarts:
            child.state = FAILED
            self.failed = child
            self.warn(
                f"{child.name} keeps crashing: exited with {describe_exit(code)} after {len(child.recent)} "
                f"restarts within {p.window:g} s; giving up. Last lines of {log}:"
            )
            for line in log_tail(child.log_path):
                self.warn(f"    {line}")
            return False
        delay = child.delay
        child.delay = min(child.delay * 2, p.max_backoff)
        child.restarts += 1
        child.recent.append(now)
        child.state = BACKOFF
        child.restart_at = now + delay
        self.warn(
            f"{child.name} exited with {describe_exit(code)}; restarting in {delay:.1f} s "
            f"(restart {child.restarts}, log {log})"
        )
        return True

    def stop(self, force: Callable[[], bool] = lambda: False, timeout: float = 30.0) -> None:
        """Stop every child in reverse start order (SIGTERM, then SIGKILL after `timeout` or on force)."""
        for child in reversed(self.children):
            self._cancel_probe(child)
            proc = child.process
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline and not force():
                    time.sleep(0.05)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    reason = "on a second interrupt" if force() else f"after {timeout:g} s"
                    self.warn(f"{child.name} did not stop; killed {reason}")
            if child.channel is not None:
                child.channel.close()
                child.channel = None


def _print(text: str, stream: TextIO | None = None) -> None:
    """Print and flush; a closed terminal or pipe must not keep the launcher from stopping its children."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=stream or sys.stdout, flush=True)


def health_channel(address: str) -> grpc.Channel:
    """The health probe's channel: the exchange's transport (local or TLS, services.clients with the
    process's security, rpc.configure), no token (health checks are public), quick reconnects."""
    return sync_channel(address, token="", options=PROBE_CHANNEL_OPTIONS)


def configure_security(config: ExchangeConfig) -> None:
    """The launcher's transport for its probes (rpc.configure). This also generates the credentials
    file (and the TLS files) on first run, before any child races for them."""
    from services.common import rpc
    from services.common.security import process_security

    rpc.configure(process_security(config, "", create=True))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m services.launcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    ap.add_argument(
        "--config",
        default="",
        metavar="FILE",
        help="the exchange's TOML file (default: $EXCHANGE_CONFIG, else ./deploy/exchange.toml, else the "
        "repository's deploy/exchange.toml, else ~/.config/exchange/exchange.toml)",
    )
    ap.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help="comma-separated service names (matching-0, accounts-0, history, market) or kinds "
        "(matching, accounts, history, market) to run; default: all",
    )
    ap.add_argument(
        "--print-commands",
        action="store_true",
        help="print the command line of each service (for process-manager units) and exit",
    )
    d = Policy()
    ap.add_argument(
        "--backoff",
        type=float,
        default=d.backoff,
        metavar="SECONDS",
        help="first restart delay (%(default)s)",
    )
    ap.add_argument(
        "--max-backoff",
        type=float,
        default=d.max_backoff,
        metavar="SECONDS",
        help="longest restart delay (%(default)s)",
    )
    ap.add_argument(
        "--reset-after",
        type=float,
        metavar="SECONDS",
        default=d.reset_after,
        help="a service healthy this long gets the first delay again on its next crash (%(default)s s)",
    )
    ap.add_argument(
        "--max-restarts",
        type=int,
        metavar="N",
        default=d.max_restarts,
        help="give up when a service needs more restarts than this within --window (%(default)s)",
    )
    ap.add_argument(
        "--window",
        type=float,
        default=d.window,
        metavar="SECONDS",
        help="crash-loop window, seconds (%(default)s)",
    )
    ap.add_argument(
        "--start-timeout",
        type=float,
        metavar="SECONDS",
        default=d.start_timeout,
        help="report a service that is not healthy this long after it started (%(default)s s)",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    from services.cli import ConfigNotFound, find_config

    try:
        config = load_config(find_config(args.config or None))
        only = {s.strip() for s in args.only.split(",") if s.strip()} or None
        children = plan(config, only)
        if args.print_commands:
            for c in children:
                print(" ".join(c.command()))
            return
        configure_security(config)
    except (ConfigNotFound, ConfigError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    policy = Policy(
        backoff=args.backoff,
        max_backoff=args.max_backoff,
        reset_after=args.reset_after,
        max_restarts=args.max_restarts,
        window=args.window,
        start_timeout=args.start_timeout,
    )
    interrupts = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal went away
        signal.signal(sig, on_signal)
    _print(f"exchange starting (config {display_path(config.path)}, data {display_path(config.data_dir)})")
    sup = Supervisor(children, policy=policy)
    code = 0
    try:
        while not interrupts:
            if not sup.step(time.monotonic()):
                code = 1
                break
            time.sleep(0.1)
    finally:
        _print("stopping...")
        sup.stop(force=lambda: interrupts > 1)
        _print("stopped")
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
