"""Regenerate the Python code for protos/ into gen/ (never edit gen/ by hand).

Usage: python scripts/gen_protos.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gen"


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *files,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print("protoc failed", file=sys.stderr)
        return int(rc)
    for pkg in {p.parent for p in OUT.rglob("*_pb2.py")}:
        d = pkg
        while d != OUT:
            (d / "__init__.py").touch()
            d = d.parent
    (OUT / "py.typed").touch()
    print(f"generated {len(files)} proto files into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
