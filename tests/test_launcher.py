"""The launcher's supervision, against real processes: a killed service is restarted and reported
healthy again; a service that keeps crashing makes the launcher give up, stop the rest and fail."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange.v1 import accounts_service_pb2 as apb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.launcher import Child, Policy, Supervisor, describe_exit, log_tail
from tests.cluster import ROOT, Cluster

ENDPOINT = re.compile(r"^\s+(?P<name>\S+)\s+(?P<address>\S+)\s+pid (?P<pid>\d+)\s+log (?P<log>\S+)$")


class Launcher:
    """`python -m services.launcher` as a subprocess, its output lines read by a thread."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.launcher", "--config", str(config), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.pids: dict[str, int] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The next output line matching `pattern` (lines before it are kept in self.lines)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.lines)
                )
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"launcher ended before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            m = ENDPOINT.match(line)
            if m:
                self.pids[m["name"]] = int(m["pid"])
            found = rx.search(line)
            if found:
                return found

    def rest(self, timeout: float = 60.0) -> str:
        """Every remaining line until the launcher exits."""
        self.proc.wait(timeout)
        while True:
            line = self._queue.get(timeout=10)
            if line is None:
                return "\n".join(self.lines)
            self.lines.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids.values():  # children of a launcher that failed to stop them
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    # Every service on an ephemeral port; the launcher starts the processes (Cluster.start() is not used).
    return Cluster(tmp_path / "exchange", with_history=True, with_market=True)


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.close()


@pytest.mark.slow
def test_killed_service_is_restarted_and_healthy_again(cluster: Cluster, launchers: list[Launcher]) -> None:
    launcher = Launcher(cluster.config_path, "--only", "matching,accounts", "--backoff", "0.2")
    launchers.append(launcher)
    launcher.expect(r"^exchange ready")
    old_pid = launcher.pids["accounts-0"]
    assert set(launcher.pids) == {"matching-0", "accounts-0"}

    os.kill(old_pid, signal.SIGKILL)
    launcher.expect(
        r"^accounts-0 exited with -9 \(SIGKILL\); restarting in 0\.2 s "
        r"\(restart 1, log \S*accounts-0\.log\)$"
    )
    m = launcher.expect(r"^accounts-0 healthy again \(pid (\d+), after restart 1\)$")
    new_pid = int(m[1])
    assert new_pid != old_pid and _alive(new_pid)
    launcher.pids["accounts-0"] = new_pid
    # It really serves, with the exchange's credentials, and nothing else was restarted.
    markets = cluster.accounts.ListMarkets(apb.ListMarketsRequest(), timeout=10).markets
    assert "BTC_USDT" in {mk.symbol for mk in markets}
    health = health_pb2_grpc.HealthStub(cluster.channel("accounts-0"))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    assert _alive(launcher.pids["matching-0"])

    # Ctrl-C still stops everything and exits 0.
    launcher.proc.send_signal(signal.SIGINT)
    out = launcher.rest()
    assert launcher.proc.returncode == 0, out
    assert out.endswith("stopping...\nstopped"), out
    assert "matching-0 exited" not in out
    assert not _alive(new_pid) and not _alive(launcher.pids["matching-0"])


@pytest.mark.slow
def test_crash_loop_gives_up_with_the_log_and_stops_the_rest(
    cluster: Cluster, launchers: list[Launcher]
) -> None:
    launcher = Launcher(
        cluster.config_path,
        "--only",
        "matching,accounts",
        "--backoff",
        "0.1",
        "--max-backoff",
        "0.2",
        "--max-restarts",
        "2",
    )
    launchers.append(launcher)
    launcher.expect(r"^exchange ready")
    # Its data directory becomes a file: every start of accounts fails at once (NotADirectoryError).
    data = cluster.dir / "data" / "accounts-0"
    data.rename(data.with_name("accounts-0.moved"))
    data.write_text("not a directory")
    os.kill(launcher.pids["accounts-0"], signal.SIGKILL)

    launcher.expect(r"^accounts-0 exited with -9 \(SIGKILL\); restarting in 0\.1 s \(restart 1, ")
    launcher.expect(r"^accounts-0 exited with 1; restarting in 0\.2 s \(restart 2, ")
    launcher.expect(
        r"^accounts-0 keeps crashing: exited with 1 after 2 restarts within 60 s; giving up\. "
        r"Last lines of \S*accounts-0\.log:$"
    )
    out = launcher.rest()
    assert launcher.proc.returncode == 1, out
    tail = out.split("giving up.", 1)[1]
    assert "NotADirectoryError" in tail  # the cause, from the child's log
    assert tail.rstrip().endswith("stopping...\nstopped")
    assert not _alive(launcher.pids["matching-0"])  # the others were stopped


def test_supervisor_restart_delays_double_reset_and_give_up(tmp_path: Path) -> None:
    """The policy on a fake clock, without processes: delays 0.5, 1, 2 ... capped; the window counts
    restarts; a long healthy run resets the delay."""

    class Exited:
        pid = 4242

        def __init__(self, code: int) -> None:
            self.code = code

        def poll(self) -> int:
            return self.code

    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            if text.strip():
                lines.append(text)

        def flush(self) -> None:
            pass

    child = Child("accounts-0", "services.accounts", [], "127.0.0.1:1", log_path=tmp_path / "a.log")
    (tmp_path / "a.log").write_text('{"ts":"t","level":"error","msg":"boom","error":"disk"}\n')
    policy = Policy(backoff=0.5, max_backoff=2.0, reset_after=30.0, max_restarts=4, window=60.0)
    sup = Supervisor([child], policy=policy, out=Out(), err=Out())  # type: ignore[arg-type]
    child.state = "healthy"

    def crash(now: float) -> bool:
        child.state = "healthy"
        child.process = Exited(-9)  # type: ignore[assignment]
        return sup._step_child(child, now)

    assert crash(0.0) and child.restart_at == 0.5
    assert crash(1.0) and child.restart_at == 2.0
    assert crash(2.0) and child.restart_at == 4.0
    assert crash(3.0) and child.restart_at == 5.0  # capped at max_backoff
    assert [line.split(";")[1].strip() for line in lines] == [
        "restarting in 0.5 s (restart 1, log " + str(tmp_path / "a.log") + ")",
        "restarting in 1.0 s (restart 2, log " + str(tmp_path / "a.log") + ")",
        "restarting in 2.0 s (restart 3, log " + str(tmp_path / "a.log") + ")",
        "restarting in 2.0 s (restart 4, log " + str(tmp_path / "a.log") + ")",
    ]
    # Once the window has passed the old restarts no longer count; a long healthy run resets the delay.
    child.state, child.healthy_since = "healthy", 100.0
    child.process = type("Running", (), {"poll": lambda self: None, "pid": 1})()  # type: ignore[assignment]
    sup._step_child(child, 131.0)
    sup._cancel_probe(child)
    assert child.delay == 0.5
    assert crash(140.0) and child.restart_at == 140.5
    # Five crashes within the window: the fifth gives up and shows the log tail, decoded.
    for t in (141.0, 142.0, 143.0):
        assert crash(t)
    lines.clear()
    assert not crash(144.0)
    assert sup.failed is child
    assert lines[0].startswith(
        "accounts-0 keeps crashing: exited with -9 (SIGKILL) after 4 restarts within 60 s"
    )
    assert lines[1].strip() == "t error boom error=disk"
    assert describe_exit(1) == "1" and describe_exit(-15) == "-15 (SIGTERM)"
    assert log_tail(tmp_path / "missing.log")[0].startswith("(cannot read the log")
    if child.channel is not None:
        child.channel.close()


def test_only_names_unknown_services(cluster: Cluster) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.launcher",
            "--config",
            str(cluster.config_path),
            "--only",
            "acounts",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: --only: no service acounts in ")
    assert "accounts-0" in out.stderr and "Traceback" not in out.stderr
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.launcher",
            "--config",
            str(cluster.config_path),
            "--only",
            "accounts",
            "--print-commands",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[1:] == ["-m", "services.accounts", "--config", str(cluster.config_path)]


def test_help_documents_only_and_process_managers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.launcher", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "--only NAMES" in out.stdout and "systemd" in out.stdout
    assert "python -m services.accounts --config" in out.stdout


def test_accounts_shards_plan_one_process_per_shard(tmp_path: Path) -> None:
    """Accounts sharded by user: the config names the partition and the addresses, the launcher starts
    one accounts process per shard (--shard accounts-<i>) and probes each at its own address."""
    import tomllib

    from services.common.config import config_from_dict
    from services.common.markets import ConfigError
    from services.launcher import plan

    markets = tomllib.loads((ROOT / "deploy" / "exchange.toml").read_text())
    accounts = {"listen": "127.0.0.1:7051", "shards": 3, "shard_advertise": ["", "10.0.0.2:7052", ""]}
    config = config_from_dict({**markets, "accounts": accounts}, base_dir=tmp_path)
    assert config.accounts_sources() == ["accounts-0", "accounts-1", "accounts-2"]
    assert [config.accounts_shard(i).listen for i in range(3)] == [
        "127.0.0.1:7051",
        "127.0.0.1:7052",
        "127.0.0.1:7053",
    ]
    assert config.accounts_shard("accounts-2").index == 2 and config.accounts.owner_of(7) == 1
    children = [c for c in plan(config) if c.module == "services.accounts"]
    assert [(c.name, c.args[-1], c.address) for c in children] == [
        ("accounts-0", "accounts-0", "127.0.0.1:7051"),
        ("accounts-1", "accounts-1", "10.0.0.2:7052"),
        ("accounts-2", "accounts-2", "127.0.0.1:7053"),
    ]
    assert [c.name for c in plan(config, {"accounts-1"})] == ["accounts-1"]
    single = [
        c for c in plan(config_from_dict(markets, base_dir=tmp_path)) if c.module == "services.accounts"
    ]
    assert [(c.name, c.args[-1]) for c in single] == [("accounts-0", str(tmp_path / "exchange.toml"))]
    for bad, why in (
        ({"shards": 0}, "shards must be"),
        ({"shards": 2, "shard_listen": ["127.0.0.1:1"]}, "names 1 addresses for 2 shards"),
        ({"shards": 2, "source": "acc"}, "leave source out"),
        ({"index": 1}, "unknown keys"),
    ):
        with pytest.raises(ConfigError, match=why):
            config_from_dict({**markets, "accounts": bad}, base_dir=tmp_path)
