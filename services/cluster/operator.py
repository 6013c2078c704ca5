"""Operator commands of a cluster: move a market (pair) between matching shards while orders keep
flowing, register a new matching shard, show the pair map.

    exchange cluster move-pair BTC_USDT --to matching-1 [--zk HOSTS] [--zk-root /ostrakon]
    exchange cluster add-shard matching-2 [--zk HOSTS]
    exchange cluster add-market SOL_BTC [--zk HOSTS]
    exchange cluster pairs [--zk HOSTS]

`move_pair` runs the protocol of services.matching.handover; each step is idempotent, so a move that
was interrupted (the operator's process died, a call timed out) is finished by running it again:

1. the pair map marks the market moving (ZooKeeper, else `<data_dir>/pairs.json`);
2. every accounts shard journals the halt (RouteMarket halted): from then on it refuses the market's
   orders, cancels and amends with UNAVAILABLE, MARKET_MOVING (clients retry after RetryInfo's delay)
   and forwards the halt in its command chain to the old shard;
3. once the old shard has applied every accounts shard's halt (GetMatchingStatus halted_by), it
   journals the export (ExportMarket) and answers the book;
4. the new shard journals the import of that book (ImportMarket);
5. the pair map names the new shard;
6. once every accounts shard has settled the old shard's events up to the export, every accounts shard
   journals the switch (RouteMarket to the new shard; it checks that settlement itself too), and the
   market's orders flow again, now to the new shard. (The barrier: an accounts shard must not settle a
   fill on the new shard, caused by another accounts shard's order, before an older fill of the same
   resting order on the old shard.)

Nothing acknowledged is lost: an order accepted before the halt is in the old shard's chain before the
halt and so in the exported book (or filled, or done, before it); an order sent during the move is
refused retryably and changes nothing; after the switch orders go to the new shard.

A new shard is a matching process like any other (`python -m services.matching --shard matching-2`,
its `[shards.matching-2]` table in the configuration); `add-shard` registers it in the pair map's
shard list (ZooKeeper: `/ostrakon/shards/<shard>`, where its leader then publishes its address).
Accounts links to every shard of its configuration, and to a shard a market moves to (or is added
on) that its configuration did not have when it started: it reads the file again for its address.

`add-market` adds a market without a restart (viabtc needed one): the operator adds its [[markets]]
table (between configured assets, `shard = ...` naming its matching shard) to the configuration file;
the shard journals an empty book with the spec (OpenMarket), then every accounts shard journals the
market with its spec (AddMarket) and takes orders for it. Both keep the spec in their state, so a
restart needs no configuration change (and one that has the table takes it as it is).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from exchange.v1 import accounts_service_pb2 as apb
from exchange.v1 import matching_service_pb2 as mpb

from services.accounts.views import market_spec_message
from services.clients import AccountsClient, Clients, MatchingClient
from services.cluster.pairmap import FilePairMap, PairMap, ZooKeeperPairMap
from services.common.config import ExchangeConfig
from services.matching.handover import PART_ORDERS, book_parts

MOVE_STEP_TIMEOUT_S = 30.0
POLL_S = 0.02


class MoveError(RuntimeError):
    pass


@dataclass
class MoveReport:
    market: str
    from_shard: str
    to_shard: str
    export_sequence: int = 0
    orders: int = 0
    parts: int = 0
    # Seconds from the first halt to the last switch (the market refused orders meanwhile), and in all.
    halted_s: float = 0.0
    total_s: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    already: bool = False


class Operator:
    def __init__(
        self,
        clients: Clients,
        config: ExchangeConfig,
        pairs: PairMap | None = None,
        *,
        step_timeout_s: float = MOVE_STEP_TIMEOUT_S,
        part_orders: int = PART_ORDERS,
    ) -> None:
        self.clients = clients
        self.config = config
        self.pairs = pairs
        self.step_timeout_s = step_timeout_s
        self.part_orders = part_orders
        self.sources = config.accounts_sources()

    @property
    def accounts(self) -> AccountsClient:
        return self.clients.accounts

    def matching(self, shard: str) -> MatchingClient:
        return self.clients.matching(shard)

    async def routes(self) -> list[tuple[str, dict[str, str], set[str]]]:
        """Each accounts shard's (source, market routes, halted markets)."""
        out = []
        for i, _ in enumerate(self.sources):
            st = await self.accounts.get_accounts_status(shard=i, timeout=self.step_timeout_s)
            out.append((st.source, dict(st.market_routes), set(st.halted_markets)))
        return out

    def _configured(self, market: str) -> str:
        spec = self.config.catalog.markets.get(market)
        if spec is None:
            raise MoveError(f"unknown market {market!r}")
        return spec.shard

    async def move_pair(self, market: str, to_shard: str) -> MoveReport:
        started = time.monotonic()
        configured = self._configured(market)
        if to_shard not in self.config.shards:
            raise MoveError(f"no matching shard {to_shard!r} in the configuration")
        steps: dict[str, float] = {}

        def step(name: str, since: float) -> float:
            now = time.monotonic()
            steps[name] = round(now - since, 4)
            return now

        routes = await self.routes()
        owners = {r.get(market, configured) for _, r, _ in routes}
        halted_any = any(market in h for _, _, h in routes)
        if owners == {to_shard} and not halted_any:
            return MoveReport(market, to_shard, to_shard, already=True, total_s=time.monotonic() - started)
        others = owners - {to_shard}
        if len(others) != 1:
            raise MoveError(f"accounts shards disagree on where {market} is: {sorted(owners)}")
        from_shard = others.pop()
        source_client, target_client = self.matching(from_shard), self.matching(to_shard)
        await target_client.get_matching_status(timeout=self.step_timeout_s)  # reachable, before halting
        t = time.monotonic()
        if self.pairs is not None:
            await asyncio.to_thread(self.pairs.put, market, from_shard, to_shard)
        t = step("pair_map_moving", t)
        halted_at = time.monotonic()
        # 2. Halt on every accounts shard that still routes to the old shard.
        await asyncio.gather(
            *(
                self.accounts.route_market(
                    apb.RouteMarketRequest(market=market, shard=from_shard, halted=True),
                    shard=i,
                    timeout=self.step_timeout_s,
                )
                for i, (_, r, _) in enumerate(routes)
                if r.get(market, configured) == from_shard
            )
        )
        t = step("accounts_halted", t)
        # 3. Wait for the old shard to apply every halt, then export.
        book = await self._export(source_client, market, to_shard)
        t = step("exported", t)
        # 4. Import on the new shard.
        parts = book_parts(book, self.part_orders)
        for i, part in enumerate(parts):  # a large book in parts, one journal record each
            imported = await target_client.import_market(
                mpb.ImportMarketRequest(book=part, part=i, parts=len(parts)), timeout=self.step_timeout_s
            )
        if not imported.complete:
            raise MoveError(f"{to_shard} did not complete the import of {market}")
        t = step("imported", t)
        # 5. The pair map names the new shard.
        if self.pairs is not None:
            await asyncio.to_thread(self.pairs.put, market, to_shard)
        t = step("pair_map_switched", t)
        # 6. Once every accounts shard settled the old shard up to the export (so that none settles a
        # fill on the new shard, caused by another accounts shard's order, before an older fill of the
        # same order on the old one), switch each (which checks it once more itself).
        await self._settled(from_shard, book.export_sequence)
        t = step("old_shard_settled", t)
        await asyncio.gather(
            *(
                self.accounts.route_market(
                    apb.RouteMarketRequest(
                        market=market,
                        shard=to_shard,
                        from_shard=from_shard,
                        after_sequence=book.export_sequence,
                    ),
                    shard=i,
                    timeout=self.step_timeout_s,
                )
                for i in range(len(self.sources))
            )
        )
        step("accounts_switched", t)
        end = time.monotonic()
        return MoveReport(
            market,
            from_shard,
            to_shard,
            export_sequence=book.export_sequence,
            orders=imported.order_count,
            parts=len(parts),
            halted_s=round(end - halted_at, 4),
            total_s=round(end - started, 4),
            steps=steps,
        )

    async def _export(self, shard: MatchingClient, market: str, to_shard: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.step_timeout_s
        want = set(self.sources)
        while True:
            st = await shard.get_matching_status(timeout=self.step_timeout_s)
            if st.moved_out.get(market) == to_shard:
                break  # exported already (a move run again)
            ms = next((m for m in st.markets if m.market == market), None)
            if ms is None:
                raise MoveError(f"{shard.name} does not hold {market}")
            if want <= set(ms.halted_by):
                break
            if loop.time() > deadline:
                missing = ", ".join(sorted(want - set(ms.halted_by)))
                raise MoveError(f"{shard.name} has not applied the halt of {market} from {missing}")
            await asyncio.sleep(POLL_S)
        resp = await shard.export_market(
            mpb.ExportMarketRequest(market=market, to_shard=to_shard, sources=sorted(want)),
            timeout=self.step_timeout_s,
        )
        return resp.book

    async def _settled(self, shard: str, sequence: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.step_timeout_s
        for i, source in enumerate(self.sources):
            while True:
                st = await self.accounts.get_accounts_status(shard=i, timeout=self.step_timeout_s)
                if st.settled_sequences.get(shard, 0) >= sequence:
                    break
                if loop.time() > deadline:
                    raise MoveError(f"{source} has not settled {shard}'s events up to {sequence}")
                await asyncio.sleep(POLL_S)

    async def add_shard(self, shard: str) -> bool:
        if shard not in self.config.shards:
            raise MoveError(
                f"no [shards.{shard}] in the configuration: give the new shard its table "
                "(listen address) first"
            )
        await self.matching(shard).get_matching_status(timeout=self.step_timeout_s)  # it runs
        if self.pairs is None:
            return False
        return await asyncio.to_thread(self.pairs.add_shard, shard)

    async def add_market(self, market: str) -> tuple[str, bool]:
        """Add a market while everything runs: its [[markets]] table is in the configuration the
        operator reads (and between configured assets); its shard journals an empty book, then every
        accounts shard journals the market with its spec. Returns (its shard, whether it was new)."""
        spec = self.config.catalog.markets.get(market)
        if spec is None:
            raise MoveError(f"no [[markets]] {market!r} in {self.config.path}: add its table first")
        message = market_spec_message(spec)
        opened = await self.matching(spec.shard).open_market(
            mpb.OpenMarketRequest(spec=message), timeout=self.step_timeout_s
        )
        added = await asyncio.gather(
            *(
                self.accounts.add_market(
                    apb.AddMarketRequest(spec=message), shard=i, timeout=self.step_timeout_s
                )
                for i in range(len(self.sources))
            )
        )
        if self.pairs is not None:
            await asyncio.to_thread(self.pairs.put, market, spec.shard)
        return spec.shard, bool(opened.sequence or any(a.sequence for a in added))

    async def pair_map(self) -> dict[str, Any]:
        """The pair map as the operator sees it: per market the shard accounts routes it to, whether it
        is halted, and the stored map's entry (ZooKeeper or the file)."""
        routes = await self.routes()
        stored = await asyncio.to_thread(self.pairs.entries) if self.pairs is not None else {}
        out: dict[str, Any] = {}
        for market, spec in sorted(self.config.catalog.markets.items()):
            owners = sorted({r.get(market, spec.shard) for _, r, _ in routes})
            entry = stored.get(market)
            out[market] = {
                "shard": owners[0] if len(owners) == 1 else owners,
                "halted": any(market in h for _, _, h in routes),
                "map": asdict(entry) if entry is not None else None,
            }
        return out


def pair_map_store(config: ExchangeConfig, zk: str = "", root: str = "/ostrakon") -> PairMap:
    """The pair map of a deployment: in ZooKeeper with `zk`, else the embedded default's file."""
    if zk:
        return ZooKeeperPairMap(zk, root=root)
    return FilePairMap(config.data_dir / "pairs.json")


# --- the command line (services.cli: `exchange cluster ...`) --------------------------------------


def add_commands(
    cmd: Callable[[str, str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = cmd(
        "cluster",
        "operator commands: move a pair between matching shards, add a shard, the pair map",
        __doc__.split("\n\n")[1] if __doc__ else "",
    )
    which = p.add_subparsers(
        dest="cluster_cmd", required=True, metavar="move-pair|add-shard|add-market|pairs"
    )
    zk_opts = argparse.ArgumentParser(add_help=False)
    zk_opts.add_argument(
        "--zk", default="", help="ZooKeeper hosts of the cluster (default: the local pair-map file)"
    )
    zk_opts.add_argument("--zk-root", default="/ostrakon")
    m = which.add_parser(
        "move-pair",
        help="move a market's book to another matching shard while orders keep flowing",
        parents=[common, zk_opts],
        allow_abbrev=False,
    )
    m.add_argument("market", metavar="PAIR")
    m.add_argument("--to", required=True, metavar="SHARD", dest="to_shard")
    a = which.add_parser(
        "add-shard", help="register a running matching shard", parents=[common, zk_opts], allow_abbrev=False
    )
    a.add_argument("shard", metavar="SHARD")
    am = which.add_parser(
        "add-market",
        help="add a market while the exchange runs (its [[markets]] table added to the configuration first)",
        parents=[common, zk_opts],
        allow_abbrev=False,
    )
    am.add_argument("market", metavar="PAIR")
    which.add_parser("pairs", help="where each market trades", parents=[common, zk_opts], allow_abbrev=False)


def cmd_cluster(client: Any, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """`exchange cluster ...` with the CLI's Client (services.cli)."""
    config: ExchangeConfig = client.config
    pairs = pair_map_store(config, args.zk, args.zk_root)
    op = Operator(client.clients(), config, pairs, step_timeout_s=max(client.timeout, MOVE_STEP_TIMEOUT_S))
    try:
        if args.cluster_cmd == "move-pair":
            report = client.run(op.move_pair(args.market, args.to_shard))
            if args.json:
                out(json.dumps(asdict(report), indent=2))
            elif report.already:
                out(f"{report.market} already trades on {report.to_shard}; nothing changed")
            else:
                out(
                    f"{report.market} moved from {report.from_shard} to {report.to_shard}: "
                    f"{report.orders} resting orders, halted {report.halted_s * 1000:.0f} ms "
                    f"(export after event {report.export_sequence})"
                )
            return 0
        if args.cluster_cmd == "add-shard":
            added = client.run(op.add_shard(args.shard))
            out(f"{args.shard} {'registered' if added else 'was already registered'}")
            return 0
        if args.cluster_cmd == "add-market":
            shard, new = client.run(op.add_market(args.market))
            out(f"{args.market} {'added' if new else 'was already there'}: trades on {shard}")
            return 0
        view = client.run(op.pair_map())
        if args.json:
            out(json.dumps(view, indent=2))
        else:
            for market, v in view.items():
                out(f"{market:<14} {v['shard']}{'  (halted: moving)' if v['halted'] else ''}")
        return 0
    except MoveError as exc:
        out(f"error: {exc}")
        return 1
    finally:
        close = getattr(pairs, "close", None)
        if close is not None:
            close()
