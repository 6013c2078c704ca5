"""The cluster description (services.cluster.description) and the deploy command's planning
(services.cluster.deploy): the shipped deploy/cluster.toml, precise validation errors, the generated
exchange config, the replicas' command lines and `--only` parts. The real cluster is started by
tests/test_deploy_cluster.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from services.cluster import deploy
from services.cluster.description import (
    DescriptionError,
    description_from_dict,
    exchange_config,
    load_description,
    write_exchange_config,
)
from services.cluster.servers import ZooKeeper
from services.common.config import load_config
from tests.cluster_fixtures import zookeeper  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "cluster.toml"
BASE = ROOT / "deploy" / "exchange.toml"
MARKETS = sorted(load_config(BASE).catalog.markets)


def consecutive_free_ports(n: int) -> int:
    """The first of n consecutive loopback ports that are free right now, below the kernel's
    ephemeral range: the processes bind them later, and meanwhile any outgoing connection of the
    machine may be given a port of that range (seen: a replica failing to bind its port)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low, 20000 + 10 * n)  # an unusual range: 20000 and up after all
    rng = random.Random()
    for _ in range(500):
        first = rng.randrange(20000, top - n)
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return first
    raise RuntimeError(f"no {n} consecutive free ports")


def local_description(
    shards: dict[str, tuple[list[str], list[str]]],
    *,
    zk_nodes: int = 3,
    nats_nodes: int = 3,
    accounts: tuple[str, ...] = ("a",),
    accounts_shards: int = 1,
    database_url: str = "sqlite:///{data_dir}/history.sqlite",
) -> dict[str, Any]:
    """A description on free loopback ports: shards = {name: (pairs, members)}, accounts replicas
    `accounts` (none: accounts as one plain process) on each of `accounts_shards` accounts shards (the
    ports of the shards after the first are left free for them); every service moved off its default
    port."""
    zk, zk_peer, zk_election = (consecutive_free_ports(zk_nodes) for _ in range(3))
    nats, routes = consecutive_free_ports(nats_nodes), consecutive_free_ports(nats_nodes)
    ports = iter(range(consecutive_free_ports(40), 1 << 16))

    def at() -> str:
        return f"127.0.0.1:{next(ports)}"

    if accounts:
        acc: dict[str, Any] = {"replicas": [{"member": m, "listen": at()} for m in accounts]}
    else:
        acc = {"listen": at()}
    for _ in range((accounts_shards - 1) * max(1, len(accounts))):  # shard i: each port + i x replicas
        at()
    if accounts_shards != 1:
        acc["shards"] = accounts_shards
    return {
        "exchange": str(BASE),
        "data_dir": "data",
        "zookeeper": {
            "hosts": [f"127.0.0.1:{zk + i}" for i in range(zk_nodes)],
            "peer_port": zk_peer,
            "election_port": zk_election,
            "root": f"/deploy-test-{uuid.uuid4().hex[:8]}",
        },
        "nats": {
            "urls": [f"nats://127.0.0.1:{nats + i}" for i in range(nats_nodes)],
            "cluster_port": routes,
            "stream_replicas": min(3, nats_nodes),
        },
        "history": {"database_url": database_url, "listen": at()},
        "accounts": acc,
        "market": {"listen": at()},
        "quantizer": {"listen": at()},
        "gateway": {"listen": at(), "admin_listen": at()},
        "shards": {
            name: {"pairs": pairs, "replicas": [{"member": m, "listen": at()} for m in members]}
            for name, (pairs, members) in shards.items()
        },
    }


def write_description(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / "cluster.toml"
    path.write_text(tomli_w.dumps(data))
    return path


# --- the shipped description ------------------------------------------------------------------------


def test_the_shipped_description_places_every_market_on_a_shard_with_three_replicas() -> None:
    desc = load_description(SHIPPED)
    assert [s.name for s in desc.shards] == ["matching-0", "matching-1"]
    assert sorted(desc.pair_map()) == MARKETS
    assert all(len(s.replicas) == 3 for s in desc.shards) and len(desc.accounts) == 3
    assert len(desc.zookeeper.hosts) == 3 and len(desc.nats.urls) == 3 and desc.nats.stream_replicas == 3
    assert desc.database_url.startswith("postgresql+psycopg://") and desc.create_database
    assert desc.data_dir == ROOT / "deploy" / "data" / "cluster-run"


def test_the_generated_exchange_config(tmp_path: Path) -> None:
    data = local_description({"m0": (MARKETS[:2], ["a", "b"]), "m1": (MARKETS[2:], ["a", "b", "c"])})
    data["gateway"]["ws_connections_per_ip"] = 7
    desc = load_description(write_description(tmp_path, data))
    path = write_exchange_config(desc)
    assert path == tmp_path / "data" / "exchange.toml"
    config = load_config(path)
    assert config.data_dir == tmp_path / "data"
    assert list(config.shards) == ["m0", "m1"]
    # each shard's address in the config is its first replica's (where a static resolver dials first)
    assert config.shards["m0"].listen == data["shards"]["m0"]["replicas"][0]["listen"]
    assert config.shards["m1"].listen == data["shards"]["m1"]["replicas"][0]["listen"]
    assert sorted(m.symbol for m in config.catalog.markets_of_shard("m0")) == sorted(MARKETS[:2])
    assert sorted(m.symbol for m in config.catalog.markets_of_shard("m1")) == sorted(MARKETS[2:])
    assert config.accounts.listen == data["accounts"]["replicas"][0]["listen"]
    assert config.history_url() == f"sqlite:///{tmp_path / 'data'}/history.sqlite"
    assert config.history.listen == data["history"]["listen"]
    assert config.gateway.ws_connections_per_ip == 7  # other settings pass through
    assert config.gateway.admin_listen == data["gateway"]["admin_listen"]
    # the markets and assets are the base file's
    assert sorted(config.catalog.markets) == MARKETS
    base = load_config(BASE).catalog.markets
    assert {k: replace(m, shard="") for k, m in config.catalog.markets.items()} == {
        k: replace(m, shard="") for k, m in base.items()
    }
    assert exchange_config(desc).shards == config.shards


# --- validation: each error names the file, the table and the key ------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p] if not p.isdigit() else d[int(p)]  # type: ignore[index]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value

    return change


def _first_two_listen(d: dict[str, Any]) -> None:
    d["shards"]["m1"]["replicas"][0]["listen"] = d["shards"]["m0"]["replicas"][0]["listen"]


def _shard_at_accounts(d: dict[str, Any]) -> None:
    d["shards"]["m0"]["replicas"][1]["listen"] = d["accounts"]["replicas"][0]["listen"]


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown top-level key", _set("zookeeper_hosts", 1), ": unknown key zookeeper_hosts (known: exchange,"),
    ("no shards", _set("shards", KeyError), ": shards is required"),
    ("no exchange file", _set("exchange", "nowhere.toml"), ": exchange: no file "),
    (
        "zk key typo",
        _set("zookeeper.hostz", []),
        "[zookeeper]: unknown key hostz (known: hosts, start, root,",
    ),
    ("zk hosts missing", _set("zookeeper.hosts", KeyError), "[zookeeper]: hosts is required"),
    ("zk hosts empty", _set("zookeeper.hosts", []), "[zookeeper]: hosts must be a non-empty list of strings"),
    (
        "zk host not host:port",
        _set("zookeeper.hosts", ["zk1"]),
        "[zookeeper]: hosts entry 'zk1' is not host:port",
    ),
    (
        "zk remote but started here",
        _set("zookeeper.hosts", ["10.0.0.1:2181"]),
        "[zookeeper]: start = true runs the servers here: hosts '10.0.0.1:2181' is not on 127.0.0.1",
    ),
    (
        "zk ports not consecutive",
        _set("zookeeper.hosts", ["127.0.0.1:2191", "127.0.0.1:2195"]),
        "[zookeeper]: start = true numbers the nodes' ports: hosts must be consecutive, [2191, 2195]",
    ),
    (
        "session timeout",
        _set("zookeeper.session_timeout", 0.5),
        "[zookeeper]: session_timeout must be seconds from 1 to 60, not 0.5",
    ),
    ("zk root", _set("zookeeper.root", "ostrakon/"), "[zookeeper]: root must be an absolute ZooKeeper path"),
    (
        "nats url scheme",
        _set("nats.urls", ["127.0.0.1:4222"]),
        "[nats]: urls entry '127.0.0.1:4222' is not nats://",
    ),
    (
        "stream replicas",
        _set("nats.stream_replicas", 6),
        "[nats]: stream_replicas must be a whole number from 1 to 5, not 6",
    ),
    ("nats start", _set("nats.start", "yes"), "[nats]: start must be true or false, not 'yes'"),
    (
        "more stream replicas than servers",
        lambda d: d["nats"].update(urls=d["nats"]["urls"][:1]),
        "[nats]: stream_replicas = 3 needs as many servers; urls has 1",
    ),
    (
        "history url",
        _set("history.database_url", KeyError),
        "[history]: database_url must be a non-empty string",
    ),
    (
        "pair on two shards",
        lambda d: d["shards"]["m1"]["pairs"].append(MARKETS[0]),
        f"[shards.m1]: pair {MARKETS[0]} is on two shards: m0 and m1",
    ),
    (
        "pair unknown",
        lambda d: d["shards"]["m1"]["pairs"].append("XRP_USDT"),
        "[shards.m1]: pair XRP_USDT is not a market of",
    ),
    (
        "market on no shard",
        lambda d: d["shards"]["m1"]["pairs"].remove(MARKETS[-1]),
        f"[shards]: market {MARKETS[-1]} of exchange.toml is on no shard's pairs",
    ),
    (
        "pair twice on a shard",
        lambda d: d["shards"]["m0"]["pairs"].append(MARKETS[0]),
        f"[shards.m0]: pairs names {MARKETS[0]} more than once",
    ),
    (
        "shard name",
        lambda d: d["shards"].update({"m 2": d["shards"].pop("m1")}),
        "[shards.m 2]: a shard name is letters",
    ),
    ("shard key typo", _set("shards.m0.pair", []), "[shards.m0]: unknown key pair (known: pairs, replicas,"),
    (
        "shard option",
        _set("shards.m0.snapshot_every", -1),
        "[shards.m0]: snapshot_every must be a whole number",
    ),
    ("no replicas", _set("shards.m0.replicas", []), "[shards.m0]: replicas must be a non-empty list"),
    (
        "replica listen",
        _set("shards.m0.replicas.1.listen", "nohost"),
        "[shards.m0] replicas[1]: listen 'nohost' is not host:port",
    ),
    (
        "replica member",
        _set("shards.m0.replicas.1.member", "a"),
        "[shards.m0] replicas[1]: member a is named twice",
    ),
    (
        "replica key",
        _set("shards.m0.replicas.0.port", 1),
        "[shards.m0] replicas[0]: unknown key port (known: member,",
    ),
    (
        "replica advertise",
        _set("shards.m0.replicas.0.advertise", "x"),
        "[shards.m0] replicas[0]: advertise 'x' is not host:port",
    ),
    ("two replicas one address", _first_two_listen, "m1/a and m0/a are both at 127.0.0.1:"),
    ("replica at accounts' address", _shard_at_accounts, "accounts-0/a and m0/b are both at 127.0.0.1:"),
    (
        "accounts shard replica at another's address",  # accounts-1/a: accounts-0/a's port + 1
        _set("accounts.shards", 2),
        "history and accounts-1/a are both at 127.0.0.1:",
    ),
    ("accounts shards", _set("accounts.shards", 0), "[accounts]: shards must be a whole number from 1 to 64"),
    (
        "accounts replicas and shard_listen",
        _set("accounts.shard_listen", ["127.0.0.1:1", "127.0.0.1:2"]),
        "[accounts]: shard_listen: with replicas the addresses are the replicas' (their listen, advertise, "
        "metrics_listen): leave shard_listen out",
    ),
    (
        "accounts replicas and listen",
        _set("accounts.listen", "127.0.0.1:1"),
        "[accounts]: listen: with replicas the addresses are the replicas'",
    ),
    (
        "accounts shard port beyond 65535",
        lambda d: d["accounts"].update(shards=2, replicas=[{"member": "a", "listen": "127.0.0.1:65535"}]),
        "[accounts] replicas[0]: listen '127.0.0.1:65535' moved by 1 for accounts-1 is beyond port 65535",
    ),
    (
        "replica metrics_listen",
        _set("accounts.replicas.0.metrics_listen", "9100"),
        "[accounts] replicas[0]: metrics_listen '9100' is not host:port",
    ),
    (
        "matching shard named as accounts shard",
        lambda d: d["shards"].update({"accounts-1": d["shards"].pop("m1")}),
        "[shards.accounts-1]: accounts, accounts-<i>, history and market name other services",
    ),
    (
        "accounts replica",
        _set("accounts.replicas", [{"member": "a"}]),
        "[accounts] replicas[0]: listen is required",
    ),
    ("stream prefix", _set("nats.stream_prefix", "a.b"), "[nats]: stream_prefix must be letters, digits"),
    (
        "generated config invalid",
        _set("market.listen_here", 1),
        "the exchange config it generates is invalid: ",
    ),
]


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_invalid_description_is_refused_naming_the_table_and_key(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = local_description({"m0": (MARKETS[:2], ["a", "b"]), "m1": (MARKETS[2:], ["a", "b"])}, zk_nodes=2)
    load_description(write_description(tmp_path, data))  # valid as it is
    change(data)
    path = write_description(tmp_path, data)
    with pytest.raises(DescriptionError) as failure:
        load_description(path)
    assert str(failure.value).startswith(f"{path}: ")
    assert message in str(failure.value)


def test_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[zookeeper\n")
    with pytest.raises(DescriptionError, match=r"cluster\.toml: not TOML: "):
        load_description(path)


def test_servers_started_elsewhere_may_be_anywhere(tmp_path: Path) -> None:
    """start = false (several machines): any hosts, any ports; replicas advertise their address."""
    data = local_description({"m0": (MARKETS, ["a", "b"])})
    data["zookeeper"] = {"hosts": ["10.0.0.1:2181", "10.0.0.2:2181", "10.0.0.3:2181"], "start": False}
    data["nats"] = {"urls": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]}
    data["nats"]["start"] = False
    data["shards"]["m0"]["replicas"] = [
        {"member": "a", "listen": "0.0.0.0:50061", "advertise": "10.0.0.1:50061"},
        {"member": "b", "listen": "0.0.0.0:50061", "advertise": "10.0.0.2:50061"},
    ]
    desc = description_from_dict(data, path=tmp_path / "cluster.toml")
    assert [r.address for r in desc.replicas] == ["10.0.0.1:50061", "10.0.0.2:50061"]
    config = exchange_config(desc)
    assert config.shards["m0"].listen == "0.0.0.0:50061" and config.shards["m0"].advertise == "10.0.0.1:50061"
    argv = deploy.replica_argv(desc, desc.exchange_config_path, desc.replicas[1])
    assert argv[argv.index("--advertise") + 1] == "10.0.0.2:50061"
    assert argv[argv.index("--zk") + 1] == "10.0.0.1:2181,10.0.0.2:2181,10.0.0.3:2181"


# --- the processes and parts ------------------------------------------------------------------------


def test_every_replica_runs_in_cluster_mode_then_the_other_services(tmp_path: Path) -> None:
    data = local_description(
        {"m0": (MARKETS[:2], ["a", "b"]), "m1": (MARKETS[2:], ["x"])}, accounts=("a", "b")
    )
    data["nats"]["stream_prefix"] = "ex2"
    desc = load_description(write_description(tmp_path, data))
    children = [c for c, _ in deploy.processes(desc)]
    assert [c.name for c in children] == [
        "m0/a",
        "m0/b",
        "m1/x",
        "accounts-0/a",
        "accounts-0/b",
        "history",
        "market",
        "quantizer-0",
        "gateway",
    ]
    config = str(tmp_path / "data" / "exchange.toml")
    common = {
        "--config": config,
        "--zk": ",".join(data["zookeeper"]["hosts"]),
        "--zk-root": data["zookeeper"]["root"],
        "--session-timeout": "2",
        "--nats": ",".join(data["nats"]["urls"]),
        "--stream-replicas": "3",
        "--stream-prefix": "ex2",
    }
    b = children[1]
    assert b.module == "services.matching" and b.address == data["shards"]["m0"]["replicas"][1]["listen"]
    assert dict(zip(b.args[::2], b.args[1::2], strict=True)) == {
        **common,
        "--shard": "m0",
        "--member": "b",
        "--listen": b.address,
        "--data-dir": str(tmp_path / "data" / "m0" / "b"),
    }
    assert b.log_path == tmp_path / "data" / "logs" / "m0.b.log"
    acc = children[4]
    assert acc.module == "services.accounts" and acc.address == data["accounts"]["replicas"][1]["listen"]
    assert dict(zip(acc.args[::2], acc.args[1::2], strict=True)) == {
        **common,
        "--member": "b",
        "--listen": acc.address,
        "--data-dir": str(tmp_path / "data" / "accounts-0" / "b"),
    }
    # the config's accounts address is the first replica's (what clients dial first; writes redirect)
    assert exchange_config(desc).accounts.listen == data["accounts"]["replicas"][0]["listen"]
    assert children[5].args == ["--config", config]
    parts = deploy.part_names(desc)
    assert {
        "zookeeper",
        "nats",
        "matching",
        "m0",
        "m0/a",
        "m1/x",
        "accounts",
        "accounts-0/b",
        "gateway",
    } <= parts


def test_without_accounts_replicas_accounts_runs_as_the_launcher_runs_it(tmp_path: Path) -> None:
    data = local_description({"m0": (MARKETS, ["a", "b"])}, accounts=())
    desc = load_description(write_description(tmp_path, data))
    children = [c for c, _ in deploy.processes(desc)]
    assert [c.name for c in children][:3] == ["m0/a", "m0/b", "accounts-0"]
    assert children[2].args == ["--config", str(tmp_path / "data" / "exchange.toml")]
    assert children[2].address == data["accounts"]["listen"]


def test_accounts_sharded_by_user_with_replicas(tmp_path: Path) -> None:
    """[accounts] shards = 2 with replicas a, b: accounts-0 and accounts-1 each run a and b (ports of
    accounts-1 after accounts-0's), each its own election (the resolver's name) and stream (its
    source); the generated config has both shards, their first replicas as the static fallback, and
    the ZooKeeper every client reads the leaders from."""
    from services.clients.resolver import StaticResolver, accounts_name, config_addresses
    from services.common.journal.jetstream import stream_name

    data = local_description(
        {"m0": (MARKETS[:2], ["a", "b"]), "m1": (MARKETS[2:], ["x"])}, accounts=("a", "b"), accounts_shards=2
    )
    desc = load_description(write_description(tmp_path, data))
    p0 = int(data["accounts"]["replicas"][0]["listen"].rpartition(":")[2])
    at = [f"127.0.0.1:{p0 + i}" for i in range(4)]
    assert [(r.service, r.member, r.listen, r.kind) for r in desc.accounts] == [
        ("accounts-0", "a", at[0], "accounts"),
        ("accounts-0", "b", at[1], "accounts"),
        ("accounts-1", "a", at[2], "accounts"),
        ("accounts-1", "b", at[3], "accounts"),
    ]
    assert desc.accounts_shards == 2
    assert [(s, [r.member for r in rs]) for s, rs in desc.accounts_groups()] == [
        ("accounts-0", ["a", "b"]),
        ("accounts-1", ["a", "b"]),
    ]

    config = load_config(write_exchange_config(desc))
    assert config.accounts.shards == 2 and config.accounts_sources() == ["accounts-0", "accounts-1"]
    assert [config.accounts_shard(i).listen for i in range(2)] == [at[0], at[2]]
    assert config_addresses(config)["accounts"] == at[0] and config_addresses(config)["accounts-1"] == at[2]
    assert StaticResolver.from_config(config).accounts_shards() == 2  # what AccountsClient routes over
    assert config.cluster.zookeeper == ",".join(data["zookeeper"]["hosts"])
    assert config.cluster.zk_root == data["zookeeper"]["root"]

    children = [c for c, _ in deploy.processes(desc)]
    assert [c.name for c in children] == [
        "m0/a",
        "m0/b",
        "m1/x",
        "accounts-0/a",
        "accounts-0/b",
        "accounts-1/a",
        "accounts-1/b",
        "history",
        "market",
        "quantizer-0",
        "gateway",
    ]
    config_path = str(tmp_path / "data" / "exchange.toml")
    for child, shard, listen in zip(children[3:7], [0, 0, 1, 1], at, strict=True):
        args = dict(zip(child.args[::2], child.args[1::2], strict=True))
        source, member = child.name.split("/")
        assert child.module == "services.accounts" and child.address == listen
        assert args["--config"] == config_path and args["--shard"] == source == f"accounts-{shard}"
        assert args["--member"] == member and args["--listen"] == listen
        assert (
            args["--zk"] == ",".join(data["zookeeper"]["hosts"])
            and args["--zk-root"] == config.cluster.zk_root
        )
        assert args["--data-dir"] == str(tmp_path / "data" / source / member)
        assert child.log_path == tmp_path / "data" / "logs" / f"{source}.{member}.log"
        # the process elects as accounts_name(its index) and journals to its source's stream: what
        # status reads, and (the election) what the clients resolve
        assert config.accounts_shard(args["--shard"]).index == shard
    assert [(k, n, e, [r.name for r in rs]) for k, n, e, rs in deploy.groups(desc)][2:] == [
        ("accounts", "accounts-0", accounts_name(0), ["accounts-0/a", "accounts-0/b"]),
        ("accounts", "accounts-1", accounts_name(1), ["accounts-1/a", "accounts-1/b"]),
    ]
    assert accounts_name(1) == "accounts-1"
    assert stream_name("ostrakon", "accounts-1", "commands") == "OSTRAKON_accounts-1_commands"
    assert children[7].args == ["--config", config_path]  # history as the launcher runs it
    assert {"accounts", "accounts-0", "accounts-1", "accounts-1/b", "accounts-0/a"} <= deploy.part_names(desc)
    assert not {"accounts-0", "accounts-1"} & {c.name for c in children}  # no plain accounts process


def test_accounts_shards_with_replicas_on_several_machines(tmp_path: Path) -> None:
    """Replicas that advertise their machine's address: each accounts shard moves the port of listen,
    advertise and metrics_listen alike."""
    data = local_description({"m0": (MARKETS, ["a"])})
    data["zookeeper"] = {"hosts": ["10.0.0.1:2181"], "start": False}
    data["nats"] = {"urls": ["nats://10.0.0.1:4222"], "start": False, "stream_replicas": 1}
    data["accounts"] = {
        "shards": 3,
        "replicas": [
            {
                "member": m,
                "listen": "0.0.0.0:50051",
                "advertise": f"10.0.0.{i}:50051",
                "metrics_listen": f"0.0.0.0:{9100 + i}",
            }
            for i, m in ((1, "a"), (2, "b"))
        ],
    }
    desc = description_from_dict(data, path=tmp_path / "cluster.toml")
    assert [(r.name, r.listen, r.address, r.metrics_listen) for r in desc.accounts] == [
        ("accounts-0/a", "0.0.0.0:50051", "10.0.0.1:50051", "0.0.0.0:9101"),
        ("accounts-0/b", "0.0.0.0:50051", "10.0.0.2:50051", "0.0.0.0:9102"),
        ("accounts-1/a", "0.0.0.0:50053", "10.0.0.1:50053", "0.0.0.0:9103"),
        ("accounts-1/b", "0.0.0.0:50053", "10.0.0.2:50053", "0.0.0.0:9104"),
        ("accounts-2/a", "0.0.0.0:50055", "10.0.0.1:50055", "0.0.0.0:9105"),
        ("accounts-2/b", "0.0.0.0:50055", "10.0.0.2:50055", "0.0.0.0:9106"),
    ]
    config = exchange_config(desc)
    assert [(config.accounts_shard(i).listen, config.accounts_shard(i).advertise) for i in range(3)] == [
        ("0.0.0.0:50051", "10.0.0.1:50051"),
        ("0.0.0.0:50053", "10.0.0.1:50053"),
        ("0.0.0.0:50055", "10.0.0.1:50055"),
    ]
    argv = deploy.replica_argv(desc, desc.exchange_config_path, desc.accounts[3])
    args = dict(zip(argv[::2], argv[1::2], strict=True))
    assert args["--shard"] == "accounts-1" and args["--advertise"] == "10.0.0.2:50053"
    assert args["--metrics-listen"] == "0.0.0.0:9104"


def test_start_with_an_unknown_part_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_description(tmp_path, local_description({"m0": (MARKETS, ["a"])}))
    assert deploy.main(["start", str(path), "--only", "m0/a,m9"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "--only: no part m9 in " in err and "parts are " in err and "m0/a" in err
    assert not (tmp_path / "data").exists()  # nothing started, nothing written


def test_config_command_writes_the_generated_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_description(tmp_path, local_description({"m0": (MARKETS, ["a"])}))
    assert deploy.main(["config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "data" / "exchange.toml")
    assert list(load_config(tmp_path / "data" / "exchange.toml").shards) == ["m0"]


def test_a_bad_description_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = local_description({"m0": (MARKETS[1:], ["a"])})
    assert deploy.main(["status", str(write_description(tmp_path, data))]) == 2
    assert "is on no shard's pairs" in capsys.readouterr().err


def test_stop_without_a_running_cluster_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_description(tmp_path, local_description({"m0": (MARKETS, ["a"])}))
    assert deploy.main(["stop", str(path)]) == 0
    assert "no cluster of " in capsys.readouterr().out


# --- the history database ------------------------------------------------------------------------------

POSTGRES = os.environ.get("DEPLOY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def postgres_or_skip() -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES} (CI=true: a failure): {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES}: {exc}")
    finally:
        engine.dispose()


def drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def test_the_history_database_is_created_once() -> None:
    from sqlalchemy.engine import make_url

    postgres_or_skip()
    url = make_url(POSTGRES).set(database=f"deploy_test_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    rendered = url.render_as_string(hide_password=False)
    try:
        assert deploy.ensure_database(rendered) is True
        assert deploy.ensure_database(rendered) is False  # there already
    finally:
        drop_database(rendered)
    assert deploy.ensure_database("sqlite:///x.sqlite") is False  # not a server database


def _orphan_sleep() -> int:
    """A `sleep 60` that is not this process's child (as the processes a killed start left are not)."""
    import subprocess

    return int(
        subprocess.run(
            ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
        ).stdout
    )


def test_stop_after_a_killed_start_stops_what_it_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supervising start died (SIGKILL): stop ends its children and the servers by their pid files."""
    import signal
    import subprocess
    import time

    desc = load_description(write_description(tmp_path, local_description({"m0": (MARKETS, ["a"])})))
    (desc.data_dir / "nats" / "nats-1").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    child, server = _orphan_sleep(), _orphan_sleep()
    (desc.data_dir / "nats" / "nats-1" / "pid").write_text(str(server))
    state = {"pid": dead.pid, "servers": [str(desc.data_dir / "nats")], "children": {"m0/a": child}}
    (desc.data_dir / "deploy.json").write_text(json.dumps(state))
    try:
        assert deploy._alive(child) and deploy._alive(server)
        assert deploy.stop(desc) == 0
        deadline = time.monotonic() + 5
        while (deploy._alive(child) or deploy._alive(server)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not deploy._alive(child) and not deploy._alive(server)
        out = capsys.readouterr().out
        assert f"stopped m0/a (pid {child}), which pid {dead.pid} left" in out
        assert f"stopped nats-1, which pid {dead.pid} left" in out
        assert not (desc.data_dir / "deploy.json").exists()
        assert not (desc.data_dir / "nats" / "nats-1" / "pid").exists()
    finally:
        for pid in (child, server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_status_of_a_cluster_that_is_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = load_description(write_description(tmp_path, local_description({"m0": (MARKETS, ["a", "b"])})))
    assert deploy.status(desc, timeout=0.5) == 1
    text = capsys.readouterr().out
    assert "no `start` of it runs here" in text
    assert "zookeeper  " in text and " down" in text and "ERROR ZooKeeper " in text
    assert "nats       0/3 up" in text
    assert "shard m0  leader NONE" in text
    assert "accounts accounts-0  leader NONE" in text
    assert "credentials: no credentials at " in text
    assert text.rstrip().endswith("NOT healthy")


def test_status_of_accounts_shards_that_are_not_running(tmp_path: Path) -> None:
    """Every accounts shard with replicas is a group of its own in status: its election, its stream,
    its replicas (here none answers)."""
    data = local_description({"m0": (MARKETS, ["a"])}, accounts=("a", "b"), accounts_shards=2)
    desc = load_description(write_description(tmp_path, data))
    out = io.StringIO()
    assert deploy.status(desc, as_json=True, timeout=0.5, out=out) == 1
    st = json.loads(out.getvalue())
    assert [(g["name"], g["leader"], [r["member"] for r in g["replicas"]]) for g in st["accounts"]] == [
        ("accounts-0", None, ["a", "b"]),
        ("accounts-1", None, ["a", "b"]),
    ]
    assert all(
        r["health"].startswith("down") and r["lag"] is None for g in st["accounts"] for r in g["replicas"]
    )
    assert not st["healthy"] and {s["name"] for s in st["services"]} == {
        "history",
        "market",
        "quantizer-0",
        "gateway",
    }
    text = deploy.format_status(st)
    assert "accounts accounts-0  leader NONE  followers -" in text
    assert "accounts accounts-1  leader NONE  followers -" in text


def test_status_reads_leaders_contenders_and_the_pair_map_from_zookeeper(
    tmp_path: Path,
    zookeeper: ZooKeeper,  # noqa: F811
) -> None:
    """zookeeper_view against a real ZooKeeper: a shard's elected leader and its contenders, and the
    entries of the pair map (services.cluster.pairmap) that status lays over the description's."""
    from services.cluster.election import ShardElection
    from services.cluster.pairmap import ZooKeeperPairMap

    data = local_description({"m0": (MARKETS, ["a", "b"])})
    data["zookeeper"] = {
        "hosts": [zookeeper.hosts],
        "start": False,
        "root": f"/deploy-test-{uuid.uuid4().hex[:8]}",
    }
    desc = load_description(write_description(tmp_path, data))
    root = desc.zookeeper.root
    assert deploy.zookeeper_view(desc, ["m0"], 5.0) == {
        "elections": {"m0": {"leader": None, "contenders": []}},
        "pairs": {},
        "error": "",
    }
    election = ShardElection(zookeeper.hosts, "m0", "b", "127.0.0.1:1234", root=root).start()
    pairs = ZooKeeperPairMap(zookeeper.hosts, root=root)
    try:
        deadline = time.monotonic() + 10
        while not election.leading.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        pairs.put(MARKETS[0], "m1", moving_to="m2")
        view = deploy.zookeeper_view(desc, ["m0"], 5.0)
        assert view["elections"] == {
            "m0": {"leader": {"member": "b", "address": "127.0.0.1:1234"}, "contenders": ["b"]}
        }
        assert view["pairs"] == {MARKETS[0]: {"shard": "m1", "moving_to": "m2", "epoch": 1}}
    finally:
        election.stop()
        pairs.close()
