"""Leader election per shard and the shard-leader registry, in ZooKeeper (kazoo).

ZooKeeper layout (root `/ostrakon` by default):

    /ostrakon/shards/<shard>/election/   kazoo's Election (Lock recipe) contenders: ephemeral
                                         sequential nodes; the lowest leads
    /ostrakon/shards/<shard>/leader      ephemeral, written by the leader once elected:
                                         {"member": ..., "address": "host:port", "session": ...}

`ShardElection` contends for one shard in a thread of its own: when elected it publishes the leader
node (its advertise address) and calls `on_elected`; it steps down (and calls `on_deposed`) when
the ZooKeeper session is suspended or lost, when `step_down()` is called, or when `on_elected`
returns. The session timeout comes from config (`session_timeout_s`; the issue measured a
handover of 1.9-2.4 s at 2 s). A leader frozen past its session (SIGSTOP) is not told until it runs
again, and even then its lead code may act before the listener runs: it must write only through the
fenced journal (services.common.journal: a deposed writer's append raises FencedError), which is
the fencing this design relies on, not ZooKeeper alone.

`ZooKeeperResolver` (services.clients.zk_resolver) reads the leader nodes for the client library.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.recipe.election import Election

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/ostrakon"


def shard_path(root: str, shard: str) -> str:
    return f"{root.rstrip('/')}/shards/{shard}"


def leader_path(root: str, shard: str) -> str:
    return f"{shard_path(root, shard)}/leader"


@dataclass(frozen=True)
class LeaderInfo:
    member: str
    address: str
    session: int = 0

    def encode(self) -> bytes:
        return json.dumps({"member": self.member, "address": self.address, "session": self.session}).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaderInfo:
        d = json.loads(data)
        return cls(str(d["member"]), str(d["address"]), int(d.get("session", 0)))


def connect(hosts: str, session_timeout_s: float, *, connect_timeout_s: float = 15.0) -> KazooClient:
    """A started KazooClient with the given session timeout (the server clamps it to its
    minSessionTimeout..maxSessionTimeout)."""
    zk = KazooClient(hosts=hosts, timeout=session_timeout_s)
    zk.start(timeout=connect_timeout_s)
    return zk


class ShardElection:
    """Contend for the leadership of `shard` as `member`, advertising `address` when leading."""

    def __init__(
        self,
        hosts: str,
        shard: str,
        member: str,
        address: str,
        *,
        session_timeout_s: float = 2.0,
        root: str = DEFAULT_ROOT,
        on_elected: Callable[[ShardElection], None] | None = None,
        on_deposed: Callable[[ShardElection, str], None] | None = None,
        client: KazooClient | None = None,
        step_down_on_suspend: bool = True,
    ) -> None:
        """`step_down_on_suspend`: give up on a suspended connection (the session may still be
        alive), not only on a lost session. Conservative (no reads served by a leader that may
        be deposed) but a busy process whose pings are late steps down more often; writes are
        safe either way, the journal fences them."""
        self.step_down_on_suspend = step_down_on_suspend
        self.shard = shard
        self.member = member
        self.address = address
        self.root = root
        self.session_timeout_s = session_timeout_s
        self.zk = client or connect(hosts, session_timeout_s)
        self._own_client = client is None
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.leading = threading.Event()  # set while this member leads
        self._step_down = threading.Event()
        self._stopped = threading.Event()
        self._why = ""
        self.terms = 0  # how many times it was elected
        self.zk.add_listener(self._on_state)
        self.zk.ensure_path(f"{shard_path(root, shard)}/election")
        self._election = Election(self.zk, f"{shard_path(root, shard)}/election", member)
        self._thread = threading.Thread(target=self._run, name=f"election-{shard}-{member}", daemon=True)

    def start(self) -> ShardElection:
        self._thread.start()
        return self

    def _on_state(self, state: str) -> None:  # kazoo's thread: keep it short
        give_up = state == KazooState.LOST or (state == KazooState.SUSPENDED and self.step_down_on_suspend)
        if give_up and self.leading.is_set():
            self._why = f"ZooKeeper session {state.lower()}"
            self._step_down.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._election.run(self._lead)
            except Exception as exc:  # session lost while contending: contend again
                log.warning(
                    "election failed, contending again", extra={"shard": self.shard, "error": str(exc)}
                )
            if not self._stopped.wait(0.1):
                continue

    def _lead(self) -> None:
        if self._stopped.is_set():
            return
        self._step_down.clear()
        self._why = ""
        info = LeaderInfo(self.member, self.address, self.zk.client_id[0] if self.zk.client_id else 0)
        path = leader_path(self.root, self.shard)
        try:  # a leader node of an expired session may still be there: we hold the lock
            self.zk.create(path, info.encode(), ephemeral=True, makepath=True)
        except NodeExistsError:
            self.zk.delete(path)
            self.zk.create(path, info.encode(), ephemeral=True, makepath=True)
        self.terms += 1
        self.leading.set()
        log.info("elected", extra={"shard": self.shard, "member": self.member})
        worker: threading.Thread | None = None
        if self.on_elected is not None:
            worker = threading.Thread(target=self._call_elected, daemon=True, name=f"lead-{self.shard}")
            worker.start()
        self._step_down.wait()
        self.leading.clear()
        why = self._why or "stepped down"
        try:
            data, _ = self.zk.get(path)
            if LeaderInfo.decode(data).member == self.member:
                self.zk.delete(path)
        except Exception:  # the session is gone: ZooKeeper removed it
            pass
        if self.on_deposed is not None:
            self.on_deposed(self, why)
        log.info("stepped down", extra={"shard": self.shard, "member": self.member, "why": why})

    def _call_elected(self) -> None:
        assert self.on_elected is not None
        try:
            self.on_elected(self)
        finally:
            if not self._why:
                self._why = "the leader function returned"
            self._step_down.set()

    def step_down(self, why: str = "asked to step down") -> None:
        """Give up the leadership now (and contend again unless stopped)."""
        if not self._why:
            self._why = why
        self._step_down.set()

    def stop(self) -> None:
        self._stopped.set()
        self._election.cancel()
        self.step_down("stopped")
        self._thread.join(10)
        if self._own_client:
            self.zk.stop()
            self.zk.close()


def current_leader(zk: KazooClient, shard: str, root: str = DEFAULT_ROOT) -> LeaderInfo | None:
    try:
        data, _ = zk.get(leader_path(root, shard))
    except NoNodeError:
        return None
    return LeaderInfo.decode(data)
