"""The exchange's services.

The hot domain modules (ACCELERATED) may be compiled with mypyc by scripts/build_accel.py into C
extensions beside their sources; they are the same Python code, about twice as fast. The compiled
set is used only when every one of them is present and newer than its source; otherwise (or with
EXCHANGE_PURE_PYTHON=1) all of them load from source. Mixing is never allowed: compiled modules
reach into each other's classes directly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ACCELERATED = (
    "services.common.enums",
    "services.common.units",
    "services.common.markets",
    "services.matching.model",
    "services.matching.book",
    "services.matching.engine",
)

_ROOT = Path(__file__).resolve().parent.parent


def _source(name: str) -> Path:
    return _ROOT.joinpath(*name.split(".")).with_suffix(".py")


def _compiled(name: str) -> Path | None:
    src = _source(name)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = src.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def compiled_is_usable() -> bool:
    """True when every accelerated module has a compiled build newer than its source."""
    if os.environ.get("EXCHANGE_PURE_PYTHON") == "1":
        return False
    for name in ACCELERATED:
        so = _compiled(name)
        if so is None or so.stat().st_mtime < _source(name).stat().st_mtime:
            return False
    # mypyc puts the runtime its modules share in a top-level module beside the package.
    return any(_ROOT.glob("*__mypyc*"))


USING_COMPILED = compiled_is_usable()


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the accelerated modules from their .py files (used when the compiled set is unusable)."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ACCELERATED:
            return None
        src = _source(fullname)
        return importlib.util.spec_from_file_location(
            fullname, src, loader=importlib.machinery.SourceFileLoader(fullname, str(src))
        )


if not USING_COMPILED and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceFirst())
elif USING_COMPILED and str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))
