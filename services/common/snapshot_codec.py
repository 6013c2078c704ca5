"""Encoding of snapshot state: plain data (dict, list, tuple, str, bytes, int, bool, None) only.

pickle is fast for large books, but loading arbitrary pickles runs code; the loader here refuses any
global, so a snapshot can only ever produce plain data.
"""

from __future__ import annotations

import io
import pickle
from typing import Any


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"snapshot refers to {module}.{name}: only plain data is allowed")


def dumps_plain(state: Any) -> bytes:
    return pickle.dumps(state, protocol=5)


def loads_plain(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()
