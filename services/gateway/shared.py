"""What the gateway's worker processes share (`[gateway] workers = N`: N processes on one HTTP port).

The kernel spreads connections over the workers (SO_REUSEPORT), so a client's next connection, or an
attacker's replay, may reach any of them: the per-key and per-address request weights, the replay guard,
the WebSocket connections per address and the API keys' version are kept in one block of shared memory
(`multiprocessing.RawArray`, inherited by the workers the first worker starts, under one
`multiprocessing.Lock`), so every limit is exact across the workers, not limit / N, and a replayed
signature is refused by every worker. One worker (the embedded default) uses the same code on a private
buffer and no lock. Nothing here needs Redis or any other server; the state lives as long as the
gateway's processes (a restarted gateway starts with empty counters, as one process did before).

Layout: a few control words (versions), then open-addressing hash tables of (64-bit key, 64-bit value)
slots (`Table`): a key is the first 8 bytes of blake2b of a string (never 0: 0 marks a free slot); a
lookup probes at most PROBES slots. Entries are never deleted: a slot whose value is stale (an expired
signature, a past window, a zero count) is free for reuse. Tables are bounded; a full probe chain is
handled by each user (the oldest signature forgotten early, the overflow counter of the weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("services.gateway.shared")

PROBES = 8
STALE_LOCK_S = 1.0
M32 = (1 << 32) - 1
CONTROL_WORDS = 8
KEYS_VERSION, LISTEN_KEYS_VERSION = 0, 1

# Slots per table (powers of two; 16 bytes each).
REPLAY_SLOTS = 1 << 19  # 8 MiB: > 200k signatures within the recvWindow
WEIGHT_SLOTS = 1 << 18  # 4 MiB per table (addresses, keys): ~100k clients per minute each
CONNECTION_SLOTS = 1 << 14  # (address, worker) pairs with open WebSocket connections


def key_of(text: str) -> int:
    """A string's 64-bit table key (never 0)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") or 1


class Table:
    """Open addressing over `slots` (a power of two) pairs of words of `words` from `offset`."""

    def __init__(self, words: memoryview, offset: int, slots: int) -> None:
        if slots & (slots - 1) or slots <= 0:
            raise ValueError("slots must be a power of two")
        self.w = words
        self.base = offset
        self.slots = slots
        self.mask = slots - 1
        self.probes = min(PROBES, slots)

    def chain(self, key: int) -> Iterator[int]:
        """The word indexes of the slots `key` may occupy, in probe order."""
        base, mask = self.base, self.mask
        for j in range(self.probes):
            yield base + 2 * ((key + j) & mask)

    def scan(self) -> Iterator[int]:
        base = self.base
        for s in range(self.slots):
            yield base + 2 * s


class TakeoverLock:
    """The workers' lock, held for a few microseconds at a time. A worker killed while holding it (OOM,
    SIGKILL) would leave every other worker waiting forever: a wait longer than STALE_LOCK_S means the
    holder is dead, so the waiter proceeds (said in the log) and its release frees the lock again (a
    multiprocessing Lock may be released by another process). At worst a slot half-written by the dead
    holder is read: a key with a stale value, which every table treats as a free slot."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        if not self.lock.acquire(True, STALE_LOCK_S):
            log.error("the gateway workers' shared lock was held for %.1f s: taking it over", STALE_LOCK_S)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ValueError):  # two waiters took it over: the second release is one too many
            self.lock.release()


class Lockless:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass
class SharedHandle:
    """What a worker process receives (pickled by multiprocessing when it is started)."""

    array: Any  # multiprocessing RawArray of unsigned 64-bit words
    lock: Any  # multiprocessing Lock


class SharedState:
    """The shared block: control words and the tables, with the lock that guards every operation."""

    def __init__(
        self,
        words: memoryview,
        lock: Any,
        *,
        replay_slots: int = REPLAY_SLOTS,
        weight_slots: int = WEIGHT_SLOTS,
        connection_slots: int = CONNECTION_SLOTS,
        handle: SharedHandle | None = None,
    ) -> None:
        self.words = words
        self.lock = lock if isinstance(lock, Lockless) else TakeoverLock(lock)
        self.handle = handle
        at = CONTROL_WORDS
        self.replays = Table(words, at, replay_slots)
        at += 2 * replay_slots
        self.ip_weights = Table(words, at, weight_slots)
        at += 2 * weight_slots
        self.key_weights = Table(words, at, weight_slots)
        at += 2 * weight_slots
        self.connections = Table(words, at, connection_slots)
        at += 2 * connection_slots
        self.overflow = at  # two words: the weights' overflow counters (addresses, keys)
        if len(words) < at + 2:
            raise ValueError("the shared block is too small")

    @staticmethod
    def words_for(replay_slots: int, weight_slots: int, connection_slots: int) -> int:
        return CONTROL_WORDS + 2 * (replay_slots + 2 * weight_slots + connection_slots) + 2

    @classmethod
    def local(
        cls,
        replay_slots: int = REPLAY_SLOTS,
        weight_slots: int = WEIGHT_SLOTS,
        connection_slots: int = CONNECTION_SLOTS,
    ) -> SharedState:
        """For one process: a private buffer, no lock."""
        n = cls.words_for(replay_slots, weight_slots, connection_slots)
        return cls(
            memoryview(bytearray(8 * n)).cast("Q"),
            Lockless(),
            replay_slots=replay_slots,
            weight_slots=weight_slots,
            connection_slots=connection_slots,
        )

    @classmethod
    def create(cls) -> SharedState:
        """For several worker processes (started with the "spawn" context): pass `handle` to each."""
        ctx = multiprocessing.get_context("spawn")
        n = cls.words_for(REPLAY_SLOTS, WEIGHT_SLOTS, CONNECTION_SLOTS)
        return cls.attach(SharedHandle(ctx.RawArray("Q", n), ctx.Lock()))

    @classmethod
    def attach(cls, handle: SharedHandle) -> SharedState:
        return cls(memoryview(handle.array).cast("B").cast("Q"), handle.lock, handle=handle)

    # --- versions --------------------------------------------------------------------------------

    def version(self, which: int) -> int:
        return int(self.words[which])

    def bump(self, which: int) -> int:
        with self.lock:
            v = self.words[which] + 1
            self.words[which] = v
            return int(v)

    # --- signatures seen (services.gateway.signing.ReplayGuard) ----------------------------------

    def first_time(self, key: int, now_ms: int, expires_ms: int) -> bool:
        """Whether `key` is new (not seen and unexpired); if so it is remembered until `expires_ms`.
        A full probe chain forgets its entry that expires first."""
        w = self.words
        with self.lock:
            free = oldest = -1
            oldest_at = 1 << 64
            for i in self.replays.chain(key):
                k = w[i]
                if k == 0:
                    if free < 0:
                        free = i
                    break
                at = w[i + 1]
                if at <= now_ms:
                    if free < 0:
                        free = i
                    continue
                if k == key:
                    return False
                if at < oldest_at:
                    oldest, oldest_at = i, at
            slot = free if free >= 0 else oldest
            w[slot] = key
            w[slot + 1] = expires_ms
            return True

    # --- request weights (services.gateway.ratelimit.WeightLimiter) ------------------------------

    def take(self, table: Table, overflow: int, key: int, weight: int, window: int, limit: int) -> int:
        """Count `weight` for `key` in `window` (minutes): the weight used after it, or -1 when that
        would exceed `limit` (then nothing is counted). A client without room in its probe chain counts
        in the table's overflow counter."""
        w = self.words
        stamp = (window & M32) << 32
        with self.lock:
            free = -1
            for i in table.chain(key):
                k = w[i]
                if k == 0:
                    if free < 0:
                        free = i
                    break
                v = w[i + 1]
                if v >> 32 != window & M32:
                    if free < 0:
                        free = i
                    continue
                if k == key:
                    used = (v & M32) + weight
                    if used > limit:
                        return -1
                    w[i + 1] = stamp | min(used, M32)
                    return used
            if free >= 0:
                if weight > limit:
                    return -1
                w[free] = key
                w[free + 1] = stamp | min(weight, M32)
                return weight
            at = self.overflow + overflow
            v = w[at]
            used = (v & M32 if v >> 32 == window & M32 else 0) + weight
            if used > limit:
                return -1
            w[at] = stamp | min(used, M32)
            return used

    def used(self, table: Table, overflow: int, key: int, window: int) -> int:
        w = self.words
        with self.lock:
            for i in table.chain(key):
                k = w[i]
                if k == 0:
                    break
                if k == key:
                    v = w[i + 1]
                    return int(v & M32) if v >> 32 == window & M32 else 0
            return 0

    def overflow_used(self, overflow: int, window: int) -> int:
        v = self.words[self.overflow + overflow]
        return int(v & M32) if v >> 32 == window & M32 else 0

    # --- WebSocket connections per address (services.gateway.ratelimit.ConnectionLimiter) --------

    def open_connections(self, keys: list[int]) -> int:
        with self.lock:
            return sum(self._count(k)[1] for k in keys)

    def _count(self, key: int) -> tuple[int, int]:
        """(word index of key's slot or of the first free one or -1, its count)."""
        w = self.words
        free = -1
        for i in self.connections.chain(key):
            k = w[i]
            if k == key:
                return i, int(w[i + 1] & M32)
            if free < 0 and (k == 0 or w[i + 1] & M32 == 0):
                free = i
            if k == 0:
                break
        return free, 0

    def acquire_connection(self, all_keys: list[int], mine: int, worker: int, limit: int) -> bool:
        """One more connection counted under `mine` (this worker's key of an address) if the counts of
        `all_keys` (every worker's key of it) are below `limit`. A full chain refuses."""
        w = self.words
        with self.lock:
            if sum(self._count(k)[1] for k in all_keys) >= limit:
                return False
            i, n = self._count(mine)
            if i < 0:
                return False
            w[i] = mine
            w[i + 1] = (worker << 32) | (n + 1)
            return True

    def release_connection(self, mine: int, worker: int) -> None:
        w = self.words
        with self.lock:
            i, n = self._count(mine)
            if i >= 0 and n > 0:
                w[i + 1] = (worker << 32) | (n - 1)

    def forget_worker(self, worker: int) -> None:
        """A (re)started worker's connection counts start at zero (those of a crashed one are gone)."""
        w = self.words
        with self.lock:
            for i in self.connections.scan():
                if w[i] and w[i + 1] >> 32 == worker:
                    w[i + 1] = worker << 32
