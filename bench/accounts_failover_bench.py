"""Failover of an accounts shard under an order load: two replica processes of accounts-0 (python -m
services.accounts in cluster mode: leader + hot follower, services.accounts.replica) on a JetStream
command journal (R3 by default: a 3-node NATS cluster this bench starts on ports 25401-25403), a
ZooKeeper server (port 25281), 2 s session, and one matching shard (file journals).

    python bench/accounts_failover_bench.py [--out FILE] [--signals kill,stop] [--batch 200]
        [--before 3] [--after 4] [--stream-replicas 3]

For each signal (SIGKILL, SIGSTOP) of the accounts leader: one client places orders (limit GTC,
crossing often, each with a client_order_id) in SubmitOrders batches of --batch orders through the
client library (AccountsClient resolved by the ZooKeeperResolver), each batch acknowledged before the
next; a batch that gets no answer (the leader gone or frozen, an election under way: 1 s deadline, or
at once when the resolver names a new leader) is sent again, whole, with the same client_order_ids
(a repeat answers duplicate). The leader gets the
signal after --before seconds; the load goes on for --after seconds after the new leader's first
acknowledgement. Reported:
- recovery_s: from the signal to the acknowledgement of the first batch the old leader cannot have
  answered (the one after the batch in flight at the signal); leader_ready_s: from the signal to the
  follower's "leading" log line (session expiry + election + promotion);
- orders/s before (the --before window), during (the first second after the signal) and after
  (from 0.5 s after recovery to the end);
- checks, once the new leader settled everything (matching applied all it forwarded, every matching
  event settled): every acknowledged order has its own order id and the ledger numbered exactly those
  (nothing lost, none placed twice), the fills settled once (settled = matching's last event, nothing
  quarantined) and the balance invariant holds (GetAccountsStatus audit); for SIGSTOP the woken old
  leader exited 70, and how it learned (its append fenced by the stream, or deposed by ZooKeeper).
One client, one stream at a time: the rates are one client's sequential batches, not the shard's
maximum. Prints one JSON object; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from exchange.v1 import accounts_service_pb2 as apb  # noqa: E402
from exchange.v1 import types_pb2  # noqa: E402

from bench.matching_failover_bench import (  # noqa: E402
    Replica,
    leader_and_follower,
    rate,
    run_failover_bench,
    wait,
)
from services.clients.accounts import AccountsClient  # noqa: E402
from services.clients.errors import ClientError  # noqa: E402
from services.clients.matching import MatchingClient  # noqa: E402
from services.clients.resolver import StaticResolver  # noqa: E402
from services.clients.zk_resolver import ZooKeeperResolver  # noqa: E402
from services.common.config import load_config  # noqa: E402
from services.common.journal.jetstream import JetStreamJournals  # noqa: E402
from services.common.security import process_security  # noqa: E402
from testkit.cluster import DEFAULT_MARKETS, free_port  # noqa: E402

SOURCE = "accounts-0"
NAME = "accounts"
SESSION_S = 2.0
READY = '"msg":"accounts replica ready"'
USERS = (1, 2, 3, 4)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def order(i: int) -> apb.OrderCommand:
    c = apb.OrderCommand()
    p = c.place_order
    p.user_id = USERS[i % 4]
    p.market = "BTC_USDT"
    p.side = types_pb2.SIDE_SELL if i % 2 == 0 else types_pb2.SIDE_BUY
    p.type = types_pb2.ORDER_TYPE_LIMIT
    p.price = str(30000 + (i % 5) * 10 - (i % 2) * 5)
    p.amount = f"0.00{10 + i % 3}"
    p.client_order_id = f"o{i}"
    return c


async def one_batch(c: AccountsClient, batch_id: int, commands: list[apb.OrderCommand]) -> list[int]:
    """One SubmitOrders stream of one batch; the order ids (a refused order raises)."""
    req = apb.SubmitOrdersRequest(batch_id=batch_id)
    req.commands.extend(commands)

    async def requests() -> Any:
        yield req

    stream = c.submit_orders(requests(), timeout=1.0)
    try:
        async for resp in stream:
            bad = [r for r in resp.results if r.code]
            if bad:
                raise RuntimeError(f"batch {batch_id}: {bad[0].message}")
            return [r.order.order_id for r in resp.results]
    finally:
        await stream.aclose()
    raise ClientError(grpc.StatusCode.UNAVAILABLE, "the stream ended unanswered", service=NAME)


def one_failover(
    base: Path, sig: int, zk_hosts: str, nats: list[str], stream_replicas: int, args: argparse.Namespace
) -> dict[str, Any]:
    tag = f"acctbench{sig}x{int(time.time())}"
    work = base / tag
    work.mkdir(parents=True)
    addresses = {m: f"127.0.0.1:{free_port()}" for m in ("a", "b", "matching")}
    config_path = work / "exchange.toml"
    config_path.write_text(
        "\n".join(
            [
                'data_dir = "data"',
                "[security]",
                'transport = "local"',
                "[accounts]",
                f'listen = "{addresses["a"]}"',
                '[shards."matching-0"]',
                f'listen = "{addresses["matching"]}"',
                "",
                "[assets]" + DEFAULT_MARKETS,
            ]
        )
    )
    config = load_config(config_path)
    admin = process_security(config, "admin")
    matching_argv = [sys.executable, "-m", "services.matching", "--config", str(config_path)]
    matching = Replica("matching", work / "matching", [*matching_argv, "--listen", addresses["matching"]])
    matching.argv = matching_argv  # plain mode (no --listen: the config's address)
    replicas: dict[str, Replica] = {}
    for m in ("a", "b"):
        argv = [sys.executable, "-m", "services.accounts", "--config", str(config_path)]
        argv += ["--zk", zk_hosts, "--nats", ",".join(nats), "--member", m, "--listen", addresses[m]]
        argv += ["--data-dir", str(work / m), "--session-timeout", str(SESSION_S)]
        argv += ["--stream-replicas", str(stream_replicas), "--zk-root", f"/{tag}", "--stream-prefix", tag]
        replicas[m] = Replica(m, work / m, argv)
    resolver = ZooKeeperResolver(
        zk_hosts, root=f"/{tag}", fallback=StaticResolver.from_config(config), session_timeout_s=5
    )
    try:
        matching.start()
        for r in replicas.values():
            r.start()
        wait(lambda: '"msg":"matching shard ready"' in matching.log, 60, "matching")
        for r in replicas.values():
            wait(lambda r=r: READY in r.log, 60, f"replica {r.name}")

        old, new = leader_and_follower(resolver, NAME, replicas)

        async def scenario() -> dict[str, Any]:
            acks: list[tuple[int, float, int]] = []  # (batches acknowledged, ack time, orders)
            order_ids: list[int] = []
            stop = asyncio.Event()
            retried = 0
            moved = asyncio.Event()  # the resolver named another leader (a frozen one holds calls)
            loop = asyncio.get_running_loop()

            def changed(name: str, address: str) -> None:  # a ZooKeeper thread
                if name == NAME and address:
                    loop.call_soon_threadsafe(moved.set)

            unwatch = resolver.watch(changed)

            async def load() -> None:
                nonlocal retried
                async with AccountsClient.resolve(resolver, NAME, security=admin, timeout=5) as c:
                    for user in USERS:
                        for asset, amount in (("BTC", "100000"), ("USDT", "10000000000")):
                            req = apb.DepositRequest(
                                user_id=user, asset=asset, amount=amount, business="bench", business_id=asset
                            )
                            await c.deposit(req)
                    n = 0
                    while not stop.is_set():
                        commands = [order(i) for i in range(n * args.batch, (n + 1) * args.batch)]
                        give_up = time.monotonic() + 30
                        while True:
                            moved.clear()
                            attempt = asyncio.ensure_future(one_batch(c, n + 1, commands))
                            mover = asyncio.ensure_future(moved.wait())
                            await asyncio.wait({attempt, mover}, return_when=asyncio.FIRST_COMPLETED)
                            mover.cancel()
                            if not attempt.done():  # the resolver named a new leader: go there now
                                attempt.cancel()
                                await asyncio.gather(attempt, return_exceptions=True)
                                retried += 1
                                continue
                            try:
                                ids = attempt.result()
                                break
                            except ClientError as err:
                                again = err.code in RETRYABLE or err.reason == "NOT_LEADER"
                                if not again or time.monotonic() > give_up:
                                    raise
                                retried += 1
                                await asyncio.sleep(0.02)
                        n += 1
                        order_ids.extend(ids)
                        acks.append((n, time.monotonic(), args.batch))

            task = asyncio.create_task(load())
            while not acks:
                if task.done():
                    await task
                await asyncio.sleep(0.01)
            t_start = acks[0][1]
            await asyncio.sleep(args.before)
            before = acks[-1][0]
            t_signal, t_signal_wall = time.monotonic(), time.time()
            old.proc.send_signal(sig)  # type: ignore[union-attr]
            while not any(s > before + 1 for s, _, _ in acks):
                if task.done():
                    await task
                await asyncio.sleep(0.01)
            t_recovered = next(at for s, at, _ in acks if s > before + 1)
            await asyncio.sleep(args.after)
            stop.set()
            await task
            unwatch()
            t_end = acks[-1][1]
            checks = await settled_checks(resolver, admin, addresses["matching"], order_ids)
            woken: dict[str, Any] = {}
            if sig == signal.SIGSTOP:
                old.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                code = await asyncio.to_thread(old.proc.wait, 30)  # type: ignore[union-attr]
                woken = {
                    "exit_code": code,
                    "fenced": "FencedError" in old.log,
                    "deposed": "deposed as leader" in old.log,
                }
            return {
                "signal": signal.Signals(sig).name,
                "batch": args.batch,
                "recovery_s": round(t_recovered - t_signal, 3),
                # From the signal to the follower's "leading" line (elected and promoted).
                "leader_ready_s": round(leading_at(new.log) - t_signal_wall, 3),
                "orders_per_s": {
                    "before": rate(acks, t_start, t_signal),
                    "during_first_second": rate(acks, t_signal, t_signal + 1.0),
                    "after": rate(acks, t_recovered + 0.5, t_end),
                },
                "acknowledged_orders": len(order_ids),
                "batches_sent_again": retried,
                "new_leader_is_the_follower": '"msg":"leading"' in new.log,
                **checks,
                **({"woken_old_leader": woken} if woken else {}),
            }

        return asyncio.run(scenario())
    finally:
        resolver.close()
        for r in (*replicas.values(), matching):
            r.stop()
        cleanup = JetStreamJournals(nats, service=SOURCE, prefix=tag)
        cleanup.delete_streams()
        cleanup.close()


def leading_at(log: str) -> float:
    """The wall-clock time of the last "leading" line of a replica's log."""
    line = [x for x in log.splitlines() if '"msg":"leading"' in x][-1]
    ts = json.loads(line)["ts"]
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def settled_checks(
    resolver: ZooKeeperResolver, admin: Any, matching_address: str, order_ids: list[int]
) -> dict[str, Any]:
    """Once the new leader settled everything: the checks the module docstring lists."""
    async with (
        AccountsClient.resolve(resolver, NAME, security=admin) as c,
        MatchingClient.at(matching_address, security=admin) as m,
    ):
        deadline = time.monotonic() + 60
        while True:
            st = await c.get_accounts_status()
            ms = await m.get_matching_status()
            if (
                st.queue_depth == 0
                and st.settled_sequences.get("matching-0", 0) == ms.event_sequence
                and not any(st.outbox_pending.values())
                and ms.source_sequences.get(SOURCE, 0) == st.forwarded_sequences.get("matching-0", 0)
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the new leader did not settle")
            await asyncio.sleep(0.1)
        st = await c.get_accounts_status(apb.GetAccountsStatusRequest(with_audit=True))
    balanced = bool(st.audit) and all(a.total == a.external and a.frozen == a.held for a in st.audit)
    return {
        "nothing_lost_nothing_twice": len(set(order_ids)) == len(order_ids) == st.last_order_id,
        "settled_once": st.settled_sequences["matching-0"] == ms.event_sequence and not st.quarantined_events,
        "balance_invariant": balanced,
        "matching_events": ms.event_sequence,
    }


def main() -> None:
    run_failover_bench(
        "accounts_failover", __doc__, one_failover, batched="orders", zk_port=25281, nats_port=25401
    )


if __name__ == "__main__":
    main()
