"""Snapshot stores: the Snapshots interface on the file and the memory store (round trip, keep-N
pruning, replacing a sequence, refusing a negative one); the file store's own cases: corrupt newest
falls back, empty store, leftover tmp files, atomic save."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from services.common.snapshots import HEAD, FileSnapshotStore, MemorySnapshotStore, Snapshots, SnapshotStore

STORES: dict[str, Callable[[Path, int], Snapshots]] = {
    "file": lambda d, keep: FileSnapshotStore(d, keep=keep),
    "memory": lambda d, keep: MemorySnapshotStore(keep=keep),
}


@pytest.mark.parametrize("kind", STORES)
def test_the_snapshots_interface(tmp_path: Path, kind: str) -> None:
    store = STORES[kind](tmp_path / "snaps", 2)
    assert store.latest() is None and store.list() == []
    store.save(5, b"five")
    assert store.latest() == (5, b"five")
    store.save(3, b"three")  # older, but only two are stored: kept
    assert store.list() == [3, 5]
    store.save(9, b"")
    assert store.list() == [5, 9] and store.latest() == (9, b"")
    store.save(1, b"old")  # older than the kept ones
    assert store.list() == [5, 9]
    store.save(9, b"nine")  # the same sequence again replaces it
    assert store.latest() == (9, b"nine")
    with pytest.raises(ValueError):
        store.save(-1, b"x")
    with pytest.raises(ValueError):
        STORES[kind](tmp_path / "other", 0)
    assert store.fork_safe is (kind == "file")  # a forked child's save reaches the parent only on disk


def test_the_old_name_is_the_file_store() -> None:
    assert SnapshotStore is FileSnapshotStore


def snap_path(d: Path, seq: int) -> Path:
    return d / f"{seq:020d}.snap"


def test_empty_directory(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.latest() is None
    assert store.list() == []


def test_save_latest_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(5, b"five")
    assert store.latest() == (5, b"five")
    store.save(9, b"")
    assert store.latest() == (9, b"")
    store.save(12, bytes(range(256)) * 1000)
    assert store.latest() == (12, bytes(range(256)) * 1000)
    assert store.list() == [5, 9, 12]
    assert snap_path(tmp_path, 12).exists()
    assert SnapshotStore(tmp_path).latest() == (12, bytes(range(256)) * 1000)  # another instance


def test_keep_n_prunes_the_oldest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    for seq in (1, 2, 3, 10, 7):
        store.save(seq, f"s{seq}".encode())
    assert store.list() == [7, 10]  # 7 is newer than 3 by sequence even though it came last
    assert store.latest() == (10, b"s10")
    store.save(3, b"old")  # older than the kept ones: removed again at once
    assert store.list() == [7, 10]
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path, keep=0)


def test_same_sequence_is_replaced(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(4, b"first")
    store.save(4, b"second")
    assert store.list() == [4]
    assert store.latest() == (4, b"second")


@pytest.mark.parametrize(
    "damage",
    ["flip_data", "truncate_data", "truncate_header", "empty", "bad_magic", "wrong_seq", "bad_version"],
)
def test_corrupt_newest_falls_back_to_an_older_one(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    store.save(10, b"ten" * 100)
    store.save(20, b"twenty" * 100)
    path = snap_path(tmp_path, 20)
    raw = bytearray(path.read_bytes())
    if damage == "flip_data":
        raw[HEAD.size + 7] ^= 1
    elif damage == "truncate_data":
        del raw[-1]
    elif damage == "truncate_header":
        del raw[HEAD.size - 3 :]
    elif damage == "empty":
        raw.clear()
    elif damage == "bad_magic":
        raw[0] ^= 0xFF
    elif damage == "wrong_seq":
        raw[12] ^= 1  # the sequence field: the file holds another sequence than its name says
    elif damage == "bad_version":
        raw[8] = 99
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="services.common.snapshots"):
        assert store.latest() == (10, b"ten" * 100)
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert store.list() == [10, 20]  # reported, not deleted


def test_all_corrupt_gives_none(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(1, b"a")
    snap_path(tmp_path, 1).write_bytes(b"junk")
    assert store.latest() is None


def test_leftover_tmp_files_are_ignored(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(3, b"three")
    # a save that died before its rename (this process: it might still be running, so kept)
    mine = tmp_path / f".{50:020d}.{os.getpid()}.1.tmp"
    mine.write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a snapshot")
    assert store.list() == [3]
    assert store.latest() == (3, b"three")
    assert SnapshotStore(tmp_path).list() == [3]
    assert mine.exists()


def test_tmp_files_of_dead_processes_are_removed_on_open(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".{7:020d}.{pid}.123.tmp"
    stale.write_bytes(b"partial")
    store = SnapshotStore(tmp_path)
    assert not stale.exists()
    assert store.latest() is None


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SnapshotStore(tmp_path)
    store.save(1, b"good")

    def failing_fsync(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.save(2, b"never")
    monkeypatch.undo()
    assert store.list() == [1]
    assert store.latest() == (1, b"good")
    assert [p.name for p in tmp_path.iterdir()] == [snap_path(tmp_path, 1).name]  # no tmp left


def test_negative_sequence_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path).save(-1, b"x")
