"""`value`: the decorator of the exchange's plain value types (commands, events, views).

A value is a slotted dataclass that the type checker treats as frozen (assigning a field is an error
under mypy strict), built without frozen's run-time guard: a frozen dataclass's __init__ sets each
field through object.__setattr__, several times the cost of a plain assignment (an order's 23-field
view costs 36k instructions frozen, under 10k plain), and these are built on the hot paths (one per
journaled command and settled event in accounts, one per order shown). Equality compares the fields;
values are not hashable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    """Frozen to the type checker, a plain slotted dataclass at run time."""
    return dataclass(slots=True)(cls)
