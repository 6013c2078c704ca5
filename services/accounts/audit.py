"""The balance invariant across accounts shards (accounts sharded by user, services.accounts.ledger).

Each shard reports, per asset, in GetAccountsStatus(with_audit): the sum of its balances (`total`, fee
account included), its deposits - withdrawals (`external`), what its users received from minus paid to
users of other shards in trades (`cross_shard`), its frozen funds and what its open orders hold. Per
shard: total == external + cross_shard and frozen == held. Across shards, once every shard has settled
the same matching events (the same settled sequence of every matching shard), every cross-shard trade has
been settled on both sides, so Σ cross_shard == 0 and Σ total == Σ external: the exchange's invariant.

    problems = cross_shard_problems(statuses)   # [] when it holds; statuses: one per accounts shard

Pure (no I/O): the CLI (`exchange status --audit`), the test cluster and the scaling bench call it with
the statuses they fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any


def settled_alike(statuses: Sequence[Any]) -> bool:
    """Whether every accounts shard settled the same events of every matching shard."""
    seen = {tuple(sorted(dict(s.settled_sequences).items())) for s in statuses}
    return len(seen) <= 1


def shard_problems(status: Any) -> list[str]:
    """The invariants of one accounts shard's audit (empty when they hold)."""
    out = []
    for a in status.audit:
        total, external, cross = Decimal(a.total), Decimal(a.external), Decimal(a.cross_shard or "0")
        if total != external + cross:
            out.append(
                f"{status.source} {a.asset}: balances {a.total} != deposits - withdrawals {a.external} "
                f"+ cross-shard {a.cross_shard or '0'}"
            )
        if a.frozen != a.held:
            out.append(f"{status.source} {a.asset}: frozen {a.frozen} != held by open orders {a.held}")
    return out


def totals(statuses: Sequence[Any]) -> dict[str, dict[str, Decimal]]:
    """Per asset, summed over the shards: total, external, cross_shard, frozen, held."""
    out: dict[str, dict[str, Decimal]] = {}
    for st in statuses:
        for a in st.audit:
            t = out.setdefault(a.asset, {k: Decimal(0) for k in ("total", "external", "cross_shard")})
            t["total"] += Decimal(a.total)
            t["external"] += Decimal(a.external)
            t["cross_shard"] += Decimal(a.cross_shard or "0")
    return out


def cross_shard_problems(statuses: Sequence[Any]) -> list[str]:
    """Every broken invariant over the accounts shards' audited statuses (empty when all hold). The
    sums are only comparable when the shards settled the same matching events: otherwise that is the
    one problem reported (wait and ask again)."""
    out = [p for st in statuses for p in shard_problems(st)]
    if not settled_alike(statuses):
        settled = {st.source: dict(st.settled_sequences) for st in statuses}
        return [*out, f"the accounts shards have not settled the same matching events yet: {settled}"]
    for asset, t in sorted(totals(statuses).items()):
        if t["cross_shard"] != 0:
            out.append(f"{asset}: cross-shard flows sum to {t['cross_shard']}, not 0")
        if t["total"] != t["external"]:
            out.append(
                f"{asset}: balances over all shards {t['total']} != deposits - withdrawals {t['external']}"
            )
    return out
