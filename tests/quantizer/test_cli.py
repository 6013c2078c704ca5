"""`exchange strategy ...` and `exchange backtest ... --plot` against a real exchange with the
quantizer."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import cli
from testkit.cluster import Cluster
from tests.quantizer.live import BUY, MAKER, OWNER, SELL, TAKER, Live, new_cluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = new_cluster(Path(tmp_path_factory.mktemp("qcli")) / "exchange", with_market=True)
    try:
        c.start()
        live = Live(c)
        live.deposit(OWNER, "USDT", "5000")
        live.deposit(MAKER, "BTC", "1")
        live.deposit(TAKER, "USDT", "100000")
        live.order(MAKER, SELL, "30000", "0.1")
        live.order(TAKER, BUY, "30000", "0.001")
        c.wait_quiet()
        yield c
    finally:
        c.stop()


def run(cluster: Cluster, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config", str(cluster.config_path), *argv])
    return code, out.getvalue(), err.getvalue()


def ok(cluster: Cluster, *argv: str) -> str:
    code, out, err = run(cluster, *argv)
    assert code == 0, (argv, out, err)
    return out


GRID = ["--lower", "29000", "--upper", "31000", "--intervals", "4", "--investment", "1000"]


def test_strategy_commands(cluster: Cluster) -> None:
    preview = ok(cluster, "strategy", "preview", "grid", "BTC_USDT", *GRID)
    assert "levels 29000, 29500, 30000, 30500, 31000" in preview
    assert "minimum investment" in preview
    dca = ok(
        cluster,
        "strategy",
        "preview",
        "dca",
        "BTC_USDT",
        "--price",
        "30000",
        "--base-order",
        "100",
        "--safety-order",
        "100",
        "--max-safety",
        "2",
        "--deviation",
        "0.01",
        "--take-profit",
        "0.01",
        "--investment",
        "1000",
    )
    assert "safety 1: -0.010000 at 29700" in dca
    created = json.loads(
        ok(cluster, "--json", "strategy", "create", "grid", "1", "BTC_USDT", *GRID, "--id", "c1")
    )
    sid = str(created["strategy"]["strategy_id"])
    again = ok(cluster, "strategy", "create", "grid", "1", "BTC_USDT", *GRID, "--id", "c1")
    assert again.startswith("(already created) strategy " + sid)
    assert f"strategy {sid} grid BTC_USDT user 1" in ok(cluster, "strategy", "list", "1")
    wait_for("running", lambda: "running" in ok(cluster, "strategy", "show", sid))
    show = ok(cluster, "strategy", "show", sid)
    assert "realized" in show and "matched pairs" in show and "annualized return" in show
    assert "paused" in ok(cluster, "strategy", "pause", sid)
    assert "running" in ok(cluster, "strategy", "resume", sid)
    ok(cluster, "strategy", "stop", sid, "--mode", "cancel")
    wait_for("stopped", lambda: "funds returned" in ok(cluster, "strategy", "show", sid))
    code, _, err = run(
        cluster, "strategy", "create", "grid", "1", "BTC_USDT", *GRID[:-1], "99999999", "--id", "c2"
    )
    assert code == 1 and "insufficient USDT" in err


def test_backtest_rpc_over_the_market_services_recent_trades(cluster: Cluster) -> None:
    from exchange.v1 import quantizer_service_pb2 as qpb

    from tests.quantizer.live import GRID

    live = Live(cluster)
    for price in ("29500", "30000"):  # two more trades with the maker's offer / a bid
        live.order(MAKER, SELL, price, "0.001")
        live.order(TAKER, BUY, price, "0.001")
    cluster.wait_quiet()

    def run_backtest() -> qpb.BacktestStrategyResponse | None:
        resp: qpb.BacktestStrategyResponse = live.quantizer.BacktestStrategy(
            qpb.BacktestStrategyRequest(market="BTC_USDT", grid=GRID), timeout=20
        )
        return resp if resp.trades >= 3 else None

    resp = wait_for("the market service's trades", run_backtest)
    assert resp.report.investment == "1000" and resp.equity


def test_backtest_command_with_plot(cluster: Cluster, tmp_path: Path) -> None:
    trades = tmp_path / "trades.csv"
    rows = ["time_us,price,amount,taker_side"]
    t = 1_700_000_000_000_000
    for i, (price, side) in enumerate(
        [("30000", "buy"), ("29500", "sell"), ("30000", "buy"), ("30500", "buy")]
    ):
        rows.append(f"{t + i * 60_000_000},{price},0.01,{side}")
    trades.write_text("\n".join(rows) + "\n")
    strategy = tmp_path / "grid.json"
    strategy.write_text(
        json.dumps(
            {
                "kind": "grid",
                "lower_price": "29000",
                "upper_price": "31000",
                "intervals": 4,
                "investment": "1000",
            }
        )
    )
    png = tmp_path / "equity.png"
    out = ok(
        cluster,
        "backtest",
        "BTC_USDT",
        "--trades",
        str(trades),
        "--strategy",
        str(strategy),
        "--plot",
        str(png),
    )
    assert "4 trades" in out and "matched pairs" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
