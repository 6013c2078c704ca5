"""Running h2load (Debian's nghttp2-client) against a gRPC method and reading its summary."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any


def h2load(url: str, data: Path, clients: int, seconds: float, headers: list[str]) -> dict[str, Any]:
    """POSTs the gRPC-framed request in `data` from `clients` connections (one stream each) for
    `seconds`; h2load cannot read gRPC trailers, so callers count successes themselves."""
    cmd = ["h2load", "-c", str(clients), "-m", "1", "-t", "1", "-D", str(max(1, round(seconds)))]
    cmd += ["-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for h in headers:
        cmd += ["-H", h]
    proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60)
    out = proc.stdout + proc.stderr
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if rps is None or done is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    return {
        "requests_per_s": float(rps.group(1)),
        "requests_done": int(done.group(1)),
        "http_succeeded": int(done.group(2)),
        "mean_latency": mean.group(1) if mean else "",
    }
