"""Backup times in the site's own time zone (Frappe's ``now_datetime()``), kept in UTC beside it:
conversions, DST-ambiguous local times, retention and ``--at`` in UTC. Fast tests; the end-to-end
ones with the stand-in bench, MariaDB, Redis and S3 are in test_site_time_e2e.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

from jerp_jobs import bench
from jerp_jobs.errors import InvalidInput, OutputParseError
from jerp_jobs.operations import offsite as offsite_ops


def test_a_stamp_in_a_zone_far_from_utc_is_converted_to_utc() -> None:
    ahead = bench.backup_times("20261129_030001", "Pacific/Kiritimati")  # UTC+14
    assert ahead["utc_timestamp"] == "20261128_130001"
    assert ahead["taken_at_utc"] == "2026-11-28T13:00:01Z"
    assert ahead["taken_at_local"] == "2026-11-29T03:00:01+14:00"
    assert ahead["timestamp"] == "20261129_030001" and ahead["time_zone"] == "Pacific/Kiritimati"
    behind = bench.backup_times("20261129_030001", "America/Adak")  # UTC-10 in November
    assert behind["utc_timestamp"] == "20261129_130001"
    assert bench.backup_times("20261129_030001", "Asia/Kolkata")["utc_timestamp"] == "20261128_213001"


def test_a_local_time_that_happens_twice_is_read_by_the_workers_clock() -> None:
    # 2026-11-01 01:30 happens twice in New York (EDT, then EST after the clocks go back)
    first = datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc)
    second = datetime(2026, 11, 1, 6, 30, tzinfo=timezone.utc)
    stamp = "20261101_013000"
    assert bench.stamp_to_utc(stamp, "America/New_York", near=first + timedelta(seconds=3)) == first
    assert bench.stamp_to_utc(stamp, "America/New_York", near=second + timedelta(seconds=3)) == second
    assert bench.stamp_to_utc(stamp, "America/New_York") == first  # no clock reading: the earlier one


def test_time_zone_output_is_parsed_and_checked() -> None:
    assert bench.parse_time_zone('some warning\n"Pacific/Kiritimati"\n') == "Pacific/Kiritimati"
    with pytest.raises(OutputParseError, match="unknown time zone"):
        bench.parse_time_zone('"Mars/Olympus_Mons"')
    with pytest.raises(OutputParseError):
        bench.parse_time_zone("")


@pytest.mark.parametrize("given, utc", [
    ("20261129_030001", "20261129_030001"),
    ("2026-11-29T03:00:01", "20261129_030001"),
    ("2026-11-29T03:00:01Z", "20261129_030001"),
    ("2026-11-29T03:00:01+14:00", "20261128_130001"),
    ("2026-11-29T03:00:01-10:00", "20261129_130001"),
    ("2026-11-29", "20261129_235959"),
])
def test_at_is_utc_unless_it_gives_its_offset(given: str, utc: str) -> None:
    assert offsite_ops.normalise_at(given) == utc


def test_at_that_is_no_time_is_refused_naming_the_forms() -> None:
    with pytest.raises(InvalidInput, match="UTC unless it gives its offset"):
        offsite_ops.normalise_at("yesterday")


def _manifest(stamp_local: str, zone: str, *, verified: bool = True) -> dict[str, Any]:
    return {"site": "a.example.com", **bench.backup_times(stamp_local, zone), "verified": verified,
            "artifacts": []}


class _Store:
    def __init__(self, manifests: list[dict[str, Any]]) -> None:
        self.manifests = manifests
        self.deleted: list[str] = []

    def list_backups(self, site: str) -> list[dict[str, Any]]:
        return sorted(self.manifests, key=lambda m: m["timestamp"], reverse=True)  # bench's names, as S3 lists

    def delete_backup(self, site: str, stamp: str) -> None:
        self.deleted.append(stamp)

    def get_legal_hold(self, site: str) -> None:
        return None  # no offboarded site here: the ordinary retention applies


def test_choose_backup_compares_utc_not_the_local_file_names() -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    local = (now - timedelta(seconds=10)).astimezone(bench.load_zone("Pacific/Kiritimati"))
    store = _Store([_manifest(local.strftime("%Y%m%d_%H%M%S"), "Pacific/Kiritimati")])
    chosen = offsite_ops.choose_backup(store, "a.example.com", now.strftime("%Y-%m-%dT%H:%M:%S"))
    assert chosen["utc_timestamp"] == (now - timedelta(seconds=10)).strftime("%Y%m%d_%H%M%S")


def test_retention_keeps_a_young_unverified_backup_of_a_site_behind_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """last:1 keeps every backup younger than one day. A backup 15 h old in UTC, of a site at
    UTC-10, has a local stamp that reads 25 h old: judged by its name it would be deleted."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    adak = bench.load_zone("America/Adak")

    def stamp(hours_ago: float) -> str:
        return (now - timedelta(hours=hours_ago)).astimezone(adak).strftime("%Y%m%d_%H%M%S")

    young = _manifest(stamp(15), "America/Adak", verified=False)
    newest = _manifest(stamp(1), "America/Adak")
    old = _manifest(stamp(30), "America/Adak", verified=False)
    store = _Store([young, newest, old])
    monkeypatch.setattr(offsite_ops, "store_for", lambda ctx: store)
    recorded: dict[str, Any] = {}
    ctx = SimpleNamespace(site="a.example.com", settings=SimpleNamespace(retention="last:1"),
                          runtime=SimpleNamespace(redis=fakeredis.FakeRedis()), output=[],
                          record=lambda **kw: recorded.update(kw))
    offsite_ops.prune_offsite(ctx)  # type: ignore[arg-type]
    assert store.deleted == [old["utc_timestamp"]]
    assert young["utc_timestamp"] in recorded["retention"]["keep"]


def test_retention_days_are_utc_days() -> None:
    from jerp_jobs.retention import Backup, parse_policy, plan_deletions

    # two backups on the same UTC day whose Kiritimati stamps fall on two local days
    a = _manifest("20261129_230000", "Pacific/Kiritimati")  # 2026-11-29 09:00 UTC
    b = _manifest("20261130_010000", "Pacific/Kiritimati")  # 2026-11-29 11:00 UTC
    backups = [Backup(offsite_ops.utc_time(m), m["utc_timestamp"], True) for m in (a, b)]
    decision = plan_deletions(backups, parse_policy("gfs:1/0/0/0"), now=datetime(2026, 12, 20, tzinfo=timezone.utc))
    assert [x.key for x in decision.keep] == [b["utc_timestamp"]]
    assert [x.key for x in decision.delete] == [a["utc_timestamp"]]
    assert decision.reasons[b["utc_timestamp"]][1] == "daily 2026-11-29"


def test_freshness_rows_give_utc_beside_the_local_stamp() -> None:
    from jerp_jobs.freshness import LOCAL, OFFSITE, site_backups, sites_freshness

    client = fakeredis.FakeRedis()
    m = {**_manifest("20261129_030001", "Pacific/Kiritimati"), "job_id": "j1",
         "artifacts": [{"kind": "database", "path": "x", "size": 5}]}
    legacy = {"site": "a.example.com", "timestamp": "20261128_120000", "job_id": "j0",
              "artifacts": [{"kind": "database", "path": "y", "size": 3}]}
    client.zadd(LOCAL + "a.example.com", {json.dumps(m): 2.0, json.dumps(legacy): 1.0})
    client.zadd(OFFSITE + "a.example.com", {json.dumps({**m, "verified": True}): 2.0})
    rows = site_backups(client, "a.example.com")
    assert [(r["utc_timestamp"], r["where"]) for r in rows] == [
        ("20261128_130001", "off-site"), ("20261128_130001", "local"), ("20261128_120000", "local")]
    assert rows[0]["timestamp"] == "20261129_030001" and rows[0]["time_zone"] == "Pacific/Kiritimati"
    fresh = sites_freshness(client, max_age_hours=26, now=3.0)
    assert fresh[0]["last_utc_timestamp"] == "20261128_130001" and fresh[0]["time_zone"] == "Pacific/Kiritimati"
