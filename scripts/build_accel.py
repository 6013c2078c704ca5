"""Compile the hot domain modules with mypyc (C extensions beside their sources).

    python scripts/build_accel.py [--clean]

Rebuilds only when a source is newer than its extension. Without a C compiler the exchange simply
runs the pure-Python modules (see services/__init__.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services import ACCELERATED, _compiled, _source  # noqa: E402


def clean() -> None:
    for name in ACCELERATED:
        so = _compiled(name)
        if so is not None:
            so.unlink()
    for p in ROOT.glob("*__mypyc*.so"):
        p.unlink()
    shutil.rmtree(ROOT / "build", ignore_errors=True)


def main() -> int:
    if "--clean" in sys.argv:
        clean()
        return 0
    stale = [
        n
        for n in ACCELERATED
        if (so := _compiled(n)) is None or so.stat().st_mtime < _source(n).stat().st_mtime
    ]
    if not stale:
        print("accelerated modules are up to date")
        return 0
    clean()
    files = [str(_source(n).relative_to(ROOT)) for n in ACCELERATED]
    mypyc = Path(sys.executable).with_name("mypyc")
    proc = subprocess.run([str(mypyc), *files], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        clean()
        print("mypyc build failed; the exchange runs the pure-Python modules", file=sys.stderr)
        print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
        return 0
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    print(f"compiled {len(files)} modules with mypyc")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
