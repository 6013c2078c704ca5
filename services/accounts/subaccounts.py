"""Sub-accounts: accounts of their own (balances, orders, events) owned by an ordinary user, and the
record of the transfers between an owner and its sub-accounts. Pure domain state of the accounts
ledger (services.accounts.ledger applies the balance side of a transfer); no clock, no I/O.

Ids. A sub-account's user id is SUB_ACCOUNT_BASE + n (2^62 + n), n counting from 1 in the order
sub-accounts are opened (allocated while applying the command, so a replay allocates the same ids); an
id already holding balances or orders (an ordinary account opened there before the edge refused such
ids) is skipped. Ordinary user ids are below 2^62. With accounts sharded by user, ids outside the
owner's partition (user_id mod the shard count) are skipped too, so a sub-account lives on its owner's
shard (services.accounts.ledger).

Idempotency. Opening is idempotent by (owner, label): every sub-account is kept for good, at most
MAX_SUB_ACCOUNTS_PER_OWNER per owner. Transfers are idempotent by (owner, transfer_id): each owner's
newest TRANSFER_IDS_KEEP transfers are remembered (oldest forgotten first, in apply order, so the set is
bounded and the same after a replay). A retry is recognized as long as fewer than TRANSFER_IDS_KEEP newer
transfers of the same owner were applied since; a client retries within seconds, not after 100,000 other
transfers of the same owner.

Every check runs before anything changes (open_check / transfer_check), so a refused command changes
nothing.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from services.accounts.model import OpenSubAccount, Transfer
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Reason, quote
from services.common.limits import (
    MAX_ORDINARY_USER_ID,
    MAX_SUB_ACCOUNT_LABEL,
    MAX_SUB_ACCOUNTS_PER_OWNER,
    MAX_TRANSFER_ID,
    MAX_USER_ID,
    SUB_ACCOUNT_BASE,
)

TRANSFER_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]+")  # and at most MAX_TRANSFER_ID characters
TRANSFER_IDS_KEEP = 100_000  # per owner, the newest


@dataclass(frozen=True)
class SubAccount:
    user_id: int
    owner_user_id: int
    label: str
    sequence: int  # of the command that opened it


@dataclass(frozen=True)
class TransferRecord:
    """An applied transfer: its parameters, its command's sequence and both balances after it
    (available, frozen)."""

    from_user_id: int
    to_user_id: int
    asset: str
    amount: int
    sequence: int
    from_balance: tuple[int, int]
    to_balance: tuple[int, int]

    def same_request(self, t: Transfer) -> bool:
        return (self.from_user_id, self.to_user_id, self.asset, self.amount) == (
            t.from_user_id,
            t.to_user_id,
            t.asset,
            t.amount,
        )


@dataclass(frozen=True)
class OpenResult:
    sub_account: SubAccount
    duplicate: bool


@dataclass(frozen=True)
class TransferResult:
    record: TransferRecord
    duplicate: bool


def check_label(label: str) -> None:
    if len(label) > MAX_SUB_ACCOUNT_LABEL:
        raise InvalidArgument(
            f"label is longer than {MAX_SUB_ACCOUNT_LABEL} characters: {quote(label)}", Reason.FIELD_TOO_LONG
        )
    if not label or not label.isprintable():
        raise InvalidArgument(
            f"label must be 1-{MAX_SUB_ACCOUNT_LABEL} printable characters", Reason.INVALID_FIELD
        )


def check_transfer_id(transfer_id: str) -> None:
    if len(transfer_id) > MAX_TRANSFER_ID:
        raise InvalidArgument(
            f"transfer_id is longer than {MAX_TRANSFER_ID} characters: {quote(transfer_id)}",
            Reason.FIELD_TOO_LONG,
        )
    if not TRANSFER_ID_RE.fullmatch(transfer_id):
        raise InvalidArgument("transfer_id must be 1-64 characters [A-Za-z0-9_.:-]", Reason.INVALID_FIELD)


class SubAccounts:
    def __init__(self) -> None:
        self.by_id: dict[int, SubAccount] = {}
        self.by_owner: dict[int, dict[str, int]] = {}  # owner -> label -> user id, in opening order
        self.next_n = 1
        self.transfers: dict[int, OrderedDict[str, TransferRecord]] = {}  # owner -> id -> record

    def get(self, user_id: int) -> SubAccount | None:
        return self.by_id.get(user_id)

    def is_sub_account(self, user_id: int) -> bool:
        return user_id in self.by_id

    def of_owner(self, owner: int, after: int = 0) -> Iterator[SubAccount]:
        """The owner's sub-accounts with a user id above `after`, in opening (= id) order."""
        for user_id in self.by_owner.get(owner, {}).values():
            if user_id > after:
                yield self.by_id[user_id]

    # --- open ----------------------------------------------------------------------------------

    def _check_owner(self, owner: int) -> None:
        if owner in self.by_id:
            raise FailedPrecondition(
                f"user {owner} is a sub-account: it cannot own sub-accounts", Reason.SUB_ACCOUNT_NOT_ALLOWED
            )
        if owner < 1 or owner > MAX_ORDINARY_USER_ID:
            raise InvalidArgument(
                f"owner_user_id must be in 1..{MAX_ORDINARY_USER_ID} (an ordinary user)",
                Reason.VALUE_OUT_OF_RANGE,
            )

    def open(self, cmd: OpenSubAccount, seq: int, taken: Callable[[int], bool]) -> OpenResult:
        """Open (or find, by label) a sub-account of cmd.owner_user_id. `taken(user_id)` says whether
        an id already holds an account (skipped when allocating)."""
        owner, label = cmd.owner_user_id, cmd.label
        self._check_owner(owner)
        check_label(label)
        mine = self.by_owner.get(owner, {})
        existing = mine.get(label)
        if existing is not None:
            return OpenResult(self.by_id[existing], True)
        if len(mine) >= MAX_SUB_ACCOUNTS_PER_OWNER:
            raise FailedPrecondition(
                f"user {owner} already has {MAX_SUB_ACCOUNTS_PER_OWNER} sub-accounts",
                Reason.TOO_MANY_SUB_ACCOUNTS,
            )
        n = self.next_n
        while taken(SUB_ACCOUNT_BASE + n):
            n += 1
        user_id = SUB_ACCOUNT_BASE + n
        if user_id > MAX_USER_ID:  # pragma: no cover - 2^62 sub-accounts
            raise FailedPrecondition("no sub-account id left", Reason.TOO_MANY_SUB_ACCOUNTS)
        sub = SubAccount(user_id, owner, label, seq)
        self.by_id[user_id] = sub
        self.by_owner.setdefault(owner, {})[label] = user_id
        self.next_n = n + 1
        return OpenResult(sub, False)

    # --- transfers -----------------------------------------------------------------------------

    def transfer_owner(self, t: Transfer) -> int:
        """The owner of a transfer's two accounts; refuses one that is not between an owner and one of
        its own sub-accounts."""
        src, dst = t.from_user_id, t.to_user_id
        for name, user in (("from_user_id", src), ("to_user_id", dst)):
            if user < 1 or user > MAX_USER_ID:
                raise InvalidArgument(f"{name} must be in 1..{MAX_USER_ID}", Reason.VALUE_OUT_OF_RANGE)
            if user >= SUB_ACCOUNT_BASE and user not in self.by_id:
                raise NotFound(f"{name} {user} is no sub-account", Reason.SUB_ACCOUNT_NOT_FOUND)
        if src == dst:
            raise FailedPrecondition("a transfer needs two different accounts", Reason.TRANSFER_NOT_ALLOWED)
        s, d = self.by_id.get(src), self.by_id.get(dst)
        if s is not None and s.owner_user_id == dst:
            return dst
        if d is not None and d.owner_user_id == src:
            return src
        raise FailedPrecondition(
            f"a transfer must be between an owner and one of its own sub-accounts ({src} -> {dst} is not)",
            Reason.TRANSFER_NOT_ALLOWED,
        )

    def previous_transfer(self, owner: int, t: Transfer) -> TransferRecord | None:
        """The transfer already applied under (owner, t.transfer_id), if the same; refuses an id reused
        with other parameters."""
        mine = self.transfers.get(owner)
        record = mine.get(t.transfer_id) if mine is not None else None
        if record is None:
            return None
        if not record.same_request(t):
            raise AlreadyExists(
                f"transfer_id {quote(t.transfer_id)} was already used for another transfer "
                f"(sequence {record.sequence})",
                Reason.DUPLICATE_TRANSFER_ID,
                {"sequence": str(record.sequence)},
            )
        return record

    def record_transfer(self, owner: int, transfer_id: str, record: TransferRecord) -> None:
        mine = self.transfers.get(owner)
        if mine is None:
            mine = self.transfers[owner] = OrderedDict()
        mine[transfer_id] = record
        if len(mine) > TRANSFER_IDS_KEEP:
            mine.popitem(last=False)

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "sub_accounts": [
                (s.user_id, s.owner_user_id, s.label, s.sequence)
                for s in sorted(self.by_id.values(), key=lambda s: s.user_id)
            ],
            "next_sub_account": self.next_n,
            # Per owner in application order (the forgetting order).
            "transfers": [
                (
                    owner,
                    tid,
                    r.from_user_id,
                    r.to_user_id,
                    r.asset,
                    r.amount,
                    r.sequence,
                    *r.from_balance,
                    *r.to_balance,
                )
                for owner in sorted(self.transfers)
                for tid, r in self.transfers[owner].items()
            ],
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> SubAccounts:
        subs = cls()
        for user_id, owner, label, seq in data.get("sub_accounts", ()):
            sub = SubAccount(int(user_id), int(owner), str(label), int(seq))
            subs.by_id[sub.user_id] = sub
            subs.by_owner.setdefault(sub.owner_user_id, {})[sub.label] = sub.user_id
        subs.next_n = int(data.get("next_sub_account", 1))
        for owner, tid, src, dst, asset, amount, seq, fa, ff, ta, tf in data.get("transfers", ()):
            record = TransferRecord(
                int(src), int(dst), str(asset), int(amount), int(seq), (int(fa), int(ff)), (int(ta), int(tf))
            )
            subs.transfers.setdefault(int(owner), OrderedDict())[str(tid)] = record
        return subs
