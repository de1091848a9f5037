"""The set of sites with backup records (jerp:backup-sites) that ``jerpctl backups`` and
``jerpctl sites`` read instead of a SCAN: kept where backups are recorded, rebuilt from a SCAN
when it was never built, and read inside Redis by scripts (a real Redis here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from jerp_jobs import keys
from jerp_jobs.freshness import LOCAL, OFFSITE, index_site, rebuild_site_index, sites_freshness
from jerp_jobs.operations.offsite import record_offsite

NOW = 1_800_000_000.0


def _manifest(site: str, stamp: str) -> dict[str, Any]:
    return {"site": site, "timestamp": stamp, "utc_timestamp": stamp, "verified": True,
            "artifacts": [{"path": f"{site}/{stamp}-database.sql.gz", "size": 10}]}


def test_sites_recorded_before_the_index_existed_are_found_by_the_rebuild(real_redis: redis.Redis) -> None:
    real_redis.zadd(OFFSITE + "a.example.com", {json.dumps(_manifest("a.example.com", "20270115_000000")): NOW - 7200})
    real_redis.zadd(LOCAL + "b.example.com", {json.dumps(_manifest("b.example.com", "20270115_010000")): NOW - 3600})
    index_site(real_redis, "b.example.com")  # a worker recorded one backup before any listing: not yet built
    rows = sites_freshness(real_redis, max_age_hours=26, now=NOW)
    assert [(r["site"], r["last_utc_timestamp"], r["stale"]) for r in rows] == [
        ("a.example.com", "20270115_000000", False), ("b.example.com", None, True)]
    assert rows[0]["last_at"] == NOW - 7200 and rows[0]["age_hours"] == 2.0
    assert real_redis.smembers(keys.BACKUP_SITES) == {b"", b"a.example.com", b"b.example.com"}


def test_a_recorded_copy_is_listed_without_a_scan_and_a_site_without_records_is_left_out(
        real_redis: redis.Redis) -> None:
    rebuild_site_index(real_redis)  # built (empty)
    record_offsite(real_redis, _manifest("c.example.com", "20270115_020000"))
    real_redis.zadd(OFFSITE + "hidden.example.com", {"{}": NOW})  # written behind the index's back
    index_site(real_redis, "pruned.example.com")  # its records were all pruned since
    rows = sites_freshness(real_redis, max_age_hours=26)
    assert [r["site"] for r in rows] == ["c.example.com"]
    assert rows[0]["last_utc_timestamp"] == "20270115_020000"


def test_local_mode_reads_the_newest_local_backup_of_many_sites_in_pages(real_redis: redis.Redis) -> None:
    rebuild_site_index(real_redis)
    pipe = real_redis.pipeline(transaction=False)
    for i in range(2500):
        site = f"s{i:04d}.example.com"
        pipe.zadd(LOCAL + site, {json.dumps(_manifest(site, "20270101_000000")): NOW - 10 * 3600,
                                 json.dumps(_manifest(site, "20270102_000000")): NOW - i})
        index_site(pipe, site)
    pipe.execute()
    rows = sites_freshness(real_redis, max_age_hours=26, now=NOW, offsite=False)
    assert len(rows) == 2500 and [r["site"] for r in rows] == sorted(r["site"] for r in rows)
    assert {r["last_utc_timestamp"] for r in rows} == {"20270102_000000"}
    assert rows[7]["last_at"] == NOW - 7 and all(r["where"] == "local" for r in rows)


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"maintenance_mode": 1}', True),
    (b'{"maintenance_mode": 0, "db_name": "x"}', False),
    (b"{}", False),
    (b'{"maintenance_mode": 1, "pad": "' + b"x" * 200_000 + b'"}', True),  # read past one chunk
    (b"[1]", None),
    (b"{not json", None),
    (b'{"a": "\xff"}', None),
    (None, None),
])
def test_the_maintenance_flag_is_read_as_frappe_reads_it(tmp_path: Path, content: bytes | None,
                                                          expected: bool | None) -> None:
    from jerp_jobs.freshness import _maintenance

    path = tmp_path / "site_config.json"
    if content is not None:
        path.write_bytes(content)
    assert _maintenance(str(path)) is expected
    assert _maintenance(str(tmp_path)) is None  # a folder where the file should be
