"""The NATS JetStream backend: a Journal replicated by a JetStream stream (nats-py).

Layout (one stream per journal):

- stream `<PREFIX>_<service>_<name>` (non-alphanumerics of service and name become `_`), subject
  `<prefix>.<service>.<name>`, file storage, `num_replicas` 1 or 3 (R3: a write is acknowledged once a
  quorum of the stream's replicas stored it), limits retention without limits (nothing expires: only
  prune_before removes), `allow_direct`, a 2-minute duplicate window (Nats-Msg-Id: retries after a
  lost acknowledgement are stored once). The description holds `{"journal": ..., "start_seq": n}`:
  the record number the next record gets while the stream is empty (a new journal, or one truncated
  to nothing).
- batching: one stream message carries a whole batch of records (every `write_after` is one message,
  split only where it would exceed `max_message_bytes`): the facts of issue 11 measured 1.5k acked
  publishes/s at R3 with one record per message and 89k-150k records/s with 100-500 per message.
  The journal's sequence numbers stay per record: a message is `b"OJ1"`, the first record's
  sequence (u64), the count (u32), then per record its length (u32) and payload. The stream
  sequence of messages is an internal detail (`_Segment` maps messages to record ranges).
- fencing: the writer knows the stream sequence of the last message (it loaded the stream up to its
  end when it opened it) and publishes message k of its pipeline with `Nats-Expected-Last-Sequence`
  = that + k. A deposed writer's publish is refused by the server (err_code 10071): the backend then
  raises FencedError from flush()/sync() and from every later append (deposed for good). A message
  published while the one before it is still unacknowledged also carries
  `Nats-Expected-Last-Msg-Id` = that one's id (refused with err_code 10070 otherwise): without it, a
  deposed writer's first message refused because a new leader's fence took its sequence would let
  its second one through (it expects exactly that sequence), on top of the new leader's. A message
  published with nothing of this writer in flight before it is fenced by the sequence alone. Within one
  factory (one process) handles of one journal share its state, so a second handle opened while the
  first is open (a new leader in the contract tests) fences the first one locally too, at once.
  A new leader calls `fence()` right after it opened the stream: an empty batch message fenced on
  the last one, so that an old leader is refused at once, not only after the new one's first
  append (a frozen leader that wakes first would otherwise still append).
- durability: only acknowledged publishes count (issue 11: unacknowledged publishes lost most
  messages at R3). durable_seq is the last record of the contiguous prefix of acknowledged
  messages. write_after/append_after publish without waiting (pipelined, in order, over the one
  connection); flush()/sync() wait for the acknowledgements, and when_durable(seq, callback) asks
  for the same without waiting (the host's journal thread keeps several batches in flight with it
  instead of one publish round trip per batch: services.common.host). An acknowledgement lost
  (timeout, no responders while the stream elects a leader, a reconnect) resends the
  unacknowledged window in order, with the same message ids (the stream stores a resent message
  once: its duplicate window), until `ack_deadline_s`; then the journal fails (JournalError: the
  host fail-stops).
- reads: read() runs on callers' event loops and must not wait on the network, so it is served from
  a local copy in memory (the writer's own records; a reader's copy is filled by its consumer). The
  copy holds every record from first_seq: pruning bounds it (prune_before drops the records in memory
  too; a reader drops what its follower no longer needs with JetStreamReader.release_before).
- follow: on a writer handle, follow_durable over the local copy (acknowledged records only). A
  follower process opens `JetStreamJournals.open_reader(name)`: an ordered push consumer (deliver
  all, flow control) that keeps the local copy hot; every delivered message was stored by the
  stream (for R3: by a quorum), so what it received is durable.
- prune_before(s) purges the stream below the first message holding a record >= s, never the last
  message (it keeps the numbering of an otherwise empty stream): whole messages are the granularity.
- truncate_after(s) (recovery only) deletes the messages after s from the stream and, when s falls
  inside a message, publishes that message's kept prefix again (fenced). With JetStream an append
  reaches the stream whole or not at all, so there are no torn tails (the contract's torn-tail case
  does not apply); what a crashed writer left unacknowledged is either stored whole or absent.
- quarantine(name) copies the stream's messages into a new stream `<stream>_DAMAGED_<n>` (subject
  `<subject>.damaged.<n>`) and deletes the original: JetStream cannot rename a stream.

The protocol's synchronous parts (factory.open, write_after, sync, truncate_after, prune_before,
close) are met with a client event loop of the factory's own, in a daemon thread: synchronous calls
hand a coroutine to that loop and wait for it (from any thread, including another event loop's, as
the host's journal thread and recovery thread do); async calls (append_after, flush) await it
without blocking their loop. Calling a blocking method from the client loop itself is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from services.common.journal.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    DurableSignal,
    FencedError,
    Journal,
    JournalDamagedError,
    JournalError,
    JournalFactory,
    JournalGapError,
    Record,
    follow_durable,
    read_held,
)

T = TypeVar("T")
# when_durable's callback: (durable sequence, None) once the target is durable, or (_, the error)
DurableCallback = Callable[[int, JournalError | None], None]

MAGIC = b"OJ1"
_HEAD = struct.Struct(">3sQI")  # magic, first record sequence, record count
_LEN = struct.Struct(">I")
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a stale Nats-Expected-Last-Sequence
WRONG_LAST_MSG_ID = 10070  # ... and for a stale Nats-Expected-Last-Msg-Id
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
MSG_ID = "Nats-Msg-Id"
DEFAULT_MAX_MESSAGE_BYTES = 900_000  # under the server's default max_payload (1 MiB) with headers


def encode_message(first_seq: int, payloads: Sequence[bytes]) -> bytes:
    parts = [_HEAD.pack(MAGIC, first_seq, len(payloads))]
    for p in payloads:
        parts.append(_LEN.pack(len(p)))
        parts.append(p)
    return b"".join(parts)


def decode_message(data: bytes) -> tuple[int, list[bytes]]:
    """(first record sequence, payloads) of one stream message; JournalError if it is not one."""
    if len(data) < _HEAD.size:
        raise JournalError(f"stream message of {len(data)} bytes is not a journal batch")
    magic, first, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise JournalError(f"stream message does not start with {MAGIC!r}")
    out: list[bytes] = []
    pos = _HEAD.size
    for _ in range(count):
        if pos + _LEN.size > len(data):
            raise JournalError("journal batch is cut short")
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + n > len(data):
            raise JournalError("journal batch is cut short")
        out.append(data[pos : pos + n])
        pos += n
    if pos != len(data):
        raise JournalError("journal batch has trailing bytes")
    return first, out


def split_batch(payloads: Sequence[bytes], max_bytes: int) -> list[list[bytes]]:
    """The batch as messages of at most max_bytes each (a record larger than that goes alone)."""
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    size = _HEAD.size
    for p in payloads:
        n = _LEN.size + len(p)
        if cur and size + n > max_bytes:
            out.append(cur)
            cur, size = [], _HEAD.size
        cur.append(bytes(p))
        size += n
    if cur:
        out.append(cur)
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def stream_name(prefix: str, service: str, name: str) -> str:
    return f"{prefix.upper()}_{_UNSAFE.sub('_', service)}_{_UNSAFE.sub('_', name)}"


def subject_name(prefix: str, service: str, name: str) -> str:
    return f"{prefix.lower()}.{_UNSAFE.sub('_', service)}.{_UNSAFE.sub('_', name)}"


# --- the client loop ---------------------------------------------------------------------------------


class _ClientLoop:
    """A NATS connection on an event loop of its own, in a daemon thread."""

    def __init__(self, servers: Sequence[str], *, name: str, connect_timeout_s: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=f"{name}-nats", daemon=True)
        self.thread.start()
        self.nc: NatsClient = self.call(
            nats.connect(
                servers=list(servers),
                name=name,
                connect_timeout=connect_timeout_s,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                allow_reconnect=True,
            ),
            timeout=connect_timeout_s + 5,
        )
        self.js: JetStreamContext = self.nc.jetstream(timeout=5.0)
        self.max_payload: int = int(self.nc.max_payload)
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] | None = None
        self._ack_prefix = ""
        self._token = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run coro on the client loop and wait for it (blocking; not from the client loop)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise JournalError("a blocking journal call was made on the NATS client's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run coro on the client loop; await it from another loop without blocking that one."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str]
    ) -> asyncio.Future[dict[str, Any]]:
        """Publish to JetStream without waiting; the future gets the server's answer as a dict
        (`{"error": {...}}` for a refusal, `{"error": {"code": 503}}` for no responders). nats-py's
        publish_async is not used: its reply handler raises on an error answer instead of failing
        the future, which then never completes (nats-py 2.16)."""
        if self._acks is None:
            self._ack_prefix = f"{self.nc.new_inbox()}."
            self._acks = {}
            acks = self._acks

            async def on_ack(msg: Msg) -> None:
                fut = acks.pop(msg.subject, None)
                if fut is None or fut.done():
                    return
                if msg.headers and msg.headers.get("Status") == "503":
                    fut.set_result({"error": {"code": 503, "description": "no responders"}})
                    return
                try:
                    fut.set_result(json.loads(msg.data))
                except ValueError as exc:
                    fut.set_result({"error": {"code": 500, "description": f"bad answer: {exc}"}})

            await self.nc.subscribe(f"{self._ack_prefix}*", cb=on_ack)
        self._token += 1
        reply = f"{self._ack_prefix}{self._token}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        acks = self._acks
        acks[reply] = fut

        def forget(_: asyncio.Future[dict[str, Any]]) -> None:  # cancelled before an answer
            acks.pop(reply, None)

        fut.add_done_callback(forget)
        await self.nc.publish(subject, data, reply=reply, headers=headers)
        return fut

    def soon(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        if not self.loop.is_running():
            return
        with contextlib.suppress(Exception):
            self.call(self.nc.close(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- a journal's shared state -------------------------------------------------------------------------


@dataclass
class _Segment:
    """One stream message: its stream sequence and the records it holds."""

    msg_seq: int
    first: int
    count: int

    @property
    def last(self) -> int:
        return self.first + self.count - 1


@dataclass
class _Outgoing:
    msg_seq: int  # the stream sequence it must get (Nats-Expected-Last-Sequence = msg_seq - 1)
    last_record: int
    data: bytes
    msg_id: str
    future: asyncio.Future[dict[str, Any]] | None = None


class _Stream:
    """The state of one journal shared by the handles a factory opened on it: the local copy of its
    records, the message map, the pipeline of unacknowledged publishes and the writer's fate."""

    def __init__(self, factory: JetStreamJournals, name: str) -> None:
        self.factory = factory
        self.name = name
        self.stream = factory.stream(name)
        self.subject = factory.subject(name)
        self.lock = threading.Lock()
        self.first = 1
        self.records: list[bytes] = []
        self.segments: deque[_Segment] = deque()
        self.durable = 0  # min(acked, wanted): advances on flush/sync, as a file journal's does
        self.acked = 0  # last record of the contiguous prefix of acknowledged messages
        self.wanted = 0  # the highest record a flush/sync/close asked to be durable
        self.last_msg_seq = 0  # stream sequence of the last message (written or being written)
        self.signals: list[DurableSignal] = []
        self.failure: JournalError | None = None  # fenced (FencedError) or failed: refuses appends
        # client-loop side
        self.outgoing: deque[_Outgoing] = deque()
        self.wake: asyncio.Event | None = None
        self.pump: asyncio.Task[None] | None = None
        # when_durable's requests, in order of target: (target, callback)
        self.durable_calls: deque[tuple[int, DurableCallback]] = deque()
        self.writer_id = uuid.uuid4().hex[:12]

    @property
    def last(self) -> int:
        return self.first + len(self.records) - 1

    def notify(self) -> None:
        for s in list(self.signals):
            s.notify()

    def settle_calls(self) -> None:  # on the client loop
        """Run the when_durable callbacks whose target is durable, or all of them once it failed."""
        calls = self.durable_calls
        while calls:
            with self.lock:
                failure, durable = self.failure, self.durable
            target, callback = calls[0]
            if failure is None and durable < target:
                return
            calls.popleft()
            callback(durable, None if failure is None else _again(failure))


# --- the journal --------------------------------------------------------------------------------------


class JetStreamJournal:
    """A Journal on a JetStream stream (see the module docstring). Opened by JetStreamJournals."""

    def __init__(self, store: _Stream, *, created: bool) -> None:
        self._store = store
        self._client = store.factory.client
        self.name = store.factory.location(store.name)
        self.created = created
        self._signal = DurableSignal()
        self._closed = False
        with store.lock:
            store.signals.append(self._signal)

    # --- positions -----------------------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        return self._store.first

    @property
    def last_seq(self) -> int:
        return self._store.last

    @property
    def durable_seq(self) -> int:
        return self._store.durable

    # --- writing -------------------------------------------------------------------------------

    def write_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        store = self._store
        with store.lock:
            if self._closed:
                raise JournalError(f"{self.name}: journal is closed")
            if store.failure is not None:
                raise _again(store.failure)
            last = store.last
            if expected_last_seq != last:
                raise FencedError.refused(self.name, expected_last_seq, last)
            if not payloads:
                return range(last + 1, last + 1)
            limit = self._client.max_payload - 512  # the headers
            for p in payloads:
                if _HEAD.size + _LEN.size + len(p) > limit:
                    raise JournalError(
                        f"{self.name}: a record of {len(p)} bytes exceeds the server's message limit "
                        f"({self._client.max_payload} bytes); nothing was written"
                    )
            out: list[_Outgoing] = []
            seq = last + 1
            for chunk in split_batch(payloads, store.factory.max_message_bytes):
                store.last_msg_seq += 1
                msg_seq = store.last_msg_seq
                store.segments.append(_Segment(msg_seq, seq, len(chunk)))
                store.records.extend(chunk)
                out.append(
                    _Outgoing(
                        msg_seq,
                        seq + len(chunk) - 1,
                        encode_message(seq, chunk),
                        f"{store.writer_id}-{msg_seq}",
                    )
                )
                seq += len(chunk)
        self._client.soon(self._enqueue, out)
        return range(last + 1, seq)

    async def append_after(self, expected_last_seq: int, payloads: Sequence[bytes]) -> range:
        return self.write_after(expected_last_seq, payloads)

    def fence(self) -> int:
        """Take the stream over now, before the first append: publish an empty batch message (no
        records) fenced on the stream's last message as this handle loaded it. Once stored, every
        earlier writer's next publish names a stale expected last sequence and is refused, so a
        deposed leader that wakes cannot append even while the new one has nothing to write yet.
        FencedError (and the journal fails for good) when another writer appended after this handle
        loaded the stream. Returns the stream sequence of the marker. Only with nothing in flight."""
        store = self._store
        with store.lock:
            if self._closed:
                raise JournalError(f"{self.name}: journal is closed")
            if store.failure is not None:
                raise _again(store.failure)
            if store.durable < store.last:
                raise JournalError(f"{self.name}: fence() with appends in flight")
            expected = store.last_msg_seq
            first = store.last + 1
        return self._client.call(self._fence(expected, first), timeout=store.factory.ack_deadline_s + 30)

    async def _only_opening_marker(self) -> bool:
        """True when the stream holds just its opening marker (message 1, no records)."""
        store = self._store
        try:
            msg = await self._client.js.get_msg(store.stream, subject=store.subject)
            return int(msg.seq or 0) == 1 and not decode_message(msg.data or b"")[1]
        except (nats.errors.Error, JournalError):
            return False

    async def _fence(self, expected: int, first: int) -> int:  # on the client loop
        store = self._store
        factory = store.factory
        headers = {EXPECTED_LAST_SEQ: str(expected), MSG_ID: f"{store.writer_id}-fence-{expected + 1}"}
        deadline = time.monotonic() + factory.ack_deadline_s
        while True:
            fut = await self._client.publish(store.subject, encode_message(first, []), headers)
            try:
                answer = await asyncio.wait_for(fut, factory.ack_timeout_s)
            except (TimeoutError, nats.errors.Error) as exc:
                answer = {"error": {"code": 408, "description": repr(exc)}}
            error = answer.get("error")
            if error is None:
                break
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                if expected == 0 and await self._only_opening_marker():
                    # The stream was loaded empty while its creator's opening marker was still on
                    # its way (a new R3 stream elects its leader first): no writer came between.
                    expected = 1
                    with store.lock:
                        store.last_msg_seq = max(store.last_msg_seq, 1)
                    headers = {EXPECTED_LAST_SEQ: "1", MSG_ID: f"{store.writer_id}-fence-2"}
                    continue
                err = FencedError(
                    f"{self.name}: taking the stream over after message {expected} was refused: "
                    "another writer appended after this one loaded it",
                    expected=first - 1,
                    last=-1,
                )
                self._fail(err)
                raise _again(err)
            if error.get("code") not in (503, 408, 504) or time.monotonic() >= deadline:
                failure = JournalError(f"{self.name}: fence refused: {error}")
                self._fail(failure)
                raise _again(failure)
            await asyncio.sleep(0.1)  # no responders / timeout while the stream elects: again
        seq = int(answer.get("seq") or 0)
        if seq != expected + 1:
            failure = JournalError(f"{self.name}: the stream stored the fence as {seq}, not {expected + 1}")
            self._fail(failure)
            raise _again(failure)
        with store.lock:
            store.last_msg_seq = max(store.last_msg_seq, seq)
        return seq

    def _enqueue(self, out: list[_Outgoing]) -> None:  # on the client loop
        store = self._store
        store.outgoing.extend(out)
        if store.wake is None:
            store.wake = asyncio.Event()
        if store.pump is None or store.pump.done():
            store.pump = asyncio.get_running_loop().create_task(self._pump())
        store.wake.set()

    async def _pump(self) -> None:
        """Publishes the outgoing messages in order and settles their acknowledgements (client loop).
        Anything unexpected fails the journal (appends and flushes then raise JournalError)."""
        try:
            await self._pump_messages()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(JournalError(f"{self.name}: publishing failed: {exc!r}"))

    async def _pump_messages(self) -> None:
        store = self._store
        assert store.wake is not None
        client = self._client
        factory = store.factory
        deadline: float | None = None
        while True:
            i = 0
            while i < len(store.outgoing):  # by index: _enqueue and _fail may run during the awaits
                o = store.outgoing[i]
                if o.future is None:
                    headers = {EXPECTED_LAST_SEQ: str(o.msg_seq - 1), MSG_ID: o.msg_id}
                    if i > 0:
                        # Chained on the message before it, still unacknowledged: should that one be
                        # refused (a newer writer appended), this one is refused too, even where the
                        # newer writer's messages took the sequence it expects.
                        headers[EXPECTED_LAST_MSG_ID] = store.outgoing[i - 1].msg_id
                    o.future = await client.publish(store.subject, o.data, headers)
                i += 1
            if not store.outgoing:
                store.wake.clear()
                await store.wake.wait()
                continue
            head = store.outgoing[0]
            assert head.future is not None
            try:
                answer = await asyncio.wait_for(asyncio.shield(head.future), factory.ack_timeout_s)
            except (TimeoutError, nats.errors.Error) as exc:
                deadline = await self._resend_later(deadline, exc)
                if deadline is None:
                    return
                continue
            error = answer.get("error")
            if error is not None:
                if error.get("err_code") in (WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID):
                    await self._deposed(head)
                    return
                if error.get("code") in (503, 408, 504):  # no responders / timeout: the stream elects
                    deadline = await self._resend_later(deadline, JournalError(str(error)))
                    if deadline is None:
                        return
                    continue
                self._fail(JournalError(f"{self.name}: publish refused: {error}"))
                return
            if answer.get("seq") != head.msg_seq:
                self._fail(
                    JournalError(
                        f"{self.name}: the stream stored message {head.msg_seq} as {answer.get('seq')}: "
                        "another writer or a changed stream"
                    )
                )
                return
            deadline = None
            store.outgoing.popleft()
            with store.lock:
                store.acked = max(store.acked, head.last_record)
                store.durable = max(store.durable, min(store.acked, store.wanted))
            store.notify()
            store.settle_calls()

    async def _resend_later(self, deadline: float | None, exc: BaseException) -> float | None:
        """The head's acknowledgement did not come: send the whole window again (same ids) after a
        pause, until the deadline; None once the journal failed."""
        store = self._store
        now = time.monotonic()
        if deadline is None:
            deadline = now + store.factory.ack_deadline_s
        if now >= deadline:
            self._fail(JournalError(f"{self.name}: no acknowledgement within the deadline: {exc!r}"))
            return None
        for o in store.outgoing:
            if o.future is not None and not o.future.done():
                o.future.cancel()
            o.future = None
        await asyncio.sleep(0.1)
        return deadline

    async def _deposed(self, head: _Outgoing) -> None:
        store = self._store
        expected = head.msg_seq - 1
        last = -1
        with contextlib.suppress(Exception):
            msg = await self._client.js.get_msg(store.stream, subject=store.subject)
            if msg.data:
                first, recs = decode_message(msg.data)
                last = first + len(recs) - 1
        with store.lock:
            before = head.last_record
            for s in store.segments:
                if s.msg_seq == head.msg_seq:
                    before = s.first - 1
        err = FencedError(
            f"{self.name}: append after {before} refused by the stream: another writer appended "
            f"(stream message {expected} is no longer the last; the journal's last record is {last})",
            expected=before,
            last=last,
        )
        self._fail(err)

    def _fail(self, err: JournalError) -> None:
        store = self._store
        with store.lock:
            if store.failure is None:
                store.failure = err
        for o in store.outgoing:
            if o.future is not None and not o.future.done():
                o.future.cancel()
        store.outgoing.clear()
        store.notify()
        store.settle_calls()

    async def _wait_durable(self, target: int) -> int:  # on the client loop
        return await _wait_durable(self._store, target)

    async def flush(self) -> int:
        target = self._store.last
        if self._store.durable >= target and self._store.failure is None:
            return self._store.durable
        return await self._client.acall(self._wait_durable(target))

    def when_durable(self, target: int, callback: DurableCallback) -> None:
        """Ask for the records up to `target` to be durable, without waiting: `callback(durable_seq,
        None)` runs once they are (their message and every earlier one acknowledged), or
        `callback(durable_seq, error)` once the journal failed or was fenced (a refused publish fails
        every later one too). Callbacks run in the order of their targets, on the client loop: keep
        them short (hand over with call_soon_threadsafe). Requests made from one thread after its
        write_after calls follow those publishes (both go through the client loop in order). The
        host's journal thread uses it to keep several batches in flight instead of one sync each."""
        self._client.soon(self._request_durable, target, callback)

    def _request_durable(self, target: int, callback: DurableCallback) -> None:  # on the client loop
        store = self._store
        calls = store.durable_calls
        if calls and calls[-1][0] > target:  # keep them sorted by target (one writer asks in order)
            items = sorted([*calls, (target, callback)], key=lambda c: c[0])
            calls.clear()
            calls.extend(items)
        else:
            calls.append((target, callback))
        with store.lock:
            store.wanted = max(store.wanted, target)
            store.durable = max(store.durable, min(store.acked, store.wanted))
        store.notify()
        store.settle_calls()

    def sync(self) -> int:
        target = self._store.last
        if self._store.durable >= target and self._store.failure is None:
            return self._store.durable
        return self._client.call(self._wait_durable(target), timeout=self._store.factory.ack_deadline_s + 30)

    # --- reading -------------------------------------------------------------------------------

    def read(
        self, from_seq: int, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[Record]:
        return read_held(self._store, self.name, from_seq, max_records, max_bytes)

    def follow(
        self, from_seq: int, *, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> AsyncIterator[list[Record]]:
        return follow_durable(self, self._signal, from_seq, max_records, max_bytes)

    # --- maintenance ---------------------------------------------------------------------------

    def prune_before(self, seq: int) -> int:
        store = self._store
        with store.lock:
            if self._closed:
                raise JournalError(f"{self.name}: journal is closed")
            # whole acknowledged messages below seq, never the last message
            drop = 0
            upto_msg = 0
            segs = list(store.segments)
            for i, s in enumerate(segs):
                if s.last >= seq or i == len(segs) - 1 or s.last > store.durable:
                    break
                drop += s.count
                upto_msg = segs[i + 1].msg_seq
        if drop == 0:
            return 0
        self._client.call(self._client.js.purge_stream(store.stream, seq=upto_msg))
        with store.lock:
            while store.segments and store.segments[0].msg_seq < upto_msg:
                store.segments.popleft()
            del store.records[:drop]
            store.first += drop
        return drop

    def truncate_after(self, seq: int) -> int:
        store = self._store
        if self._closed:
            raise JournalError(f"{self.name}: journal is closed")
        self.sync()
        with store.lock:
            last = store.last
            if seq >= last:
                return 0
            if seq < store.first - 1:
                raise JournalGapError.truncate_pruned(self.name, seq, store.first, last)
            doomed = [s for s in store.segments if s.last > seq]
            keep_part = [s for s in doomed if s.first <= seq]
            prefix = (
                store.records[keep_part[0].first - store.first : seq - store.first + 1] if keep_part else []
            )
            prefix_first = keep_part[0].first if keep_part else 0
        self._client.call(self._truncate(doomed, seq, prefix_first, prefix))
        return last - seq

    async def _truncate(
        self, doomed: list[_Segment], seq: int, prefix_first: int, prefix: list[bytes]
    ) -> None:
        store = self._store
        js = self._client.js
        await self._store.factory._set_start(store, seq + 1)  # if the stream ends up empty
        for s in reversed(doomed):
            await js.delete_msg(store.stream, s.msg_seq)
        info = await js.stream_info(store.stream)
        lseq = info.state.last_seq
        segments = [s for s in store.segments if s.last <= seq and s not in doomed]
        if prefix:
            ack = await js.publish(
                store.subject,
                encode_message(prefix_first, prefix),
                headers={EXPECTED_LAST_SEQ: str(lseq)},
            )
            lseq = ack.seq
            segments.append(_Segment(ack.seq, prefix_first, len(prefix)))
        with store.lock:
            del store.records[seq - store.first + 1 :]
            store.segments = deque(segments)
            store.last_msg_seq = lseq
            store.durable = min(store.durable, seq)
            store.acked = min(store.acked, seq)
            store.wanted = min(store.wanted, seq)

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._store.failure is None:
                self.sync()
        finally:
            self._closed = True
            with self._store.lock:
                if self._signal in self._store.signals:
                    self._store.signals.remove(self._signal)
            self._signal.notify(close=True)


async def _wait_durable(store: _Stream, target: int) -> int:
    """On the client loop: ask for records up to target to be durable and wait until they are."""
    signal = DurableSignal()
    with store.lock:
        store.signals.append(signal)
        store.wanted = max(store.wanted, target)
        store.durable = max(store.durable, min(store.acked, store.wanted))
    store.notify()
    store.settle_calls()
    try:
        while True:
            with store.lock:
                if store.durable >= target:
                    return store.durable
                if store.failure is not None:
                    raise _again(store.failure)
            await signal.wait_past(store.durable, lambda: store.durable if store.failure is None else 1 << 62)
    finally:
        with store.lock, contextlib.suppress(ValueError):
            store.signals.remove(signal)


def _again(err: JournalError) -> JournalError:
    """A fresh exception carrying the stored failure (each raise gets its own traceback)."""
    if isinstance(err, FencedError):
        return FencedError(str(err), expected=err.expected, last=err.last)
    return JournalError(str(err))


# --- a follower's reader ------------------------------------------------------------------------------


class JetStreamReader:
    """A JournalReader kept hot by an ordered push consumer on the stream (a follower's copy).
    Everything delivered was stored by the stream, so durable_seq == last_seq."""

    def __init__(self, store: _Stream) -> None:
        self._store = store
        self._client = store.factory.client
        self.name = store.factory.location(store.name)
        self._signal = DurableSignal()
        store.signals.append(self._signal)
        self._sub: Any = None
        self.error: JournalError | None = None

    @property
    def first_seq(self) -> int:
        return self._store.first

    @property
    def last_seq(self) -> int:
        return self._store.last

    @property
    def durable_seq(self) -> int:
        return self._store.durable

    def read(
        self, from_seq: int, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> list[Record]:
        return read_held(self._store, self.name, from_seq, max_records, max_bytes)

    def follow(
        self, from_seq: int, *, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> AsyncIterator[list[Record]]:
        return follow_durable(self, self._signal, from_seq, max_records, max_bytes)

    def release_before(self, seq: int) -> int:
        """Drop the local copy of the records below `seq` (the follower applied them and holds a
        snapshot past them; the stream keeps them until the leader prunes it), always keeping the
        last record received (the consumer's redeliveries are recognised by it). Returns how many
        were dropped. Without it a hot follower's copy would grow with the stream."""
        store = self._store
        with store.lock:
            drop = min(seq, store.last) - store.first
            if drop <= 0:
                return 0
            del store.records[:drop]
            store.first += drop
            while store.segments and store.segments[0].last < store.first:
                store.segments.popleft()
        return drop

    async def _start(self, until_msg: int) -> None:
        store = self._store
        caught_up = asyncio.Event()
        if until_msg == 0:
            caught_up.set()

        async def on_msg(msg: Msg) -> None:
            try:
                first, recs = decode_message(msg.data)
            except JournalError as exc:
                self.error = exc
                return
            mseq = msg.metadata.sequence.stream
            with store.lock:
                if not recs:  # the stream's opening marker
                    store.last_msg_seq = max(store.last_msg_seq, mseq)
                    if mseq >= until_msg:
                        caught_up.set()
                    return
                if store.records and first <= store.last:  # redelivered after a consumer reset
                    skip = store.last - first + 1
                    first, recs = first + skip, recs[skip:]
                if not store.records:
                    store.first = first
                elif first != store.last + 1:  # pruned before we got there: start again there
                    store.records.clear()
                    store.segments.clear()
                    store.first = first
                if recs:
                    store.records.extend(recs)
                    store.segments.append(_Segment(mseq, first, len(recs)))
                store.durable = store.last
                store.last_msg_seq = mseq
            store.notify()
            if mseq >= until_msg:
                caught_up.set()

        self._sub = await self._client.js.subscribe(
            store.subject, cb=on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        await asyncio.wait_for(caught_up.wait(), 60)

    def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                self._client.call(self._sub.unsubscribe(), timeout=10)
            self._sub = None
        self._signal.notify(close=True)


# --- the factory --------------------------------------------------------------------------------------


class JetStreamJournals:
    """JournalFactory of JetStreamJournals for one service (`service` names its streams)."""

    def __init__(
        self,
        servers: Sequence[str] = ("nats://127.0.0.1:4222",),
        *,
        service: str,
        prefix: str = "ostrakon",
        replicas: int = 1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ack_timeout_s: float = 2.0,
        ack_deadline_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.servers = list(servers)
        self.service = service
        self.prefix = prefix
        self.replicas = replicas
        self.max_message_bytes = max_message_bytes
        self.ack_timeout_s = ack_timeout_s
        self.ack_deadline_s = ack_deadline_s
        self._connect_timeout_s = connect_timeout_s
        self._client: _ClientLoop | None = None
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> _ClientLoop:
        with self._lock:
            if self._client is None:
                self._client = _ClientLoop(
                    self.servers, name=f"journal-{self.service}", connect_timeout_s=self._connect_timeout_s
                )
            return self._client

    def stream(self, name: str) -> str:
        return stream_name(self.prefix, self.service, name)

    def subject(self, name: str) -> str:
        return subject_name(self.prefix, self.service, name)

    def location(self, name: str) -> str:
        return f"nats:{self.stream(name)}"

    # --- open ------------------------------------------------------------------------------------

    def open(self, name: str, *, start_seq: int = 1, durable_through: int = 0) -> JetStreamJournal:
        if start_seq < 1:
            raise ValueError(f"start_seq must be at least 1, not {start_seq}")
        client = self.client
        store = self._streams.get(name)
        if store is not None:
            # Another handle of this process is open on it (a new leader in tests): what it had not
            # made durable does not count; it and this one share the state (fencing each other).
            with contextlib.suppress(JournalError):
                if store.durable < store.last and store.failure is None:
                    client.call(_wait_durable(store, store.last))
            if store.failure is None:
                if store.last < durable_through:
                    raise self._damaged(name, store.last, durable_through, f"the stream ends at {store.last}")
                return JetStreamJournal(store, created=False)
            del self._streams[name]
        store = _Stream(self, name)
        created = client.call(self._load_retrying(store, start_seq), timeout=self.ack_deadline_s + 60)
        if store.last < durable_through:
            problem = "there is no journal" if created else f"the stream ends at record {store.last}"
            raise self._damaged(name, store.last, durable_through, problem)
        self._streams[name] = store
        return JetStreamJournal(store, created=created)

    def ensure_stream(self, name: str, *, start_seq: int = 1) -> bool:
        """Create journal `name`'s stream if it does not exist (a follower that starts before any
        leader wrote, so that open_reader finds it); True when this call created it."""
        store = _Stream(self, name)
        created, _ = self.client.call(
            self._retrying(lambda: self._ensure(store, start_seq)), timeout=self.ack_deadline_s + 60
        )
        return created

    def open_reader(self, name: str) -> JetStreamReader:
        """A follower's hot copy of journal `name` (it must exist), caught up to the stream's end."""
        client = self.client
        store = _Stream(self, name)

        async def position() -> int:
            info = await client.js.stream_info(store.stream)
            start_seq = _description_start(info.config.description) or 1
            store.first = start_seq
            store.durable = start_seq - 1
            return await self._last_msg_seq(store) if info.state.messages else 0

        async def start() -> JetStreamReader:
            until = await self._retrying(position)
            reader = JetStreamReader(store)
            await reader._start(until)
            return reader

        return client.call(start(), timeout=self.ack_deadline_s + 90)

    async def _ensure(self, store: _Stream, start_seq: int) -> tuple[bool, int]:
        """Create the stream if missing; (created, the start sequence for an empty stream)."""
        js = self.client.js
        try:
            info = await js.stream_info(store.stream)
            return False, _description_start(info.config.description) or 1
        except nats.js.errors.NotFoundError:
            pass
        cfg = StreamConfig(
            name=store.stream,
            subjects=[store.subject],
            description=json.dumps({"journal": store.name, "start_seq": start_seq}),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            discard=DiscardPolicy.OLD,
            max_msg_size=-1,
            duplicate_window=120.0,
            allow_direct=True,
        )
        try:
            await js.add_stream(cfg)
        except nats.js.errors.BadRequestError:  # created meanwhile by another process
            info = await js.stream_info(store.stream)
            return False, _description_start(info.config.description) or 1
        # An empty first message: every data message then names an expected last sequence >= 1
        # (the server does not check an expected last sequence of 0).
        await js.publish(store.subject, encode_message(start_seq, []), headers={MSG_ID: f"{store.stream}-0"})
        return True, start_seq

    async def _set_start(self, store: _Stream, start_seq: int) -> None:
        js = self.client.js
        info = await js.stream_info(store.stream)
        cfg = info.config
        cfg.description = json.dumps({"journal": store.name, "start_seq": start_seq})
        await js.update_stream(cfg)

    async def _last_msg_seq(self, store: _Stream) -> int:
        msg = await self.client.js.get_msg(store.stream, subject=store.subject)
        return int(msg.seq or 0)

    async def _retrying(self, step: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """step(), again after a timeout or while the stream has no leader (a stream just created
        or that just lost its leader), until ack_deadline_s: as _load_retrying does for a writer."""
        deadline = time.monotonic() + self.ack_deadline_s
        while True:
            try:
                return await step()
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError,
            ):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _load_retrying(self, store: _Stream, start_seq: int) -> bool:
        """_load, again after a timeout or while the stream has no leader (say just after losing
        one), until ack_deadline_s."""
        deadline = time.monotonic() + self.ack_deadline_s
        while True:
            try:
                return await self._load(store, start_seq)
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError,
            ):
                if time.monotonic() >= deadline:
                    raise
                store.records.clear()
                store.segments.clear()
                await asyncio.sleep(0.2)

    async def _load(self, store: _Stream, start_seq: int) -> bool:
        """Create or load the stream into store (every message, to its end); True when created."""
        created, base = await self._ensure(store, start_seq)
        js = self.client.js
        info = await js.stream_info(store.stream)
        store.first = base
        store.durable = store.acked = store.wanted = base - 1
        store.last_msg_seq = info.state.last_seq
        if info.state.messages == 0:
            return created
        until = await self._last_msg_seq(store)
        sub = await js.subscribe(store.subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                msg = await sub.next_msg(timeout=30)
                first, recs = decode_message(msg.data)
                mseq = msg.metadata.sequence.stream
                if not recs:  # the stream's opening marker
                    pass
                elif not store.records:
                    store.first = first
                elif first != store.last + 1:
                    raise JournalError(
                        f"{self.location(store.name)}: message {mseq} starts at record {first}, "
                        f"expected {store.last + 1}"
                    )
                if recs:
                    store.records.extend(recs)
                    store.segments.append(_Segment(mseq, first, len(recs)))
                if mseq >= until:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        store.durable = store.acked = store.wanted = store.last
        store.last_msg_seq = max(store.last_msg_seq, until)
        return created

    def _damaged(self, name: str, kept: int, needed: int, problem: str) -> JournalDamagedError:
        where = self.location(name)
        return JournalDamagedError.lost(where, location=where, kept=kept, needed=needed, problem=problem)

    # --- maintenance -----------------------------------------------------------------------------

    def quarantine(self, name: str) -> str:
        self._streams.pop(name, None)
        return self.client.call(self._quarantine(name))

    async def _quarantine(self, name: str) -> str:
        js = self.client.js
        src = self.stream(name)
        try:
            info = await js.stream_info(src)
        except nats.js.errors.NotFoundError:
            return f"{self.location(name)} (nothing to quarantine)"
        n = 1
        existing = {s.config.name for s in await js.streams_info()}
        while f"{src}_DAMAGED_{n}" in existing:
            n += 1
        dst = f"{src}_DAMAGED_{n}"
        dst_subject = f"{self.subject(name)}.damaged.{n}"
        cfg = info.config
        cfg.name = dst
        cfg.subjects = [dst_subject]
        await js.add_stream(cfg)
        if info.state.messages:
            until = await self._last_msg_seq(_Stream(self, name))
            sub = await js.subscribe(
                self.subject(name), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            try:
                while True:
                    msg = await sub.next_msg(timeout=30)
                    await js.publish(dst_subject, msg.data)
                    if msg.metadata.sequence.stream >= until:
                        break
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        await js.delete_stream(src)
        return f"{self.location(name)} moved to nats:{dst}"

    def delete_streams(self) -> None:
        """Delete every stream of this service, quarantined ones and its snapshot buckets included
        (tests, tools)."""

        async def go() -> None:
            js = self.client.js
            head = stream_name(self.prefix, self.service, "")
            for s in await js.streams_info():  # an object store bucket's stream is OBJ_<bucket>
                if s.config.name and s.config.name.removeprefix("OBJ_").startswith(head):
                    with contextlib.suppress(Exception):
                        await js.delete_stream(s.config.name)

        self.client.call(go())

    def forget(self, name: str) -> None:
        """Drop this process's state of journal `name`: the next open loads it from the stream
        (a member that leads again after a term as follower or a deposition)."""
        self._streams.pop(name, None)

    def close(self) -> None:
        """Close the connection (after the journals were closed)."""
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        pumps = [s.pump for s in self._streams.values() if s.pump is not None]

        async def cancel() -> None:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

        with contextlib.suppress(Exception):
            client.call(cancel(), timeout=10)
        client.close()


def _description_start(description: str | None) -> int:
    if not description:
        return 0
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return int(json.loads(description).get("start_seq", 0))
    return 0


if TYPE_CHECKING:  # mypy checks that the backend implements the interface
    _factory: JournalFactory = JetStreamJournals(service="x")
    _journal: Journal = _factory.open("x")
