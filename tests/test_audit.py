"""The audit trail on the real Redis: who started each job (jerpctl, Beat, webhook, parent job),
operator actions, its own retention, and `jerpctl audit` as a table and as JSON lines."""

from __future__ import annotations

import json
import time

import pytest
import redis
from click.testing import CliRunner

from jerp_jobs import audit
from jerp_jobs.cli import Ctx, cli
from jerp_jobs.enqueue import create_job, submit
from jerp_jobs.runtime import Runtime
from tests.conftest import recording

pytestmark = pytest.mark.services

SITE = "a.example.com"


@pytest.fixture
def rt(settings, real_redis: redis.Redis, fake_executor) -> Runtime:
    from jerp_jobs.bootstrap import build_runtime

    return recording(build_runtime(settings, client=real_redis, executor=fake_executor))


def _cli(rt: Runtime, *args: str):
    return CliRunner().invoke(cli, list(args), obj=Ctx(rt=rt), catch_exceptions=False)


def test_each_job_start_names_who_started_it(rt: Runtime, real_redis: redis.Redis, monkeypatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    result = _cli(rt, "enqueue", "backup", SITE)
    assert result.exit_code == 0, result.output
    by_cli = result.output.strip()
    by_beat = submit(rt, "backup", site=SITE, actor="beat nightly-backup").id
    child = create_job(rt, "backup", site=SITE, parent="p123").id
    entries = {e["job_id"]: e for e in audit.entries(real_redis)}
    assert entries[by_cli]["actor"].startswith("jerpctl alice (sudo ") and "@" in entries[by_cli]["actor"]
    assert (entries[by_cli]["action"], entries[by_cli]["kind"], entries[by_cli]["site"]) == ("job.created", "backup", SITE)
    assert entries[by_beat]["actor"] == "beat nightly-backup"
    assert entries[child]["actor"] == "job p123"
    # kept apart from job records: deleting the job leaves its audit entry
    real_redis.delete(f"jerp:job:{by_cli}")
    assert any(e["job_id"] == by_cli for e in audit.entries(real_redis))


def test_operator_actions_are_recorded_and_exported_as_json_lines(rt: Runtime, real_redis: redis.Redis) -> None:
    job_id = _cli(rt, "enqueue", "migrate", SITE).output.strip()
    assert _cli(rt, "cancel", job_id).exit_code == 0
    rt.sites.mark_attention(SITE, job_id=job_id, reason="restore failed")
    assert _cli(rt, "site", "clear-attention", SITE).exit_code == 0
    lines = _cli(rt, "--json", "audit", "--site", SITE).output.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["action"] for r in rows] == ["job.created", "job.cancel-requested", "site.attention-cleared"]
    assert rows[2]["detail"] == "restore failed" and rows[2]["job_id"] == job_id
    assert all(r["at_utc"].endswith("Z") and r["actor"].startswith("jerpctl ") for r in rows)
    text = _cli(rt, "audit").output
    assert "site.attention-cleared" in text and f"job {job_id}" in text
    assert _cli(rt, "--json", "audit", "--site", "other.example.com").output == ""
    assert _cli(rt, "audit", "--since", "yesterday").exit_code == 2


def test_retention_drops_only_entries_older_than_the_window(real_redis: redis.Redis) -> None:
    now = time.time()
    for action, age_days in (("old", 40), ("recent", 10)):  # entries written 40 and 10 days ago
        at = now - age_days * 86400
        real_redis.xadd(audit.STREAM, {"at": f"{at:.3f}", "actor": "t", "action": action}, id=f"{int(at * 1000)}-0")
    assert [e["action"] for e in audit.entries(real_redis)] == ["old", "recent"]
    audit.record(real_redis, actor="t", action="today", days=30)  # trims the old one
    assert [e["action"] for e in audit.entries(real_redis)] == ["recent", "today"]
    assert [e["action"] for e in audit.newest(real_redis, limit=1)] == ["today"]
    assert [e["action"] for e in audit.entries(real_redis, since=now - 86400)] == ["today"]


def test_many_entries_are_paged(real_redis: redis.Redis) -> None:
    for i in range(2500):
        audit.record(real_redis, actor="t", action="a", site=f"s{i % 2}.example.com", detail=str(i))
    assert len(list(audit.entries(real_redis))) == 2500
    odd = audit.newest(real_redis, site="s1.example.com", limit=1100)
    assert len(odd) == 1100 and odd[-1]["detail"] == "2499"
