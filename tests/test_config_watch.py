"""ConfigWatch: a changed configuration file is handed over once it loads; an unchanged one, or one
that no longer loads, is not (the running configuration stays)."""

from __future__ import annotations

import os
from pathlib import Path

from services.common.config_watch import ConfigWatch

BASE = Path(__file__).resolve().parent.parent / "deploy" / "exchange.toml"


def _touch_later(path: Path, text: str) -> None:
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later stamp, whatever the clock


def test_a_changed_file_is_handed_over_once_and_a_broken_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "exchange.toml"
    base = BASE.read_text()
    path.write_text(base)
    seen: list[object] = []
    watch = ConfigWatch(path, seen.append)
    assert watch.check() is None  # unchanged
    shard = (
        '\n[shards."matching-0"]\nlisten = "127.0.0.1:50061"\n'
        '\n[shards."matching-9"]\nlisten = "127.0.0.1:50069"\nmarkets = []\n'
    )
    _touch_later(path, base + shard)
    config = watch.check()
    assert config is not None and "matching-9" in config.shards
    assert watch.check() is None  # handed over once
    _touch_later(path, base + shard + "\n[[markets]\n")  # not TOML
    assert watch.check() is None
    _touch_later(path, base + shard + "\n[accounts]\nno_such_key = 1\n")  # not a configuration
    assert watch.check() is None
