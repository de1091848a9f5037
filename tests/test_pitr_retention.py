"""Retention of shipped binary logs: a log goes once no restore inside the window can need it,
never before (unit tests on a folder archive; no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jerp_jobs.pitr import DAY, FolderArchive, needed_from, prune

NOW = 1_800_000_000.0


def _archive(tmp_path: Path, closed: dict[int, float]) -> FolderArchive:
    archive = FolderArchive(tmp_path / "archive")
    for number, closed_at in closed.items():
        src = tmp_path / f"binlog.{number:06d}"
        src.write_bytes(b"log %d" % number)
        archive.add({"name": src.name, "size": src.stat().st_size, "sha256": "x", "closed_at": closed_at}, src)
    return archive


def _base(database: str, file_number: int, dumped_days_ago: float) -> dict:
    return {"server": "db", "database": database, "dumped_at": NOW - dumped_days_ago * DAY,
            "coordinates": {"file": f"binlog.{file_number:06d}", "position": 4}}


def test_the_newest_base_before_the_window_start_decides_per_database() -> None:
    bases = [_base("_a", 10, 9), _base("_a", 20, 7.5), _base("_a", 30, 6), _base("_b", 25, 8), _base("_b", 40, 1)]
    assert needed_from(bases, now=NOW, window_days=7) == 20  # _a: the base of 7.5 days ago; _b: 25
    assert needed_from([_base("_c", 50, 2)], now=NOW, window_days=7) == 50  # only young bases: the oldest
    assert needed_from([], now=NOW, window_days=7) is None


def test_prune_removes_only_logs_before_the_needed_one_and_older_than_the_window(tmp_path: Path) -> None:
    closed = {n: NOW - (30 - n) * DAY / 2 for n in range(1, 30)}  # one log every half day
    archive = _archive(tmp_path, closed)
    bases = [_base("_a", 12, (30 - 12) / 2 + 0.1)]  # taken 9.1 days ago, standing in log 12
    removed = prune(archive, bases, now=NOW, window_days=7)
    assert removed == [f"binlog.{n:06d}" for n in range(1, 12)]
    left = [e["name"] for e in archive.index()]
    assert left[0] == "binlog.000012" and len(left) == 29 - 11
    assert not (tmp_path / "archive" / "binlog.000011").exists() and (tmp_path / "archive" / "binlog.000012").exists()


@pytest.mark.parametrize("days_ago", [0.01, 3])
def test_recent_logs_stay_even_when_no_base_needs_them(tmp_path: Path, days_ago: float) -> None:
    archive = _archive(tmp_path, {1: NOW - days_ago * DAY, 2: NOW - days_ago * DAY + 60})
    assert prune(archive, [], now=NOW, window_days=7) == []
    assert len(archive.index()) == 2


def test_without_any_base_logs_older_than_the_window_go(tmp_path: Path) -> None:
    archive = _archive(tmp_path, {1: NOW - 8 * DAY, 2: NOW - 6 * DAY})
    assert prune(archive, [], now=NOW, window_days=7) == ["binlog.000001"]
