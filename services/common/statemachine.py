"""What a deterministic state machine offers the host (services.common.host)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

C = TypeVar("C")  # command message type
C_contra = TypeVar("C_contra", contravariant=True)


@dataclass
class Outcome:
    """What applying one command did. `journal` is False when the state did not change."""

    result: Any = None
    events: Sequence[bytes] = ()
    journal: bool = True
    # Optional routing key per event (accounts: the user id), handed to on_events hooks.
    keys: Sequence[int] = ()
    # Things to do once the command is durable (accounts: the matching commands to forward), handed
    # in order to the host's on_effects hooks. Not state: a restart rebuilds them from the journal.
    effects: Sequence[Any] = ()


class Machine(Protocol[C_contra]):
    """A deterministic state machine. No clock, randomness or I/O inside apply."""

    @property
    def applied_seq(self) -> int: ...  # last journaled command applied

    @property
    def event_seq(self) -> int: ...  # last event number produced

    def apply(self, seq: int, time_us: int, command: C_contra) -> Outcome: ...

    def snapshot(self) -> bytes: ...

    def state_hash(self) -> str: ...


@dataclass
class CodecSpec(Generic[C]):
    """How the host turns commands into journal records and back, and stamps their time."""

    encode: Callable[[C, int], bytes]  # (command, time_us) -> record (the record carries the time)
    decode: Callable[[bytes], tuple[C, int]]  # record -> (command, time_us)
