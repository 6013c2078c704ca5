"""The order lifecycle as accounts tracks it: an explicit transition table (status, event) -> status.

    PENDING --accepted--> OPEN                (matching took the order)
    PENDING | OPEN | PARTIALLY_FILLED --fill--> PARTIALLY_FILLED
    OPEN | PARTIALLY_FILLED --accepted--> unchanged (a repeated acceptance)
    PENDING | OPEN | PARTIALLY_FILLED --done <reason>--> FILLED | CANCELED | EXPIRED | REJECTED

An order stays PARTIALLY_FILLED after its last fill until matching says it is done (FILLED). The four
done statuses are final: nothing leaves them. Settlement checks every matching event before it changes
anything (services.accounts.ledger, *_problem), so `transition` raising InvalidTransition means the
ledger itself is wrong: the host stops (fail-stop) rather than carry on with it.
"""

from __future__ import annotations

from typing import Final, NoReturn

from services.common.enums import (
    DONE_STATUS,
    FINAL_STATUSES,
    OPEN,
    PARTIALLY_FILLED,
    PENDING,
    STATUS_NAMES,
)

# The events of an order's life (what settlement tells it).
ACCEPTED: Final = "accepted"
FILL: Final = "fill"
# A done, per DoneReason.
DONE_EVENTS: Final = {reason: f"done ({STATUS_NAMES[status]})" for reason, status in DONE_STATUS.items()}

INITIAL: Final = PENDING  # what `place` creates
OPEN_STATUSES: Final = frozenset((PENDING, OPEN, PARTIALLY_FILLED))
FINAL: Final = FINAL_STATUSES

TRANSITIONS: Final[dict[tuple[int, str], int]] = {
    (PENDING, ACCEPTED): OPEN,
    (OPEN, ACCEPTED): OPEN,
    (PARTIALLY_FILLED, ACCEPTED): PARTIALLY_FILLED,
    **{(status, FILL): PARTIALLY_FILLED for status in OPEN_STATUSES},
    **{
        (status, DONE_EVENTS[reason]): final
        for status in OPEN_STATUSES
        for reason, final in DONE_STATUS.items()
    },
}


class InvalidTransition(RuntimeError):
    """An order was told something its status does not allow (a bug: see the module docstring)."""


def transition(status: int, event: str) -> int:
    """The status after `event`; InvalidTransition when the table has no such transition. (The
    ledger's hot paths inline it as `TRANSITIONS.get((status, event)) or invalid_transition(...)`:
    no status is 0.)"""
    return TRANSITIONS.get((status, event)) or invalid_transition(status, event)


def invalid_transition(status: int, event: str) -> NoReturn:
    raise InvalidTransition(f"an order that is {STATUS_NAMES.get(status, status)} cannot take {event!r}")
