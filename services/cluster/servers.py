"""Local NATS JetStream clusters and ZooKeeper servers/ensembles, as processes on loopback.

Used by tests (tests/cluster_fixtures.py), benches and deploy/ through the scripts
`scripts/nats-cluster` and `scripts/zookeeper`, which call this module:

    python -m services.cluster.servers nats start DIR [--nodes 3] [--port 4301] [--cluster-port 6301]
    python -m services.cluster.servers zookeeper start DIR [--nodes 3] [--port 2191]
    python -m services.cluster.servers {nats,zookeeper} stop DIR

Each node gets its own folder under DIR (config, store or data dir, log, pid file). The servers are
Debian's packages: `nats-server` (2.9 on Debian 12) and `zookeeper` (3.8, run with
`java -cp <conf>:zookeeper.jar:slf4j-log4j12.jar:log4j-1.2.jar QuorumPeerMain zoo.cfg`); `ensure_*`
installs a missing one with apt-get (as root), else raises ServerMissing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ZK_JARS = (
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
)


class ServerMissing(RuntimeError):
    """The server is not installed and could not be installed here."""


def _apt_install(package: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerMissing(f"{package} is not installed (install the Debian package {package!r})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True
        )
    if r.returncode != 0:
        raise ServerMissing(f"apt-get install {package} failed: {r.stderr.strip()[-500:]}")


def nats_server_binary(*, install: bool = True) -> str:
    for cand in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if cand and os.access(cand, os.X_OK):
            return cand
    if not install:
        raise ServerMissing("nats-server is not installed")
    _apt_install("nats-server")
    return nats_server_binary(install=False)


def zookeeper_classpath(*, install: bool = True) -> list[str]:
    if all(Path(j).exists() for j in ZK_JARS) and shutil.which("java"):
        return list(ZK_JARS)
    if not install:
        raise ServerMissing("zookeeper (Debian package) is not installed")
    _apt_install("zookeeper")
    return zookeeper_classpath(install=False)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout} s")


@dataclass
class Node:
    name: str
    port: int
    directory: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "out.log", "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self.proc.pid))

    @property
    def pid(self) -> int:
        if self.proc is not None:
            return self.proc.pid
        return int(self.pid_file.read_text())

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            if self.pid_file.exists():
                pid = int(self.pid_file.read_text())
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline:
                        os.kill(pid, 0)
                        time.sleep(0.05)
                    os.kill(pid, signal.SIGKILL)
                self.pid_file.unlink(missing_ok=True)
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """`nodes` nats-server processes with JetStream (one node: no cluster block)."""

    base: Path
    nodes: int = 3
    port: int = 4301
    cluster_port: int = 6301
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        binary = nats_server_binary()
        for i in range(self.nodes):
            d = self.base / f"nats-{i + 1}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "nats.conf"
            lines = [
                f'server_name: "n{i + 1}"',
                f"listen: 127.0.0.1:{self.port + i}",
                f'jetstream {{ store_dir: "{d / "store"}" }}',
            ]
            if self.nodes > 1:
                routes = ", ".join(
                    f"nats-route://127.0.0.1:{self.cluster_port + k}" for k in range(self.nodes) if k != i
                )
                listen = f"127.0.0.1:{self.cluster_port + i}"
                lines.append(f'cluster {{ name: "ostrakon", listen: {listen}, routes: [{routes}] }}')
            conf.write_text("\n".join(lines) + "\n")
            argv = [binary, "-c", str(conf), "-l", str(d / "nats.log")]
            self.members.append(Node(f"n{i + 1}", self.port + i, d, argv))

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.port}" for n in self.members]

    def start(self, timeout: float = 30) -> None:
        for n in self.members:
            if not n.alive:
                n.start()
        for n in self.members:
            _wait(lambda n=n: port_open(n.port), timeout, f"nats-server {n.name}")
        self.wait_jetstream(timeout)

    def wait_jetstream(self, timeout: float = 30) -> None:
        """Until JetStream answers (in a cluster: a meta leader was elected)."""
        import asyncio

        import nats

        async def ready() -> bool:
            try:
                nc = await nats.connect(servers=self.urls, connect_timeout=1, max_reconnect_attempts=1)
            except Exception:
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:
                return False
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()

        _wait(lambda: asyncio.run(ready()), timeout, "JetStream")

    def node_named(self, name: str) -> Node:
        for n in self.members:
            if n.name == name:
                return n
        raise KeyError(name)

    def stop(self) -> None:
        for n in self.members:
            n.stop()


@dataclass
class ZooKeeper:
    """A ZooKeeper server (nodes=1) or ensemble (nodes=3) with its own data dirs under `base`."""

    base: Path
    nodes: int = 1
    port: int = 2191
    peer_port: int = 2888
    election_port: int = 3888
    # The server's tick: it expires sessions in buckets of one tick, so a dead leader's session ends
    # up to a tick after its timeout (which the failover waits for). 200 ms keeps that at a tenth of
    # the 2 s session; initLimit and syncLimit keep 5 s and 2.5 s whatever the tick.
    tick_ms: int = 200
    members: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        classpath = zookeeper_classpath()
        java = shutil.which("java") or "java"
        for i in range(self.nodes):
            d = self.base / f"zk-{i + 1}"
            data = d / "data"
            data.mkdir(parents=True, exist_ok=True)
            (data / "myid").write_text(f"{i + 1}\n")
            conf = d / "conf"
            conf.mkdir(exist_ok=True)
            cfg = [
                f"tickTime={self.tick_ms}",
                f"initLimit={-(-5000 // self.tick_ms)}",
                f"syncLimit={-(-2500 // self.tick_ms)}",
                f"dataDir={data}",
                f"clientPort={self.port + i}",
                "clientPortAddress=127.0.0.1",
                "minSessionTimeout=1000",
                "maxSessionTimeout=60000",
                "admin.enableServer=false",
                "4lw.commands.whitelist=ruok,srvr,stat,mntr",
            ]
            if self.nodes > 1:
                for k in range(self.nodes):
                    cfg.append(f"server.{k + 1}=127.0.0.1:{self.peer_port + k}:{self.election_port + k}")
            (conf / "zoo.cfg").write_text("\n".join(cfg) + "\n")
            (conf / "log4j.properties").write_text(
                "log4j.rootLogger=INFO, FILE\n"
                "log4j.appender.FILE=org.apache.log4j.FileAppender\n"
                f"log4j.appender.FILE.File={d / 'zookeeper.log'}\n"
                "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n"
                "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n\n"
            )
            argv = [
                java,
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-cp",
                ":".join([str(conf), *classpath]),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(conf / "zoo.cfg"),
            ]
            self.members.append(Node(f"zk{i + 1}", self.port + i, d, argv))

    @property
    def hosts(self) -> str:
        """The kazoo connection string."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.members)

    def four_letter(self, port: int, word: str) -> str:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(word.encode())
                chunks = []
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    chunks.append(b)
                return b"".join(chunks).decode(errors="replace")
        except OSError:
            return ""

    def serving(self, node: Node) -> bool:
        return "Mode:" in self.four_letter(node.port, "srvr")

    def start(self, timeout: float = 60) -> None:
        for n in self.members:
            if not n.alive:
                n.start()
        for n in self.members:
            _wait(lambda n=n: self.serving(n), timeout, f"ZooKeeper {n.name}")

    def stop(self) -> None:
        for n in self.members:
            n.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="servers", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("kind", choices=["nats", "zookeeper"])
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("dir", type=Path)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--port", type=int, default=0, help="first client port (nats 4301, zookeeper 2191)")
    p.add_argument("--cluster-port", type=int, default=6301, help="nats: first route port")
    args = p.parse_args(argv)
    base = args.dir.resolve()
    if args.action == "stop":  # every node that has a pid file under DIR
        glob = "nats-*" if args.kind == "nats" else "zk-*"
        for d in sorted(base.glob(glob)):
            if (d / "pid").exists():
                Node(d.name, 0, d, []).stop()
        return 0
    if args.kind == "nats":
        nc = NatsCluster(base, nodes=args.nodes, port=args.port or 4301, cluster_port=args.cluster_port)
        if args.action == "start":
            nc.start()
            print(",".join(nc.urls))
        else:
            nc.stop()
    else:
        zk = ZooKeeper(base, nodes=args.nodes, port=args.port or 2191)
        if args.action == "start":
            zk.start()
            print(zk.hosts)
        else:
            zk.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
