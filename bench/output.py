"""How a benchmark reports: one JSON object on stdout, also written to --out FILE when given."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def emit(result: Mapping[str, Any], out: Path | str | None = None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
