"""Start, stop and inspect a multi-process cluster from its description (deploy/cluster.toml, see
deploy/README.md and services.cluster.description).

    python -m services.cluster.deploy start  [DESCRIPTION] [--only PARTS]   # supervises until Ctrl-C
    python -m services.cluster.deploy stop   [DESCRIPTION]
    python -m services.cluster.deploy status [DESCRIPTION] [--json]
    python -m services.cluster.deploy config [DESCRIPTION]    # writes the generated exchange config

(`deploy/cluster start|stop|status|config` is the same; DESCRIPTION defaults to deploy/cluster.toml.)

start: starts the ZooKeeper ensemble and the NATS JetStream cluster marked `start = true`
(services.cluster.servers, data under <data_dir>/zookeeper and <data_dir>/nats), creates the
PostgreSQL history database when missing, writes <data_dir>/exchange.toml, then runs every process
under the launcher's Supervisor (services.launcher: in order, each once the one before is healthy;
restarts with backoff; a crash loop gives up): each matching replica in cluster mode
(`python -m services.matching --shard S --zk .. --nats .. --member M --listen .. --data-dir
<data_dir>/S/M`), then each accounts replica the same way (`python -m services.accounts [--shard
accounts-<i>] --member M ...`: every accounts shard's replicas, shard by shard; without [accounts]
replicas accounts as the launcher runs it), then history, market, quantizer and gateway as the
launcher runs them. It prints "cluster ready" and supervises until Ctrl-C / SIGTERM / `stop`, then
stops the services in reverse order, then NATS and ZooKeeper. `--only` runs a part of the
description (one machine's): zookeeper, nats, matching (every replica), a shard name (its replicas),
SHARD/MEMBER, accounts (every accounts replica), accounts-<i> (that accounts shard's replicas),
accounts-<i>/MEMBER, or a service name or kind of the launcher (history, market, quantizer, gateway,
exporter).
A running start keeps <data_dir>/deploy.json (its pid, its children's); `stop` signals it and
waits, or, when it is gone, stops what it left.

status: per shard, and per accounts shard with replicas, the leader and the followers (its ZooKeeper
election), each replica's health, applied sequence and lag behind the last record of the shard's
JetStream command stream, the pair map (the description's, checked against what each leader serves),
the ZooKeeper and NATS members and the health of the other services. Exit status 0 when every shard
(and accounts shard) has a leader and everything answers SERVING, 1 otherwise; 2 for a bad command
line or description.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from services.clients.resolver import accounts_name
from services.cluster.description import (
    ClusterDescription,
    DescriptionError,
    ReplicaSpec,
    exchange_config,
    load_description,
    write_exchange_config,
)
from services.cluster.servers import NatsCluster, Node, ServerMissing, ZooKeeper
from services.common.markets import ConfigError
from services.launcher import Child, Supervisor, configure_security, display_path, plan

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DESCRIPTION = ROOT / "deploy" / "cluster.toml"
STATE_FILE = "deploy.json"
SERVERS = ("zookeeper", "nats")


# --- start ------------------------------------------------------------------------------------------


def replica_argv(desc: ClusterDescription, config_path: Path, r: ReplicaSpec) -> list[str]:
    """The arguments of `python -m services.matching` / `services.accounts` for a replica in cluster mode."""
    z, n = desc.zookeeper, desc.nats
    args = ["--config", str(config_path)]
    if r.kind == "matching" or desc.accounts_shards > 1:  # one accounts shard: the config's
        args += ["--shard", r.service]
    args += ["--member", r.member, "--listen", r.listen]
    args += ["--zk", z.connect_string, "--zk-root", z.root, "--session-timeout", f"{z.session_timeout:g}"]
    args += ["--nats", ",".join(n.urls), "--stream-replicas", str(n.stream_replicas)]
    args += ["--stream-prefix", n.stream_prefix, "--data-dir", str(desc.data_dir / r.service / r.member)]
    if r.advertise:
        args += ["--advertise", r.advertise]
    if r.metrics_listen:
        args += ["--metrics-listen", r.metrics_listen]
    return args


def processes(desc: ClusterDescription) -> list[tuple[Child, set[str]]]:
    """Every supervised process in start order, with the --only names that select it: the matching
    replicas, the accounts replicas shard by shard (or accounts as the launcher runs it), the
    launcher's others."""
    out: list[tuple[Child, set[str]]] = []
    for r in (*desc.replicas, *desc.accounts):
        args = replica_argv(desc, desc.exchange_config_path, r)
        child = Child(r.name, f"services.{r.kind}", args, r.address)
        child.log_path = desc.data_dir / "logs" / f"{r.service}.{r.member}.log"
        out.append((child, {r.kind, r.service, r.name}))
    replaced = {"services.matching", "services.accounts"} if desc.accounts else {"services.matching"}
    for child in plan(exchange_config(desc)):
        if child.module not in replaced:
            out.append((child, {child.name, child.module.rsplit(".", 1)[1]}))
    return out


def part_names(desc: ClusterDescription) -> set[str]:
    return set(SERVERS).union(*(names for _, names in processes(desc)))


def ensure_database(url: str) -> bool:
    """CREATE DATABASE for a PostgreSQL URL when it does not exist; True when it created it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.get_backend_name().startswith("postgresql") or not u.database:
        return False
    admin = create_engine(
        u.set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": u.database})
            if found.first() is not None:
                return False
            quoted = u.database.replace('"', '""')
            conn.execute(text(f'CREATE DATABASE "{quoted}"'))
            return True
    finally:
        admin.dispose()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie (exited, not yet reaped) is gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def read_state(desc: ClusterDescription) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((desc.data_dir / STATE_FILE).read_text())
        if isinstance(data, dict):
            return data
    return {}


def _write_state(desc: ClusterDescription, state: dict[str, Any]) -> None:
    path = desc.data_dir / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def start(
    desc: ClusterDescription,
    *,
    only: set[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop_requested: Callable[[], int] = lambda: 0,
) -> int:
    """Start the cluster (or the `only` parts) and supervise it until stop_requested() is non-zero
    (2 or more: kill what is slow to stop). 0 after a requested stop, 1 when a service kept crashing."""
    out = out or sys.stdout

    def say(text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(text, file=out, flush=True)

    def wanted(*names: str) -> bool:
        return only is None or any(n in only for n in names)

    left = read_state(desc)
    pid = int(left.get("pid", 0))
    if _alive(pid) and pid != os.getpid():
        raise DescriptionError(f"a cluster of {desc.path} is already running here (pid {pid}): stop it first")
    if left:  # a start that was killed: stop what it left running before starting again
        stop(desc, out=out)
    desc.data_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"pid": os.getpid(), "servers": [], "children": {}}
    _write_state(desc, state)
    say(f"cluster starting (description {display_path(desc.path)}, data {display_path(desc.data_dir)})")
    servers: list[ZooKeeper | NatsCluster] = []
    sup: Supervisor | None = None
    code = 0
    try:
        z, n = desc.zookeeper, desc.nats
        if z.start and wanted("zookeeper"):
            port = int(z.hosts[0].rpartition(":")[2])
            zk = ZooKeeper(desc.data_dir / "zookeeper", len(z.hosts), port, z.peer_port, z.election_port)
            servers.append(zk)
            state["servers"].append(str(zk.base))
            _write_state(desc, state)
            zk.start()
            say(f"  {'zookeeper':<12} {zk.hosts}  ({len(zk.members)} nodes)")
        if n.start and wanted("nats"):
            port = int(n.urls[0].rpartition(":")[2])
            nats = NatsCluster(desc.data_dir / "nats", len(n.urls), port, n.cluster_port)
            servers.append(nats)
            state["servers"].append(str(nats.base))
            _write_state(desc, state)
            nats.start()
            say(f"  {'nats':<12} {','.join(nats.urls)}  (JetStream, R{n.stream_replicas} streams)")
        children = [child for child, names in processes(desc) if wanted(*names)]
        has_history = any(c.module == "services.history" for c in children)
        if has_history and desc.create_database and ensure_database(desc.database_url):
            say(f"  created the history database of {desc.database_url}")
        config_path = write_exchange_config(desc)
        say(f"  {'config':<12} {display_path(config_path)}")
        configure_security(exchange_config(desc))  # generates the credentials before the children race
        sup = Supervisor(children, out=out, err=err)
        announced = False
        while not stop_requested():
            if not sup.step(time.monotonic()):
                code = 1
                break
            pids = {c.name: c.process.pid for c in children if c.process is not None}
            if pids != state["children"]:
                state["children"] = pids
                _write_state(desc, state)
            if sup.ready_announced and not announced:
                announced = True
                say("cluster ready; `deploy/cluster status` shows leaders and lag; Ctrl-C stops it")
            time.sleep(0.1)
    finally:
        say("stopping...")
        if sup is not None:
            sup.stop(force=lambda: stop_requested() > 1)
        for server in reversed(servers):
            server.stop()
        with contextlib.suppress(OSError):
            (desc.data_dir / STATE_FILE).unlink()
        say("stopped")
    return code


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def stop(desc: ClusterDescription, *, timeout: float = 90.0, out: TextIO | None = None) -> int:
    """Stop what `start` started: SIGTERM it and wait; when it is gone (or does not stop), stop what
    it left running: its children, then the servers by their pid files."""
    out = out or sys.stdout
    state = read_state(desc)
    if not state:
        print(f"no cluster of {desc.path} runs here (no {desc.data_dir / STATE_FILE})", file=out)
        return 0
    pid = int(state.get("pid", 0))
    if _alive(pid):
        _terminate(pid, timeout)
        print(f"stopped pid {pid}", file=out)
    for name, child in reversed(list(dict(state.get("children", {})).items())):
        if _alive(int(child)):
            _terminate(int(child), 30.0)
            print(f"stopped {name} (pid {child}), which pid {pid} left", file=out)
    for base in reversed(list(state.get("servers", []))):
        for d in sorted(Path(base).glob("*-*")):
            if (d / "pid").exists():
                Node(d.name, 0, d, []).stop()
                print(f"stopped {d.name}, which pid {pid} left", file=out)
    with contextlib.suppress(OSError):
        (desc.data_dir / STATE_FILE).unlink()
    return 0


# --- status -----------------------------------------------------------------------------------------


def _zk_mode(address: str, timeout: float = 1.0) -> str:
    """The server's mode (leader, follower, standalone) from its `srvr` four-letter word, or "down"."""
    host, _, port = address.rpartition(":")
    chunks = []
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(b"srvr")
            while b := s.recv(4096):
                chunks.append(b)
    except OSError:
        return "down"
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return "not serving"


def _tcp_up(url: str, timeout: float = 1.0) -> bool:
    host, _, port = url.split("://", 1)[-1].rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=timeout):
        return True
    return False


def groups(desc: ClusterDescription) -> list[tuple[str, str, str, tuple[ReplicaSpec, ...]]]:
    """The replicated services: (kind, name = its stream's service, ZooKeeper election name,
    replicas): every matching shard, then every accounts shard with replicas (by index)."""
    out = [("matching", s.name, s.name, s.replicas) for s in desc.shards]
    for i, (source, replicas) in enumerate(desc.accounts_groups()):
        out.append(("accounts", source, accounts_name(i), replicas))
    return out


def zookeeper_view(desc: ClusterDescription, elections: list[str], timeout: float) -> dict[str, Any]:
    """From ZooKeeper: per election its leader ({member, address} or None) and contenders, and the pair
    map's entries (services.cluster.pairmap: {market: {shard, moving_to, epoch}}); or "error"."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError
    from kazoo.recipe.election import Election

    from services.cluster.election import current_leader, shard_path
    from services.cluster.pairmap import PairEntry, pairs_path

    root = desc.zookeeper.root
    zk = KazooClient(hosts=desc.zookeeper.connect_string, timeout=timeout)
    try:
        zk.start(timeout=timeout)
        view: dict[str, Any] = {}
        for name in elections:
            leader = current_leader(zk, name, root)
            try:
                contenders = [str(m) for m in Election(zk, f"{shard_path(root, name)}/election").contenders()]
            except NoNodeError:
                contenders = []
            view[name] = {
                "leader": None if leader is None else {"member": leader.member, "address": leader.address},
                "contenders": contenders,
            }
        pairs: dict[str, Any] = {}
        with contextlib.suppress(NoNodeError):  # no pair was ever moved or added
            for market in sorted(zk.get_children(pairs_path(root))):
                with contextlib.suppress(NoNodeError):
                    data, _ = zk.get(f"{pairs_path(root)}/{market}")
                    pairs[market] = asdict(PairEntry.decode(data))
        return {"elections": view, "pairs": pairs, "error": ""}
    except Exception as exc:
        where = desc.zookeeper.connect_string
        return {"elections": {}, "pairs": {}, "error": f"ZooKeeper {where}: {exc or type(exc).__name__}"}
    finally:
        with contextlib.suppress(Exception):
            zk.stop()
            zk.close()


async def stream_view(desc: ClusterDescription, services: list[str], timeout: float) -> dict[str, Any]:
    """Per service its command stream: name, last record sequence, replicas, leader, peers; or "error"."""
    import nats
    import nats.js.errors

    from services.common.journal.jetstream import decode_message, stream_name, subject_name

    prefix = desc.nats.stream_prefix
    try:
        nc = await nats.connect(
            servers=list(desc.nats.urls),
            connect_timeout=timeout,
            max_reconnect_attempts=1,
            allow_reconnect=False,
        )
    except Exception as exc:
        return {"streams": {}, "error": f"NATS {','.join(desc.nats.urls)}: {exc or type(exc).__name__}"}
    streams: dict[str, Any] = {}
    try:
        js = nc.jetstream(timeout=timeout)
        for service in services:
            name = stream_name(prefix, service, "commands")
            entry: dict[str, Any] = {"stream": name}
            try:
                info = await js.stream_info(name)
                last = 0
                if info.state.messages:  # a message holds a batch of records: the last one's number
                    msg = await js.get_msg(name, subject=subject_name(prefix, service, "commands"))
                    first, records = decode_message(msg.data or b"")
                    last = first + len(records) - 1
                entry.update(last_sequence=last, replicas=info.config.num_replicas)
                if info.cluster is not None:
                    entry["leader"] = info.cluster.leader or ""
                    entry["peers"] = [
                        {"name": p.name, "current": bool(p.current), "lag": int(p.lag or 0)}
                        for p in info.cluster.replicas or []
                    ]
            except nats.js.errors.NotFoundError:
                entry["error"] = "no stream yet (no replica has started)"
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
            streams[service] = entry
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return {"streams": streams, "error": ""}


async def _health(name: str, address: str, timeout: float) -> str:
    from grpc_health.v1 import health_pb2

    from services.clients import NO_RETRY
    from services.clients.base import ServiceClient
    from services.clients.errors import ClientError

    try:
        async with ServiceClient.at(address, token="", name=name, timeout=timeout, retry=NO_RETRY) as c:
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(await c.health(timeout=timeout)))
    except ClientError as exc:
        return f"down ({exc.code.name})" if exc.code is not None else "down"
    except Exception as exc:
        return f"down ({type(exc).__name__})"


async def _status_of(kind: str, name: str, address: str, security: Any, timeout: float) -> dict[str, Any]:
    """Health, and GetMatchingStatus / GetAccountsStatus of a matching or accounts process."""
    from services.clients import NO_RETRY, AccountsClient, MatchingClient
    from services.clients.errors import ClientError
    from services.clients.roles import role_name

    out: dict[str, Any] = {"health": await _health(name, address, timeout)}
    if security is None:
        out["error"] = "no credentials (has the cluster been started?)"
        return out
    try:
        if kind == "accounts":
            async with AccountsClient.at(address, security=security, timeout=timeout, retry=NO_RETRY) as a:
                ast = await a.get_accounts_status()
            out.update(applied_sequence=ast.applied_sequence, event_sequence=ast.event_sequence)
            out["reported_role"] = role_name(ast.role)
            out.update(market_routes=dict(ast.market_routes), halted_markets=sorted(ast.halted_markets))
        else:
            async with MatchingClient.at(address, security=security, timeout=timeout, retry=NO_RETRY) as m:
                mst = await m.get_matching_status()
            out.update(applied_sequence=mst.applied_sequence, event_sequence=mst.event_sequence)
            out["reported_role"] = role_name(mst.role)
            out["markets"] = sorted({x.market for x in mst.markets} - set(mst.moved_out))
    except ClientError as exc:
        out["error"] = str(exc)
    return out


def _group_status(
    name: str,
    election: dict[str, Any],
    stream: dict[str, Any],
    replicas: list[tuple[ReplicaSpec, dict[str, Any]]],
) -> dict[str, Any]:
    leader = election["leader"]
    last = stream.get("last_sequence")
    rows = []
    for r, rs in replicas:
        if leader is not None and leader["member"] == r.member:
            role = "leader"
        elif r.member in election["contenders"]:
            role = "follower"
        else:
            role = "not contending"
        applied = rs.get("applied_sequence")
        lag = last - applied if isinstance(last, int) and isinstance(applied, int) else None
        rows.append({"member": r.member, "address": r.address, "role": role, "lag": lag, **rs})
    return {
        "name": name,
        "leader": leader,
        "followers": [x["member"] for x in rows if x["role"] == "follower"],
        "stream": stream,
        "replicas": rows,
    }


async def gather_status(desc: ClusterDescription, *, timeout: float = 2.0) -> dict[str, Any]:
    """Everything `status` shows, as a JSON-ready dict."""
    from services.common import rpc
    from services.common.security import process_security

    config = exchange_config(desc)
    security = None
    credentials_error = ""
    try:
        security = process_security(config, "admin", create=False)
        rpc.configure(security)
    except (OSError, ValueError, KeyError) as exc:
        credentials_error = f"no credentials at {config.credentials_path()}: {exc}"
    replicated = groups(desc)
    elections = [e for _, _, e, _ in replicated]
    zk_task = asyncio.create_task(asyncio.to_thread(zookeeper_view, desc, elections, max(timeout, 3.0)))
    streams = await stream_view(desc, [g for _, g, _, _ in replicated], timeout)
    everyone = [r for _, _, _, rs in replicated for r in rs]
    per_replica = await asyncio.gather(
        *(_status_of(r.kind, r.name, r.address, security, timeout) for r in everyone)
    )
    by_replica = dict(zip([r.name for r in everyone], per_replica, strict=True))
    replaced = {"services.matching", "services.accounts"} if desc.accounts else {"services.matching"}
    others = [c for c in plan(config) if c.module not in replaced]
    healths = await asyncio.gather(
        *(
            _status_of("accounts", c.name, c.address, security, timeout)
            if c.module == "services.accounts"
            else _health(c.name, c.address, timeout)
            for c in others
        )
    )
    zk = await zk_task
    zk_modes = await asyncio.gather(*(asyncio.to_thread(_zk_mode, h) for h in desc.zookeeper.hosts))
    nats_up = await asyncio.gather(*(asyncio.to_thread(_tcp_up, u) for u in desc.nats.urls))
    views = {
        name: _group_status(
            name,
            zk["elections"].get(election, {"leader": None, "contenders": []}),
            streams["streams"].get(name, {}),
            [(r, by_replica[r.name]) for r in replicas],
        )
        for _, name, election, replicas in replicated
    }
    services = [
        {"name": c.name, "address": c.address, **(h if isinstance(h, dict) else {"health": h})}
        for c, h in zip(others, healths, strict=True)
    ]
    # The pair map: the description's, with the entries of the pair map in ZooKeeper over it (pairs
    # moved or added by services.cluster.operator); the pairs moving, and those accounts halted (by
    # any accounts shard: each accounts shard's leader, or each accounts process).
    accounts = [views[name] for kind, name, _, _ in replicated if kind == "accounts"]
    leaders = [r for g in accounts for r in g["replicas"] if r["role"] == "leader"]
    plain = [x for x, c in zip(services, others, strict=True) if c.module == "services.accounts"]
    routing: list[dict[str, Any]] = leaders if accounts else plain
    halted = sorted({m for r in routing for m in r.get("halted_markets", [])})
    pair_map = {**desc.pair_map(), **{p: e["shard"] for p, e in zk["pairs"].items()}}
    moving = {p: e["moving_to"] for p, e in zk["pairs"].items() if e["moving_to"]}
    shards = []
    for s in desc.shards:
        view = views[s.name]
        served = next((x.get("markets") for x in view["replicas"] if x["role"] == "leader"), None)
        pairs = sorted(p for p, owner in pair_map.items() if owner == s.name)
        shards.append({**view, "pairs": pairs, "served_pairs": served, "pairs_match": served == pairs})
    groups_healthy = all(
        g["leader"] is not None and all(r["health"] == "SERVING" and "error" not in r for r in g["replicas"])
        for g in [*shards, *accounts]
    )
    healthy = (
        not zk["error"]
        and not streams["error"]
        and groups_healthy
        and all(sh["pairs_match"] for sh in shards)
        and all(x["health"] == "SERVING" for x in services)
    )
    pid = int(read_state(desc).get("pid", 0))
    return {
        "description": str(desc.path),
        "exchange_config": str(desc.exchange_config_path),
        "running": pid if _alive(pid) else 0,
        "zookeeper": {
            "members": [
                {"address": h, "mode": m} for h, m in zip(desc.zookeeper.hosts, zk_modes, strict=True)
            ],
            "error": zk["error"],
        },
        "nats": {
            "members": [{"url": u, "up": up} for u, up in zip(desc.nats.urls, nats_up, strict=True)],
            "stream_replicas": desc.nats.stream_replicas,
            "error": streams["error"],
        },
        "credentials_error": credentials_error,
        "shards": shards,
        "accounts": accounts,
        "pair_map": pair_map,
        "moving_pairs": moving,
        "halted_pairs": halted,
        "services": services,
        "healthy": healthy,
    }


def _format_group(kind: str, g: dict[str, Any]) -> list[str]:
    leader = g["leader"]
    who = f"{leader['member']} at {leader['address']}" if leader else "NONE"
    lines = ["", f"{kind} {g['name']}  leader {who}  followers {', '.join(g['followers']) or '-'}"]
    stream = g["stream"]
    if "error" in stream:
        lines.append(f"  stream {stream.get('stream', '?')}: {stream['error']}")
    elif stream:
        where = f"R{stream['replicas']}"
        if stream.get("leader"):
            where += f", stream leader {stream['leader']}"
        for p in stream.get("peers", []):
            where += f", {p['name']} {'current' if p['current'] else 'behind'}"
        lines.append(f"  stream {stream['stream']}: last sequence {stream['last_sequence']} ({where})")
    for r in g["replicas"]:
        if "applied_sequence" in r:
            seq = f"applied {r['applied_sequence']:<8} lag {'?' if r['lag'] is None else r['lag']}"
        else:
            seq = f"({r.get('error', 'no status')})"
        says = r.get("reported_role")
        if says and says != r["role"]:  # ZooKeeper names one role, the process reports another
            seq += f"  ! the process says {says}"
        lines.append(f"  {r['role']:<14} {r['member']:<6} {r['address']:<22} {r['health']:<12} {seq}")
    if g.get("pairs_match") is False:
        served = ", ".join(g["served_pairs"] or ["?"])
        lines.append(f"  ! the leader serves {served}; the pair map says {', '.join(g['pairs'])}")
    return lines


def format_status(st: dict[str, Any]) -> str:
    running = f"supervised by pid {st['running']}" if st["running"] else "no `start` of it runs here"
    lines = [f"cluster {st['description']} ({running})"]
    z, n = st["zookeeper"], st["nats"]
    members = ", ".join(f"{m['address']} {m['mode']}" for m in z["members"])
    lines.append(f"zookeeper  {members}" + (f"  ERROR {z['error']}" if z["error"] else ""))
    down = [m["url"] for m in n["members"] if not m["up"]]
    nats_line = f"nats       {len(n['members']) - len(down)}/{len(n['members'])} up"
    nats_line += (f" (down: {', '.join(down)})" if down else "") + f", streams R{n['stream_replicas']}"
    lines.append(nats_line + (f"  ERROR {n['error']}" if n["error"] else ""))
    if st["credentials_error"]:
        lines.append(f"credentials: {st['credentials_error']}")
    for sh in st["shards"]:
        lines += _format_group("shard", sh)
    for g in st["accounts"]:
        lines += _format_group("accounts", g)
    lines += ["", "pair map"]
    for pair, shard in st["pair_map"].items():
        to = st["moving_pairs"].get(pair)
        moving = f"  moving to {to}" if to else ""
        lines.append(f"  {pair:<12} {shard}{moving}{'  (halted)' if pair in st['halted_pairs'] else ''}")
    lines += ["", "services"] + [
        f"  {s['name']:<14} {s['address']:<22} {s['health']}" for s in st["services"]
    ]
    lines += ["", "healthy" if st["healthy"] else "NOT healthy"]
    return "\n".join(lines)


def status(
    desc: ClusterDescription, *, as_json: bool = False, timeout: float = 2.0, out: TextIO | None = None
) -> int:
    st = asyncio.run(gather_status(desc, timeout=timeout))
    print(json.dumps(st, indent=2) if as_json else format_status(st), file=out or sys.stdout, flush=True)
    return 0 if st["healthy"] else 1


# --- command line -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deploy/cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for name, what in (
        ("start", "start the cluster (or --only parts of it) and supervise it until Ctrl-C"),
        ("stop", "stop what start started"),
        ("status", "leaders, followers, journal lag, pair map, health"),
        ("config", "write the generated exchange config and print its path"),
    ):
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument(
            "description", nargs="?", default=str(DEFAULT_DESCRIPTION), help="default deploy/cluster.toml"
        )
        if name == "start":
            p.add_argument(
                "--only", default="", metavar="PARTS", help="comma-separated parts to run (default all)"
            )
        if name == "status":
            p.add_argument("--json", action="store_true", help="one JSON object")
            p.add_argument(
                "--timeout", type=float, default=2.0, metavar="SECONDS", help="per call (%(default)s)"
            )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        desc = load_description(args.description)
        if args.command == "config":
            print(write_exchange_config(desc))
            return 0
        only = {s.strip() for s in getattr(args, "only", "").split(",") if s.strip()} or None
        unknown = (only or set()) - part_names(desc)
        if unknown:
            raise DescriptionError(
                f"--only: no part {', '.join(sorted(unknown))} in {desc.path}; "
                f"parts are {', '.join(sorted(part_names(desc)))}"
            )
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "stop":
        return stop(desc)
    if args.command == "status":
        return status(desc, as_json=args.json, timeout=args.timeout)
    interrupts = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return start(desc, only=only, stop_requested=lambda: interrupts)
    except (ConfigError, OSError, TimeoutError, ServerMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
