"""Point-in-time recovery without a database: retention of shipped binary logs (a log goes once
no restore inside the window can need it, never before), a site's window and current RPO, and
the instants ``--to`` accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from jerp_jobs.errors import InvalidInput
from jerp_jobs.freshness import pitr_window
from jerp_jobs.pitr import DAY, FolderArchive, iso_utc, needed_from, parse_instant, prune

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


def test_the_window_runs_from_the_oldest_usable_base_to_the_newest_log_shipped() -> None:
    bases = [_base("_a", 3, 9), _base("_a", 12, 2), _base("_a", 20, 1)]
    shipped = {"at": NOW - 100, "oldest": "binlog.000010", "newest": {"name": "binlog.000031", "closed_at": NOW - 130}}
    window = pitr_window(bases, shipped, now=NOW)
    # the base in log 3 lost its logs to retention: the window starts at the next one
    assert window == {"state": "ok", "bases": 2, "from": NOW - 2 * DAY, "to": NOW - 130, "rpo_s": 130.0,
                      "newest_base": NOW - 1 * DAY}
    assert pitr_window([], shipped, now=NOW)["state"] == "no base"
    none_shipped = pitr_window(bases, None, now=NOW)
    assert none_shipped["state"] == "no logs shipped since the base" and none_shipped["rpo_s"] is None


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-04 16:59:30", "2026-12-04T16:59:30Z"),
    ("2026-12-04T16:59:30Z", "2026-12-04T16:59:30Z"),
    ("2026-12-04 16:59:30 UTC", "2026-12-04T16:59:30Z"),
    ("2026-12-04 17:59:30+01:00", "2026-12-04T16:59:30Z"),
    ("2026-12-04 16:59:30 Europe/Lisbon", "2026-12-04T16:59:30Z"),  # WET in winter: UTC+0
    ("2026-12-04 13:59:30 America/Sao_Paulo", "2026-12-04T16:59:30Z"),  # UTC-3
    ("2026-10-25 01:30:00+01:00", "2026-10-25T00:30:00Z"),  # the hour Lisbon repeats, first time
    ("2026-10-25 01:30:00+00:00", "2026-10-25T01:30:00Z"),  # and the second
])
def test_an_instant_is_utc_unless_its_zone_is_given(text: str, expected: str) -> None:
    assert iso_utc(parse_instant(text, now=NOW)) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("2026-12-04", "YYYY-MM-DD HH:MM:SS"),
    ("2026-12-04T16", "YYYY-MM-DD HH:MM:SS"),
    ("2026-12-04 16:59:30+01:00 UTC", "both given"),
    ("2026-10-25 01:30:00 Europe/Lisbon", "happens twice"),
    ("2026-03-29 01:30:00 Europe/Lisbon", "does not exist"),
    ("2026-02-30 10:00:00", "not a date and time"),
    ("04/12/2026 16:59", "YYYY-MM-DD HH:MM:SS"),
    ("2026-12-04 16:59:30.5", "whole seconds"),
    ("2026-12-04 16:59:30 Nowhere/City", "unknown time zone"),
    ("2026-12-04 16:59:30+01:00 Europe/Lisbon", "both given"),
    ("2027-12-04 16:59:30", "in the future"),
])
def test_a_bad_instant_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        parse_instant(text, now=NOW)


def test_a_replay_without_room_in_the_sites_volume_is_refused_before_anything(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from jerp_jobs.operations import pointintime
    from jerp_jobs.pitr import PitrError
    from jerp_jobs.settings import load_settings

    (tmp_path / "sites").mkdir()
    settings = load_settings(_env_file=None, executor="local", bench_dir=tmp_path, sites_dir=tmp_path / "sites",
                             s3_bucket="backups")
    plan = {"base": {}, "source": "a.example.com", "to": "2026-12-04T16:59:30Z", "backup": "20261204_030000",
            "space_needed": 10**18}
    ctx = SimpleNamespace(settings=settings, site="a.example.com", params={"to": plan["to"]},
                          job=SimpleNamespace(id="0123456789ab", result={"pitr": plan}), runtime=None)
    with pytest.raises(PitrError, match="free space first. Nothing was changed"):
        pointintime.replay(ctx)  # type: ignore[arg-type]
    assert list((tmp_path / "sites").iterdir()) == []
