"""The `exchange` command line against a real exchange: what a person sees (decimals with symbols),
errors in one line within the deadline, no traceback on a closed pipe or Ctrl-C, config discovery."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import cli
from tests.cluster import ROOT, Cluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cli"), with_history=True, with_market=True)
    c.start()
    yield c
    c.stop()


def run(config: Path | str | None, *argv: str) -> tuple[int, str, str]:
    """cli.main in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*(["--config", str(config)] if config else []), *argv])
    return code, out.getvalue(), err.getvalue()


def ok(config: Path | str, *argv: str) -> str:
    code, out, err = run(config, *argv)
    assert code == 0, (argv, out, err)
    return out


def run_process(
    args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The CLI as its own process; a hang fails the test (TimeoutExpired) instead of blocking it."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def traded(cluster: Cluster) -> dict[str, Any]:
    """User 301 buys 0.2 BTC from user 302 at 30000 USDT, all through the CLI."""
    cfg = cluster.config_path
    result: dict[str, Any] = {
        "deposit": ok(cfg, "deposit", "301", "USDT", "100000"),
        "deposit_btc": ok(cfg, "deposit", "302", "BTC", "2", "--id", "t302"),
        "deposit_again": ok(cfg, "deposit", "302", "BTC", "2", "--id", "t302"),
        "sell": ok(cfg, "sell", "302", "BTC_USDT", "0.5", "--price", "30000"),
        "buy": ok(cfg, "buy", "301", "BTC_USDT", "0.2", "--price", "30010", "--client-id", "c-1"),
    }
    result["sell_id"] = int(re.search(r"order (\d+)", result["sell"])[1])  # type: ignore[index]
    result["buy_id"] = int(re.search(r"order (\d+)", result["buy"])[1])  # type: ignore[index]
    cluster.wait_quiet()
    return result


def eventually(config: Path, *argv: str, contains: str, timeout: float = 30.0) -> str:
    """Output of a query once it shows `contains` (history and market follow the event streams)."""
    deadline = time.monotonic() + timeout
    while True:
        code, out, err = run(config, *argv)
        if code == 0 and contains in out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{argv}: no {contains!r} after {timeout} s:\n{out}{err}")
        time.sleep(0.2)


def test_trading_commands_show_decimals_with_symbols(cluster: Cluster, traded: dict[str, Any]) -> None:
    cfg = cluster.config_path
    assert traded["deposit"].startswith("deposited 100000 USDT for user 301 (cli cli-")
    assert traded["deposit"].rstrip().endswith("now available 100000 USDT, frozen 0 USDT")
    assert traded["deposit_again"].startswith("already applied (cli t302); nothing changed")
    assert re.match(r"placed: order \d+  BTC_USDT sell limit 0\.5 BTC @ 30000 USDT  pending", traded["sell"])
    assert "client id c-1" in traded["buy"]
    balance = ok(cfg, "balance", "301")
    assert re.search(r"^USDT\s+available 94000 USDT\s+frozen 0 USDT$", balance, re.M), balance
    assert re.search(r"^BTC\s+available 0\.1996 BTC\s+frozen 0 BTC$", balance, re.M), balance
    assert ok(cfg, "balance", "302", "BTC").split() == [
        "BTC",
        "available",
        "1.5",
        "BTC",
        "frozen",
        "0.3",
        "BTC",
    ]
    orders = ok(cfg, "orders", "302", "BTC_USDT")
    assert f"order {traded['sell_id']}  BTC_USDT sell limit 0.5 BTC @ 30000 USDT  partially-filled" in orders
    assert "executed 0.2 BTC for 6000 USDT, fee 6 USDT, open 0.3 BTC" in orders
    depth = ok(cfg, "depth", "BTC_USDT")
    assert re.search(r"ask 30000\s+0\.3\s+1", depth) and "(no bids)" in depth
    order = ok(cfg, "order", "301", "--client-id", "c-1")
    assert "buy limit 0.2 BTC @ 30010 USDT  filled  executed 0.2 BTC for 6000 USDT, fee 0.0004 BTC" in order


def test_history_and_market_commands(cluster: Cluster, traded: dict[str, Any]) -> None:
    cfg = cluster.config_path
    buy = traded["buy_id"]
    fill = "0.2 BTC @ 30000 USDT = 6000 USDT, fee 0.0004 BTC"
    trades = eventually(cfg, "trades", "301", contains=fill)
    assert f"BTC_USDT order {buy} buy taker  {fill}" in trades
    assert f"against order {traded['sell_id']} of user 302" in trades
    assert f"order {buy} buy taker  {fill}" in ok(cfg, "order-trades", str(buy))
    assert "sell maker  0.2 BTC @ 30000 USDT = 6000 USDT, fee 6 USDT" in ok(cfg, "trades", "302", "BTC_USDT")
    finished = eventually(cfg, "order-history", "301", "BTC_USDT", contains=f"order {buy}")
    assert f"order {buy}  BTC_USDT buy limit 0.2 BTC @ 30010 USDT  filled" in finished
    changes = eventually(cfg, "balance-history", "301", "USDT", contains="deposit")
    assert "available +100000 USDT; now available 100000 USDT, frozen 0 USDT" in changes
    ticker = eventually(cfg, "ticker", "BTC_USDT", contains="last 30000 USDT")
    assert "volume 0.2 BTC / 6000 USDT  trades 1" in ticker
    assert "BTC_USDT" in ok(cfg, "ticker") and "ETH_USDT" in ok(cfg, "ticker")
    recent = ok(cfg, "recent-trades", "BTC_USDT")
    assert "BTC_USDT taker buy  0.2 BTC @ 30000 USDT = 6000 USDT" in recent
    klines = ok(cfg, "klines", "BTC_USDT", "--interval", "1h")
    assert "close 30000 USDT  volume 0.2 BTC / 6000 USDT  trades 1" in klines
    status = ok(cfg, "status", "--audit")
    for head in ("accounts-0 at ", "matching-0 at ", "history at ", "market at "):
        assert head in status, status
    assert "database sqlite" in status and "stored up to accounts-0 " in status
    assert re.search(r"audit USDT .*: ok \(USDT\)", status), status
    assert ok(cfg, "status", "history", "market").startswith("history at ")
    code, _, err = run(cfg, "status", "nope")
    assert code == 2 and err.startswith("error: unknown service nope")


def test_events_print_decimals_with_symbols_and_stop_on_ctrl_c(
    cluster: Cluster, traded: dict[str, Any]
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "--config",
            str(cluster.config_path),
            "events",
            "301",
            "--from",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while not any(" fill trade " in line for line in lines) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        while not any(": filled, executed" in line for line in lines) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "\n".join(lines)
    buy = traded["buy_id"]
    assert re.search(
        r"^#\d+ \S+ \S+Z user 301 balance USDT deposit \(cli-\d+\): available \+100000 USDT; "
        r"now available 100000 USDT, frozen 0 USDT$",
        text,
        re.M,
    ), text
    assert re.search(
        rf"user 301 fill trade \d+ BTC_USDT order {buy} buy taker: 0\.2 BTC @ 30000 USDT = "
        r"6000 USDT, fee 0\.0004 BTC$",
        text,
        re.M,
    ), text
    assert (
        f"order {buy} BTC_USDT buy limit 0.2 BTC @ 30010 USDT: filled, executed 0.2 BTC for 6000 USDT" in text
    )
    assert "balance USDT order-freeze" in text and "frozen +6002 USDT" in text
    # No raw integers of the event log: 30000 USDT is 3000000 ticks, 0.2 BTC 20000 lots.
    assert not re.search(r"\b(3000000|20000)\b", text) and "ticks" not in text and "units" not in text
    assert proc.returncode == cli.EXIT_INTERRUPTED
    assert "Traceback" not in err and err.strip() == "interrupted"


def _pipeline(command: str, tmp_path: Path, timeout: float = 60) -> tuple[str, str]:
    """`command | head -1` through the shell; (head's output, the command's stderr)."""
    err = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
    done = subprocess.run(
        ["sh", "-c", f"{command} 2>{shlex.quote(str(err))} | head -1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.stdout, err.read_text()


def test_broken_pipe_leaves_no_traceback(cluster: Cluster, traded: dict[str, Any], tmp_path: Path) -> None:
    exe = f"{shlex.quote(sys.executable)} -m services.cli --config {shlex.quote(str(cluster.config_path))}"
    out, err = _pipeline(f"{exe} events 301 --from 1", tmp_path)
    assert out.startswith("#") and out.count("\n") == 1
    assert err == "", err
    out, err = _pipeline(f"{exe} markets", tmp_path)
    assert out.startswith("BTC_USDT") and err == "", err
    # A user with one event: after `head` has its line nothing more is written, and the CLI still ends
    # (it notices the closed pipe; before, it waited for the next event of that user, for ever).
    ok(cluster.config_path, "deposit", "399", "USDT", "1")
    out, err = _pipeline(f"{exe} events 399 --from 1", tmp_path, timeout=30)
    assert "user 399 balance USDT deposit" in out and err == "", err


def _config_with(cluster: Cluster, tmp_path: Path, address: str) -> Path:
    """The cluster's config with every service moved to `address`."""
    text = re.sub(r'listen = "[^"]*"', f'listen = "{address}"', cluster.config_path.read_text())
    path = tmp_path / "elsewhere.toml"
    path.write_text(text)
    return path


def test_dead_endpoint_fails_fast_in_one_line(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXCHANGE_CREDENTIALS", str(cluster.config.credentials_path()))
    port = free_port()  # nobody listens there
    dead = _config_with(cluster, tmp_path, f"127.0.0.1:{port}")
    code, out, err = run(dead, "--timeout", "2", "balance", "1")
    assert code == 1 and out == ""
    assert err == (
        f"error: cannot reach accounts-0 at 127.0.0.1:{port} (connection refused); is the exchange running? "
        "./scripts/run starts it\n"
    )
    code, out, err = run(dead, "status")
    assert code == 1 and err == ""
    assert out.count("error: cannot reach") == 4, out  # accounts, the shard, history, market: each reported

    # A port that accepts connections and never answers: the deadline ends each call.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        silent = _config_with(cluster, tmp_path, f"127.0.0.1:{hole.getsockname()[1]}")
        env = {**os.environ, "EXCHANGE_CREDENTIALS": str(cluster.config.credentials_path())}
        for command in (["balance", "1"], ["events", "1"], ["trades", "1"]):
            done = run_process(["--config", str(silent), "--timeout", "1", *command], env=env)
            assert done.returncode == 1, done
            assert done.stderr.startswith("error: ") and "did not answer within 1 s" in done.stderr, (
                done.stderr
            )
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_errors_are_sentences_by_reason_and_usage_errors_exit_2(
    cluster: Cluster, traded: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cluster.config_path
    code, _, err = run(cfg, "buy", "301", "BTC_USDT", "100", "--price", "30000")
    assert code == 1 and err.count("\n") == 1
    assert "insufficient USDT" in err and "Not enough available funds" in err, err
    code, _, err = run(cfg, "buy", "301", "BTC_USDT", "0.1")
    assert (code, err) == (2, "error: a limit order needs --price (or --type market for a market order)\n")
    code, _, err = run(cfg, "sell", "302", "BTC_USDT", "--type", "market")
    assert code == 2 and "a market sell needs AMOUNT" in err
    code, _, err = run(cfg, "amend", "302", "1")
    assert code == 2 and "--price and/or --amount" in err
    # --market is no flag any more: a market symbol is always positional.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", str(cfg), "orders", "301", "--market", "BTC_USDT"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --market" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", str(cfg), "balance", "99999999999999999999999"])
    assert exit_info.value.code == 2 and "user id must be in 0.." in capsys.readouterr().err
    assert ok(cfg, "cancel-all", "302", "BTC_USDT", "--side", "sell").startswith(
        "cancel sent for 1 open sell"
    )
    assert ok(cfg, "token") == cluster.token("admin") + "\n"


def test_config_discovery(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EXCHANGE_CONFIG", "EXCHANGE_CREDENTIALS")}
    # From another directory through $EXCHANGE_CONFIG (paths in it are relative to the file).
    done = run_process(["markets"], cwd=elsewhere, env={**env, "EXCHANGE_CONFIG": str(cluster.config_path)})
    assert done.returncode == 0 and done.stdout.startswith("BTC_USDT"), done
    # ./deploy/exchange.toml of the working directory.
    project = tmp_path / "project"
    (project / "deploy").mkdir(parents=True)
    (project / "deploy" / "exchange.toml").write_text(cluster.config_path.read_text())
    creds = str(cluster.config.credentials_path())
    done = run_process(["assets"], cwd=project, env={**env, "EXCHANGE_CREDENTIALS": creds})
    assert done.returncode == 0 and done.stdout.startswith("BTC "), done

    # The order of the places, in this process.
    monkeypatch.delenv("EXCHANGE_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli, "REPO_CONFIG", tmp_path / "no-repo" / "exchange.toml")
    monkeypatch.chdir(elsewhere)
    code, out, err = run(None, "markets")
    assert code == 2 and out == ""
    assert err.startswith("error: no exchange configuration found (looked for ./deploy/exchange.toml, ")
    with pytest.raises(cli.ConfigNotFound, match=r"no exchange configuration found.*pass --config FILE"):
        cli.find_config()
    home_config = tmp_path / "home" / ".config" / "exchange" / "exchange.toml"
    home_config.parent.mkdir(parents=True)
    home_config.write_text("")
    assert cli.find_config() == home_config
    monkeypatch.setattr(cli, "REPO_CONFIG", cluster.config_path)  # the repository's, beside the package
    assert cli.find_config() == cluster.config_path
    monkeypatch.chdir(project)
    assert cli.find_config() == Path("deploy/exchange.toml")
    monkeypatch.setenv("EXCHANGE_CONFIG", str(home_config))
    assert cli.find_config() == home_config
    assert cli.find_config(str(cluster.config_path)) == cluster.config_path
    with pytest.raises(cli.ConfigNotFound, match=r"config file /nowhere\.toml not found"):
        cli.find_config("/nowhere.toml")
    monkeypatch.setenv("EXCHANGE_CONFIG", "/nowhere.toml")
    with pytest.raises(cli.ConfigNotFound, match=r"EXCHANGE_CONFIG=/nowhere\.toml: no such file"):
        cli.find_config()


def test_every_command_and_argument_has_help() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(helps) == set(sub.choices) and all(helps.values()), helps
    missing = [
        f"{name} {action.dest}"
        for name, p in [("exchange", parser), *sub.choices.items()]
        for action in p._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []
    for name, p in sub.choices.items():
        assert not any("--market" in a.option_strings for a in p._actions), name
